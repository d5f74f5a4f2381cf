"""Augmentation: BT-AUG, RT-AUG and the cache."""

import json
import signal
import subprocess
import time

import cv2
import numpy as np

from azaion_training.dataset.augment import AugmentJob, augment_data, augment_variant, build_pipeline, run_jobs
from azaion_training.dataset.sources import check_pair, scan_pairs
from azaion_training.labels import Box, read_label_file
from tests.conftest import AZAION_BIN, run_azaion
from tests.dataset.conftest import add_annotations, make_old, tree_digest


def _outputs(layout, name):
    images = sorted(p.name for p in layout.processed.images.glob(f"{name}*"))
    labels = sorted(p.name for p in layout.processed.labels.glob(f"{name}*"))
    return images, labels


def test_one_image_gives_8_outputs_with_boxes_inside(settings, layout):  # BT-AUG-01..03, RL-AUG-01
    [name] = add_annotations(layout, 1, size=96)
    layout.data.label_path(name).write_text("0 0.99 0.5 0.2 0.1\n1 0.5 0.5 0.3 0.3\n2 0.3 0.3 0.005 0.005\n")
    summary = augment_data(settings, progress=False)
    assert summary.augmented == 1 and summary.skipped == {}
    images, labels = _outputs(layout, name)
    assert images == [f"{name}.jpg"] + [f"{name}_{k}.jpg" for k in range(1, 8)]
    assert labels == [f"{name}.txt"] + [f"{name}_{k}.txt" for k in range(1, 8)]
    original = read_label_file(layout.processed.label_path(name))  # edge box clipped, tiny box dropped
    assert [b.cls for b in original] == [0, 1]
    assert original[0].cx + original[0].w / 2 <= 1.0 and abs(original[0].w - 0.11) < 1e-5
    for label in labels:
        for box in read_label_file(layout.processed.labels / label):  # validates ranges
            assert 0 <= box.cx - box.w / 2 and box.cx + box.w / 2 <= 1 + 1e-6
            assert 0 <= box.cy - box.h / 2 and box.cy + box.h / 2 <= 1 + 1e-6
            assert box.w * box.h >= 0.0001
    for image in images:
        assert cv2.imread(str(layout.processed.images / image)).shape == (96, 96, 3)


def test_tiny_boxes_are_dropped_after_the_transform():  # BT-AUG-05
    pipeline = build_pipeline()
    pipeline.set_random_seed(0)
    image = np.zeros((100, 100, 3), np.uint8)
    boxes = [Box(0, 0.5, 0.5, 0.02, 0.02), Box(1, 0.5, 0.5, 0.5, 0.5)]
    for _ in range(10):
        _, out = augment_variant(pipeline, image, boxes, min_area=0.001)  # 0.0004 of the image is below 0.001
        assert [b.cls for b in out] in ([1], [])


def test_empty_label_gives_8_empty_labels(settings, layout):  # BT-AUG-06
    [name] = add_annotations(layout, 1)
    layout.data.label_path(name).write_text("")
    augment_data(settings, progress=False)
    images, labels = _outputs(layout, name)
    assert len(images) == 8
    assert all((layout.processed.labels / label).read_text() == "" for label in labels)


def test_already_processed_is_skipped_and_edits_are_redone(settings, layout):  # BT-AUG-07/08
    names = add_annotations(layout, 3)
    assert augment_data(settings, progress=False).augmented == 3
    before = tree_digest(layout.processed.root)
    second = augment_data(settings, progress=False)
    assert (second.augmented, second.reused) == (0, 3)
    assert tree_digest(layout.processed.root) == before
    layout.data.label_path(names[0]).write_text("0 0.5 0.5 0.2 0.2\n")  # an edit changes the content key
    third = augment_data(settings, progress=False)
    assert (third.augmented, third.reused) == (1, 2)
    assert read_label_file(layout.processed.label_path(names[0])) == [Box(0, 0.5, 0.5, 0.2, 0.2)]


def test_truncated_image_and_missing_label_are_reported_and_the_rest_continue(settings, layout):  # RT-AUG-01/02
    names = add_annotations(layout, 3)
    image = layout.data.image_path(names[0], ".jpg")
    image.write_bytes(image.read_bytes()[:300])
    layout.data.label_path(names[1]).unlink()
    make_old(layout.data.image_path(names[1], ".jpg"))
    summary = augment_data(settings, progress=False)
    assert set(summary.skipped) == {names[0], names[1]}
    assert "truncated" in summary.skipped[names[0]] and "no label" in summary.skipped[names[1]]
    assert len(_outputs(layout, names[2])[0]) == 8
    assert image.is_file()  # augmentation reports, formation quarantines


def test_worker_processes_write_the_same_bytes_as_inline(settings, layout):
    add_annotations(layout, 3)
    pairs, _, _ = scan_pairs(layout.data)
    jobs = [AugmentJob.from_checked(check_pair(p), 0.0001) for p in pairs]
    inline = run_jobs(layout, jobs, workers=0, progress=False)
    inline_files = tree_digest(layout.processed.images)
    for marker in (layout.processed.root / "index").iterdir():
        marker.unlink()  # forget the cache so the pool redoes everything
    pooled = run_jobs(layout, jobs, workers=2, progress=False)
    assert pooled.augmented == 3 and pooled.variants == inline.variants
    assert {k: v[0] for k, v in tree_digest(layout.processed.images).items()} == \
        {k: v[0] for k, v in inline_files.items()}


def test_cli_augment_json(root, layout):
    add_annotations(layout, 2)
    done = run_azaion("augment", "--json", "--workers", "0")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout[done.stdout.index("{\n"):])
    assert result["augmented"] == 2 and result["outputs"] == 16


def test_cli_augment_watch_picks_up_new_data_and_stops_on_sigterm(root, layout):
    import os

    add_annotations(layout, 1)
    env = {**os.environ, "AZAION_LOG_FORMAT": "json"}
    process = subprocess.Popen([str(AZAION_BIN), "augment", "--watch", "--interval", "1", "--workers", "0"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        add_annotations(layout, 1, prefix="later", seed=3)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (layout.processed.root / "index" / "later0000.json").exists():
            time.sleep(0.3)
        assert (layout.processed.root / "index" / "later0000.json").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "watch stopped" in out
