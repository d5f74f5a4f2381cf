"""Training runs for the cockpit: each run's record (training.runs, docs/model-registry.md),
its metrics as `azaion status` reads them, its curves from Ultralytics' results.csv and, when
`azaion report` wrote one, its report and per-class AP."""

import json
from pathlib import Path
from typing import Any

from azaion_training.layout import Layout, is_safe_name
from azaion_training.report.plots import LOSS_COLUMNS, METRIC_COLUMNS, read_results_csv
from azaion_training.report.status import run_metrics
from azaion_training.training.runs import RunRecord, is_run_dir, list_runs

REPORT_DIR = "report"  # where `azaion report --run RUN` writes by default


def run_summary(record: RunRecord) -> dict[str, Any]:
    return {"run": record.run, "status": record.status, "mode": record.mode, "parent": record.parent,
            "model": record.model, "dataset": Path(record.dataset).name if record.dataset else None,
            "split_generation": record.split_generation, "started": record.started, "ended": record.ended,
            "epochs": record.epochs, "epochs_done": record.epochs_done, "metrics": run_metrics(record.path),
            "report": (record.path / REPORT_DIR / "index.html").is_file()}


def runs_newest_first(layout: Layout) -> list[dict[str, Any]]:
    return [run_summary(r) for r in reversed(list_runs(layout))]


def find_run_dir(layout: Layout, run: str) -> Path | None:
    """models/<run> for a run name the server resolves itself; None for anything else."""
    if not is_safe_name(run):
        return None
    run_dir = layout.models / run
    return run_dir if is_run_dir(run_dir) and layout.inside_root(run_dir) else None


def run_curves(run_dir: Path) -> dict[str, dict[str, list[float]]]:
    """{"losses": column -> values, "metrics": column -> values, "epoch": [...]} from results.csv."""
    results_csv = run_dir / "results.csv"
    results = read_results_csv(results_csv) if results_csv.is_file() else {}
    return {"epoch": results.get("epoch", []),
            "losses": {c: results[c] for c in LOSS_COLUMNS if c in results},
            "metrics": {c: results[c] for c in METRIC_COLUMNS if c in results}}


def run_report(run_dir: Path) -> dict[str, Any] | None:
    """report.json of the run's report (per-class AP among it), when there is one."""
    try:
        data = json.loads((run_dir / REPORT_DIR / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def report_file(layout: Layout, run: str, name: str) -> Path | None:
    """A file of the run's report folder, by a name the server resolves itself."""
    run_dir = find_run_dir(layout, run)
    if run_dir is None or not is_safe_name(name):
        return None
    path = run_dir / REPORT_DIR / name
    return path if path.is_file() and layout.inside_root(path) else None
