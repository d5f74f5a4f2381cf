"""Predictions as data: the raw detections of one ONNX file on the images of a dataset split,
computed once and kept (docs/error-analysis.md).

The detections are the gate's (lifecycle/evaluate.py): the ONNX through the project's own
pipeline (`Detector`: same letterbox, class-agnostic overlap cleanup at INFERENCE_IOU), every
box down to EVAL_CONF, in pixels of the original image, best first. They are stored per image
**content** (the image's sha256, as the dataset's manifest.json lists it) in one SQLite file per
(ONNX sha256, imgsz, EVAL_CONF, INFERENCE_IOU) under `<root>/analysis/predictions/`
(Layout.predictions_file), so

- a second run on the same split runs no inference at all;
- a new dataset version predicts only the images no earlier version had (same bytes, same key);
- an interrupted run keeps every chunk it committed (COMMIT_IMAGES images per transaction) and
  the next run continues with the rest.

Why SQLite rather than one file per chunk: each chunk is one transaction (a kill never leaves a
half-written record), lookups by image sha256 need no index files of our own, readers (the
cockpit) can read while a run writes (WAL), and it is in the standard library.
"""

import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from azaion_training.dataset.form import resolve_dataset
from azaion_training.dataset.manifest import read_manifest
from azaion_training.errors import InputError, OperationFailed
from azaion_training.fsutil import file_sha256
from azaion_training.inference.engines import OnnxEngine, onnx_imgsz
from azaion_training.inference.pipeline import Detector, ordered_map
from azaion_training.inference.scoring import ENGINE, EVAL_CONF
from azaion_training.labels import ground_truth
from azaion_training.layout import SPLITS, DatasetDir, Layout
from azaion_training.lifecycle.promote import production_onnx
from azaion_training.lifecycle.registry import production_stack, read_history, target_key
from azaion_training.locks import InstanceLock
from azaion_training.logs import get_logger, log
from azaion_training.metrics import prediction_array, truth_array
from azaion_training.progress import Progress
from azaion_training.settings import Settings
from azaion_training.training.export import run_onnx
from azaion_training.training.runs import RunRecord, find_run, latest_run

logger = get_logger("analysis.predictions")

STORE_VERSION = 1
COMMIT_IMAGES = 64  # images per transaction: an interrupted run loses at most the chunk in flight
PRODUCTION = "production"
DEFAULT_TARGET = "azaion"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    sha256 TEXT PRIMARY KEY, width INTEGER NOT NULL, height INTEGER NOT NULL,
    boxes INTEGER NOT NULL, detections BLOB NOT NULL, predicted_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS views (
    dataset TEXT NOT NULL, split TEXT NOT NULL, images INTEGER NOT NULL, complete INTEGER NOT NULL,
    updated TEXT NOT NULL, PRIMARY KEY (dataset, split));
