"""Sticky, leakage-free splits: the split registry (datasets/splits.sqlite3) across growing data."""

import json
import random
from collections import Counter

import pytest

from azaion_training.annotation_index import AnnotationIndex, IndexEntry
from azaion_training.dataset import form
from azaion_training.dataset.form import form_dataset
from azaion_training.dataset.split import SPLITS, SplitItem
from azaion_training.dataset.split_registry import SplitRegistry
from tests.conftest import run_azaion
from tests.dataset.conftest import add_annotations


def _shares(assignment: dict[str, str]) -> dict[str, float]:
    counts = Counter(assignment.values())
    return {split: counts[split] / len(assignment) for split in SPLITS}


def test_growth_to_10k_moves_nothing_and_converges_to_70_20_10(tmp_path):
    """Flights of 1-30 frames; each step adds new flights and new frames of known flights."""
    rng = random.Random(5)
    items: list[SplitItem] = []
    flights = 0

    def add(count: int) -> None:
        nonlocal flights
        for _ in range(count):
            if flights and rng.random() < 0.2:  # a late frame of a flight already split
                flight = f"flight{rng.randrange(flights)}"
                size = 1
            else:
                flight, size = f"flight{flights}", rng.randint(1, 30)
                flights += 1
            classes = rng.choice(((0,), (1, 1), (2,), (3, 0), (9,)))  # class 9 is rare
            items.extend(SplitItem(f"a{len(items)}", flight, classes) for _ in range(size))

    registry = SplitRegistry(tmp_path / "splits.sqlite3")
    add(60)
    before: dict[str, str] = {}
    for step in range(6):
        result = registry.assign(items, (70, 20, 10), seed=0, dataset=f"ds{step}")
        moved = [name for name, split in before.items() if result.splits[name] != split]
        assert moved == []
        assert result.generation == 1 and not result.reshuffled
        per_flight: dict[str, set[str]] = {}
        for item in items:
            per_flight.setdefault(item.group, set()).add(result.splits[item.name])
        assert all(len(splits) == 1 for splits in per_flight.values())
        before = result.splits
        add(rng.randint(200, 400))
    assert len(before) >= 10000, len(before)
    for split, share in zip(SPLITS, (0.7, 0.2, 0.1), strict=True):
        assert abs(_shares(before)[split] - share) < 0.03, _shares(before)
    registry.close()


def test_new_groups_fill_the_split_furthest_below_its_share(tmp_path):
    registry = SplitRegistry(tmp_path / "splits.sqlite3")
    old = [SplitItem(f"v{i}", f"v{i}", (0,)) for i in range(10)]
    with registry.db:  # an older formation under another ratio put every group in train
        registry.db.execute("INSERT INTO generations VALUES (1, 'then', 'old', 'first')")
        registry.db.executemany("INSERT INTO groups VALUES (1, ?, 'train', 'old', 'then')",
                                [(item.group,) for item in old])
    new = [SplitItem(f"n{i}", f"n{i}", (0,)) for i in range(10)]
    result = registry.assign(old + new, (70, 20, 10), seed=0, dataset="now")
    assert all(result.splits[item.name] == "train" for item in old)
    assert Counter(result.splits[item.name] for item in new) == {"valid": 4, "test": 2, "train": 4}
    registry.close()


def _index_media(layout, media_of: dict[str, str]) -> None:
    index = AnnotationIndex(layout.index_db)
    index.begin()
    for offset, (name, media) in enumerate(media_of.items()):
        index.upsert(IndexEntry(name, "data", media, 10, 0, None, None, ".jpg", 20, offset, "2026-01-01T00:00:00"))
    index.commit()
    index.close()


def _formed_splits(manifest_path) -> dict[str, str]:
    manifest = json.loads(manifest_path.read_text())
    return {entry["annotation"]: entry["split"] for entry in manifest["files"]}


