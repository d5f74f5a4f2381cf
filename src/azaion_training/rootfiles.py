"""Reading files that lie inside the data root, and only those.

Whatever a page or a JSON document shows from a file is read through `open_inside`: it opens
a path only when it is a regular file whose real location (every symlink resolved) lies inside
the root. A symlink within the root is followed; one leading out of it, a directory, a FIFO, a
socket or a device is refused (`RefusedFile`), and the check is made on the opened descriptor
itself, so a path component swapped for a symlink between the check and the open is caught.
"""

import os
import stat
from pathlib import Path
from typing import BinaryIO

_PROC_FD = Path("/proc/self/fd")
DEFAULT_LIMIT = 16 << 20  # what read_inside reads at most unless told otherwise


class RefusedFile(OSError):
    """A path that leaves the root, or is not a regular file, or is larger than allowed."""


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def open_inside(root: Path, path: Path) -> BinaryIO:
    """`path` opened for binary reading, if it is a regular file inside `root` (see the module).
    Raises FileNotFoundError when it does not exist, RefusedFile (an OSError) otherwise."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if not _within(real, real_root):
        raise RefusedFile(f"{Path(path).name}: leads out of the data root")
    # O_NOFOLLOW: the last component must not have become a symlink since; O_NONBLOCK: a FIFO
    # opens at once (and is then refused) instead of waiting for a writer
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(real, flags)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise RefusedFile(f"{Path(path).name}: cannot be opened ({exc.strerror or type(exc).__name__})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RefusedFile(f"{Path(path).name}: not a regular file")
        through_fd = _PROC_FD / str(fd)
        if _PROC_FD.is_dir() and not _within(os.readlink(through_fd), real_root):
            raise RefusedFile(f"{Path(path).name}: leads out of the data root")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_inside(root: Path, path: Path, limit: int = DEFAULT_LIMIT) -> bytes:
    """The bytes of a regular file inside `root` (open_inside), refused beyond `limit` bytes."""
    with open_inside(root, path) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise RefusedFile(f"{Path(path).name}: larger than {limit} bytes")
    return data


def read_text_inside(root: Path, path: Path, limit: int = DEFAULT_LIMIT) -> str:
    """read_inside as UTF-8 text (undecodable bytes replaced)."""
    return read_inside(root, path, limit).decode("utf-8", errors="replace")


def is_file_inside(root: Path, path: Path) -> bool:
    """Whether open_inside would open `path`."""
    try:
        open_inside(root, path).close()
    except OSError:
        return False
    return True
