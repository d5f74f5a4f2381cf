"""Where a model fails, for the cockpit (docs/error-analysis.md, "In the cockpit"): the
analysis of a model on a dataset split, read from the predictions cache and never predicted on
a page request. A model is named as the CLI names it (a run, or `production`), resolved without
exporting anything: a run's ONNX only if it was exported already (at the size it trained at),
production's by its sha256 in the promotion history. When the split is not fully cached the page
says which `azaion predict-dataset` command fills it.

An analysis is kept in memory (the KEEP most recently used) until the cache file or the
dataset changes, so paging through 10,000 images only filters and slices lists."""

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from azaion_training.analysis import outcomes as oc
from azaion_training.analysis.predictions import DEFAULT_TARGET, PRODUCTION, ModelRef, load_split, store_path
from azaion_training.errors import AzaionError
from azaion_training.fsutil import file_sha256
from azaion_training.layout import DatasetDir, Layout
from azaion_training.settings import Settings

KINDS = tuple(str(k) for k in oc.KINDS)
ERRORS = "errors"  # any outcome but a true positive
KIND_NAMES = {"true_positive": "true positive", "wrong_class": "wrong class", "duplicate": "duplicate",
              "localisation": "poor localisation", "background": "false alarm (background)", "missed": "missed"}
# outcome colours: TP green, false boxes red/orange/yellow, missed blue, wrong class magenta
OUTCOME_COLOURS = {"true_positive": "#16c60c", "background": "#ff1f1f", "localisation": "#ff8c00",
                   "duplicate": "#ffd400", "wrong_class": "#e815e8", "missed": "#1e6fff"}
BACKGROUND = -1


@dataclass
class View:
    """One analysis as the pages use it."""

    analysis: oc.Analysis
    signature: tuple
    by_file: dict[str, int]  # image file name in the split -> index in analysis.images
    cells: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (true, pred) -> image indexes
    orders: dict[tuple, list[int]] = field(default_factory=dict)

    def select(self, kind: str, sort: str, cell: tuple[int, int] | None, cls: int | None,
               classes_of: dict[str, tuple[int, ...]] | None = None) -> list[int]:
        """Indexes of the images with an outcome of `kind` (ERRORS: any error; "": all), behind a
        confusion-matrix cell, with a box of class `cls`, ordered by error score (sort="score") or
        as the split lists them."""
        key = (kind, sort, cell, cls)
        if key not in self.orders:
            images = self.analysis.images
            chosen = range(len(images))
            if cell is not None:
                chosen = self.cell_images(cell).tolist()
            if kind == ERRORS:
                chosen = [i for i in chosen if images[i].counts.errors]
            elif kind:
                chosen = [i for i in chosen if getattr(images[i].counts, kind)]
            if cls is not None:
                owner = self.analysis.table.owner()
                rows = np.unique(self.analysis.table.image[(owner == cls) | (self.analysis.table.cls == cls)])
                wanted = set(rows.tolist())
                chosen = [i for i in chosen if i in wanted]
            chosen = list(chosen)
            if sort == "score":
                chosen.sort(key=lambda i: (-images[i].error_score, images[i].name))
            self.orders[key] = chosen
        return self.orders[key]

    def cell_images(self, cell: tuple[int, int]) -> np.ndarray:
        """Images with at least one box counted in the confusion-matrix cell (label class, predicted
        class; BACKGROUND for the background row or the missed column)."""
        if cell not in self.cells:
            table = self.analysis.table
            true = np.where(np.isin(table.kind, (oc.TP, oc.WRONG, oc.MISSED)), table.true_cls, BACKGROUND)
            predicted = np.where(table.kind == oc.MISSED, BACKGROUND, table.cls)
            self.cells[cell] = np.unique(table.image[(true == cell[0]) & (predicted == cell[1])])
        return self.cells[cell]


