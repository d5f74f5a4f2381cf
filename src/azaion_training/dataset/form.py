"""Dataset formation: data/ -> datasets/azaion-YYYY-MM-DD[-N]/ (docs/data-tree.md).

Every annotation is checked (label rules, the image decodes) and hashed in one read; bad pairs
are quarantined to data-corrupted/ with a reason file (the only time formation moves source
files). The rest are split 70/20/10 by source media, hardlinked into the dataset (data/ is
never modified), optionally augmented in the train split only, and described by manifest.json.
data.yaml is written last: a dataset without it is incomplete and never picked as latest.

Linking runs in a forked process (`_Linker`) and starts right after the scan: an annotation
whose source media already has a split in the sticky registry keeps it, so its files are linked
while this process checks every pair, places the new groups and encodes the manifest. What the
checks and the placement then decide otherwise (a bad pair, a split the registry changed) is
put right before the process ends: it unlinks those files and links the rest.
"""

import contextlib
import logging
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from itertools import islice
from json.encoder import encode_basestring
from multiprocessing.connection import Connection
from pathlib import Path

from azaion_training.annotation_index import read_source_media
from azaion_training.classes import model_class_names
from azaion_training.dataset.augment import AugmentJob, run_jobs
from azaion_training.dataset.check_cache import cache_file
from azaion_training.dataset.manifest import DatasetManifest, write_manifest
from azaion_training.dataset.sources import BadPair, CheckedPair, Pair, check_pairs_later_cached, in_chunks, scan_pairs
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
    media = read_source_media(layout.index_db)
    dataset = claim_dataset_dir(layout, name or f"azaion-{date.today().isoformat()}")
    DatasetDir(dataset).create_splits()
    # Linked at once: the pairs whose group already has a split (their split is committed in the
    # registry already). A reshuffle and augmentation (train holds variants) decide every split anew.
    early = _registered_splits(layout, pairs, media) if link == "hardlink" and not augment and not reshuffle else {}
    with _Linker(str(dataset), pairs, early, link) as linker:
        good, checked_bad, remember_checks = check_pairs_later_cached(pairs, progress, cache=cache_file(layout))
        bad = orphans + checked_bad
        examples = [f"{b.pair.name}: {b.reason}" for b in bad[:EXAMPLES]]
        for item in bad:
            quarantine(layout, item)
        if bad:
            warnings.append(f"{len(bad)} annotation(s) quarantined to {layout.corrupted.root} "
                            f"(see <name>.reason.txt), e.g. {examples[0]}")

        media_of = {c.pair.name: media.get(c.pair.name, c.pair.name) for c in good}
        with SplitRegistry(layout.split_registry) as registry:  # committed before a new group's file is linked
            sticky = registry.assign([SplitItem(c.pair.name, media_of[c.pair.name], c.classes) for c in good],
                                     split, seed, dataset.name, reshuffle)
        assignment = sticky.splits
        if sticky.reshuffled:
            warnings.append(f"splits reshuffled: generation {sticky.generation} starts with {dataset.name}; "
                            "models trained before it saw today's valid/test data, so their metrics on it are "
                            "inflated and not comparable with models trained from now on")

        augmented: dict = {}
        if augment:
            train = [c for c in good if assignment[c.pair.name] == "train"]
            summary = run_jobs(layout, (AugmentJob.from_checked(c, min_box_area) for c in train), workers,
                               min_box_area, progress)
            augmented = summary.variants
            if summary.skipped:  # only unreadable images fall here: the check above passed them
                warnings.append(f"{len(summary.skipped)} train image(s) could not be augmented and are used as is")

        files_json, histogram, counts, sources = _link_files(linker, good, checked_bad, assignment, media_of,
                                                             augmented, layout, remember_checks)
        if not good:
            warnings.append(f"no annotations in {layout.data.root}: the dataset is empty")
        manifest = DatasetManifest(
            name=dataset.name, created=datetime.now().isoformat(timespec="seconds"), source=str(layout.data.root),
            seed=seed, split=dict(zip(SPLITS, split, strict=True)), split_generation=sticky.generation,
            augmented=augment, link_method=link, counts=counts, sources=sources, class_histogram=histogram,
            corrupted={"count": len(bad), "examples": examples})
        formed = DatasetDir(dataset)
        # written while the files are still being linked (the dataset is incomplete until data.yaml)
        write_manifest(formed.manifest, manifest, files_json)
        method = _method_used(linker.wait(progress), link)
    if method != manifest.link_method:  # not as asked (a hardlink across filesystems is a copy): say so
        manifest.link_method = method
        write_manifest(formed.manifest, manifest, files_json)
    formed.write_data_yaml(model_class_names(layout.classes_json))
    result = FormResult(dataset, formed.data_yaml, formed.manifest, counts, sources, len(bad), examples,
                        sum(1 for c in good if c.pair.name in augmented and assignment[c.pair.name] == "train"),
                        method, warnings, time.monotonic() - started, sticky.generation, sticky.new_groups)
    for warning in warnings:
        log(logger, logging.WARNING, warning)
    log(logger, logging.INFO, "dataset formed", **{k: v for k, v in result.to_dict().items() if k != "warnings"})
    return result


