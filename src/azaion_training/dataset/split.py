"""Leakage-free train/valid/test split (docs/data-tree.md).

Annotations are grouped by source media (one video's frames never straddle splits). Groups
are placed largest first, in an order shuffled by the seed, each into a split that still has
room for it; among those, the split whose class mix needs the group's classes most wins. With
one annotation per group the counts are exact to rounding; large groups can overshoot a split
by at most their own size. Groups already placed by an earlier dataset (`fixed`, kept by the
split registry, split_registry.py) keep their split and count towards the shares, so new
groups fill the splits that are furthest below their share and the shares converge as data
grows.
"""

import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from azaion_training.layout import SPLITS


class SplitItem(NamedTuple):  # a named tuple: formation builds one per annotation (cheap to make)
    name: str
    group: str  # source media, or the name itself when unknown
    classes: Sequence[int] = ()  # one entry per box


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
    """name -> split name, deterministic for `seed`."""
    by_group = assign_groups(items, ratios, seed)
    return {item.name: by_group[item.group] for item in items}


def assign_groups(items: Sequence[SplitItem], ratios: Sequence[int] = (70, 20, 10), seed: int = 0,
                  fixed: Mapping[str, str] | None = None) -> dict[str, str]:
    """group -> split name for every group of `items`; a group in `fixed` keeps its split there.
    O(boxes): per group, each split's need is a sum over the group's boxes (plain lists indexed
    by class, no Counters)."""
    fixed = fixed or {}
    groups: dict[str, list[SplitItem]] = defaultdict(list)
    for item in items:
        groups[item.group].append(item)

    weight = sum(ratios)
    targets = split_targets(len(items), ratios)
    class_totals = Counter(c for item in items for c in item.classes)
    slots = max(class_totals, default=-1) + 1
    inverse_totals = [1 / class_totals[c] if class_totals[c] else 0.0 for c in range(slots)]
    # need[i][c]: how many more boxes of class c split i should get, over the class's total
    need = [[class_totals[c] * ratio / weight * inverse_totals[c] for c in range(slots)] for ratio in ratios]
    counts = [0] * len(SPLITS)
    assignment: dict[str, str] = {}

    def place(group: str, chosen: int) -> None:
        members = groups[group]
        counts[chosen] += len(members)
        chosen_need = need[chosen]
        for item in members:
            for c in item.classes:
                chosen_need[c] -= inverse_totals[c]
        assignment[group] = SPLITS[chosen]

    new = []
    for group in groups:
        if group in fixed:
            place(group, SPLITS.index(fixed[group]))
        else:
            new.append(group)
    new.sort()
    random.Random(seed).shuffle(new)  # nosec B311 # a reproducible split, not a secret
    new.sort(key=lambda g: len(groups[g]), reverse=True)  # stable: ties keep the shuffled order
    for group in new:
        members = groups[group]
        place(group, _choose_split(len(members), [c for item in members for c in item.classes], counts, targets,
                                   need))
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
