"""Apply stream messages to the data tree (design.md §3, Routing and Offsets).

Every message is applied idempotently: each annotation's index row remembers the offset that
last changed it, so a message seen again (at-least-once delivery, a replay) is skipped, and
every file operation converges (write-then-rename, rename-over) so re-applying a message whose
effects were cut short by a crash finishes it. Writes are batched: files are renamed into
place at once (never visible half-written) and made durable together in `commit()`, which
then commits the index and only then records the offset (group commit).
"""

import ctypes
import ctypes.util
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

from azaion_training.annotation_index import AnnotationIndex, IndexEntry
from azaion_training.fsutil import TEMP_PREFIX, atomic_write_text, fsync_dir, remove_stale_temp_files
from azaion_training.layout import Area, Layout
from azaion_training.logs import get_logger, log
from azaion_training.queue.dumpfile import iter_dump
from azaion_training.queue.messages import (
    IMAGE_EXTENSIONS,
    AnnotationBulkMessage,
    AnnotationMessage,
    AnnotationStatus,
    Limits,
    MessageRejected,
    decode,
)
from azaion_training.settings import Settings

logger = get_logger("queue")
COMMIT_EVERY = 256  # messages per group commit (the consumer also commits on a timer)
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if os.name == "posix" else None


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class IngestCounts:
    applied: int = 0
    skipped: int = 0  # already applied earlier (duplicates, replays)
    rejected: Counter = field(default_factory=Counter)  # reason -> count
    by_status: Counter = field(default_factory=Counter)  # Created/Edited/Validated/Deleted -> applied
    last_offset: int | None = None

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> dict:
        return {"applied": self.applied, "skipped": self.skipped, "rejected": self.rejected_total,
                "rejected_by_reason": dict(self.rejected), "by_status": dict(self.by_status),
                "last_offset": self.last_offset}


@dataclass
class ReplayResult:
    records: int
    applied: int
    skipped: int
    rejected: dict[str, int]
    created: int
    edited: int
    validated: int
    deleted: int

    @classmethod
    def from_counts(cls, records: int, counts: IngestCounts) -> "ReplayResult":
        by = counts.by_status
        return cls(records, counts.applied, counts.skipped, dict(counts.rejected), by["Created"], by["Edited"],
                   by["Validated"], by["Deleted"])


