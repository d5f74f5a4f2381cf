"""`azaion status`: one read-only look at the whole tree for operators -- what is in each
area, the classes in data/, where the consumer is in the stream, the latest dataset, model
and publish. Everything here tolerates a fresh (empty) tree."""

import json
from collections import Counter
from pathlib import Path
from typing import Any

from azaion_training.annotation_index import reading as reading_index
from azaion_training.classes import load_classes
from azaion_training.dataset.manifest import DatasetManifest, read_manifest
from azaion_training.distribution.manifest import local_manifests
from azaion_training.labels import LabelError, parse_line
from azaion_training.layout import SPLITS, Area, DatasetDir, Layout, RunDir, image_files
from azaion_training.queue.offsets import read_offset_record
from azaion_training.report.plots import read_results_csv
from azaion_training.rootfiles import is_file_inside, read_text_inside
from azaion_training.settings import Settings
from azaion_training.training.runs import latest_run

RESULT_METRICS = {"mAP50": "metrics/mAP50(B)", "mAP50-95": "metrics/mAP50-95(B)",
                  "precision": "metrics/precision(B)", "recall": "metrics/recall(B)"}


def _count_files(directory: Path, suffixes: set[str] | None = None) -> int:
    if not directory.is_dir():
        return 0
    return sum(1 for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")
               and (suffixes is None or p.suffix.lower() in suffixes))


def area_counts(area: Area) -> dict[str, int]:
    return {"images": len(image_files(area.images)), "labels": _count_files(area.labels, {".txt"})}


def _text(path: Path, root: Path | None) -> str:
    """The file's text; with `root` (the cockpit, `azaion status`) only a regular file inside it
    (rootfiles.open_inside: a symlink out of the tree raises OSError)."""
    if root is None:
        return path.read_text(encoding="utf-8", errors="replace")
    return read_text_inside(root, path)


def class_histogram(labels_dir: Path, names: dict[int, str], root: Path | None = None) -> dict[str, int]:
    """Boxes per class name over every label file in `labels_dir` (unparsable lines are skipped:
    dataset formation quarantines them)."""
    counts: Counter = Counter()
    if labels_dir.is_dir():
        for label in labels_dir.glob("*.txt"):
            try:
                text = _text(label, root)
            except OSError:
                continue
            for line in text.splitlines():
                if not line.strip():
                    continue
                try:
                    counts[parse_line(line).cls] += 1
                except LabelError:
                    continue
    return {names.get(cls, f"Class-{cls}"): count for cls, count in sorted(counts.items())}


def rejected_reasons(rejected_dir: Path, root: Path | None = None) -> dict[str, int]:
    reasons: Counter = Counter()
    if rejected_dir.is_dir():
        for record in rejected_dir.glob("*.json"):
            try:
                reasons[str(json.loads(_text(record, root)).get("reason", "unknown"))] += 1
            except (ValueError, AttributeError, OSError):
                reasons["unreadable-record"] += 1
    return dict(reasons)


def corrupted_reasons(corrupted_root: Path, root: Path | None = None) -> dict[str, int]:
    """First line of each `<stem>.reason.txt` in data-corrupted/, counted."""
    reasons: Counter = Counter()
    for record in corrupted_root.rglob("*.reason.txt") if corrupted_root.is_dir() else ():
        try:
            first = _text(record, root).strip().splitlines()[:1]
        except OSError:
            first = ["unreadable-reason-file"]
        reasons[(first[0] if first else "unknown")[:100]] += 1
    return dict(reasons)


def queue_position(layout: Layout) -> dict[str, Any]:
    position: dict[str, Any] = {"stream": None, "offset": None, "offset_updated_at": None,
                                "last_message_time": None, "last_applied_at": None, "index_last_offset": None,
                                "index_areas": {}}
    record = read_offset_record(layout.offset_file)
    if record is not None:
        position.update(stream=record.stream or None, offset=record.offset,
                        offset_updated_at=record.updated_at.isoformat() if record.updated_at else None)
    with reading_index(layout.index_db) as index:
        if index is not None:
            position["last_message_time"] = index.get_meta("last_message_time")
            last = index.get_meta("last_offset")
            position["index_last_offset"] = int(last) if last is not None else None
            position["index_areas"] = index.area_counts()
            # replays (no broker) change the tree without moving the consumer's position
            position["last_applied_at"] = index.last_updated_at()
    return position


