"""offset.yaml: the consumer's committed stream position (docs/data-tree.md), the one owner of
its format. The consumer writes it after each group commit; `azaion status` reads it and
`azaion health` reads it and keeps its previous reading in the same format beside it."""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

from azaion_training.annotation_index import read_meta
from azaion_training.fsutil import atomic_write_text
from azaion_training.layout import Layout
from azaion_training.logs import get_logger, log

logger = get_logger("queue")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class OffsetRecord:
    stream: str
    offset: int
    updated_at: datetime | None


def write_offset_record(path: Path, stream: str, offset: int, updated_at: datetime | None = None) -> None:
    stamp = updated_at.isoformat(timespec="milliseconds") if updated_at else now_iso()
    atomic_write_text(path, yaml.safe_dump({"stream": stream, "offset": int(offset), "updated_at": stamp},
                                           sort_keys=False))


def read_offset_record(path: Path) -> OffsetRecord | None:
    """The record in an offset file; None when absent, unreadable or without an integer offset."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("offset"), int) or isinstance(data["offset"], bool):
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
    """The offset recorded for `stream`; None when absent, unreadable or for another stream."""
    record = read_offset_record(path)
    if record is None:
        if Path(path).exists():
            log(logger, logging.WARNING, "offset file unreadable or without an integer 'offset'; ignoring it",
                file=str(path))
        return None
    if record.stream not in ("", stream):
        log(logger, logging.WARNING, "offset file belongs to another stream; ignoring it", file=str(path),
            stream=record.stream[:200])
        return None
    return record.offset


def committed_offset(layout: Layout, stream: str) -> int | None:
    """The last offset committed locally (offset.yaml, else the index's copy)."""
    index_value = read_meta(layout.index_db, "last_offset")
    candidates = [read_offset_file(layout.offset_file, stream),
                  int(index_value) if index_value is not None and index_value.lstrip("-").isdigit() else None]
    known = [value for value in candidates if value is not None]
    return max(known) if known else None
