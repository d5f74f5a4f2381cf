"""The data engine's figures (docs/data-engine.md). Prints one JSON line:

- **label errors**: demo-like labels (the demo's synthetic scenes: 1-6 non-overlapping objects of
  the demo classes per image, `scenes.render_scene`), a simulated detector's out-of-sample
  predictions (every object found with a small jitter and confidence ~ Beta(8, 2), 5 % of objects
  missed, ~0.3 low-confidence false boxes per image), then `--corrupt` (5 %) of the images get one
  injected error each, a third of each kind: a box dropped, its class swapped, or shifted to
  IoU < 0.5. analysis.label_errors.rank_images ranks them; figures: precision of the top 200 (the
  share of corrupted images), recall of the corrupted images in the top 200 and in the top
  2 x corrupted, per kind, and the seconds per 1,000 images. The detector is simulated (no model
  trained on the demo's scenes ships offline): it measures the ranking, not a detector;
- **field accuracy**: a random history of `--proposals` AI proposals and validators' events
  (validated as proposed, edited: boxes removed, added, moved, reclassified; deleted; pending),
  counted by field_accuracy.judge + tabulate and independently by a plain greedy matcher written
  here (best confidence first, same class, IoU >= 0.5): the largest absolute difference of any
  class's TP/FP/miss count (target 0), and the seconds per 10,000 proposals;
- **recording cost**: the queue handler applying `--messages` AI-sourced annotations (proposal +
  event per message) against Manual ones (event only), alternating rounds, best of three each:
  messages/s (wall: dominated by syncfs, noisy on a shared disk) and CPU ms per message (this
  process), and the AI / Manual ratios;
- **selection**: seconds to embed and choose 10 % of `--frames` synthetic frames (no detector).

The selection experiment of the issue (3 rounds x 10 % budget x 3 seeds x 3 strategies, retraining
each round) is not run here: see docs/data-engine.md.

    .venv/bin/python benchmarks/data_engine.py [--images 4000] [--corrupt 0.05] [--proposals 10000]
"""

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from azaion_training.offline import configure_offline_environment

KINDS = ("dropped", "swapped", "shifted")


def demo_labels(count: int, seed: int) -> list[np.ndarray]:
    """Per image (m, 5) cls, x1, y1, x2, y2 in pixels of a 640 px scene, as the demo makes them."""
    from azaion_training.scenes import render_scene

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        scene = render_scene(rng, size=160)
        rows = [[c, (x - w / 2) * 640, (y - h / 2) * 640, (x + w / 2) * 640, (y + h / 2) * 640]
                for c, x, y, w, h in scene.labels]
        out.append(np.asarray(rows, dtype=np.float64).reshape(-1, 5))
    return out


def simulated_predictions(truths: list[np.ndarray], classes: list[int], rng) -> list[np.ndarray]:
    preds = []
    for t in truths:
        rows = []
        for row in t:
            if rng.random() < 0.05:
                continue  # missed by the model
            size = np.array([row[3] - row[1], row[4] - row[2]] * 2)
            rows.append([row[0], rng.beta(8, 2), *(row[1:5] + rng.normal(0, 0.03, 4) * size)])
        for _ in range(rng.poisson(0.3)):
            x, y = rng.uniform(0, 600, 2)
            rows.append([rng.choice(classes), rng.uniform(0.01, 0.3), x, y, x + 30, y + 30])
        a = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
        preds.append(a[np.argsort(-a[:, 1], kind="stable")])
    return preds


def corrupt(truths: list[np.ndarray], share: float, classes: list[int], rng) -> dict[int, str]:
    candidates = [i for i, t in enumerate(truths) if len(t)]
    chosen = rng.choice(candidates, size=int(round(share * len(truths))), replace=False)
    kinds = {}
    for n, i in enumerate(sorted(chosen.tolist())):
        kind = KINDS[n % 3]
        t = truths[i].copy()
        k = int(rng.integers(len(t)))
        if kind == "dropped":
            t = np.delete(t, k, axis=0)
        elif kind == "swapped":
            t[k, 0] = rng.choice([c for c in classes if c != t[k, 0]])
        else:
            w = t[k, 3] - t[k, 1]
            t[k, [1, 3]] += w * 0.75  # IoU with the object = 0.25 / 1.75 < 0.5
        truths[i] = t
        kinds[i] = kind
    return kinds


