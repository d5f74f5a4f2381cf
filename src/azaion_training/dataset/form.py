"""Dataset formation: data/ -> datasets/azaion-YYYY-MM-DD[-N]/ (docs/data-tree.md).

Every annotation is checked (label rules, the image decodes) and hashed in one read; bad pairs
are quarantined to data-corrupted/ with a reason file (the only time formation moves source
files). The rest are split 70/20/10 by source media, hardlinked into the dataset (data/ is
never modified), optionally augmented in the train split only, and described by manifest.json.
data.yaml is written last: a dataset without it is incomplete and never picked as latest.
"""

import json
import logging
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from multiprocessing.connection import Connection
from pathlib import Path

from azaion_training.annotation_index import read_source_media
from azaion_training.classes import model_class_names
from azaion_training.dataset.augment import AugmentJob, run_jobs
from azaion_training.dataset.check_cache import cache_file
from azaion_training.dataset.manifest import DatasetManifest, write_manifest
from azaion_training.dataset.sources import BadPair, CheckedPair, check_pairs_later_cached, in_chunks, scan_pairs
from azaion_training.dataset.split import SplitItem
from azaion_training.dataset.split_registry import SplitRegistry
from azaion_training.errors import AzaionError, InputError, OperationFailed
from azaion_training.fsutil import atomic_write_text, durable_move, link_or_copy
from azaion_training.labels import MIN_BOX_AREA
from azaion_training.layout import SPLITS, DatasetDir, Layout, checked_name, is_safe_name
from azaion_training.logs import get_logger, log
from azaion_training.progress import Progress
from azaion_training.settings import Settings

logger = get_logger("dataset")

LINK_METHODS = ("hardlink", "symlink", "copy")
EXAMPLES = 10
LINK_CHUNK = 4096


@dataclass
class FormResult:
    path: Path
    data_yaml: Path
    manifest: Path
    counts: dict[str, int]  # files per split (images; augmented variants included)
    sources: dict[str, int]  # source annotations per split
    corrupted: int
    corrupted_examples: list[str]  # "name: reason"
    augmented: int = 0
    link_method: str = "hardlink"
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    split_generation: int = 1  # sticky split generation (split_registry.py)
    new_groups: int = 0  # source media placed into a split for the first time

    def to_dict(self) -> dict:
        return {"path": str(self.path), "data_yaml": str(self.data_yaml), "manifest": str(self.manifest),
                "counts": self.counts, "sources": self.sources, "corrupted": self.corrupted,
                "corrupted_examples": self.corrupted_examples, "augmented": self.augmented,
                "link_method": self.link_method, "warnings": self.warnings, "seconds": round(self.seconds, 2),
                "split_generation": self.split_generation, "new_groups": self.new_groups}


def resolve_dataset(target: str | Path | None, layout: Layout) -> Path:
    """A dataset given by path or by name under datasets/; the latest one when None."""
    if target is None:
        latest = DatasetDir.latest(layout.datasets)
        if latest is None:
            raise InputError(f"no dataset in {layout.datasets}: form one with `azaion dataset form`")
        return latest.root
    # A bare name means datasets/<name> even when the working directory happens to hold a
    # folder of that name; anything else is a path.
    named = layout.datasets / str(target) if is_safe_name(str(target)) else None
    path = named if named is not None and named.is_dir() else Path(target)
    if not path.is_dir():
        raise InputError(f"{target} is neither a directory nor a dataset name in {layout.datasets}")
    return path


