"""Helpers for the dataset tests: synthetic annotations written straight into data/."""

import hashlib
import os
import time
from pathlib import Path

import numpy as np

from azaion_training.layout import Layout
from azaion_training.scenes import encode_jpeg, label_text, render_scene


def add_annotations(layout: Layout, count: int, prefix: str = "ann", size: int = 64, seed: int = 0) -> list[str]:
    """`count` synthetic image+label pairs in data/; returns their names."""
    rng = np.random.default_rng(seed)
    names = []
    for i in range(count):
        scene = render_scene(rng, size, max_objects=3)
        name = f"{prefix}{i:04d}"
        layout.data.image_path(name, ".jpg").write_bytes(encode_jpeg(scene.image))
        layout.data.label_path(name).write_text(label_text(scene.labels))
        names.append(name)
    return names


def make_old(*paths: Path) -> None:
    """Older than the 'still being written' grace period of formation."""
    stamp = time.time() - 3600
    for path in paths:
        os.utime(path, (stamp, stamp))


def tree_digest(directory: Path) -> dict[str, tuple[str, int]]:
    """relative path -> (sha256, mtime_ns) of every file under `directory`."""
    return {str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}
