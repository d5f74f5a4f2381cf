"""Detection metrics, one owner: predictions matched to labels per image, then AP per class at
IoU 0.50:0.95, precision and recall at a confidence threshold, and a paired bootstrap over
images (docs/model-registry.md, "How a model is judged").

Matching (COCO style): per image and class, predictions are taken best first and each one
matches the still unmatched label box of its class with the highest IoU, if that IoU reaches
the threshold. AP is the area under the precision envelope (all-point interpolation), and mAP
the mean over the classes that have at least one label box in the images evaluated.

Boxes are pixels: predictions (cls, conf, x1, y1, x2, y2), labels (cls, x1, y1, x2, y2).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from azaion_training.inference.nms import box_iou

IOU_THRESHOLDS = np.round(np.linspace(0.5, 0.95, 10), 2)  # index 0 is IoU 0.5
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_CHUNK = 50  # resamples computed at once (memory: chunk x predictions of one class)

Prediction = Sequence[float]  # (cls, conf, x1, y1, x2, y2)
Truth = Sequence[float]  # (cls, x1, y1, x2, y2)


def match_image(predictions: Sequence[Prediction], truths: Sequence[Truth]) -> np.ndarray:
    """(n_predictions, 10) booleans: prediction k is a true positive at IoU_THRESHOLDS[t]."""
    hits = np.zeros((len(predictions), len(IOU_THRESHOLDS)), dtype=bool)
    if not len(predictions) or not len(truths):
        return hits
    truth_cls = np.array([int(t[0]) for t in truths])
    truth_boxes = np.array([t[1:5] for t in truths], dtype=np.float64).reshape(-1, 4)
    order = sorted(range(len(predictions)), key=lambda k: -float(predictions[k][1]))
    used = {int(c): np.zeros((len(IOU_THRESHOLDS), int((truth_cls == c).sum())), dtype=bool)
            for c in np.unique(truth_cls)}
    boxes = {c: truth_boxes[truth_cls == c] for c in used}
    for k in order:
        cls = int(predictions[k][0])
        if cls not in used:
            continue
        ious = box_iou(np.asarray(predictions[k][2:6], dtype=np.float64), boxes[cls])
        if ious.max() < IOU_THRESHOLDS[0]:
            continue
        candidates = np.where(used[cls], -1.0, ious[None, :])
        best = candidates.argmax(axis=1)
        hit = candidates[np.arange(len(IOU_THRESHOLDS)), best] >= IOU_THRESHOLDS
        used[cls][np.nonzero(hit)[0], best[hit]] = True
        hits[k] = hit
    return hits


def _average_precision(tp: np.ndarray, fp: np.ndarray, total: np.ndarray) -> np.ndarray:
    """All-point AP per row. tp, fp: (rows, n) cumulative counts over predictions best first;
    total: (rows,) label boxes. Rows with no label box give nan."""
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(total[:, None] > 0, tp / total[:, None], 0.0)
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-12), 0.0)
    rows = tp.shape[0]
    r = np.concatenate([np.zeros((rows, 1)), recall, np.ones((rows, 1))], axis=1)
    p = np.concatenate([np.ones((rows, 1)), precision, np.zeros((rows, 1))], axis=1)
    p = np.flip(np.maximum.accumulate(np.flip(p, axis=1), axis=1), axis=1)
    ap = np.sum((r[:, 1:] - r[:, :-1]) * p[:, 1:], axis=1)
    return np.where(total > 0, ap, np.nan)


@dataclass
class Evaluation:
    """Predictions of one model on a list of labelled images, matched once."""

    images: int
    pred_image: np.ndarray  # (n,) image index of each prediction
    pred_cls: np.ndarray  # (n,)
    pred_conf: np.ndarray  # (n,)
    pred_tp: np.ndarray  # (n, 10)
    truth_counts: dict[int, np.ndarray] = field(default_factory=dict)  # class -> (images,) label boxes

    @property
    def classes(self) -> list[int]:
        """Classes with at least one label box: the ones mAP averages over."""
        return sorted(c for c, counts in self.truth_counts.items() if counts.sum() > 0)

    def instances(self, cls: int) -> int:
        counts = self.truth_counts.get(cls)
        return int(counts.sum()) if counts is not None else 0

    def _class_ap(self, cls: int, weights: np.ndarray, threshold: int | slice) -> np.ndarray:
        """AP of `cls` for each row of `weights` (rows x images) at the threshold index/indices:
        (rows,) for one threshold, (rows, t) for a slice."""
        mask = self.pred_cls == cls
        order = np.argsort(-self.pred_conf[mask], kind="stable")
        image = self.pred_image[mask][order]
        tp_flags = self.pred_tp[mask][order]
        total = weights @ self.truth_counts.get(cls, np.zeros(self.images))
        w = weights[:, image]  # rows x n
        thresholds = range(len(IOU_THRESHOLDS))[threshold] if isinstance(threshold, slice) else [threshold]
        aps = []
        for t in thresholds:
            hit = tp_flags[:, t].astype(np.float64)
            tp = np.cumsum(w * hit, axis=1)
            fp = np.cumsum(w * (1.0 - hit), axis=1)
            aps.append(_average_precision(tp, fp, total))
        stacked = np.stack(aps, axis=1)
        return stacked[:, 0] if not isinstance(threshold, slice) else stacked

    def ap(self, cls: int, threshold: int = 0) -> float:
        value = self._class_ap(cls, np.ones((1, self.images)), threshold)[0]
        return 0.0 if np.isnan(value) else float(value)

    def map(self, weights: np.ndarray | None = None, thresholds: slice | int = 0) -> np.ndarray:
        """mAP per weights row (default: each image once), over classes with label boxes in that row."""
        weights = np.ones((1, self.images)) if weights is None else weights
        if not self.classes:
            return np.full(weights.shape[0], np.nan)
        per_class = []
        for cls in self.classes:
            ap = self._class_ap(cls, weights, thresholds)
            per_class.append(ap.mean(axis=1) if ap.ndim == 2 else ap)
        return np.nanmean(np.stack(per_class, axis=1), axis=1)

    @property
    def map50(self) -> float | None:
        value = self.map()[0]
        return None if np.isnan(value) else float(value)

    @property
    def map50_95(self) -> float | None:
        value = self.map(thresholds=slice(None))[0]
        return None if np.isnan(value) else float(value)

    def precision_recall(self, conf: float) -> tuple[float, float]:
        """At IoU 0.5 over the predictions with confidence >= conf."""
        kept = self.pred_conf >= conf
        hits = int(self.pred_tp[kept, 0].sum())
        total = sum(self.instances(c) for c in self.classes)
        return (hits / int(kept.sum()) if kept.any() else 0.0), (hits / total if total else 0.0)

    def summary(self, conf: float) -> dict[str, float]:
        precision, recall = self.precision_recall(conf)
        return {"mAP50": round(self.map50 or 0.0, 4), "mAP50-95": round(self.map50_95 or 0.0, 4),
                "precision": round(precision, 4), "recall": round(recall, 4)}

    def per_class(self) -> dict[int, dict[str, float]]:
        return {c: {"ap50": round(self.ap(c), 4), "instances": self.instances(c)} for c in self.classes}


def evaluate_detections(predictions: Sequence[Sequence[Prediction]],
                        truths: Sequence[Sequence[Truth]]) -> Evaluation:
    """Match every image's predictions to its labels (predictions[i] and truths[i]: image i)."""
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} prediction lists for {len(truths)} images")
    images, classes, confs, hits = [], [], [], []
    counts: dict[int, np.ndarray] = {}
    for i, (found, labelled) in enumerate(zip(predictions, truths, strict=True)):
        for t in labelled:
            counts.setdefault(int(t[0]), np.zeros(len(truths)))[i] += 1
        if found:
            hits.append(match_image(found, labelled))
            images.extend([i] * len(found))
            classes.extend(int(p[0]) for p in found)
            confs.extend(float(p[1]) for p in found)
    return Evaluation(len(truths), np.array(images, dtype=np.int64), np.array(classes, dtype=np.int64),
                      np.array(confs, dtype=np.float64),
                      np.concatenate(hits) if hits else np.zeros((0, len(IOU_THRESHOLDS)), dtype=bool), counts)


