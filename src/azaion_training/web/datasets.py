"""The dataset browser's index: each formed dataset's images with the classes of their boxes,
read once (manifest.json, then every label file) and kept in memory until the dataset's
manifest or data.yaml changes. Pages and image requests only look names up here. The manifest
and label files are read through rootfiles.open_inside (one leading out of the data root reads
as missing)."""

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azaion_training.dataset.manifest import DatasetManifest, read_manifest
from azaion_training.dataset.stats import dataset_stats
from azaion_training.labels import LabelError, label_classes, label_path_for
from azaion_training.layout import SPLITS, DatasetDir, Layout, is_safe_name
from azaion_training.rootfiles import read_text_inside


@dataclass(frozen=True)
class Item:
    split: str
    image: str  # the image's file name in <split>/images/
    classes: tuple[int, ...]  # one per box (empty: no boxes, or an unreadable label)

    @property
    def relative(self) -> str:
        return f"{self.split}/images/{self.image}"


@dataclass
class DatasetIndex:
    name: str
    path: Path
    signature: tuple
    summary: dict[str, Any]  # created, seed, images/sources per split, class histogram per split
    items: list[Item] = field(default_factory=list)
    by_file: dict[tuple[str, str], Item] = field(default_factory=dict)
    _filtered: dict[tuple[str, int | None], list[Item]] = field(default_factory=dict)

    def select(self, split: str, cls: int | None) -> list[Item]:
        key = (split, cls)
        if key not in self._filtered:
            self._filtered[key] = [i for i in self.items if (not split or i.split == split)
                                   and (cls is None or cls in i.classes)]
        return self._filtered[key]

    def image_path(self, split: str, image: str) -> Path | None:
        """The file of a listed image; None for anything the index does not hold."""
        item = self.by_file.get((split, image))
        return None if item is None else self.path / item.relative

    def label_path(self, split: str, image: str) -> Path | None:
        path = self.image_path(split, image)
        return None if path is None else label_path_for(path)


def _signature(dataset: DatasetDir) -> tuple:
    return tuple(os.stat(p).st_mtime_ns if p.exists() else None
                 for p in (dataset.root, dataset.data_yaml, dataset.manifest))


def _manifest_images(manifest: DatasetManifest) -> Iterator[tuple[str, str]]:
    for entry in manifest.files:
        split, kind, image = (entry.get("path", "").split("/") + ["", "", ""])[:3]
        if kind == "images" and split in SPLITS:
            yield split, image


def _listed_images(dataset: DatasetDir) -> Iterator[tuple[str, str]]:
    for split in SPLITS:
        for image in dataset.images(split):
            yield split, image.name


def _classes(root: Path, label: Path) -> tuple[int, ...]:
    try:
        return label_classes(read_text_inside(root, label, 1 << 20))
    except (OSError, LabelError):
        return ()


def _summary(path: Path, manifest: DatasetManifest | None) -> dict[str, Any]:
    """The dataset's figures as formation recorded them in manifest.json (`azaion dataset stats`
    for a dataset without one)."""
    if manifest is not None and manifest.counts:
        histogram = manifest.class_histogram
        return {"created": manifest.created, "seed": manifest.seed,
                "augmented": manifest.augmented, "images": manifest.counts,
                "sources": manifest.sources,
                "boxes": {s: {int(c): n for c, n in histogram.get(s, {}).items()} for s in SPLITS},
                "corrupted": manifest.corrupted.get("count", 0), "from": "manifest.json"}
    stats = dataset_stats(path)
    return {"created": None, "seed": None, "augmented": None, "images": stats.images, "sources": {},
            "boxes": {s: dict(stats.boxes[s]) for s in SPLITS}, "corrupted": None, "from": "label files"}


def build_index(dataset: DatasetDir, root: Path) -> DatasetIndex:
    signature = _signature(dataset)
    manifest = read_manifest(dataset.manifest, lambda path: read_text_inside(root, path))
    index = DatasetIndex(dataset.name, dataset.root, signature, _summary(dataset.root, manifest))
    listed = _manifest_images(manifest) if manifest and manifest.files else _listed_images(dataset)
    for split, image in listed:
        if not is_safe_name(image):  # never served: the server only hands out names it can resolve
            continue
        item = Item(split, image, _classes(root, dataset.split(split).label_path(os.path.splitext(image)[0])))
        index.items.append(item)
        index.by_file[(split, image)] = item
    return index


class DatasetIndexes:
    """One index per dataset name, rebuilt when the dataset changes; only the KEEP most
    recently used stay in memory."""

    KEEP = 4

    def __init__(self, layout: Layout):
        self.layout = layout
        self._indexes: OrderedDict[str, DatasetIndex] = OrderedDict()
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """Complete datasets (DatasetDir.is_complete), newest name first."""
        if not self.layout.datasets.is_dir():
            return []
        return sorted((d.name for d in self.layout.datasets.iterdir()
                       if is_safe_name(d.name) and DatasetDir(d).is_complete()), reverse=True)

    def get(self, name: str) -> DatasetIndex | None:
        if not is_safe_name(name):
            return None
        dataset = DatasetDir(self.layout.datasets / name)
        if not dataset.is_complete() or not self.layout.inside_root(dataset.root):
            return None
        with self._lock:
            index = self._indexes.get(name)
            if index is None or index.signature != _signature(dataset):
                index = self._indexes[name] = build_index(dataset, self.layout.root)
            self._indexes.move_to_end(name)
            while len(self._indexes) > self.KEEP:
                self._indexes.popitem(last=False)
            return index
