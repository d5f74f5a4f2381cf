"""`azaion evaluate`: a candidate run and a baseline (another run, or production on a target)
through the same evaluation on the same split: Ultralytics' validator at the export image size
(report/evaluate.py) for mAP50, mAP50-95, precision, recall and per-class AP, plus the ms/image
of each run's ONNX through our inference pipeline on this machine (docs/model-registry.md).
"""

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from azaion_training.errors import InputError
from azaion_training.layout import DatasetDir, Layout
from azaion_training.settings import InferenceSettings, Settings
from azaion_training.training.runs import RunRecord

METRICS = ("mAP50", "mAP50-95", "precision", "recall")
TIMED_IMAGES = 20  # images timed through the ONNX (after one warm-up)


@dataclass
class ModelScore:
    run: str
    metrics: dict[str, float]
    per_class: dict[str, float] = field(default_factory=dict)  # class name -> AP50
    ms_per_image: float | None = None  # None: the run has no ONNX yet


@dataclass
class Comparison:
    dataset: str
    split: str
    images: int
    imgsz: int
    candidate: ModelScore
    baseline: ModelScore | None

    def delta(self, key: str) -> float | None:
        if self.baseline is None:
            return None
        return round(self.candidate.metrics[key] - self.baseline.metrics[key], 4)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "split": self.split, "images": self.images, "imgsz": self.imgsz,
                "candidate": asdict(self.candidate), "baseline": asdict(self.baseline) if self.baseline else None,
                "delta": {key: self.delta(key) for key in METRICS} if self.baseline else None}


def evaluation_data(layout: Layout, candidate: RunRecord, dataset: str | None, split: str) -> Path:
    """data.yaml of the named dataset, else of the candidate's; the split must have images."""
    from azaion_training.dataset.form import resolve_dataset

    if dataset is not None:
        directory = resolve_dataset(dataset, layout)
    elif candidate.dataset and Path(candidate.dataset).is_dir():
        directory = Path(candidate.dataset)
    else:
        raise InputError(f"run {candidate.run} records no existing dataset ({candidate.dataset}): "
                         "name one with --dataset")
    formed = DatasetDir(directory)
    if not formed.is_complete():
        raise InputError(f"dataset {directory} has no data.yaml: form it with `azaion dataset form`")
    if not formed.images(split):
        raise InputError(f"dataset {directory.name} has no images in its {split!r} split: evaluate on another "
                         "split (--split valid) or a dataset with that split")
    return formed.data_yaml


def onnx_ms_per_image(onnx: Path, images: list[Path], inference: InferenceSettings) -> float:
    """Mean wall time of one image through our ONNX pipeline as `azaion infer` runs it (decode
    excluded), batch 1."""
    import cv2

    from azaion_training.inference.engines import OnnxEngine
    from azaion_training.inference.pipeline import Detector

    frames = [cv2.imread(str(p)) for p in images[:TIMED_IMAGES + 1]]
    detector = Detector(OnnxEngine(onnx.read_bytes(), threads=inference.threads, batch_size=1, workers=1),
                        conf=inference.conf, iou=inference.iou)
    detector.detect(frames[:1])  # warm-up: session allocation, first-run kernels
    timed = frames[1:] or frames
    started = time.perf_counter()
    for frame in timed:
        detector.detect([frame])
    return round((time.perf_counter() - started) * 1000 / len(timed), 2)


def score_run(record: RunRecord, data_yaml: Path, split: str, imgsz: int, workdir: Path,
              inference: InferenceSettings) -> ModelScore:
    from azaion_training.report.evaluate import evaluate

    if not record.best_weights.is_file():
        raise InputError(f"run {record.run} has no {record.best_weights}: only a finished run can be evaluated")
    evaluation = evaluate(record.best_weights, data_yaml, split, imgsz, workdir / record.run)
    metrics = {key: round(value, 4) for key, value in evaluation.metrics().items() if key in METRICS}
    per_class = {str(row["Class"]): round(float(row.get("mAP50", 0.0)), 4) for row in evaluation.per_class
                 if "Class" in row}
    ms = onnx_ms_per_image(record.onnx_path, DatasetDir(data_yaml.parent).images(split), inference) \
        if record.onnx_path.is_file() else None
    return ModelScore(record.run, metrics, per_class, ms)


def compare(settings: Settings, candidate: RunRecord, baseline: RunRecord | None, dataset: str | None = None,
            split: str = "test") -> Comparison:
    """Candidate and baseline through the same evaluation, at EXPORT_ONNX_IMGSZ (what is deployed)."""
    layout = Layout(settings.paths)
    data_yaml = evaluation_data(layout, candidate, dataset, split)
    imgsz = settings.export.onnx_imgsz
    layout.models.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tmp-evaluate-", dir=layout.models) as work:
        scores = [score_run(r, data_yaml, split, imgsz, Path(work), settings.inference) if r else None
                  for r in (candidate, baseline)]
    images = len(DatasetDir(data_yaml.parent).images(split))
    return Comparison(str(data_yaml.parent), split, images, imgsz, scores[0], scores[1])
