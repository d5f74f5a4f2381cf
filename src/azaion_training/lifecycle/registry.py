"""The model registry: every training run is a version (its `run.json`: lineage, hyperparameters,
metrics, exported ONNX), and every promotion, refusal and rollback is one line appended to
`models/published/<folder>/history.jsonl` (docs/model-registry.md). Nothing is overwritten:
"production" on a target is computed by replaying that history.

History keys on a target's identity (distribution.targets.target_identity): `local:<real
path>` or `azaion:<API URL>#bucket=<bucket>`, so two spellings of one folder share one history,
one production and one gate. Lines written before identities existed are read through the same
normalisation (`local:/abs/path` through realpath; a plain `azaion` as the current azaion
identity when the settings are given).

A publish and its history line form one recoverable step (publish_recorded): an intent record
`pending.json` is written first, then the publish (its manifest switched last), then the
history line, then the intent is removed; recover_pending() finishes or rolls back whatever a
crash left in between.
"""

import contextlib
import getpass
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from azaion_training.distribution.faults import fault_point
from azaion_training.distribution.targets import AZAION, target_identity, target_to_open
from azaion_training.errors import ConfigError, InputError, OperationFailed
from azaion_training.fsutil import append_jsonl, atomic_write_text, file_sha256, fsync_dir, read_jsonl
from azaion_training.layout import Layout, checked_name
from azaion_training.locks import InstanceLock
from azaion_training.logs import get_logger, log
from azaion_training.training.runs import RunRecord, find_run, list_runs

logger = get_logger("lifecycle.registry")

FOLDER = "models"  # the resource folder models are published to (publish_model's default)
NAME = "azaion.onnx"  # the resource name a promotion publishes under
HISTORY = "history.jsonl"
PENDING = "pending.json"
PROMOTE, REFUSED, ROLLBACK = "promote", "refused", "rollback"
PUBLISHED = (PROMOTE, ROLLBACK)  # the actions that published something


def target_key(target: str, settings: Any = None) -> str:
    """The target's identity as history records it (distribution.targets.target_identity):
    `local:` + the directory's resolved real path (symlinks, `..`, trailing slashes), or
    `azaion:<API URL>#bucket=<CDN bucket>`. Idempotent (an identity is returned as is).
    `azaion` needs the settings; without them it stays the plain legacy `azaion`."""
    if target == AZAION and settings is None:
        return AZAION
    return target_identity(settings, target)


def event_target(event: dict[str, Any], settings: Any = None) -> str | None:
    """The identity of an event's target, however the line spelled it."""
    raw = event.get("target")
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return target_key(raw, settings)
    except InputError:
        return raw


def same_target(key: str | None, other: str | None) -> bool:
    """Two identities name one target; a legacy plain `azaion` (read without settings) matches
    any azaion identity."""
    if key is None or other is None:
        return False
    if key == other:
        return True
    return AZAION in (key, other) and f"{AZAION}:" in (key[:7], other[:7])


def history_path(layout: Layout, folder: str = FOLDER) -> Path:
    return layout.published_dir(folder) / HISTORY


def pending_path(layout: Layout, folder: str = FOLDER) -> Path:
    return layout.published_dir(folder) / PENDING


def read_history(layout: Layout, folder: str = FOLDER, settings: Any = None) -> list[dict[str, Any]]:
    """Every event, oldest first, its `target` normalised to the target's identity. A last line
    torn by a crash mid-append (no newline, not JSON) is left out: its publish is still pending
    and recover_pending() appends it again."""
    events = read_jsonl(history_path(layout, folder), "the promotion history")
    for event in events:
        if isinstance(event, dict) and event.get("target"):
            event["target"] = event_target(event, settings)
    return events


def append_event(layout: Layout, event: dict[str, Any], folder: str = FOLDER) -> dict[str, Any]:
    """Append one event (stamped with time and operator) durably; returns it as written. An event
    with an `id` already in the history is not appended twice (the line there is returned)."""
    path = history_path(layout, folder)
    if event.get("id"):
        for existing in read_history(layout, folder):
            if existing.get("id") == event["id"]:
                return existing
    event = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "by": operator(), **event}
    append_jsonl(path, event)
    return event


def operator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def production_stack(events: list[dict[str, Any]], target: str, settings: Any = None) -> list[str]:
    """The runs promoted on `target` (a target string or an identity), oldest first, with
    rolled-back ones removed: the last one is production, the one before is what a rollback
    restores. Every spelling of the target counts as the target."""
    key = target_key(target, settings)
    stack: list[str] = []
    for event in events:
        if not same_target(event_target(event, settings), key):
            continue
        if event.get("action") == PROMOTE:
            stack.append(event["run"])
        elif event.get("action") == ROLLBACK and stack:
            stack.pop()
    return stack


