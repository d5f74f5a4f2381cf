"""Fixtures of the inference tests: the tiny model exported by plain Ultralytics in both
YOLO output layouts, and small media made from the synthetic dataset."""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest


def _export(model: Path, target: Path, **kwargs) -> Path:
    from ultralytics import YOLO

    exported = Path(YOLO(str(model)).export(format="onnx", imgsz=160, **kwargs))
    shutil.copyfile(exported, target)
    exported.unlink()
    return target


@pytest.fixture(scope="session")
def onnx_models(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """{'end2end': (B, 300, 6), 'raw': (B, 4+nc, anchors)}, both with a dynamic batch axis."""
    base = tmp_path_factory.mktemp("inference-models")
    return {"end2end": _export(tiny_model, base / "e2e.onnx", dynamic=True, batch=8, nms=False),
            "raw": _export(tiny_model, base / "raw.onnx", dynamic=True, batch=8)}


@pytest.fixture(scope="session")
def valid_images(synthetic_dataset) -> list[Path]:
    return sorted((synthetic_dataset.parent / "valid" / "images").glob("*.jpg"))


@pytest.fixture(scope="session")
def odd_images(valid_images, tmp_path_factory) -> list[Path]:
    """Non-square frames of several sizes, so the letterbox pads, scales up and down."""
    base = tmp_path_factory.mktemp("odd-images")
    sizes = [(200, 120), (96, 160), (333, 177), (150, 151)]
    paths = []
    for i, (path, (w, h)) in enumerate(zip(valid_images, sizes * 3, strict=False)):
        target = base / f"odd{i:02d}.png"
        cv2.imwrite(str(target), cv2.resize(cv2.imread(str(path)), (w, h), interpolation=cv2.INTER_AREA))
        paths.append(target)
    return paths


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="session")
def tiny_video(valid_images, tmp_path_factory) -> Path:
    """10 frames of 192x128 at 10 fps."""
    frames = [cv2.resize(cv2.imread(str(p)), (192, 128)) for p in valid_images[:10]]
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames)
