"""Inference speed: `azaion infer` (every frame, no video written) against Ultralytics'
own `predict(stream=True)` on the same 1280x720 video of 300 synthetic frames, with the same
yolo26n ONNX (imgsz 640, raw output layout, random weights whose class logits are rescaled
so that there are detections to compare). Prints one JSON line: both frames/s, their ratio,
how many frames have the same detections (same count, each box IoU >= 0.95, same class), and
batch-1 latency (one decoded frame in, its detections out) p50/p95 of both.

The two alternate in rounds and each keeps its best round: the machine may be shared.

    .venv/bin/python benchmarks/infer.py [--frames 300] [--repeats 3] [--batch 4] [--threads 0] [--workers 0]
"""

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from azaion_training.offline import configure_offline_environment

WIDTH, HEIGHT, FPS = 1280, 720, 25.0
CONF, IOU = 0.3, 0.3


def make_video(path: Path, frames: int) -> Path:
    """A camera panning over a few large synthetic aerial scenes."""
    import cv2

    from azaion_training.scenes import render_scene

    rng = np.random.default_rng(0)
    scenes = [render_scene(rng, 1600).image for _ in range(4)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    for i in range(frames):
        scene = scenes[(i // 75) % len(scenes)]
        x, y = (i % 75) * 4, (i % 75) * 2
        writer.write(np.ascontiguousarray(scene[y:y + HEIGHT, x:x + WIDTH]))
    writer.release()
    return path


def first_frame(video: Path) -> np.ndarray:
    import cv2

    capture = cv2.VideoCapture(str(video))
    frame = capture.read()[1]
    capture.release()
    return cv2.resize(frame, (640, 384))


def make_model(workdir: Path, sample: np.ndarray) -> Path:
    """yolo26n with random weights; its class logits are rescaled so scores vary with the
    image (an untrained head's features are ~1e-8) and a few dozen boxes pass conf 0.3."""
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO("yolo26n.yaml")
    net, head = model.model.eval(), model.model.model[-1]
    magnitudes: dict[int, float] = {}
    hooks = [stage[-1].register_forward_hook(lambda _m, inp, _o, i=i: magnitudes.__setitem__(i, inp[0].abs().mean()))
             for i, stage in enumerate(head.cv3)]
    image = torch.from_numpy(np.ascontiguousarray(sample[None, ..., ::-1].transpose(0, 3, 1, 2))).float() / 255
    with torch.no_grad():
        net(image)
        for hook in hooks:
            hook.remove()
        for i, stage in enumerate(head.cv3):
            stage[-1].weight.div_(magnitudes[i])
            stage[-1].bias.fill_(-4.0)
    with contextlib.chdir(workdir):  # a model built from a yaml is exported into the working directory
        return Path(model.export(format="onnx", imgsz=640, dynamic=True, batch=4)).absolute()


def run_ours(video: Path, model: Path, out: Path, args: argparse.Namespace) -> tuple[float, list[np.ndarray]]:
    from azaion_training.inference.pipeline import run_inference
    from azaion_training.settings import load_settings

    settings = load_settings(env={"AZAION_ROOT_DIR": str(out / "root"), "INFERENCE_THREADS": str(args.threads),
                                  "INFERENCE_WORKERS": str(args.workers)})
    summary = run_inference(settings, video, model, out, every=1, batch=args.batch, conf=CONF, iou=IOU,
                            write_video=False, engine="onnx")
    frames = []
    for line in (out / "detections.jsonl").read_text().splitlines():
        record = json.loads(line)
        frames.append(np.array([[d["class_id"], *d["box_px"].values()] for d in record["detections"]]).reshape(-1, 5))
    return summary.fps, frames


def run_ultralytics(video: Path, model: Path) -> tuple[float, list[np.ndarray]]:
    from ultralytics import YOLO

    yolo = YOLO(str(model), task="detect")
    warm = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    yolo.predict(warm, imgsz=640, conf=CONF, iou=IOU, agnostic_nms=True, verbose=False)  # set up the predictor
    frames = []
    started = time.perf_counter()
    for result in yolo.predict(str(video), stream=True, imgsz=640, conf=CONF, iou=IOU, agnostic_nms=True,
                               verbose=False):
        boxes = result.boxes
        frames.append(np.concatenate([boxes.cls.numpy()[:, None], boxes.xyxy.numpy()], axis=1).reshape(-1, 5))
    return len(frames) / (time.perf_counter() - started), frames


def decoded_frames(video: Path, count: int) -> list[np.ndarray]:
    import cv2

    capture = cv2.VideoCapture(str(video))
    frames = [capture.read()[1] for _ in range(count)]
    capture.release()
    return frames


def latency_ours(model: Path, frames: list[np.ndarray], args: argparse.Namespace) -> list[float]:
    """Seconds per frame through `Detector.detect([frame])`: letterbox, engine, cleanup; one call
    at a time, so all cores go to it."""
    from azaion_training.inference.engines import OnnxEngine
    from azaion_training.inference.pipeline import Detector

    detector = Detector(OnnxEngine(model.read_bytes(), threads=args.threads, batch_size=1, workers=1), CONF, IOU)
    detector.detect(frames[:1])
    return [_timed(detector.detect, [frame]) for frame in frames]


def latency_ultralytics(model: Path, frames: list[np.ndarray]) -> list[float]:
    from ultralytics import YOLO

    yolo = YOLO(str(model), task="detect")
    options = {"imgsz": 640, "conf": CONF, "iou": IOU, "agnostic_nms": True, "verbose": False}
    yolo.predict(frames[0], **options)
    return [_timed(yolo.predict, frame, **options) for frame in frames]


def _timed(function, *args, **kwargs) -> float:
    started = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - started


def percentiles_ms(runs: list[list[float]]) -> dict[str, float]:
    """p50/p95 of the round with the lowest median."""
    best = min(runs, key=lambda run: float(np.median(run)))
    return {f"p{q}": round(float(np.percentile(best, q)) * 1000, 1) for q in (50, 95)}


def same_detections(ours: np.ndarray, theirs: np.ndarray) -> bool:
    from azaion_training.inference.nms import box_iou

    if len(ours) != len(theirs):
        return False
    for row in ours:
        candidates = theirs[theirs[:, 0] == row[0]]
        if not len(candidates) or box_iou(row[1:], candidates[:, 1:]).max() < 0.95:
            return False
    return True


def main() -> None:
    configure_offline_environment()
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds of each; the best counts")
    parser.add_argument("--batch", type=int, default=0, help="frames per engine call for ours (0 = the default)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads per call for ours (0 = its "
                                                                 "default)")
    parser.add_argument("--workers", type=int, default=0, help="engine calls at once for ours (0 = the default)")
    parser.add_argument("--latency-frames", type=int, default=40, help="frames timed one by one per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        video = make_video(workdir / "bench.mp4", args.frames)
        model = make_model(workdir, first_frame(video))
        singles = decoded_frames(video, min(args.latency_frames, args.frames))
        ours_runs, ultra_runs, ours_latency, ultra_latency = [], [], [], []
        for _ in range(args.repeats):
            ours_runs.append(run_ours(video, model, workdir / "ours", args))
            ultra_runs.append(run_ultralytics(video, model))
            ours_latency.append(latency_ours(model, singles, args))
            ultra_latency.append(latency_ultralytics(model, singles))
        ours_fps, ours = max(ours_runs, key=lambda run: run[0])
        ultra_fps, theirs = max(ultra_runs, key=lambda run: run[0])
    matching = sum(same_detections(a, b) for a, b in zip(ours, theirs, strict=False))
    print(json.dumps({
        "benchmark": "infer", "video": f"{WIDTH}x{HEIGHT}x{args.frames}", "model": "yolo26n onnx 640 raw",
        "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2), "repeats": args.repeats,
        "batch": args.batch, "threads": args.threads, "workers": args.workers,
        "ours_fps": round(ours_fps, 2), "ultralytics_fps": round(ultra_fps, 2),
        "ratio": round(ours_fps / ultra_fps, 3),
        "ours_fps_rounds": [round(run[0], 2) for run in ours_runs],
        "ultralytics_fps_rounds": [round(run[0], 2) for run in ultra_runs],
        "latency_b1_ms_ours": percentiles_ms(ours_latency), "latency_b1_ms_ultralytics": percentiles_ms(ultra_latency),
        "frames_ours": len(ours), "frames_ultralytics": len(theirs), "frames_same_detections": matching,
        "detections_identical": matching == len(ours) == len(theirs),
        "detections_ours": int(sum(map(len, ours))), "detections_ultralytics": int(sum(map(len, theirs))),
    }))


if __name__ == "__main__":
    main()