def claim_dataset_dir(layout: Layout, name: str) -> Path:
    """Create datasets/<name>, or <name>-2, -3 ... when taken (mkdir claims a name atomically)."""
    checked_name(name, "dataset name")
    layout.datasets.mkdir(parents=True, exist_ok=True)
    number = 1
    while True:
        candidate = layout.dataset_dir(name if number == 1 else f"{name}-{number}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            number += 1


def quarantine(layout: Layout, bad: BadPair) -> str:
    """Move a bad pair from data/ to data-corrupted/ with <stem>.reason.txt; never overwrites an
    earlier quarantined file (a later one gets a time suffix). Returns the stem used."""
    area = layout.corrupted
    stem = bad.pair.name
    taken = (area.root / f"{stem}.reason.txt").exists() or area.find_image(stem) or area.label_path(stem).exists()
    if taken:
        stem = f"{stem}.{datetime.now().strftime('%Y%m%dT%H%M%S%f')}"
    atomic_write_text(area.root / f"{stem}.reason.txt",
                      f"{bad.reason}\nimage: {bad.pair.image}\nlabel: {bad.pair.label}\n"
                      f"quarantined: {datetime.now().isoformat(timespec='seconds')}\n")
    if bad.pair.image is not None:
        durable_move(Path(bad.pair.image), area.images / f"{stem}{os.path.splitext(bad.pair.image)[1]}")
    if bad.pair.label is not None:
        durable_move(Path(bad.pair.label), area.labels / f"{stem}.txt")
    log(logger, logging.WARNING, "annotation quarantined", name=bad.pair.name, reason=bad.reason,
        to=str(area.root))
    return stem


def _check_arguments(split: Sequence[int], link: str) -> None:
    if link not in LINK_METHODS:
        raise InputError(f"--link {link!r} is not one of {', '.join(LINK_METHODS)}")
    if len(split) != 3 or any(int(r) < 0 for r in split) or not split[0]:
        raise InputError(f"split {split} must be three non-negative shares with a non-zero train share, like 70/20/10")


def _dataset_files(checked: CheckedPair, split: str, augmented: dict, processed: str) -> list[tuple]:
    """(source path, path in the dataset, sha256, is an image) of every file this annotation
    contributes."""
    pair = checked.pair
    if split == "train" and pair.name in augmented:
        files = []
        for variant in augmented[pair.name]:
            files.append((f"{processed}/images/{variant.image}", f"train/images/{variant.image}",
                          variant.image_sha256, True))
            files.append((f"{processed}/labels/{variant.label}", f"train/labels/{variant.label}",
                          variant.label_sha256, False))
        return files
    return [(pair.image, f"{split}/images/{pair.image.rpartition('/')[2]}", checked.image_sha256, True),
            (pair.label, f"{split}/labels/{pair.name}.txt", checked.label_sha256, False)]


def form_dataset(settings: Settings, name: str | None = None, seed: int = 0, split: Sequence[int] = (70, 20, 10),
                 augment: bool = False, link: str = "hardlink", progress: bool = True, workers: int = 0,
                 min_box_area: float = MIN_BOX_AREA, reshuffle: bool = False) -> FormResult:
    """Form a dataset from data/ (see the module docstring). `workers` is the number of
    augmentation processes (0: augment in this process). Splits are sticky (split_registry.py):
    `seed` places only groups never seen before; `reshuffle` starts a new split generation."""
    started = time.monotonic()
    _check_arguments(split, link)
    layout = Layout(settings.paths)
    layout.init()
    warnings: list[str] = []

    pairs, orphans, fresh = scan_pairs(layout.data)
    if fresh:
        warnings.append(f"{len(fresh)} incomplete annotation(s) younger than a few minutes left in data/ "
                        f"(still being written?), e.g. {fresh[0]}")
    good, bad, remember_checks = check_pairs_later_cached(pairs, progress, cache=cache_file(layout))
    bad = orphans + bad
    examples = [f"{b.pair.name}: {b.reason}" for b in bad[:EXAMPLES]]
    for item in bad:
        quarantine(layout, item)
    if bad:
        warnings.append(f"{len(bad)} annotation(s) quarantined to {layout.corrupted.root} "
                        f"(see <name>.reason.txt), e.g. {examples[0]}")

    media = read_source_media(layout.index_db)
    media_of = {c.pair.name: media.get(c.pair.name, c.pair.name) for c in good}
    dataset = claim_dataset_dir(layout, name or f"azaion-{date.today().isoformat()}")
    with SplitRegistry(layout.split_registry) as registry:  # committed before any file is linked
        sticky = registry.assign([SplitItem(c.pair.name, media_of[c.pair.name], c.classes) for c in good],
                                 split, seed, dataset.name, reshuffle)
    assignment = sticky.splits
    if sticky.reshuffled:
        warnings.append(f"splits reshuffled: generation {sticky.generation} starts with {dataset.name}; models "
                        "trained before it saw today's valid/test data, so their metrics on it are inflated "
                        "and not comparable with models trained from now on")
    DatasetDir(dataset).create_splits()

    augmented: dict = {}
    if augment:
        train = [c for c in good if assignment[c.pair.name] == "train"]
        summary = run_jobs(layout, (AugmentJob.from_checked(c, min_box_area) for c in train), workers,
                           min_box_area, progress)
        augmented = summary.variants
        if summary.skipped:  # only unreadable images fall here: the check above passed them
            warnings.append(f"{len(summary.skipped)} train image(s) could not be augmented and are used as is")

    files_json, histogram, counts, sources, method = _link_files(dataset, good, assignment, media_of,
                                                                     augmented, layout, link, progress,
                                                                     remember_checks)
    if not good:
        warnings.append(f"no annotations in {layout.data.root}: the dataset is empty")
    manifest = DatasetManifest(
        name=dataset.name, created=datetime.now().isoformat(timespec="seconds"), source=str(layout.data.root),
        seed=seed, split=dict(zip(SPLITS, split, strict=True)), split_generation=sticky.generation,
        augmented=augment, link_method=method, counts=counts, sources=sources, class_histogram=histogram,
        corrupted={"count": len(bad), "examples": examples})
    formed = DatasetDir(dataset)
    write_manifest(formed.manifest, manifest, files_json)  # files already encoded while they were linked
    formed.write_data_yaml(model_class_names(layout.classes_json))
    result = FormResult(dataset, formed.data_yaml, formed.manifest, counts, sources, len(bad), examples,
                        sum(1 for c in good if c.pair.name in augmented and assignment[c.pair.name] == "train"),
                        method, warnings, time.monotonic() - started, sticky.generation, sticky.new_groups)
    for warning in warnings:
        log(logger, logging.WARNING, warning)
    log(logger, logging.INFO, "dataset formed", **{k: v for k, v in result.to_dict().items() if k != "warnings"})
    return result


def _place(plan: Sequence[tuple[str, str]], link: str) -> Counter:
    """Place every (source, target); the common case is a bare os.link per file."""
    if link != "hardlink":
        return Counter(link_or_copy(source, target, link) for source, target in plan)
    used = Counter()
    for source, target in plan:
        try:
            os.link(source, target)
            used["hardlink"] += 1
        except OSError:  # across filesystems and the like: link_or_copy decides (or raises)
            used[link_or_copy(source, target, link)] += 1
    return used


def _placements(good: list[CheckedPair], assignment: dict[str, str], augmented: dict, processed: str,
                root: str) -> list[tuple[str, str]]:
    """(source, target) of every file of the dataset."""
    return [(source, f"{root}/{relative}") for checked in good
            for source, relative, _, _ in _dataset_files(checked, assignment[checked.pair.name], augmented, processed)]


def _link_in_child(plan: Callable[[], list[tuple[str, str]]], link: str, sender: Connection) -> None:
    """The linking process: the number of files, a count per chunk placed, then the Counter of
    methods, or the error."""
    try:
        placements = plan()
        sender.send(len(placements))
        methods = Counter()
        for chunk in in_chunks(placements, LINK_CHUNK):
            methods.update(_place(chunk, link))
            sender.send(len(chunk))
        sender.send(methods)
    except BaseException as exc:  # noqa: BLE001 # re-raised by the parent (_linked)
        sender.send(exc if isinstance(exc, OSError | AzaionError) else OperationFailed(f"linking failed: {exc!r}"))
    finally:
        sender.close()


@contextmanager
def _linked(plan: Callable[[], list[tuple[str, str]]], link: str, progress: bool):
    """Place the (source, target) files that `plan()` lists, in a forked process, while the body
    runs: the process inherits what `plan` needs, and the kernel work of linking overlaps the
    body's (the manifest's encoding, the check cache's update). On exit wait for it and raise its
    error. Yields a Counter of the link methods used, filled on exit."""
    methods: Counter = Counter()
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_link_in_child, args=(plan, link, sender), name="azaion-link", daemon=True)
    child.start()
    sender.close()
    answered = False
    try:
        yield methods
        message = receiver.recv()
        if isinstance(message, int):
            with Progress("linking files", message, progress) as bar:
                while isinstance(message := receiver.recv(), int):
                    bar.advance(message)
        answered = True
    except EOFError:
        raise OperationFailed("the linking process ended without a result") from None
    finally:
        receiver.close()
        if not answered:  # the body failed (or the child died): no linking left behind
            child.kill()
        child.join()
    if isinstance(message, BaseException):
        raise message
    methods.update(message)


