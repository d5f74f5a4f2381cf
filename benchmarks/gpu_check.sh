#!/usr/bin/env bash
# What only an NVIDIA GPU can show, in one run of under 10 minutes, as ONE JSON line:
#   preflight  yolo26m (from yolo26m.yaml) at imgsz 1280, batch 11: the product's batch-fits check, peak memory
#   training   3 epochs of yolo26m at imgsz 640 on synthetic demo scenes with AMP (Ultralytics' own AMP check
#              would download yolo26n.pt, so it is replaced by the same FP32-vs-autocast comparison run on the
#              model being trained: no download, and not vacuous the way a random-weight yolo26n.pt would be)
#   tensorrt   the trained model exported to ONNX, a TensorRT engine built from it (build time), detections of
#              both engines compared frame by frame, and the latency of each (ratio = ONNX Runtime / TensorRT)
#   health     `azaion health --check gpu` with TRAINING_DEVICE=0
# Without a GPU it runs nothing and exits 0, saying why in the JSON line.
#   benchmarks/gpu_check.sh            (PYTHON=... to use another interpreter than .venv/bin/python: a path, or a
#                                       name on the PATH such as python3 with PYTHONPATH=src; AZAION_BIN=... for the
#                                       `azaion` entry point, else `python -m azaion_training.cli`)
set -uo pipefail

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
# A bare name (PYTHON=python3, with PYTHONPATH=src) is looked up on the PATH.
[[ $python == */* ]] || python=$(command -v -- "$python" 2>/dev/null || printf '%s' "$python")
budget_s=${GPU_CHECK_BUDGET_S:-560}

skip() { printf '{"benchmark": "gpu_check", "ran": false, "reason": "%s"}\n' "$1"; exit 0; }

command -v nvidia-smi >/dev/null 2>&1 || skip "no nvidia-smi: this machine has no NVIDIA driver, so no GPU to check"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)
[[ -n $gpu ]] || skip "nvidia-smi lists no GPU"
[[ -x $python ]] || skip "no Python at $python: run make install, or set PYTHON"
"$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
    || skip "nvidia-smi sees $gpu but torch.cuda.is_available() is false (driver/CUDA mismatch?)"

workdir=$(mktemp -d)
# GPU_CHECK_LOG=path keeps a copy of the run's stderr (Ultralytics' log, tracebacks) after the run.
trap '[[ -n ${GPU_CHECK_LOG:-} ]] && cp -- "$workdir/stderr.log" "$GPU_CHECK_LOG"; rm -rf -- "$workdir"' EXIT
# No `azaion` entry point beside the interpreter (the package only on PYTHONPATH): the health step runs
# `python -m azaion_training.cli` instead.
azaion_bin=${AZAION_BIN:-$(dirname -- "$python")/azaion}
[[ -x $azaion_bin ]] || azaion_bin=""
export GPU_CHECK_WORKDIR=$workdir AZAION_BIN=$azaion_bin
timeout --signal=TERM "$budget_s" "$python" - >"$workdir/result.json" 2>"$workdir/stderr.log" <<'PY'
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from azaion_training.offline import configure_offline_environment

configure_offline_environment()  # before Ultralytics is imported

WORK = Path(os.environ["GPU_CHECK_WORKDIR"])
GIB = 2**30
result = {"benchmark": "gpu_check", "ran": True, "gpu": torch.cuda.get_device_name(0),
          "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / GIB, 1),
          "torch": torch.__version__, "cuda": torch.version.cuda}


def step(name):
    """Run one step; its figures (or its error) go under `name`, and a failing step does not stop the others."""
    def wrap(function):
        started = time.perf_counter()
        try:
            result[name] = function()
        except Exception as exc:  # noqa: BLE001 - the report names what failed
            result[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        result[name]["seconds"] = round(time.perf_counter() - started, 1)
        torch.cuda.empty_cache()
        return function
    return wrap


def synthetic_dataset(root: Path, train: int, valid: int, size: int) -> Path:
    from azaion_training.classes import WeatherMode, model_class_names
    from azaion_training.scenes import encode_jpeg, label_text, render_scene

    rng = np.random.default_rng(0)
    modes = list(WeatherMode)
    for split, count in (("train", train), ("valid", valid)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for i in range(count):
            scene = render_scene(rng, size, modes[i % len(modes)])
            (root / split / "images" / f"{i:04d}.jpg").write_bytes(encode_jpeg(scene.image))
            (root / split / "labels" / f"{i:04d}.txt").write_text(label_text(scene.labels))
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "train/images", "val": "valid/images",
                                    "nc": len(model_class_names()), "names": model_class_names()}))
    return data


@step("preflight")
def preflight():
    from ultralytics import YOLO

    from azaion_training.training.preflight import check_batch_fits
    from azaion_training.training.train import use_amp

    check = check_batch_fits(YOLO("yolo26m.yaml"), "0", 11, 1280)
    return {"model": "yolo26m.yaml", "imgsz": 1280, "batch": 11, "fits": check.ok, "detail": check.detail,
            "peak_gib": round(torch.cuda.max_memory_allocated(0) / GIB, 2), "amp": use_amp("0")}


amp_checks = []


def amp_check_on_the_trained_model(model):
    """FP32 vs autocast on the model under training, on real scenes (Ultralytics' own check needs
    yolo26n.pt). Compared: the feature maps the detection head receives (raw activations, not the
    decoded top-k boxes, which can hide any difference), and whether autocast really ran the convs
    in half precision (a forward hook on the first layer)."""
    net = model.eval()
    images = torch.stack([torch.from_numpy(np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1))).float() / 255
                          for img in SAMPLES[:4]]).cuda()
    seen = {}

    def head_inputs(module, inputs):
        seen.setdefault("features", []).append([t.detach().float().clone() for t in inputs[0]])

    def first_layer(module, inputs, output):
        seen.setdefault("dtypes", []).append(output.dtype)

    hooks = [net.model[-1].register_forward_pre_hook(head_inputs), net.model[0].register_forward_hook(first_layer)]
    try:
        with torch.no_grad():
            net(images)
            with torch.autocast("cuda"):
                net(images)
    finally:
        for hook in hooks:
            hook.remove()
    fp32, amp = seen["features"]
    diff = max((a - b).abs().max().item() for a, b in zip(fp32, amp, strict=True))
    scale = max(a.abs().max().item() for a in fp32) or 1.0
    engaged = seen["dtypes"][1] == torch.float16
    finite = all(bool(torch.isfinite(b).all()) for b in amp)
    ok = engaged and finite and diff <= 0.05 * scale
    amp_checks.append({"compared": "detection head input features", "autocast_dtype": str(seen["dtypes"][1]),
                       "max_abs_diff": round(diff, 5), "scale": round(scale, 3),
                       "relative": round(diff / scale, 6), "passed": ok})
    net.train()
    return ok


SAMPLES = []


@step("training")
def training():
    import cv2
    import ultralytics.engine.trainer as trainer_module
    from ultralytics import YOLO

    data = synthetic_dataset(WORK / "demo-data", train=96, valid=24, size=640)
    SAMPLES.extend(cv2.imread(str(p)) for p in sorted((WORK / "demo-data/valid/images").glob("*.jpg"))[:8])
    trainer_module.check_amp = amp_check_on_the_trained_model
    torch.cuda.reset_peak_memory_stats(0)
    model = YOLO("yolo26m.yaml")
    started = time.perf_counter()
    metrics = model.train(data=str(data), epochs=3, imgsz=640, batch=16, device=0, amp=True, workers=4,
                          project=str(WORK / "runs"), name="check", exist_ok=True, plots=False, verbose=False)
    seconds = time.perf_counter() - started
    result["_best"] = str(WORK / "runs/check/weights/best.pt")
    return {"model": "yolo26m.yaml", "epochs": 3, "imgsz": 640, "images": 96, "amp": bool(model.trainer.amp),
            "amp_check": amp_checks[-1] if amp_checks else "not run", "train_s": round(seconds, 1),
            "s_per_epoch": round(seconds / 3, 2), "peak_gib": round(torch.cuda.max_memory_allocated(0) / GIB, 2),
            "map50": round(float(metrics.box.map50), 4) if metrics else None}


@step("tensorrt")
def tensorrt():
    from ultralytics import YOLO

    from azaion_training.inference import engines
    from azaion_training.inference.nms import box_iou
    from azaion_training.inference.pipeline import Detector

    if not engines.tensorrt_available():
        return {"skipped": "the tensorrt package is not installed"}
    best = result.pop("_best", None)
    source = best if best and Path(best).is_file() else "yolo26m.yaml"
    onnx_path = Path(YOLO(source).export(format="onnx", imgsz=640, dynamic=True, batch=4))
    onnx_bytes = onnx_path.read_bytes()
    ort = engines.OnnxEngine(onnx_bytes, batch_size=4)
    started = time.perf_counter()
    plan = engines.convert_from_onnx(onnx_bytes, 4, ort.input_shape)
    build_s = time.perf_counter() - started
    trt = engines.TensorRTEngine(plan, batch_size=4, class_names=ort.class_names)
    frames = (SAMPLES or [np.zeros((640, 640, 3), np.uint8)] * 8)[:8]
    found = {}
    latency = {}
    for name, engine in (("onnxruntime", ort), ("tensorrt", trt)):
        detector = Detector(engine, 0.25, 0.45)
        detector.detect(frames[:4])  # warm-up
        rounds, started = 20, time.perf_counter()
        for _ in range(rounds):
            found[name] = detector.detect(frames[:4]) + detector.detect(frames[4:8])
        latency[name] = (time.perf_counter() - started) / rounds / len(frames) * 1000
    def matches(x, y):
        return x.cls == y.cls and box_iou(np.array([x.x1, x.y1, x.x2, x.y2]),
                                          np.array([[y.x1, y.y1, y.x2, y.y2]]))[0] >= 0.9

    def order(detections):
        return sorted(detections, key=lambda d: (d.cls, d.x1, d.y1))

    same = sum(len(a) == len(b) and all(matches(x, y) for x, y in zip(order(a), order(b), strict=True))
               for a, b in zip(found["onnxruntime"], found["tensorrt"], strict=True))
    return {"source": "trained" if source == best else "yolo26m.yaml (training failed)", "build_s": round(build_s, 1),
            "onnxruntime_provider": ort.provider, "ms_per_frame_onnxruntime": round(latency["onnxruntime"], 2),
            "ms_per_frame_tensorrt": round(latency["tensorrt"], 2),
            "ratio_onnxruntime_over_tensorrt": round(latency["onnxruntime"] / latency["tensorrt"], 2),
            "frames_with_same_detections": f"{same}/{len(frames)}",
            "detections": sum(len(d) for d in found["tensorrt"])}


@step("health")
def health():
    azaion = [os.environ["AZAION_BIN"]] if os.environ["AZAION_BIN"] else [sys.executable, "-m", "azaion_training.cli"]
    run = subprocess.run([*azaion, "health", "--check", "gpu", "--json"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "TRAINING_DEVICE": "0",
                                                     "AZAION_ROOT_DIR": str(WORK / "azaion")})
    check = json.loads(run.stdout)["checks"][0]
    return {"exit_code": run.returncode, "status": check["status"], "detail": check["detail"]}


result.pop("_best", None)
print(json.dumps(result))
PY
status=$?
if (( status == 0 )); then
    tail -n1 "$workdir/result.json"
elif (( status == 124 )); then
    printf '{"benchmark": "gpu_check", "ran": true, "error": "over the %s s budget; partial log: %s"}\n' "$budget_s" \
        "$(tail -c 300 "$workdir/stderr.log" | tr '\n"\\' '   ')"
    exit 1
else
    printf '{"benchmark": "gpu_check", "ran": true, "error": "exit %s: %s"}\n' "$status" \
        "$(tail -c 300 "$workdir/stderr.log" | tr '\n"\\' '   ')"
    exit 1
fi
