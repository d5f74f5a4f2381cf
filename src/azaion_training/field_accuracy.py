"""Field accuracy, the figures: how the production model's proposals fared with the validators
(docs/data-engine.md, "Field accuracy"). A top-level module (not in analysis/) so that `azaion
health` (ops/) can read it without depending on the analysis stage; analysis/field.py builds the
report (which model made each proposal, periods, groupings) on it.

The consumer keeps each AI-sourced annotation's first boxes as the model's **proposal** and every
later change as an **event** (annotation_index.py). An annotation is **judged** once a validator
acted on it after the proposal: a Validated message, a Created/Edited by a validator role
(Validator, Admin, ApiAdmin), or a Deleted message. Its **final boxes** are the boxes it had at
its last judgement (none, for a deletion). The proposal boxes are then matched to the final boxes
with the gate's matching (metrics.match_images, IoU 0.5, same class): a matched proposal box is
a true positive, an unmatched one a false positive (a deleted annotation's boxes all are), and a
final box no proposal box matched is a miss (a box the validator added or moved). Precision and
recall per class come with Wilson 95 % intervals.
"""

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from azaion_training.annotation_index import AnnotationEvent, Boxes, Proposal, reading
from azaion_training.classes import model_class_names
from azaion_training.errors import InputError
from azaion_training.layout import Layout
from azaion_training.metrics import match_images
from azaion_training.settings import Settings

VALIDATOR_ROLES = frozenset({20, 40, 1000})  # Role.Validator, Admin, ApiAdmin (docs/wire-format.md)
CREATED, EDITED, VALIDATED, DELETED = 10, 20, 30, 40
WILSON_Z = 1.959964  # 95 %
ALERT_MIN_BOXES = 10  # a class's week needs this many final boxes before its recall may raise an alert
GROUPINGS = ("class", "week", "media", "model")
Grouping = Literal["class", "week", "media", "model"]
ALL = "all"


