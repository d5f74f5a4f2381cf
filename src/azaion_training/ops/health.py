"""`azaion health`: the checks an operator's cron job or a container health check runs.

Each check returns one `CheckResult`; the report is healthy when no check failed (a warning
is worth a look, not an alert). Checks: configuration, broker TCP reachability, free disk on
the data root, GPU (required only when `TRAINING_DEVICE` names one), and consumer progress
(the committed offset advanced since the previous health run, was committed recently, or
nothing is pending on the stream), the age of the newest backup snapshot (ops/backup.py), and
the field recall week over week (analysis/field.py, a warning only).
"""

import asyncio
import shutil
import socket
import sqlite3
import subprocess  # nosec B404 # one fixed argv (nvidia-smi), no shell
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from azaion_training.errors import AzaionError, ConfigError
from azaion_training.layout import Layout
from azaion_training.queue.offsets import read_offset_record, write_offset_record
from azaion_training.settings import Settings, load_settings, overridden

Status = Literal["ok", "warn", "fail", "n/a"]
CHECK_NAMES = ("config", "broker", "disk", "gpu", "progress", "backup", "field")
PENDING_PROBE_S = 3.0
MIN_TRAINING_VRAM_MIB = 24 * 1024  # training needs >= 24 GB of GPU memory (the training host's stated minimum)


@dataclass
class CheckResult:
    name: str
    status: Status
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class HealthOptions:
    checks: tuple[str, ...] = CHECK_NAMES
    # Thresholds: None takes the setting (settings.health, the HEALTH_* variables).
    disk_warn_pct: float | None = None
    disk_fail_pct: float | None = None
    offset_max_age_min: float | None = None
    broker_timeout_s: float | None = None
    field_recall_drop_alert: float | None = None
    # False for onlookers (the cockpit): compare with the last recorded reading, record nothing,
    # so the cron job's "advanced since the previous run" keeps meaning its own previous run
    record_reading: bool = True


@dataclass
class HealthReport:
    checked_at: str
    checks: list[CheckResult]

    @property
    def healthy(self) -> bool:
        return all(check.status != "fail" for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "checked_at": self.checked_at,
                "checks": [asdict(check) for check in self.checks]}


def run_health(config: Path | None, options: HealthOptions) -> HealthReport:
    checked_at = datetime.now(UTC)
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        results = [CheckResult("config", "fail", str(exc))]
        results += [CheckResult(name, "n/a", "not checked: the settings could not be loaded")
                    for name in options.checks if name != "config"]
        return HealthReport(checked_at.isoformat(timespec="seconds"), results)
    thresholds = overridden(settings.health, **{k: v for k, v in asdict(options).items()
                                                if k not in ("checks", "record_reading")})
    options = replace(options, **thresholds.model_dump())
    checks: dict[str, Callable[[], CheckResult]] = {
        "config": lambda: CheckResult("config", "ok", f"settings valid ({config or 'environment and defaults'})"),
        "broker": lambda: check_broker(settings, options.broker_timeout_s),
        "disk": lambda: check_disk(Layout(settings.paths).root, options.disk_warn_pct, options.disk_fail_pct),
        "gpu": lambda: check_gpu(settings.training.device),
        "progress": lambda: check_progress(settings, options, checked_at),
        "backup": lambda: _check_backup(settings, checked_at),
        "field": lambda: check_field(settings, options.field_recall_drop_alert),
    }
    return HealthReport(checked_at.isoformat(timespec="seconds"), [checks[name]() for name in options.checks])


def _check_backup(settings: Settings, now: datetime) -> CheckResult:
    from azaion_training.ops.backup import check_backup  # boto3 only for an S3 destination

    return check_backup(settings, now)


