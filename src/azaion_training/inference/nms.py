"""The overlap cleanup of detections: when two boxes overlap above the IoU threshold the
lower-confidence one goes; on equal confidence the lower class id stays.

It compares boxes across classes (one object gets one box, whatever weather variant of a
class the model also scored) and is greedy like every YOLO NMS: a box that was removed
no longer removes others, so a chain A-B-C (A-C apart) keeps A and C.
"""

import numpy as np


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each row of an (N, 4) xyxy array."""
    inter_w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    inter_h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = inter_w * inter_h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter, dtype=np.float64), where=union > 0)


def remove_overlaps(boxes: np.ndarray, confidences: np.ndarray, class_ids: np.ndarray, iou_threshold: float,
                    max_kept: int | None = None) -> np.ndarray:
    """Indices of the boxes to keep, best first (confidence descending, then class id)."""
    order = np.lexsort((class_ids, -confidences))  # last key is the primary one
    kept: list[int] = []
    while order.size and (max_kept is None or len(kept) < max_kept):
        best, rest = order[0], order[1:]
        kept.append(int(best))
        order = rest[box_iou(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(kept, dtype=np.int64)
