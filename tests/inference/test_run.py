"""`azaion infer` end to end: video, images, JSONL, annotated outputs, summary, CLI errors,
and a model published to a `local:` target fetched and decrypted in memory."""

import json
from pathlib import Path

import cv2
import pytest

from azaion_training.inference.engines import tensorrt_available
from azaion_training.inference.pipeline import run_inference
from azaion_training.settings import load_settings
from tests.conftest import run_azaion

LOW_CONF = 1e-5  # the 2-epoch model scores about 1.6e-4 at best


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]


def test_video_every_nth_frame_jsonl_and_annotated_mp4(settings, onnx_models, tiny_video, tmp_path):
    out = tmp_path / "out"
    summary = run_inference(settings, tiny_video, onnx_models["raw"], out, every=3, batch=2, conf=LOW_CONF, iou=0.3)
    lines = _lines(out)
    assert [line["frame"] for line in lines] == [0, 3, 6, 9]
    assert [line["time_s"] for line in lines] == [0.0, 0.3, 0.6, 0.9]  # 10 fps
    detection = lines[0]["detections"][0]
    assert set(detection) == {"class_id", "class_name", "conf", "box", "box_px"}
    assert set(detection["box"]) == {"cx", "cy", "w", "h"} and set(detection["box_px"]) == {"x1", "y1", "x2", "y2"}
    assert detection["class_name"] == settings_name(detection["class_id"])
    assert summary.frames_total == 10 and summary.frames_processed == 4 and summary.batch == 2
    assert summary.detections == sum(len(line["detections"]) for line in lines) > 0
    assert sum(summary.per_class.values()) == summary.detections
    assert json.loads((out / "summary.json").read_text())["frames_processed"] == 4
    video = cv2.VideoCapture(summary.outputs["video"])
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    frames = []
    while (frame := video.read())[0]:
        frames.append(frame[1])
    video.release()
    assert len(frames) == 4 and frames[0].shape == (128, 192, 3)


def settings_name(class_id: int) -> str:
    from azaion_training.classes import model_class_names

    return model_class_names()[class_id]


def test_defaults_come_from_settings(root, onnx_models, tiny_video, tmp_path, monkeypatch):
    monkeypatch.setenv("INFERENCE_EVERY", "5")
    monkeypatch.setenv("INFERENCE_CONF", "0.99")
    summary = run_inference(load_settings(), tiny_video, onnx_models["end2end"], tmp_path, write_video=False)
    assert [line["frame"] for line in _lines(tmp_path)] == [0, 5]
    assert (summary.every, summary.batch, summary.conf, summary.iou) == (5, 1, 0.99, 0.3)  # batch 1 on CPU
    assert summary.detections == 0 and "video" not in summary.outputs


@pytest.mark.parametrize("batch", [1, 3])
def test_concurrent_engine_calls_write_the_same_lines_in_frame_order(root, onnx_models, tiny_video, tmp_path,
                                                                     monkeypatch, batch):
    written = {}
    for workers in (1, 3):
        monkeypatch.setenv("INFERENCE_WORKERS", str(workers))
        out = tmp_path / f"w{workers}"
        summary = run_inference(load_settings(), tiny_video, onnx_models["raw"], out, every=1, batch=batch,
                                conf=LOW_CONF, write_video=workers == 3)
        written[workers] = (out / "detections.jsonl").read_text()
    assert [line["frame"] for line in _lines(out)] == list(range(10))
    assert written[3] == written[1] and summary.detections > 0
    assert int(cv2.VideoCapture(summary.outputs["video"]).get(cv2.CAP_PROP_FRAME_COUNT)) == 10


