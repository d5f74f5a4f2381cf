"""`azaion export`: the current model to ONNX (dynamic batch, class names and imgsz in its
metadata), TensorRT (one engine per GPU model) and CoreML, and the parity check that
proves the exported ONNX predicts what the PyTorch model predicts. OpenVINO, INT8 ONNX and
RKNN are derived from a run's FP32 ONNX and judged against it (training/quantize.py).

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
from azaion_training.labels import ground_truth
from azaion_training.layout import DatasetDir, Layout
from azaion_training.logs import get_logger, log
from azaion_training.metrics import map50
from azaion_training.settings import Settings
from azaion_training.training.runs import RunRecord, export_key, latest_run, run_of_weights
from azaion_training.training.weights import load_weights_only

logger = get_logger("export")

FORMATS = ("onnx", "engine", "rknn", "coreml", "openvino", "onnx-int8")
# judged against the run's FP32 ONNX before they are kept (training/quantize.py, docs/edge.md)
EDGE_FORMATS = ("openvino", "onnx-int8", "rknn")
PARITY_TOLERANCE = 0.01  # absolute mAP50 by which the ONNX may differ from PyTorch, either way
# Below this on both sides the check proves nothing (e.g. a model exported at a size it never
# saw finds nothing either way): a failure, not a pass. EXPORT_PARITY_MIN_MAP50 sets it.
PARITY_FLOOR = 0.05
PARITY_CONF = 0.001  # mAP needs the low-confidence tail too (as Ultralytics' val)
PARITY_IOU = 0.7  # NMS IoU, Ultralytics' default, for both sides


@dataclass
class ParityReport:
    images: int
    pytorch_map50: float
    onnx_map50: float
    imgsz: int = 0
    tolerance: float = PARITY_TOLERANCE
    floor: float = PARITY_FLOOR

    @property
    def uninformative(self) -> bool:
        return max(self.pytorch_map50, self.onnx_map50) < self.floor

    @property
    def passed(self) -> bool:
        """Within the tolerance either way (an ONNX scoring far higher predicts something else too),
        and not both below the floor."""
        return round(abs(self.onnx_map50 - self.pytorch_map50), 4) <= self.tolerance and not self.uninformative

    def to_dict(self) -> dict:
        return {"images": self.images, "imgsz": self.imgsz, "pytorch_map50": self.pytorch_map50,
                "onnx_map50": self.onnx_map50, "tolerance": self.tolerance, "floor": self.floor,
                "passed": self.passed}


@dataclass
class ExportResult:
    files: dict[str, Path] = field(default_factory=dict)
    parity: ParityReport | None = None
    variants: list = field(default_factory=list)  # quantize.VariantReport of each edge format


# ---------------------------------------------------------------------------------------- parity


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


def parity_check(weights: Path, onnx: Path, images: list[Path], imgsz: int, batch: int = 8,
                 floor: float = PARITY_FLOOR) -> ParityReport:
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
    report = ParityReport(len(images), round(reference, 4), round(exported or 0.0, 4), imgsz, floor=floor)
    log(logger, logging.INFO, "parity check", images=report.images, imgsz=imgsz, pytorch_map50=report.pytorch_map50,
        onnx_map50=report.onnx_map50, passed=report.passed)
    return report


def require_parity(report: ParityReport, note: str = "") -> None:
    if report.uninformative:
        raise OperationFailed(f"parity check failed: PyTorch mAP50 {report.pytorch_map50:.4f} and ONNX mAP50 "
                              f"{report.onnx_map50:.4f} on {report.images} images at imgsz {report.imgsz} are both "
                              f"below {report.floor}, so the check proves nothing: export at the size the model "
                              f"trained at (the default for a run), or check on a dataset it can see{note}")
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


def _export_one(weights: Path, fmt: str, imgsz: int, max_batch: int, opset: int | None = None) -> Path:
    """Ultralytics export of `weights` (already in a private temp dir) to one format."""
    from ultralytics import YOLO

    model = YOLO(str(weights))
    if fmt == "onnx":
        return Path(model.export(format="onnx", imgsz=imgsz, dynamic=True, batch=max_batch, device="cpu",
                                 opset=opset))
    if fmt == "engine":
        return Path(model.export(format="engine", imgsz=imgsz, dynamic=True, batch=max_batch, half=True, device=0))
    return Path(model.export(format="coreml", imgsz=imgsz, batch=1))


def _target_name(layout: Layout, fmt: str, produced: Path, weights: Path, imgsz: int, opset: int | None) -> Path:
    if fmt == "onnx":
        run = run_of_weights(layout, weights)
        if run is not None:
            return run.export_file(imgsz, opset)
        return weights.with_name(f"{weights.stem}-{imgsz}.onnx")
    if fmt == "engine":
        from azaion_training.inference.engines import engine_filename

        return layout.models / engine_filename(0)
    return layout.models / produced.name  # azaion.mlpackage


def _install(produced: Path, target: Path) -> None:
    if produced.is_dir():  # CoreML produces a directory: swap whole
        if target.exists():
            shutil.rmtree(target)
        produced.rename(target)
    else:
        durable_move(produced, target)


def parity_dataset(settings: Settings, dataset: str | None, run: RunRecord | None = None) -> Path:
    """The dataset whose valid split the parity check uses: the named one, else the run's (the
    run of the weights, else the latest run), else the newest dataset."""
    from azaion_training.dataset.form import resolve_dataset

    layout = Layout(settings.paths)
    if dataset is None:
        run = run or latest_run(layout)
        if run is not None and run.dataset and Path(run.dataset).is_dir():
            return Path(run.dataset)
    return resolve_dataset(dataset, layout)


def parity_images(settings: Settings, dataset: str | None, limit: int, run: RunRecord | None = None) -> list[Path]:
    """The first `limit` images of the parity dataset's valid split."""
    return DatasetDir(parity_dataset(settings, dataset, run)).images("valid")[:limit]


