"""Quantised and edge exports of a run (docs/edge.md): OpenVINO IR (FP32 or INT8, NNCF), an
INT8 ONNX (NNCF, run by ONNX Runtime) and RKNN (FP16 or INT8, built in the RKNN toolchain's
own venv), each derived from the run's parity-checked FP32 ONNX and judged before it is kept:

- calibration images come from the dataset's train split, stratified by class (rarest class
  first, round robin, images without objects as one more stratum), letterboxed exactly as the
  inference pipeline letterboxes;
- the variant and the FP32 ONNX go through the gate's artefact-level evaluation
  (inference/scoring.py: the same Detector, letterbox, overlap cleanup and metrics.py) on the
  same split; refused when the variant's mAP50 is more than QUANT_MAX_MAP_DROP below the FP32
  ONNX's, or when the FP32 ONNX itself scores below EXPORT_PARITY_MIN_MAP50 (nothing to compare);
- an INT8 variant must also be QUANT_MIN_SPEEDUP times faster per frame than the FP32 ONNX
  under ONNX Runtime, timed side by side on the same frames on this machine (alternating rounds,
  the best of each): INT8 that is not faster only costs accuracy. RKNN is timed by nobody here
  (the simulator's speed says nothing about the NPU), so only its accuracy is judged.

A refused variant leaves no file; accepted or refused, its figures go to run.json `exports`
under a key like the ONNX exports' (e.g. `openvino-int8-320-opset-default`).
"""

import contextlib
import json
import logging
import os
import random
import subprocess  # nosec B404 # the RKNN toolchain runs in its own venv: a fixed argv, no shell
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from azaion_training.errors import InputError, OperationFailed
from azaion_training.fsutil import atomic_write_bytes, file_sha256
from azaion_training.labels import LabelError, label_path_for, read_label_file
from azaion_training.layout import DatasetDir, Layout
from azaion_training.logs import get_logger, log
from azaion_training.settings import Settings
from azaion_training.training.runs import EXPORT_DIR, RunRecord, export_key_opset

logger = get_logger("quantize")

EDGE_FORMATS = ("openvino", "onnx-int8", "rknn")
INT8_ONLY = ("onnx-int8",)
RKNN_PLATFORM = "rk3588"  # OrangePi 5 and other RK3588 boards
TIMED_IMAGES = 20  # frames timed per side and round
TIMED_ROUNDS = 3  # alternating rounds; each side keeps its best (the machine may be shared)
RKNN_TIMEOUT_S = 3600


@dataclass
class VariantReport:
    """One quantised or edge export and the figures that decided it."""

    key: str
    format: str  # openvino | onnx-int8 | rknn
    precision: str  # fp32 | int8 | fp16
    imgsz: int
    split: str
    images: int
    fp32_map50: float
    map50: float
    max_drop: float
    fp32_ms: float | None = None  # per frame, ONNX Runtime, side by side with the variant
    ms: float | None = None
    min_speedup: float | None = None  # None: no speed requirement (FP32 variants, RKNN)
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    source_onnx: str = ""
    source_sha256: str = ""
    reasons: list[str] = field(default_factory=list)  # why it was refused; empty when accepted
    path: str | None = None  # the kept file; None when refused
    sha256: str | None = None
    platform: str | None = None  # RKNN's target

    @property
    def drop(self) -> float:
        return round(self.fp32_map50 - self.map50, 4)

    @property
    def speedup(self) -> float | None:
        return round(self.fp32_ms / self.ms, 3) if self.fp32_ms and self.ms else None

    @property
    def passed(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drop": self.drop, "speedup": self.speedup, "passed": self.passed,
                "created": datetime.now(UTC).isoformat(timespec="seconds")}


# ------------------------------------------------------------------------------------- names and keys


def precision_of(fmt: str, int8: bool) -> str:
    if fmt in INT8_ONLY or int8:
        return "int8"
    return "fp16" if fmt == "rknn" else "fp32"


