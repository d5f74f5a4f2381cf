"""Matching outcomes on hand-made cases (every kind, ties, a crowded scene), the confusion
matrix's invariants, and the per-class figures equal to the gate's (metrics.evaluate_detections
on the same boxes)."""

from pathlib import Path

import numpy as np
import pytest

from azaion_training.analysis.outcomes import (
    IOU,
    LOW_IOU,
    BoxOutcome,
    Outcome,
    OutcomeCounts,
    analyse_split,
    classify_image,
    classify_split,
    confusion_matrix,
    error_score,
)
from azaion_training.analysis.predictions import LabelledImage, ModelRef, SplitPredictions
from azaion_training.inference.nms import box_iou
from azaion_training.metrics import (
    IOU_THRESHOLDS,
    assign_image,
    evaluate_arrays,
    evaluate_detections,
    iou_matrix,
    match_image,
    match_images,
    prediction_array,
    truth_array,
)

NAMES = {0: "car", 1: "truck", 2: "person"}
CONF = 0.3


def outcomes(predictions, truths, conf=CONF):
    p, t = prediction_array(predictions), truth_array(truths)
    return classify_image(p, t, assign_image(p, t).assigned, conf)


def kinds(found):
    return [o.kind for o in found]


# ---------------------------------------------------------------------------- the matching itself


def _reference_match_image(predictions, truths):
    """metrics.match_image as the gate first shipped it (one box_iou per prediction): the oracle
    that the shared assign_image must reproduce bit for bit."""
    hits = np.zeros((len(predictions), len(IOU_THRESHOLDS)), dtype=bool)
    if not len(predictions) or not len(truths):
        return hits
    truth_cls = np.array([int(t[0]) for t in truths])
    truth_boxes = np.array([t[1:5] for t in truths], dtype=np.float64).reshape(-1, 4)
    order = sorted(range(len(predictions)), key=lambda k: -float(predictions[k][1]))
    used = {int(c): np.zeros((len(IOU_THRESHOLDS), int((truth_cls == c).sum())), dtype=bool)
            for c in np.unique(truth_cls)}
    boxes = {c: truth_boxes[truth_cls == c] for c in used}
    for k in order:
        cls = int(predictions[k][0])
        if cls not in used:
            continue
        ious = box_iou(np.asarray(predictions[k][2:6], dtype=np.float64), boxes[cls])
        if ious.max() < IOU_THRESHOLDS[0]:
            continue
        candidates = np.where(used[cls], -1.0, ious[None, :])
        best = candidates.argmax(axis=1)
        hit = candidates[np.arange(len(IOU_THRESHOLDS)), best] >= IOU_THRESHOLDS
        used[cls][np.nonzero(hit)[0], best[hit]] = True
        hits[k] = hit
    return hits


def _random_image(rng, crowded=False):
    labelled, found = [], []
    for _ in range(rng.integers(0, 25 if crowded else 6)):
        x, y = rng.uniform(0, 120 if crowded else 400, 2)
        labelled.append((int(rng.integers(0, 3)), x, y, x + 40, y + 40))
    for c, x1, y1, x2, y2 in labelled:
        for _ in range(rng.integers(0, 3)):  # duplicates, shifted boxes, wrong classes
            cls = c if rng.random() < 0.8 else int(rng.integers(0, 3))
            dx = rng.normal(0, 6)
            found.append((cls, float(np.round(rng.random(), 1)), x1 + dx, y1, x2 + dx, y2))  # rounded: many ties
    found += [(int(rng.integers(0, 3)), float(rng.random()), 5.0, 5.0, 30.0, 30.0) for _ in range(rng.integers(0, 3))]
    return found, labelled


def test_the_shared_matching_is_the_gates_bit_for_bit():
    rng = np.random.default_rng(7)
    for case in range(400):
        found, labelled = _random_image(rng, crowded=case % 4 == 0)
        assert np.array_equal(match_image(found, labelled), _reference_match_image(found, labelled)), case
        if found and labelled:
            p, t = prediction_array(found), truth_array(labelled)
            expected = np.stack([box_iou(row, t[:, 1:5]) for row in p[:, 2:6]])
            assert np.array_equal(iou_matrix(p[:, 2:6], t[:, 1:5]), expected)  # the same IoU, not a close one