"""


# ------------------------------------------------------------------------------------- what is run


@dataclass(frozen=True)
class ModelRef:
    """One ONNX file, the artefact every figure is measured on."""

    label: str  # what the output calls it: a run name, "production on azaion (run X)", a file name
    onnx: Path
    sha256: str
    imgsz: int  # the input size it was exported at
    run: str | None = None  # the run it belongs to, when known
    dataset: str | None = None  # the dataset that run trained on (the default dataset to analyse)

    @property
    def short(self) -> str:
        return self.sha256[:12]


def _run_model(settings: Settings, record: RunRecord, label: str | None = None) -> ModelRef:
    record, entry = run_onnx(settings, record)  # exported once per run and size, parity-checked
    return ModelRef(label or record.run, Path(entry["path"]), entry["sha256"], int(entry["imgsz"]), record.run,
                    record.dataset)


def _production_model(settings: Settings, target: str) -> ModelRef | None:
    """The ONNX production published on `target` (None: nothing is promoted there)."""
    layout = Layout(settings.paths)
    key = target_key(target, settings)
    events = read_history(layout, settings=settings)
    stack = production_stack(events, key, settings)
    if not stack:
        return None
    record, path = production_onnx(layout, key, stack[-1], events)
    return ModelRef(f"production on {key} ({record.run})", path, file_sha256(path),
                    onnx_imgsz(path) or record.trained_imgsz or settings.export.onnx_imgsz, record.run, record.dataset)


def _file_model(path: Path) -> ModelRef:
    imgsz = onnx_imgsz(path)
    if imgsz is None:
        raise InputError(f"{path} carries no square `imgsz` in its metadata: export it with `azaion export`")
    return ModelRef(path.name, path.absolute(), file_sha256(path), imgsz)


def resolve_model(settings: Settings, ref: str | None = None) -> ModelRef:
    """`ref`: a run (name or directory; its ONNX at the size it trained at, exported once),
    `production[:TARGET]` (the exact ONNX production published on TARGET, default azaion) or an
    .onnx file. None: production on azaion when something is promoted there, else the latest
    finished run."""
    layout = Layout(settings.paths)
    if ref is None:
        production = _production_model(settings, DEFAULT_TARGET)
        if production is not None:
            return production
        record = latest_run(layout, status="finished")
        if record is None:
            raise InputError(f"no model to analyse: nothing is promoted on {DEFAULT_TARGET} and no finished run is in "
                             f"{layout.models}; pass --model RUN, production:TARGET or a .onnx file")
        return _run_model(settings, record)
    if ref == PRODUCTION or ref.startswith(f"{PRODUCTION}:"):
        target = ref.partition(":")[2] or DEFAULT_TARGET
        production = _production_model(settings, target)
        if production is None:
            raise InputError(f"nothing is promoted on {target_key(target, settings)}: name a run with --model RUN "
                             "(see `azaion models list`)")
        return production
    path = Path(ref).expanduser()
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise InputError(f"ONNX file {path} not found")
        return _file_model(path)
    return _run_model(settings, find_run(layout, ref))


# ------------------------------------------------------------------------------------- the images


@dataclass(frozen=True)
class SplitImages:
    """The images of one dataset split with their content sha256, in the dataset's order."""

    dataset: DatasetDir
    split: str
    paths: list[Path]
    sha256: list[str]

    def name_of(self, path: Path) -> str:
        """The image's path inside the dataset (as manifest.json writes it), e.g. test/images/x.jpg."""
        return path.relative_to(self.dataset.root).as_posix()


def resolve_split(settings: Settings, dataset: str | None, split: str, model: ModelRef | None = None) -> DatasetDir:
    """The named dataset, else the one the model's run trained on, else the latest; the split
    must have images."""
    if split not in SPLITS:
        raise InputError(f"--split {split!r}: use {', '.join(SPLITS[:-1])} or {SPLITS[-1]}")
    layout = Layout(settings.paths)
    if dataset is None and model is not None and model.dataset and Path(model.dataset).is_dir():
        directory = Path(model.dataset)
    else:
        directory = resolve_dataset(dataset, layout)
    formed = DatasetDir(directory)
    if not formed.is_complete():
        raise InputError(f"dataset {directory} has no data.yaml: form it with `azaion dataset form`")
    if not formed.images(split):
        raise InputError(f"dataset {formed.name} has no images in its {split!r} split: analyse another split "
                         "(--split valid) or another dataset (--dataset NAME)")
    return formed


def manifest_hashes(formed: DatasetDir) -> dict[str, str]:
    """Path inside the dataset -> sha256, as dataset formation recorded them (empty without a
    readable manifest: the images are hashed instead)."""
    manifest = read_manifest(formed.manifest)
    if manifest is None:
        return {}
    return {f["path"]: f["sha256"] for f in manifest.files if isinstance(f, dict)
            and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str)}


def split_images(formed: DatasetDir, split: str) -> SplitImages:
    """The split's images keyed by content: the manifest's sha256 (a formed dataset is never
    modified), else the file hashed here (a dataset made by hand)."""
    paths = formed.images(split)
    known = manifest_hashes(formed)
    hashes = [known.get(p.relative_to(formed.root).as_posix()) or file_sha256(p) for p in paths]
    return SplitImages(formed, split, paths, hashes)


