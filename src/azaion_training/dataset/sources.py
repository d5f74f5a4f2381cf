"""Annotations in an area (image + label by name), checked and hashed in one read per file.

Checking that an image decodes is a structural check, not a full decode: JPEG must start with
the SOI magic and carry the EOI marker at its end (a truncated upload loses it), PNG must
start with its signature and end with the IEND chunk. Decoding 100,000 JPEGs would cost
minutes; the structural check costs nothing beyond the read the sha256 needs anyway. Other
formats (BMP, WebP, TIFF) are rare and fully decoded with OpenCV.
"""

import hashlib
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from azaion_training.dataset.progress import Progress
from azaion_training.fsutil import TEMP_PREFIX
from azaion_training.labels import LabelError, parse_label_text
from azaion_training.layout import Area

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A half-written pair (the consumer is storing it right now) is left alone for this long.
FRESH_S = 120.0
THREADS = 8  # reads, hashing and links release the GIL: threads overlap the per-file I/O
CHUNK = 256


@dataclass(frozen=True)
class Pair:
    name: str
    image: str | None  # plain strings: pathlib costs seconds per 100,000 files
    label: str | None


@dataclass(frozen=True)
class CheckedPair:
    pair: Pair
    image_sha256: str
    label_sha256: str
    classes: tuple[int, ...]  # one per box


@dataclass(frozen=True)
class BadPair:
    pair: Pair
    reason: str


def image_problem(data: bytes, suffix: str) -> str | None:
    """Why these image bytes cannot be used, or None (see the module docstring)."""
    suffix = suffix.lower()
    if len(data) < 16:
        return f"image is empty or too small ({len(data)} bytes)"
    if suffix in (".jpg", ".jpeg"):
        if not data.startswith(JPEG_MAGIC):
            return "not a JPEG (bad magic bytes)"
        if data.rfind(JPEG_END, max(0, len(data) - 4096)) < 0:
            return "truncated JPEG (no end-of-image marker)"
        return None
    if suffix == ".png":
        if not data.startswith(PNG_MAGIC):
            return "not a PNG (bad signature)"
        if b"IEND" not in data[-12:]:
            return "truncated PNG (no IEND chunk)"
        return None
    if suffix not in IMAGE_SUFFIXES:
        return f"unsupported image type {suffix!r} (use one of {', '.join(IMAGE_SUFFIXES)})"
    import cv2
    import numpy as np

    if cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is None:
        return f"{suffix} image cannot be decoded"
    return None


def _visible_files(directory: Path) -> list[os.DirEntry]:
    if not directory.is_dir():
        return []
    with os.scandir(directory) as entries:
        return [e for e in entries if not e.name.startswith((".", TEMP_PREFIX)) and e.is_file()]


def scan_pairs(area: Area) -> tuple[list[Pair], list[BadPair], list[str]]:
    """(pairs, bad, fresh): every name in `area`, sorted; `bad` holds duplicates and orphans
    (image without label or label without image), `fresh` the orphans young enough to be
    still in the middle of being written (left alone)."""
    images: dict[str, list[str]] = {}
    for entry in _visible_files(area.images):
        images.setdefault(os.path.splitext(entry.name)[0], []).append(entry.path)
    labels = {e.name[:-4]: e.path for e in _visible_files(area.labels) if e.name.endswith(".txt")}
    pairs: list[Pair] = []
    bad: list[BadPair] = []
    fresh: list[str] = []
    now = time.time()
    for name in sorted(images.keys() | labels.keys()):
        found = sorted(images.get(name, []))
        for extra in found[1:]:
            kept = os.path.basename(found[0])
            bad.append(BadPair(Pair(name, extra, None), f"second image for the same name (kept {kept})"))
        image, label = (found[0] if found else None), labels.get(name)
        if image and label:
            pairs.append(Pair(name, image, label))
            continue
        present = image or label
        if now - os.stat(present).st_mtime < FRESH_S:
            fresh.append(present)
        else:
            bad.append(BadPair(Pair(name, image, label), "image has no label file" if image else "label has no image"))
    return pairs, bad, fresh


def check_pair(pair: Pair) -> CheckedPair | BadPair:
    try:
        with open(pair.image, "rb") as image, open(pair.label, "rb") as label:
            image_bytes, label_bytes = image.read(), label.read()
    except OSError as exc:
        return BadPair(pair, f"cannot be read: {exc.strerror or exc}")
    problem = image_problem(image_bytes, os.path.splitext(pair.image)[1])
    if problem:
        return BadPair(pair, problem)
    try:
        boxes = parse_label_text(label_bytes.decode("utf-8"))
    except UnicodeDecodeError:
        return BadPair(pair, "label is not UTF-8 text")
    except LabelError as exc:
        return BadPair(pair, f"label {exc}")
    return CheckedPair(pair, hashlib.sha256(image_bytes).hexdigest(), hashlib.sha256(label_bytes).hexdigest(),
                       tuple(box.cls for box in boxes))


def in_chunks(items: Sequence, size: int = CHUNK) -> list[Sequence]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def check_pairs(pairs: Sequence[Pair], progress: bool = True) -> tuple[list[CheckedPair], list[BadPair]]:
    """Check and hash every pair (threads, in chunks: one future per file costs more than the
    check itself), in input order."""
    good: list[CheckedPair] = []
    bad: list[BadPair] = []
    with Progress("checking annotations", len(pairs), progress) as bar, ThreadPoolExecutor(THREADS) as pool:
        for results in pool.map(lambda chunk: [check_pair(p) for p in chunk], in_chunks(pairs)):
            for result in results:
                (good if isinstance(result, CheckedPair) else bad).append(result)
            bar.advance(len(results))
    return good, bad

