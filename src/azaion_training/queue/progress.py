"""The ingestion progress line: a periodic INFO log with the rate and the counts so far."""

import logging
import time

from azaion_training.logs import get_logger, log
from azaion_training.queue.handler import IngestCounts

logger = get_logger("queue")


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