def label_error_figures(count: int, share: float, seed: int) -> dict:
    from azaion_training.analysis.label_errors import rank_images
    from azaion_training.analysis.predictions import LabelledImage

    rng = np.random.default_rng(seed)
    truths = demo_labels(count, seed)
    classes = sorted({int(c) for t in truths for c in t[:, 0]})
    preds = simulated_predictions(truths, classes, rng)
    kinds = corrupt(truths, share, classes, rng)
    images = [LabelledImage(f"test/images/img{i:06d}.jpg", Path(f"img{i:06d}.jpg"), f"{i:064x}", 640, 640, p, t)
              for i, (p, t) in enumerate(zip(preds, truths, strict=True))]
    started = time.perf_counter()
    ranked = rank_images(images)
    seconds = time.perf_counter() - started
    order = [int(r.name.removeprefix("img")) for r in ranked]
    corrupted = len(kinds)
    top200 = order[:200]
    top2x = set(order[:2 * corrupted])
    per_kind = {kind: round(sum(1 for i, k in kinds.items() if k == kind and i in set(top200)) /
                            max(1, sum(1 for k in kinds.values() if k == kind)), 4) for kind in KINDS}
    return {"images": count, "corrupted": corrupted, "precision_top200": round(sum(i in kinds for i in top200)
                                                                                 / len(top200), 4),
            "recall_top200": round(sum(i in kinds for i in top200) / corrupted, 4),
            "recall_top_2x_corrupted": round(len(top2x & set(kinds)) / corrupted, 4),
            "recall_top200_by_kind": per_kind, "seconds": round(seconds, 2),
            "seconds_per_1000_images": round(seconds / count * 1000, 2)}


# ------------------------------------------------------------------------------------- field accuracy

def _iou(a, b) -> float:
    ax1, ay1, ax2, ay2 = a[1] - a[3] / 2, a[2] - a[4] / 2, a[1] + a[3] / 2, a[2] + a[4] / 2
    bx1, by1, bx2, by2 = b[1] - b[3] / 2, b[2] - b[4] / 2, b[1] + b[3] / 2, b[2] + b[4] / 2
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = a[3] * a[4] + b[3] * b[4] - inter
    return inter / union if union > 0 else 0.0


def plain_counts(pairs) -> Counter:
    """(cls, 'tp'|'fp'|'fn') counts with a greedy matcher written independently of metrics.py."""
    counts: Counter = Counter()
    for proposal, final in pairs:
        free = list(range(len(final)))
        for p in sorted(proposal, key=lambda b: -b[5]):
            best, best_iou = None, 0.5
            for j in free:
                if final[j][0] == p[0]:
                    iou = _iou(p, final[j])
                    if iou >= best_iou and (best is None or iou > best_iou):
                        best, best_iou = j, iou
            if best is None:
                counts[(p[0], "fp")] += 1
            else:
                free.remove(best)
                counts[(p[0], "tp")] += 1
        for j in free:
            counts[(final[j][0], "fn")] += 1
    return counts


def field_figures(count: int, seed: int) -> dict:
    from azaion_training.annotation_index import AnnotationEvent, Proposal
    from azaion_training.field_accuracy import judge, tabulate

    rng = np.random.default_rng(seed)
    proposals, events, pairs = [], [], []
    for i in range(count):
        boxes = [(int(rng.integers(0, 5)), *rng.uniform(0.1, 0.9, 2), *rng.uniform(0.02, 0.2, 2),
                  float(rng.uniform(0.3, 1))) for _ in range(int(rng.integers(0, 6)))]
        boxes = [tuple(round(v, 6) if k else v for k, v in enumerate(b)) for b in boxes]
        name = f"a{i}"
        proposals.append(Proposal(name, i, "2025-06-02T00:00:00+00:00", "v.mp4", 30, boxes))
        fate = rng.choice(["validated", "edited", "deleted", "pending"], p=[0.4, 0.4, 0.1, 0.1])
        if fate == "validated":
            events.append(AnnotationEvent(name, count + i, 30, None, "t", None))
            pairs.append((boxes, boxes))
        elif fate == "deleted":
            events.append(AnnotationEvent(name, count + i, 40, None, "t", None))
            pairs.append((boxes, []))
        elif fate == "edited":
            final = []
            for b in boxes:
                roll = rng.random()
                if roll < 0.1:
                    continue  # removed
                if roll < 0.2:
                    b = (1 - b[0] if b[0] < 2 else b[0] - 1, *b[1:])  # reclassified
                elif roll < 0.3:
                    b = (b[0], b[1] + b[3] * rng.uniform(0.2, 0.9), *b[2:])  # moved
                final.append((b[0], *b[1:5], 1.0))
            for _ in range(int(rng.poisson(0.3))):
                final.append((int(rng.integers(0, 5)), *rng.uniform(0.1, 0.9, 2), *rng.uniform(0.02, 0.2, 2), 1.0))
            events.append(AnnotationEvent(name, count + i, 20, 20, "t", final))
            pairs.append((boxes, final))
    started = time.perf_counter()
    judged, pending = judge(proposals, events)
    rows = tabulate(judged, "class", {})
    seconds = time.perf_counter() - started
    ours = Counter()
    for row in rows:
        if row.cls is not None:
            ours[(row.cls, "tp")], ours[(row.cls, "fp")], ours[(row.cls, "fn")] = row.tp, row.fp, row.fn
    plain = plain_counts(pairs)
    keys = set(ours) | set(plain)
    return {"proposals": count, "judged": len(judged), "pending": pending,
            "max_abs_count_difference": max(abs(ours[k] - plain[k]) for k in keys),
            "boxes_compared": sum(plain.values()), "seconds": round(seconds, 3),
            "seconds_per_10000_proposals": round(seconds / count * 10000, 3)}


