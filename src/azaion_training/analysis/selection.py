"""What to annotate next (docs/data-engine.md, "What to annotate next"): from a video or a folder
of images, the frames where the production model is unsure, spread over what the source shows,
never two near-duplicates.

- **Uncertainty** of a frame: the mean of its three largest box uncertainties, a box's being
  1 - |2c - 1| for its confidence c (1 at c = 0.5, 0 at c = 0 or 1), over the detections the gate's
  detector keeps down to MIN_CONF. A frame whose objects the model calls confidently (or that
  holds nothing the model reacts to) scores near 0; one with several boxes near the decision
  threshold scores highest. Three boxes, not one: a single borderline box is weaker evidence than
  several.
- **Embedding**: a tiny descriptor computed from the pixels, no model of its own: an HSV colour
  histogram (8 x 4 x 4 bins) and a 16 x 16 grey thumbnail, each L2-normalised, joined and scaled
  to unit length. Frames of one scene lie close; a new scene, light or viewpoint lies far.
- **Choice**: greedy. The first frame is the most uncertain; then each step takes the frame that
  maximises UNCERTAINTY_WEIGHT x uncertainty + (1 - UNCERTAINTY_WEIGHT) x (its distance to the
  nearest chosen frame / the largest such distance): k-center greedy (coverage) traded against
  uncertainty. A frame closer than NEAR_DUPLICATE to a chosen one is never taken.
"""

import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from azaion_training.errors import InputError
from azaion_training.fsutil import atomic_write_bytes, atomic_write_text
from azaion_training.layout import Layout, is_safe_name
from azaion_training.logs import get_logger, log
from azaion_training.settings import Settings

logger = get_logger("analysis.selection")

MIN_CONF = 0.05  # detections below this say nothing about the frame
TOP_BOXES = 3  # boxes averaged into a frame's uncertainty
UNCERTAINTY_WEIGHT = 0.5
NEAR_DUPLICATE = 0.1  # embedding distance (unit vectors, 0..2) below which two frames are near-duplicates
THUMB = 16
HIST_BINS = (8, 4, 4)
DEFAULT_EVERY = 10  # video frames between candidates (≈ 2.5 per second at 25 fps)
DEFAULT_BUDGET = 50


def box_uncertainty(conf: np.ndarray) -> np.ndarray:
    return 1.0 - np.abs(2.0 * np.asarray(conf, dtype=np.float64) - 1.0)


def frame_uncertainty(conf: Sequence[float]) -> float:
    """The mean of the TOP_BOXES largest box uncertainties (missing boxes count 0)."""
    values = np.sort(box_uncertainty(np.asarray([c for c in conf if c >= MIN_CONF])))[::-1][:TOP_BOXES]
    return float(values.sum() / TOP_BOXES)


