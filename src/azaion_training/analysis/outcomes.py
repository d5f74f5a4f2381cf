"""Where a model fails: every box of a split classified, a confusion matrix, per-class figures
and a per-image error score (docs/error-analysis.md, "Outcomes").

One matching: metrics.match_images (the gate's) decides the true positives; every other figure
is built on its result, so the per-class AP, precision and recall here are the gate's figures
on the same detections. Outcomes are judged at the gate's IoU (0.5) on the detections the field
would show (confidence >= INFERENCE_CONF unless told otherwise); AP uses every cached detection.

Each prediction (confidence >= conf), best first, after the gate's matching (where a box could
concern several label boxes, it concerns the one with the highest IoU; ties: the first label):

1. true positive: the matching gave it a label box of its class (IoU >= 0.5);
2. wrong class: it covers (IoU >= 0.5) a label box of another class that nothing found and no
   other wrong-class prediction claimed; the label's class is recorded (the box claims it);
3. duplicate: it covers (IoU >= 0.5) a label box already found (or claimed): a second box on one object;
4. poor localisation: its best IoU with a label box of its own class is in [LOW_IOU, 0.5);
5. background: anything else (nothing of its class near, nothing at all under it).

Each label box nothing found or claimed is missed.

Error score of an image = missed + wrong class + the summed confidences of its background,
poor-localisation and duplicate boxes: an object the model did not report (or reported as
something else) costs 1, a false box costs what the model staked on it.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

import numpy as np

from azaion_training.analysis.predictions import ModelRef, PredictionRun, SplitPredictions, split_predictions
from azaion_training.classes import model_class_names
from azaion_training.inference.scoring import ENGINE
from azaion_training.layout import Layout
from azaion_training.metrics import IOU_THRESHOLDS, Evaluation, evaluate_arrays, pair_iou, row_starts, same_image_pairs
from azaion_training.settings import Settings

IOU = float(IOU_THRESHOLDS[0])  # the gate's matching threshold
LOW_IOU = 0.1  # below this a box does not touch a label box at all (poor localisation starts here)
BACKGROUND = -1  # the background row/column of the confusion matrix in to_dict


class Outcome(StrEnum):
    TRUE_POSITIVE = "true_positive"
    WRONG_CLASS = "wrong_class"
    DUPLICATE = "duplicate"
    LOCALISATION = "localisation"
    BACKGROUND = "background"
    MISSED = "missed"


KINDS = tuple(Outcome)  # OutcomeTable.kind holds the index into this
TP, WRONG, DUPLICATE, LOCALISATION, FALSE_ALARM, MISSED = range(len(KINDS))
FALSE_BOXES = (Outcome.DUPLICATE, Outcome.LOCALISATION, Outcome.BACKGROUND)  # cost their confidence
LABEL_SIDE = (TP, WRONG, MISSED)  # outcomes counted for the label box's class


@dataclass(frozen=True)
class BoxOutcome:
    """One predicted box (or, for MISSED, one label box) and what it was."""

    kind: Outcome
    cls: int  # the predicted class (MISSED: the label's)
    conf: float | None  # None for a missed label box
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    label: int | None = None  # index of the label box it concerns in the image's label file
    true_cls: int | None = None  # that label box's class
    iou: float | None = None  # IoU with that label box

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = str(self.kind)
        data["box"] = [round(v, 2) for v in self.box]
        data["conf"] = None if self.conf is None else round(self.conf, 5)
        data["iou"] = None if self.iou is None else round(self.iou, 4)
        return data


@dataclass
class OutcomeCounts:
    true_positive: int = 0
    wrong_class: int = 0
    duplicate: int = 0
    localisation: int = 0
    background: int = 0
    missed: int = 0

    @classmethod
    def of(cls, row: Sequence[int]) -> "OutcomeCounts":
        """From counts in KINDS order."""
        return cls(*(int(v) for v in row))

    def add(self, kind: Outcome, count: int = 1) -> None:
        setattr(self, kind.value, getattr(self, kind.value) + count)

    def __add__(self, other: "OutcomeCounts") -> "OutcomeCounts":
        return OutcomeCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def __sub__(self, other: "OutcomeCounts") -> "OutcomeCounts":
        return OutcomeCounts(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    @property
    def false_positives(self) -> int:
        """Predictions that are not true positives (the gate's precision counts them all)."""
        return self.wrong_class + self.duplicate + self.localisation + self.background

    @property
    def errors(self) -> int:
        return self.false_positives + self.missed

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class OutcomeTable:
    """Every judged box of a split, one row each, grouped by image (image i: rows start[i] to
    start[i + 1]); within an image its predictions best first, then its missed label boxes."""

    image: np.ndarray  # (rows,) image index
    kind: np.ndarray  # (rows,) index into KINDS
    cls: np.ndarray  # predicted class (MISSED: the label's)
    conf: np.ndarray  # nan for MISSED
    box: np.ndarray  # (rows, 4) x1, y1, x2, y2 in pixels
    label: np.ndarray  # index of the label box in its image's labels, -1: none
    true_cls: np.ndarray  # that label box's class, -1: none
    iou: np.ndarray  # IoU with that label box, nan: none
    start: np.ndarray  # (images + 1,)

    @property
    def images(self) -> int:
        return len(self.start) - 1

    def boxes(self, image: int) -> list[BoxOutcome]:
        rows = range(int(self.start[image]), int(self.start[image + 1]))
        return [BoxOutcome(KINDS[self.kind[r]], int(self.cls[r]),
                           None if np.isnan(self.conf[r]) else float(self.conf[r]),
                           tuple(float(v) for v in self.box[r]), None if self.label[r] < 0 else int(self.label[r]),
                           None if self.true_cls[r] < 0 else int(self.true_cls[r]),
                           None if np.isnan(self.iou[r]) else float(self.iou[r])) for r in rows]

    def counts(self) -> np.ndarray:
        """(images, len(KINDS)) outcome counts per image."""
        flat = np.bincount(self.image * len(KINDS) + self.kind, minlength=self.images * len(KINDS))
        return flat.reshape(self.images, len(KINDS))

    def error_scores(self) -> np.ndarray:
        """(images,) the error score of each image (module docstring)."""
        weights = np.where(np.isin(self.kind, (MISSED, WRONG)), 1.0,
                           np.where(np.isin(self.kind, (DUPLICATE, LOCALISATION, FALSE_ALARM)), self.conf, 0.0))
        return np.bincount(self.image, weights, minlength=self.images)

    def owner(self) -> np.ndarray:
        """The class each row is counted for (ClassFigures): the label's for TP, wrong class and
        missed, the prediction's for the false boxes."""
        return np.where(np.isin(self.kind, LABEL_SIDE), self.true_cls, self.cls)


def classify_split(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray], assigned: Sequence[np.ndarray],
                   conf: float, low_iou: float = LOW_IOU) -> OutcomeTable:
    """The outcome (module docstring) of every prediction with confidence >= conf and of every
    label box nothing found, in every image at once. predictions[i] (n, 6), truths[i] (m, 5),
    assigned[i] (n, 10): match_images' result on them (a greedy match of the best predictions is
    the same with or without the weaker ones)."""
    images = len(predictions)
    pred_start, truth_start = row_starts(predictions), row_starts(truths)
    found_boxes = np.concatenate(predictions) if images else np.zeros((0, 6))
    labels = np.concatenate(truths) if images else np.zeros((0, 5))
    matched = np.concatenate(assigned)[:, 0] if images else np.zeros(0, dtype=np.int64)
    pred_image = np.repeat(np.arange(images), np.diff(pred_start))
    truth_image = np.repeat(np.arange(images), np.diff(truth_start))
    truth_cls = labels[:, 0].astype(np.int64)

    kept = np.flatnonzero(found_boxes[:, 1] >= conf)
    kept = kept[np.lexsort((kept, -found_boxes[kept, 1], pred_image[kept]))]  # per image best first, ties: stacked
    image = pred_image[kept]
    cls = found_boxes[kept, 0].astype(np.int64)
    label = np.where(matched[kept] >= 0, truth_start[image] + matched[kept], -1)  # stacked label index
    kind = np.full(len(kept), FALSE_ALARM, dtype=np.int8)  # what is left at the end is background
    iou = np.full(len(kept), np.nan)
    tp = label >= 0
    kind[tp] = TP
    iou[tp] = pair_iou(found_boxes[kept[tp], 2:6], labels[label[tp], 1:5])
    found = np.zeros(len(labels), dtype=bool)
    found[label[tp]] = True
    claimed = np.zeros(len(labels), dtype=bool)
    rest = np.flatnonzero(~tp)
    if len(rest) and len(labels):
        chunks = list(same_image_pairs(image[rest], truth_start))
        p = rest[np.concatenate([i for i, _ in chunks])]  # position in `kept`
        j = np.concatenate([j for _, j in chunks])  # stacked label index
        pair = pair_iou(found_boxes[kept[p], 2:6], labels[j, 1:5])
        same = cls[p] == truth_cls[j]
        covers = pair >= IOU
        outcome = _Outcome(kind, label, iou, p, j, pair)
        outcome.claim(covers & ~same & ~found[j], claimed)
        outcome.settle(DUPLICATE, (kind[p] == FALSE_ALARM) & covers & (found[j] | claimed[j]))
        outcome.settle(LOCALISATION, (kind[p] == FALSE_ALARM) & same & (pair >= low_iou))
    missed = np.flatnonzero(~found & ~claimed)
    # predictions first, then missed label boxes, image by image
    row_image = np.concatenate([image, truth_image[missed]])
    order = np.lexsort((np.arange(len(row_image)), np.r_[np.zeros(len(kept)), np.ones(len(missed))], row_image))
    label_of = np.concatenate([label, missed])
    true_cls = np.where(label_of >= 0, truth_cls[np.maximum(label_of, 0)] if len(labels) else -1, -1)
    local = np.where(label_of >= 0, label_of - truth_start[row_image], -1)
    return OutcomeTable(
        row_image[order], np.concatenate([kind, np.full(len(missed), MISSED, dtype=np.int8)])[order],
        np.concatenate([cls, truth_cls[missed]])[order],
        np.concatenate([found_boxes[kept, 1], np.full(len(missed), np.nan)])[order],
        np.concatenate([found_boxes[kept, 2:6], labels[missed, 1:5]]).reshape(-1, 4)[order], local[order],
        true_cls[order], np.concatenate([iou, np.full(len(missed), np.nan)])[order],
        np.searchsorted(row_image[order], np.arange(images + 1)))


