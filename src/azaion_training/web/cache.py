"""Figures the pages show, computed by the same functions as the CLI and kept until the tree
changes: a request never walks the tree, it reads the newest computed value."""

import logging
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from azaion_training.layout import Layout
from azaion_training.logs import get_logger, log

logger = get_logger("web")


class Refreshing:
    """The newest value of `compute()`. Computed on first use (the caller waits once), then
    recomputed in a background thread when `signature()` changes, at most every
    `min_interval_s` and never sooner than IDLE_FACTOR times the last computation's duration
    after it (a status that takes 10 s to read under steady ingestion costs at most a fifth of
    a core); meanwhile readers get the previous value and never wait."""

    IDLE_FACTOR = 4

    def __init__(self, what: str, compute: Callable[[], Any], signature: Callable[[], Hashable],
                 min_interval_s: float = 2.0):
        self.what = what
        self._compute = compute
        self._signature = signature
        self._min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._value: Any = None
        self._signature_seen: Hashable = None
        self._computed_at = 0.0
        self._duration = 0.0
        self._refreshing = False

    def get(self) -> Any:
        with self._lock:
            if self._value is None:
                started = time.monotonic()
                self._store(self._signature(), self._compute(), started)
            elif (not self._refreshing and time.monotonic() - self._computed_at >= self._wait_s()
                  and self._signature() != self._signature_seen):
                self._refreshing = True
                threading.Thread(target=self._refresh, name=f"refresh-{self.what}", daemon=True).start()
            return self._value

    def warm(self) -> None:
        """Compute the first value in the background (server start)."""
        threading.Thread(target=self.get, name=f"warm-{self.what}", daemon=True).start()

    def _wait_s(self) -> float:
        return max(self._min_interval_s, self.IDLE_FACTOR * self._duration)

    def _store(self, signature: Hashable, value: Any, started: float) -> None:
        self._value, self._signature_seen, self._computed_at = value, signature, time.monotonic()
        self._duration = self._computed_at - started

    def _refresh(self) -> None:
        started = time.monotonic()
        try:
            signature = self._signature()
            value = self._compute()
        except Exception as exc:  # keep serving the previous value; the next request tries again
            log(logger, logging.WARNING, f"refreshing {self.what} failed: {exc}")
            with self._lock:
                self._refreshing = False
            return
        with self._lock:
            self._store(signature, value, started)
            self._refreshing = False


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def tree_signature(layout: Layout) -> tuple:
    """Modification times that change whenever `azaion status` would print something else:
    every writer in the tree renames files into place, which touches the directory."""
    paths = [d for area in layout.areas().values() for d in (area.root, *area.directories())]
    index_wal = layout.index_db.with_name(layout.index_db.name + "-wal")
    paths += [layout.rejected, layout.offset_file, layout.index_db, index_wal, layout.datasets, layout.models,
              layout.classes_json]
    for parent, files in ((layout.datasets, ("data.yaml", "manifest.json")),
                          (layout.models, ("results.csv", "run.json"))):
        if parent.is_dir():
            for entry in sorted(parent.iterdir()):
                paths += [entry, *(entry / name for name in files)]
    return tuple(_mtime(p) for p in paths)