def test_formation_keeps_splits_over_growth_edits_and_revalidation(settings, layout):
    names = add_annotations(layout, 40, prefix="old")
    _index_media(layout, {name: f"video{i // 4}.mp4" for i, name in enumerate(names)})
    first = form_dataset(settings, progress=False)
    before = _formed_splits(first.manifest)
    assert first.split_generation == 1 and first.new_groups == 10

    # growth: new frames of known videos and new videos; an edit changes an old label's classes;
    # a re-validated annotation leaves data/ (seed area) and comes back under its name
    late = add_annotations(layout, 8, prefix="late", seed=1)
    fresh = add_annotations(layout, 20, prefix="new", seed=2)
    _index_media(layout, {**{name: f"video{i}.mp4" for i, name in enumerate(late)},
                          **{name: f"clip{i // 5}.mp4" for i, name in enumerate(fresh)}})
    layout.data.label_path(names[0]).write_text("9 0.5 0.5 0.2 0.2\n")
    image = layout.data.image_path(names[5], ".jpg")
    image.rename(layout.seed.image_path(names[5], ".jpg"))
    layout.data.label_path(names[5]).rename(layout.seed.label_path(names[5]))
    second = form_dataset(settings, progress=False, seed=9)
    assert second.new_groups == 4  # the clips; late frames join their video's split
    during = _formed_splits(second.manifest)
    assert names[5] not in during
    layout.seed.image_path(names[5], ".jpg").rename(image)
    layout.seed.label_path(names[5]).rename(layout.data.label_path(names[5]))
    third = form_dataset(settings, progress=False)
    after = _formed_splits(third.manifest)

    assert {name: after[name] for name in before} == before  # 0 old annotations moved
    for i, name in enumerate(late):
        assert after[name] == before[names[4 * i]], name  # with the rest of video{i}
    assert {name: after[name] for name in during} == during
    assert json.loads(third.manifest.read_text())["split_generation"] == 1


def test_reshuffle_starts_a_new_generation_loudly(settings, layout):
    add_annotations(layout, 30)
    first = form_dataset(settings, progress=False)
    assert not any("reshuffled" in w for w in first.warnings)
    second = form_dataset(settings, progress=False, reshuffle=True, seed=4)
    manifest = json.loads(second.manifest.read_text())
    assert manifest["split_generation"] == 2 and second.new_groups == 30
    assert any("generation 2" in w and "saw today's valid/test data" in w for w in second.warnings)
    third = form_dataset(settings, progress=False, seed=8)  # the new generation is sticky too
    assert json.loads(third.manifest.read_text())["split_generation"] == 2
    assert _formed_splits(third.manifest) == _formed_splits(second.manifest)
    with SplitRegistry(layout.split_registry) as registry:
        assert registry.generation() == 2
        assert len(registry.groups(1)) == len(registry.groups(2)) == 30  # history kept


def test_cli_reshuffle_warns_on_stderr(root, layout):
    add_annotations(layout, 10)
    assert run_azaion("dataset", "form").returncode == 0
    done = run_azaion("dataset", "form", "--reshuffle")
    assert done.returncode == 0, done.stderr
    assert "reshuffled" in done.stderr and "generation 2" in done.stderr
    assert "split generation 2" in done.stdout


def test_crash_after_assignment_keeps_what_the_registry_says(settings, layout, monkeypatch):
    """A formation that dies while linking: the next one gives every annotation the split the
    registry recorded for the dead one (no second, different placement)."""
    add_annotations(layout, 30)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(form, "_link_files", crash)
    with pytest.raises(OSError):
        form_dataset(settings, progress=False)
    monkeypatch.undo()
    with SplitRegistry(layout.split_registry) as registry:
        recorded = registry.groups()
    assert len(recorded) == 30
    formed = form_dataset(settings, progress=False, seed=99)
    assert formed.new_groups == 0
    assert _formed_splits(formed.manifest) == recorded  # no source media: each name is its own group
