"""8x augmentation (docs/classes-and-labels.md) with a content-keyed cache in data-processed/.

Each source yields its original (`stem.ext`, boxes clipped) plus 7 variants `stem_1.jpg` ..
`stem_7.jpg` from the Albumentations chain below. Variants are keyed by the sha256 of the
source image and label: `data-processed/index/<stem>.json` records the key and the files'
hashes once all files are written, so a re-run (or a re-formed dataset) reuses them and an
edited annotation is redone. Randomness is seeded by the key, so two concurrent runs write
identical bytes and need no lock. Work runs in worker processes with a bounded window of
jobs in flight; a bad image or label is reported and the rest continue.
"""

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from azaion_training.dataset.check_cache import cache_file
from azaion_training.dataset.sources import CheckedPair, check_pairs, scan_pairs
from azaion_training.fsutil import TEMP_PREFIX, atomic_write_bytes, atomic_write_text, link_or_copy
from azaion_training.images import structure_problem
from azaion_training.labels import MIN_BOX_AREA, Box, LabelError, clip_box, label_text, read_label_file
from azaion_training.layout import Area, Layout
from azaion_training.logs import get_logger, log
from azaion_training.progress import Progress
from azaion_training.settings import Settings

logger = get_logger("augment")

PIPELINE_VERSION = "1"  # part of the cache key: bump it when the chain changes
VARIANTS = 7
JPEG_QUALITY = 95
JOBS_PER_WORKER = 4  # jobs in flight per worker: keeps workers busy and memory bounded


def build_pipeline():
    """The augmentation chain (docs/classes-and-labels.md); boxes in YOLO format, clipped to the image on input."""
    import albumentations as A

    return A.Compose(
        [A.HorizontalFlip(p=0.6),
         A.RandomBrightnessContrast(p=0.4),
         A.Affine(scale=(0.8, 1.2), rotate=(-35, 35), shear=(-10, 10), p=0.8),
         A.MotionBlur(p=0.1),
         A.HueSaturationValue(p=0.4)],
        bbox_params=A.BboxParams(format="yolo", label_fields=["classes"], clip=True),
    )


@dataclass(frozen=True)
class AugmentJob:
    name: str
    image: Path
    label: Path
    key: str

    @classmethod
    def from_checked(cls, checked: CheckedPair, min_area: float) -> "AugmentJob":
        return cls(checked.pair.name, Path(checked.pair.image), Path(checked.pair.label),
                   cache_key(checked.image_sha256, checked.label_sha256, min_area))

    @property
    def seed(self) -> int:
        return int(self.key[:8], 16)


@dataclass(frozen=True)
class Variant:
    image: str  # file names inside data-processed/images and /labels
    label: str
    image_sha256: str
    label_sha256: str


@dataclass
class AugmentOutcome:
    name: str
    key: str
    variants: list[Variant] = field(default_factory=list)
    error: str | None = None  # the source could not be used at all
    failed_variants: list[str] = field(default_factory=list)  # why a variant is missing


