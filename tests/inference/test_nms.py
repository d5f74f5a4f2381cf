"""The overlap cleanup (inference/nms.py)."""

import numpy as np

from azaion_training.inference.nms import box_iou, remove_overlaps


def _keep(boxes, confs, classes, iou=0.3):
    return remove_overlaps(np.array(boxes, dtype=float), np.array(confs, dtype=float), np.array(classes), iou)


def test_overlapping_boxes_keep_the_more_confident_one():  # BT-NMS-01
    kept = _keep([[10, 10, 50, 50], [12, 11, 51, 50]], [0.5, 0.9], [3, 3])
    assert kept.tolist() == [1]


def test_distant_boxes_are_both_kept():  # BT-NMS-02
    kept = _keep([[0, 0, 10, 10], [100, 100, 120, 120]], [0.5, 0.9], [1, 2])
    assert sorted(kept.tolist()) == [0, 1]


def test_a_chain_keeps_at_most_two():  # BT-NMS-03: A-B and B-C overlap, A-C apart
    kept = _keep([[0, 0, 10, 10], [3, 0, 13, 10], [8, 0, 18, 10]], [0.9, 0.8, 0.7], [0, 0, 0])
    assert len(kept) <= 2 and kept.tolist() == [0, 2]  # B goes, and a removed box removes nothing


def test_equal_confidence_keeps_the_lower_class_id_across_classes():
    kept = _keep([[0, 0, 10, 10], [0, 0, 10, 10]], [0.6, 0.6], [24, 4])
    assert kept.tolist() == [1]


def test_overlap_exactly_at_the_threshold_keeps_both():
    # IoU of these two is exactly 0.5: only an overlap *above* the threshold removes a box
    boxes = [[0, 0, 10, 10], [0, 0, 10, 20]]
    assert box_iou(np.array(boxes[0], float), np.array(boxes[1:], float))[0] == 0.5
    assert sorted(_keep(boxes, [0.9, 0.8], [0, 0], iou=0.5).tolist()) == [0, 1]
    assert _keep(boxes, [0.9, 0.8], [0, 0], iou=0.49).tolist() == [0]


def test_max_kept_and_empty_input():
    boxes = [[i * 20, 0, i * 20 + 10, 10] for i in range(5)]
    assert len(remove_overlaps(np.array(boxes, float), np.linspace(0.9, 0.5, 5), np.zeros(5, int), 0.3, 3)) == 3
    assert remove_overlaps(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 0.3).tolist() == []