def variant_key(fmt: str, precision: str, imgsz: int, opset: int | None) -> str:
    """Like the ONNX exports' keys (runs.export_key): what makes two exports of a run the same."""
    kind = {"onnx-int8": "onnx-int8", "rknn": f"rknn-{RKNN_PLATFORM}-{precision}"}.get(fmt, f"{fmt}-{precision}")
    return f"{kind}-{imgsz}-{export_key_opset(opset)}"


def variant_file(record: RunRecord, fmt: str, precision: str, imgsz: int, opset: int | None) -> Path:
    stem = f"azaion-{imgsz}-{export_key_opset(opset)}"
    name = {"onnx-int8": f"{stem}.int8.onnx", "openvino": f"{stem}.openvino-{precision}.zip",
            "rknn": f"{stem}.rknn-{RKNN_PLATFORM}-{precision}.zip"}[fmt]
    return record.path / EXPORT_DIR / name


def rknn_python(settings: Settings) -> Path:
    """The RKNN venv's interpreter: EXPORT_RKNN_VENV, else .venv-rknn beside the running venv."""
    venv = settings.export.rknn_venv or Path(sys.prefix).parent / ".venv-rknn"
    return Path(venv) / "bin" / "python"


def check_edge_toolchains(settings: Settings, formats: list[str]) -> None:
    """Refuse a missing toolchain before any work is done."""
    import importlib.util

    if {"openvino", "onnx-int8"} & set(formats):
        missing = [m for m in ("openvino", "nncf") if importlib.util.find_spec(m) is None]
        if missing:
            raise InputError(f"OpenVINO and INT8 exports need {' and '.join(missing)}, which the venv lacks: "
                             "pip install -r requirements.txt (openvino and nncf are pinned there)")
    if "rknn" in formats and not rknn_python(settings).is_file():
        raise InputError(f"RKNN export runs in the RKNN toolchain's own venv and {rknn_python(settings)} does not "
                         "exist: create it with `make rknn-env` (or point EXPORT_RKNN_VENV at one)")


# ------------------------------------------------------------------------------------- calibration


def calibration_set(dataset: DatasetDir, count: int, seed: int = 0) -> tuple[list[Path], dict[str, Any]]:
    """Up to `count` train images, stratified by class: each class (rarest first) and the images
    without objects take turns giving an image not yet chosen. Deterministic for a seed."""
    images = dataset.images("train")
    if not images:
        raise InputError(f"dataset {dataset.root} has no train images to calibrate INT8 with: form the dataset "
                         "first (`azaion dataset form`) or name another with --dataset")
    rng = random.Random(seed)  # nosec B311 # a reproducible sample, no secret
    strata: dict[int, list[Path]] = {}
    classes_of: dict[Path, set[int]] = {}
    for image in images:
        label = label_path_for(image)
        try:
            classes = {b.cls for b in read_label_file(label)} if label.is_file() else set()
        except LabelError:
            continue  # dataset formation quarantines bad labels; an odd one is left out of calibration
        classes_of[image] = classes
        for cls in classes or {-1}:  # -1: images without objects
            strata.setdefault(cls, []).append(image)
    for members in strata.values():
        rng.shuffle(members)
    order = sorted(strata, key=lambda c: (len(strata[c]), c))
    chosen: list[Path] = []
    taken: set[Path] = set()
    while len(chosen) < count and order:
        for cls in list(order):
            members = strata[cls]
            while members and members[-1] in taken:
                members.pop()
            if not members:
                order.remove(cls)
                continue
            image = members.pop()
            taken.add(image)
            chosen.append(image)
            if len(chosen) >= count:
                break
    per_class = Counter(c for image in chosen for c in classes_of[image])
    summary = {"split": "train", "images": len(chosen), "available": len(images), "seed": seed,
               "background_images": sum(1 for image in chosen if not classes_of[image]),
               "images_per_class": {str(c): n for c, n in sorted(per_class.items())}}
    return chosen, summary