def test_assignment_names_the_label_each_prediction_took():
    truths = truth_array([(0, 0, 0, 10, 10), (0, 20, 20, 30, 30)])
    predictions = prediction_array([(0, 0.5, 20, 20, 30, 30), (0, 0.9, 0, 0, 10, 10), (0, 0.8, 0, 0, 10, 9)])
    match = assign_image(predictions, truths)
    assert match.assigned[:, 0].tolist() == [1, 0, -1]  # the third is a duplicate of label 0
    assert match.ious.shape == (3, 2) and match.ious[1, 0] == 1.0


# ---------------------------------------------------------------------------- each outcome by hand


def test_true_positive_background_and_missed():
    found = outcomes([(0, 0.9, 0, 0, 10, 10), (0, 0.8, 100, 100, 120, 120)], [(0, 0, 0, 10, 10), (1, 50, 50, 70, 70)])
    assert kinds(found) == [Outcome.TRUE_POSITIVE, Outcome.BACKGROUND, Outcome.MISSED]
    assert found[0].label == 0 and found[0].iou == 1.0 and found[0].true_cls == 0
    assert found[1].label is None and found[1].true_cls is None
    assert found[2].cls == 1 and found[2].conf is None and found[2].box == (50, 50, 70, 70) and found[2].label == 1


def test_wrong_class_records_what_it_was_and_the_label_is_not_also_missed():
    found = outcomes([(1, 0.7, 0, 0, 10, 10)], [(0, 0, 0, 10, 10)])
    assert kinds(found) == [Outcome.WRONG_CLASS]
    assert found[0].cls == 1 and found[0].true_cls == 0 and found[0].label == 0 and found[0].iou == 1.0


def test_a_label_is_claimed_by_one_wrong_class_box_the_next_is_a_duplicate():
    found = outcomes([(1, 0.7, 0, 0, 10, 10), (2, 0.6, 0, 0, 10, 9)], [(0, 0, 0, 10, 10)])
    assert kinds(found) == [Outcome.WRONG_CLASS, Outcome.DUPLICATE]
    assert found[1].label == 0 and found[1].iou == pytest.approx(0.9)


def test_duplicate_same_class_and_other_class_on_a_found_label():
    truths = [(0, 0, 0, 10, 10)]
    found = outcomes([(0, 0.9, 0, 0, 10, 10), (0, 0.8, 0, 0, 10, 8), (1, 0.7, 1, 0, 10, 10)], truths)
    assert kinds(found) == [Outcome.TRUE_POSITIVE, Outcome.DUPLICATE, Outcome.DUPLICATE]
    assert [o.label for o in found] == [0, 0, 0]


def test_poor_localisation_between_the_low_threshold_and_half():
    truths = [(0, 0, 0, 10, 10)]
    # IoU 0.3 (box 0..10 x 0..3) and 0.05 (0..10 x 0..0.5): localisation, then background
    found = outcomes([(0, 0.9, 0, 0, 10, 3), (0, 0.8, 0, 0, 10, 0.5)], truths)
    assert kinds(found) == [Outcome.LOCALISATION, Outcome.BACKGROUND, Outcome.MISSED]
    assert found[0].iou == pytest.approx(0.3) and found[0].label == 0 and found[0].true_cls == 0
    assert LOW_IOU == 0.1
    # the low edge belongs to localisation: IoU exactly 0.1
    edge = outcomes([(0, 0.9, 0, 0, 10, 1)], truths)
    assert kinds(edge)[0] is Outcome.LOCALISATION
    # a poorly placed box of another class is background (it neither found nor named the object)
    assert kinds(outcomes([(1, 0.9, 0, 0, 10, 3)], truths))[0] is Outcome.BACKGROUND


