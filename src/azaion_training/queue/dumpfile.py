"""Dump files: a stream's entries saved to disk, replayable without a broker.

Format (all integers big-endian):

    magic    8 bytes  b"AZQDUMP1"
    record*  offset    int64   stream offset of the entry
             timestamp int64   broker chunk timestamp, ms since the epoch (0 = unknown)
             length    uint32  size of `data`
             crc32     uint32  zlib.crc32 of `data`
             data      bytes   the stream entry exactly as delivered: an AMQP 1.0 message
                               (application property AnnotationStatus + body) or a bare body

Build `data` for a typed message with `messages.encode_message(msg)`, or from a status and a
body with `messages.amqp_bytes(status, body)`.
"""

import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from azaion_training.errors import InputError
from azaion_training.fsutil import atomic_writer

MAGIC = b"AZQDUMP1"
_HEADER = struct.Struct(">qqII")


@dataclass(frozen=True)
class DumpRecord:
    offset: int
    data: bytes
    timestamp_ms: int = 0


def write_dump(path: Path, records: Iterable[DumpRecord]) -> int:
    """Write records atomically to `path`; returns how many were written."""
    count = 0
    with atomic_writer(Path(path)) as handle:
        handle.write(MAGIC)
        for record in records:
            handle.write(_HEADER.pack(record.offset, record.timestamp_ms, len(record.data),
                                      zlib.crc32(record.data)))
            handle.write(record.data)
            count += 1
    return count


def iter_dump(path: Path) -> Iterator[DumpRecord]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"dump file {path} not found: write one with `azaion queue dump --out {path}`")
    with path.open("rb") as handle:
        if handle.read(len(MAGIC)) != MAGIC:
            raise InputError(f"{path} is not an azaion queue dump (no {MAGIC.decode()} header)")
        number = 0
        while header := handle.read(_HEADER.size):
            if len(header) < _HEADER.size:
                raise InputError(f"{path}: record {number} is truncated (short header); the file is incomplete")
            offset, timestamp, length, crc = _HEADER.unpack(header)
            data = handle.read(length)
            if len(data) < length or zlib.crc32(data) != crc:
                raise InputError(f"{path}: record {number} (offset {offset}) is truncated or corrupt")
            yield DumpRecord(offset, data, timestamp)
            number += 1


def read_dump(path: Path) -> list[DumpRecord]:
    return list(iter_dump(path))