def letterboxed(frames: list[np.ndarray], shape: tuple[int, int], rect: bool, stride: int) -> list[np.ndarray]:
    """Each frame as the pipeline feeds it to an engine: (1, 3, h, w) float32 RGB in [0, 1]."""
    from azaion_training.inference.pipeline import letterbox_for, preprocess

    return [preprocess([f], [letterbox_for(f.shape[:2], shape, rect, stride)]) for f in frames]


def read_frames(images: list[Path]) -> list[np.ndarray]:
    import cv2

    frames = [cv2.imread(str(p)) for p in images]
    unreadable = [str(p) for p, f in zip(images, frames, strict=True) if f is None]
    if unreadable:
        raise InputError(f"unreadable images: {', '.join(unreadable[:5])}; re-form the dataset (`azaion dataset form`)")
    return frames


# ------------------------------------------------------------------------------------- quantisers


def head_ignored(ops: list[tuple[str, str]]) -> list[str]:
    """Node names NNCF leaves in floating point: every Sigmoid, and the detection head's decoding
    (DFL, anchors and strides, the final Concat of pixel boxes and 0..1 scores) in the scope of the
    last Sigmoid (the class scores; in an ONNX from Ultralytics e.g. `/model.22/`). The head's
    convolution branches (`cv2.*`, `cv3.*`, `one2one_cv*`) are quantised: keeping them in floating
    point too, as Ultralytics' own INT8 export does, measured about half the speedup on a YOLOv8s at
    640 (2.6x instead of 4.7x the FP32 ONNX) at the same mAP50; the gate judges either way."""
    sigmoids = [name for name, kind in ops if kind == "Sigmoid"]
    if not sigmoids:
        return []
    last = sigmoids[-1]
    scope = "/".join(last.split("/")[:2]) + "/" if last.startswith("/") else last.split("/", 1)[0] + "/"

    def decoding(name: str) -> bool:
        return name.startswith(scope) and not name[len(scope):].startswith(("cv", "one2one_cv"))

    return [name for name, kind in ops if kind == "Sigmoid" or decoding(name)]


def _edge_metadata(onnx_bytes: bytes, fmt: str, precision: str, source_sha256: str, **extra: Any) -> dict[str, Any]:
    """What an edge archive carries for the engine: names, stride, imgsz, end2end, and where it came from."""
    import ast

    from azaion_training.inference.engines import onnx_metadata

    raw = onnx_metadata(onnx_bytes)

    def literal(key: str, default: Any) -> Any:
        try:
            return ast.literal_eval(raw[key]) if key in raw else default
        except (ValueError, SyntaxError):
            return raw[key]

    return {"format": fmt, "precision": precision, "names": {str(k): v for k, v in literal("names", {}).items()},
            "stride": int(literal("stride", 32)), "imgsz": literal("imgsz", None),
            "end2end": str(raw.get("end2end", "False")).lower() == "true", "source_onnx_sha256": source_sha256,
            **extra}


def openvino_archive(onnx_path: Path, calibration: list[np.ndarray] | None, source_sha256: str) -> bytes:
    """The FP32 ONNX as OpenVINO IR, INT8 when calibration blobs are given, in one edge archive."""
    from azaion_training.inference.engines import disable_openvino_telemetry, pack_edge_archive

    disable_openvino_telemetry()
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    precision = "fp32"
    if calibration is not None:
        import nncf

        nncf.set_log_level(logging.WARNING)  # not one INFO line per node left in floating point
        ignored = head_ignored([(op.get_friendly_name(), op.get_type_name()) for op in model.get_ordered_ops()])
        with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: stdout stays the command's output
            model = nncf.quantize(model, nncf.Dataset(calibration), preset=nncf.QuantizationPreset.MIXED,
                                  subset_size=len(calibration), ignored_scope=nncf.IgnoredScope(names=ignored))
        precision = "int8"
    with tempfile.TemporaryDirectory(prefix="azaion-ov-") as work:
        xml = Path(work) / "azaion.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        files = {"azaion.xml": xml.read_bytes(), "azaion.bin": xml.with_suffix(".bin").read_bytes()}
    metadata = _edge_metadata(onnx_path.read_bytes(), "openvino", precision, source_sha256)
    return pack_edge_archive(files, metadata)


