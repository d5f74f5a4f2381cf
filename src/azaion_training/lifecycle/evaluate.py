"""`azaion evaluate` and the promotion gate's evaluation: the ONNX files themselves (the exact
bytes that are or would be published) through the project's own inference pipeline, the one
`azaion infer` runs (same letterbox, same overlap cleanup at INFERENCE_IOU), on the same
labelled images, scored by one metrics module (azaion_training/metrics.py). Each ONNX runs at
the size it was exported at; a run's ONNX is exported at the size the run trained at unless
`--imgsz` says otherwise (docs/model-registry.md, "How a model is judged").

mAP needs the whole precision-recall curve, so detections are kept down to EVAL_CONF (as
Ultralytics' validator does); precision and recall are reported at INFERENCE_CONF, the
threshold the field uses.
"""

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from azaion_training.errors import InputError
from azaion_training.layout import DatasetDir, Layout
from azaion_training.metrics import Evaluation, evaluate_detections, paired_bootstrap
from azaion_training.settings import Settings
from azaion_training.training.runs import RunRecord

METRICS = ("mAP50", "mAP50-95", "precision", "recall")
ENGINE = "ONNX"  # what every figure here is measured on (never the PyTorch weights)
EVAL_CONF = 0.001
TIMED_IMAGES = 20  # images timed through the ONNX (after one warm-up)
SAMPLE_IMAGES = 16  # the post-publish check re-runs these first images of the split
CHUNK = 32  # images decoded at once


@dataclass
class ModelScore:
    run: str
    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> {"ap50", "instances"}
    ms_per_image: float | None = None
    onnx: str | None = None
    onnx_sha256: str | None = None
    imgsz: int | None = None
    engine: str = ENGINE
    sample: dict[str, Any] | None = None  # {"images", "mAP50"} on the first SAMPLE_IMAGES images

    def ap50(self, name: str) -> float | None:
        row = self.per_class.get(name)
        return row["ap50"] if row else None


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


def evaluation_dir(layout: Layout, candidate: RunRecord, dataset: str | None, split: str) -> DatasetDir:
    """The named dataset, else the candidate's; the split must have images."""
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
    return formed


def _detector(onnx_bytes: bytes, settings: Settings, conf: float, batch: int):
    from azaion_training.inference.engines import OnnxEngine
    from azaion_training.inference.pipeline import Detector

    engine = OnnxEngine(onnx_bytes, threads=settings.inference.threads, batch_size=batch, workers=1)
    return Detector(engine, conf=conf, iou=settings.inference.iou)


def detect_labelled(onnx_bytes: bytes, images: list[Path], settings: Settings,
                    conf: float = EVAL_CONF) -> tuple[list[list[tuple]], list[list[tuple]]]:
    """Per image: the ONNX's detections (cls, conf, x1, y1, x2, y2) and its labels (cls, x1, y1,
    x2, y2), both in pixels."""
    return detect_labelled_with(_detector(onnx_bytes, settings, conf, settings.export.max_batch), images)


def detect_labelled_with(detector, images: list[Path]) -> tuple[list[list[tuple]], list[list[tuple]]]:
    """`detect_labelled` for any engine: a Detector (inference/pipeline.py) over an ONNX Runtime,
    OpenVINO, RKNN or other engine, the same letterbox and overlap cleanup for all."""
    import cv2

    from azaion_training.training.export import ground_truth

    predictions, truths = [], []
    for start in range(0, len(images), CHUNK):
        chunk = images[start:start + CHUNK]
        frames = [cv2.imread(str(p)) for p in chunk]
        unreadable = [str(p) for p, f in zip(chunk, frames, strict=True) if f is None]
        if unreadable:
            raise InputError(f"unreadable images in the evaluation set: {', '.join(unreadable[:5])}; "
                             "re-form the dataset (`azaion dataset form`)")
        for found in detector.detect(frames):
            predictions.append([(d.cls, d.conf, d.x1, d.y1, d.x2, d.y2) for d in found])
        truths.extend(ground_truth(p, f.shape[1], f.shape[0]) for p, f in zip(chunk, frames, strict=True))
    return predictions, truths


