"""Training runs for the cockpit: each run's record (training.runs, docs/model-registry.md),
its metrics as `azaion status` reads them, its curves from Ultralytics' results.csv and, when
`azaion report` wrote one, its report and per-class AP. Every file is read through
rootfiles.open_inside: a run.json, results.csv or report.json leading out of the data root
reads as missing."""

import csv
import io
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from azaion_training.layout import Layout, RunDir, is_safe_name
from azaion_training.report.plots import LOSS_COLUMNS, METRIC_COLUMNS
from azaion_training.report.status import run_metrics
from azaion_training.rootfiles import is_file_inside, read_text_inside
from azaion_training.training.runs import RUN_RECORD, RunRecord, is_run_dir

REPORT_DIR = "report"  # where `azaion report RUN` writes by default


def _read_json(layout: Layout, path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(read_text_inside(layout.root, path))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def record_refused(layout: Layout, run_dir: Path) -> bool:
    """A run.json that exists but is not a regular file inside the root."""
    path = run_dir / RUN_RECORD
    return (path.is_symlink() or path.exists()) and not is_file_inside(layout.root, path)


def load_record(layout: Layout, run_dir: Path) -> RunRecord:
    """RunRecord.load, reading run.json through open_inside (refused: as if it were missing)."""
    data = _read_json(layout, run_dir / RUN_RECORD) or {}
    known = {f.name for f in fields(RunRecord)} - {"run", "path"}
    return RunRecord(run=run_dir.name, path=run_dir, **{k: v for k, v in data.items() if k in known})


def list_records(layout: Layout) -> list[RunRecord]:
    """training.runs.list_runs, through load_record; oldest first."""
    if not layout.models.is_dir():
        return []
    runs = [load_record(layout, p) for p in layout.models.iterdir()
            if is_safe_name(p.name) and is_run_dir(p) and layout.inside_root(p)]
    return sorted(runs, key=lambda r: (r.sort_key(), r.run))


def latest_record(layout: Layout) -> RunRecord | None:
    runs = list_records(layout)
    return runs[-1] if runs else None


def run_summary(layout: Layout, record: RunRecord) -> dict[str, Any]:
    return {"run": record.run, "status": record.status, "mode": record.mode, "parent": record.parent,
            "model": record.model, "dataset": Path(record.dataset).name if record.dataset else None,
            "split_generation": record.split_generation, "started": record.started, "ended": record.ended,
            "epochs": record.epochs, "epochs_done": record.epochs_done,
            "metrics": run_metrics(record.path, root=layout.root),
            "report": is_file_inside(layout.root, record.path / REPORT_DIR / "index.html")}


def runs_newest_first(layout: Layout) -> list[dict[str, Any]]:
    return [run_summary(layout, r) for r in reversed(list_records(layout))]


def find_run_dir(layout: Layout, run: str) -> Path | None:
    """models/<run> for a run name the server resolves itself; None for anything else."""
    if not is_safe_name(run):
        return None
    run_dir = layout.models / run
    return run_dir if is_run_dir(run_dir) and layout.inside_root(run_dir) else None


def read_results(layout: Layout, results_csv: Path) -> dict[str, list[float]]:
    """Ultralytics' per-epoch results.csv as column -> values (report.plots.read_results_csv's
    reading, through open_inside); {} when missing or refused."""
    try:
        text = read_text_inside(layout.root, results_csv)
    except OSError:
        return {}
    columns: dict[str, list[float]] = {}
    for row in csv.DictReader(io.StringIO(text, newline="")):
        for key, value in row.items():
            if key is None:
                continue
            try:
                columns.setdefault(key.strip(), []).append(float(value))
            except (TypeError, ValueError):
                columns.setdefault(key.strip(), []).append(float("nan"))
    return columns


def run_curves(layout: Layout, run_dir: Path) -> dict[str, Any]:
    """{"losses": column -> values, "metrics": column -> values, "epoch": [...]} from results.csv."""
    results = read_results(layout, RunDir(run_dir).results_csv)
    return {"epoch": results.get("epoch", []),
            "losses": {c: results[c] for c in LOSS_COLUMNS if c in results},
            "metrics": {c: results[c] for c in METRIC_COLUMNS if c in results}}


def run_report(layout: Layout, run_dir: Path) -> dict[str, Any] | None:
    """report.json of the run's report (per-class AP among it), when there is one."""
    return _read_json(layout, run_dir / REPORT_DIR / "report.json")


def report_file(layout: Layout, run: str, name: str) -> Path | None:
    """A file of the run's report folder, by a name the server resolves itself (served through
    open_inside)."""
    run_dir = find_run_dir(layout, run)
    if run_dir is None or not is_safe_name(name):
        return None
    return run_dir / REPORT_DIR / name
