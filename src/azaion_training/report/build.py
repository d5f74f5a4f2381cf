"""Assemble the report of a training run: `index.html` + PNGs + `report.json` in one folder.

Inputs are a real Ultralytics run directory (results.csv, weights/best.pt, args.yaml naming
the dataset), the data tree for the pipeline counts, and -- when the caller has them (the
demo does) -- the ingest counts, the publish manifest and the inference summary with frames
of its annotated video.
"""

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from azaion_training.classes import load_classes
from azaion_training.fsutil import atomic_write_text
from azaion_training.layout import SPLITS, DatasetDir, Layout, RunDir
from azaion_training.logs import get_logger
from azaion_training.report import html, plots
from azaion_training.report.evaluate import Evaluation, evaluate, predictions_vs_truth
from azaion_training.report.status import class_histogram, collect_status, run_metrics
from azaion_training.settings import Settings

logger = get_logger("report")
GRID_IMAGES = 8
INFERENCE_FRAMES = 6
# Below this held-out mAP50 the page says the model did not learn and why it may not have.
NO_LEARNING_MAP50 = 0.05


@dataclass
class ReportInputs:
    run_dir: Path
    title: str = "Azaion training report"
    ingest: list[dict[str, Any]] | None = None  # table rows: what was sent / applied / rejected (the demo knows)
    publish: dict[str, Any] | None = None  # publish manifest and fetch check
    inference: dict[str, Any] | None = None  # inference summary (InferenceSummary as a dict)
    inference_frames: list[tuple[str, Any]] = field(default_factory=list)  # (caption, annotated BGR frame)
    extra: dict[str, Any] = field(default_factory=dict)  # shown under "Run" (timings, settings)


@dataclass
class ReportResult:
    index_html: Path
    report_json: Path
    pngs: list[Path]
    evaluation: Evaluation | None


def run_dataset(run_dir: Path) -> tuple[Path | None, int]:
    """(data.yaml, imgsz) the run was trained with, from Ultralytics' args.yaml."""
    args_file = RunDir(run_dir).args_yaml
    args = yaml.safe_load(args_file.read_text(encoding="utf-8")) if args_file.is_file() else {}
    data = Path(args["data"]) if args.get("data") else None
    return (data if data and data.is_file() else None), int(args.get("imgsz") or 640)


def split_class_counts(dataset_dir: Path, names: dict[int, str]) -> dict[str, dict[str, int]]:
    counts = {split: class_histogram(dataset_dir / split / "labels", names) for split in SPLITS}
    return {split: per_class for split, per_class in counts.items() if per_class}


def best_weights(run_dir: Path) -> Path | None:
    for candidate in (RunDir(run_dir).best, RunDir(run_dir).last):
        if candidate.is_file():
            return candidate
    return None