def default_weights(layout: Layout) -> Path:
    """The best.pt of the latest finished run (there is no moving "current" model file)."""
    run = latest_run(layout, status="finished")
    if run is None or not run.best_weights.is_file():
        raise InputError(f"no finished training run in {layout.models}: train a model first (`azaion train`) "
                         "or pass --weights")
    return run.best_weights


def export_imgsz(settings: Settings, weights: Path, imgsz: int | None) -> int:
    """An explicit --imgsz, else the size the weights' run trained at, else EXPORT_ONNX_IMGSZ
    (weights from outside any run, whose training size is unknown)."""
    if imgsz:
        return imgsz
    run = run_of_weights(Layout(settings.paths), weights)
    trained = run.trained_imgsz if run else None
    return trained or settings.export.onnx_imgsz


def export(settings: Settings, weights: Path | None = None, formats: list[str] | None = None,
           imgsz: int | None = None, verify: bool = True, dataset: str | None = None,
           verify_images: int = 200, onnx_out: Path | None = None, opset: int | None = None,
           int8: bool = False, calibration_images: int | None = None, split: str = "test") -> ExportResult:
    """Export `weights` (default: the latest finished run's best.pt) at `imgsz` (default: the size
    its run trained at). A run's ONNX goes to <run>/export/azaion-<imgsz>-<opset>.onnx, other
    weights' beside them; `onnx_out` puts it elsewhere. Edge formats (openvino, onnx-int8, rknn;
    INT8 with `int8`) are derived from the run's FP32 ONNX and judged against it on `split`
    (training/quantize.py); a refused one raises OperationFailed after the others are done."""
    layout = Layout(settings.paths)
    formats = formats or ["onnx"]
    check_toolchains(formats)
    edge = [f for f in formats if f in EDGE_FORMATS]
    if int8 and not edge:
        raise InputError("--int8 applies to the openvino and rknn formats (onnx-int8 is INT8 already): "
                         "add one to --formats")
    if edge:
        from azaion_training.training.quantize import check_edge_toolchains

        check_edge_toolchains(settings, edge)
    weights = Path(weights) if weights else default_weights(layout)
    if not weights.is_file():
        raise InputError(f"weights {weights} not found: train a model first (`azaion train`) or pass --weights")
    imgsz = export_imgsz(settings, weights, imgsz)
    max_batch = settings.export.max_batch
    run = run_of_weights(layout, weights)
    if edge and run is None:
        raise InputError(f"{', '.join(edge)} exports are judged against the FP32 ONNX of a training run and "
                         f"recorded in its run.json; {weights} is no run's best.pt: pass the weights of a run "
                         "under models/ (or none, for the latest finished run)")
    formats = [f for f in formats if f not in EDGE_FORMATS]
    images = parity_images(settings, dataset, verify_images, run) if verify and "onnx" in formats else []
    result = ExportResult()
    if edge:
        from azaion_training.training.quantize import export_variants

        result.variants = export_variants(settings, run, edge, int8, imgsz, opset, dataset, split,
                                          calibration_images)
        result.files.update({r.key: Path(r.path) for r in result.variants if r.path})
        if not formats:
            return result
    layout.models.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tmp-export-", dir=layout.models) as work:
        staged = Path(work) / "azaion.pt"  # exports are named after the weights: azaion.onnx, ...
        shutil.copyfile(weights, staged)
        # weights may come from outside (--weights): checked weights-only on the private copy,
        # which is the file everything below loads
        load_weights_only(staged, f"--weights {weights}")
        for fmt in formats:
            log(logger, logging.INFO, "exporting", format=fmt, weights=str(weights), imgsz=imgsz)
            produced = _export_one(staged, fmt, imgsz, max_batch, opset)
            target = onnx_out if fmt == "onnx" and onnx_out else \
                _target_name(layout, fmt, produced, weights, imgsz, opset)
            if fmt == "onnx" and verify:
                result.parity = parity_check(staged, produced, images, imgsz, max_batch,
                                             settings.export.parity_min_map50)
                require_parity(result.parity, f"; {target} was left unchanged")
            target.parent.mkdir(parents=True, exist_ok=True)
            _install(produced, target)
            result.files[fmt] = target
            log(logger, logging.INFO, "exported", format=fmt, file=str(target))
    return result


