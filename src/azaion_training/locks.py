"""Single-instance locks: a second consumer or training on the same root refuses to start.

The lock is an flock on `<root>/queue-state/locks/<name>.lock` holding the owner's pid; the
kernel drops it when the process dies (even by SIGKILL), so a stale file never blocks."""

import fcntl
import os
from pathlib import Path

from azaion_training.errors import OperationFailed


class InstanceLock:
    def __init__(self, path: Path, what: str):
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "InstanceLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OperationFailed(
                f"another {self.what} is already running on this root (pid {owner}, lock {self.path}); "
                "stop it first, or use a different AZAION_ROOT_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "InstanceLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
