"""Annotations in an area (image + label by name), checked and hashed in one read per file.

An image is admitted only when it decodes (images.decode_problem: the structural rule the
consumer applies, then a decode at 1/8 resolution); a label only when every box is valid
(labels.py). Both rules are shared with the consumer, so the two never disagree.

Checks are remembered in a CheckCache (check_cache.py), so each file is checked once in its
life and a re-formation reads only new or changed files. A large first pass runs in forked
processes over chunks: the check is CPU-bound (threads measured slower than one thread here).
"""

import hashlib
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

from azaion_training.dataset.check_cache import CheckCache, Entry, Signature, stat_signature
from azaion_training.fsutil import TEMP_PREFIX
from azaion_training.images import IMAGE_SUFFIXES, decode_problem
from azaion_training.labels import LabelError, label_classes
from azaion_training.layout import Area
from azaion_training.progress import Progress

# A half-written pair (the consumer is storing it right now) is left alone for this long.
FRESH_S = 120.0
CHUNK = 1024  # pairs per process task: one task per file costs more than the check itself
POOL_MIN = 4000  # fewer unchecked pairs than this: forking processes costs more than it saves


# Named tuples, not dataclasses: a re-formation builds several per annotation, and a frozen
# dataclass costs several times more to construct (seconds per 100,000 annotations).
class Pair(NamedTuple):
    name: str
    image: str | None  # plain strings: pathlib costs seconds per 100,000 files
    label: str | None


class CheckedPair(NamedTuple):
    pair: Pair
    image_sha256: str
    label_sha256: str
    classes: tuple[int, ...]  # one per box
    signature: Signature  # of the files as they were read: the check cache's key


class BadPair(NamedTuple):
    pair: Pair
    reason: str


def image_problem(data: bytes, suffix: str) -> str | None:
    """Why this image file cannot be used, or None: a known suffix and a decodable image."""
    if suffix.lower() not in IMAGE_SUFFIXES:
        return f"unsupported image type {suffix!r} (use one of {', '.join(IMAGE_SUFFIXES)})"
    return decode_problem(data)


def _visible_files(directory: Path) -> list[os.DirEntry]:
    if not directory.is_dir():
        return []
    with os.scandir(directory) as entries:
        return [e for e in entries if not e.name.startswith((".", TEMP_PREFIX)) and e.is_file()]


def scan_pairs(area: Area) -> tuple[list[Pair], list[BadPair], list[str]]:
    """(pairs, bad, fresh): every name in `area`, sorted; `bad` holds duplicates and orphans
    (image without label or label without image), `fresh` the orphans young enough to be
    still in the middle of being written (left alone)."""
    images: dict[str, str] = {}
    duplicates: dict[str, list[str]] = {}  # name -> every image of a name that has several
    for entry in _visible_files(area.images):
        name = os.path.splitext(entry.name)[0]
        if name in images:
            duplicates.setdefault(name, [images[name]]).append(entry.path)
        else:
            images[name] = entry.path
    labels = {e.name[:-4]: e.path for e in _visible_files(area.labels) if e.name.endswith(".txt")}
    pairs: list[Pair] = []
    bad: list[BadPair] = []
    fresh: list[str] = []
    now = time.time()
    for name in sorted(images.keys() | labels.keys()):
        image, label = images.get(name), labels.get(name)
        if name in duplicates:
            image, *extras = sorted(duplicates[name])
            kept = os.path.basename(image)
            bad.extend(BadPair(Pair(name, extra, None), f"second image for the same name (kept {kept})")
                       for extra in extras)
        if image and label:
            pairs.append(Pair(name, image, label))
            continue
        present = image or label
        if now - os.stat(present).st_mtime < FRESH_S:
            fresh.append(present)
        else:
            bad.append(BadPair(Pair(name, image, label), "image has no label file" if image else "label has no image"))
    return pairs, bad, fresh