def test_below_the_confidence_nothing_is_judged_but_the_label_is_missed():
    found = outcomes([(0, 0.2, 0, 0, 10, 10)], [(0, 0, 0, 10, 10)])
    assert kinds(found) == [Outcome.MISSED]
    # at a lower threshold the same box is a true positive
    assert kinds(outcomes([(0, 0.2, 0, 0, 10, 10)], [(0, 0, 0, 10, 10)], conf=0.1)) == [Outcome.TRUE_POSITIVE]


def test_ties_equal_confidence_the_first_given_wins_equal_iou_the_first_label():
    truths = [(0, 0, 0, 10, 10)]
    found = outcomes([(0, 0.5, 0, 0, 10, 9), (0, 0.5, 0, 0, 10, 10)], truths)
    assert kinds(found) == [Outcome.TRUE_POSITIVE, Outcome.DUPLICATE]
    assert found[0].iou == pytest.approx(0.9)  # the first given took it, although the second fits better
    # one prediction exactly between two labels of its class (IoU 100/120 with each): the first label
    between = outcomes([(0, 0.9, 0, 0, 10, 10)], [(0, 0, 0, 10, 12), (0, 0, -2, 10, 10)])
    assert kinds(between) == [Outcome.TRUE_POSITIVE, Outcome.MISSED] and between[0].label == 0
    assert between[1].label == 1


def test_a_crowded_scene_every_label_is_accounted_for_once():
    # 5 x 5 touching label boxes of two classes; predictions shifted by a third of a box, some doubled,
    # some of the other class
    truths, predictions = [], []
    rng = np.random.default_rng(3)
    for i in range(5):
        for j in range(5):
            cls = (i + j) % 2
            truths.append((cls, i * 10, j * 10, i * 10 + 10, j * 10 + 10))
            shift = rng.choice([0.0, 2.0, 4.0])
            predictions.append((cls if rng.random() < 0.8 else 1 - cls, float(rng.uniform(0.3, 1)),
                                i * 10 + shift, j * 10, i * 10 + 10 + shift, j * 10 + 10))
            if rng.random() < 0.3:
                predictions.append((cls, float(rng.uniform(0.3, 1)), i * 10, j * 10 + shift, i * 10 + 10,
                                    j * 10 + 10 + shift))
    found = outcomes(predictions, truths, conf=0.0)
    counts = OutcomeCounts()
    for o in found:
        counts.add(o.kind)
    assert counts.true_positive + counts.false_positives == len(predictions)  # each box judged once
    taken = [o.label for o in found if o.kind in (Outcome.TRUE_POSITIVE, Outcome.WRONG_CLASS, Outcome.MISSED)]
    assert sorted(taken) == list(range(len(truths)))  # each label found, claimed or missed: exactly once
    hits = match_image(predictions, truths)[:, 0]
    assert counts.true_positive == int(hits.sum())  # the gate's true positives
    assert all(o.iou >= 0.5 for o in found if o.kind in (Outcome.TRUE_POSITIVE, Outcome.WRONG_CLASS))
    assert counts.wrong_class and counts.duplicate  # the scene has both


def test_error_score_formula():
    found = outcomes([(0, 0.9, 0, 0, 10, 10), (0, 0.8, 0, 0, 10, 8), (1, 0.6, 50, 50, 60, 60),
                      (2, 0.7, 20, 20, 30, 30), (0, 0.5, 100, 0, 110, 3)],
                     [(0, 0, 0, 10, 10), (1, 20, 20, 30, 30), (0, 100, 0, 110, 10), (2, 200, 200, 210, 210)])
    assert kinds(found) == [Outcome.TRUE_POSITIVE, Outcome.DUPLICATE, Outcome.WRONG_CLASS, Outcome.BACKGROUND,
                            Outcome.LOCALISATION, Outcome.MISSED, Outcome.MISSED]
    # missed 2 + wrong class 1 + confidences of duplicate 0.8, background 0.6, localisation 0.5
    assert error_score(found) == pytest.approx(2 + 1 + 0.8 + 0.6 + 0.5)
    assert error_score(outcomes([(0, 0.9, 0, 0, 10, 10)], [(0, 0, 0, 10, 10)])) == 0.0


# ---------------------------------------------------------------------------- the rules, one box at a time


