"""Sticky splits under growth: re-formation time vs the bare os.link floor, and split shares.

Writes N synthetic annotations in F flights (source media recorded in the annotation index),
forms a first dataset, then grows the data by --grow % ten times (--steps): 80 % of each
growth in new flights of N/F frames, 20 % as late frames of flights already split. After each
growth it times `form_dataset` (sticky assignment through datasets/splits.sqlite3 + checks
from the cache + hardlinks + manifest) and, just before and just after it, a bare `os.link`
of the same files (the floor of any per-file hardlinked dataset; the ratio uses the mean of
the two, so a load that changes during the step weighs on both sides), then reads the
manifest: split shares and how many earlier annotations changed split (must be 0). Prints one
JSON line. Targets: re-formation <= 1.5x the floor; shares within +-2 % of 70/20/10.

    .venv/bin/python benchmarks/splits.py [--n 100000] [--flights 10000] [--grow 1] [--steps 10]
"""

import argparse
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from dataset_form import link_floor, write_source

from azaion_training.annotation_index import AnnotationIndex, IndexEntry
from azaion_training.dataset.form import form_dataset
from azaion_training.layout import SPLITS, Layout
from azaion_training.settings import load_settings

TARGET = {"train": 0.7, "valid": 0.2, "test": 0.1}


def record_media(layout: Layout, media_of: dict[str, str]) -> None:
    index = AnnotationIndex(layout.index_db)
    index.begin()
    for offset, (name, media) in enumerate(media_of.items()):
        index.upsert(IndexEntry(name, "data", media, 10, 0, None, None, ".jpg", 20, offset, "2026-01-01T00:00:00"))
    index.commit()
    index.close()


def annotation_splits(manifest: Path) -> dict[str, str]:
    return {entry["annotation"]: entry["split"] for entry in json.loads(manifest.read_text())["files"]
            if entry["path"].split("/")[1] == "labels"}


def timed_floor(layout: Layout, target: Path) -> float:
    subprocess.run(["sync"], check=True)
    started = time.perf_counter()
    link_floor(layout.data.root, target)
    seconds = time.perf_counter() - started
    shutil.rmtree(target)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100000)
    parser.add_argument("--flights", type=int, default=10000)
    parser.add_argument("--grow", type=float, default=1.0, help="growth per step, in %% of the first N")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=64, help="image side in px")
    parser.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir, removed after)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rng = random.Random(0)
    frames = max(1, args.n // args.flights)
    work = Path(tempfile.mkdtemp(prefix="bench-splits-", dir=args.dir))
    steps = []
    try:
        os.environ["AZAION_ROOT_DIR"] = str(work / "azaion")
        settings = load_settings()
        layout = Layout(settings.paths)
        layout.init()
        write_source(layout, args.n, args.size)
        flights = args.n // frames
        record_media(layout, {f"{i:08x}-bench": f"flight{min(i // frames, flights - 1)}" for i in range(args.n)})
        started = time.perf_counter()
        previous = form_dataset(settings, progress=False)
        first_s = time.perf_counter() - started
        before = annotation_splits(previous.manifest)
        total = args.n
        for _ in range(args.steps):
            added = round(args.n * args.grow / 100)
            media = {}
            late = round(added * 0.2)
            for i in range(total, total + late):
                media[f"{i:08x}-bench"] = f"flight{rng.randrange(flights)}"
            for k, i in enumerate(range(total + late, total + added)):
                media[f"{i:08x}-bench"] = f"flight{flights + k // frames}"
            flights += -(-(added - late) // frames)
            write_source(layout, added, args.size, start=total)
            record_media(layout, media)
            total += added

            shutil.rmtree(previous.path)  # a server keeps a few; the benchmark only needs one
            floor_before = timed_floor(layout, work / "floor")
            subprocess.run(["sync"], check=True)  # earlier writes must not be flushed inside a timing
            started = time.perf_counter()
            formed = form_dataset(settings, progress=False)
            form_s = time.perf_counter() - started
            floor_s = (floor_before + timed_floor(layout, work / "floor")) / 2

            after = annotation_splits(formed.manifest)
            assert len(after) == total, (len(after), total)
            counts = Counter(after.values())
            steps.append({"annotations": total, "new_groups": formed.new_groups, "reform_s": round(form_s, 2),
                          "floor_s": round(floor_s, 2), "ratio_to_floor": round(form_s / floor_s, 2),
                          "load_avg_1m": round(os.getloadavg()[0], 2),
                          "moved": sum(1 for name, split in before.items() if after[name] != split),
                          "shares": {s: round(counts[s] / total, 4) for s in SPLITS}})
            before, previous = after, formed
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios = [step["ratio_to_floor"] for step in steps]
    deviation = max(abs(step["shares"][s] - TARGET[s]) for step in steps for s in SPLITS)
    print(json.dumps({
        "benchmark": "splits", "annotations": args.n, "flights": args.flights, "grow_pct": args.grow,
        "first_form_s": round(first_s, 2), "steps": steps,
        "mean_reform_s": round(sum(s["reform_s"] for s in steps) / len(steps), 2),
        "mean_floor_s": round(sum(s["floor_s"] for s in steps) / len(steps), 2),
        "mean_ratio_to_floor": round(sum(ratios) / len(ratios), 2),
        "median_ratio_to_floor": round(statistics.median(ratios), 2),
        "max_ratio_to_floor": max(ratios), "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
        "moved_total": sum(s["moved"] for s in steps), "max_share_deviation": round(deviation, 4),
        "target_ratio": 1.5, "target_share_deviation": 0.02,
    }))


if __name__ == "__main__":
    main()