def production(layout: Layout, target: str, folder: str = FOLDER, settings: Any = None) -> str | None:
    stack = production_stack(read_history(layout, folder, settings), target, settings)
    return stack[-1] if stack else None


def last_published(events: list[dict[str, Any]], target: str, name: str = NAME,
                   settings: Any = None) -> dict[str, Any] | None:
    """The last event that published `name` on `target` (what the target should serve now)."""
    key = target_key(target, settings)
    published = [e for e in events if e.get("action") in PUBLISHED and e.get("name", NAME) == name
                 and same_target(event_target(e, settings), key)]
    return published[-1] if published else None


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


def _current(events: list[dict[str, Any]], settings: Any = None) -> dict[str, str]:
    targets = {e["target"] for e in events if e.get("target")}
    return {t: stack[-1] for t in targets if (stack := production_stack(events, t, settings))}


def list_versions(layout: Layout, folder: str = FOLDER, settings: Any = None) -> list[dict[str, Any]]:
    """Every run, oldest first, with its lineage, metrics and promotion events."""
    events = read_history(layout, folder, settings)
    current = _current(events, settings)
    return [_version(record, events, current) for record in list_runs(layout)]


def show_version(layout: Layout, ref: str, folder: str = FOLDER, settings: Any = None) -> dict[str, Any]:
    """One run's full record plus its promotion events."""
    record = find_run(layout, ref)
    events = read_history(layout, folder, settings)
    version = _version(record, events, _current(events, settings))
    return {**record.to_dict(), "production_on": version["production_on"], "promotions": version["promotions"]}


# ---------------------------------------------------------------------------------------- recoverable publish
#
# publish_recorded: lock -> (recover a leftover intent) -> begin_publish (pending.json, durable)
# -> publish_model (parts under version-unique names, manifest switched last) -> finish_publish
# (history line, idempotent by the event id) -> intent removed. A crash between any two steps
# leaves pending.json; recover_pending() then asks the target which model it serves.

INTENT_KEYS = ("id", "action", "run", "target_key", "target", "name", "folder", "version", "onnx_sha256", "event")


def publish_lock(layout: Layout) -> InstanceLock:
    """Held for a whole recorded publish and for a recovery, so neither mistakes the other's
    intent for a crash's."""
    return InstanceLock(layout.lock_file("publish"), "publish of a model")


@contextlib.contextmanager
def _publishing(layout: Layout, wait_s: float = 30.0) -> Iterator[None]:
    """The publish lock, waiting up to `wait_s` for a recovery another command is running (brief)."""
    lock = publish_lock(layout)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            lock.acquire()
            break
        except OperationFailed:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        yield
    finally:
        lock.release()


def begin_publish(layout: Layout, intent: dict[str, Any]) -> Path:
    """Write the intent record durably before anything is published; refuses when one is pending."""
    missing = [key for key in INTENT_KEYS if intent.get(key) in (None, "")]
    if missing:
        raise ValueError(f"an intent record needs {', '.join(missing)}")
    folder = checked_name(intent["folder"], "folder")
    path = pending_path(layout, folder)
    if path.exists():
        raise OperationFailed(f"an earlier publish is still pending ({path}): run `azaion models list` to resolve it "
                              "first (it checks the target and completes or rolls it back)")
    created = not path.parent.is_dir()
    atomic_write_text(path, json.dumps(intent, ensure_ascii=False, indent=2, default=str) + "\n")
    if created:
        fsync_dir(path.parent.parent)
    return path


def finish_publish(layout: Layout, event: dict[str, Any], folder: str = FOLDER) -> dict[str, Any]:
    """Append the event (once: it carries the intent's id) and remove the intent; returns the line."""
    written = append_event(layout, event, folder)
    fault_point("history-appended")
    _drop_intent(layout, folder)
    return written


def _drop_intent(layout: Layout, folder: str) -> None:
    path = pending_path(layout, folder)
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)