def embedding(image: np.ndarray) -> np.ndarray:
    """The frame's descriptor (module docstring), a unit vector."""
    import cv2

    small = cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, list(HIST_BINS), [0, 180, 0, 256, 0, 256]).ravel()
    grey = cv2.resize(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    thumb = grey.astype(np.float64).ravel()
    thumb -= thumb.mean()
    parts = [hist / (np.linalg.norm(hist) or 1.0), thumb / (np.linalg.norm(thumb) or 1.0)]
    joined = np.concatenate(parts)
    return joined / (np.linalg.norm(joined) or 1.0)


@dataclass(frozen=True)
class Choice:
    index: int  # into the candidates
    uncertainty: float
    distance: float | None  # to the nearest frame chosen before it (None: the first)
    reason: str


def select(uncertainty: Sequence[float], embeddings: np.ndarray, budget: int,
           weight: float = UNCERTAINTY_WEIGHT, near_duplicate: float = NEAR_DUPLICATE) -> list[Choice]:
    """Greedy choice of up to `budget` candidates (module docstring); never two closer than
    `near_duplicate`."""
    u = np.asarray(uncertainty, dtype=np.float64)
    n = len(u)
    if budget <= 0 or n == 0:
        return []
    emb = np.asarray(embeddings, dtype=np.float64).reshape(n, -1)
    nearest = np.full(n, np.inf)
    available = np.ones(n, dtype=bool)
    chosen: list[Choice] = []
    while len(chosen) < budget and available.any():
        if not chosen:
            k = int(np.argmax(np.where(available, u, -np.inf)))
            distance = None
            reason = f"most uncertain frame ({u[k]:.2f})"
        else:
            spread = nearest[available].max() or 1.0
            score = weight * u + (1 - weight) * np.minimum(nearest, spread) / spread
            k = int(np.argmax(np.where(available, score, -np.inf)))
            distance = float(nearest[k])
            reason = (f"uncertainty {u[k]:.2f}, {distance:.2f} from the nearest chosen frame "
                      f"({'new content' if distance >= spread * 0.5 else 'unsure model'})")
        chosen.append(Choice(k, float(u[k]), distance, reason))
        available[k] = False
        d = np.linalg.norm(emb - emb[k], axis=1)
        nearest = np.minimum(nearest, d)
        available &= nearest >= near_duplicate
    return chosen


@dataclass(frozen=True)
class Candidate:
    key: str  # the frame's file name (images) or index (video)
    index: int
    uncertainty: float
    boxes: list[dict[str, Any]]  # the detections at MIN_CONF, for the reason


@dataclass
class SelectionResult:
    source: Path
    directory: Path
    candidates: int
    budget: int
    chosen: list[dict[str, Any]]
    model: str

    def to_dict(self) -> dict[str, Any]:
        return {"source": str(self.source), "directory": str(self.directory), "model": self.model,
                "candidates": self.candidates, "budget": self.budget, "chosen": self.chosen}


def _frames(source: Path, every: int) -> Iterator[tuple[str, int, np.ndarray]]:
    import cv2

    from azaion_training.inference.pipeline import VideoSource, image_files, is_image_source

    if is_image_source(source):
        for i, path in enumerate(image_files(source)):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                yield path.name, i, image
        return
    for frame in VideoSource(source, every):
        yield f"frame{frame.index:07d}", frame.index, frame.image


def next_to_annotate(settings: Settings, source: Path, budget: int = DEFAULT_BUDGET, model: str | None = None,
                     every: int = DEFAULT_EVERY, name: str | None = None, progress: bool = True) -> SelectionResult:
    """Rank the source's frames, choose `budget`, write them and selection.jsonl under
    <root>/analysis/selections/<name>/."""
    import cv2

    from azaion_training.analysis.predictions import open_detector, resolve_model
    from azaion_training.progress import Progress

    if not source.exists():
        raise InputError(f"--source {source}: no such video, image or directory")
    if budget < 1:
        raise InputError("--budget must be at least 1")
    name = name or f"next-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
    if not is_safe_name(name):
        raise InputError(f"--name {name!r}: use 1-200 characters of A-Z a-z 0-9 . _ -")
    ref = resolve_model(settings, model)
    detector = open_detector(ref.onnx.read_bytes(), settings)
    candidates: list[Candidate] = []
    vectors: list[np.ndarray] = []
    with Progress(f"rank {source.name}", None, progress) as bar:
        for key, index, image in _frames(source, every):
            found = [d for d in detector.detect([image])[0] if d.conf >= MIN_CONF]
            boxes = [{"cls": d.cls, "conf": round(float(d.conf), 3),
                      "xyxy": [round(float(v), 1) for v in (d.x1, d.y1, d.x2, d.y2)]} for d in found]
            candidates.append(Candidate(key, index, frame_uncertainty([d.conf for d in found]), boxes))
            vectors.append(embedding(image))
            bar.advance(1)
    if not candidates:
        raise InputError(f"{source} gave no readable frame")
    choices = select([c.uncertainty for c in candidates], np.stack(vectors), budget)
    directory = Layout(settings.paths).selection_dir(name)
    frames_dir = directory / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    wanted = {candidates[c.index].index: c for c in choices}
    written: dict[int, str] = {}
    if source.is_dir():
        for key, index, _ in ((c.key, c.index, None) for c in candidates if c.index in wanted):
            shutil.copyfile(source / key, frames_dir / key)
            written[index] = key
    elif source.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"):
        shutil.copyfile(source, frames_dir / source.name)
        written[0] = source.name
    else:
        for key, index, image in _frames(source, every):
            if index in wanted:
                file_name = f"{source.stem}-{key}.jpg"
                atomic_write_bytes(frames_dir / file_name, cv2.imencode(".jpg", image)[1].tobytes(), durable=False)
                written[index] = file_name
    chosen = []
    for rank, choice in enumerate(choices, start=1):
        candidate = candidates[choice.index]
        confident = sorted(candidate.boxes, key=lambda b: abs(b["conf"] - 0.5))[:TOP_BOXES]
        chosen.append({"rank": rank, "frame": written.get(candidate.index), "source_index": candidate.index,
                       "uncertainty": round(choice.uncertainty, 4),
                       "distance": None if choice.distance is None else round(choice.distance, 4),
                       "reason": choice.reason, "boxes": confident})
    atomic_write_text(directory / "selection.jsonl", "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chosen))
    log(logger, logging.INFO, "frames chosen", source=str(source), candidates=len(candidates), chosen=len(chosen),
        directory=str(directory))
    return SelectionResult(source, directory, len(candidates), budget, chosen, ref.label)