# ------------------------------------------------------------------------------------- recording cost

def recording_figures(count: int) -> dict:
    from azaion_training.layout import Layout
    from azaion_training.queue.handler import AnnotationHandler
    from azaion_training.queue.messages import (
        Limits,
        NormalizedDetection,
        Role,
        SampleOptions,
        Source,
        encode_message,
        sample_annotation,
    )
    from azaion_training.scenes import encode_jpeg
    from azaion_training.settings import load_settings

    image = encode_jpeg(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    boxes = [NormalizedDetection(1, 0.5, 0.5, 0.2, 0.2, 0.8), NormalizedDetection(2, 0.2, 0.3, 0.1, 0.1, 0.6)]
    rates: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for source in (Source.Manual, Source.AI) * 3:  # alternating rounds, best kept: a shared machine
        with tempfile.TemporaryDirectory() as tmp:
            layout = Layout(load_settings(env={"AZAION_ROOT_DIR": str(Path(tmp) / "root")}).paths)
            entries = [encode_message(sample_annotation(f"n{i}", image, SampleOptions(
                role=Role.CompanionPC, source=source, frame=i, detections=boxes))) for i in range(count)]
            handler = AnnotationHandler(layout, Limits(), "azaion-annotations", record_offset=False)
            started, started_cpu = time.perf_counter(), time.process_time()
            for i, data in enumerate(entries):
                handler.handle(i, data)
                if handler.pending >= 256:
                    handler.commit()
            handler.commit()
            elapsed, used = time.perf_counter() - started, time.process_time() - started_cpu
            handler.close()
            rates[source.name] = max(rates.get(source.name, 0.0), count / elapsed)
            cpu[source.name] = min(cpu.get(source.name, float("inf")), used / count * 1000)
    return {"messages": count, "manual_msgs_per_s": round(rates["Manual"], 1),
            "ai_msgs_per_s": round(rates["AI"], 1), "ai_vs_manual_wall": round(rates["AI"] / rates["Manual"], 3),
            "manual_cpu_ms_per_msg": round(cpu["Manual"], 3), "ai_cpu_ms_per_msg": round(cpu["AI"], 3),
            "ai_vs_manual_cpu": round(cpu["AI"] / cpu["Manual"], 3)}


def selection_figures(frames: int, seed: int) -> dict:
    from azaion_training.analysis.selection import embedding, select
    from azaion_training.scenes import render_scene

    rng = np.random.default_rng(seed)
    images = [render_scene(rng, size=320).image for _ in range(frames)]
    started = time.perf_counter()
    vectors = np.stack([embedding(im) for im in images])
    embedded = time.perf_counter() - started
    chosen = select(rng.uniform(0, 1, frames), vectors, max(1, frames // 10))
    total = time.perf_counter() - started
    return {"frames": frames, "chosen": len(chosen), "embed_ms_per_frame": round(embedded / frames * 1000, 3),
            "select_seconds": round(total - embedded, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--corrupt", type=float, default=0.05)
    parser.add_argument("--proposals", type=int, default=10000)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    configure_offline_environment()
    print(json.dumps({
        "benchmark": "data_engine",
        "label_errors": label_error_figures(args.images, args.corrupt, args.seed),
        "field_accuracy": field_figures(args.proposals, args.seed),
        "recording": recording_figures(args.messages),
        "selection": selection_figures(args.frames, args.seed),
        "selection_experiment": "not run (3 rounds x 3 seeds x 3 strategies with retraining: see docs/data-engine.md)",
    }))


if __name__ == "__main__":
    main()