def _read_json(path: Path, root: Path | None = None) -> dict | None:
    try:
        data = json.loads(_text(path, root))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def latest_dataset(layout: Layout) -> dict[str, Any] | None:
    """The dataset training uses when none is named (DatasetDir.latest: the newest complete
    azaion-YYYY-MM-DD[-N]); with none of those, the newest complete dataset of any other name
    (`dataset form --name`), marked `"default": false` since training takes it only when named."""
    newest = DatasetDir.latest(layout.datasets)
    default = newest is not None
    if newest is None and layout.datasets.is_dir():
        others = [DatasetDir(p) for p in layout.datasets.iterdir() if p.is_dir() and not p.name.startswith(".")]
        others = [d for d in others if d.is_complete()]
        newest = max(others, key=lambda d: d.data_yaml.stat().st_mtime, default=None)
    if newest is None:
        return None
    splits = {split: len(newest.images(split)) for split in SPLITS}
    manifest = read_manifest(newest.manifest, lambda path: _text(path, layout.root)) or DatasetManifest()
    return {"name": newest.name, "path": str(newest.root), "images": splits,
            "created": manifest.created, "seed": manifest.seed, "default": default}


def run_metrics(run_dir: Path, root: Path | None = None) -> dict[str, Any]:
    """Final and best validation metrics from an Ultralytics run's results.csv (with `root`: only
    a regular file inside it)."""
    results_csv = RunDir(run_dir).results_csv
    if not results_csv.is_file() or (root is not None and not is_file_inside(root, results_csv)):
        return {}
    results = read_results_csv(results_csv)
    epochs = results.get("epoch", [])
    if not epochs:
        return {}
    metrics: dict[str, Any] = {"epochs": int(epochs[-1])}
    for key, column in RESULT_METRICS.items():
        if column in results:
            metrics[key] = round(results[column][-1], 4)
    if RESULT_METRICS["mAP50"] in results:
        metrics["best_mAP50"] = round(max(results[RESULT_METRICS["mAP50"]]), 4)
    return metrics


def latest_model(layout: Layout) -> dict[str, Any] | None:
    """The newest run (what is current is production per target: `azaion models list`)."""
    newest = latest_run(layout)
    if newest is None:
        return None
    return {"run": newest.run, "path": str(newest.path), "status": newest.status, "ended": newest.ended,
            "metrics": run_metrics(newest.path)}


def last_publish(layout: Layout) -> dict[str, Any] | None:
    """The newest local copy of a publish manifest (models/published/<folder>/, written by every publish)."""
    newest = max(local_manifests(layout.published), key=lambda p: p.lstat().st_mtime, default=None)
    if newest is None:
        return None
    data = _read_json(newest, layout.root) or {}
    keep = ("name", "folder", "source_file", "source_run", "created")
    plaintext = data.get("plaintext") if isinstance(data.get("plaintext"), dict) else {}
    return {"manifest": str(newest), **{k: data[k] for k in keep if k in data},
            "size": plaintext.get("size"), "sha256": plaintext.get("sha256")}


def collect_status(settings: Settings) -> dict[str, Any]:
    from azaion_training.errors import InputError
    from azaion_training.lifecycle.registry import recover_pending

    layout = Layout(settings.paths)
    try:  # a publish a crash interrupted is completed or rolled back first (docs/model-registry.md)
        recovered = recover_pending(settings, layout)
    except InputError as exc:
        recovered = str(exc)
    names = {cls: c.name for cls, c in load_classes(layout.classes_json).items()}
    areas = {name: area_counts(area) for name, area in layout.areas().items()}
    return {
        "root": str(layout.root),
        "initialised": layout.root.is_dir(),
        "areas": areas,
        "rejected": {"messages": _count_files(layout.rejected, {".json"}),
                     "reasons": rejected_reasons(layout.rejected, layout.root)},
        "corrupted_reasons": corrupted_reasons(layout.corrupted.root, layout.root),
        "data_classes": class_histogram(layout.data.labels, names, layout.root),
        "queue": queue_position(layout),
        "latest_dataset": latest_dataset(layout),
        "latest_model": latest_model(layout),
        "last_publish": last_publish(layout),
        **({"recovered": recovered} if recovered else {}),
    }