class AnnotationHandler:
    """Applies stream entries to the tree under one open index transaction per batch."""

    def __init__(self, layout: Layout, limits: Limits, stream: str, record_offset: bool = True):
        self.layout = layout
        self.limits = limits
        self.stream = stream
        self.record_offset = record_offset  # False for dump replays: their offsets are not this stream's
        self.counts = IngestCounts()
        self.pending = 0  # messages handled since the last commit
        self._last_handled: int | None = None
        self._last_time: str | None = None
        self._touched: set[Path] = set()
        self._dirs: set[Path] = set()
        self._areas = {"data": layout.data, "seed": layout.seed, "deleted": layout.deleted}
        layout.init()
        for directory in self._work_dirs():
            remove_stale_temp_files(directory)
        self.index = AnnotationIndex(layout.index_db)

    def _work_dirs(self) -> list[Path]:
        dirs = [d for area in self._areas.values() for d in area.directories()]
        return [*dirs, self.layout.rejected, self.layout.queue_state]

    def close(self) -> None:
        self.index.rollback()
        self.index.close()

    # ------------------------------------------------------------ one message

    def handle(self, offset: int, data: bytes, timestamp_ms: int = 0) -> str:
        """Apply one stream entry; returns 'applied', 'skipped' or 'rejected'. Raises only for
        failures of this machine (disk full, permissions): the caller retries from the last commit."""
        if not self.index.db.in_transaction:
            self.index.begin()
        try:
            message = self._decode(data)
            outcome = self._apply(message, offset)
        except MessageRejected as exc:
            outcome = self._quarantine(offset, data, exc, timestamp_ms)
        self.counts.last_offset = self._last_handled = offset
        self._last_time = (datetime.fromtimestamp(timestamp_ms / 1000, UTC).isoformat(timespec="milliseconds")
                           if timestamp_ms else now_iso())
        self.pending += 1
        return outcome

    def _decode(self, data: bytes) -> AnnotationMessage | AnnotationBulkMessage:
        try:
            return decode(data, self.limits)
        except MessageRejected:
            raise
        except Exception as exc:  # a decoder surprise is still bad input, never a crash
            raise MessageRejected("undecodable", f"{type(exc).__name__}: {str(exc)[:200]}") from None

    def _apply(self, message: AnnotationMessage | AnnotationBulkMessage, offset: int) -> str:
        if isinstance(message, AnnotationMessage):
            applied = self._save_annotation(message, offset)
        else:
            results = [self._move_name(name, message.status, offset) for name in message.annotation_names]
            applied = any(results) or not results
        if not applied:
            self.counts.skipped += 1
            return "skipped"
        self.counts.applied += 1
        self.counts.by_status[message.status.name] += 1
        return "applied"

    def _save_annotation(self, message: AnnotationMessage, offset: int) -> bool:
        name = message.name
        entry = self.index.get(name)
        if entry is not None and entry.stream_offset >= offset:
            return False  # applied before (a duplicate or a replay)
        extensions = probe_extensions(entry, message.image_extension)
        target_name = "data" if message.created_role.is_validator() else "seed"
        target = self._areas[target_name]
        if message.image is None and not any(self._images(a, name, extensions) for a in self._areas.values()):
            raise MessageRejected("missing-image", f"{message.status.name} {name} carries no image and none is "
                                  "stored", message.status)
        for area in self._areas.values():
            if area is not target:
                self._move_files(area, target, name, extensions)
        if message.image is not None:
            image_path = target.image_path(name, message.image_extension)
            self._write(image_path, message.image)
            for stale in self._images(target, name, extensions):
                if stale != image_path:  # the edit replaced the image under another extension
                    stale.unlink()
                    self._dirs.add(stale.parent)
        self._write(target.label_path(name), message.label_text().encode())
        image = self._images(target, name, extensions)
        self.index.upsert(IndexEntry(
            name=name, area=target_name, source_media=message.original_media_name, role=int(message.created_role),
            source=int(message.source), created_date=message.created_date.isoformat(),
            media_time_us=int(message.time.total_seconds() * 1_000_000),
            image_ext=image[0].suffix if image else message.image_extension,
            status=int(message.status), stream_offset=offset, updated_at=now_iso()))
        return True

    def _move_name(self, name: str, status: AnnotationStatus, offset: int) -> bool:
        """Validated: seed -> data. Deleted: data/seed -> deleted. Absent names are a logged no-op."""
        entry = self.index.get(name)
        if entry is not None and entry.stream_offset >= offset:
            return False
        extensions = probe_extensions(entry)
        target_name = "data" if status is AnnotationStatus.Validated else "deleted"
        target = self._areas[target_name]
        sources = ["seed"] if status is AnnotationStatus.Validated else ["data", "seed"]
        moved = [source for source in sources if self._move_files(self._areas[source], target, name, extensions)]
        if not moved and not (self._images(target, name, extensions) or target.label_path(name).exists()):
            log(logger, logging.INFO, f"{status.name}: annotation not found, nothing to do", name=name, offset=offset)
            return False
        self.index.set_area(name, target_name, int(status), offset, now_iso())
        return True

    # ------------------------------------------------------------ files

    def _images(self, area: Area, name: str, extensions: tuple[str, ...]) -> list[Path]:
        return [path for ext in extensions if (path := area.image_path(name, ext)).exists()]

    def _move_files(self, source: Area, target: Area, name: str, extensions: tuple[str, ...]) -> bool:
        """Rename the name's image(s) and label from `source` to `target`, replacing what is there."""
        paths = [*self._images(source, name, extensions), source.label_path(name)]
        moved = False
        for path in paths:
            destination = (target.labels if path.parent == source.labels else target.images) / path.name
            try:
                os.replace(path, destination)
            except FileNotFoundError:
                continue
            self._touched.add(destination)
            self._dirs.update((path.parent, destination.parent))
            moved = True
        return moved

    def _write(self, path: Path, data: bytes) -> None:
        """Write a temp file beside `path` and rename it into place (never visible half-written).
        Leaner than fsutil.atomic_writer, which costs twice the time per small file: no fsync
        (the whole group is made durable in commit()), a fixed temp name (one writer: the
        instance lock; leftovers are removed at start), the umask applied by open()."""
        temp = path.with_name(TEMP_PREFIX + path.name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        try:
            fd = os.open(temp, flags, 0o666)
        except FileNotFoundError:  # the directory was removed while we ran
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(temp, flags, 0o666)
        try:  # a failed write leaves only the dot-file temp (overwritten next time, removed at start)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(temp, path)
        self._touched.add(path)
        self._dirs.add(path.parent)

    def _quarantine(self, offset: int, data: bytes, exc: MessageRejected, timestamp_ms: int) -> str:
        status = exc.status.name if exc.status else None
        bin_path, json_path = self.layout.rejected / f"{offset}.bin", self.layout.rejected / f"{offset}.json"
        if json_path.exists() and bin_path.exists() and bin_path.read_bytes() == data:
            self.counts.skipped += 1  # quarantined before (a replay): keep the first record as it is
            return "skipped"
        self._write(bin_path, data)
        record = {"reason": exc.reason, "detail": exc.detail, "offset": offset, "status": status,
                  "stream": self.stream, "size": len(data), "received_at": now_iso(),
                  "broker_timestamp_ms": timestamp_ms or None}
        self._write(json_path, (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode())
        self.counts.rejected[exc.reason] += 1
        log(logger, logging.WARNING, f"message rejected: {exc.detail}", reason=exc.reason, offset=offset,
            status=status, file=str(bin_path))
        return "rejected"

    # ------------------------------------------------------------ group commit

    def commit(self) -> int | None:
        """Make everything handled so far durable, then the index, then the offset. Returns the
        committed offset (None when nothing was pending)."""
        if not self.pending:
            return None
        self._make_durable()
        if self.record_offset:
            self.index.set_meta("last_offset", str(self._last_handled))
            self.index.set_meta("last_message_time", self._last_time or now_iso())
        self.index.commit()
        if self.record_offset:
            write_offset_file(self.layout.offset_file, self.stream, self._last_handled)
        self._touched.clear()
        self._dirs.clear()
        self.pending = 0
        return self._last_handled

    def _make_durable(self) -> None:
        """One syncfs for the whole batch where the OS has it (one journal commit instead of one
        per file); otherwise fsync every written file and directory."""
        if _syncfs(self.layout.root):
            return
        for path in self._touched:
            _fsync_file(path)
        for directory in self._dirs:
            fsync_dir(directory)

    def abandon(self) -> None:
        """Drop the open batch's index changes after a failure (files converge when re-applied)."""
        self.index.rollback()
        self._touched.clear()
        self._dirs.clear()
        self.pending = 0


def probe_extensions(entry: IndexEntry | None, *message_extension: str) -> tuple[str, ...]:
    """Image extensions to look for: the one the index recorded and the message's; every known one
    when neither is known (a name the index has never seen in a bulk message)."""
    known = [entry.image_ext] if entry is not None and entry.image_ext else []
    return tuple(dict.fromkeys([*known, *message_extension])) or IMAGE_EXTENSIONS


def _syncfs(path: Path) -> bool:
    """syncfs(2) on the filesystem holding `path`: flushes its data and metadata, then returns."""
    if not hasattr(os, "O_DIRECTORY") or _LIBC is None or not hasattr(_LIBC, "syncfs"):
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _LIBC.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), f"syncfs failed on {path}")
    finally:
        os.close(fd)
    return True


