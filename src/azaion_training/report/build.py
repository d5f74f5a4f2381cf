"""Assemble the report of a training run: `index.html` + PNGs + `report.json` in one folder.

Inputs are a real Ultralytics run directory (results.csv, weights/best.pt, args.yaml naming
the dataset), the data tree for the pipeline counts, and -- when the caller has them (the
demo does) -- the ingest counts, the publish manifest and the inference summary.
"""

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from azaion_training.classes import load_classes
from azaion_training.errors import InputError
from azaion_training.fsutil import atomic_write_text
from azaion_training.layout import Layout
from azaion_training.logs import get_logger
from azaion_training.report import html, plots
from azaion_training.report.evaluate import Evaluation, evaluate, predictions_vs_truth, split_images
from azaion_training.report.status import class_histogram, collect_status, run_metrics
from azaion_training.settings import Settings

logger = get_logger("report")
SPLITS = ("train", "valid", "test")
GRID_IMAGES = 8


@dataclass
class ReportInputs:
    run_dir: Path
    title: str = "Azaion training report"
    ingest: dict[str, Any] | None = None  # what was sent / applied / rejected (the demo knows)
    publish: dict[str, Any] | None = None  # publish manifest and fetch check
    inference: dict[str, Any] | None = None  # inference summary
    inference_frames: list[Any] = field(default_factory=list)  # annotated BGR frames
    extra: dict[str, Any] = field(default_factory=dict)  # shown under "Run" (timings, settings)


@dataclass
class ReportResult:
    index_html: Path
    report_json: Path
    pngs: list[Path]
    evaluation: Evaluation | None


def resolve_run(settings: Settings, run: str) -> Path:
    """A run name under models/ or a path to a run directory."""
    candidate = Path(run)
    run_dir = candidate if candidate.is_dir() else Layout(settings.paths).models / run
    if not (run_dir / "results.csv").is_file():
        raise InputError(f"training run {run!r} not found: expected {run_dir}/results.csv; "
                         "give a run name under models/ (see `azaion status`) or a run directory")
    return run_dir


def run_dataset(run_dir: Path) -> tuple[Path | None, int]:
    """(data.yaml, imgsz) the run was trained with, from Ultralytics' args.yaml."""
    args_file = run_dir / "args.yaml"
    args = yaml.safe_load(args_file.read_text(encoding="utf-8")) if args_file.is_file() else {}
    data = Path(args["data"]) if args.get("data") else None
    return (data if data and data.is_file() else None), int(args.get("imgsz") or 640)


def split_class_counts(dataset_dir: Path, names: dict[int, str]) -> dict[str, dict[str, int]]:
    counts = {split: class_histogram(dataset_dir / split / "labels", names) for split in SPLITS}
    return {split: per_class for split, per_class in counts.items() if per_class}


