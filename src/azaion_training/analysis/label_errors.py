"""Likely label errors (docs/data-engine.md, "Likely label errors"): cleanlab's object-detection
label quality scores on **out-of-sample** predictions of a model, from the predictions cache
(analysis/predictions.py), ranked worst first. Nothing in the data is changed: the result is a
JSONL a person reviews.

Out of sample: an image counts only when the model never trained on it, i.e. its content (sha256)
is not in the train split of the dataset the model's run trained on. Valid and test images of a
sticky-split dataset qualify (valid steered only the choice of the best epoch), as do the images a
newer dataset adds in any split (new annotations not yet trained on). A model whose training set
is unknown (a bare .onnx file) is judged on valid and test only. The train images a model saw are
skipped: a model that fitted a wrong label agrees with it. Ranking them needs k-fold
out-of-sample predictions (k trainings, each predicting the fold it did not see), which costs k
fine-tunes: docs/data-engine.md says how.

Per image cleanlab gives one score in [0, 1] (low: likely mislabelled) and per box three
sub-scores: **overlooked** (a confident prediction no label box matches: a missing label),
**swapped** (a label box that a confident prediction of another class covers: wrong class) and
**badly located** (a label box whose best same-class prediction overlaps it poorly). Each image is
listed with its score, its worst kind and the boxes involved. The image score is
`get_label_quality_scores`' own aggregation (the equal-weight geometric mean of the softmin-pooled
sub-scores, `pool_box_scores_per_image`), computed from the public per-box functions because the
overlooked and swapped sub-scores take CONFIDENT as their high-probability threshold (see there).
"""

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from azaion_training.analysis.predictions import (
    LabelledImage,
    ModelRef,
    load_split,
    manifest_hashes,
    predict_dataset,
    resolve_model,
    resolve_split,
)
from azaion_training.errors import InputError
from azaion_training.fsutil import atomic_write_text
from azaion_training.layout import DatasetDir, Layout
from azaion_training.logs import get_logger, log
from azaion_training.metrics import iou_matrix
from azaion_training.settings import Settings

logger = get_logger("analysis.label_errors")

# cleanlab's default "high probability" (0.95) assumes calibrated probabilities: a YOLO's confident
# boxes score 0.6-0.9, so few would ever count. Overlooked and swapped boxes are judged against
# predictions at or above this instead (its compute_*_box_scores' own parameter).
CONFIDENT = 0.5
TINY = 1e-100  # cleanlab's TINY_VALUE in that aggregation
MIN_CONF = 0.05  # predictions below this are not given to cleanlab (it ignores low ones anyway; saves time)
BOX_SCORE = 0.5  # a box whose sub-score is below this is listed among the image's issues
KINDS = {"overlooked": "overlooked", "swap": "swapped", "badloc": "badly located"}
DEFAULT_LIMIT = 200


@dataclass(frozen=True)
class BoxIssue:
    kind: str  # overlooked | swapped | badly located
    score: float
    label: dict[str, Any] | None  # the label box involved (cls, xyxy in pixels)
    prediction: dict[str, Any] | None  # the prediction involved (cls, conf, xyxy)


@dataclass(frozen=True)
class ImageIssue:
    rank: int
    name: str  # the annotation name (the image's stem)
    image: str  # path inside the dataset
    score: float  # cleanlab's label quality score (low: likely wrong)
    kind: str | None  # the kind of its worst box (None: no box below BOX_SCORE)
    issues: list[BoxIssue]

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "name": self.name, "image": self.image, "score": round(self.score, 6),
                "kind": self.kind, "issues": [{"kind": i.kind, "score": round(i.score, 6), "label": i.label,
                                               "prediction": i.prediction} for i in self.issues]}


@dataclass
class LabelErrorReport:
    model: ModelRef
    dataset: str
    split: str
    images: int  # in the split
    judged: int  # out of sample, ranked
    skipped_trained: int  # trained on: not ranked
    ranked: list[ImageIssue]
    path: Path | None = None  # the JSONL written

    def to_dict(self) -> dict[str, Any]:
        return {"model": {"label": self.model.label, "onnx_sha256": self.model.sha256, "imgsz": self.model.imgsz},
                "dataset": self.dataset, "split": self.split, "images": self.images, "judged": self.judged,
                "skipped_trained": self.skipped_trained, "file": str(self.path) if self.path else None,
                "ranked": [issue.to_dict() for issue in self.ranked]}


def _box(row: np.ndarray, prediction: bool) -> dict[str, Any]:
    if prediction:
        return {"cls": int(row[0]), "conf": round(float(row[1]), 4), "xyxy": [round(float(v), 1) for v in row[2:6]]}
    return {"cls": int(row[0]), "xyxy": [round(float(v), 1) for v in row[1:5]]}


def _cleanlab_inputs(images: list[LabelledImage], min_conf: float) -> tuple[list[dict], list[list[np.ndarray]],
                                                                             list[np.ndarray], int]:
    """cleanlab's labels and per-class predictions, and per image the predictions in the order
    cleanlab concatenates them (class by class), to map its per-box scores back."""
    classes = 1 + max([0, *(int(im.truths[:, 0].max()) for im in images if len(im.truths)),
                       *(int(im.predictions[:, 0].max()) for im in images if len(im.predictions))])
    labels, predictions, ordered = [], [], []
    for im in images:
        labels.append({"bboxes": im.truths[:, 1:5].astype(np.float64), "labels": im.truths[:, 0].astype(np.int64)})
        kept = im.predictions[im.predictions[:, 1] >= min_conf]
        kept = kept[np.argsort(kept[:, 0], kind="stable")]
        per_class = [np.zeros((0, 5)) for _ in range(classes)]
        for cls in np.unique(kept[:, 0]).astype(int):
            rows = kept[kept[:, 0] == cls]
            per_class[cls] = np.column_stack([rows[:, 2:6], rows[:, 1]])
        predictions.append(per_class)
        ordered.append(kept)
    return labels, predictions, ordered, classes


