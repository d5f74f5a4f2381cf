"""Scoring an inference engine on labelled images: the detections of the project's own pipeline
(the Detector `azaion infer` runs: same letterbox, same overlap cleanup at INFERENCE_IOU) against
the labels, through one metrics module (metrics.py). The promotion gate (lifecycle/evaluate.py),
the quantised-export gate (training/quantize.py) and error analysis (analysis/) all score here,
so a figure means the same wherever it appears (docs/model-registry.md, "How a model is judged").

mAP needs the whole precision-recall curve, so detections are kept down to EVAL_CONF (as
Ultralytics' validator does); precision and recall are reported at INFERENCE_CONF, the
threshold the field uses.
"""

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2  # the pipeline itself needs it: no lighter path exists here

from azaion_training.classes import model_class_names
from azaion_training.dataset.form import resolve_dataset
from azaion_training.errors import InputError
from azaion_training.fsutil import file_sha256
from azaion_training.inference.engines import OnnxEngine, onnx_imgsz
from azaion_training.inference.pipeline import Detector
from azaion_training.labels import ground_truth
from azaion_training.layout import DatasetDir, Layout
from azaion_training.metrics import Evaluation, evaluate_detections
from azaion_training.settings import Settings

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


def _detector(onnx_bytes: bytes, settings: Settings, conf: float, batch: int) -> Detector:
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
    data = onnx.read_bytes()
    predictions, truths = detect_labelled(data, images, settings)
    metrics, per_class, evaluation = score_detections(predictions, truths, settings)
    sample = evaluate_detections(predictions[:SAMPLE_IMAGES], truths[:SAMPLE_IMAGES]).map50
    score = ModelScore(run, metrics, per_class,
                       onnx_ms_per_image(data, images, settings) if timed else None, str(onnx), file_sha256(onnx),
                       onnx_imgsz(onnx), ENGINE,
                       {"images": min(SAMPLE_IMAGES, len(images)), "mAP50": round(sample or 0.0, 4)})
    return score, evaluation


def engine_detector(engine, settings: Settings, conf: float = EVAL_CONF) -> Detector:
    """The evaluation's Detector over any engine (overlap cleanup at INFERENCE_IOU, as the gate)."""
    return Detector(engine, conf=conf, iou=settings.inference.iou)


def score_detections(predictions: list[list[tuple]], truths: list[list[tuple]],
                     settings: Settings) -> tuple[dict[str, float], dict[str, dict[str, float]], Evaluation]:
    """Metrics and per-class AP50 (by class name) of detections against labels: what `score_onnx`
    reports, for detections of any engine."""
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


class HasDataset(Protocol):
    run: str  # a training run (training/runs.py RunRecord): its name and the dataset it trained on
    dataset: str | None


def evaluation_dir(layout: Layout, candidate: HasDataset, dataset: str | None, split: str) -> DatasetDir:
    """The named dataset, else the candidate's; the split must have images."""
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