@dataclass
class AugmentSummary:
    augmented: int = 0
    reused: int = 0
    failed_variants: int = 0
    variants: dict[str, list[Variant]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it was not augmented

    def to_dict(self) -> dict:
        return {"augmented": self.augmented, "reused": self.reused, "skipped": len(self.skipped),
                "failed_variants": self.failed_variants, "skipped_examples": dict(list(self.skipped.items())[:10]),
                "outputs": sum(len(v) for v in self.variants.values())}


def cache_key(image_sha256: str, label_sha256: str, min_area: float) -> str:
    text = f"{PIPELINE_VERSION}:{image_sha256}:{label_sha256}:{min_area!r}"
    return hashlib.sha256(text.encode()).hexdigest()


class VariantCache:
    """data-processed/{images,labels} plus index/<stem>.json (written last: marks completion)."""

    def __init__(self, area: Area):
        self.area = area
        self.index = area.root / "index"

    def marker(self, name: str) -> Path:
        return self.index / f"{name}.json"

    def lookup(self, job: AugmentJob) -> list[Variant] | None:
        try:
            record = json.loads(self.marker(job.name).read_text(encoding="utf-8"))
            if record["key"] != job.key:
                return None
            variants = [Variant(**entry) for entry in record["variants"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if all((self.area.images / v.image).is_file() and (self.area.labels / v.label).is_file() for v in variants):
            return variants
        return None

    def store(self, outcome: AugmentOutcome) -> None:
        record = {"key": outcome.key, "variants": [asdict(v) for v in outcome.variants],
                  "failed_variants": outcome.failed_variants}
        atomic_write_text(self.marker(outcome.name), json.dumps(record), durable=False)


_pipeline = None


def _init_worker() -> None:
    import cv2

    global _pipeline
    cv2.setNumThreads(1)  # one core per worker process: --workers decides the parallelism
    _pipeline = build_pipeline()


def _write_variant(area: Area, stem: str, image_bytes: bytes, suffix: str, boxes: list[Box]) -> Variant:
    text = label_text(boxes)
    atomic_write_bytes(area.images / f"{stem}{suffix}", image_bytes, durable=False)
    atomic_write_text(area.labels / f"{stem}.txt", text, durable=False)
    return Variant(f"{stem}{suffix}", f"{stem}.txt", hashlib.sha256(image_bytes).hexdigest(),
                   hashlib.sha256(text.encode()).hexdigest())


def _place_original(area: Area, job: AugmentJob, image_bytes: bytes, boxes: list[Box]) -> Variant:
    """The untouched image (hardlinked, no extra space) with its clipped label."""
    target = area.images / f"{job.name}{job.image.suffix}"
    # rename() onto another link of the same file is a no-op that would leave the temp behind
    if not (target.exists() and os.path.samefile(job.image, target)):
        temp = area.images / f"{TEMP_PREFIX}{job.name}-{os.getpid()}{job.image.suffix}"
        link_or_copy(job.image, temp)
        os.replace(temp, target)
    text = label_text(boxes)
    atomic_write_text(area.labels / f"{job.name}.txt", text, durable=False)
    return Variant(target.name, f"{job.name}.txt", hashlib.sha256(image_bytes).hexdigest(),
                   hashlib.sha256(text.encode()).hexdigest())


def augment_variant(pipeline, image, boxes: list[Box], min_area: float) -> tuple[object, list[Box]]:
    """One augmented image and its boxes: clipped, tiny ones dropped, all in [0, 1]."""
    result = pipeline(image=image, bboxes=[(b.cx, b.cy, b.w, b.h) for b in boxes],
                      classes=[b.cls for b in boxes])
    pairs = zip(result["bboxes"], result["classes"], strict=True)
    out = [clip_box(Box(int(cls), *map(float, bbox)), min_area) for bbox, cls in pairs]
    return result["image"], [box for box in out if box is not None]


def augment_one(job: AugmentJob, processed_root: Path, min_area: float) -> AugmentOutcome:
    """All 8 outputs of one source, recorded in the cache; errors are returned, not raised."""
    import cv2
    import numpy as np

    area = Area(processed_root)
    outcome = AugmentOutcome(job.name, job.key)
    try:
        image_bytes = job.image.read_bytes()
        problem = structure_problem(image_bytes)  # the full decode below does the rest
        image = None if problem else cv2.imdecode(np.frombuffer(image_bytes, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            outcome.error = problem or "image cannot be decoded"
            return outcome
        boxes = [b for b in (clip_box(box, min_area) for box in read_label_file(job.label)) if b is not None]
        outcome.variants.append(_place_original(area, job, image_bytes, boxes))
    except (OSError, LabelError) as exc:
        outcome.error = str(exc)
        return outcome
    _pipeline.set_random_seed(job.seed)  # the same source always gets the same variants
    for number in range(1, VARIANTS + 1):
        try:
            augmented, variant_boxes = augment_variant(_pipeline, image, boxes, min_area)
            ok, encoded = cv2.imencode(".jpg", augmented, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise ValueError("JPEG encoding failed")
            stem = f"{job.name}_{number}"
            outcome.variants.append(_write_variant(area, stem, encoded.tobytes(), ".jpg", variant_boxes))
        except Exception as exc:  # a transform failing on one variant must not cost the others
            outcome.failed_variants.append(f"variant {number}: {exc}")
    VariantCache(area).store(outcome)
    return outcome


def _run_inline(jobs: Sequence[AugmentJob], processed_root: Path, min_area: float) -> Iterator[AugmentOutcome]:
    if _pipeline is None:
        _init_worker()
    for job in jobs:
        yield augment_one(job, processed_root, min_area)


def run_in_processes(jobs: Sequence[AugmentJob], processed_root: Path, min_area: float,
                      workers: int) -> Iterator[AugmentOutcome]:
    import multiprocessing

    # spawn: workers never inherit the parent's threads (progress bar, OpenCV pools)
    context = multiprocessing.get_context("spawn")
    pending = iter(jobs)
    in_flight: set[Future] = set()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        while True:
            while len(in_flight) < workers * JOBS_PER_WORKER:
                job = next(pending, None)
                if job is None:
                    break
                in_flight.add(pool.submit(augment_one, job, processed_root, min_area))
            if not in_flight:
                return
            done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()


def run_jobs(layout: Layout, jobs: Iterable[AugmentJob], workers: int = 0, min_area: float = MIN_BOX_AREA,
             progress: bool = True) -> AugmentSummary:
    """Fill the cache for `jobs` (reusing what is there); workers=0 runs in this process."""
    cache = VariantCache(layout.processed)
    for directory in (*layout.processed.directories(), cache.index):
        directory.mkdir(parents=True, exist_ok=True)
    summary = AugmentSummary()
    todo = []
    for job in jobs:
        cached = cache.lookup(job)
        if cached is None:
            todo.append(job)
        else:
            summary.variants[job.name] = cached
            summary.reused += 1
    runner = (run_in_processes(todo, layout.processed.root, min_area, workers) if workers > 0
              else _run_inline(todo, layout.processed.root, min_area))
    with Progress("augmenting", len(todo), progress) as bar:
        for outcome in runner:
            bar.advance()
            if outcome.error:
                summary.skipped[outcome.name] = outcome.error
                log(logger, logging.WARNING, "source skipped", name=outcome.name, reason=outcome.error)
                continue
            summary.augmented += 1
            summary.failed_variants += len(outcome.failed_variants)
            summary.variants[outcome.name] = outcome.variants
    return summary


def augment_data(settings: Settings, workers: int = 0, min_area: float = MIN_BOX_AREA,
                 progress: bool = True) -> AugmentSummary:
    """Augment every annotation of data/ that is not cached yet. Bad annotations are reported
    and skipped (dataset formation is what quarantines them)."""
    layout = Layout(settings.paths)
    pairs, orphans, _fresh = scan_pairs(layout.data)
    good, bad = check_pairs(pairs, progress, cache=cache_file(layout))
    summary = run_jobs(layout, (AugmentJob.from_checked(c, min_area) for c in good), workers, min_area, progress)
    for item in (*orphans, *bad):
        summary.skipped[item.pair.name] = item.reason
    log(logger, logging.INFO, "augmentation round done", **summary.to_dict())
    return summary


def watch(settings: Settings, interval_s: float, stop: threading.Event, workers: int = 0,
          min_area: float = MIN_BOX_AREA, progress: bool = True) -> int:
    """The original's loop: a round, then wait `interval_s`, until `stop` is set. Returns rounds run."""
    rounds = 0
    while not stop.is_set():
        augment_data(settings, workers, min_area, progress)
        rounds += 1
        stop.wait(interval_s)
    return rounds
