"""`azaion evaluate` and the promotion gate's evaluation: the ONNX files themselves (the exact
bytes that are or would be published) through the project's own inference pipeline, the one
`azaion infer` runs (same letterbox, same overlap cleanup at INFERENCE_IOU), on the same
labelled images, scored by one metrics module (azaion_training/metrics.py). Each ONNX runs at
the size it was exported at; a run's ONNX is exported at the size the run trained at unless
`--imgsz` says otherwise (docs/model-registry.md, "How a model is judged").

The scoring itself (detections, metrics, timing) is inference/scoring.py's: this module pairs a
candidate with a baseline on one split and says which guarded classes fell.
"""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from azaion_training.inference.scoring import ENGINE, ModelScore, evaluation_dir, score_onnx
from azaion_training.layout import Layout
from azaion_training.metrics import Evaluation, paired_bootstrap
from azaion_training.settings import Settings
from azaion_training.training.runs import RunRecord

METRICS = ("mAP50", "mAP50-95", "precision", "recall")
@dataclass
class Comparison:
    dataset: str
    split: str
    images: int
    imgsz: int  # the candidate ONNX's input size
    candidate: ModelScore
    baseline: ModelScore | None
    interval: dict[str, float] | None = None  # paired bootstrap of the mAP50 difference

    def delta(self, key: str) -> float | None:
        if self.baseline is None:
            return None
        return round(self.candidate.metrics[key] - self.baseline.metrics[key], 4)

    def where(self, score: ModelScore | None = None) -> str:
        """What a figure was measured on, e.g. `test, 22 images, imgsz 128, ONNX`."""
        imgsz = (score.imgsz if score else None) or self.imgsz
        return f"{self.split}, {self.images} images, imgsz {imgsz}, {ENGINE}"

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "split": self.split, "images": self.images, "imgsz": self.imgsz,
                "engine": ENGINE, "candidate": asdict(self.candidate),
                "baseline": asdict(self.baseline) if self.baseline else None,
                "delta": {key: self.delta(key) for key in METRICS} if self.baseline else None,
                "interval": self.interval}


def compare(settings: Settings, candidate: RunRecord, baseline: RunRecord | None, dataset: str | None = None,
            split: str = "test", imgsz: int | None = None, baseline_onnx: Path | None = None,
            seed: int = 0) -> tuple[Comparison, Evaluation, Evaluation | None]:
    """Candidate and baseline ONNX through the same pipeline on the same images. The candidate's
    ONNX is its export at `imgsz` (default: the size it trained at), exported once; the baseline's
    is `baseline_onnx` (production: the exact file that was published) or the baseline run's own
    export at its training size (at `imgsz` when given)."""
    from azaion_training.training.export import run_onnx

    layout = Layout(settings.paths)
    formed = evaluation_dir(layout, candidate, dataset, split)
    images = formed.images(split)
    candidate, entry = run_onnx(settings, candidate, imgsz)
    candidate_score, candidate_eval = score_onnx(candidate.run, Path(entry["path"]), images, settings)
    baseline_score = baseline_eval = interval = None
    if baseline is not None:
        if baseline_onnx is None:
            baseline, baseline_entry = run_onnx(settings, baseline, imgsz)
            baseline_onnx = Path(baseline_entry["path"])
        baseline_score, baseline_eval = score_onnx(baseline.run, baseline_onnx, images, settings)
        interval = paired_bootstrap(candidate_eval, baseline_eval, seed=seed).to_dict()
    comparison = Comparison(str(formed.root), split, len(images), int(entry["imgsz"]), candidate_score,
                            baseline_score, interval)
    return comparison, candidate_eval, baseline_eval


def class_drops(comparison: Comparison, min_instances: int, max_drop: float) -> list[dict[str, Any]]:
    """Guarded classes (at least `min_instances` labelled boxes in the split) whose AP50 fell by
    more than `max_drop` against the baseline."""
    if comparison.baseline is None:
        return []
    drops = []
    for name, row in comparison.candidate.per_class.items():
        before = comparison.baseline.ap50(name)
        if before is None or row["instances"] < min_instances:
            continue
        if before - row["ap50"] > max_drop + 1e-9:
            drops.append({"class": name, "instances": int(row["instances"]), "candidate_ap50": row["ap50"],
                          "production_ap50": before, "drop": round(before - row["ap50"], 4)})
    return sorted(drops, key=lambda d: -d["drop"])
