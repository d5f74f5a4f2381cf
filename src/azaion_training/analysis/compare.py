"""Two models on the same dataset split (docs/error-analysis.md, "Comparing two models"): per
class AP50 and outcome counts side by side, the paired bootstrap of the mAP50 difference (the
gate's, metrics.paired_bootstrap) and the images whose error score went up or down.
Differences are B - A."""

from dataclasses import dataclass
from typing import Any

from azaion_training.analysis.outcomes import Analysis, ImageOutcomes, OutcomeCounts, analyse
from azaion_training.analysis.predictions import resolve_model, resolve_split
from azaion_training.errors import InputError
from azaion_training.metrics import Interval, paired_bootstrap
from azaion_training.settings import Settings

TOP_IMAGES = 10
SCORE_EPSILON = 1e-9  # error scores closer than this are the same


@dataclass(frozen=True)
class ClassDelta:
    cls: int
    name: str
    instances: int
    ap50_a: float | None
    ap50_b: float | None
    counts_a: OutcomeCounts
    counts_b: OutcomeCounts

    @property
    def ap50_delta(self) -> float | None:
        if self.ap50_a is None or self.ap50_b is None:
            return None
        return self.ap50_b - self.ap50_a

    def to_dict(self) -> dict[str, Any]:
        return {"cls": self.cls, "name": self.name, "instances": self.instances,
                "ap50_a": _rounded(self.ap50_a), "ap50_b": _rounded(self.ap50_b),
                "ap50_delta": _rounded(self.ap50_delta),
                "counts_a": self.counts_a.to_dict(), "counts_b": self.counts_b.to_dict(),
                "counts_delta": (self.counts_b - self.counts_a).to_dict()}


@dataclass(frozen=True)
class ImageDelta:
    name: str
    score_a: float
    score_b: float
    counts_a: OutcomeCounts
    counts_b: OutcomeCounts

    @property
    def delta(self) -> float:
        return self.score_b - self.score_a

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "score_a": round(self.score_a, 4), "score_b": round(self.score_b, 4),
                "delta": round(self.delta, 4), "counts_a": self.counts_a.to_dict(),
                "counts_b": self.counts_b.to_dict()}


@dataclass
class ModelComparison:
    a: Analysis
    b: Analysis
    classes: list[ClassDelta]
    worse: list[ImageDelta]  # error score went up, most first
    better: list[ImageDelta]  # error score went down, most first
    unchanged: int  # images with the same error score
    interval: Interval  # paired bootstrap of mAP50(B) - mAP50(A)

    def where(self) -> str:
        """e.g. `test, 22 images, imgsz 320, ONNX` (`imgsz 320 vs 640` when the two differ)."""
        sizes = f"{self.a.imgsz}" if self.a.imgsz == self.b.imgsz else f"{self.a.imgsz} vs {self.b.imgsz}"
        return f"{self.a.split}, {len(self.a.images)} images, imgsz {sizes}, {self.a.engine}"

    def metric_deltas(self) -> dict[str, float | None]:
        pairs = {"mAP50": (self.a.map50, self.b.map50), "mAP50-95": (self.a.map50_95, self.b.map50_95),
                 "precision": (self.a.precision, self.b.precision), "recall": (self.a.recall, self.b.recall)}
        return {k: None if a is None or b is None else round(b - a, 4) for k, (a, b) in pairs.items()}

    def to_dict(self) -> dict[str, Any]:
        def side(analysis: Analysis) -> dict[str, Any]:
            data = analysis.to_dict(worst=0)
            return {k: data[k] for k in ("model", "metrics", "totals")}

        return {"dataset": self.a.dataset, "split": self.a.split, "images": len(self.a.images),
                "imgsz": {"a": self.a.imgsz, "b": self.b.imgsz}, "engine": self.a.engine, "where": self.where(),
                "conf": self.a.conf, "a": side(self.a), "b": side(self.b), "delta": self.metric_deltas(),
                "totals_delta": (self.b.totals - self.a.totals).to_dict(), "interval": self.interval.to_dict(),
                "classes": [c.to_dict() for c in self.classes], "worse": [i.to_dict() for i in self.worse],
                "better": [i.to_dict() for i in self.better], "unchanged": self.unchanged}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def compare_analyses(a: Analysis, b: Analysis, top: int = TOP_IMAGES, seed: int = 0) -> ModelComparison:
    """B against A; both must be of the same images (same dataset, split and files)."""
    if (a.dataset, a.split) != (b.dataset, b.split) or [i.sha256 for i in a.images] != [i.sha256 for i in b.images]:
        raise InputError(f"the two analyses are not of the same images ({a.dataset}/{a.split} vs "
                         f"{b.dataset}/{b.split}): compare two models on one dataset split")
    names = {c.cls: c.name for c in a.classes} | {c.cls: c.name for c in b.classes}
    classes = []
    for cls in sorted(names):
        mine, theirs = a.class_figures(cls), b.class_figures(cls)
        instances = (mine or theirs).instances
        classes.append(ClassDelta(cls, names[cls], instances, mine.ap50 if mine else None,
                                  theirs.ap50 if theirs else None, mine.counts if mine else OutcomeCounts(),
                                  theirs.counts if theirs else OutcomeCounts()))
    deltas = [_image_delta(x, y) for x, y in zip(a.images, b.images, strict=True)]
    worse = sorted((d for d in deltas if d.delta > SCORE_EPSILON), key=lambda d: (-d.delta, d.name))
    better = sorted((d for d in deltas if d.delta < -SCORE_EPSILON), key=lambda d: (d.delta, d.name))
    interval = paired_bootstrap(b.evaluation, a.evaluation, seed=seed)
    return ModelComparison(a, b, classes, worse[:top], better[:top], len(deltas) - len(worse) - len(better), interval)


def _image_delta(a: ImageOutcomes, b: ImageOutcomes) -> ImageDelta:
    return ImageDelta(a.name, a.error_score, b.error_score, a.counts, b.counts)


def compare_models(settings: Settings, model_a: str, model_b: str, dataset: str | None = None, split: str = "test",
                   conf: float | None = None, top: int = TOP_IMAGES, progress: bool = True) -> ModelComparison:
    """Analyse both models on the same split (default: the dataset B trained on) and compare."""
    ref_a, ref_b = resolve_model(settings, model_a), resolve_model(settings, model_b)
    formed = resolve_split(settings, dataset, split, ref_b)
    a, _ = analyse(settings, ref_a, str(formed.root), split, conf, progress)
    b, _ = analyse(settings, ref_b, str(formed.root), split, conf, progress)
    return compare_analyses(a, b, top)