def _reference_outcomes(predictions, truths, conf, low_iou=LOW_IOU):
    """The module docstring's rules applied box by box (the oracle of the vectorised classify_split)."""
    p, t = prediction_array(predictions), truth_array(truths)
    match = assign_image(p, t)
    kept = np.nonzero(p[:, 1] >= conf)[0]
    order = kept[np.argsort(-p[kept, 1], kind="stable")]
    assigned = match.assigned[:, 0]
    truth_cls = t[:, 0].astype(np.int64)
    found = np.zeros(len(t), dtype=bool)
    found[assigned[order][assigned[order] >= 0]] = True
    claimed = np.zeros(len(t), dtype=bool)
    result = []
    for k in order.tolist():
        cls, score, box = int(p[k, 0]), float(p[k, 1]), tuple(float(v) for v in p[k, 2:6])
        if assigned[k] >= 0:
            j = int(assigned[k])
            result.append(BoxOutcome(Outcome.TRUE_POSITIVE, cls, score, box, j, cls, float(match.ious[k, j])))
            continue
        row = match.ious[k]
        kind, j = Outcome.BACKGROUND, None
        if len(row):
            for candidate, where in ((Outcome.WRONG_CLASS, (row >= IOU) & (truth_cls != cls) & ~found & ~claimed),
                                     (Outcome.DUPLICATE, (row >= IOU) & (found | claimed)),
                                     (Outcome.LOCALISATION, (truth_cls == cls) & (row >= low_iou))):
                if where.any():
                    kind, j = candidate, int(np.where(where, row, -1.0).argmax())
                    break
        if kind is Outcome.WRONG_CLASS:
            claimed[j] = True
        result.append(BoxOutcome(kind, cls, score, box, j, None if j is None else int(truth_cls[j]),
                                 None if j is None else float(row[j])))
    for j in np.nonzero(~found & ~claimed)[0].tolist():
        result.append(BoxOutcome(Outcome.MISSED, int(truth_cls[j]), None, tuple(float(v) for v in t[j, 1:5]), j,
                                 int(truth_cls[j])))
    return result


def test_the_vectorised_outcomes_follow_the_rules_box_by_box():
    rng = np.random.default_rng(5)
    images = [_random_image(rng, crowded=i % 3 == 0) for i in range(300)]
    predictions = [prediction_array(f) for f, _ in images]
    truths = [truth_array(t) for _, t in images]
    for conf in (0.0, 0.3):
        table = classify_split(predictions, truths, match_images(predictions, truths), conf)
        assert table.images == len(images)
        for i, (found, labelled) in enumerate(images):
            assert table.boxes(i) == _reference_outcomes(found, labelled, conf), (conf, i)
        scores = table.error_scores()
        assert scores.tolist() == pytest.approx([error_score(table.boxes(i)) for i in range(len(images))])


# ---------------------------------------------------------------------------- over a split


def _split(seed: int, images: int = 200) -> SplitPredictions:
    rng = np.random.default_rng(seed)
    labelled_images = []
    for i in range(images):
        found, labelled = _random_image(rng, crowded=i % 10 == 0)
        labelled_images.append(LabelledImage(f"test/images/{i:04d}.jpg", Path(f"/x/{i}.jpg"), f"{i:064x}", 640, 480,
                                             prediction_array(found), truth_array(labelled)))
    model = ModelRef("synthetic", Path("/x/model.onnx"), "0" * 64, 320)
    return SplitPredictions(model, "azaion-synthetic", Path("/x"), "test", 0.001, 0.3, labelled_images)


