"""Headless PNG grids of images with their boxes, class names and colours (the
platform's dataset visualiser, without GUI windows)."""

import math
from dataclasses import dataclass
from pathlib import Path

from azaion_training.classes import load_classes
from azaion_training.errors import InputError
from azaion_training.labels import LabelError, read_label_file
from azaion_training.layout import SPLITS, image_files

CELL = 320
COLUMNS = 4
ROWS = 4


@dataclass(frozen=True)
class ImageSet:
    title: str
    images: Path
    labels: Path


def image_sets(target: Path) -> list[ImageSet]:
    """The image/label directory pairs of a dataset, an area (images/ + labels/) or an images dir."""
    if any((target / split / "images").is_dir() for split in SPLITS):
        return [ImageSet(split, target / split / "images", target / split / "labels")
                for split in SPLITS if (target / split / "images").is_dir()]
    if (target / "images").is_dir():
        return [ImageSet(target.name, target / "images", target / "labels")]
    if target.name == "images":
        return [ImageSet(target.parent.name, target, target.parent / "labels")]
    raise InputError(f"{target} has no images: expected a dataset (train/valid/test), a folder with images/ "
                     "and labels/, or an images/ folder")


def _cell(image_path: Path, label_path: Path, classes: dict):
    import cv2
    import numpy as np

    cell = np.full((CELL, CELL, 3), 40, np.uint8)
    image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if image is None:
        cv2.putText(cell, "unreadable", (10, CELL // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 255), 1)
        return cell
    scale = CELL / max(image.shape[:2])
    height, width = int(image.shape[0] * scale), int(image.shape[1] * scale)
    cell[:height, :width] = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    try:
        boxes = read_label_file(label_path)
    except LabelError:
        cv2.putText(cell, "bad or missing label", (10, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 255), 1)
        boxes = []
    for box in boxes:
        known = classes.get(box.cls)
        color = known.bgr if known else (255, 255, 255)
        x1, y1 = int((box.cx - box.w / 2) * width), int((box.cy - box.h / 2) * height)
        x2, y2 = int((box.cx + box.w / 2) * width), int((box.cy + box.h / 2) * height)
        cv2.rectangle(cell, (x1, y1), (x2, y2), color, 2)
        cv2.putText(cell, known.name if known else f"Class-{box.cls}", (x1, max(12, y1 - 3)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1, cv2.LINE_AA)
    cv2.putText(cell, image_path.stem[:40], (4, CELL - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    return cell


def visualise(target: Path, out: Path, classes_json: Path | None = None, limit: int = 32) -> list[Path]:
    """Write PNG grids (4x4 per page) of up to `limit` images per split; returns the files."""
    import cv2
    import numpy as np

    classes = load_classes(classes_json)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for image_set in image_sets(target):
        images = image_files(image_set.images)[:limit]
        per_page = COLUMNS * ROWS
        for page in range(math.ceil(len(images) / per_page)):
            chunk = images[page * per_page:(page + 1) * per_page]
            cells = [_cell(p, image_set.labels / f"{p.stem}.txt", classes) for p in chunk]
            cells += [np.zeros_like(cells[0])] * (-len(cells) % COLUMNS)
            rows = [np.hstack(cells[i:i + COLUMNS]) for i in range(0, len(cells), COLUMNS)]
            path = out / f"{image_set.title}-{page + 1:03d}.png"
            if not cv2.imwrite(str(path), np.vstack(rows)):
                raise InputError(f"cannot write {path}: check that {out} is writable")
            written.append(path)
    return written
