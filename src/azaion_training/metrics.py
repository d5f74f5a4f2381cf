"""Detection metrics, one owner: predictions matched to labels per image, then AP per class at
IoU 0.50:0.95, precision and recall at a confidence threshold, and a paired bootstrap over
images (docs/model-registry.md, "How a model is judged").

Matching (COCO style): per image and class, predictions are taken best first and each one
matches the still unmatched label box of its class with the highest IoU, if that IoU reaches
the threshold. AP is the area under the precision envelope (all-point interpolation), and mAP
the mean over the classes that have at least one label box in the images evaluated.

Boxes are pixels: predictions (cls, conf, x1, y1, x2, y2), labels (cls, x1, y1, x2, y2).
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

IOU_THRESHOLDS = np.round(np.linspace(0.5, 0.95, 10), 2)  # index 0 is IoU 0.5
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_CHUNK = 50  # resamples computed at once (memory: chunk x predictions of one class)

Prediction = Sequence[float]  # (cls, conf, x1, y1, x2, y2)
Truth = Sequence[float]  # (cls, x1, y1, x2, y2)


def match_image(predictions: Sequence[Prediction], truths: Sequence[Truth]) -> np.ndarray:
    """(n_predictions, 10) booleans: prediction k is a true positive at IoU_THRESHOLDS[t]."""
    return match_images([prediction_array(predictions)], [truth_array(truths)])[0] >= 0


def prediction_array(predictions: Sequence[Prediction] | np.ndarray) -> np.ndarray:
    """(n, 6) float64 rows (cls, conf, x1, y1, x2, y2)."""
    return np.asarray(predictions, dtype=np.float64).reshape(-1, 6)


def truth_array(truths: Sequence[Truth] | np.ndarray) -> np.ndarray:
    """(m, 5) float64 rows (cls, x1, y1, x2, y2)."""
    return np.asarray(truths, dtype=np.float64).reshape(-1, 5)


def pair_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of each xyxy row of `boxes` with the same row of `others`: box_iou's arithmetic in the
    same order, so each figure is bit for bit what box_iou gives."""
    inter_w = np.clip(np.minimum(boxes[:, 2], others[:, 2]) - np.maximum(boxes[:, 0], others[:, 0]), 0, None)
    inter_h = np.clip(np.minimum(boxes[:, 3], others[:, 3]) - np.maximum(boxes[:, 1], others[:, 1]), 0, None)
    inter = inter_w * inter_h
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    return np.divide(inter, union, out=np.zeros(inter.shape, dtype=np.float64), where=union > 0)


def iou_matrix(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """(n, m) IoU of every xyxy row of `boxes` with every xyxy row of `others` (pair_iou's figures)."""
    n, m = len(boxes), len(others)
    return pair_iou(np.repeat(boxes, m, axis=0), np.tile(others, (n, 1))).reshape(n, m)


def row_starts(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """(images + 1,) where each image's rows start when `arrays` are stacked (the last: the total)."""
    return np.concatenate([[0], np.cumsum([len(a) for a in arrays], dtype=np.int64)]).astype(np.int64)


PAIR_BUDGET = 2_000_000  # (box, box) pairs handled at once by same_image_pairs


def same_image_pairs(image_of: np.ndarray, others_start: np.ndarray,
                     budget: int = PAIR_BUDGET) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every row i (in image image_of[i]) paired with every stacked row j of the same image
    (`others_start` as row_starts gives it): (i, j) index arrays in chunks of about `budget`
    pairs, i ascending, then j ascending."""
    counts = others_start[image_of + 1] - others_start[image_of]
    ends = np.cumsum(counts)
    begin = 0
    while begin < len(image_of):
        done = int(ends[begin - 1]) if begin else 0
        stop = max(begin + 1, int(np.searchsorted(ends, done + budget, side="right")))
        chunk = counts[begin:stop]
        i = np.repeat(np.arange(begin, stop), chunk)
        offsets = np.cumsum(chunk) - chunk
        j = others_start[image_of[i]] + (np.arange(int(chunk.sum())) - np.repeat(offsets, chunk))
        yield i, j
        begin = stop


def match_images(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The matching (module docstring) of every image at once: predictions[i] (n, 6) and
    truths[i] (m, 5) as prediction_array / truth_array give them. Per image an (n, 10) array:
    the index of the label box (in truths[i]) prediction k took at IOU_THRESHOLDS[t], -1: none.
    Predictions are taken best first (ties: in their given order); each takes the unmatched label
    box of its class with the highest IoU (ties: the first such label) if that IoU reaches the
    threshold."""
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} prediction arrays for {len(truths)} images")
    pred_start, truth_start = row_starts(predictions), row_starts(truths)
    found = np.concatenate(predictions) if len(predictions) else np.zeros((0, 6))
    labels = np.concatenate(truths) if len(truths) else np.zeros((0, 5))
    assigned = np.full((len(found), len(IOU_THRESHOLDS)), -1, dtype=np.int64)
    pred_image = np.repeat(np.arange(len(predictions)), np.diff(pred_start))
    pred_cls, truth_cls = found[:, 0].astype(np.int64), labels[:, 0].astype(np.int64)
    # only a pair of a prediction and a label box of its class at IoU >= 0.5 can ever match
    reach: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for i, j in same_image_pairs(pred_image, truth_start):
        same = pred_cls[i] == truth_cls[j]
        i, j = i[same], j[same]
        iou = pair_iou(found[i, 2:6], labels[j, 1:5])
        hit = iou >= IOU_THRESHOLDS[0]
        reach.append((i[hit], j[hit], iou[hit]))
    if reach:
        k, j, iou = (np.concatenate(parts) for parts in zip(*reach, strict=True))
        local = j - truth_start[pred_image[k]]
        # A prediction reaching one label box that no other prediction reaches takes it at every
        # threshold its IoU reaches, whatever the order (its other label boxes are below 0.5:
        # never its best). The greedy walk is needed only where predictions compete.
        alone = (np.bincount(k, minlength=len(found))[k] == 1) & (np.bincount(j, minlength=len(labels))[j] == 1)
        assigned[k[alone]] = np.where(iou[alone, None] >= IOU_THRESHOLDS[None, :], local[alone, None], -1)
        competing = ~alone
        if competing.any():
            _greedy(assigned, found[:, 1], pred_image, k[competing], j[competing], local[competing], iou[competing],
                    len(labels))
    return [assigned[a:b] for a, b in zip(pred_start[:-1], pred_start[1:], strict=True)]


def _greedy(assigned: np.ndarray, conf: np.ndarray, pred_image: np.ndarray, k: np.ndarray, j: np.ndarray,
            local: np.ndarray, iou: np.ndarray, labels: int) -> None:
    """The greedy walk over competing (prediction k, label box j) pairs: per image, predictions
    best first (ties: stacked order), each taking its best label box still free at each threshold."""
    order = np.lexsort((j, k, -conf[k], pred_image[k]))
    k, j, local, iou = k[order], j[order], local[order], iou[order]
    used = np.zeros((labels, len(IOU_THRESHOLDS)), dtype=bool)
    rows = np.arange(len(IOU_THRESHOLDS))
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(k)) + 1, [len(k)]])
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        candidates = np.where(used[j[a:b]].T, -1.0, iou[None, a:b])  # thresholds x its label boxes
        best = candidates.argmax(axis=1)
        hit = candidates[rows, best] >= IOU_THRESHOLDS
        used[j[a:b][best[hit]], rows[hit]] = True
        assigned[k[a], hit] = local[a:b][best[hit]]