@dataclass
class _Outcome:
    """The kept predictions' outcomes being decided over their (prediction p, label box j) pairs."""

    kind: np.ndarray
    label: np.ndarray
    iou: np.ndarray
    p: np.ndarray
    j: np.ndarray
    pair: np.ndarray

    def _set(self, kind: int, where: np.ndarray) -> None:
        self.kind[self.p[where]] = kind
        self.label[self.p[where]] = self.j[where]
        self.iou[self.p[where]] = self.pair[where]

    def settle(self, kind: int, mask: np.ndarray) -> None:
        """Each prediction with a pair in `mask` gets `kind` and its best such label box (highest
        IoU; ties: the first label)."""
        chosen = np.flatnonzero(mask)
        chosen = chosen[np.lexsort((self.j[chosen], -self.pair[chosen], self.p[chosen]))]
        first = np.r_[True, self.p[chosen][1:] != self.p[chosen][:-1]] if len(chosen) else np.zeros(0, dtype=bool)
        self._set(kind, chosen[first])

    def claim(self, mask: np.ndarray, claimed: np.ndarray) -> None:
        """Wrong class: best first, each prediction claims the unclaimed label box in `mask` with
        the highest IoU. Where no two predictions want the same label box the order does not
        matter; the rest are walked in order."""
        chosen = np.flatnonzero(mask)
        p, j = self.p[chosen], self.j[chosen]
        alone = (np.bincount(p, minlength=len(self.kind))[p] == 1) & (np.bincount(j, minlength=len(claimed))[j] == 1)
        self._set(WRONG, chosen[alone])
        claimed[j[alone]] = True
        contested = chosen[~alone]
        contested = contested[np.lexsort((self.j[contested], -self.pair[contested], self.p[contested]))]
        done = -1
        for index in contested.tolist():
            if self.p[index] != done and not claimed[self.j[index]]:
                self._set(WRONG, np.array([index]))
                claimed[self.j[index]] = True
                done = self.p[index]


