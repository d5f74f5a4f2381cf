"""A dataset's manifest.json, one owner (docs/data-tree.md, "Datasets"): how it was formed (seed,
split shares and generation, augmentation, link method), its counts, source media per split, class
histogram, corrupted pairs, and every file with its split, SHA-256 and annotation name.

Formation writes it through `write_manifest`; `azaion train`, the cycle, `azaion status` and the
cockpit read it through `read_manifest`/`parse_manifest`.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from azaion_training.fsutil import atomic_write_text


@dataclass
class DatasetManifest:
    name: str = ""
    created: str | None = None
    source: str | None = None  # the data/ folder it was formed from
    seed: int | None = None
    split: dict[str, float] = field(default_factory=dict)  # share per split
    split_generation: int | None = None  # the sticky split assignment's generation
    augmented: bool | None = None
    link_method: str | None = None
    counts: dict[str, int] = field(default_factory=dict)  # images per split
    sources: dict[str, int] = field(default_factory=dict)  # source media per split
    class_histogram: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> boxes
    corrupted: dict[str, Any] = field(default_factory=dict)  # {"count", "examples"}
    # {"path": "<split>/images/x.jpg", "split", "sha256", "annotation", ...}: one per file
    files: list[dict[str, Any]] = field(default_factory=list)

    def annotations(self) -> set[str]:
        """The annotation names the dataset holds (what a model trained on it saw)."""
        return {f["annotation"] for f in self.files if isinstance(f, dict) and f.get("annotation")}

    def header(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "files"}


def parse_manifest(text: str) -> DatasetManifest | None:
    """The manifest in `text`, or None when it is not a manifest (damaged, another document)."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    known = {f.name for f in fields(DatasetManifest)}
    try:
        return DatasetManifest(**{k: v for k, v in data.items() if k in known})
    except TypeError:
        return None


def read_manifest(path: Path, read_text: Callable[[Path], str] | None = None) -> DatasetManifest | None:
    """The manifest at `path` (None when missing or damaged). `read_text` reads it another way,
    e.g. the cockpit's read-inside-the-root."""
    try:
        text = read_text(path) if read_text else path.read_text(encoding="utf-8")
    except OSError:
        return None
    return parse_manifest(text)


def write_manifest(path: Path, manifest: DatasetManifest, files_json: str | None = None) -> None:
    """Write atomically. `files_json`: the "files" list already encoded as JSON (formation encodes
    it while it links the files, so a 100k-file dataset does not pay for a second encoding);
    otherwise `manifest.files` is encoded here."""
    encoder = json.JSONEncoder(ensure_ascii=False)
    files = files_json if files_json is not None else encoder.encode(manifest.files)
    members = [f"{encoder.encode(key)}: {encoder.encode(value)}" for key, value in manifest.header().items()]
    atomic_write_text(path, "{" + ", ".join([*members, f'"files": {files}']) + "}")