def annotated_frames(inference: dict[str, Any], count: int = INFERENCE_FRAMES) -> list[tuple[str, Any]]:
    """`count` frames spread over an inference run's annotated video, each captioned with its
    frame number and detections as detections.jsonl records them. The video holds one frame per
    processed frame (every `every`-th of the source), in the order of detections.jsonl."""
    import cv2

    outputs = inference.get("outputs") or {}
    if not outputs.get("video") or not outputs.get("detections"):
        return []
    with open(outputs["detections"], encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    wanted = set(np.linspace(0, len(records) - 1, count).round().astype(int).tolist()) if records else set()
    frames = []
    capture = cv2.VideoCapture(outputs["video"])
    try:
        for position in range(max(wanted, default=-1) + 1):  # read in order: seeking in MP4 is not exact
            if not capture.grab():
                break
            if position in wanted:
                ok, image = capture.retrieve()
                found = len(records[position]["detections"])
                if ok:
                    frames.append((f"frame {records[position]['frame']}: {found} detection{'s' * (found != 1)}",
                                   image))
    finally:
        capture.release()
    return frames


def build_report(settings: Settings, inputs: ReportInputs, out_dir: Path) -> ReportResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layout = Layout(settings.paths)
    classes = load_classes(layout.classes_json)
    names = {cls: c.name for cls, c in classes.items()}
    status = collect_status(settings)
    data_yaml, imgsz = run_dataset(inputs.run_dir)
    weights = best_weights(inputs.run_dir)
    sections: list[tuple[str, str]] = []
    pngs: list[Path] = []

    sections.append(("Pipeline summary", _pipeline_section(status, inputs)))

    if data_yaml is not None:
        counts = split_class_counts(data_yaml.parent, names)
        pngs.append(plots.class_histogram(counts, out_dir / "class_histogram.png", "Boxes per class and split",
                                          order=[names[cls] for cls in sorted(names)]))
        split_rows = [{"split": s, "images": len(DatasetDir(data_yaml.parent).images(s)),
                       "boxes": sum(counts.get(s, {}).values())} for s in SPLITS]
        sections.append(("Dataset", html.paragraph(f"{data_yaml.parent}") + html.table(split_rows)
                         + html.figure(pngs[-1].name, "Boxes per class in each split")))

    results = plots.read_results_csv(RunDir(inputs.run_dir).results_csv)
    pngs.append(plots.training_curves(results, out_dir / "training_curves.png"))
    sections.append(("Training", html.key_values({"run": str(inputs.run_dir), **run_metrics(inputs.run_dir),
                                                   **inputs.extra})
                     + html.figure(pngs[-1].name, "Losses and validation metrics per epoch (results.csv)")))

    edge = edge_exports(inputs.run_dir)
    if edge:
        sections.append(("Edge exports", html.paragraph(
            "Quantised and edge variants of the run's FP32 ONNX, each judged against it on the same split "
            "(docs/edge.md): refused beyond QUANT_MAX_MAP_DROP, or (INT8) unless QUANT_MIN_SPEEDUP faster.")
            + html.table(edge)))

    evaluation = None
    if weights is not None and data_yaml is not None:
        split = "test" if DatasetDir(data_yaml.parent).images("test") else "valid"
        evaluation = evaluate(weights, data_yaml, split, imgsz, out_dir / ".val")
        notice = no_learning_notice(evaluation, run_metrics(inputs.run_dir).get("epochs"),
                                    len(DatasetDir(data_yaml.parent).images("train")), imgsz)
        sections.append(_evaluation_section(evaluation, notice, out_dir, pngs))
        conf, iou = settings.inference.conf, settings.inference.iou
        drawn = predictions_vs_truth(weights, DatasetDir(data_yaml.parent).images(split)[:GRID_IMAGES], classes, imgsz,
                                     conf, iou)
        if drawn:
            pngs.append(plots.image_grid([d[0] for d in drawn], [d[1] for d in drawn], out_dir / "test_grid.png"))
            sections.append(("Test images: ground truth vs predictions", html.figure(
                pngs[-1].name, f"Magenta: ground truth. Coloured, labelled: what the inference pipeline outputs "
                               f"(confidence >= {conf}, overlap cleanup at IoU {iou}).")))

    if inputs.publish is not None:
        sections.append(("Publish manifest", html.json_block(inputs.publish)))
    if inputs.inference is not None:
        body = html.json_block(inputs.inference)
        if inputs.inference_frames:
            pngs.append(plots.image_grid([frame for _, frame in inputs.inference_frames],
                                         [caption for caption, _ in inputs.inference_frames],
                                         out_dir / "inference_frames.png", columns=3))
            body += html.figure(pngs[-1].name, "Frames of the annotated inference video; frame numbers are those "
                                               "of detections.jsonl")
        sections.append(("Inference", body))

    created = datetime.now(UTC).isoformat(timespec="seconds")
    index = out_dir / "index.html"
    atomic_write_text(index, html.page(inputs.title, f"{created} · data tree {layout.root}", sections))
    summary = {"created": created, "run": str(inputs.run_dir), "status": status, "ingest": inputs.ingest,
               "evaluation": evaluation.metrics() if evaluation else None,
               "per_class": evaluation.per_class if evaluation else None, "publish": inputs.publish,
               "no_learning": notice, "inference": inputs.inference, "extra": inputs.extra, "edge_exports": edge,
               "pngs": [p.name for p in pngs]}
    report_json = out_dir / "report.json"
    atomic_write_text(report_json, json.dumps(summary, indent=2, default=str))
    return ReportResult(index, report_json, pngs, evaluation)


def edge_exports(run_dir: Path) -> list[dict[str, Any]]:
    """The run's quantised/edge variants as table rows, from run.json `exports` (training/quantize.py)."""
    try:
        exports = json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("exports") or {}
    except (OSError, json.JSONDecodeError, AttributeError):
        return []
    return [{"variant": key, "split": f"{e.get('split')} ({e.get('images')} images)",
             "FP32 mAP50": e.get("fp32_map50"), "mAP50": e.get("map50"), "drop": e.get("drop"),
             "ms/frame (FP32)": f"{e.get('ms')} ({e.get('fp32_ms')})" if e.get("ms") else "-",
             "speedup": e.get("speedup") or "-", "verdict": "kept" if e.get("passed") else
             "refused: " + "; ".join(e.get("reasons") or [])}
            for key, e in sorted(exports.items()) if isinstance(e, dict) and "fp32_map50" in e]


def _pipeline_section(status: dict, inputs: ReportInputs) -> str:
    areas = status["areas"]
    rows = [{"stage": "validated (data/)", "count": areas["data"]["images"]},
            {"stage": "awaiting validation (data-seed/)", "count": areas["seed"]["images"]},
            {"stage": "deleted (data_deleted/)", "count": areas["deleted"]["images"]},
            {"stage": "corrupted (data-corrupted/)", "count": areas["corrupted"]["images"]},
            {"stage": "rejected messages (queue-rejected/)", "count": status["rejected"]["messages"]}]
    body = ""
    if inputs.ingest:
        body += "<h3>Ingest</h3>" + html.table(inputs.ingest)
    body += "<h3>Data tree</h3>" + html.table(rows)
    reasons = [{"where": "queue-rejected", "reason": r, "count": n} for r, n in status["rejected"]["reasons"].items()]
    reasons += [{"where": "data-corrupted", "reason": r, "count": n} for r, n in status["corrupted_reasons"].items()]
    if reasons:
        body += "<h3>Rejected and corrupted, by reason</h3>" + html.table(reasons)
    return body


def no_learning_notice(evaluation: Evaluation, epochs: int | None, train_images: int, imgsz: int) -> list[str] | None:
    """None when the model learnt something; else what the page says: the finding, then the
    likely reasons with this run's numbers."""
    if evaluation.map50 >= NO_LEARNING_MAP50:
        return None
    return [
        f"The model did not learn: mAP50 {evaluation.map50:.3f} on the {evaluation.split} split "
        f"({evaluation.images} images). Likely reasons:",
        f"too few epochs ({epochs if epochs is not None else 'unknown'}): from scratch a detector needs tens to "
        "hundreds of epochs; train longer, or fine-tune trained weights (azaion train --from)",
        f"too few training images ({train_images}) for the classes they hold: add annotations",
        f"an image size too small for the objects (imgsz {imgsz}): objects a few pixels wide vanish on the "
        "model's stride-32 grid; train at a larger --imgsz",
        "labels that do not match the images (wrong class ids, boxes off the objects): check the test images "
        "below, where the magenta ground-truth boxes must sit on the objects",
    ]


def _evaluation_section(evaluation: Evaluation, notice: list[str] | None, out_dir: Path, pngs: list[Path]) -> str:
    verdict = "ok" if evaluation.map50 >= 0.5 else "bad"
    body = (f'<p>Split <b>{evaluation.split}</b>, {evaluation.images} images, imgsz {evaluation.imgsz}, '
            f'{evaluation.engine} (best.pt through Ultralytics\' validator): '
            f'<span class="{verdict}">mAP50 {evaluation.map50:.3f}</span>, mAP50-95 {evaluation.map50_95:.3f}, '
            f"precision {evaluation.precision:.3f}, recall {evaluation.recall:.3f}</p>")
    if notice:
        body += html.warning(notice[0], notice[1:])
    body += "<h3>Per-class AP</h3>" + html.table(evaluation.per_class)
    if evaluation.pr_precision is not None:
        pngs.append(plots.precision_recall(evaluation.pr_recall, evaluation.pr_precision, evaluation.pr_names,
                                           evaluation.pr_ap50, out_dir / "precision_recall.png"))
        body += html.figure(pngs[-1].name, "Precision-recall curves per class (IoU 0.5)")
    return ("Model quality on the held-out split", body)