def classify_image(predictions: np.ndarray, truths: np.ndarray, assigned: np.ndarray, conf: float,
                   low_iou: float = LOW_IOU) -> list[BoxOutcome]:
    """classify_split for one image."""
    return classify_split([predictions], [truths], [assigned], conf, low_iou).boxes(0)


def error_score(outcomes: Sequence[BoxOutcome]) -> float:
    """missed + wrong class + the confidences of the false boxes (module docstring)."""
    return float(sum(1.0 if o.kind in (Outcome.MISSED, Outcome.WRONG_CLASS) else o.conf or 0.0
                     for o in outcomes if o.kind is not Outcome.TRUE_POSITIVE))


@dataclass(frozen=True)
class ImageOutcomes:
    name: str  # path inside the dataset
    sha256: str
    width: int
    height: int
    counts: OutcomeCounts
    error_score: float
    table: OutcomeTable = field(repr=False, compare=False)
    index: int = 0  # the image's index in the table

    @property
    def boxes(self) -> list[BoxOutcome]:
        """Its predictions best first, then its missed label boxes."""
        return self.table.boxes(self.index)

    def to_dict(self, boxes: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "sha256": self.sha256, "width": self.width, "height": self.height,
                                "error_score": round(self.error_score, 4), "counts": self.counts.to_dict()}
        if boxes:
            data["boxes"] = [b.to_dict() for b in self.boxes]
        return data


