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


def target_key(target: str, settings: Any = None) -> str:
    """The target's identity as history records it: `local:` with the directory's resolved real
    path (symlinks, `..` and trailing slashes resolved, so two spellings of one folder are one
    target), or `azaion` (the Azaion API + CDN of this configuration)."""
    if target.startswith("local:") and len(target) > len("local:"):
        return f"local:{os.path.realpath(Path(target.removeprefix('local:')).expanduser())}"
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


def production_stack(events: list[dict[str, Any]], target: str, settings: Any = None) -> list[str]:
    """The runs promoted on `target`, oldest first, with rolled-back ones removed: the last one is
    production, the one before is what a rollback restores."""
    key = target_key(target, settings)
    stack: list[str] = []
    for event in events:
        if not event.get("target") or target_key(event["target"]) != key:
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


# ---------------------------------------------------------------------------------------- recoverable publish


def pending_path(layout: Layout, folder: str = FOLDER) -> Path:
    return history_path(layout, folder).with_name("pending.json")


def publish_recorded(settings: Any, layout: Layout, file: Path, target: str, event: dict[str, Any],
                     name: str, folder: str = FOLDER) -> dict[str, Any]:
    """Publish `file` and append `event` as one recoverable step: an intent record first, then the
    publish (its manifest switched last), then the history line, then the intent is removed.
    A crash anywhere leaves the intent for recover_pending()."""
    import uuid

    from azaion_training.distribution.publish import publish_model
    from azaion_training.fsutil import atomic_write_text, file_sha256

    event = {**event, "id": uuid.uuid4().hex, "onnx_sha256": event.get("onnx_sha256") or file_sha256(file)}
    intent = {"target": target, "name": name, "folder": folder, "event": event}
    atomic_write_text(pending_path(layout, folder), json.dumps(intent, default=str) + "\n")
    publish_model(settings, file, name=name, folder=folder, target=target, source_run=event.get("run"))
    written = append_event(layout, event, folder)
    pending_path(layout, folder).unlink()
    fsync_dir(pending_path(layout, folder).parent)
    return written


def recover_pending(settings: Any, layout: Layout, folder: str = FOLDER) -> str | None:
    """Complete or roll back a publish that a crash interrupted (see publish_recorded): when the
    target serves the intent's model, the history line is appended (once); otherwise the old model
    is still served and the intent is dropped. Returns what was done (None: nothing pending)."""
    import logging

    from azaion_training.logs import get_logger, log

    path = pending_path(layout, folder)
    if not path.is_file():
        return None
    intent = json.loads(path.read_text(encoding="utf-8"))
    event = intent["event"]
    served = _served_sha256(settings, intent["target"], intent["folder"], intent["name"])
    what = f"{event.get('action')} of {event.get('run')} on {event.get('target')}"
    if served == event.get("onnx_sha256"):
        if not any(e.get("id") == event["id"] for e in read_history(layout, folder)):
            append_event(layout, event, folder)
        message = f"completed a half-done {what}: the target serves it, the history now records it"
    else:
        message = f"rolled back a half-done {what}: the target still serves the previous model"
    path.unlink()
    log(get_logger("lifecycle.registry"), logging.WARNING, message)
    return message


def _served_sha256(settings: Any, target: str, folder: str, name: str) -> str | None:
    """The plaintext SHA-256 the target's manifest names (None: no manifest there)."""
    from azaion_training.distribution.fetch import served_plaintext_sha256

    return served_plaintext_sha256(settings, name, target, folder)