def _registered_splits(layout: Layout, pairs: list[Pair], media: dict[str, str]) -> dict[str, str]:
    """name -> split for the pairs whose group the split registry already holds (as
    SplitRegistry.assign will find it: a name registered as its own group stays there)."""
    if not layout.split_registry.is_file():
        return {}
    with SplitRegistry(layout.split_registry) as registry:
        fixed = registry.groups()
    early = {}
    for pair in pairs:
        name = pair.name
        split = fixed.get(name) if name in fixed else fixed.get(media.get(name, name))
        if split is not None:
            early[name] = split
    return early


def _pair_targets(root: str, pair: Pair, split: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """(source, target) of the image and the label of a pair placed as it is (no augmentation)."""
    return ((pair.image, f"{root}/{split}/images/{pair.image.rpartition('/')[2]}"),
            (pair.label, f"{root}/{split}/labels/{pair.name}.txt"))


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


def _place_early(plan: Sequence[tuple[str, str]], missing: dict[str, str]) -> Counter:
    """_place before the checks: a source gone since the scan (a bad pair being quarantined) is
    noted in `missing` (target -> source), for the corrections to settle."""
    used = Counter()
    for source, target in plan:
        try:
            os.link(source, target)
            used["hardlink"] += 1
        except FileNotFoundError:
            missing[target] = source
        except OSError:
            used.update(_place([(source, target)], "hardlink"))
    return used


def _link_in_child(early: Callable[[], Iterator[tuple[str, str]]], link: str, connection: Connection) -> None:
    """The linking process: links what `early()` yields, then receives (targets to unlink,
    (source, target) to place), applies them, and sends a count per chunk placed, then the
    Counter of methods, or the error."""
    try:
        methods: Counter = Counter()
        missing: dict[str, str] = {}
        planned = early()  # a generator: the first link does not wait for the whole plan
        while chunk := list(islice(planned, LINK_CHUNK)):
            methods.update(_place_early(chunk, missing))
            connection.send(len(chunk))
        unlink, place = connection.recv()
        for target in unlink:
            if missing.pop(target, None) is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)
        place = [*((source, target) for target, source in missing.items()), *place]  # still wanted: must link now
        for chunk in in_chunks(place, LINK_CHUNK):
            methods.update(_place(chunk, link))
            connection.send(len(chunk))
        connection.send(methods)
    except BaseException as exc:  # noqa: BLE001 # re-raised by the parent (_Linker.wait)
        connection.send(exc if isinstance(exc, OSError | AzaionError) else OperationFailed(f"linking failed: {exc!r}"))
    finally:
        connection.close()


