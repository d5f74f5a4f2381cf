"""Sticky splits: the split registry, datasets/splits.sqlite3 (docs/data-tree.md).

The first time a source media (group) goes into a dataset it gets a split, and it keeps that
split in every later dataset: a model fine-tuned from an earlier one is never validated or
tested on frames the earlier one trained on. Only new groups are placed (split.assign_groups
with the registered groups fixed), into the splits furthest below their share. Editing or
re-validating an annotation keeps its name and source media, so it keeps its split.

`--reshuffle` starts a new generation: every group is placed afresh and recorded under the new
number; older generations stay in the file as history. A dataset's manifest.json names the
generation it was formed under.

Crash safety: the assignment is read, extended and committed in one SQLite transaction before
formation links any file. A formation that dies later leaves an incomplete dataset (no
data.yaml: never used) and a registry holding exactly the splits that dataset was getting;
the next formation reproduces them. Two formations at once serialise on the transaction.
"""

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from azaion_training.dataset.split import SplitItem, assign_groups

SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    generation INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,        -- ISO 8601
    first_dataset TEXT NOT NULL,
    reason TEXT NOT NULL             -- first | reshuffle
);
CREATE TABLE IF NOT EXISTS groups (
    generation INTEGER NOT NULL,
    group_name TEXT NOT NULL,        -- source media, or the annotation name when unknown
    split TEXT NOT NULL,             -- train | valid | test
    first_dataset TEXT NOT NULL,
    assigned_at TEXT NOT NULL,
    PRIMARY KEY (generation, group_name)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class StickyAssignment:
    splits: dict[str, str]  # annotation name -> split
    generation: int
    new_groups: int  # groups placed by this formation (all of them after a reshuffle)
    reshuffled: bool  # a new generation replaced an earlier one


class SplitRegistry:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "SplitRegistry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generation(self) -> int:
        """The current generation; 0 before the first formation."""
        return self.db.execute("SELECT COALESCE(MAX(generation), 0) FROM generations").fetchone()[0]

    def groups(self, generation: int | None = None) -> dict[str, str]:
        """group -> split of a generation (default: the current one)."""
        wanted = self.generation() if generation is None else generation
        rows = self.db.execute("SELECT group_name, split FROM groups WHERE generation = ?", (wanted,))
        return dict(rows.fetchall())

    def assign(self, items: Sequence[SplitItem], ratios: Sequence[int], seed: int, dataset: str,
               reshuffle: bool = False) -> StickyAssignment:
        """Splits for `items` (their `group` as formation computed it): registered groups keep
        theirs, new ones are placed and registered for `dataset`, all in one transaction."""
        now = datetime.now().isoformat(timespec="seconds")
        self.db.execute("BEGIN IMMEDIATE")
        try:
            current = self.generation()
            reshuffled = reshuffle and current > 0
            generation = current + 1 if reshuffle or current == 0 else current
            if generation != current:
                self.db.execute("INSERT INTO generations VALUES (?,?,?,?)",
                                (generation, now, dataset, "reshuffle" if reshuffled else "first"))
            fixed = self.groups(generation)
            # An annotation first formed without a known source media was registered under its
            # own name: it stays there, even once its media is known.
            items = [SplitItem(i.name, i.name, i.classes) if i.name in fixed else i for i in items]
            by_group = assign_groups(items, ratios, seed, fixed)
            new = [(generation, group, split, dataset, now) for group, split in by_group.items() if group not in fixed]
            self.db.executemany("INSERT INTO groups VALUES (?,?,?,?,?)", new)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return StickyAssignment({i.name: by_group[i.group] for i in items}, generation, len(new), reshuffled)
