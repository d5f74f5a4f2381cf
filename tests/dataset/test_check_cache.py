"""The persistent check cache: only new or changed files are read again; a broken cache is
rebuilt; the forked first pass gives the same results as the in-process one."""

import hashlib
import json
import os
import sqlite3

from azaion_training.dataset.check_cache import VERSION, CheckCache, cache_file
from azaion_training.dataset.form import form_dataset
from azaion_training.dataset.sources import check_pairs, scan_pairs
from tests.dataset.conftest import add_annotations


def _rewrite_keeping_stat(path, data: bytes) -> None:
    """New content with the same inode, size and mtime: invisible to the cache key on purpose."""
    stats = path.stat()
    assert len(data) == stats.st_size
    with open(path, "r+b") as handle:
        handle.write(data)
    os.utime(path, ns=(stats.st_atime_ns, stats.st_mtime_ns))


def _manifest_sha(result, name: str, kind: str = "image") -> str:
    files = json.loads(result.manifest.read_text())["files"]
    [entry] = [f for f in files if f["annotation"] == name and f["path"].split("/")[1] == f"{kind}s"]
    return entry["sha256"]


def _cached_names(layout) -> set[str]:
    return set(CheckCache(cache_file(layout)).load())


def test_reforming_reuses_unchanged_checks_and_redoes_changed_files(settings, layout):
    names = add_annotations(layout, 12)
    first = form_dataset(settings, progress=False)
    assert _cached_names(layout) == set(names)
    image = layout.data.image_path(names[0], ".jpg")
    original_sha = hashlib.sha256(image.read_bytes()).hexdigest()
    assert _manifest_sha(first, names[0]) == original_sha

    # same inode, size and mtime: the cached check (and hash) stands, the file is not read
    _rewrite_keeping_stat(image, bytes(reversed(image.read_bytes())))
    assert _manifest_sha(form_dataset(settings, progress=False), names[0]) == original_sha

    # any part of the key changing makes it a new file: read, hashed and checked again
    os.utime(image)
    label = layout.data.label_path(names[1])
    label.write_text("0 0.5 0.5 0.1 7\n")  # now invalid
    new = add_annotations(layout, 2, prefix="new", seed=3)
    third = form_dataset(settings, progress=False)
    assert third.corrupted == 2  # the reversed bytes are no JPEG any more, and the bad label
    assert {e.split(":")[0] for e in third.corrupted_examples} == {names[0], names[1]}
    assert sum(third.counts.values()) == 12
    assert _cached_names(layout) == set(names[2:]) | set(new)  # quarantined pairs are forgotten


def test_corrupt_or_outdated_cache_is_rebuilt_silently(settings, layout):
    names = add_annotations(layout, 6)
    path = cache_file(layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a database" * 100)
    result = form_dataset(settings, progress=False)
    assert sum(result.counts.values()) == 6 and result.warnings == []
    assert _cached_names(layout) == set(names)

    with sqlite3.connect(path) as connection:  # a cache written by other check rules
        connection.execute(f"PRAGMA user_version = {VERSION + 1}")
    assert _cached_names(layout) == set()  # dropped, not trusted
    form_dataset(settings, progress=False)
    assert _cached_names(layout) == set(names)


def test_cache_hits_give_the_same_results_as_a_fresh_check(layout, tmp_path):
    add_annotations(layout, 8)
    pairs, _, _ = scan_pairs(layout.data)
    fresh, _ = check_pairs(pairs, progress=False)
    cache = tmp_path / "cache.sqlite3"
    check_pairs(pairs, progress=False, cache=cache)
    cached, bad = check_pairs(pairs, progress=False, cache=cache)
    assert cached == fresh and bad == []


def test_forked_processes_give_the_same_results_in_order(layout):
    add_annotations(layout, 30)
    [bad] = add_annotations(layout, 1, prefix="bad", seed=2)
    layout.data.label_path(bad).write_text("0 0.5 0.5 0.1\n")
    pairs, _, _ = scan_pairs(layout.data)
    one = check_pairs(pairs, progress=False, processes=1)
    two = check_pairs(pairs, progress=False, processes=2)
    assert one == two
    assert [b.pair.name for b in two[1]] == [bad] and "expected 5 fields" in two[1][0].reason
    assert [c.pair.name for c in two[0]] == [p.name for p in pairs if p.name != bad]
