"""Runs inside the RKNN toolchain's own venv (`make rknn-env`, docs/edge.md), never imported by
the package: rknn-toolkit2 pins numpy/onnx/torch versions the main venv cannot hold. It takes one
JSON job file (written by training/quantize.py), converts the FP32 ONNX to an .rknn for the
target platform (INT8 with the calibration list, or floating point) and, in the same session,
runs the toolkit's simulator on the letterboxed evaluation frames it was given. The frames come
from, and the raw outputs go back to, the project's own pipeline, which does the overlap
cleanup and the scoring; this script only converts and runs.

YOLO's raw head ends in one Concat of pixel boxes (0..imgsz) and class scores (0..1): one INT8
scale for both would flatten the scores, so the Concat is cut off and its two inputs become the
model's two outputs, each quantised on its own; whoever runs the .rknn concatenates them again
(inference/engines.py RknnLiteEngine; here, before the outputs are saved).

    .venv-rknn/bin/python rknn_convert.py JOB.json   -> last stdout line: a JSON summary
"""

import json
import sys
import tempfile
import time
from pathlib import Path


def prepare_onnx(source: str, target: str, height: int, width: int) -> list[str]:
    """Fix the input to (1, 3, height, width) (the toolkit's graph rules need every shape known),
    and make the inputs of the Concat that produces the model's only output its outputs."""
    import onnx

    model = onnx.load(source)
    graph = model.graph
    for dim, value in zip(graph.input[0].type.tensor_type.shape.dim, (1, 3, height, width), strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = value
    del graph.value_info[:]
    if len(graph.output) != 1:
        onnx.save(onnx.shape_inference.infer_shapes(model), target)
        return [o.name for o in graph.output]
    name = graph.output[0].name
    producer = next((n for n in graph.node if name in n.output), None)
    if producer is None or producer.op_type != "Concat" or len(producer.input) != 2:
        onnx.save(onnx.shape_inference.infer_shapes(model), target)
        return [name]
    graph.node.remove(producer)
    del graph.output[:]
    for tensor in producer.input:  # float outputs; the toolkit infers their shapes from the fixed input size
        graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    onnx.save(onnx.shape_inference.infer_shapes(model), target)
    return list(producer.input)


def check(code, what: str) -> None:
    if code not in (0, None):
        raise RuntimeError(f"rknn {what} failed with return code {code}")


def main() -> None:
    import numpy as np
    from rknn.api import RKNN

    job = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    height, width = job["imgsz"]
    summary = {"platform": job["platform"], "int8": job["int8"]}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rknn-") as work:
        onnx_path = str(Path(work) / "split.onnx")
        summary["outputs"] = prepare_onnx(job["onnx"], onnx_path, height, width)
        rknn = RKNN(verbose=False)
        # the toolkit's own advice for 2.5.0's conv-reshape-split rule, which fails (IndexError) on
        # the DFL of Ultralytics' head (a Conv, a Reshape, two Slices)
        check(rknn.config(mean_values=[[0, 0, 0]], std_values=[[255, 255, 255]], target_platform=job["platform"],
                          disable_rules=["seperate_conv_rs_split"]), "config")
        check(rknn.load_onnx(model=onnx_path, inputs=[job["input_name"]], input_size_list=[[1, 3, height, width]]),
              "load_onnx")
        check(rknn.build(do_quantization=job["int8"], dataset=job.get("calibration")), "build")
        check(rknn.export_rknn(job["out"]), "export_rknn")
        summary["build_s"] = round(time.perf_counter() - started, 1)
        frames = np.load(job["frames"]) if job.get("frames") else None
        if frames is not None:
            check(rknn.init_runtime(), "init_runtime (simulator)")
            results = []
            for frame in frames:
                outputs = rknn.inference(inputs=[frame[None]], data_format="nchw")
                results.append(np.concatenate([np.asarray(o, np.float32).reshape(1, o.shape[1], -1)
                                               for o in outputs], axis=1)[0])
            np.save(job["results"], np.stack(results))
            summary["simulated"] = len(results)
        rknn.release()
    summary["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
