"""The model registry: every training run is a version (its `run.json`: lineage, hyperparameters,
metrics, exported ONNX), and every promotion, refusal and rollback is one line appended to
`models/published/<folder>/history.jsonl` (docs/model-registry.md). Nothing is overwritten:
"production" on a target is computed by replaying that history.
"""

import getpass
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from azaion_training.errors import InputError
from azaion_training.fsutil import fsync_dir
from azaion_training.layout import Layout, checked_name
from azaion_training.training.runs import RunRecord, find_run, list_runs

FOLDER = "models"  # the resource folder models are published to (publish_model's default)
HISTORY = "history.jsonl"
PROMOTE, REFUSED, ROLLBACK = "promote", "refused", "rollback"


def target_key(target: str) -> str:
    """The target as history records it: `azaion`, or `local:` with an absolute directory."""
    if target.startswith("local:") and len(target) > len("local:"):
        return f"local:{Path(target.removeprefix('local:')).expanduser().absolute()}"
    if target != "azaion":
        raise InputError(f"unknown target {target!r}: use 'azaion' (Azaion API + CDN) or 'local:DIR'")
    return target


def history_path(layout: Layout, folder: str = FOLDER) -> Path:
    return layout.models / "published" / checked_name(folder, "folder") / HISTORY


def read_history(layout: Layout, folder: str = FOLDER) -> list[dict[str, Any]]:
    path = history_path(layout, folder)
    if not path.is_file():
        return []
    events = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except ValueError:
            raise InputError(f"{path}:{number} is not a JSON line: the promotion history is damaged; "
                             "fix or remove that line by hand") from None
    return events


def append_event(layout: Layout, event: dict[str, Any], folder: str = FOLDER) -> dict[str, Any]:
    """Append one event (stamped with time and operator) durably; returns it as written."""
    event = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "by": operator(), **event}
    path = history_path(layout, folder)
    created = not path.parent.is_dir()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(event, ensure_ascii=False, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    if created:
        fsync_dir(path.parent.parent)
    return event


def operator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def production_stack(events: list[dict[str, Any]], target: str) -> list[str]:
    """The runs promoted on `target`, oldest first, with rolled-back ones removed: the last one is
    production, the one before is what a rollback restores."""
    key = target_key(target)
    stack: list[str] = []
    for event in events:
        if event.get("target") != key:
            continue
        if event.get("action") == PROMOTE:
            stack.append(event["run"])
        elif event.get("action") == ROLLBACK and stack:
            stack.pop()
    return stack


def production(layout: Layout, target: str, folder: str = FOLDER) -> str | None:
    stack = production_stack(read_history(layout, folder), target)
    return stack[-1] if stack else None


def _version(record: RunRecord, events: list[dict[str, Any]], current: dict[str, str]) -> dict[str, Any]:
    return {
        "run": record.run, "status": record.status, "mode": record.mode,
        "dataset": Path(record.dataset).name if record.dataset else None,
        "split_generation": record.split_generation, "parent": record.parent,
        "base": None if record.parent else record.model or None,
        "mAP50": record.metrics.get("mAP50"), "mAP50-95": record.metrics.get("mAP50-95"),
        "onnx_sha256": record.onnx_sha256, "started": record.started,
        "production_on": sorted(t for t, run in current.items() if run == record.run),
        "promotions": [e for e in events if e.get("run") == record.run],
    }


def _current(events: list[dict[str, Any]]) -> dict[str, str]:
    targets = {e["target"] for e in events if e.get("target")}
    return {t: stack[-1] for t in targets if (stack := production_stack(events, t))}


def list_versions(layout: Layout, folder: str = FOLDER) -> list[dict[str, Any]]:
    """Every run, oldest first, with its lineage, metrics and promotion events."""
    events = read_history(layout, folder)
    current = _current(events)
    return [_version(record, events, current) for record in list_runs(layout)]


def show_version(layout: Layout, ref: str, folder: str = FOLDER) -> dict[str, Any]:
    """One run's full record plus its promotion events."""
    record = find_run(layout, ref)
    events = read_history(layout, folder)
    version = _version(record, events, _current(events))
    return {**record.to_dict(), "production_on": version["production_on"], "promotions": version["promotions"]}
