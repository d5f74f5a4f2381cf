"""Apply stream messages to the data tree (docs/wire-format.md, Routing; docs/data-tree.md).

Every message is applied idempotently: each annotation's index row remembers the offset that
last changed it, so a message seen again (at-least-once delivery, a replay) is skipped, and
every file operation converges (write-then-rename, rename-over) so re-applying a message whose
effects were cut short by a crash finishes it. Writes are batched: files are renamed into
place at once (never visible half-written); the group's index rows are held in memory (every
lookup sees them) until its files are durable; then the index commits and only then the
offset is recorded (group commit). `commit()` does all three in turn; the consumer's worker
(worker.py) calls the steps, `seal()`, `make_durable(group)` and `record(group)`, itself, so
one group's files are made durable while the next group is applied.

Failures: bad input is quarantined at once (`MessageRejected`). A local failure (`OSError`,
SQLite errors: disk full, permissions, I/O) is raised: the caller retries from the last commit
and nothing is skipped. Any other exception while applying one message is a fault of that
message: `MessageFailed` is raised for the first MAX_ATTEMPTS - 1 attempts at its offset, and
the last attempt quarantines it with reason `internal-error`.
"""

import json
import logging
import os
import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from azaion_training.annotation_index import AnnotationEvent, AnnotationIndex, IndexEntry, Proposal
from azaion_training.fsutil import TEMP_PREFIX, make_durable, remove_stale_temp_files
from azaion_training.images import IMAGE_SUFFIXES
from azaion_training.layout import Layout
from azaion_training.logs import get_logger, log
from azaion_training.queue.messages import (
    AnnotationBulkMessage,
    AnnotationMessage,
    AnnotationStatus,
    Limits,
    MessageRejected,
    Source,
    capped,
    decode,
)
from azaion_training.queue.offsets import now_iso, write_offset_record

logger = get_logger("queue")
COMMIT_EVERY = 256  # messages per group commit (the consumer also commits on a timer)
MAX_ATTEMPTS = 3  # attempts at one message that fails in the handler before it is quarantined
LOCAL_FAILURES = (OSError, sqlite3.Error)  # this machine's disk, permissions, I/O: retried, never skipped
NAMES_SHOWN = 5  # names a bulk's summary line shows


class MessageFailed(Exception):
    """Applying the message at `offset` raised an unexpected exception (attempt `attempt` of
    MAX_ATTEMPTS): retry it from the last commit; the last attempt quarantines it instead."""

    def __init__(self, offset: int, attempt: int, error: str):
        super().__init__(f"offset {offset}, attempt {attempt} of {MAX_ATTEMPTS}: {error}")
        self.offset = offset
        self.attempt = attempt
        self.error = error


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

    @classmethod
    def from_dict(cls, data: dict) -> "IngestCounts":
        """The counts `as_dict` wrote (the worker process reports them to the consumer)."""
        return cls(int(data["applied"]), int(data["skipped"]), Counter(data["rejected_by_reason"]),
                   Counter(data["by_status"]), data["last_offset"])

    def add(self, other: "IngestCounts") -> None:
        self.applied += other.applied
        self.skipped += other.skipped
        self.rejected.update(other.rejected)
        self.by_status.update(other.by_status)
        if other.last_offset is not None:
            self.last_offset = other.last_offset


@dataclass
class Group:
    """Messages handled since the last seal: what their commit makes durable and records."""

    messages: int
    last_offset: int | None
    last_time: str | None
    rows: dict[str, IndexEntry]  # name -> the index row as the group leaves it
    files: set[str]
    dirs: set[str]
    # the data engine's records (docs/data-engine.md): written with the rows, ignored when already there
    proposals: list[Proposal] = field(default_factory=list)
    events: list[AnnotationEvent] = field(default_factory=list)


