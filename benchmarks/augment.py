"""Augmentation throughput at 1280x1280.

In one run: (a) the bare Albumentations chain on the same images, with JPEG decode and
encode, 7 variants per image, in this process (the reference); (b) our `run_jobs` in this
process (checks, clipping, writes, hashes, cache index); (c) our worker pool with 1 and 2
processes on 3x as many images (wall time includes starting the workers, ~2-5 s each).
Prints one JSON line; targets: (b)/(a) >= 0.85, 2 workers near 2x of 1.

    .venv/bin/python benchmarks/augment.py [--n 12]
"""

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from azaion_training.dataset.augment import VARIANTS, AugmentJob, build_pipeline, run_jobs
from azaion_training.dataset.sources import check_pair, scan_pairs
from azaion_training.demo.scenes import encode_jpeg, label_text, render_scene
from azaion_training.labels import MIN_BOX_AREA, read_label_file
from azaion_training.layout import Layout
from azaion_training.settings import load_settings


def reference(jobs: list[AugmentJob]) -> float:
    """Seconds for bare Albumentations + JPEG decode/encode of every job."""
    cv2.setNumThreads(1)
    pipeline = build_pipeline()
    pipeline.set_random_seed(0)
    started = time.perf_counter()
    for job in jobs:
        image = cv2.imdecode(np.frombuffer(job.image.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        boxes = read_label_file(job.label)
        for _ in range(VARIANTS):
            out = pipeline(image=image, bboxes=[(b.cx, b.cy, b.w, b.h) for b in boxes], classes=[b.cls for b in boxes])
            cv2.imencode(".jpg", out["image"], [cv2.IMWRITE_JPEG_QUALITY, 95])
    return time.perf_counter() - started


def ours(layout: Layout, jobs: list[AugmentJob], workers: int) -> float:
    shutil.rmtree(layout.processed.root)
    started = time.perf_counter()
    summary = run_jobs(layout, jobs, workers=workers, progress=False)
    assert summary.augmented == len(jobs), summary.to_dict()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12, help="source images")
    parser.add_argument("--size", type=int, default=1280)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-augment-"))
    try:
        os.environ["AZAION_ROOT_DIR"] = str(work)
        layout = Layout(load_settings().paths)
        layout.init()
        rng = np.random.default_rng(0)
        for i in range(args.n * 3):
            scene = render_scene(rng, args.size)
            layout.data.image_path(f"img{i:03d}", ".jpg").write_bytes(encode_jpeg(scene.image))
            layout.data.label_path(f"img{i:03d}").write_text(label_text(scene.labels))
        pool_jobs = [AugmentJob.from_checked(check_pair(p), MIN_BOX_AREA) for p in scan_pairs(layout.data)[0]]
        jobs = pool_jobs[:args.n]

        reference(jobs[:1])  # warm-up: imports, first-call costs
        reference_s = reference(jobs)
        inline_s = ours(layout, jobs, workers=0)
        one_s = ours(layout, pool_jobs, workers=1)
        two_s = ours(layout, pool_jobs, workers=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({
        "benchmark": "augment", "images": args.n, "size": args.size, "outputs_per_image": VARIANTS + 1,
        "reference_images_per_s": round(args.n / reference_s, 3),
        "ours_images_per_s_per_worker": round(args.n / inline_s, 3),
        "ratio_vs_reference": round(reference_s / inline_s, 3),
        "pool_images": len(pool_jobs),
        "pool_1_worker_images_per_s": round(len(pool_jobs) / one_s, 3),
        "pool_2_workers_images_per_s": round(len(pool_jobs) / two_s, 3),
        "speedup_2_vs_1_workers": round(one_s / two_s, 2),
        "cpu_count": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
