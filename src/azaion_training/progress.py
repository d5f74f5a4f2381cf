"""The one progress reporter for long work: a rich bar when stdout is a terminal, otherwise
an INFO log line (JSON in production) every few seconds and one at the end."""

import logging
import sys
import threading
import time

from azaion_training.logs import get_logger, log

logger = get_logger("progress")


class Progress:
    """with Progress("linking files", total) as bar: bar.advance()

    `total` may be None (unknown). `advance` is thread-safe, so it also serves as a boto3
    transfer callback."""

    def __init__(self, description: str, total: int | None, enabled: bool = True, interval_s: float = 5.0):
        self.description = description
        self.total = total
        self.enabled = enabled and total != 0
        self.interval_s = interval_s
        self.done = 0
        self._lock = threading.Lock()
        self._bar = None
        self._task = None
        self._started = self._last_log = time.monotonic()

    def __enter__(self) -> "Progress":
        if self.enabled and sys.stdout.isatty():
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total)
        return self

    def advance(self, count: int = 1) -> None:
        with self._lock:
            self.done += count
            if not self.enabled:
                return
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done)
                return
            now = time.monotonic()
            if now - self._last_log >= self.interval_s:
                self._last_log = now
                self._log()

    __call__ = advance  # boto3's Callback=

    def _log(self) -> None:
        elapsed = time.monotonic() - self._started
        of_total = f"/{self.total}" if self.total else ""
        log(logger, logging.INFO, f"{self.description}: {self.done}{of_total}", task=self.description,
            done=self.done, total=self.total, per_s=round(self.done / elapsed, 1) if elapsed else None)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self.enabled:
            self._log()