def _fsync_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # moved on within the batch; its new place is tracked too
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- offsets


def write_offset_file(path: Path, stream: str, offset: int) -> None:
    atomic_write_text(path, yaml.safe_dump({"stream": stream, "offset": int(offset), "updated_at": now_iso()},
                                           sort_keys=False))


@dataclass(frozen=True)
class OffsetRecord:
    """offset.yaml as the consumer writes it; `azaion status` and `azaion health` read it too."""

    stream: str
    offset: int
    updated_at: datetime | None


def read_offset_record(path: Path) -> OffsetRecord | None:
    """The record in an offset file; None when absent, unreadable or without an integer offset."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("offset"), int):
        return None
    return OffsetRecord(str(data.get("stream") or ""), data["offset"], _as_datetime(data.get("updated_at")))


def _as_datetime(value: object) -> datetime | None:
    if isinstance(value, str):  # YAML loads an ISO timestamp as a datetime or leaves it a string
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def read_offset_file(path: Path, stream: str) -> int | None:
    """The offset recorded in offset.yaml for `stream`; None when absent, unreadable or for another stream."""
    record = read_offset_record(path)
    if record is None:
        if Path(path).exists():
            log(logger, logging.WARNING, "offset file unreadable or without an integer 'offset'; ignoring it",
                file=str(path))
        return None
    if record.stream not in ("", stream):
        log(logger, logging.WARNING, "offset file belongs to another stream; ignoring it", file=str(path),
            stream=record.stream)
        return None
    return record.offset


def read_index_offset(layout: Layout) -> int | None:
    if not layout.index_db.is_file():
        return None
    index = AnnotationIndex(layout.index_db, readonly=True)
    try:
        value = index.get_meta("last_offset")
    finally:
        index.close()
    return int(value) if value is not None else None


def committed_offset(layout: Layout, stream: str) -> int | None:
    """The last offset committed locally (offset.yaml, else the index meta)."""
    candidates = [read_offset_file(layout.offset_file, stream), read_index_offset(layout)]
    known = [value for value in candidates if value is not None]
    return max(known) if known else None


# ---------------------------------------------------------------- progress and replay


class ProgressLog:
    """A periodic INFO line: messages/s, applied/rejected counts, current offset."""

    def __init__(self, counts: IngestCounts, every_s: float = 10.0, what: str = "ingest progress"):
        self.counts = counts
        self.every_s = every_s
        self.what = what
        self._last_time = time.monotonic()
        self._last_total = 0

    def total(self) -> int:
        return self.counts.applied + self.counts.skipped + self.counts.rejected_total

    def maybe_log(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_time < self.every_s:
            return
        total = self.total()
        rate = (total - self._last_total) / max(now - self._last_time, 1e-9)
        log(logger, logging.INFO, self.what, messages_per_s=round(rate, 1), **self.counts.as_dict())
        self._last_time, self._last_total = now, total


def replay_dump(settings: Settings, path: Path) -> ReplayResult:
    """Apply a dump file through the same handler as the consumer (no broker). Idempotent:
    replaying a dump twice leaves the tree as after the first time."""
    from azaion_training.locks import InstanceLock

    layout = Layout(settings.paths)
    limits = Limits(int(settings.rabbitmq.max_image_mb * 1024 * 1024))
    with InstanceLock(layout.lock_file("consumer"), "annotation consumer"):
        handler = AnnotationHandler(layout, limits, settings.rabbitmq.queue_name, record_offset=False)
        progress = ProgressLog(handler.counts, every_s=5.0, what="replay progress")
        records = 0
        try:
            for record in iter_dump(path):
                handler.handle(record.offset, record.data, record.timestamp_ms)
                records += 1
                if handler.pending >= COMMIT_EVERY:
                    handler.commit()
                progress.maybe_log()
            handler.commit()
        finally:
            handler.close()
    progress.maybe_log(force=True)
    return ReplayResult.from_counts(records, handler.counts)