def wilson(successes: int, total: int, z: float = WILSON_Z) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (None without trials)."""
    if total <= 0:
        return None
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def iso_week(moment: datetime) -> str:
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}"


@dataclass(frozen=True)
class Judged:
    """One proposal and what the validators made of it."""

    name: str
    proposed_at: datetime | None
    media: str | None
    proposal: Boxes
    final: Boxes  # empty when deleted
    deleted: bool
    judged_at: str
    model: str | None = None  # the run production on the target when the proposal was made

    @property
    def week(self) -> str:
        return iso_week(self.proposed_at) if self.proposed_at else "unknown"


def judge(proposals: Iterable[Proposal], events: Iterable[AnnotationEvent]) -> tuple[list[Judged], int]:
    """The judged proposals, and how many proposals await a validator still."""
    by_name: dict[str, list[AnnotationEvent]] = defaultdict(list)
    for event in events:
        by_name[event.name].append(event)
    judged: list[Judged] = []
    pending = 0
    for proposal in proposals:
        current: Boxes = list(proposal.boxes)
        verdict: tuple[Boxes, bool, str] | None = None
        for event in sorted(by_name.get(proposal.name, ()), key=lambda e: e.stream_offset):
            if event.stream_offset <= proposal.stream_offset:
                continue
            if event.status in (CREATED, EDITED):
                current = list(event.boxes or [])
                if event.role in VALIDATOR_ROLES:
                    verdict = (current, False, event.at)
            elif event.status == VALIDATED:
                verdict = (current, False, event.at)
            elif event.status == DELETED:
                verdict = ([], True, event.at)
        if verdict is None:
            pending += 1
            continue
        judged.append(Judged(proposal.name, parse_time(proposal.created_date), proposal.source_media,
                             list(proposal.boxes), verdict[0], verdict[1], verdict[2]))
    return judged, pending


def _xyxy(boxes: Boxes) -> np.ndarray:
    """(n, 4) x1, y1, x2, y2 of normalised (cls, cx, cy, w, h, conf) rows."""
    a = np.asarray([b[1:5] for b in boxes], dtype=np.float64).reshape(-1, 4)
    return np.column_stack([a[:, 0] - a[:, 2] / 2, a[:, 1] - a[:, 3] / 2, a[:, 0] + a[:, 2] / 2, a[:, 1] + a[:, 3] / 2])


def box_outcomes(judged: Sequence[Judged]) -> list[tuple[Counter, Counter, Counter]]:
    """Per judged annotation: (true positives, false positives, misses) by class, with the gate's
    matching at IoU 0.5 (IoU is the same in normalised and pixel coordinates)."""
    predictions, truths = [], []
    for item in judged:
        cls = np.asarray([b[0] for b in item.proposal], dtype=np.float64)
        conf = np.asarray([b[5] for b in item.proposal], dtype=np.float64)
        predictions.append(np.column_stack([cls, conf, _xyxy(item.proposal)]).reshape(-1, 6))
        truth_cls = np.asarray([b[0] for b in item.final], dtype=np.float64)
        truths.append(np.column_stack([truth_cls, _xyxy(item.final)]).reshape(-1, 5))
    results = []
    for pred, truth, assigned in zip(predictions, truths, match_images(predictions, truths), strict=True):
        hit = assigned[:, 0] >= 0
        matched = np.zeros(len(truth), dtype=bool)
        matched[assigned[hit, 0]] = True
        tp = Counter(pred[hit, 0].astype(int).tolist())
        fp = Counter(pred[~hit, 0].astype(int).tolist())
        fn = Counter(truth[~matched, 0].astype(int).tolist())
        results.append((tp, fp, fn))
    return results


@dataclass
class FieldRow:
    """One class in one group (week, media, model or all)."""

    group: str
    cls: int | None  # None: every class together
    name: str
    tp: int = 0
    fp: int = 0
    fn: int = 0
    annotations: int = 0  # judged annotations with a box of this class on either side
    models: Counter = field(default_factory=Counter)  # run (or "unknown") -> those annotations

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    def to_dict(self) -> dict[str, Any]:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        def interval(k: int, n: int) -> list[float] | None:
            found = wilson(k, n)
            return None if found is None else [round(found[0], 4), round(found[1], 4)]

        return {"group": self.group, "class": self.cls, "name": self.name, "proposed": self.tp + self.fp,
                "final": self.tp + self.fn, "tp": self.tp, "fp": self.fp, "missed": self.fn,
                "precision": rounded(self.precision), "precision_ci95": interval(self.tp, self.tp + self.fp),
                "recall": rounded(self.recall), "recall_ci95": interval(self.tp, self.tp + self.fn),
                "annotations": self.annotations, "models": dict(self.models)}


@dataclass
class FieldReport:
    by: str
    since: str | None
    target: str
    proposals: int  # proposals in the period (judged or not)
    judged: int
    pending: int  # proposals no validator has acted on yet
    deleted: int
    rows: list[FieldRow]  # per group: every class, then the group's total (cls None)

    def to_dict(self) -> dict[str, Any]:
        return {"by": self.by, "since": self.since, "target": self.target, "iou": 0.5,
                "proposals": self.proposals, "judged": self.judged, "pending": self.pending,
                "deleted": self.deleted, "rows": [row.to_dict() for row in self.rows]}

    def rows_of(self, group: str) -> dict[int | None, FieldRow]:
        return {row.cls: row for row in self.rows if row.group == group}


def _group_of(item: Judged, by: str) -> str:
    if by == "week":
        return item.week
    if by == "media":
        return item.media or "unknown"
    if by == "model":
        return item.model or "unknown"
    return ALL


def class_names(settings: Settings) -> dict[int, str]:
    """The model's 80 class slots' names (as analysis.outcomes.class_names, without its imports)."""
    return model_class_names(Layout(settings.paths).classes_json)


def tabulate(judged: Sequence[Judged], by: str, names: dict[int, str]) -> list[FieldRow]:
    """Per group and class the box counts (groups sorted; classes ascending, then the total)."""
    if by not in GROUPINGS:
        raise InputError(f"--by {by!r}: use one of {', '.join(GROUPINGS)}")
    rows: dict[tuple[str, int | None], FieldRow] = {}
    for item, (tp, fp, fn) in zip(judged, box_outcomes(judged), strict=True):
        group = _group_of(item, by)
        for cls in set(tp) | set(fp) | set(fn) | {None}:
            row = rows.get((group, cls))
            if row is None:
                name = "all classes" if cls is None else names.get(cls, f"Class-{cls}")
                row = rows[(group, cls)] = FieldRow(group, cls, name)
            if cls is None:
                row.tp += sum(tp.values())
                row.fp += sum(fp.values())
                row.fn += sum(fn.values())
            else:
                row.tp += tp[cls]
                row.fp += fp[cls]
                row.fn += fn[cls]
            row.annotations += 1
            row.models[item.model or "unknown"] += 1
    return [rows[key] for key in sorted(rows, key=lambda k: (k[0], k[1] is None, k[1] or 0))]


@dataclass(frozen=True)
class RecallDrop:
    cls: int
    name: str
    previous_week: str
    week: str
    previous_recall: float
    recall: float

    @property
    def drop(self) -> float:
        return self.previous_recall - self.recall


def recall_drops(rows: Sequence[FieldRow], threshold: float, min_boxes: int | None = None) -> list[RecallDrop]:
    """Classes whose field recall fell by more than `threshold` from the second latest week with
    judged proposals to the latest (rows tabulated by week); a week counts for a class only with
    at least `min_boxes` (default ALERT_MIN_BOXES) final boxes of it."""
    min_boxes = ALERT_MIN_BOXES if min_boxes is None else min_boxes
    weeks = sorted({row.group for row in rows if row.group != "unknown"})
    if len(weeks) < 2:
        return []
    before = {row.cls: row for row in rows if row.group == weeks[-2] and row.cls is not None}
    drops = []
    for row in rows:
        if row.group != weeks[-1] or row.cls is None or row.cls not in before:
            continue
        old = before[row.cls]
        if old.tp + old.fn < min_boxes or row.tp + row.fn < min_boxes:
            continue
        if old.recall - row.recall > threshold:
            drops.append(RecallDrop(row.cls, row.name, weeks[-2], weeks[-1], old.recall, row.recall))
    return drops


def read_records(layout: Layout) -> tuple[list[Proposal], list[AnnotationEvent]]:
    with reading(layout.index_db) as index:
        return (index.proposals(), index.events()) if index else ([], [])


def tabulate_weeks(settings: Settings) -> list[FieldRow]:
    """Every judged proposal tabulated by the week it was made (the health check's input); cheap:
    only the index is read, the promotion history is not needed."""
    judged, _ = judge(*read_records(Layout(settings.paths)))
    return tabulate([j for j in judged if j.proposed_at is not None], "week", class_names(settings))