def best_weights(run_dir: Path) -> Path | None:
    for candidate in (run_dir / "weights" / "best.pt", run_dir / "weights" / "last.pt"):
        if candidate.is_file():
            return candidate
    return None


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
        split_rows = [{"split": s, "images": len(split_images(data_yaml, "val" if s == "valid" else s)),
                       "boxes": sum(counts.get(s, {}).values())} for s in SPLITS]
        sections.append(("Dataset", html.paragraph(f"{data_yaml.parent}") + html.table(split_rows)
                         + html.figure(pngs[-1].name, "Boxes per class in each split")))

    results = plots.read_results_csv(inputs.run_dir / "results.csv")
    pngs.append(plots.training_curves(results, out_dir / "training_curves.png"))
    sections.append(("Training", html.key_values({"run": str(inputs.run_dir), **run_metrics(inputs.run_dir),
                                                   **inputs.extra})
                     + html.figure(pngs[-1].name, "Losses and validation metrics per epoch (results.csv)")))

    evaluation = None
    if weights is not None and data_yaml is not None:
        split = "test" if split_images(data_yaml, "test") else "val"
        evaluation = evaluate(weights, data_yaml, split, imgsz, out_dir / ".val")
        sections.append(_evaluation_section(evaluation, out_dir, pngs))
        drawn = predictions_vs_truth(weights, split_images(data_yaml, split)[:GRID_IMAGES], classes, imgsz)
        if drawn:
            pngs.append(plots.image_grid([d[0] for d in drawn], [d[1] for d in drawn], out_dir / "test_grid.png"))
            sections.append(("Test images: ground truth vs predictions", html.figure(
                pngs[-1].name, "Magenta: ground truth. Coloured, labelled: the model's predictions (conf >= 0.25).")))

    if inputs.publish is not None:
        sections.append(("Publish manifest", html.json_block(inputs.publish)))
    if inputs.inference is not None:
        body = html.json_block(inputs.inference)
        if inputs.inference_frames:
            pngs.append(plots.image_grid(inputs.inference_frames, [f"frame {i + 1}" for i in
                                                                   range(len(inputs.inference_frames))],
                                         out_dir / "inference_frames.png", columns=3))
            body += html.figure(pngs[-1].name, "Annotated frames from the inference video")
        sections.append(("Inference", body))

    created = datetime.now(UTC).isoformat(timespec="seconds")
    index = out_dir / "index.html"
    atomic_write_text(index, html.page(inputs.title, f"{created} · data tree {layout.root}", sections))
    summary = {"created_at": created, "run": str(inputs.run_dir), "status": status, "ingest": inputs.ingest,
               "evaluation": evaluation.metrics() if evaluation else None,
               "per_class": evaluation.per_class if evaluation else None, "publish": inputs.publish,
               "inference": inputs.inference, "extra": inputs.extra, "pngs": [p.name for p in pngs]}
    report_json = out_dir / "report.json"
    atomic_write_text(report_json, json.dumps(summary, indent=2, default=str))
    return ReportResult(index, report_json, pngs, evaluation)


def _pipeline_section(status: dict, inputs: ReportInputs) -> str:
    areas = status["areas"]
    rows = [{"stage": "validated (data/)", "count": areas["data"]["images"]},
            {"stage": "awaiting validation (data-seed/)", "count": areas["seed"]["images"]},
            {"stage": "deleted (data_deleted/)", "count": areas["deleted"]["images"]},
            {"stage": "corrupted (data-corrupted/)", "count": areas["corrupted"]["images"]},
            {"stage": "rejected messages (queue-rejected/)", "count": status["rejected"]["messages"]}]
    body = ""
    if inputs.ingest:
        body += "<h3>Ingest</h3>" + html.key_values(inputs.ingest)
    body += "<h3>Data tree</h3>" + html.table(rows)
    reasons = [{"where": "queue-rejected", "reason": r, "count": n} for r, n in status["rejected"]["reasons"].items()]
    reasons += [{"where": "data-corrupted", "reason": r, "count": n} for r, n in status["corrupted_reasons"].items()]
    if reasons:
        body += "<h3>Rejected and corrupted, by reason</h3>" + html.table(reasons)
    return body


def _evaluation_section(evaluation: Evaluation, out_dir: Path, pngs: list[Path]) -> str:
    verdict = "ok" if evaluation.map50 >= 0.5 else "bad"
    body = (f'<p>Split <b>{evaluation.split}</b>, {evaluation.images} images: '
            f'<span class="{verdict}">mAP50 {evaluation.map50:.3f}</span>, mAP50-95 {evaluation.map50_95:.3f}, '
            f"precision {evaluation.precision:.3f}, recall {evaluation.recall:.3f}</p>")
    body += "<h3>Per-class AP</h3>" + html.table(evaluation.per_class)
    if evaluation.pr_precision is not None:
        pngs.append(plots.precision_recall(evaluation.pr_recall, evaluation.pr_precision, evaluation.pr_names,
                                           evaluation.pr_ap50, out_dir / "precision_recall.png"))
        body += html.figure(pngs[-1].name, "Precision-recall curves per class (IoU 0.5)")
    return ("Model quality on the held-out split", body)