def onnx_ms_per_image(onnx_bytes: bytes, images: list[Path], settings: Settings) -> float:
    """Mean wall time of one image through the pipeline as `azaion infer` runs it (decode
    excluded), batch 1."""
    import cv2

    frames = [cv2.imread(str(p)) for p in images[:TIMED_IMAGES + 1]]
    detector = _detector(onnx_bytes, settings, settings.inference.conf, 1)
    detector.detect(frames[:1])  # warm-up: session allocation, first-run kernels
    timed = frames[1:] or frames
    started = time.perf_counter()
    for frame in timed:
        detector.detect([frame])
    return round((time.perf_counter() - started) * 1000 / len(timed), 2)


def score_onnx(run: str, onnx: Path, images: list[Path], settings: Settings,
               timed: bool = True) -> tuple[ModelScore, Evaluation]:
    """One ONNX file on labelled images: metrics, per-class AP50 with instance counts, timing."""
    from azaion_training.classes import model_class_names
    from azaion_training.fsutil import file_sha256
    from azaion_training.training.export import onnx_imgsz

    data = onnx.read_bytes()
    predictions, truths = detect_labelled(data, images, settings)
    evaluation = evaluate_detections(predictions, truths)
    names = model_class_names(Layout(settings.paths).classes_json)
    per_class = {names.get(c, f"Class-{c}"): row for c, row in evaluation.per_class().items()}
    sample = evaluate_detections(predictions[:SAMPLE_IMAGES], truths[:SAMPLE_IMAGES]).map50
    score = ModelScore(run, evaluation.summary(settings.inference.conf), per_class,
                       onnx_ms_per_image(data, images, settings) if timed else None, str(onnx), file_sha256(onnx),
                       onnx_imgsz(onnx), ENGINE,
                       {"images": min(SAMPLE_IMAGES, len(images)), "mAP50": round(sample or 0.0, 4)})
    return score, evaluation


def engine_detector(engine, settings: Settings, conf: float = EVAL_CONF):
    """The evaluation's Detector over any engine (overlap cleanup at INFERENCE_IOU, as the gate)."""
    from azaion_training.inference.pipeline import Detector

    return Detector(engine, conf=conf, iou=settings.inference.iou)


def score_detections(predictions: list[list[tuple]], truths: list[list[tuple]],
                     settings: Settings) -> tuple[dict[str, float], dict[str, dict[str, float]], Evaluation]:
    """Metrics and per-class AP50 (by class name) of detections against labels: what `score_onnx`
    reports, for detections of any engine."""
    from azaion_training.classes import model_class_names

    evaluation = evaluate_detections(predictions, truths)
    names = model_class_names(Layout(settings.paths).classes_json)
    per_class = {names.get(c, f"Class-{c}"): row for c, row in evaluation.per_class().items()}
    return evaluation.summary(settings.inference.conf), per_class, evaluation


def ms_per_frame(detector, frames: list) -> float:
    """Mean wall time of one decoded frame through `detector` (letterbox, engine, cleanup), batch 1,
    after one warm-up frame of each shape."""
    for frame in {f.shape: f for f in frames}.values():
        detector.detect([frame])
    started = time.perf_counter()
    for frame in frames:
        detector.detect([frame])
    return (time.perf_counter() - started) * 1000 / len(frames)


def sample_map50(onnx_bytes: bytes, images: list[Path], settings: Settings) -> float:
    """mAP50 of ONNX bytes on the first SAMPLE_IMAGES images (the post-publish check)."""
    predictions, truths = detect_labelled(onnx_bytes, images[:SAMPLE_IMAGES], settings)
    return round(evaluate_detections(predictions, truths).map50 or 0.0, 4)


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