def onnx_int8(onnx_path: Path, calibration: list[np.ndarray]) -> bytes:
    """The FP32 ONNX with NNCF's static INT8 (QDQ) for ONNX Runtime, its metadata kept."""
    from azaion_training.inference.engines import disable_openvino_telemetry

    disable_openvino_telemetry()
    import nncf
    import onnx

    nncf.set_log_level(logging.WARNING)
    model = onnx.load(str(onnx_path))
    name = model.graph.input[0].name
    ignored = head_ignored([(node.name, node.op_type) for node in model.graph.node])
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars
        quantized = nncf.quantize(model, nncf.Dataset(calibration, lambda blob: {name: blob}),
                                  preset=nncf.QuantizationPreset.MIXED, subset_size=len(calibration),
                                  ignored_scope=nncf.IgnoredScope(names=ignored))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(model.metadata_props)
    return quantized.SerializeToString()


class ReplayEngine:
    """The engine interface over outputs computed elsewhere (the RKNN simulator, in its own venv)
    for frames letterboxed here: `run` hands them back in order, and checks that it is asked
    about exactly the frames they were computed for."""

    def __init__(self, inputs: np.ndarray, outputs: np.ndarray, shape: tuple[int, int], stride: int,
                 end2end: bool, names: dict[int, str]):
        self._inputs, self._outputs, self._next = inputs, outputs, 0
        self.input_shape, self.stride, self.end2end, self.class_names = shape, stride, end2end, names
        self.batch_size, self.dynamic_batch, self.dynamic_hw, self.workers = 1, False, False, 1
        self.provider = "RKNN simulator"

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        rows = []
        for frame in batch:
            if self._next >= len(self._inputs) or not np.array_equal((frame * 255).round().astype(np.uint8),
                                                                      self._inputs[self._next]):
                raise OperationFailed("the RKNN simulator's outputs do not belong to the frames evaluated")
            rows.append(self._outputs[self._next])
            self._next += 1
        return [np.stack(rows)]


def rknn_convert(settings: Settings, onnx_path: Path, imgsz: int, calibration: list[np.ndarray] | None,
                 frames: np.ndarray, work: Path) -> tuple[bytes, np.ndarray, dict[str, Any]]:
    """Build the .rknn in the RKNN venv (training/rknn_convert.py) and simulate it on `frames`
    ((N, 3, h, w) uint8, letterboxed here). Returns the .rknn bytes, the raw outputs, the summary."""
    import onnx

    listing = None
    if calibration is not None:
        paths = []
        for i, blob in enumerate(calibration):
            paths.append(work / f"calibration-{i:05d}.npy")
            np.save(paths[-1], (blob * 255).round().astype(np.uint8))
        listing = work / "calibration.txt"
        listing.write_text("".join(f"{p}\n" for p in paths), encoding="utf-8")
    np.save(work / "frames.npy", frames)
    job = {"onnx": str(onnx_path), "out": str(work / "azaion.rknn"), "platform": RKNN_PLATFORM,
           "imgsz": [imgsz, imgsz], "int8": calibration is not None,
           "calibration": str(listing) if listing else None, "frames": str(work / "frames.npy"),
           "results": str(work / "results.npy"),
           "input_name": onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name}
    (work / "job.json").write_text(json.dumps(job), encoding="utf-8")
    python = rknn_python(settings)
    script = Path(__file__).with_name("rknn_convert.py")
    log(logger, logging.INFO, "building RKNN in its venv", python=str(python), int8=job["int8"])
    try:
        done = subprocess.run([str(python), str(script), str(work / "job.json")],  # nosec B603 # fixed argv
                              capture_output=True, text=True, timeout=RKNN_TIMEOUT_S, cwd=work,
                              env={**os.environ, "PYTHONNOUSERSITE": "1"}, check=False)
    except subprocess.TimeoutExpired:
        raise OperationFailed(f"the RKNN toolchain did not finish within {RKNN_TIMEOUT_S} s") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise OperationFailed(f"the RKNN toolchain ({python}) failed with exit code {done.returncode}: "
                              f"{' | '.join(tail)[-800:]}")
    return (work / "azaion.rknn").read_bytes(), np.load(work / "results.npy"), json.loads(lines[-1])


