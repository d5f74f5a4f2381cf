"""The sidecar annotation index the consumer keeps beside the data tree (SQLite).

One row per annotation name: where it lives now (area), its source media (used to keep a
video's frames in one split), author role, source (AI/Manual), dates and the stream offset
that last changed it. Readers (dataset formation, `azaion status`) open it read-only and
treat a missing index as empty.

Two sibling tables feed the data engine (docs/data-engine.md): `proposals` keeps the boxes and
confidences of an AI-sourced annotation as it was first stored (the model's proposal, never
overwritten), and `events` keeps every Created/Edited/Validated/Deleted applied to an
annotation (time, role, the boxes it carried). Both are written in the same transaction as the
rows and keyed so that re-applying a message (after a crash) records nothing twice.
"""

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from azaion_training.errors import InputError

_BATCH = 500  # names per IN (...) query (SQLite allows 999 parameters in old builds)
SCHEMA = """
CREATE TABLE IF NOT EXISTS annotations (
    name TEXT PRIMARY KEY,
    area TEXT NOT NULL,              -- data | seed | deleted
    source_media TEXT,
    role INTEGER,
    source INTEGER,
    created_date TEXT,               -- ISO 8601
    media_time_us INTEGER,           -- position in the source media
    image_ext TEXT,
    status INTEGER,                  -- last AnnotationStatus applied
    stream_offset INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS proposals (
    name TEXT PRIMARY KEY,           -- the first AI-sourced store of the annotation, kept as it was
    stream_offset INTEGER NOT NULL,  -- the message that carried it
    created_date TEXT,               -- the annotation's createdDate (which model was production then)
    source_media TEXT,
    role INTEGER,
    boxes TEXT NOT NULL              -- JSON [[cls, cx, cy, w, h, confidence], ...], normalised
);
CREATE TABLE IF NOT EXISTS events (
    name TEXT NOT NULL,
    stream_offset INTEGER NOT NULL,
    status INTEGER NOT NULL,         -- AnnotationStatus applied
    role INTEGER,                    -- author role (Created/Edited); NULL for bulk messages
    at TEXT NOT NULL,                -- broker time of the message (ISO 8601)
    boxes TEXT,                      -- JSON as in proposals (Created/Edited); NULL: unchanged
    PRIMARY KEY (name, stream_offset)
);
"""


@dataclass(frozen=True)
class IndexEntry:
    name: str
    area: str
    source_media: str | None
    role: int | None
    source: int | None
    created_date: str | None
    media_time_us: int | None
    image_ext: str | None
    status: int | None
    stream_offset: int
    updated_at: str


Boxes = list[tuple[int, float, float, float, float, float]]  # (cls, cx, cy, w, h, confidence), normalised


@dataclass(frozen=True)
class Proposal:
    """The model's proposal: an AI-sourced annotation's boxes as first stored."""

    name: str
    stream_offset: int
    created_date: str | None
    source_media: str | None
    role: int | None
    boxes: Boxes


@dataclass(frozen=True)
class AnnotationEvent:
    """One Created/Edited/Validated/Deleted applied to an annotation. `boxes` is None when the
    event does not carry boxes (Validated, Deleted: the annotation's boxes are unchanged)."""

    name: str
    stream_offset: int
    status: int
    role: int | None
    at: str
    boxes: Boxes | None


def _boxes_json(boxes: Boxes | None) -> str | None:
    return None if boxes is None else json.dumps([list(box) for box in boxes], separators=(",", ":"))


def _boxes(text: str | None) -> Boxes | None:
    if text is None:
        return None
    return [(int(b[0]), float(b[1]), float(b[2]), float(b[3]), float(b[4]), float(b[5])) for b in json.loads(text)]