def _read(path: str) -> tuple[bytes, tuple[int, int, int]]:
    """The file and the signature of what was read (fstat of the open file: a file changed
    after it has a new signature, so the cache never pairs its new content with this one)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        stats = os.fstat(fd)
        return os.read(fd, stats.st_size), stat_signature(stats)
    finally:
        os.close(fd)


# A check's outcome in plain values (cheap to send back from a worker process): the reason a
# pair is bad, or (image sha256, label sha256, classes, signature)
CheckOutcome = str | tuple[str, str, tuple[int, ...], Signature]


def _examine(pair: Pair) -> CheckOutcome:
    try:
        image_bytes, image_signature = _read(pair.image)
        label_bytes, label_signature = _read(pair.label)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    problem = image_problem(image_bytes, os.path.splitext(pair.image)[1])
    if problem:
        return problem
    try:
        classes = label_classes(label_bytes.decode("utf-8"))
    except UnicodeDecodeError:
        return "label is not UTF-8 text"
    except LabelError as exc:
        return f"label {exc}"
    return (hashlib.sha256(image_bytes).hexdigest(), hashlib.sha256(label_bytes).hexdigest(), classes,
            image_signature + label_signature)


def _result(pair: Pair, outcome: CheckOutcome) -> CheckedPair | BadPair:
    return BadPair(pair, outcome) if isinstance(outcome, str) else CheckedPair(pair, *outcome)


def check_pair(pair: Pair) -> CheckedPair | BadPair:
    return _result(pair, _examine(pair))


def _examine_chunk(pairs: Sequence[Pair]) -> list[CheckOutcome]:
    return [_examine(pair) for pair in pairs]


def in_chunks(items: Sequence, size: int = CHUNK) -> list[Sequence]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _from_cache(pairs: Sequence[Pair], entries: dict[str, Entry]) -> tuple[dict[str, CheckedPair], list[Pair]]:
    """(name -> checked pair, for those whose files are unchanged since cached; the rest).
    The loop runs once per annotation of data/ at every formation: one os.stat per file, and
    the signature compared inline (stat_signature's fields)."""
    hits: dict[str, CheckedPair] = {}
    misses: list[Pair] = []
    stat = os.stat
    for pair in pairs:
        entry = entries.get(pair.name)
        if entry is not None and pair.image.rpartition("/")[2] == entry[0]:
            try:
                image, label = stat(pair.image), stat(pair.label)
            except OSError:  # gone or unreadable: the check will say so
                misses.append(pair)
                continue
            signature = entry[1]
            if signature == (image.st_ino, image.st_size, image.st_mtime_ns,
                             label.st_ino, label.st_size, label.st_mtime_ns):
                hits[pair.name] = CheckedPair(pair, entry[2], entry[3], entry[4], signature)
                continue
        misses.append(pair)
    return hits, misses


def _check_all(pairs: Sequence[Pair], progress: bool, processes: int | None) -> list[CheckedPair | BadPair]:
    """Results in input order: in forked processes when there are many pairs, else here."""
    if processes is None:
        processes = min(os.cpu_count() or 1, 4) if len(pairs) >= POOL_MIN else 1
    chunks = in_chunks(pairs, max(1, min(CHUNK, -(-len(pairs) // processes))))  # every process gets work
    results: list[CheckedPair | BadPair] = []
    if processes <= 1:
        with Progress("checking annotations", len(pairs), progress) as bar:
            for chunk in chunks:
                results.extend(map(_result, chunk, _examine_chunk(chunk)))
                bar.advance(len(chunk))
        return results
    # fork: no interpreter start-up or re-imports; the pool forks at the first submit, before
    # the progress bar starts its thread
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(_examine_chunk, chunk) for chunk in chunks]
        with Progress("checking annotations", len(pairs), progress) as bar:
            for chunk, future in zip(chunks, futures, strict=True):
                results.extend(map(_result, chunk, future.result()))
                bar.advance(len(chunk))
    return results


def check_pairs(pairs: Sequence[Pair], progress: bool = True, cache: Path | None = None,
                processes: int | None = None) -> tuple[list[CheckedPair], list[BadPair]]:
    """Check and hash every pair, in input order. With `cache` (a CheckCache file) only pairs
    whose files changed since their last check are read. `processes`: None picks by size."""
    good, bad, remember = check_pairs_later_cached(pairs, progress, cache, processes)
    remember()
    return good, bad


def check_pairs_later_cached(pairs: Sequence[Pair], progress: bool = True, cache: Path | None = None,
                             processes: int | None = None) -> tuple[list[CheckedPair], list[BadPair], Callable]:
    """check_pairs, but the cache is written only when the returned function is called (formation
    calls it while the files are being linked: a first formation writes 100,000 rows)."""
    check_cache = CheckCache(cache) if cache is not None else None
    entries = check_cache.load() if check_cache else {}
    hits, misses = _from_cache(pairs, entries)
    checked = {result.pair.name: result for result in _check_all(misses, progress, processes)}
    good: list[CheckedPair] = []
    bad: list[BadPair] = []
    for pair in pairs:
        result = hits.get(pair.name) or checked[pair.name]
        (good if isinstance(result, CheckedPair) else bad).append(result)

    def remember() -> None:
        if check_cache is not None:
            fresh = [(r.pair.name, (os.path.basename(r.pair.image), r.signature, r.image_sha256, r.label_sha256,
                                    r.classes)) for r in checked.values() if isinstance(r, CheckedPair)]
            check_cache.update(fresh, stale=entries.keys() - {c.pair.name for c in good})

    return good, bad, remember
