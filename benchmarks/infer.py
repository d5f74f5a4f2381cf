"""Inference speed: `azaion infer` (every frame, no video written) against Ultralytics'
own `predict(stream=True)` on the same 1280x720 video of 300 synthetic frames, with the same
yolo26n ONNX (imgsz 640, raw output layout, random weights whose class logits are rescaled
so that there are detections to compare). Prints one JSON line: both frames/s, their ratio,
and how many frames have the same detections (same count, each box IoU >= 0.95, same class).

    .venv/bin/python benchmarks/infer.py [--frames 300]
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

    from azaion_training.demo.scenes import render_scene

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


def run_ours(video: Path, model: Path, out: Path, threads: int) -> tuple[float, list[np.ndarray]]:
    from azaion_training.inference.pipeline import run_inference
    from azaion_training.settings import load_settings

    settings = load_settings(env={"AZAION_ROOT_DIR": str(out / "root"), "INFERENCE_THREADS": str(threads)})
    summary = run_inference(settings, video, model, out, every=1, batch=4, conf=CONF, iou=IOU, write_video=False,
                            engine="onnx")
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
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the best counts")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads for ours (0 = its default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        video = make_video(workdir / "bench.mp4", args.frames)
        model = make_model(workdir, first_frame(video))
        # Alternate the two and keep each one's best run: the machine may be shared.
        ours_runs, ultra_runs = [], []
        for _ in range(args.repeats):
            ours_runs.append(run_ours(video, model, workdir / "ours", args.threads))
            ultra_runs.append(run_ultralytics(video, model))
        ours_fps, ours = max(ours_runs, key=lambda run: run[0])
        ultra_fps, theirs = max(ultra_runs, key=lambda run: run[0])
    matching = sum(same_detections(a, b) for a, b in zip(ours, theirs, strict=False))
    print(json.dumps({
        "benchmark": "infer", "video": f"{WIDTH}x{HEIGHT}x{args.frames}", "model": "yolo26n onnx 640 raw",
        "cpu_count": os.cpu_count(), "repeats": args.repeats,
        "ours_fps": round(ours_fps, 2), "ultralytics_fps": round(ultra_fps, 2),
        "ratio": round(ours_fps / ultra_fps, 3), "frames_ours": len(ours), "frames_ultralytics": len(theirs),
        "frames_same_detections": matching, "detections_ours": int(sum(map(len, ours))),
        "detections_ultralytics": int(sum(map(len, theirs))),
    }))


if __name__ == "__main__":
    main()