# ------------------------------------------------------------------------------------- over a split


@dataclass(frozen=True)
class ConfusionMatrix:
    """counts[i, j]: label boxes of classes[i] predicted as classes[j]; the last row (background)
    counts predictions on no label box of any class (background, poor localisation, duplicate),
    the last column label boxes nothing was predicted on (missed). Row sums are the label boxes
    of a class, column sums the predictions of a class (at the analysis' confidence)."""

    classes: list[int]
    names: list[str]
    counts: np.ndarray  # (len(classes) + 1, len(classes) + 1) int64

    def cell(self, true_cls: int | None, pred_cls: int | None) -> int:
        """None: background."""
        i = len(self.classes) if true_cls is None else self.classes.index(true_cls)
        j = len(self.classes) if pred_cls is None else self.classes.index(pred_cls)
        return int(self.counts[i, j])

    def to_dict(self) -> dict[str, Any]:
        return {"rows": "label class (last: background, no label box)",
                "columns": "predicted class (last: background, nothing predicted)",
                "classes": [*self.classes, BACKGROUND], "names": [*self.names, "background"],
                "counts": self.counts.tolist()}


def confusion_matrix(table: OutcomeTable, names: dict[int, str]) -> ConfusionMatrix:
    """ConfusionMatrix of every row of the table: TP (class, class), wrong class (label's class,
    predicted class), missed (label's class, background), false boxes (background, predicted)."""
    true = np.where(np.isin(table.kind, (TP, WRONG, MISSED)), table.true_cls, -1)
    predicted = np.where(table.kind == MISSED, -1, table.cls)
    classes = sorted((set(np.unique(true).tolist()) | set(np.unique(predicted).tolist())) - {-1})
    lookup = np.array(classes, dtype=np.int64)
    background = len(classes)
    counts = np.zeros((background + 1, background + 1), dtype=np.int64)
    rows = np.where(true >= 0, np.searchsorted(lookup, true), background)
    columns = np.where(predicted >= 0, np.searchsorted(lookup, predicted), background)
    np.add.at(counts, (rows, columns), 1)
    return ConfusionMatrix(classes, [names.get(c, f"Class-{c}") for c in classes], counts)


@dataclass(frozen=True)
class ClassFigures:
    """One class at the gate's figures. Outcome counts: true positive, wrong class and missed by
    the label's class (its objects found, called something else, not found); duplicate, poor
    localisation and background by the predicted class."""

    cls: int
    name: str
    instances: int  # label boxes
    predictions: int  # predictions of this class at the analysis' confidence
    precision: float
    recall: float
    ap50: float | None  # None: no label box of this class in the split (not in the mAP)
    ap50_95: float | None
    counts: OutcomeCounts

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("precision", "recall", "ap50", "ap50_95"):
            data[key] = None if data[key] is None else round(data[key], 4)
        return data