# ------------------------------------------------------------------------------------- the cache


@dataclass(frozen=True)
class StoreKey:
    """What the detections depend on besides the image bytes."""

    onnx_sha256: str
    imgsz: int
    conf: float
    iou: float

    def meta(self) -> dict[str, str]:
        return {"version": str(STORE_VERSION), "onnx_sha256": self.onnx_sha256, "imgsz": str(self.imgsz),
                "conf": repr(self.conf), "iou": repr(self.iou), "engine": ENGINE}


@dataclass(frozen=True)
class ImageDetections:
    """One image's detections: (n, 6) float64 rows cls, conf, x1, y1, x2, y2 in pixels, best first."""

    sha256: str
    width: int
    height: int
    boxes: np.ndarray


@dataclass(frozen=True)
class CachedView:
    """A dataset split whose images were predicted (complete: every image of it is in the cache)."""

    dataset: str
    split: str
    images: int
    complete: bool
    updated: str


class PredictionStore:
    """The SQLite file of one StoreKey: images(sha256 -> width, height, detections)."""

    def __init__(self, path: Path, key: StoreKey):
        self.path, self.key = path, key
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash loses at most the last commits, never the file
        self._db.executescript(_SCHEMA)
        stored = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if not stored:
            with self._db:
                self._db.executemany("INSERT INTO meta VALUES (?, ?)", key.meta().items())
        elif stored != key.meta():
            self._db.close()
            raise OperationFailed(f"the predictions cache {path} was written for {stored}, not {key.meta()}: "
                                  "move it aside (it is only a cache) and run again")

    def __enter__(self) -> "PredictionStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def known(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT sha256 FROM images")}

    def put(self, rows: Sequence[ImageDetections]) -> None:
        """One transaction: every row or none."""
        if not rows:
            return
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?)",
                [(r.sha256, r.width, r.height, len(r.boxes),
                  np.ascontiguousarray(r.boxes, dtype=np.float64).tobytes(), now) for r in rows])

    def get(self, sha256s: Iterable[str]) -> dict[str, ImageDetections]:
        wanted = json.dumps(list(dict.fromkeys(sha256s)))
        rows = self._db.execute("SELECT sha256, width, height, boxes, detections FROM images "
                                "WHERE sha256 IN (SELECT value FROM json_each(?))", (wanted,))
        return {sha256: ImageDetections(sha256, width, height, np.frombuffer(blob, dtype=np.float64).reshape(count, 6))
                for sha256, width, height, count, blob in rows}

    def record_view(self, dataset: str, split: str, images: int, complete: bool) -> None:
        """Note that this dataset split was predicted (a cache that only serves reads is not written)."""
        row = self._db.execute("SELECT images, complete FROM views WHERE dataset = ? AND split = ?",
                               (dataset, split)).fetchone()
        if row == (images, int(complete)):
            return
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO views VALUES (?, ?, ?, ?, ?)",
                             (dataset, split, images, int(complete), datetime.now(UTC).isoformat(timespec="seconds")))

    def views(self) -> list[CachedView]:
        return [CachedView(d, s, n, bool(c), u) for d, s, n, c, u in
                self._db.execute("SELECT dataset, split, images, complete, updated FROM views ORDER BY updated")]


def store_key(settings: Settings, model: ModelRef) -> StoreKey:
    return StoreKey(model.sha256, model.imgsz, EVAL_CONF, settings.inference.iou)


def store_path(settings: Settings, model: ModelRef) -> Path:
    key = store_key(settings, model)
    return Layout(settings.paths).predictions_file(key.onnx_sha256, key.imgsz, key.conf, key.iou)


def open_store(settings: Settings, model: ModelRef) -> PredictionStore:
    return PredictionStore(store_path(settings, model), store_key(settings, model))


# ------------------------------------------------------------------------------------- predicting