def _link_files(dataset: Path, good: list[CheckedPair], assignment: dict[str, str], media_of: dict[str, str],
                augmented: dict, layout: Layout, link: str, progress: bool, meanwhile: Callable[[], None]):
    """Link every file, running `meanwhile` at the same time; returns (the manifest's "files"
    list as JSON text, class histogram, image counts, source counts, link method)."""
    root, processed = str(dataset), str(layout.processed.root)
    with _linked(lambda: _placements(good, assignment, augmented, processed, root), link, progress) as methods:
        # Runs once per file of the dataset at every formation: plain strings, tuples and dicts only.
        files = []
        boxes: dict[str, list[int]] = {s: [] for s in SPLITS}
        counts = dict.fromkeys(SPLITS, 0)
        sources = dict.fromkeys(SPLITS, 0)
        for checked in good:
            name = checked.pair.name
            split = assignment[name]
            media = media_of[name]
            sources[split] += 1
            boxes[split].extend(checked.classes)
            for _, relative, sha256, image in _dataset_files(checked, split, augmented, processed):
                counts[split] += image
                files.append({"path": relative, "split": split, "sha256": sha256, "annotation": name,
                              "source_media": media})
        files_json = json.dumps(files, ensure_ascii=False)
        meanwhile()
    method = methods.most_common(1)[0][0] if methods else link
    if len(methods) > 1:
        method = "+".join(sorted(methods))
    hist = {s: {str(c): n for c, n in sorted(Counter(boxes[s]).items())} for s in SPLITS}
    return files_json, hist, counts, sources, method