@dataclass
class Analysis:
    """One model on one dataset split: every figure, measured on the ONNX."""

    model: ModelRef
    dataset: str
    split: str
    conf: float  # outcomes, precision and recall at confidence >= conf
    low_iou: float
    map50: float | None
    map50_95: float | None
    precision: float
    recall: float
    classes: list[ClassFigures]
    confusion: ConfusionMatrix
    totals: OutcomeCounts
    images: list[ImageOutcomes]  # in the split's order
    table: OutcomeTable = field(repr=False)  # every judged box (ImageOutcomes.boxes reads it)
    evaluation: Evaluation = field(repr=False)
    iou: float = IOU
    engine: str = ENGINE

    @property
    def imgsz(self) -> int:
        return self.model.imgsz

    def where(self) -> str:
        """e.g. `test, 22 images, imgsz 320, ONNX`."""
        return f"{self.split}, {len(self.images)} images, imgsz {self.imgsz}, {self.engine}"

    def worst(self, count: int) -> list[ImageOutcomes]:
        """The `count` images with the highest error score (ties: by name); none with a score of 0."""
        ranked = sorted((i for i in self.images if i.error_score > 0), key=lambda i: (-i.error_score, i.name))
        return ranked[:count]

    def class_figures(self, cls: int) -> ClassFigures | None:
        return next((c for c in self.classes if c.cls == cls), None)

    def to_dict(self, worst: int | None = 10, boxes: bool = True) -> dict[str, Any]:
        """JSON: `worst` images with their boxes (None: every image)."""
        shown = self.images if worst is None else self.worst(worst)
        return {"model": {"label": self.model.label, "run": self.model.run, "onnx": str(self.model.onnx),
                          "onnx_sha256": self.model.sha256, "imgsz": self.model.imgsz},
                "dataset": self.dataset, "split": self.split, "images": len(self.images), "imgsz": self.imgsz,
                "engine": self.engine, "where": self.where(), "conf": self.conf, "iou": self.iou,
                "low_iou": self.low_iou,
                "metrics": {"mAP50": _rounded(self.map50), "mAP50-95": _rounded(self.map50_95),
                            "precision": round(self.precision, 4), "recall": round(self.recall, 4)},
                "totals": self.totals.to_dict(), "classes": [c.to_dict() for c in self.classes],
                "confusion": self.confusion.to_dict(),
                "worst" if worst is not None else "per_image": [i.to_dict(boxes) for i in shown]}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _class_counts(table: OutcomeTable) -> dict[int, OutcomeCounts]:
    owner = table.owner()
    if not len(owner):
        return {}
    flat = np.bincount(owner * len(KINDS) + table.kind, minlength=(int(owner.max()) + 1) * len(KINDS))
    per_class = flat.reshape(-1, len(KINDS))
    return {int(c): OutcomeCounts.of(per_class[c]) for c in np.unique(owner).tolist()}


def analyse_split(predictions: SplitPredictions, names: dict[int, str], conf: float,
                  low_iou: float = LOW_IOU) -> Analysis:
    """Every figure of one model on one split, from its cached detections."""
    if not 0 < low_iou < IOU:
        raise ValueError(f"low_iou {low_iou} must be in (0, {IOU})")
    found = [i.predictions for i in predictions.images]
    labelled_boxes = [i.truths for i in predictions.images]
    evaluation, assigned = evaluate_arrays(found, labelled_boxes)
    table = classify_split(found, labelled_boxes, assigned, conf, low_iou)
    counts, scores = table.counts(), table.error_scores()
    images = [ImageOutcomes(i.name, i.sha256, i.width, i.height, OutcomeCounts.of(counts[k]), float(scores[k]),
                            table, k) for k, i in enumerate(predictions.images)]
    totals = OutcomeCounts.of(counts.sum(axis=0)) if len(images) else OutcomeCounts()
    per_class = _class_counts(table)
    kept = evaluation.pred_conf >= conf
    predicted = np.bincount(evaluation.pred_cls[kept]) if kept.any() else np.zeros(0, dtype=np.int64)
    labelled = set(evaluation.classes)
    classes = []
    for cls in sorted(labelled | {int(c) for c in np.nonzero(predicted)[0]}):
        precision, recall = evaluation.class_precision_recall(cls, conf)
        aps = evaluation.ap_per_threshold(cls) if cls in labelled else None
        classes.append(ClassFigures(cls, names.get(cls, f"Class-{cls}"), evaluation.instances(cls),
                                    int(predicted[cls]) if cls < len(predicted) else 0, precision, recall,
                                    None if aps is None else float(aps[0]), None if aps is None else float(aps.mean()),
                                    per_class.get(cls, OutcomeCounts())))
    precision, recall = evaluation.precision_recall(conf)
    return Analysis(predictions.model, predictions.dataset, predictions.split, conf, low_iou, evaluation.map50,
                    evaluation.map50_95, precision, recall, classes, confusion_matrix(table, names), totals, images,
                    table, evaluation)


def class_names(settings: Settings) -> dict[int, str]:
    """The names every figure uses (the gate's: classes.json's 80 model slots)."""
    return model_class_names(Layout(settings.paths).classes_json)


def analyse(settings: Settings, model: str | ModelRef | None = None, dataset: str | None = None,
            split: str = "test", conf: float | None = None, progress: bool = True) -> tuple[Analysis, PredictionRun]:
    """Predict what is not cached yet, then analyse: outcomes at `conf` (default INFERENCE_CONF)."""
    predictions, run = split_predictions(settings, model, dataset, split, progress)
    chosen = settings.inference.conf if conf is None else conf
    return analyse_split(predictions, class_names(settings), chosen), run
