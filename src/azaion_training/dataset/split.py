"""Leakage-free train/valid/test split (design.md §3).

Annotations are grouped by source media (one video's frames never straddle splits). Groups
are placed largest first, in an order shuffled by the seed, each into a split that still has
room for it; among those, the split whose class mix needs the group's classes most wins. With
one annotation per group the counts are exact to rounding; large groups can overshoot a split
by at most their own size.
"""

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class SplitItem:
    name: str
    group: str  # source media, or the name itself when unknown
    classes: Sequence[int] = field(default_factory=tuple)  # one entry per box


def split_targets(total: int, ratios: Sequence[int]) -> list[int]:
    """Counts per split that add up to `total` (largest-remainder rounding)."""
    weight = sum(ratios)
    exact = [total * r / weight for r in ratios]
    counts = [int(value) for value in exact]
    by_remainder = sorted(range(len(ratios)), key=lambda i: (exact[i] - counts[i], -i), reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def parse_ratios(text: str) -> tuple[int, int, int]:
    """'70/20/10' -> (70, 20, 10); ValueError with the reason otherwise."""
    parts = text.replace(",", "/").split("/")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"split {text!r} must be three whole numbers like 70/20/10")
    ratios = tuple(int(p) for p in parts)
    if sum(ratios) == 0 or ratios[0] == 0:
        raise ValueError(f"split {text!r} needs a non-zero train share")
    return ratios  # type: ignore[return-value]


def assign_splits(items: Sequence[SplitItem], ratios: Sequence[int] = (70, 20, 10), seed: int = 0) -> dict[str, str]:
    """name -> split name, deterministic for `seed`. O(boxes): per group, each split's need
    is a sum over the group's boxes (plain lists indexed by class, no Counters)."""
    groups: dict[str, list[SplitItem]] = defaultdict(list)
    for item in items:
        groups[item.group].append(item)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda g: len(groups[g]), reverse=True)  # stable: ties keep the shuffled order

    weight = sum(ratios)
    targets = split_targets(len(items), ratios)
    class_totals = Counter(c for item in items for c in item.classes)
    slots = max(class_totals, default=-1) + 1
    inverse_totals = [1 / class_totals[c] if class_totals[c] else 0.0 for c in range(slots)]
    # need[i][c]: how many more boxes of class c split i should get, over the class's total
    need = [[class_totals[c] * ratio / weight * inverse_totals[c] for c in range(slots)] for ratio in ratios]
    counts = [0] * len(SPLITS)
    assignment: dict[str, str] = {}
    for group in order:
        members = groups[group]
        boxes = [c for item in members for c in item.classes]
        chosen = _choose_split(len(members), boxes, counts, targets, need)
        counts[chosen] += len(members)
        chosen_need = need[chosen]
        for c in boxes:
            chosen_need[c] -= inverse_totals[c]
        for item in members:
            assignment[item.name] = SPLITS[chosen]
    return assignment


def _choose_split(size: int, boxes: list[int], counts: list[int], targets: list[int],
                  need: list[list[float]]) -> int:
    """Among the splits with room for `size` more, the one whose classes need `boxes` most
    (ties: the one with the most room left, relative to its target)."""
    best, best_key = -1, None
    for i, split_need in enumerate(need):
        room = targets[i] - counts[i]
        if room >= size:
            key = (sum([split_need[c] for c in boxes]), room / (targets[i] or 1))
            if best_key is None or key > best_key:
                best, best_key = i, key
    if best < 0:  # a group larger than any room left: the split with the most room takes it
        return max(range(len(SPLITS)), key=lambda i: (targets[i] - counts[i], -i))
    return best
