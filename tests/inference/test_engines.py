"""Engines (BT-INF-01/02): ONNX Runtime from bytes in both layouts; TensorRT on a GPU only."""

import os

import numpy as np
import pytest

from azaion_training.classes import model_class_names
from azaion_training.errors import InputError
from azaion_training.inference.engines import (
    OnnxEngine,
    TensorRTEngine,
    engine_filename,
    engine_filename_for,
    tensorrt_available,
    tensorrt_from_onnx,
)


@pytest.mark.parametrize("layout_name", ["end2end", "raw"])
def test_onnx_engine_loads_from_bytes_and_runs(onnx_models, layout_name):  # BT-INF-01, BT-INF-02
    engine = OnnxEngine(onnx_models[layout_name].read_bytes(), batch_size=3)
    assert engine.input_shape == (160, 160)
    assert engine.dynamic_batch and engine.batch_size == 3
    assert engine.end2end is (layout_name == "end2end")
    assert engine.class_names == model_class_names()  # from the ONNX metadata
    outputs = engine.run(np.random.default_rng(0).random((3, 3, 160, 160), dtype=np.float32))
    expected = (3, 300, 6) if engine.end2end else (3, 84, 525)
    assert outputs[0].shape == expected and outputs[0].dtype == np.float32


def test_a_fixed_batch_in_the_model_wins_and_short_batches_are_padded(tiny_model, tmp_path):
    from tests.inference.conftest import _export

    fixed = _export(tiny_model, tmp_path / "fixed.onnx", batch=2, nms=False)
    engine = OnnxEngine(fixed.read_bytes(), batch_size=4)
    assert not engine.dynamic_batch and not engine.dynamic_hw and engine.batch_size == 2
    frames = np.random.default_rng(1).random((2, 3, 160, 160), dtype=np.float32)
    full = engine.run(frames)[0]
    assert engine.run(frames[:1])[0].shape == (1, 300, 6)
    np.testing.assert_allclose(engine.run(frames[:1])[0], full[:1], rtol=1e-5, atol=1e-5)


def test_on_cpu_without_a_batch_one_frame_per_call_and_two_calls_at_once(onnx_models):
    engine = OnnxEngine(onnx_models["raw"].read_bytes())  # the export's batch is 8
    assert engine.provider == "CPUExecutionProvider" and engine.batch_size == 1
    assert engine.workers == min(2, os.cpu_count() or 1)
    assert OnnxEngine(onnx_models["raw"].read_bytes(), workers=3).workers == 3


def test_garbage_bytes_are_a_clear_input_error():
    with pytest.raises(InputError, match="not a loadable ONNX"):
        OnnxEngine(b"not an onnx model at all")


def test_a_model_without_an_image_input_is_refused(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(InputError, match=r"expected one image input \(batch, 3, height, width\)"):
        OnnxEngine(model.SerializeToString())


def test_engine_file_name_follows_the_spec_pattern():
    assert engine_filename_for(8, 9, 76) == "azaion.cc_8.9_sm_76.engine"


gpu = pytest.mark.skipif(not tensorrt_available(), reason="TensorRT needs an NVIDIA GPU and the tensorrt package")


@pytest.mark.gpu
@gpu
def test_tensorrt_engine_is_built_cached_and_matches_onnx_runtime(onnx_models, tmp_path):
    data = onnx_models["end2end"].read_bytes()
    engine = tensorrt_from_onnx(data, tmp_path, batch_size=4)
    cached = list(tmp_path.rglob("*.engine"))
    assert [p.name for p in cached] == [engine_filename(0)]
    mtime = cached[0].stat().st_mtime_ns
    again = tensorrt_from_onnx(data, tmp_path, batch_size=4)
    assert cached[0].stat().st_mtime_ns == mtime and again.input_shape == (160, 160)
    batch = np.random.default_rng(2).random((4, 3, 160, 160), dtype=np.float32)
    assert engine.run(batch)[0].shape == (4, 300, 6)
    assert TensorRTEngine(cached[0].read_bytes(), batch_size=4).end2end