# ------------------------------------------------------------------------------------- the gate


def _timed_side_by_side(detectors: dict[str, Any], frames: list[np.ndarray]) -> dict[str, float]:
    """ms per frame of each detector on the same frames, alternating rounds, best round each."""
    from azaion_training.inference.scoring import ms_per_frame

    best: dict[str, float] = {}
    for _ in range(TIMED_ROUNDS):
        for name, detector in detectors.items():
            best[name] = min(best.get(name, float("inf")), ms_per_frame(detector, frames))
    return {name: round(ms, 2) for name, ms in best.items()}


def judge(report: VariantReport, floor: float) -> VariantReport:
    """The refusal reasons, if any, from the report's figures."""
    reasons = []
    if report.fp32_map50 < floor:
        reasons.append(f"the FP32 ONNX scores mAP50 {report.fp32_map50:.4f} on the {report.split} split, below "
                       f"EXPORT_PARITY_MIN_MAP50 {floor}: the comparison proves nothing")
    if report.drop > report.max_drop + 1e-9:
        reasons.append(f"mAP50 {report.map50:.4f} is {report.drop:.4f} below the FP32 ONNX's {report.fp32_map50:.4f} "
                       f"on {report.images} {report.split} images (QUANT_MAX_MAP_DROP {report.max_drop})")
    if report.min_speedup is not None and (report.speedup or 0) < report.min_speedup:
        reasons.append(f"not faster enough: {report.ms} ms per frame against {report.fp32_ms} ms for the FP32 ONNX "
                       f"(ONNX Runtime) on this machine, {report.speedup}x < QUANT_MIN_SPEEDUP "
                       f"{report.min_speedup}x (same frames, side by side, load {os.getloadavg()[0]:.2f})")
    report.reasons = reasons
    return report


