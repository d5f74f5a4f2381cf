"""`azaion export`: the current model to ONNX (dynamic batch, class names and imgsz in its
metadata), TensorRT (one engine per GPU model), RKNN and CoreML, and the parity check that
proves the exported ONNX predicts what the PyTorch model predicts.

Every format is exported in a private temp dir under models/ and moved into place whole;
an ONNX that fails the parity check never replaces `models/azaion.onnx`.
"""

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from azaion_training.errors import InputError, OperationFailed
from azaion_training.fsutil import durable_move
from azaion_training.inference.nms import box_iou
from azaion_training.labels import LabelError, label_path_for, read_label_file
from azaion_training.layout import DatasetDir, Layout
from azaion_training.logs import get_logger, log
from azaion_training.settings import Settings

logger = get_logger("export")

FORMATS = ("onnx", "engine", "rknn", "coreml")
PARITY_TOLERANCE = 0.01  # absolute mAP50 by which the ONNX may differ from PyTorch, either way
PARITY_CONF = 0.001  # mAP needs the low-confidence tail too (as Ultralytics' val)
PARITY_IOU = 0.7  # NMS IoU, Ultralytics' default, for both sides
RKNN_PLATFORM = "rk3588"  # OrangePi 5


@dataclass
class ParityReport:
    images: int
    pytorch_map50: float
    onnx_map50: float
    tolerance: float = PARITY_TOLERANCE

    @property
    def passed(self) -> bool:
        """Within the tolerance either way: an ONNX scoring far higher predicts something else too."""
        return round(abs(self.onnx_map50 - self.pytorch_map50), 4) <= self.tolerance


@dataclass
class ExportResult:
    files: dict[str, Path] = field(default_factory=dict)
    parity: ParityReport | None = None


# ---------------------------------------------------------------------------------------- mAP50


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope, all-point interpolation (VOC 2010+)."""
    r = np.concatenate(([0.0], recall, [1.0]))
    p = np.concatenate(([1.0], precision, [0.0]))
    p = np.flip(np.maximum.accumulate(np.flip(p)))
    changes = np.where(r[1:] != r[:-1])[0]
    return float(np.sum((r[changes + 1] - r[changes]) * p[changes + 1]))


def map50(predictions: list[list[tuple]], truths: list[list[tuple]]) -> float | None:
    """mAP at IoU 0.5 over the classes present in the ground truth (None when there is none).

    predictions[i]: (cls, conf, x1, y1, x2, y2) of image i; truths[i]: (cls, x1, y1, x2, y2).
    Per class, predictions are taken best first and each matches the unmatched truth of its
    image with the highest IoU >= 0.5."""
    classes = sorted({int(t[0]) for image in truths for t in image})
    if not classes:
        return None
    aps = []
    for cls in classes:
        gt = {i: np.array([t[1:5] for t in image if int(t[0]) == cls], dtype=np.float64).reshape(-1, 4)
              for i, image in enumerate(truths)}
        used = {i: np.zeros(len(boxes), dtype=bool) for i, boxes in gt.items()}
        preds = sorted(((p[1], i, p[2:6]) for i, image in enumerate(predictions) for p in image if int(p[0]) == cls),
                       key=lambda item: -item[0])
        hits = np.zeros(len(preds))
        for k, (_, i, box) in enumerate(preds):
            if not len(gt[i]):
                continue
            ious = np.where(used[i], -1.0, box_iou(np.asarray(box, dtype=np.float64), gt[i]))
            best = int(np.argmax(ious))
            if ious[best] >= 0.5:
                used[i][best] = True
                hits[k] = 1
        total = sum(len(boxes) for boxes in gt.values())
        tp = np.cumsum(hits)
        recall = tp / total
        precision = tp / np.arange(1, len(preds) + 1)
        aps.append(average_precision(recall, precision) if len(preds) else 0.0)
    return float(np.mean(aps))


# ---------------------------------------------------------------------------------------- parity


def ground_truth(image: Path, width: int, height: int) -> list[tuple]:
    """The image's YOLO label as pixel boxes; a missing label file means no objects."""
    label = label_path_for(image)
    if not label.is_file():
        return []
    try:
        boxes = read_label_file(label)
    except LabelError as exc:
        raise InputError(f"{label}: {exc}; fix or remove it (the parity check reads the valid split)") from None
    return [(b.cls, (b.cx - b.w / 2) * width, (b.cy - b.h / 2) * height,
             (b.cx + b.w / 2) * width, (b.cy + b.h / 2) * height) for b in boxes]