def check_field(settings: Settings, threshold: float) -> CheckResult:
    """Warn when a class's field recall fell by more than `threshold` week over week (analysis/field.py)."""
    from azaion_training.field_accuracy import recall_drops, tabulate_weeks

    try:
        rows = tabulate_weeks(settings)
    except (AzaionError, sqlite3.Error) as exc:  # a damaged index: worth a look, not a crash of every check
        return CheckResult("field", "warn", f"cannot read the annotation index: {exc}")
    weeks = sorted({row.group for row in rows})
    data: dict[str, Any] = {"weeks": weeks[-2:], "threshold": threshold}
    if len(weeks) < 2:
        return CheckResult("field", "ok", "fewer than two weeks of judged proposals: nothing to compare", data)
    drops = recall_drops(rows, threshold)
    data["drops"] = [{"class": d.cls, "name": d.name, "previous": round(d.previous_recall, 4),
                      "recall": round(d.recall, 4)} for d in drops]
    if drops:
        named = ", ".join(f"{d.name} {d.previous_recall:.2f} -> {d.recall:.2f}" for d in drops)
        return CheckResult("field", "warn", f"field recall fell by more than {threshold:g} from {weeks[-2]} to "
                           f"{weeks[-1]}: {named} (see `azaion field report --by week`)", data)
    return CheckResult("field", "ok", f"field recall {weeks[-2]} -> {weeks[-1]}: no class fell by more than "
                       f"{threshold:g}", data)