@dataclass
class PredictionRun:
    """What `predict_dataset` did."""

    model: ModelRef
    dataset: str
    split: str
    images: int  # images in the split
    predicted: int  # images run through the ONNX now
    reused: int  # images whose detections were already cached (this or another dataset version)
    seconds: float
    store: Path
    engine: str = ENGINE

    @property
    def images_per_s(self) -> float | None:
        return round(self.predicted / self.seconds, 2) if self.predicted and self.seconds > 0 else None

    def where(self) -> str:
        return f"{self.split}, {self.images} images, imgsz {self.model.imgsz}, {self.engine}"


def open_detector(onnx_bytes: bytes, settings: Settings) -> Detector:
    """The gate's detector (EVAL_CONF, INFERENCE_IOU) on the engine `azaion infer` builds on this
    machine (INFERENCE_BATCH, INFERENCE_THREADS, INFERENCE_WORKERS): per image the same boxes as
    the gate, at infer's speed."""
    engine = OnnxEngine(onnx_bytes, threads=settings.inference.threads, batch_size=settings.inference.batch or None,
                        workers=settings.inference.workers)
    return Detector(engine, conf=EVAL_CONF, iou=settings.inference.iou)


def _decoded(items: list[tuple[str, Path]], size: int, unreadable: list[str]) -> Iterator[list[tuple]]:
    """Batches of (sha256, frame) of `size` readable images, decoded as they are asked for."""
    import cv2  # heavy: only where images are decoded

    batch: list[tuple] = []
    for sha256, path in items:
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            unreadable.append(str(path))
            continue
        batch.append((sha256, frame))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _predict_into(store: PredictionStore, model: ModelRef, items: list[tuple[str, Path]], settings: Settings,
                  progress: bool, description: str) -> list[str]:
    """Detect on `items` (sha256, path) and commit every COMMIT_IMAGES images; returns the unreadable."""
    detector = open_detector(model.onnx.read_bytes(), settings)
    unreadable: list[str] = []
    pending: list[ImageDetections] = []

    def detect(batch: list[tuple]) -> tuple[list[tuple], list]:
        return batch, detector.detect([frame for _, frame in batch])

    try:
        with Progress(description, len(items), progress) as bar:
            for batch, results in ordered_map(detect, _decoded(items, detector.engine.batch_size, unreadable),
                                              detector.engine.workers):
                for (sha256, frame), found in zip(batch, results, strict=True):
                    boxes = prediction_array([(d.cls, d.conf, d.x1, d.y1, d.x2, d.y2) for d in found])
                    pending.append(ImageDetections(sha256, frame.shape[1], frame.shape[0], boxes))
                if len(pending) >= COMMIT_IMAGES:
                    store.put(pending)
                    pending = []
                bar.advance(len(batch))
    finally:
        store.put(pending)  # what was detected before an interruption is kept
    return unreadable


def predict_dataset(settings: Settings, model: ModelRef, formed: DatasetDir, split: str = "test",
                    progress: bool = True) -> PredictionRun:
    """Cache the model's detections on every image of the split that is not cached yet."""
    started = time.perf_counter()
    images = split_images(formed, split)
    layout = Layout(settings.paths)
    with open_store(settings, model) as store:
        missing = _missing(store, images)
        predicted = 0
        if missing:
            # one prediction run per cache at a time (a second one would only redo the same work)
            lock = InstanceLock(layout.lock_file(f"predict-{model.sha256[:16]}"), "prediction run of this model")
            lock.acquire()
            try:
                missing = _missing(store, images)  # another run may have finished them meanwhile
                log(logger, logging.INFO, "predicting", model=model.label, dataset=formed.name, split=split,
                    images=len(missing), cached=len(set(images.sha256)) - len(missing))
                unreadable = _predict_into(store, model, missing, settings, progress,
                                           f"predict {formed.name}/{split}")
            finally:
                lock.release()
            predicted = len(missing) - len(unreadable)
            if unreadable:
                store.record_view(formed.name, split, len(images.paths), complete=False)
                raise InputError(f"{len(unreadable)} unreadable image(s) in {formed.name}/{split}, e.g. "
                                 f"{', '.join(unreadable[:5])}; the others are cached; re-form the dataset "
                                 "(`azaion dataset form`)")
        store.record_view(formed.name, split, len(images.paths), complete=True)
    seconds = time.perf_counter() - started
    run = PredictionRun(model, formed.name, split, len(images.paths), predicted, len(images.paths) - predicted,
                        round(seconds, 3), store.path)
    log(logger, logging.INFO, "predictions cached", model=model.label, dataset=formed.name, split=split,
        images=run.images, predicted=run.predicted, reused=run.reused, seconds=run.seconds, store=str(store.path))
    return run