def onnx_opset(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def run_onnx(settings: Settings, record: RunRecord, imgsz: int | None = None,
             opset: int | None = None) -> tuple[RunRecord, dict]:
    """The run's parity-checked ONNX for (imgsz, opset), exported once: an existing file is reused
    only when its key matches and its bytes still hash to what was recorded. imgsz defaults to the
    size the run trained at. Returns the record (saved) and the export entry {"path", "sha256",
    "imgsz", "opset", "parity"}."""
    from azaion_training.fsutil import file_sha256

    imgsz = imgsz or record.trained_imgsz or settings.export.onnx_imgsz
    key = export_key(imgsz, opset)
    entry = record.exports.get(key)
    if entry and Path(entry["path"]).is_file() and file_sha256(Path(entry["path"])) == entry.get("sha256"):
        return record, entry
    if not record.best_weights.is_file():
        raise InputError(f"run {record.run} has no {record.best_weights}: only a finished run can be exported")
    path = record.export_file(imgsz, opset)
    result = export(settings, weights=record.best_weights, formats=["onnx"], imgsz=imgsz, verify=True,
                    dataset=record.dataset, onnx_out=path, opset=opset)
    entry = {"path": str(path), "sha256": file_sha256(path), "imgsz": imgsz, "opset": onnx_opset(path),
             "parity": result.parity.to_dict() if result.parity else None}
    record.exports[key] = entry
    record.onnx, record.onnx_sha256, record.parity = entry["path"], entry["sha256"], entry["parity"]
    record.save()
    return record, entry


def verify_onnx(settings: Settings, onnx: Path, weights: Path | None = None, dataset: str | None = None,
                imgsz: int | None = None, verify_images: int = 200) -> ParityReport:
    """The parity check alone, for an ONNX file that already exists: PyTorch at the size the weights
    trained at (or --imgsz), the ONNX as our pipeline runs it (so an ONNX whose metadata lies fails)."""
    layout = Layout(settings.paths)
    weights = Path(weights) if weights else default_weights(layout)
    for path, what in ((onnx, "ONNX model"), (weights, "weights")):
        if not Path(path).is_file():
            raise InputError(f"{what} {path} not found")
    load_weights_only(Path(weights), f"--weights {weights}")
    images = parity_images(settings, dataset, verify_images, run_of_weights(layout, weights))
    report = parity_check(weights, Path(onnx), images, export_imgsz(settings, weights, imgsz),
                          settings.export.max_batch, settings.export.parity_min_map50)
    require_parity(report)
    return report
