"""Likely label errors: injected errors (a dropped box, a swapped class, a box shifted below IoU
0.5) rank first, with their kinds, on synthetic detections and on a real detector's cached
predictions; train images the model saw are never ranked; nothing in the data changes."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from azaion_training.analysis.label_errors import find_label_errors, rank_images
from azaion_training.analysis.predictions import LabelledImage
from azaion_training.metrics import iou_matrix
from tests.conftest import run_azaion


def _synthetic(seed: int = 0, count: int = 40) -> list[LabelledImage]:
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        truths = []
        for k in range(3):
            x, y, w, h = rng.uniform(20, 500), rng.uniform(20, 350), rng.uniform(40, 100), rng.uniform(40, 100)
            truths.append([k % 2, x, y, x + w, y + h])
        truths = np.array(truths)
        preds = np.array([[t[0], rng.uniform(0.7, 0.95), *(t[1:] + rng.normal(0, 2, 4))] for t in truths])
        preds = preds[np.argsort(-preds[:, 1])]
        name = f"test/images/im{i:02d}.jpg"
        images.append(LabelledImage(name, Path(name), f"{i:064x}", 640, 480, preds, truths))
    return images


def _with_truths(image: LabelledImage, truths: np.ndarray) -> LabelledImage:
    return LabelledImage(image.name, image.path, image.sha256, image.width, image.height, image.predictions, truths)


def test_injected_errors_rank_first_with_their_kinds():
    images = _synthetic()
    images[3] = _with_truths(images[3], images[3].truths[1:])  # a box dropped: overlooked
    swapped = images[7].truths.copy()
    swapped[0, 0] = 1 - swapped[0, 0]
    images[7] = _with_truths(images[7], swapped)
    shifted = images[11].truths.copy()
    shifted[0, 1:5] += [60, 0, 60, 0]  # IoU with the object < 0.5
    images[11] = _with_truths(images[11], shifted)
    ranked = rank_images(images)
    assert {(r.name, r.kind) for r in ranked[:3]} == {("im03", "overlooked"), ("im07", "swapped"),
                                                     ("im11", "badly located")}
    assert all(r.kind is None for r in ranked[3:]) and ranked[3].score > ranked[2].score
    swap = next(r for r in ranked if r.name == "im07").issues[0]
    assert swap.label["cls"] == int(swapped[0, 0]) and swap.prediction["cls"] == int(1 - swapped[0, 0])
    assert [r.rank for r in ranked] == list(range(1, len(images) + 1))
    assert rank_images([]) == []


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _label_line(row: np.ndarray, width: int, height: int, cls: int | None = None, shift: float = 0.0) -> str:
    x1, y1, x2, y2 = row[2:6]
    w, h = (x2 - x1) / width, (y2 - y1) / height
    cx = min(max((x1 + x2) / 2 / width + shift * w, 0.0), 1.0)
    return f"{int(row[0]) if cls is None else cls} {cx:.6f} {(y1 + y2) / 2 / height:.6f} {w:.6f} {h:.6f}\n"


def test_real_detector_injected_errors_rank_first(fall):
    """Real images and the real YOLOv8s: the test labels of a copy of the fall dataset are set to
    the detector's own confident boxes (what a careful annotator accepted), then three are
    corrupted; its cached predictions rank exactly those three first."""
    from azaion_training.analysis.predictions import load_split, predict_dataset, resolve_model, resolve_split

    settings = fall.settings()
    layout = fall.layout()
    copy = layout.dataset_dir("azaion-2026-02-01-corrupted")
    shutil.copytree(layout.dataset_dir(fall.dataset), copy)
    try:
        ref = resolve_model(settings, fall.good)
        formed = resolve_split(settings, copy.name, "test", ref)
        predict_dataset(settings, ref, formed, "test", progress=False)  # the fall dataset's: all cached
        images = load_split(settings, ref, formed, "test").images
        confident = []
        for im in images:
            kept = im.predictions[im.predictions[:, 1] >= 0.5]
            label = copy / "test" / "labels" / f"{Path(im.name).stem}.txt"
            label.write_text("".join(_label_line(row, im.width, im.height) for row in kept))
            if len(kept) and kept[0, 1] >= 0.6:
                confident.append((im, kept))
        # cleanlab calls a box overlooked only where it touches no label box: drop an isolated one
        isolated = [c for c in confident if not (iou_matrix(c[1][:1, 2:6], c[1][1:, 2:6]) > 0).any()]
        dropped, d_rows = isolated[0]
        (swapped, s_rows), (shifted, h_rows) = [c for c in confident if c[0] is not dropped][:2]

        def write(im, lines):
            (copy / "test" / "labels" / f"{Path(im.name).stem}.txt").write_text("".join(lines))

        write(dropped, [_label_line(r, dropped.width, dropped.height) for r in d_rows[1:]])
        write(swapped, [_label_line(s_rows[0], swapped.width, swapped.height, cls=1 - int(s_rows[0, 0]))]
              + [_label_line(r, swapped.width, swapped.height) for r in s_rows[1:]])
        write(shifted, [_label_line(h_rows[0], shifted.width, shifted.height, shift=0.8)]
              + [_label_line(r, shifted.width, shifted.height) for r in h_rows[1:]])
        dropped, swapped, shifted = (Path(im.name) for im in (dropped, swapped, shifted))
        before = _tree_hashes(copy)
        report = find_label_errors(settings, fall.good, copy.name, "test", limit=50, progress=False)
        assert report.judged == len(images) and report.skipped_trained == 0
        top = {issue.name: issue.kind for issue in report.ranked[:3]}
        assert set(top) == {dropped.stem, swapped.stem, shifted.stem}, (
            [dropped.stem, swapped.stem, shifted.stem],
            [(i.name, round(i.score, 3), i.kind, [(b.kind, round(b.score, 3)) for b in i.issues])
             for i in report.ranked[:8]])
        assert top[dropped.stem] == "overlooked"
        lines = report.path.read_text().splitlines()
        assert [json.loads(line)["name"] for line in lines[:3]] == [i.name for i in report.ranked[:3]]
        assert _tree_hashes(copy) == before  # nothing in the data changed

        train = find_label_errors(settings, fall.good, copy.name, "train", progress=False, write=False)
        assert train.judged == 0 and train.ranked == []  # the run trained on these: never judged

        result = run_azaion("review", "label-errors", "--model", fall.good, "--dataset", copy.name, "--limit", "3",
                            "--json", env=fall.env)
        assert result.returncode == 0, result.stderr
        assert {r["name"] for r in json.loads(result.stdout)["ranked"]} == set(top)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
