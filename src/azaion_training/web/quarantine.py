"""What ingestion and formation put aside: queue-rejected/<offset>.json + .bin (written by the
consumer) and data-corrupted/<stem>.reason.txt (written by dataset formation), see
docs/data-tree.md. Read once per change of either directory, every file through
rootfiles.open_inside: one leading out of the data root (or a FIFO, a device) is listed as
refused, its content never shown."""

import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from azaion_training.layout import Layout, is_safe_name
from azaion_training.rootfiles import is_file_inside, read_text_inside

REJECTED_RECORD = re.compile(r"(\d+)\.json")
REASON_SUFFIX = ".reason.txt"
RECORD_LIMIT = 1 << 20  # a record or reason file is a few lines: a bigger one is not shown


def _rejected(layout: Layout) -> list[dict[str, Any]]:
    records = []
    if layout.rejected.is_dir():
        for entry in os.scandir(layout.rejected):
            match = REJECTED_RECORD.fullmatch(entry.name)
            if not match:
                continue
            try:
                record = json.loads(read_text_inside(layout.root, Path(entry.path), RECORD_LIMIT))
            except OSError as exc:
                record = {"reason": "unreadable-record", "detail": f"not shown: {exc}"}
            except ValueError:
                record = {"reason": "unreadable-record", "detail": f"{entry.name} is not valid JSON"}
            record = record if isinstance(record, dict) else {"reason": "unreadable-record"}
            offset = int(match.group(1))
            records.append({"offset": offset, "reason": str(record.get("reason", "unknown")),
                            "detail": str(record.get("detail", "")), "status": record.get("status"),
                            "received_at": record.get("received_at"), "size": record.get("size"),
                            "raw": is_file_inside(layout.root, layout.rejected / f"{offset}.bin")})
    return sorted(records, key=lambda r: r["offset"], reverse=True)


def _corrupted(layout: Layout) -> list[dict[str, Any]]:
    area = layout.corrupted
    records = []
    if area.root.is_dir():
        for entry in os.scandir(area.root):
            if not entry.name.endswith(REASON_SUFFIX) or entry.is_dir(follow_symlinks=False):
                continue
            stem = entry.name[: -len(REASON_SUFFIX)]
            try:
                text = read_text_inside(layout.root, Path(entry.path), RECORD_LIMIT)
                lines = text.strip().splitlines()
            except OSError as exc:
                text, lines = f"not shown: {exc}", ["unreadable-reason-file"]
            image = area.find_image(stem) if is_safe_name(stem) else None
            records.append({"name": stem, "reason": (lines[0] if lines else "unknown")[:100], "text": text,
                            "image": image.name if image else None,
                            "label": is_safe_name(stem) and area.label_path(stem).is_file(),
                            "modified": entry.stat(follow_symlinks=False).st_mtime})
    return sorted(records, key=lambda r: r["modified"], reverse=True)


class Quarantine:
    def __init__(self, layout: Layout):
        self.layout = layout
        self._lock = threading.Lock()
        self._signature: tuple | None = None
        self._records: dict[str, list[dict[str, Any]]] = {}

    def records(self) -> dict[str, list[dict[str, Any]]]:
        signature = tuple(p.stat().st_mtime_ns if p.is_dir() else None
                          for p in (self.layout.rejected, self.layout.corrupted.root))
        with self._lock:
            if signature != self._signature:
                self._records = {"rejected": _rejected(self.layout), "corrupted": _corrupted(self.layout)}
                self._signature = signature
            return self._records

    def rejected_file(self, name: str) -> Path | None:
        """queue-rejected/<offset>.bin or .json, by a name the server checks itself (served
        through open_inside)."""
        if not is_safe_name(name) or not re.fullmatch(r"[0-9]+\.(bin|json)", name):
            return None
        return self.layout.rejected / name

    def corrupted_image(self, name: str) -> Path | None:
        known = {r["name"]: r["image"] for r in self.records()["corrupted"]}
        image = known.get(name)
        if image is None:
            return None
        return self.layout.corrupted.images / image
