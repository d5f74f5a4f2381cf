"""Durable file operations: atomic writes, durable moves, hardlink-or-copy.

Every file the product writes appears either whole or not at all: write a temp file in the
target directory, fsync it, `os.replace` it into place, fsync the directory.
"""

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_PREFIX = ".tmp-"
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if os.name == "posix" else None
_UMASK = os.umask(0)
os.umask(_UMASK)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: Path, mode: int | None = None, durable: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces `path` atomically when the block exits cleanly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp_name, mode if mode is not None else 0o666 & ~_UMASK)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None, durable: bool = True) -> None:
    with atomic_writer(path, mode=mode, durable=durable) as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str, mode: int | None = None, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode, durable=durable)


def durable_move(src: Path, dst: Path, durable: bool = True) -> None:
    """Rename `src` to `dst` (same filesystem), replacing `dst`, and make it survive a crash."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)
    if durable:
        fsync_dir(dst.parent)
        if src.parent != dst.parent:
            fsync_dir(src.parent)


def link_or_copy(src: Path, dst: Path, how: str = "hardlink") -> str:
    """Place `src` at `dst` as a hardlink, symlink or copy; a hardlink falls back to a copy
    across filesystems. Returns the method actually used."""
    if how == "hardlink":
        try:
            os.link(src, dst)
            return "hardlink"
        except OSError as exc:
            if exc.errno not in (18, 1, 31, 95):  # EXDEV, EPERM, EMLINK, EOPNOTSUPP
                raise
            how = "copy"
    if how == "symlink":
        os.symlink(Path(src).resolve(), dst)
        return "symlink"
    shutil.copyfile(src, dst)
    return "copy"


def remove_stale_temp_files(directory: Path) -> int:
    """Delete temp files left by a crash mid-write (they were never visible under a real name)."""
    removed = 0
    if directory.is_dir():
        for entry in directory.iterdir():
            if entry.name.startswith(TEMP_PREFIX):
                entry.unlink(missing_ok=True)
                removed += 1
    return removed


def make_durable(root: Path, files: Iterable[Path], directories: Iterable[Path]) -> None:
    """Make written `files` and changed `directories` durable: one syncfs(2) of the filesystem
    holding `root` where the OS has it (one journal commit for a whole batch), else an fsync
    of each file and directory."""
    if _syncfs(root):
        return
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # moved on since; its new place is listed too
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for directory in directories:
        fsync_dir(directory)


def has_syncfs() -> bool:
    """Whether make_durable syncs the whole filesystem (syncfs): then it also covers the files
    written before it that have moved since, and may run while other files are being written."""
    return hasattr(os, "O_DIRECTORY") and _LIBC is not None and hasattr(_LIBC, "syncfs")


def _syncfs(path: Path) -> bool:
    if not has_syncfs():
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _LIBC.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), f"syncfs failed on {path}")
    finally:
        os.close(fd)
    return True


def file_size_sha256(path: Path) -> tuple[int, str]:
    """(size, SHA-256) of a file, read in 4 MiB chunks."""
    import hashlib

    digest, size = hashlib.sha256(), 0
    with Path(path).open("rb") as handle:
        while chunk := handle.read(4 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file."""
    return file_size_sha256(path)[1]


def read_jsonl(path: Path, what: str) -> list[dict]:
    """The JSON lines of an append-only history, oldest first. A last line torn by a crash
    mid-append (no newline, not JSON) is left out with a warning; any other bad line is an
    InputError naming the file, line and `what` it is."""
    import json
    import logging

    from azaion_training.errors import InputError
    from azaion_training.logs import get_logger, log

    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(lines) and not text.endswith("\n"):
                log(get_logger("fsutil"), logging.WARNING, "ignoring a torn last line (a crash mid-append)",
                    path=str(path))
                continue
            raise InputError(f"{path}:{number} is not a JSON line: {what} is damaged; fix or remove that line "
                             "by hand") from None
    return records


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line durably (fsync); a line torn by an earlier crash gets a newline first,
    so the new record is never glued onto it. Creates the folder (durably) when missing."""
    import json

    created = not path.parent.is_dir()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+", encoding="utf-8") as handle:
        handle.seek(0, os.SEEK_END)
        torn = False
        if handle.tell() > 0:
            with path.open("rb") as raw:
                raw.seek(-1, os.SEEK_END)
                torn = raw.read(1) != b"\n"
        handle.write(("\n" if torn else "") + json.dumps(record, ensure_ascii=False, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    if created:
        fsync_dir(path.parent.parent)