def broker_reachable(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def check_broker(settings: Settings, timeout_s: float) -> CheckResult:
    host, port = settings.rabbitmq.host, settings.rabbitmq.port
    data = {"host": host, "port": port}
    started = time.monotonic()
    if not broker_reachable(host, port, timeout_s):
        return CheckResult("broker", "fail", f"{host}:{port} unreachable (TCP connect failed within {timeout_s:g} s); "
                           "check that RabbitMQ runs with the stream plugin and RABBITMQ_HOST/RABBITMQ_PORT", data)
    data["connect_ms"] = round((time.monotonic() - started) * 1000, 1)
    return CheckResult("broker", "ok", f"{host}:{port} reachable", data)


def disk_used_pct(path: Path) -> float:
    """Used share of the filesystem as `df` reports it: used / (used + available to users)."""
    usage = shutil.disk_usage(path)
    return 100.0 * usage.used / (usage.used + usage.free) if usage.used + usage.free else 100.0


def check_disk(root: Path, warn_pct: float, fail_pct: float) -> CheckResult:
    if not root.is_dir():
        return CheckResult("disk", "fail", f"data root {root} does not exist: set AZAION_ROOT_DIR or run `azaion init`",
                           {"root": str(root)})
    used = disk_used_pct(root)
    free_gib = shutil.disk_usage(root).free / 2**30
    data = {"root": str(root), "used_pct": round(used, 1), "free_gib": round(free_gib, 1),
            "warn_pct": warn_pct, "fail_pct": fail_pct}
    detail = f"{root}: {used:.1f} % used, {free_gib:.1f} GiB free"
    if used > fail_pct:
        return CheckResult("disk", "fail", f"{detail} (critical above {fail_pct:g} %): free space now", data)
    if used > warn_pct:
        return CheckResult("disk", "warn", f"{detail} (warning above {warn_pct:g} %)", data)
    return CheckResult("disk", "ok", detail, data)


def gpu_expected(device: str) -> bool:
    """TRAINING_DEVICE "" lets Ultralytics pick (GPU if any, else CPU): only an explicit GPU index requires one."""
    return device.strip().lower() not in ("", "cpu", "mps")


def check_gpu(device: str) -> CheckResult:
    expected = gpu_expected(device)
    data: dict[str, Any] = {"expected": expected, "device": device}
    smi = shutil.which("nvidia-smi")
    if smi is None:
        if expected:
            return CheckResult("gpu", "fail", f"TRAINING_DEVICE={device} asks for a GPU but nvidia-smi is not "
                               "installed: install the NVIDIA driver or set TRAINING_DEVICE=cpu", data)
        return CheckResult("gpu", "n/a", "no GPU expected (TRAINING_DEVICE is not a GPU index) and none found", data)
    try:
        result = subprocess.run([smi, "--query-gpu=index,name,memory.total,memory.used",  # nosec B603
                                 "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        result = subprocess.CompletedProcess([smi], 1, "", str(exc))
    gpus = _parse_nvidia_smi(result.stdout) if result.returncode == 0 else []
    data["gpus"] = gpus
    if not gpus:
        reason = (result.stderr or result.stdout).strip().splitlines()[:1] or ["no GPU listed"]
        return CheckResult("gpu", "fail" if expected else "warn",
                           f"nvidia-smi failed (exit {result.returncode}): {reason[0]}", data)
    summary = "; ".join(f"{g['index']}: {g['name']} {g['memory_used_mib']}/{g['memory_total_mib']} MiB used"
                        for g in gpus)
    if expected and max(g["memory_total_mib"] for g in gpus) < MIN_TRAINING_VRAM_MIB:
        return CheckResult("gpu", "warn", f"{summary} (training needs >= 24 GB of GPU memory)", data)
    return CheckResult("gpu", "ok", summary, data)


def _parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    gpus = []
    for line in text.strip().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 4 and parts[2].isdigit() and parts[3].isdigit():
            gpus.append({"index": parts[0], "name": parts[1], "memory_total_mib": int(parts[2]),
                         "memory_used_mib": int(parts[3])})
    return gpus


# ---------------------------------------------------------------- consumer progress


def check_progress(settings: Settings, options: HealthOptions, now: datetime) -> CheckResult:
    layout = Layout(settings.paths)
    stream = settings.rabbitmq.queue_name
    current = read_offset_record(layout.offset_file)
    previous_file = layout.health_reading
    previous = read_offset_record(previous_file)
    if current is not None and layout.queue_state.is_dir() and options.record_reading:
        write_offset_record(previous_file, current.stream, current.offset, now)
    committed = current.offset if current else None
    data: dict[str, Any] = {"stream": stream, "offset": committed,
                            "previous_offset": previous.offset if previous else None}
    if current is not None:
        if previous is not None and current.offset > previous.offset:
            return CheckResult("progress", "ok", f"offset advanced {previous.offset} -> {current.offset}", data)
        age_min = (now - current.updated_at).total_seconds() / 60 if current.updated_at else None
        data["age_min"] = round(age_min, 1) if age_min is not None else None
        if age_min is not None and age_min <= options.offset_max_age_min:
            return CheckResult("progress", "ok", f"offset {current.offset} committed {age_min:.0f} min ago", data)
    pending = pending_after(settings, committed)
    data["pending"] = pending
    position = f"offset {committed}" if committed is not None else "no offset committed yet"
    if pending is False:
        return CheckResult("progress", "ok", f"{position}; nothing pending on stream {stream}", data)
    if pending is True:
        return CheckResult("progress", "fail", f"{position}, not advancing, while messages are pending on stream "
                           f"{stream}: check that `azaion queue consume` runs and read its logs", data)
    return CheckResult("progress", "warn", f"{position}, not advanced within {options.offset_max_age_min:g} min; "
                       "cannot tell whether messages are pending (broker unreachable or no RABBITMQ_PASSWORD)", data)


def pending_after(settings: Settings, committed: int | None) -> bool | None:
    """Whether the stream holds a message after `committed` (True/False), or None when the
    broker cannot be asked. Reads with a throwaway subscription; stores no offset."""
    rabbit = settings.rabbitmq
    if rabbit.password is None or not broker_reachable(rabbit.host, rabbit.port, 3.0):
        return None
    try:
        return asyncio.run(asyncio.wait_for(_probe_stream(settings, committed), PENDING_PROBE_S + 15))
    except Exception:  # noqa: BLE001 - any client failure means "cannot tell", reported as a warning
        return None


async def _probe_stream(settings: Settings, committed: int | None) -> bool:
    from rstream import ConsumerOffsetSpecification, OffsetType

    from azaion_training.queue.broker import stream_consumer

    rabbit = settings.rabbitmq
    found = asyncio.Event()
    start = 0 if committed is None else committed + 1

    async def on_message(_message: object, context: Any) -> None:
        if context.offset >= start:  # a chunk may begin before the requested offset
            found.set()

    consumer = stream_consumer(rabbit, "azaion-health")
    try:
        await consumer.start()
        if not await consumer.stream_exists(rabbit.queue_name):
            return False
        await consumer.subscribe(rabbit.queue_name, on_message,
                                 offset_specification=ConsumerOffsetSpecification(OffsetType.OFFSET, start))
        try:
            await asyncio.wait_for(found.wait(), PENDING_PROBE_S)
        except TimeoutError:
            return False
        return True
    finally:
        await consumer.close()
