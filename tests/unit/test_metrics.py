"""metrics.py: matching by hand-made cases, AP at several IoU thresholds, precision/recall at a
confidence, and the paired bootstrap (deterministic for a seed, symmetric, zero for a model
against itself)."""

import numpy as np
import pytest

from azaion_training.metrics import IOU_THRESHOLDS, evaluate_detections, map50, match_image, paired_bootstrap


def test_match_image_greedy_by_confidence_one_truth_per_prediction():
    truths = [(0, 0, 0, 10, 10), (0, 20, 20, 30, 30)]
    predictions = [(0, 0.5, 0, 0, 10, 10), (0, 0.9, 0, 0, 10, 10), (1, 0.8, 20, 20, 30, 30)]
    hits = match_image(predictions, truths)
    assert hits.shape == (3, len(IOU_THRESHOLDS))
    assert hits[1].all()  # the more confident duplicate takes the truth at every threshold
    assert not hits[0].any()  # the less confident one is a duplicate: false positive
    assert not hits[2].any()  # right place, wrong class


def test_match_image_localisation_decides_per_threshold():
    # IoU of (0,0,10,10) and (0,0,10,8) = 0.8: a hit up to IoU 0.8, a miss above
    hits = match_image([(0, 0.9, 0, 0, 10, 8)], [(0, 0, 0, 10, 10)])[0]
    assert hits.tolist() == [t <= 0.8 + 1e-9 for t in IOU_THRESHOLDS]


def test_map_perfect_missed_and_undefined():
    truths = [[(0, 10, 10, 50, 50)], [(1, 0, 0, 20, 20), (0, 60, 60, 90, 90)]]
    perfect = [[(0, 0.9, 10, 10, 50, 50)], [(1, 0.8, 0, 0, 20, 20), (0, 0.7, 60, 60, 90, 90)]]
    evaluation = evaluate_detections(perfect, truths)
    assert evaluation.map50 == pytest.approx(1.0) and evaluation.map50_95 == pytest.approx(1.0)
    assert evaluation.per_class() == {0: {"ap50": 1.0, "instances": 2}, 1: {"ap50": 1.0, "instances": 1}}
    # class 0: a confident false positive first, then both hits -> AP 2/3; class 1 missed -> 0
    shifted = [[(0, 0.95, 100, 100, 120, 120), (0, 0.9, 12, 12, 50, 50)], [(0, 0.7, 60, 60, 90, 90)]]
    assert map50(shifted, truths) == pytest.approx((2 / 3 + 0.0) / 2)
    assert map50([[(0, 0.9, 1, 1, 2, 2)]], [[]]) is None


def test_precision_recall_at_a_confidence():
    truths = [[(0, 0, 0, 10, 10), (0, 20, 20, 30, 30)]]
    predictions = [[(0, 0.9, 0, 0, 10, 10), (0, 0.2, 20, 20, 30, 30), (0, 0.8, 50, 50, 60, 60)]]
    evaluation = evaluate_detections(predictions, truths)
    assert evaluation.precision_recall(0.5) == (0.5, 0.5)  # kept: one hit, one false positive
    assert evaluation.precision_recall(0.1) == (pytest.approx(2 / 3), 1.0)


def _random_set(seed: int, images: int = 60, quality: float = 0.8):
    rng = np.random.default_rng(seed)
    predictions, truths = [], []
    for _ in range(images):
        labelled = []
        for _ in range(rng.integers(0, 5)):
            x, y = rng.uniform(0, 400, 2)
            labelled.append((int(rng.integers(0, 3)), x, y, x + 40, y + 40))
        found = [(c, float(rng.random()), x1 + rng.normal(0, 3), y1, x2, y2) for c, x1, y1, x2, y2 in labelled
                 if rng.random() < quality]
        found += [(int(rng.integers(0, 3)), float(rng.random()) * 0.5, 5.0, 5.0, 30.0, 30.0)
                  for _ in range(rng.integers(0, 3))]
        predictions.append(found)
        truths.append(labelled)
    return predictions, truths


def test_paired_bootstrap_is_seeded_and_centred():
    predictions, truths = _random_set(1)
    good = evaluate_detections(predictions, truths)
    worse = evaluate_detections(_random_set(1, quality=0.4)[0], truths)
    assert paired_bootstrap(good, good).to_dict()["low"] == 0.0  # a model against itself: exactly no difference
    first, again = paired_bootstrap(good, worse, seed=3), paired_bootstrap(good, worse, seed=3)
    assert first == again  # seeded
    point = good.map50 - worse.map50
    assert first.low < point < first.high and first.low > 0  # clearly better, and the interval shows it
    mirrored = paired_bootstrap(worse, good, seed=3)
    assert mirrored.low == pytest.approx(-first.high) and mirrored.high == pytest.approx(-first.low)
    intervals = {paired_bootstrap(good, worse, seed=s, resamples=200).low for s in range(20)}
    assert len(intervals) > 1  # the seed matters to the interval (but not to the gate's decision)


def test_bootstrap_needs_the_same_images():
    predictions, truths = _random_set(2)
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(evaluate_detections(predictions, truths), evaluate_detections(predictions[:5], truths[:5]))