def test_per_class_figures_are_the_gates_on_the_same_boxes():
    split = _split(11)
    analysis = analyse_split(split, NAMES, CONF)
    as_tuples = [[tuple(row) for row in i.predictions.tolist()] for i in split.images]
    truths = [[tuple(row) for row in i.truths.tolist()] for i in split.images]
    gate = evaluate_detections(as_tuples, truths)  # the gate's entry point, lists of tuples
    assert analysis.map50 == gate.map50 and analysis.map50_95 == gate.map50_95  # exactly, not approximately
    assert (analysis.precision, analysis.recall) == gate.precision_recall(CONF)
    by_class = {c.cls: c for c in analysis.classes}
    assert set(gate.classes) <= set(by_class)
    for cls in gate.classes:
        figures = by_class[cls]
        assert figures.ap50 == gate.ap(cls) and figures.instances == gate.instances(cls)
        assert figures.ap50_95 == np.mean([gate.ap(cls, t) for t in range(10)])
        kept = (gate.pred_cls == cls) & (gate.pred_conf >= CONF)
        hits = int(gate.pred_tp[kept, 0].sum())
        assert figures.counts.true_positive == hits
        assert (figures.precision, figures.recall) == (hits / kept.sum() if kept.any() else 0.0,
                                                      hits / gate.instances(cls))
    assert {c: round(f.ap50, 4) for c, f in by_class.items() if f.ap50 is not None} == \
        {c: row["ap50"] for c, row in gate.per_class().items()}
    evaluation, _ = evaluate_arrays([i.predictions for i in split.images], [i.truths for i in split.images])
    assert np.array_equal(evaluation.pred_tp, gate.pred_tp)


def test_confusion_matrix_rows_are_labels_columns_are_predictions():
    split = _split(12)
    analysis = analyse_split(split, NAMES, CONF)
    matrix = analysis.confusion
    background = len(matrix.classes)
    kept = analysis.evaluation.pred_conf >= CONF
    for i, cls in enumerate(matrix.classes):
        assert matrix.counts[i].sum() == analysis.evaluation.instances(cls)  # every label box once
        assert matrix.counts[:, i].sum() == int((analysis.evaluation.pred_cls[kept] == cls).sum())  # every box once
        assert matrix.cell(cls, cls) == analysis.class_figures(cls).counts.true_positive
    t = analysis.totals
    assert matrix.counts[:background, :background].trace() == t.true_positive
    assert matrix.counts[:background, :background].sum() - t.true_positive == t.wrong_class
    assert matrix.counts[background, :background].sum() == t.duplicate + t.localisation + t.background
    assert matrix.counts[:background, background].sum() == t.missed
    assert matrix.counts[background, background] == 0
    assert matrix.to_dict()["names"][-1] == "background"
    # the totals are the images' counts summed; the worst image has the highest score
    assert sum(i.error_score for i in analysis.images) == pytest.approx(
        sum(error_score(i.boxes) for i in analysis.images))
    worst = analysis.worst(5)
    assert [i.error_score for i in worst] == sorted((i.error_score for i in analysis.images), reverse=True)[:5]


def test_confusion_matrix_by_hand():
    predictions = prediction_array([(0, 0.9, 0, 0, 10, 10), (1, 0.8, 20, 20, 30, 30), (1, 0.7, 60, 60, 70, 70)])
    truths = truth_array([(0, 0, 0, 10, 10), (0, 20, 20, 30, 30), (1, 40, 40, 50, 50)])
    table = classify_split([predictions], [truths], match_images([predictions], [truths]), CONF)
    matrix = confusion_matrix(table, NAMES)
    assert matrix.classes == [0, 1] and matrix.names == ["car", "truck"]
    assert matrix.counts.tolist() == [[1, 1, 0],  # car: one found, one called a truck
                                      [0, 0, 1],  # truck: missed
                                      [0, 1, 0]]  # a truck box on nothing
    assert matrix.cell(0, 1) == 1 and matrix.cell(None, 1) == 1 and matrix.cell(1, None) == 1


def test_an_empty_split_and_images_without_boxes():
    split = _split(13, images=3)
    empty = [LabelledImage(i.name, i.path, i.sha256, 10, 10, prediction_array([]), truth_array([]))
             for i in split.images]
    analysis = analyse_split(SplitPredictions(split.model, split.dataset, split.dataset_path, "test", 0.001, 0.3,
                                              empty), NAMES, CONF)
    assert analysis.map50 is None and analysis.classes == [] and analysis.totals == OutcomeCounts()
    assert analysis.confusion.counts.tolist() == [[0]] and analysis.worst(3) == []
    assert analysis.to_dict()["where"] == "test, 3 images, imgsz 320, ONNX"
