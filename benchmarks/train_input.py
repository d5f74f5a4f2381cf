"""Training input pipeline at imgsz 1280: images/s that Ultralytics' training dataloader
delivers (mosaic, affine, HSV and flip augmentation exactly as in training; no model), with
each `TRAINING_CACHE` mode and the same workers, plus where the time per image goes and a tiny
training per mode to show the model sees the same data.

    .venv/bin/python benchmarks/train_input.py [--images 48] [--workers 2] [--rounds 2]

Prints one JSON line: images/s per cache mode, the ratio of the product's default
(`TRAINING_CACHE`, settings) to Ultralytics' default (no cache), the share of one sample's time
spent decoding its JPEGs (about the most an image cache can remove), whether each cache hands
augmentation the same pixels as no cache, and mAP50 + final training losses of a 2-epoch tiny
training with each cache mode.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from azaion_training.offline import configure_offline_environment

MODES = ("none", "disk", "ram")


def write_dataset(base: Path, count: int, size: int, height: int) -> Path:
    """`count` synthetic aerial frames of size x height (landscape, like the field's video frames)."""
    from azaion_training.classes import model_class_names
    from azaion_training.scenes import encode_jpeg, label_text, render_scene

    rng = np.random.default_rng(0)
    for split in ("train", "valid"):
        (base / split / "images").mkdir(parents=True)
        (base / split / "labels").mkdir(parents=True)
    for i in range(count):
        split = "valid" if i % 4 == 3 else "train"
        scene = render_scene(rng, size)
        top = (size - height) // 2
        labels = [(c, x, (y * size - top) / height, w, h * size / height) for c, x, y, w, h in scene.labels
                  if top <= y * size <= top + height]
        (base / split / "images" / f"f{i:04d}.jpg").write_bytes(encode_jpeg(scene.image[top:top + height]))
        (base / split / "labels" / f"f{i:04d}.txt").write_text(label_text(labels))
    data_yaml = base / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"path": str(base), "train": "train/images", "val": "valid/images",
                                         "nc": 80, "names": model_class_names()}))
    return data_yaml


def ultralytics_dataset(data_yaml: Path, imgsz: int, cache: str):
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.utils import DEFAULT_CFG

    data = check_det_dataset(str(data_yaml))
    cfg = get_cfg(DEFAULT_CFG, {"imgsz": imgsz, "cache": False if cache == "none" else cache})
    return build_yolo_dataset(cfg, data["train"], 8, data, mode="train", stride=32)


def loader_images_per_s(data_yaml: Path, cache: str, workers: int, epochs: int = 2) -> float:
    from ultralytics.data.build import build_dataloader

    dataset = ultralytics_dataset(data_yaml, 1280, cache)
    loader = build_dataloader(dataset, 8, workers, shuffle=True, rank=-1, pin_memory=False, device="cpu")
    for _ in loader:  # warm-up epoch: workers started, disk cache written, page cache warm
        pass
    start, images = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            images += batch["img"].shape[0]
    return images / (time.perf_counter() - start)


def decode_share(data_yaml: Path) -> float:
    """Share of one training sample's time (in-process) spent in cv2.imread of its source images."""
    import cv2

    dataset = ultralytics_dataset(data_yaml, 1280, "none")
    count = len(dataset)
    start = time.perf_counter()
    for i in range(count):
        dataset[i]
    per_sample = (time.perf_counter() - start) / count
    start = time.perf_counter()
    for path in dataset.im_files:
        cv2.imread(path)
    per_decode = (time.perf_counter() - start) / count
    return per_decode * 4 / per_sample  # a mosaic sample reads four images


def same_pixels(data_yaml: Path, cache: str) -> bool:
    """Every image the cache mode hands to augmentation equals the uncached one, pixel for pixel."""
    cached, plain = ultralytics_dataset(data_yaml, 1280, cache), ultralytics_dataset(data_yaml, 1280, "none")
    return all(np.array_equal(cached.load_image(i)[0], plain.load_image(i)[0]) for i in range(len(plain)))


def tiny_training(data_yaml: Path, cache: str, project: Path) -> dict[str, float]:
    """mAP50 and the last epoch's training losses of a deterministic 2-epoch training in a fresh
    process. Ultralytics' cache size check draws from Python's `random`, so a cached run's
    augmentation draws differ from an uncached one's: expect close figures, not equal ones."""
    subprocess.run([sys.executable, __file__, "--train-one", cache, str(data_yaml), str(project)], check=True,
                   capture_output=True)
    return json.loads((project / cache / "tiny.json").read_text())


def train_one(cache: str, data_yaml: Path, project: Path) -> None:
    import csv

    from ultralytics import YOLO

    model = YOLO("yolo26n.yaml")
    metrics = model.train(data=str(data_yaml), epochs=2, imgsz=160, batch=8, workers=0, device="cpu",
                          cache=False if cache == "none" else cache, deterministic=True, seed=0,
                          project=str(project), name=cache, exist_ok=True, plots=False, amp=False, verbose=False)
    with open(project / cache / "results.csv", newline="") as handle:
        last = list(csv.DictReader(handle))[-1]
    losses = {key.strip(): round(float(value), 5) for key, value in last.items() if key.strip().startswith("train/")}
    result = {"map50": round(float(metrics.box.map50), 6), **losses}
    (project / cache / "tiny.json").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train-one", nargs=3, help=argparse.SUPPRESS)  # internal: one tiny training
    args = parser.parse_args()
    configure_offline_environment()
    if args.train_one:
        mode, data_yaml, project = args.train_one
        return train_one(mode, Path(data_yaml), Path(project))
    from ultralytics.utils import LOGGER

    from azaion_training.settings import load_settings

    LOGGER.setLevel("ERROR")
    product = load_settings(env={}).training.cache
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        best: dict[str, float] = dict.fromkeys(MODES, 0.0)
        trainings: dict[str, dict[str, float]] = {}
        for mode in MODES:  # a fresh copy per mode: one mode's *.npy files must not serve another
            data_yaml = write_dataset(Path(tmp) / mode, args.images, 1280, 720)
            trainings[mode] = tiny_training(data_yaml, mode, Path(tmp) / "runs")
        for _ in range(args.rounds):  # interleaved rounds, best of each: the machine is shared
            for mode in MODES:
                best[mode] = max(best[mode], loader_images_per_s(Path(tmp) / mode / "data.yaml", mode, args.workers))
        share = decode_share(Path(tmp) / "none" / "data.yaml")
        pixels = {mode: same_pixels(Path(tmp) / mode / "data.yaml", mode) for mode in MODES[1:]}
    print(json.dumps({
        "benchmark": "train_input", "imgsz": 1280, "images": args.images, "workers": args.workers,
        "images_per_s": {mode: round(value, 2) for mode, value in best.items()},
        "product_cache": product, "ratio_product_vs_ultralytics_default": round(best[product] / best["none"], 3),
        "best_cache_ratio": round(max(best.values()) / best["none"], 3),
        "jpeg_decode_share_of_sample": round(share, 3),
        "same_pixels_as_uncached": pixels, "tiny_training": trainings,
        "target_ratio": 2.0,
    }))


if __name__ == "__main__":
    main()
