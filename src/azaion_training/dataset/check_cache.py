"""Persistent cache of annotation checks: re-forming from a growing data/ reads only new files.

One SQLite row per annotation name: the image file name and the (inode, size, mtime_ns) of
image and label as they were read, with the sha256 of both and the box classes. A row is
used only while every part of that key still matches the files (the consumer replaces files
by rename, which changes the inode; an in-place edit changes size or mtime). Only pairs that
passed the check are stored. Each update is one SQLite transaction (atomic); a corrupt,
unreadable or outdated cache is dropped and rebuilt without complaint, and failing to write
it costs speed only, never the formation.
"""

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from azaion_training.layout import Layout
from azaion_training.logs import get_logger, log

logger = get_logger("dataset")

FILE_NAME = ".check-cache.sqlite3"  # under datasets/: never taken for a dataset (not azaion-*)
VERSION = 2  # PRAGMA user_version: bump when the check rules or the row layout change (2: decode check)
TIMEOUT_S = 30.0  # formation and the augment watcher may update it at the same time

Signature = tuple[int, int, int, int, int, int]  # image (inode, size, mtime_ns), then label's
# name -> (image file name, signature, image sha256, label sha256, classes)
Entry = tuple[str, Signature, str, str, tuple[int, ...]]

SCHEMA = """CREATE TABLE IF NOT EXISTS checks (
    name TEXT PRIMARY KEY, image TEXT NOT NULL,
    image_inode INTEGER, image_size INTEGER, image_mtime_ns INTEGER,
    label_inode INTEGER, label_size INTEGER, label_mtime_ns INTEGER,
    image_sha256 BLOB NOT NULL, label_sha256 BLOB NOT NULL, classes BLOB NOT NULL
) WITHOUT ROWID"""


def cache_file(layout: Layout) -> Path:
    return layout.datasets / FILE_NAME


def stat_signature(stats: os.stat_result) -> tuple[int, int, int]:
    return stats.st_ino, stats.st_size, stats.st_mtime_ns


class CheckCache:
    def __init__(self, path: Path):
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=TIMEOUT_S)
        try:
            if connection.execute("PRAGMA user_version").fetchone()[0] != VERSION:
                with connection:
                    connection.execute("DROP TABLE IF EXISTS checks")
                    connection.execute(SCHEMA)
                    connection.execute(f"PRAGMA user_version = {VERSION}")
        except BaseException:
            connection.close()
            raise
        return connection

    def _discard(self, exc: Exception) -> None:
        log(logger, logging.INFO, "check cache unusable: rebuilding it", path=str(self.path), error=str(exc))
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")

    def load(self) -> dict[str, Entry]:
        """Every stored entry; {} when there is no usable cache (it is then rebuilt)."""
        if not self.path.is_file():
            return {}
        try:
            with contextlib.closing(self._connect()) as connection:
                rows = connection.execute("SELECT * FROM checks").fetchall()
        except sqlite3.OperationalError as exc:  # locked for too long, unreadable: check everything
            log(logger, logging.WARNING, "check cache not read", path=str(self.path), error=str(exc))
            return {}
        except sqlite3.DatabaseError as exc:  # corrupt or not a database at all
            self._discard(exc)
            return {}
        return {row[0]: (row[1], row[2:8], row[8].hex(), row[9].hex(), tuple(row[10])) for row in rows}

    def update(self, fresh: Iterable[tuple[str, Entry]], stale: Iterable[str]) -> None:
        """Store the `fresh` (name, entry) pairs and forget the `stale` names, in one transaction."""
        rows = [(name, image, *signature, bytes.fromhex(image_sha), bytes.fromhex(label_sha), bytes(classes))
                for name, (image, signature, image_sha, label_sha, classes) in fresh]
        gone = [(name,) for name in stale]
        if not rows and not gone and self.path.is_file():
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write(rows, gone)
        except (sqlite3.OperationalError, OSError) as exc:  # locked too long, read-only, disk full
            log(logger, logging.WARNING, "check cache not updated", path=str(self.path), error=str(exc))
        except sqlite3.DatabaseError as exc:  # corrupt: start afresh with what this run checked
            self._discard(exc)
            with contextlib.suppress(sqlite3.Error, OSError):
                self._write(rows, [])

    def _write(self, rows: list[tuple], gone: list[tuple]) -> None:
        with contextlib.closing(self._connect()) as connection, connection:
            connection.executemany("DELETE FROM checks WHERE name = ?", gone)
            connection.executemany(f"INSERT OR REPLACE INTO checks VALUES ({', '.join('?' * 11)})", rows)