def export_variants(settings: Settings, record: RunRecord, formats: list[str], int8: bool = False,
                    imgsz: int | None = None, opset: int | None = None, dataset: str | None = None,
                    split: str = "test", calibration_images: int | None = None) -> list[VariantReport]:
    """Each edge format of `formats` from the run's FP32 ONNX, judged against it; accepted ones are
    kept under <run>/export/, every one is recorded in run.json. Raises OperationFailed (exit 1)
    naming each refused variant after all were tried."""
    from azaion_training.inference.engines import OnnxEngine
    from azaion_training.inference.scoring import (
        detect_labelled,
        detect_labelled_with,
        engine_detector,
        evaluation_dir,
        score_detections,
    )
    from azaion_training.training.export import run_onnx

    check_edge_toolchains(settings, formats)
    record, entry = run_onnx(settings, record, imgsz, opset)
    onnx_path, imgsz = Path(entry["path"]), int(entry["imgsz"])
    onnx_bytes = onnx_path.read_bytes()
    formed = evaluation_dir(Layout(settings.paths), record, dataset, split)
    images = formed.images(split)
    frames = read_frames(images)
    fp32_predictions, truths = detect_labelled(onnx_bytes, images, settings)
    fp32_metrics, _, _ = score_detections(fp32_predictions, truths, settings)
    reference = OnnxEngine(onnx_bytes, threads=settings.inference.threads, batch_size=1, workers=1)
    calibration_cache: dict[bool, tuple[list[np.ndarray], dict]] = {}

    def calibration(rect: bool) -> tuple[list[np.ndarray], dict]:
        if rect not in calibration_cache:
            chosen, summary = calibration_set(formed, calibration_images or settings.export.quant_calibration_images)
            blobs = letterboxed(read_frames(chosen), reference.input_shape, rect, reference.stride)
            calibration_cache[rect] = (blobs, {**summary, "dataset": str(formed.root), "letterbox":
                                               "rect" if rect else "square"})
        return calibration_cache[rect]

    reports = []
    for fmt in formats:
        precision = precision_of(fmt, int8)
        key = variant_key(fmt, precision, imgsz, opset)
        target = variant_file(record, fmt, precision, imgsz, opset)
        log(logger, logging.INFO, "edge export", format=fmt, precision=precision, key=key)
        started = time.perf_counter()
        calibrated = calibration(fmt != "rknn") if precision == "int8" else (None, None)
        report = VariantReport(key, fmt, precision, imgsz, split, len(images), round(fp32_metrics["mAP50"], 4), 0.0,
                               settings.export.quant_max_map_drop, calibration=calibrated[1],
                               source_onnx=str(onnx_path), source_sha256=entry["sha256"],
                               min_speedup=settings.export.quant_min_speedup if precision == "int8" and fmt != "rknn"
                               else None, platform=RKNN_PLATFORM if fmt == "rknn" else None)
        if fmt == "rknn":
            square = np.concatenate(letterboxed(frames, (imgsz, imgsz), False, reference.stride))
            inputs = (square * 255).round().astype(np.uint8)
            with tempfile.TemporaryDirectory(prefix=".tmp-rknn-", dir=record.path) as work:
                plain, outputs, built = rknn_convert(settings, onnx_path, imgsz, calibrated[0], inputs, Path(work))
            from azaion_training.inference.engines import RKNN_FILE, pack_edge_archive

            data = pack_edge_archive({RKNN_FILE: plain}, _edge_metadata(
                onnx_bytes, "rknn", precision, entry["sha256"], platform=RKNN_PLATFORM, imgsz=[imgsz, imgsz],
                outputs=built.get("outputs")))
            engine = ReplayEngine(inputs, outputs, (imgsz, imgsz), reference.stride, reference.end2end,
                                  reference.class_names)
            predictions, _ = detect_labelled_with(engine_detector(engine, settings), images)
        else:
            from azaion_training.inference.engines import OpenVinoEngine

            data = onnx_int8(onnx_path, calibrated[0]) if fmt == "onnx-int8" else \
                openvino_archive(onnx_path, calibrated[0], entry["sha256"])
            engine = OnnxEngine(data, threads=settings.inference.threads, batch_size=1, workers=1) \
                if fmt == "onnx-int8" else OpenVinoEngine(data, threads=settings.inference.threads, batch_size=1,
                                                          workers=1)
            predictions, _ = detect_labelled_with(engine_detector(engine, settings), images)
            fast = engine_detector(engine, settings, settings.inference.conf)
            slow = engine_detector(reference, settings, settings.inference.conf)
            cycled = [frames[i % len(frames)] for i in range(TIMED_IMAGES)]  # a small split is repeated
            timed = _timed_side_by_side({"fp32": slow, "variant": fast}, cycled)
            report.fp32_ms, report.ms = timed["fp32"], timed["variant"]
        metrics, report.per_class, _ = score_detections(predictions, truths, settings)
        report.map50 = round(metrics["mAP50"], 4)
        judge(report, settings.export.parity_min_map50)
        if report.passed:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, data)
            report.path, report.sha256 = str(target), file_sha256(target)
        elif target.exists():
            target.unlink()  # an earlier accepted file of this key no longer matches what was judged
        log(logger, logging.INFO if report.passed else logging.WARNING, "edge export judged", key=key,
            passed=report.passed, fp32_map50=report.fp32_map50, map50=report.map50, drop=report.drop,
            speedup=report.speedup, seconds=round(time.perf_counter() - started, 1))
        record.exports[key] = report.to_dict()
        record.save()
        reports.append(report)
    return reports


def require_accepted(reports: list[VariantReport]) -> None:
    refused = [r for r in reports if not r.passed]
    if refused:
        kept = [r.path for r in reports if r.passed]
        raise OperationFailed("refused (no file kept for it): " + "; ".join(f"{r.key}: {' and '.join(r.reasons)}"
                                                                    for r in refused)
                              + (f" (kept: {', '.join(kept)})" if kept else ""))