class AnnotationHandler:
    """Applies stream entries to the tree under one open index transaction per batch."""

    def __init__(self, layout: Layout, limits: Limits, stream: str, record_offset: bool = True):
        self.layout = layout
        self.limits = limits
        self.stream = stream
        self.record_offset = record_offset  # False for dump replays: their offsets are not this stream's
        self.counts = IngestCounts()
        self.pending = 0  # messages handled since the last seal
        self._last_handled: int | None = None
        self._last_time: str | None = None
        self._touched: set[str] = set()
        self._dirs: set[str] = set()
        self._rows: dict[str, IndexEntry] = {}  # index rows of the open group, not yet in the index
        self._proposals: list[Proposal] = []  # the open group's proposals and events (with its rows)
        self._events: list[AnnotationEvent] = []
        self._event_time = ""  # the broker time of the message being applied
        self._sealed: Group | None = None  # a sealed group not yet recorded: its rows are not in the index yet
        self.failing: tuple[int, int] = (-1, 0)  # (offset, failed attempts) of the last failing message
        self._areas = {"data": layout.data, "seed": layout.seed, "deleted": layout.deleted}
        # area -> (images dir, labels dir) as strings: Path objects per file were ~7 % of the applier's time
        self._dirs_of = {name: (str(area.images), str(area.labels)) for name, area in self._areas.items()}
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

    # ------------------------------------------------------------ the index as the groups leave it

    def _entry(self, name: str) -> IndexEntry | None:
        """`name`'s row: the open group's, else a sealed group's, else the index's."""
        entry = self._rows.get(name)
        if entry is None and self._sealed is not None:
            entry = self._sealed.rows.get(name)
        return entry if entry is not None else self.index.get(name)

    def _entries(self, names: list[str]) -> dict[str, IndexEntry]:
        sealed = self._sealed.rows if self._sealed is not None else {}
        found = {name: entry for name in names if (entry := self._rows.get(name) or sealed.get(name)) is not None}
        found.update(self.index.get_many([name for name in names if name not in found]))
        return found

    def _set_areas(self, names: Iterable[str], entries: dict[str, IndexEntry], area: str, status: int,
                   offset: int) -> None:
        """As AnnotationIndex.set_areas: a known row gets the new area, status and offset; an
        unknown name a bare row."""
        updated_at = now_iso()
        for name in names:
            entry = entries.get(name)
            self._rows[name] = (replace(entry, area=area, status=status, stream_offset=offset, updated_at=updated_at)
                                if entry is not None else
                                IndexEntry(name, area, None, None, None, None, None, None, status, offset, updated_at))

    # ------------------------------------------------------------ one message

    def handle(self, offset: int, data: bytes, timestamp_ms: int = 0) -> str:
        """Apply one stream entry; returns 'applied', 'skipped' or 'rejected'. Raises LOCAL_FAILURES
        (retry from the last commit) and MessageFailed (see the module's docstring)."""
        self._event_time = _broker_time(timestamp_ms)
        try:
            message = self._decode(data)
            outcome = self._apply(message, offset)
        except MessageRejected as exc:
            outcome = self._quarantine(offset, data, exc, timestamp_ms)
        except LOCAL_FAILURES:
            raise
        except Exception as exc:  # noqa: BLE001 - a fault of this one message (a bug its content trips)
            outcome = self._message_failed(offset, data, exc, timestamp_ms)
        self.counts.last_offset = self._last_handled = offset
        self._last_time = self._event_time
        self.pending += 1
        return outcome

    def _message_failed(self, offset: int, data: bytes, exc: Exception, timestamp_ms: int) -> str:
        error = capped(f"{type(exc).__name__}: {exc}")
        attempt = self.failing[1] + 1 if self.failing[0] == offset else 1
        self.failing = (offset, attempt)
        if attempt < MAX_ATTEMPTS:
            raise MessageFailed(offset, attempt, error) from exc
        self.failing = (-1, 0)
        return self._quarantine(offset, data, MessageRejected("internal-error", error), timestamp_ms,
                                level=logging.ERROR)

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
            applied = self._apply_bulk(message, offset)
        if not applied:
            self.counts.skipped += 1
            return "skipped"
        self.counts.applied += 1
        self.counts.by_status[message.status.name] += 1
        return "applied"

    def _save_annotation(self, message: AnnotationMessage, offset: int) -> bool:
        name = message.name
        entry = self._entry(name)
        if entry is not None and entry.stream_offset >= offset:
            return False  # applied before (a duplicate or a replay)
        extensions = probe_extensions(entry, message.image_extension)
        target = "data" if message.created_role.is_validator() else "seed"
        if message.image is None and not any(self._stored(area, name, extensions) for area in self._dirs_of):
            raise MessageRejected("missing-image", f"{message.status.name} {name} carries no image and none is "
                                  "stored", message.status)
        for area in self._dirs_of:
            if area != target:
                self._move_files(area, target, name, extensions)
        images, labels = self._dirs_of[target]
        if message.image is not None:
            self._write(images, name + message.image_extension, message.image)
            for stale in self._stored(target, name, extensions):
                if stale != message.image_extension:  # the edit replaced the image under another extension
                    os.unlink(f"{images}/{name}{stale}")
                    self._dirs.add(images)
            image_ext = message.image_extension
        else:
            image_ext = next(iter(self._stored(target, name, extensions)), message.image_extension)
        self._write(labels, name + ".txt", message.label_text().encode())
        self._rows[name] = (IndexEntry(
            name=name, area=target, source_media=message.original_media_name, role=int(message.created_role),
            source=int(message.source), created_date=message.created_date.isoformat(),
            media_time_us=int(message.time.total_seconds() * 1_000_000), image_ext=image_ext,
            status=int(message.status), stream_offset=offset, updated_at=now_iso()))
        boxes = [(d.cls, round(d.x, 6), round(d.y, 6), round(d.w, 6), round(d.h, 6), d.confidence)
                 for d in message.detections]
        if message.source is Source.AI and (entry is None or entry.source is None):  # first stored: the proposal
            self._proposals.append(Proposal(name, offset, message.created_date.isoformat(),
                                            message.original_media_name, int(message.created_role), boxes))
        self._events.append(AnnotationEvent(name, offset, int(message.status), int(message.created_role),
                                            self._event_time, boxes))
        return True

    def _apply_bulk(self, message: AnnotationBulkMessage, offset: int) -> bool:
        """Validated: seed -> data. Deleted: data/seed -> deleted. One index query per batch of
        names; absent names are a no-op, summed up in one log line."""
        names = list(dict.fromkeys(message.annotation_names))
        entries = self._entries(names)
        status = message.status
        target_name = "data" if status is AnnotationStatus.Validated else "deleted"
        moved: list[str] = []
        missing: list[str] = []
        for name in names:
            entry = entries.get(name)
            if entry is not None and entry.stream_offset >= offset:
                continue  # applied before (a duplicate or a replay)
            (moved if self._move_name(name, entry, status, target_name) else missing).append(name)
        self._set_areas(moved, entries, target_name, int(status), offset)
        self._events.extend(AnnotationEvent(name, offset, int(status), None, self._event_time, None) for name in moved)
        if missing:
            log(logger, logging.INFO, f"{status.name}: {len(missing)} of {len(names)} annotations not found, "
                "nothing to do for them", offset=offset, not_found=len(missing), first=missing[:NAMES_SHOWN])
        return bool(moved) or not names

    def _move_name(self, name: str, entry: IndexEntry | None, status: AnnotationStatus, target: str) -> bool:
        sources = ["seed"] if status is AnnotationStatus.Validated else ["data", "seed"]
        if entry is None and not any(os.path.exists(f"{self._dirs_of[area][1]}/{name}.txt")
                                     for area in (*sources, target)):
            return False  # unknown to the index and no label anywhere (one stat per area, not one per extension)
        extensions = probe_extensions(entry)
        moved = [source for source in sources if self._move_files(source, target, name, extensions)]
        return (bool(moved) or bool(self._stored(target, name, extensions))
                or os.path.exists(f"{self._dirs_of[target][1]}/{name}.txt"))

    # ------------------------------------------------------------ files

    def _stored(self, area: str, name: str, extensions: tuple[str, ...]) -> list[str]:
        """The extensions under which `area` holds an image of `name`."""
        images = self._dirs_of[area][0]
        return [ext for ext in extensions if os.path.exists(f"{images}/{name}{ext}")]

    def _move_files(self, source: str, target: str, name: str, extensions: tuple[str, ...]) -> bool:
        """Rename the name's image(s) and label from `source` to `target`, replacing what is there."""
        (source_images, source_labels), (target_images, target_labels) = self._dirs_of[source], self._dirs_of[target]
        moves = [(source_images, target_images, name + ext) for ext in extensions]
        moves.append((source_labels, target_labels, name + ".txt"))
        moved = False
        for source_dir, target_dir, file_name in moves:
            destination = f"{target_dir}/{file_name}"
            try:
                os.replace(f"{source_dir}/{file_name}", destination)
            except FileNotFoundError:
                continue
            self._touched.add(destination)
            self._dirs.update((source_dir, target_dir))
            moved = True
        return moved

    def _write(self, directory: str, file_name: str, data: bytes) -> None:
        """Write a temp file in `directory` and rename it to `file_name` (never visible half-written).
        Leaner than fsutil.atomic_writer, which costs twice the time per small file: no fsync
        (the whole group is made durable in commit()), a fixed temp name (one writer: the
        instance lock; leftovers are removed at start), the umask applied by open()."""
        temp, path = f"{directory}/{TEMP_PREFIX}{file_name}", f"{directory}/{file_name}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        try:
            fd = os.open(temp, flags, 0o666)
        except FileNotFoundError:  # the directory was removed while we ran
            os.makedirs(directory, exist_ok=True)
            fd = os.open(temp, flags, 0o666)
        try:  # a failed write leaves only the dot-file temp (overwritten next time, removed at start)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(temp, path)
        self._touched.add(path)
        self._dirs.add(directory)

    def _quarantine(self, offset: int, data: bytes, exc: MessageRejected, timestamp_ms: int,
                    level: int = logging.WARNING) -> str:
        status = exc.status.name if exc.status else None
        bin_path, json_path = self.layout.rejected / f"{offset}.bin", self.layout.rejected / f"{offset}.json"
        if json_path.exists() and bin_path.exists() and bin_path.read_bytes() == data:
            self.counts.skipped += 1  # quarantined before (a replay): keep the first record as it is
            return "skipped"
        rejected = str(self.layout.rejected)
        self._write(rejected, bin_path.name, data)
        record = {"reason": exc.reason, "detail": exc.detail, "offset": offset, "status": status,
                  "stream": self.stream, "size": len(data), "received_at": now_iso(),
                  "broker_timestamp_ms": timestamp_ms or None}
        self._write(rejected, json_path.name, (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode())
        self.counts.rejected[exc.reason] += 1
        log(logger, level, f"message rejected: {exc.detail}", reason=exc.reason, offset=offset,
            status=status, file=str(bin_path))
        return "rejected"

    # ------------------------------------------------------------ group commit

    def commit(self) -> int | None:
        """Make everything handled so far durable, then the index, then the offset. Returns the
        committed offset (None when nothing was pending)."""
        group = self.seal()
        if group is None:
            return None
        self.make_durable(group)
        return self.record(group)

    def seal(self) -> Group | None:
        """Close the open group (None when it is empty); the next message opens a new one. Its
        rows stay visible to lookups until `record` has written them. One sealed group at a time."""
        if not self.pending:
            return None
        if self._sealed is not None:
            raise RuntimeError("the previous group is not recorded yet")
        group = Group(self.pending, self._last_handled, self._last_time, self._rows, self._touched, self._dirs,
                      self._proposals, self._events)
        self._sealed = group
        self._rows, self._touched, self._dirs = {}, set(), set()
        self._proposals, self._events = [], []
        self.pending = 0
        return group

    def make_durable(self, group: Group) -> None:
        """Make the group's files durable (any thread: system calls only)."""
        make_durable(self.layout.root, group.files, group.dirs)

    def record(self, group: Group) -> int | None:
        """Once `group`'s files are durable: its rows into the index (one transaction), then the
        offset. Returns the group's last offset."""
        self.index.begin()
        try:
            for entry in group.rows.values():
                self.index.upsert(entry)
            self.index.add_proposals(group.proposals)
            self.index.add_events(group.events)
            if self.record_offset:
                self.index.set_meta("last_offset", str(group.last_offset))
                self.index.set_meta("last_message_time", group.last_time or now_iso())
            self.index.commit()
        except BaseException:
            self.index.rollback()
            raise
        finally:
            if self._sealed is group:
                self._sealed = None  # written (or dropped: re-applied from the last commit)
        if self.record_offset:
            write_offset_record(self.layout.offset_file, self.stream, group.last_offset)
        return group.last_offset

    def abandon(self) -> None:
        """Drop the open and the sealed group after a failure (their files converge when the
        messages are applied again)."""
        self.index.rollback()
        self._rows, self._touched, self._dirs = {}, set(), set()
        self._proposals, self._events = [], []
        self._sealed = None
        self.pending = 0


def _broker_time(timestamp_ms: int) -> str:
    """The broker's timestamp as ISO 8601; now when unknown or out of range (a dump file's field)."""
    if not timestamp_ms:
        return now_iso()
    try:
        return datetime.fromtimestamp(timestamp_ms / 1000, UTC).isoformat(timespec="milliseconds")
    except (ValueError, OverflowError, OSError):
        return now_iso()


def probe_extensions(entry: IndexEntry | None, *message_extension: str) -> tuple[str, ...]:
    """Image extensions to look for: the one the index recorded and the message's; every known one
    when neither is known (a name the index has never seen in a bulk message)."""
    known = [entry.image_ext] if entry is not None and entry.image_ext else []
    return tuple(dict.fromkeys([*known, *message_extension])) or IMAGE_SUFFIXES