@dataclass(frozen=True)
class ImageMatch:
    """One image's predictions matched to its label boxes (match_images' result, with the IoUs)."""

    assigned: np.ndarray  # (n_predictions, 10) index of the label box taken at IOU_THRESHOLDS[t], -1: none
    ious: np.ndarray  # (n_predictions, n_labels) IoU of every prediction with every label box

    @property
    def hits(self) -> np.ndarray:
        """(n_predictions, 10) booleans: a true positive at IOU_THRESHOLDS[t]."""
        return self.assigned >= 0


def assign_image(predictions: np.ndarray, truths: np.ndarray) -> ImageMatch:
    """match_images for one image, with every prediction's IoU with every label box."""
    return ImageMatch(match_images([predictions], [truths])[0], iou_matrix(predictions[:, 2:6], truths[:, 1:5]))


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

    def ap_per_threshold(self, cls: int) -> np.ndarray:
        """(10,) AP of `cls` at each of IOU_THRESHOLDS (zeros for a class without label boxes);
        index 0 is ap(cls), the mean is the class's AP50-95 as map50_95 averages it."""
        return np.nan_to_num(self._class_ap(cls, np.ones((1, self.images)), slice(None))[0])

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

    def class_precision_recall(self, cls: int, conf: float) -> tuple[float, float]:
        """Of one class, at IoU 0.5 over its predictions with confidence >= conf."""
        kept = (self.pred_conf >= conf) & (self.pred_cls == cls)
        hits = int(self.pred_tp[kept, 0].sum())
        total = self.instances(cls)
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


def evaluate_arrays(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> tuple[Evaluation,
                                                                                               list[np.ndarray]]:
    """evaluate_detections on arrays (predictions[i]: (n, 6), truths[i]: (m, 5), image i), with
    each image's match_images result kept for whoever explains the figures (analysis/outcomes.py).
    The same matching in the same order: the Evaluation equals evaluate_detections' on the same boxes."""
    assigned = match_images(predictions, truths)
    stacked = np.concatenate(predictions) if len(predictions) else np.zeros((0, 6))
    labels = np.concatenate(truths) if len(truths) else np.zeros((0, 5))
    truth_image = np.repeat(np.arange(len(truths)), np.diff(row_starts(truths)))
    truth_cls = labels[:, 0].astype(np.int64)
    counts = {int(c): np.bincount(truth_image[truth_cls == c], minlength=len(truths)).astype(np.float64)
              for c in np.unique(truth_cls)}
    hits = np.concatenate(assigned) >= 0 if assigned else np.zeros((0, len(IOU_THRESHOLDS)), dtype=bool)
    evaluation = Evaluation(len(truths), np.repeat(np.arange(len(predictions), dtype=np.int64),
                                                   np.diff(row_starts(predictions))),
                            stacked[:, 0].astype(np.int64), stacked[:, 1].astype(np.float64), hits, counts)
    return evaluation, assigned


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