class ErrorViews:
    """The analyses the pages show, by (model, dataset, split, conf)."""

    KEEP = 4

    def __init__(self, settings: Settings, layout: Layout):
        self.settings, self.layout = settings, layout
        self._views: OrderedDict[tuple, View] = OrderedDict()
        self._hashes: dict[tuple, str] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ models, never exported here

    def _sha256(self, path: Path) -> str:
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        if key not in self._hashes:
            self._hashes[key] = file_sha256(path)
        return self._hashes[key]

    def production(self, target: str = DEFAULT_TARGET) -> ModelRef | None:
        """The ONNX production published on `target`, or None (nothing promoted, or its run or
        ONNX is not on this machine)."""
        from azaion_training.inference.engines import onnx_imgsz
        from azaion_training.lifecycle.promote import production_onnx
        from azaion_training.lifecycle.registry import production_stack, read_history, target_key

        try:
            key = target_key(target, self.settings)
            events = read_history(self.layout, settings=self.settings)
            stack = production_stack(events, key, self.settings)
            if not stack:
                return None
            record, path = production_onnx(self.layout, key, stack[-1], events)
            if not self.layout.inside_root(path):
                return None
            imgsz = onnx_imgsz(path) or record.trained_imgsz or self.settings.export.onnx_imgsz
            return ModelRef(f"production on {key} ({record.run})", path, self._sha256(path), imgsz, record.run,
                            record.dataset)
        except (AzaionError, OSError, ValueError):
            return None

    def run_model(self, run: str) -> ModelRef | None:
        """The run's ONNX at the size it trained at, only if `azaion export`/predict-dataset/the
        gate exported it already (None otherwise: nothing is exported on a page request)."""
        from azaion_training.training.runs import export_key
        from azaion_training.web import runs as run_data

        run_dir = run_data.find_run_dir(self.layout, run)
        if run_dir is None or run_data.record_refused(self.layout, run_dir):
            return None
        record = run_data.load_record(self.layout, run_dir)
        imgsz = record.trained_imgsz or self.settings.export.onnx_imgsz
        entry = record.exports.get(export_key(imgsz, None))
        if not entry or not entry.get("sha256"):
            return None
        path = Path(entry["path"])
        if not path.is_file() or not self.layout.inside_root(path):
            return None
        return ModelRef(record.run, path, entry["sha256"], int(entry.get("imgsz") or imgsz), record.run,
                        record.dataset)

    def model(self, ref: str) -> ModelRef | None:
        return self.production() if ref == PRODUCTION else self.run_model(ref)

    def default_model(self) -> str | None:
        """production when something is promoted on azaion, else the latest finished run with an ONNX."""
        if self.production() is not None:
            return PRODUCTION
        for choice in self.choices():
            if choice["ref"] != PRODUCTION:
                return choice["ref"]
        return None

    def choices(self) -> list[dict[str, Any]]:
        """Every model a page can show: production, then each run with an exported ONNX (newest
        first), with the dataset splits its predictions cache holds."""
        from azaion_training.analysis.predictions import cached_views
        from azaion_training.web import runs as run_data

        found = []
        refs = [(PRODUCTION, self.production())] + [(r.run, self.run_model(r.run))
                                                    for r in reversed(run_data.list_records(self.layout))]
        for ref, model in refs:
            if model is None:
                continue
            try:
                views = [v.__dict__ for v in cached_views(self.settings, model)]
            except (AzaionError, OSError, ValueError):
                views = []
            found.append({"ref": ref, "label": model.label, "run": model.run, "sha256": model.sha256[:12],
                          "imgsz": model.imgsz, "dataset": Path(model.dataset).name if model.dataset else None,
                          "views": views})
        return found

    # ------------------------------------------------------------------ analyses

    def command(self, ref: str, dataset: str, split: str) -> str:
        return f"azaion predict-dataset --model {ref} --dataset {dataset} --split {split}"

    def view(self, ref: str, model: ModelRef, formed: DatasetDir, split: str, conf: float) -> View:
        """The analysis of `model` on the split from the cache (OperationFailed, naming the
        command to run, when an image of the split is not cached)."""
        store = store_path(self.settings, model)
        stat = store.stat() if store.is_file() else None
        wal = Path(f"{store}-wal")
        wal_stat = wal.stat() if wal.is_file() else None
        signature = (stat and (stat.st_mtime_ns, stat.st_size), wal_stat and (wal_stat.st_mtime_ns, wal_stat.st_size),
                     os.stat(formed.root).st_mtime_ns,
                     formed.manifest.stat().st_mtime_ns if formed.manifest.is_file() else None)
        key = (model.sha256, model.imgsz, formed.name, split, conf)
        with self._lock:
            found = self._views.get(key)
            if found is not None and found.signature == signature:
                self._views.move_to_end(key)
                return found
        predictions = load_split(self.settings, model, formed, split)  # never predicts
        analysis = oc.analyse_split(predictions, oc.class_names(self.settings), conf)
        view = View(analysis, signature, {Path(i.name).name: k for k, i in enumerate(analysis.images)})
        with self._lock:
            self._views[key] = view
            self._views.move_to_end(key)
            while len(self._views) > self.KEEP:
                self._views.popitem(last=False)
        return view


def box_dict(box: oc.BoxOutcome, names: dict[int, str]) -> dict[str, Any]:
    """One judged box for a page: its outcome, class names and pixel box."""
    data = box.to_dict()
    data["name"] = names.get(box.cls, f"Class-{box.cls}")
    data["true_name"] = None if box.true_cls is None else names.get(box.true_cls, f"Class-{box.true_cls}")
    data["colour"] = OUTCOME_COLOURS[str(box.kind)]
    return data