def publish_recorded(settings: Any, layout: Layout, file: Path, target: str, event: dict[str, Any],
                     name: str = NAME, folder: str = FOLDER) -> dict[str, Any]:
    """Publish `file` as `name` on `target` and append `event` (action, run, ...) as one
    recoverable step; returns the appended event, with the target's identity, the published
    `version`, `name`, `folder`, `id` and the `manifest` in it. The file must still be the bytes
    `event["onnx_sha256"]` names (what the gate judged). The version is one above what the target
    serves, any part it holds, and what this history recorded for it."""
    from azaion_training.distribution.manifest import mac_key
    from azaion_training.distribution.publish import next_version, publish_model
    from azaion_training.distribution.targets import open_target

    file = Path(file)
    name = checked_name(name, "model name")
    folder = checked_name(folder, "folder")
    if not file.is_file():
        raise InputError(f"model file {file} not found")
    key = target_key(target, settings)
    with _publishing(layout):
        if pending_path(layout, folder).exists():
            _recover(settings, layout, folder)
        sha256 = file_sha256(file)
        if event.get("onnx_sha256") and event["onnx_sha256"] != sha256:
            raise OperationFailed(f"{file} changed since it was judged (sha256 {sha256}, judged "
                                  f"{event['onnx_sha256']}): nothing was published")
        events = read_history(layout, folder, settings)
        recorded = max((e.get("version") or 0 for e in events if e.get("action") in PUBLISHED
                        and e.get("name", NAME) == name and same_target(e.get("target"), key)), default=0)
        store = open_target(settings, target)
        try:
            version = max(next_version(store, folder, name, mac_key(settings)), recorded + 1)
        finally:
            store.close()
        full = {**event, "id": uuid.uuid4().hex, "target": key, "name": name, "folder": folder, "version": version,
                "onnx_sha256": sha256}
        begin_publish(layout, {"id": full["id"], "action": full.get("action"), "run": full.get("run"),
                               "target_key": key, "target": target_to_open(settings, target), "name": name,
                               "folder": folder, "version": version, "onnx_sha256": sha256,
                               "started": datetime.now(UTC).isoformat(timespec="seconds"), "event": full})
        fault_point("intent-written")
        try:
            result = publish_model(settings, file, name=name, folder=folder, target=target,
                                   source_run=full.get("run"), version=version)
        except Exception:
            _recover(settings, layout, folder, failed=True)  # nothing switched: drop the intent now, not later
            raise
        fault_point("published")
        return finish_publish(layout, {**full, "manifest": result.manifest}, folder)


def recover_pending(settings: Any, layout: Layout, folder: str = FOLDER) -> str | None:
    """Complete or roll back a publish a crash interrupted (see publish_recorded). When the
    target serves the intent's version and bytes, the switch happened: the history line is
    appended (once) and the steps after the switch are redone. Otherwise the old model is still
    served: the intent is dropped and that version's orphan parts deleted (best effort).
    Returns what was done, also logged at WARNING (None: nothing pending, or a publish is in
    progress right now)."""
    if not pending_path(layout, folder).is_file():
        return None
    try:
        lock = publish_lock(layout).acquire()
    except OperationFailed:
        log(logger, logging.INFO, "a publish is in progress: its intent record is not touched", folder=folder)
        return None
    try:
        return _recover(settings, layout, folder)
    finally:
        lock.release()


def _read_intent(layout: Layout, folder: str) -> dict[str, Any] | None:
    path = pending_path(layout, folder)
    try:
        intent = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        intent = None
    if not isinstance(intent, dict) or any(intent.get(key) in (None, "") for key in INTENT_KEYS):
        raise InputError(f"{path} is not an intent record (it is written atomically, so it was edited): restore it, "
                         "or check which model the target serves, append its history line by hand and delete it")
    return intent


def _recover(settings: Any, layout: Layout, folder: str, failed: bool = False) -> str | None:
    from azaion_training.distribution.manifest import ManifestRefused, mac_key, manifest_version
    from azaion_training.distribution.publish import after_switch, prune, served_manifest
    from azaion_training.distribution.targets import open_target

    intent = _read_intent(layout, folder)
    if intent is None:
        return None
    name, version = checked_name(intent["name"], "model name"), intent["version"]
    half = "failed" if failed else "half-done"
    what = f"{intent['action']} of {intent['run']} on {intent['target_key']} (version {version})"
    try:
        store = open_target(settings, intent["target"])
    except (ConfigError, InputError) as exc:
        return _pending_message(what, exc)
    try:
        try:
            manifest = served_manifest(store, folder, name, mac_key(settings))
        except ManifestRefused:
            manifest = None  # not the manifest this publish wrote
        served = manifest_version(manifest) if manifest else None
        if served == version and manifest["plaintext"]["sha256"] == intent["onnx_sha256"]:
            written = append_event(layout, {**intent["event"], "manifest": manifest}, folder)
            after_switch(store, layout, manifest)
            message = (f"completed a {half} {what}: the target serves it; the history records it "
                       f"(event {written['id']})")
        else:
            if served is None or served < version:
                prune(store, folder, name, keep_from=0, only=version)  # parts no manifest names
            if served is not None and served > version:
                state = f"the target serves a later version {served} (published by other means)"
            else:
                state = "the switch did not happen, the target still serves " + (
                    "nothing" if served is None else f"version {served}")
            message = f"rolled back a {half} {what}: {state}; the history is unchanged"
    except (OperationFailed, ConfigError, OSError) as exc:
        return _pending_message(what, exc)
    finally:
        store.close()
    _drop_intent(layout, folder)
    log(logger, logging.WARNING, message, folder=folder)
    return message


def _pending_message(what: str, exc: Exception) -> str:
    message = (f"a half-done {what} is still pending: its target cannot be checked now ({exc}); the next "
               "promote, rollback, cycle, `models list` or `status` that can reach it resolves it")
    log(logger, logging.WARNING, message)
    return message