class AnnotationIndex:
    """Writer/reader of the index. The consumer writes between `begin()` and `commit()` so that
    several messages share one commit."""

    def __init__(self, path: Path, readonly: bool = False):
        self.path = Path(path)
        try:
            if readonly:
                self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
                self.db.execute("PRAGMA schema_version")  # reads the header: a damaged file fails here
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
                self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise InputError(f"annotation index {self.path} is damaged or not an SQLite database ({exc}): "
                             "move it aside and restore it from a backup") from None

    def close(self) -> None:
        self.db.close()

    @property
    def in_transaction(self) -> bool:
        return self.db.in_transaction

    def begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.db.execute("COMMIT")

    def rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def upsert(self, entry: IndexEntry) -> None:
        self.db.execute(
            "INSERT INTO annotations VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET "
            "area=excluded.area, source_media=excluded.source_media, role=excluded.role, "
            "source=excluded.source, created_date=excluded.created_date, media_time_us=excluded.media_time_us, "
            "image_ext=excluded.image_ext, status=excluded.status, stream_offset=excluded.stream_offset, "
            "updated_at=excluded.updated_at",
            (entry.name, entry.area, entry.source_media, entry.role, entry.source, entry.created_date,
             entry.media_time_us, entry.image_ext, entry.status, entry.stream_offset, entry.updated_at),
        )

    def set_areas(self, names: Iterable[str], area: str, status: int, stream_offset: int, updated_at: str) -> None:
        """Record a move (Validated/Deleted) of each name; creates a bare row for unknown names."""
        self.db.executemany(
            "INSERT INTO annotations (name, area, status, stream_offset, updated_at) VALUES (?,?,?,?,?) "
            "ON CONFLICT(name) DO UPDATE SET area=excluded.area, status=excluded.status, "
            "stream_offset=excluded.stream_offset, updated_at=excluded.updated_at",
            ((name, area, status, stream_offset, updated_at) for name in names),
        )

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta VALUES (?,?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                        (key, value))

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def get(self, name: str) -> IndexEntry | None:
        row = self.db.execute("SELECT * FROM annotations WHERE name=?", (name,)).fetchone()
        return IndexEntry(*row) if row else None

    def get_many(self, names: list[str]) -> dict[str, IndexEntry]:
        """name -> entry for those of `names` the index knows (queried in batches)."""
        found: dict[str, IndexEntry] = {}
        for start in range(0, len(names), _BATCH):
            batch = names[start:start + _BATCH]
            placeholders = ",".join("?" * len(batch))  # bandit B608: only "?"s are formatted in, names are bound
            rows = self.db.execute(f"SELECT * FROM annotations WHERE name IN ({placeholders})", batch)  # nosec B608
            found.update((row[0], IndexEntry(*row)) for row in rows)
        return found

    def last_updated_at(self) -> str | None:
        """When any annotation last changed (replays too, which move no stream position)."""
        return self.db.execute("SELECT MAX(updated_at) FROM annotations").fetchone()[0]

    def entries(self) -> Iterable[IndexEntry]:
        for row in self.db.execute("SELECT * FROM annotations ORDER BY name"):
            yield IndexEntry(*row)

    def source_media(self) -> dict[str, str]:
        """name -> source media for every annotation whose media is known."""
        rows = self.db.execute("SELECT name, source_media FROM annotations WHERE source_media IS NOT NULL")
        return dict(rows.fetchall())

    def area_counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT area, COUNT(*) FROM annotations GROUP BY area").fetchall())

    # ------------------------------------------------------------ the data engine's tables

    def add_proposals(self, proposals: Iterable[Proposal]) -> None:
        """Keep each proposal unless the name has one already (the first store wins; re-applying
        a message records nothing new)."""
        self.db.executemany("INSERT OR IGNORE INTO proposals VALUES (?,?,?,?,?,?)",
                            ((p.name, p.stream_offset, p.created_date, p.source_media, p.role, _boxes_json(p.boxes))
                             for p in proposals))

    def add_events(self, events: Iterable[AnnotationEvent]) -> None:
        """Record events; one per (name, offset): a message applied again adds nothing."""
        self.db.executemany("INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?)",
                            ((e.name, e.stream_offset, e.status, e.role, e.at, _boxes_json(e.boxes)) for e in events))

    def proposals(self) -> list[Proposal]:
        """Every proposal, by name (empty for an index written before the table existed)."""
        try:
            rows = self.db.execute("SELECT * FROM proposals ORDER BY name").fetchall()
        except sqlite3.OperationalError:  # an older read-only index without the table
            return []
        return [Proposal(n, o, c, m, r, _boxes(b) or []) for n, o, c, m, r, b in rows]

    def events(self) -> list[AnnotationEvent]:
        """Every event, by name then offset (stream order)."""
        try:
            rows = self.db.execute("SELECT * FROM events ORDER BY name, stream_offset").fetchall()
        except sqlite3.OperationalError:
            return []
        return [AnnotationEvent(n, o, s, r, a, _boxes(b)) for n, o, s, r, a, b in rows]


@contextmanager
def reading(index_db: Path) -> Iterator[AnnotationIndex | None]:
    """The index at `index_db` opened read-only, or None when there is no index yet."""
    if not Path(index_db).is_file():
        yield None
        return
    index = AnnotationIndex(index_db, readonly=True)
    try:
        yield index
    finally:
        index.close()


def read_source_media(index_db: Path) -> dict[str, str]:
    """name -> source media from the index at `index_db`; empty when there is no index yet."""
    with reading(index_db) as index:
        return index.source_media() if index else {}


def read_meta(index_db: Path, key: str) -> str | None:
    with reading(index_db) as index:
        return index.get_meta(key) if index else None