def rank_images(images: list[LabelledImage], min_conf: float = MIN_CONF) -> list[ImageIssue]:
    """Every image ranked by cleanlab's label quality score, worst first (ties: by name)."""
    if not images:
        return []
    from cleanlab.object_detection.rank import (
        compute_badloc_box_scores,
        compute_overlooked_box_scores,
        compute_swap_box_scores,
        pool_box_scores_per_image,
    )

    labels, predictions, ordered, _ = _cleanlab_inputs(images, min_conf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab warns on images without labels or predictions
        overlooked = compute_overlooked_box_scores(labels=labels, predictions=predictions,
                                                   high_probability_threshold=CONFIDENT)
        swapped = compute_swap_box_scores(labels=labels, predictions=predictions, high_probability_threshold=CONFIDENT)
        badloc = compute_badloc_box_scores(labels=labels, predictions=predictions)
        # cleanlab's image score (get_label_quality_scores' aggregation): the weighted geometric mean
        # of the three softmin-pooled sub-scores, here with CONFIDENT as its high-probability threshold
        pooled = [pool_box_scores_per_image(sub) for sub in (overlooked, swapped, badloc)]
    scores = np.exp(sum(np.log(TINY + p) for p in pooled) / 3)
    ranked = []
    for i, im in enumerate(images):
        preds, truths = ordered[i], im.truths
        ious = iou_matrix(truths[:, 1:5], preds[:, 2:6]) if len(truths) and len(preds) else np.zeros((len(truths), 0))
        issues: list[BoxIssue] = []
        for k, score in enumerate(np.asarray(overlooked[i], dtype=float)):
            if np.isfinite(score) and score < BOX_SCORE:
                issues.append(BoxIssue(KINDS["overlooked"], float(score), None, _box(preds[k], True)))
        for kind, sub in (("swap", swapped[i]), ("badloc", badloc[i])):
            for j, score in enumerate(np.asarray(sub, dtype=float)):
                if not (np.isfinite(score) and score < BOX_SCORE):
                    continue
                other = (preds[:, 0] != truths[j, 0]) if kind == "swap" else (preds[:, 0] == truths[j, 0])
                overlap = np.where(other, ious[j], -1.0) if ious.shape[1] else np.zeros(0)
                best = int(np.argmax(overlap)) if overlap.size and overlap.max() > 0 else None
                issues.append(BoxIssue(KINDS[kind], float(score), _box(truths[j], False),
                                       _box(preds[best], True) if best is not None else None))
        issues.sort(key=lambda issue: issue.score)
        ranked.append((float(scores[i]), im, issues))
    ranked.sort(key=lambda item: (item[0], item[1].name))
    return [ImageIssue(n, Path(im.name).stem, im.name, score, issues[0].kind if issues else None, issues)
            for n, (score, im, issues) in enumerate(ranked, start=1)]


def trained_hashes(model: ModelRef) -> set[str] | None:
    """The image contents of the train split the model's run trained on (None: unknown)."""
    if not model.dataset or not Path(model.dataset).is_dir():
        return None
    formed = DatasetDir(Path(model.dataset))
    known = manifest_hashes(formed)
    if known:
        return {sha for path, sha in known.items() if path.startswith("train/")}
    from azaion_training.analysis.predictions import split_images

    return set(split_images(formed, "train").sha256)


def find_label_errors(settings: Settings, model: str | ModelRef | None = None, dataset: str | None = None,
                      split: str = "test", limit: int = DEFAULT_LIMIT, progress: bool = True,
                      write: bool = True) -> LabelErrorReport:
    """Predict what is not cached, rank the split's out-of-sample images, write the top `limit`
    as JSONL under <root>/analysis/label-errors/."""
    ref = model if isinstance(model, ModelRef) else resolve_model(settings, model)
    formed = resolve_split(settings, dataset, split, ref)
    trained = trained_hashes(ref)
    if trained is None and split == "train":
        raise InputError(f"{ref.label}: which images it trained on is unknown, so no train image can be judged out "
                         "of sample; use --split valid or test, or name the model's run")
    predict_dataset(settings, ref, formed, split, progress)
    loaded = load_split(settings, ref, formed, split)
    unseen = [im for im in loaded.images if trained is None or im.sha256 not in trained]
    ranked = rank_images(unseen)[:limit]
    report = LabelErrorReport(ref, formed.name, split, len(loaded.images), len(unseen),
                              len(loaded.images) - len(unseen), ranked)
    if write:
        path = Layout(settings.paths).label_errors_file(formed.name, split, ref.sha256)
        atomic_write_text(path, "".join(json.dumps(issue.to_dict(), ensure_ascii=False) + "\n" for issue in ranked))
        report.path = path
    log(logger, logging.INFO, "label errors ranked", model=ref.label, dataset=formed.name, split=split,
        judged=report.judged, skipped_trained=report.skipped_trained, listed=len(ranked))
    return report