def _pytorch_predictions(weights: Path, images: list[Path], imgsz: int) -> list[list[tuple]]:
    """One image per call: Ultralytics letterboxes a single image to its minimal rectangle (as our
    pipeline does for a dynamic-size ONNX) but a mixed-shape batch to the full square."""
    from ultralytics import YOLO

    model = YOLO(str(weights))
    found = []
    for image in images:
        boxes = model.predict(str(image), imgsz=imgsz, conf=PARITY_CONF, iou=PARITY_IOU, agnostic_nms=True,
                              verbose=False)[0].boxes
        found.append([(int(c), float(s), *map(float, xyxy)) for c, s, xyxy in
                      zip(boxes.cls.tolist(), boxes.conf.tolist(), boxes.xyxy.tolist(), strict=True)])
    return found


def _onnx_predictions(onnx: Path, frames: list[np.ndarray], batch: int) -> list[list[tuple]]:
    from azaion_training.inference.engines import OnnxEngine
    from azaion_training.inference.pipeline import Detector

    detector = Detector(OnnxEngine(onnx.read_bytes(), batch_size=batch), conf=PARITY_CONF, iou=PARITY_IOU)
    return [[(d.cls, d.conf, d.x1, d.y1, d.x2, d.y2) for d in found] for found in detector.detect(frames)]


def parity_check(weights: Path, onnx: Path, images: list[Path], imgsz: int, batch: int = 8) -> ParityReport:
    """mAP50 of the PyTorch model (Ultralytics predict) and of the ONNX (our inference pipeline)
    on the same labelled images."""
    import cv2

    if not images:
        raise InputError("the parity check has no images: the dataset's valid split is empty; "
                         "name a dataset with --dataset, or skip the check with --no-verify")
    frames = [cv2.imread(str(p)) for p in images]
    unreadable = [str(p) for p, frame in zip(images, frames, strict=True) if frame is None]
    if unreadable:
        raise InputError(f"unreadable images in the parity set: {', '.join(unreadable[:5])}")
    truths = [ground_truth(p, f.shape[1], f.shape[0]) for p, f in zip(images, frames, strict=True)]
    reference = map50(_pytorch_predictions(weights, images, imgsz), truths)
    if reference is None:
        raise InputError(f"the parity images in {images[0].parent} have no labelled objects, so mAP50 is "
                         "undefined; use a dataset with labels, or skip the check with --no-verify")
    exported = map50(_onnx_predictions(onnx, frames, batch), truths)
    report = ParityReport(len(images), round(reference, 4), round(exported or 0.0, 4))
    log(logger, logging.INFO, "parity check", images=report.images, pytorch_map50=report.pytorch_map50,
        onnx_map50=report.onnx_map50, passed=report.passed)
    return report


def require_parity(report: ParityReport, note: str = "") -> None:
    if not report.passed:
        direction = "below" if report.onnx_map50 < report.pytorch_map50 else "above"
        raise OperationFailed(f"parity check failed: ONNX mAP50 {report.onnx_map50:.4f} is more than "
                              f"{report.tolerance} {direction} PyTorch mAP50 {report.pytorch_map50:.4f} "
                              f"on {report.images} images: the ONNX does not predict what the model predicts{note}")


# ---------------------------------------------------------------------------------------- export