class _Linker:
    """The forked linking process (see the module docstring). It starts on entry with the files
    of the pairs in `early` (name -> split); `finish` sends it the corrections and the rest,
    `wait` collects its result (or raises its error). On an error in the body it is killed: no
    linking is left behind."""

    def __init__(self, root: str, pairs: list[Pair], early: dict[str, str], link: str):
        self.root = root
        self.early = early
        self.methods: Counter = Counter()
        self.planned = 2 * len(early)  # files the process links or unlinks (progress)
        context = multiprocessing.get_context("fork")
        self._connection, child_end = context.Pipe()
        plan = lambda: (target for pair in pairs if (split := early.get(pair.name))  # noqa: E731 # run in the child
                        for target in _pair_targets(root, pair, split))
        self._child = context.Process(target=_link_in_child, args=(plan, link, child_end), name="azaion-link",
                                      daemon=True)
        self._child.start()
        child_end.close()
        self._answered = False

    def __enter__(self) -> "_Linker":
        return self

    def __exit__(self, *exc: object) -> None:
        self._connection.close()
        if not self._answered:  # the body failed (or the child died): no linking left behind
            self._child.kill()
        self._child.join()

    def finish(self, unlink: list[str], place: list[tuple[str, str]]) -> None:
        self.planned += len(place)
        self._connection.send((unlink, place))

    def wait(self, progress: bool) -> Counter:
        try:
            with Progress("linking files", self.planned, progress) as bar:
                while isinstance(message := self._connection.recv(), int):
                    bar.advance(message)
        except EOFError:
            raise OperationFailed("the linking process ended without a result") from None
        self._answered = True
        if isinstance(message, BaseException):
            raise message
        self.methods.update(message)
        return self.methods


def _link_files(linker: _Linker, good: list[CheckedPair], bad: list[BadPair], assignment: dict[str, str],
                media_of: dict[str, str], augmented: dict, layout: Layout, meanwhile: Callable[[], None]):
    """Have `linker` settle and link every file; meanwhile encode the manifest's file list and run
    `meanwhile`. Returns (the manifest's "files" list as JSON text, class histogram, image counts,
    source counts); `linker.wait` says when the files are in place."""
    root, processed, early = linker.root, str(layout.processed.root), linker.early
    unlink = [target for item in bad if (split := early.get(item.pair.name))
              for _, target in _pair_targets(root, item.pair, split)]
    place = []
    for checked in good:
        name = checked.pair.name
        split, linked = assignment[name], early.get(name)
        if split == linked and name not in augmented:
            continue
        if linked is not None:
            unlink.extend(target for _, target in _pair_targets(root, checked.pair, linked))
        place.extend((source, f"{root}/{relative}")
                     for source, relative, _, _ in _dataset_files(checked, split, augmented, processed))
    linker.finish(unlink, place)
    # Runs once per file of the dataset at every formation: plain strings and tuples only, and each
    # entry of "files" written as json.dumps(dict, ensure_ascii=False) would (names may need escaping).
    files = []
    boxes: dict[str, list[int]] = {s: [] for s in SPLITS}
    counts = dict.fromkeys(SPLITS, 0)
    sources = dict.fromkeys(SPLITS, 0)
    media_json: dict[str, str] = {}
    for checked in good:
        name = checked.pair.name
        split = assignment[name]
        media = media_of[name]
        media_text = media_json.get(media) or media_json.setdefault(media, encode_basestring(media))
        name_text = encode_basestring(name)
        sources[split] += 1
        boxes[split].extend(checked.classes)
        for _, relative, sha256, image in _dataset_files(checked, split, augmented, processed):
            counts[split] += image
            files.append(f'{{"path": {encode_basestring(relative)}, "split": "{split}", "sha256": "{sha256}", '
                         f'"annotation": {name_text}, "source_media": {media_text}}}')
    files_json = f"[{', '.join(files)}]"
    meanwhile()
    hist = {s: {str(c): n for c, n in sorted(Counter(boxes[s]).items())} for s in SPLITS}
    return files_json, hist, counts, sources


def _method_used(methods: Counter, asked: str) -> str:
    """The link method to report: the one used for every file, or "a+b" when several were."""
    if not methods:
        return asked
    return "+".join(sorted(methods)) if len(methods) > 1 else next(iter(methods))
