"""BT-LBL (label rules) and the split algorithm."""

from collections import Counter

import pytest

from azaion_training.dataset.split import SplitItem, assign_splits, parse_ratios, split_targets
from azaion_training.labels import Box, LabelError, check_label, clip_box, clip_corners, label_classes, parse_label_text
from azaion_training.layout import SPLITS


@pytest.mark.parametrize(("text", "valid"), [
    ("0 0.5 0.5 0.1 0.1\n", True),                          # BT-LBL-01
    ("0 1.5 0.5 0.1 0.1\n", False),                         # BT-LBL-02 x > 1
    ("0 0.5 0.5 0.1 1.2\n", False),                         # BT-LBL-03 h > 1
    ("0 0.5 0.5 0.1 0.1\n3 0.2 0.2 0.1 0.1\n1 0.5 0.5 0.1\n", False),  # BT-LBL-05 one bad line
    ("80 0.5 0.5 0.1 0.1\n", False),
    ("0 nan 0.5 0.1 0.1\n", False),
    ("", True),                                              # no objects
])
def test_check_label(tmp_path, text, valid):
    path = tmp_path / "x.txt"
    path.write_text(text)
    assert check_label(path) is valid


LABEL_EDGE_CASES = [
    "", "\n\n", "0 0.5 0.5 0.1 0.1", "0 0.5 0.5 0.1 0.1\n\n  \n79 0 1 1 1\r\n", "3 5e-1 0.5 1e-3 0.1\n",
    "0 0 0 0.1 0.1\n", "0 1 1 1 1\n", "0 0.5 0.5 0 0.1\n", "0 0.5 0.5 0.1 -0.1\n", "0 1.0000001 0.5 0.1 0.1\n",
    "-1 0.5 0.5 0.1 0.1\n", "80 0.5 0.5 0.1 0.1\n", "1.0 0.5 0.5 0.1 0.1\n", "True 0.5 0.5 0.1 0.1\n",
    "0 nan 0.5 0.1 0.1\n", "0 0.5 inf 0.1 0.1\n", "0 0.5 0.5 -inf 0.1\n", "0 0.5 0.5 0.1\n",
    "0 0.5 0.5 0.1 0.1 7\n", "0 x 0.5 0.1 0.1\n", "0 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.1 1.2\n", "0,0.5,0.5,0.1,0.1\n",
]


@pytest.mark.parametrize("text", LABEL_EDGE_CASES)
def test_label_classes_agrees_with_the_full_parser(text):
    """The fast path must accept exactly what parse_label_text accepts, with the same error."""
    try:
        expected = tuple(box.cls for box in parse_label_text(text))
    except LabelError as exc:
        with pytest.raises(LabelError) as raised:
            label_classes(text)
        assert str(raised.value) == str(exc)
    else:
        assert label_classes(text) == expected


def test_check_label_missing_file(tmp_path):  # BT-LBL-04
    assert check_label(tmp_path / "absent.txt") is False


def test_clip_box_clips_edge_box_and_drops_tiny_ones():
    edge = clip_box(Box(0, 0.99, 0.5, 0.2, 0.1))
    assert edge is not None
    assert edge.cx + edge.w / 2 == pytest.approx(1.0)
    assert edge.cx - edge.w / 2 == pytest.approx(0.89)
    assert edge.w == pytest.approx(0.11)
    assert clip_box(Box(0, 0.5, 0.5, 0.005, 0.005)) is None  # 0.0025 % of the image
    assert clip_box(Box(0, 0.5, 0.5, 0.005, 0.005), min_area=0.0) is not None
    assert clip_corners(1, 1.2, 0.1, 1.5, 0.3) is None  # entirely outside


def test_split_targets_exact_to_rounding():
    assert split_targets(100, (70, 20, 10)) == [70, 20, 10]
    assert split_targets(95, (70, 20, 10)) == [67, 19, 9]
    for total in range(0, 60):
        counts = split_targets(total, (70, 20, 10))
        assert sum(counts) == total
        assert all(abs(c - total * r / 100) < 1 for c, r in zip(counts, (70, 20, 10), strict=True))


def test_parse_ratios():
    assert parse_ratios("80/10/10") == (80, 10, 10)
    for bad in ("70/30", "a/b/c", "0/50/50"):
        with pytest.raises(ValueError):
            parse_ratios(bad)


def _items(count: int, group_size: int = 1) -> list[SplitItem]:
    return [SplitItem(f"n{i}", f"video{i // group_size}", (i % 5, (i * 7) % 3 + 20)) for i in range(count)]


def test_singletons_split_exactly_and_deterministically():
    items = _items(200)
    first = assign_splits(items, (70, 20, 10), seed=3)
    assert Counter(first.values()) == {"train": 140, "valid": 40, "test": 20}
    assert assign_splits(items, (70, 20, 10), seed=3) == first
    assert assign_splits(items, (70, 20, 10), seed=4) != first


def test_groups_never_straddle_splits_and_counts_stay_close():
    items = _items(300, group_size=6)
    assignment = assign_splits(items, (70, 20, 10), seed=0)
    per_group = {}
    for item in items:
        per_group.setdefault(item.group, set()).add(assignment[item.name])
    assert all(len(splits) == 1 for splits in per_group.values())
    counts = Counter(assignment.values())
    for split, share in zip(SPLITS, (70, 20, 10), strict=True):
        assert abs(counts[split] - 300 * share / 100) <= 6


def test_split_is_approximately_class_stratified():
    # class 9 is rare (20 of 400): every split should still get its share of it
    items = [SplitItem(f"n{i}", f"n{i}", (9,) if i % 20 == 0 else (i % 3,)) for i in range(400)]
    assignment = assign_splits(items, (70, 20, 10), seed=1)
    rare = Counter(assignment[item.name] for item in items if item.classes == (9,))
    assert rare == {"train": 14, "valid": 4, "test": 2}