def _missing(store: PredictionStore, images: SplitImages) -> list[tuple[str, Path]]:
    """(sha256, first path) of each image content of the split that is not cached, in split order."""
    known = store.known()
    missing: dict[str, Path] = {}
    for path, sha256 in zip(images.paths, images.sha256, strict=True):
        if sha256 not in known and sha256 not in missing:
            missing[sha256] = path
    return list(missing.items())


# ------------------------------------------------------------------------------------- reading back


@dataclass(frozen=True)
class LabelledImage:
    """One image of the split: its cached detections and its label boxes, both in pixels."""

    name: str  # path inside the dataset, e.g. test/images/x.jpg
    path: Path
    sha256: str
    width: int
    height: int
    predictions: np.ndarray  # (n, 6) cls, conf, x1, y1, x2, y2, best first (down to EVAL_CONF)
    truths: np.ndarray  # (m, 5) cls, x1, y1, x2, y2


@dataclass(frozen=True)
class SplitPredictions:
    """A model's cached detections on every image of a dataset split, with the labels."""

    model: ModelRef
    dataset: str
    dataset_path: Path
    split: str
    conf: float  # detections kept down to this confidence
    iou: float  # overlap cleanup IoU they were made with
    images: list[LabelledImage]
    engine: str = ENGINE

    @property
    def imgsz(self) -> int:
        return self.model.imgsz

    def where(self) -> str:
        """What every figure is measured on, e.g. `test, 22 images, imgsz 320, ONNX`."""
        return f"{self.split}, {len(self.images)} images, imgsz {self.imgsz}, {self.engine}"


def load_split(settings: Settings, model: ModelRef, formed: DatasetDir, split: str) -> SplitPredictions:
    """The cached detections of every image of the split (OperationFailed when some are missing:
    run predict_dataset first) and its labels."""
    images = split_images(formed, split)
    found: dict[str, ImageDetections] = {}
    if store_path(settings, model).is_file():  # reading never creates a cache
        with open_store(settings, model) as store:
            found = store.get(images.sha256)
    missing = [p for p, s in zip(images.paths, images.sha256, strict=True) if s not in found]
    if missing:
        raise OperationFailed(f"{len(missing)} image(s) of {formed.name}/{split} have no cached detections of "
                              f"{model.label} (e.g. {missing[0]}): run `azaion predict-dataset` first")
    labelled = []
    for path, sha256 in zip(images.paths, images.sha256, strict=True):
        cached = found[sha256]
        labelled.append(LabelledImage(images.name_of(path), path, sha256, cached.width, cached.height, cached.boxes,
                                      truth_array(ground_truth(path, cached.width, cached.height))))
    return SplitPredictions(model, formed.name, formed.root, split, EVAL_CONF, settings.inference.iou, labelled)


def split_predictions(settings: Settings, model: str | ModelRef | None = None, dataset: str | None = None,
                      split: str = "test", progress: bool = True) -> tuple[SplitPredictions, PredictionRun]:
    """Predict whatever of the split is not cached yet, then load all of it: the one call the
    analysis commands (and the cockpit) make."""
    ref = model if isinstance(model, ModelRef) else resolve_model(settings, model)
    formed = resolve_split(settings, dataset, split, ref)
    run = predict_dataset(settings, ref, formed, split, progress)
    return load_split(settings, ref, formed, split), run


def cached_views(settings: Settings, model: ModelRef) -> list[CachedView]:
    """The dataset splits this model's cache has predicted (for listing; nothing is predicted)."""
    if not store_path(settings, model).is_file():
        return []
    with open_store(settings, model) as store:
        return store.views()