def test_image_directory_with_an_unreadable_file(settings, onnx_models, odd_images, tmp_path):
    source = tmp_path / "images"
    source.mkdir()
    for path in odd_images[:3]:
        (source / path.name).write_bytes(path.read_bytes())
    (source / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    summary = run_inference(settings, source, onnx_models["end2end"], out, conf=LOW_CONF)
    assert summary.frames_total == 4 and summary.frames_processed == 3
    assert summary.unreadable == [str(source / "broken.jpg")]
    lines = _lines(out)
    assert [line["image"] for line in lines] == sorted(p.name for p in odd_images[:3])
    assert all(line["time_s"] is None and line["detections"] for line in lines)
    for path in odd_images[:3]:
        annotated = cv2.imread(str(out / "images" / path.name))
        assert annotated.shape == cv2.imread(str(path)).shape


def test_a_single_image(settings, onnx_models, odd_images, tmp_path):
    summary = run_inference(settings, odd_images[0], onnx_models["raw"], tmp_path, conf=LOW_CONF)
    assert summary.frames_processed == 1 and (tmp_path / "images" / odd_images[0].name).is_file()


def test_cli_runs_on_a_video_and_prints_json(root, onnx_models, tiny_video, tmp_path):
    out = tmp_path / "cli-out"
    result = run_azaion("infer", str(tiny_video), "--model", str(onnx_models["raw"]), "--every", "2",
                        "--conf", str(LOW_CONF), "--out", str(out), "--no-video", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout[result.stdout.index("{\n"):])
    assert summary["frames_processed"] == 5 and summary["engine"] == "CPUExecutionProvider"
    assert [line["frame"] for line in _lines(out)] == [0, 2, 4, 6, 8]


@pytest.mark.parametrize(("make_source", "make_model", "message"), [
    (lambda d: d / "missing.mp4", None, "does not exist"),
    (lambda d: _write(d / "fake.mp4", b"not a video"), None, "cannot read video"),
    (None, lambda d: _write(d / "bad.onnx", b"garbage"), "not a loadable ONNX"),
    (None, lambda d: "no/such/model.onnx", "not an existing file"),
])
def test_cli_bad_input_is_exit_2_without_traceback(root, onnx_models, tiny_video, tmp_path, make_source,
                                                   make_model, message):
    source = make_source(tmp_path) if make_source else tiny_video
    model = make_model(tmp_path) if make_model else onnx_models["raw"]
    result = run_azaion("infer", str(source), "--model", str(model), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr + result.stdout


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_published_model_is_fetched_and_decrypted_in_memory(root, onnx_models, tiny_video, tmp_path,
                                                              monkeypatch):
    from azaion_training.distribution.publish import publish_model

    monkeypatch.setenv("MODEL_ENCRYPTION_KEY", "inference-test-model-key")
    settings = load_settings()
    target = f"local:{tmp_path / 'store'}"
    publish_model(settings, onnx_models["end2end"], name="tiny-e2e.onnx", target=target)
    assert not list((tmp_path / "store").rglob("*.onnx"))  # only encrypted parts are stored
    fetched = run_inference(settings, tiny_video, "tiny-e2e.onnx", tmp_path / "fetched", every=4, conf=LOW_CONF,
                            target=target, write_video=False)
    local = run_inference(settings, tiny_video, onnx_models["end2end"], tmp_path / "local", every=4, conf=LOW_CONF,
                          write_video=False)
    assert "fetched" in fetched.model and fetched.detections == local.detections > 0
    assert _lines(tmp_path / "fetched") == _lines(tmp_path / "local")


@pytest.mark.skipif(tensorrt_available(), reason="this machine has TensorRT: the GPU test covers it")
def test_tensorrt_without_a_gpu_is_a_clear_error(settings, onnx_models, tiny_video, tmp_path):
    from azaion_training.errors import InputError

    with pytest.raises(InputError, match="TensorRT needs an NVIDIA GPU"):
        run_inference(settings, tiny_video, onnx_models["raw"], tmp_path, engine="tensorrt")
    with pytest.raises(InputError, match="engine 'tflite' is not one of"):  # openvino and rknn are engines now
        run_inference(settings, tiny_video, onnx_models["raw"], tmp_path, engine="tflite")