def map50(predictions: Sequence[Sequence[Prediction]], truths: Sequence[Sequence[Truth]]) -> float | None:
    """mAP at IoU 0.5 over the classes present in the labels (None when there is none)."""
    return evaluate_detections(predictions, truths).map50


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    resamples: int
    seed: int
    confidence: float = 0.95

    def to_dict(self) -> dict[str, float]:
        return {"low": self.low, "high": self.high, "resamples": self.resamples, "seed": self.seed,
                "confidence": self.confidence}


def paired_bootstrap(candidate: Evaluation, baseline: Evaluation, seed: int = 0,
                     resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = 0.95) -> Interval:
    """Interval of mAP50(candidate) - mAP50(baseline) when the same images are resampled with
    replacement for both (the two evaluations must be of the same images, in the same order)."""
    if candidate.images != baseline.images:
        raise ValueError("a paired bootstrap needs both models evaluated on the same images")
    rng = np.random.default_rng(seed)
    deltas = []
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        rows = min(BOOTSTRAP_CHUNK, resamples - start)
        picks = rng.integers(0, candidate.images, size=(rows, candidate.images))
        weights = np.zeros((rows, candidate.images))
        np.add.at(weights, (np.repeat(np.arange(rows), candidate.images), picks.ravel()), 1.0)
        deltas.append(candidate.map(weights) - baseline.map(weights))
    delta = np.concatenate(deltas)
    delta = delta[~np.isnan(delta)]
    if not len(delta):
        return Interval(float("nan"), float("nan"), resamples, seed, confidence)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(delta, [tail, 100 - tail])
    return Interval(round(float(low), 4), round(float(high), 4), resamples, seed, confidence)
