"""What ingestion and formation put aside: queue-rejected/<offset>.json + .bin (written by the
consumer) and data-corrupted/<stem>.reason.txt (written by dataset formation), see
docs/data-tree.md. Read once per change of either directory."""

import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from azaion_training.layout import Layout, is_safe_name

REJECTED_RECORD = re.compile(r"(\d+)\.json")
REASON_SUFFIX = ".reason.txt"


def _rejected(layout: Layout) -> list[dict[str, Any]]:
    records = []
    if layout.rejected.is_dir():
        for entry in os.scandir(layout.rejected):
            match = REJECTED_RECORD.fullmatch(entry.name)
            if not match:
                continue
            try:
                record = json.loads(Path(entry.path).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                record = {"reason": "unreadable-record", "detail": f"{entry.name} is not valid JSON"}
            record = record if isinstance(record, dict) else {"reason": "unreadable-record"}
            offset = int(match.group(1))
            records.append({"offset": offset, "reason": str(record.get("reason", "unknown")),
                            "detail": str(record.get("detail", "")), "status": record.get("status"),
                            "received_at": record.get("received_at"), "size": record.get("size"),
                            "raw": (layout.rejected / f"{offset}.bin").is_file()})
    return sorted(records, key=lambda r: r["offset"], reverse=True)


def _corrupted(layout: Layout) -> list[dict[str, Any]]:
    area = layout.corrupted
    records = []
    if area.root.is_dir():
        for entry in os.scandir(area.root):
            if not entry.name.endswith(REASON_SUFFIX) or not entry.is_file():
                continue
            stem = entry.name[: -len(REASON_SUFFIX)]
            text = Path(entry.path).read_text(encoding="utf-8", errors="replace")
            lines = text.strip().splitlines()
            image = area.find_image(stem) if is_safe_name(stem) else None
            records.append({"name": stem, "reason": (lines[0] if lines else "unknown")[:100], "text": text,
                            "image": image.name if image else None,
                            "label": is_safe_name(stem) and area.label_path(stem).is_file(),
                            "modified": entry.stat().st_mtime})
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
        """queue-rejected/<offset>.bin or .json, by a name the server checks itself."""
        if not is_safe_name(name) or not re.fullmatch(r"\d+\.(bin|json)", name):
            return None
        path = self.layout.rejected / name
        return path if path.is_file() and not path.is_symlink() and self.layout.inside_root(path) else None

    def corrupted_image(self, name: str) -> Path | None:
        known = {r["name"]: r["image"] for r in self.records()["corrupted"]}
        image = known.get(name)
        if image is None:
            return None
        path = self.layout.corrupted.images / image
        return path if path.is_file() and self.layout.inside_root(path) else None