def check_toolchains(formats: list[str]) -> None:
    """Refuse unknown formats and missing toolchains before any work is done."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise InputError(f"unknown export format(s) {unknown or formats}: choose from {', '.join(FORMATS)}")
    if "engine" in formats:
        import torch

        if not torch.cuda.is_available():
            raise InputError("TensorRT export needs an NVIDIA GPU and none is visible: build the engine on the "
                             "machine (GPU model) that will run it, or export only onnx")
        _require_module("tensorrt", "TensorRT export", "pip install tensorrt (matching the CUDA of torch)")
    if "rknn" in formats:
        _require_module("rknn.api", "RKNN export", "pip install '.[rknn]' (rknn-toolkit2, Linux x86_64/aarch64)")
    if "coreml" in formats:
        _require_module("coremltools", "CoreML export", "pip install '.[coreml]'")


def _require_module(module: str, what: str, install: str) -> None:
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise InputError(f"{what} needs the {module.split('.')[0]} toolchain, which is not installed: {install}")


def _export_one(weights: Path, fmt: str, imgsz: int, max_batch: int) -> Path:
    """Ultralytics export of `weights` (already in a private temp dir) to one format."""
    from ultralytics import YOLO

    model = YOLO(str(weights))
    if fmt == "onnx":
        return Path(model.export(format="onnx", imgsz=imgsz, dynamic=True, batch=max_batch, device="cpu"))
    if fmt == "engine":
        return Path(model.export(format="engine", imgsz=imgsz, dynamic=True, batch=max_batch, half=True, device=0))
    if fmt == "rknn":
        return Path(model.export(format="rknn", imgsz=imgsz, name=RKNN_PLATFORM))
    return Path(model.export(format="coreml", imgsz=imgsz, batch=1))


def _target_name(layout: Layout, fmt: str, produced: Path) -> Path:
    if fmt == "onnx":
        return layout.current_onnx
    if fmt == "engine":
        from azaion_training.inference.engines import engine_filename

        return layout.models / engine_filename(0)
    return layout.models / produced.name  # azaion_rknn_model/, azaion.mlpackage


def _install(produced: Path, target: Path) -> None:
    if produced.is_dir():  # RKNN and CoreML produce directories: swap whole
        if target.exists():
            shutil.rmtree(target)
        produced.rename(target)
    else:
        durable_move(produced, target)


def parity_dataset(settings: Settings, dataset: str | None) -> Path:
    """The dataset whose valid split the parity check uses: the named one, else the dataset of
    the latest training run, else the newest dataset."""
    from azaion_training.dataset.form import resolve_dataset
    from azaion_training.training.runs import latest_run

    layout = Layout(settings.paths)
    if dataset is None:
        run = latest_run(layout)
        if run is not None and run.dataset and Path(run.dataset).is_dir():
            return Path(run.dataset)
    return resolve_dataset(dataset, layout)


def parity_images(settings: Settings, dataset: str | None, limit: int) -> list[Path]:
    """The first `limit` images of the parity dataset's valid split."""
    return DatasetDir(parity_dataset(settings, dataset)).images("valid")[:limit]


def export(settings: Settings, weights: Path | None = None, formats: list[str] | None = None,
           imgsz: int | None = None, verify: bool = True, dataset: str | None = None,
           verify_images: int = 200, onnx_out: Path | None = None) -> ExportResult:
    """`onnx_out`: where the ONNX goes instead of models/azaion.onnx (a run's own export)."""
    layout = Layout(settings.paths)
    formats = formats or ["onnx"]
    check_toolchains(formats)
    weights = Path(weights or layout.current_pt)
    if not weights.is_file():
        raise InputError(f"weights {weights} not found: train a model first (`azaion train`) or pass --weights")
    imgsz = imgsz or settings.export.onnx_imgsz
    max_batch = settings.export.max_batch
    images = parity_images(settings, dataset, verify_images) if verify and "onnx" in formats else []
    result = ExportResult()
    layout.models.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tmp-export-", dir=layout.models) as work:
        staged = Path(work) / "azaion.pt"  # exports are named after the weights: azaion.onnx, ...
        shutil.copyfile(weights, staged)
        for fmt in formats:
            log(logger, logging.INFO, "exporting", format=fmt, weights=str(weights), imgsz=imgsz)
            produced = _export_one(staged, fmt, imgsz, max_batch)
            target = onnx_out if fmt == "onnx" and onnx_out else _target_name(layout, fmt, produced)
            if fmt == "onnx" and verify:
                result.parity = parity_check(weights, produced, images, imgsz, max_batch)
                require_parity(result.parity, f"; {target} was left unchanged")
            _install(produced, target)
            result.files[fmt] = target
            log(logger, logging.INFO, "exported", format=fmt, file=str(target))
    return result


def verify_onnx(settings: Settings, onnx: Path, weights: Path | None = None, dataset: str | None = None,
                imgsz: int | None = None, verify_images: int = 200) -> ParityReport:
    """The parity check alone, for an ONNX file that already exists."""
    layout = Layout(settings.paths)
    weights = Path(weights or layout.current_pt)
    for path, what in ((onnx, "ONNX model"), (weights, "weights")):
        if not Path(path).is_file():
            raise InputError(f"{what} {path} not found")
    images = parity_images(settings, dataset, verify_images)
    report = parity_check(weights, Path(onnx), images, imgsz or settings.export.onnx_imgsz,
                          settings.export.max_batch)
    require_parity(report)
    return report
