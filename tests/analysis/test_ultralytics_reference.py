"""Our figures against Ultralytics' on a real detector (the fall-detection YOLOv8s).

Two independent references, each with the tolerance it is held to:

- the same cached detections through Ultralytics' own matching (`match_predictions`, greedy by
  confidence like ours) and AP (`ap_per_class`, 101-point interpolation): the true positives
  must be identical at all ten IoU thresholds, and AP may differ only by the interpolation,
  at most INTERPOLATION_TOLERANCE per class (measured here: about 0.002);
- Ultralytics' whole validator on the same ONNX file with our overlap cleanup (class-agnostic at
  INFERENCE_IOU, confidence down to 0.001): its own letterbox (rect batches padded by half a
  stride) changes the detections a little, so mAP50 may differ by VALIDATOR_TOLERANCE and a
  class's AP50 by CLASS_TOLERANCE (measured here: 0.010 and 0.019).
"""

import numpy as np
import pytest

from azaion_training.analysis.outcomes import analyse_split, class_names
from azaion_training.analysis.predictions import split_predictions
from azaion_training.inference.scoring import EVAL_CONF
from tests.analysis.conftest import TRAINED_IMGSZ

INTERPOLATION_TOLERANCE = 0.01
VALIDATOR_TOLERANCE = 0.03
CLASS_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def ours(fall):
    settings = fall.settings()
    predictions, _ = split_predictions(settings, fall.good, progress=False)
    return predictions, analyse_split(predictions, class_names(settings), settings.inference.conf)


def test_ultralytics_metrics_on_the_same_detections(ours):
    import torch
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils.metrics import ap_per_class, box_iou

    predictions, analysis = ours
    validator = DetectionValidator()
    found = []
    for image in predictions.images:
        p, t = image.predictions, image.truths
        if not len(t):
            found.append(np.zeros((len(p), 10), dtype=bool))
            continue
        iou = box_iou(torch.tensor(t[:, 1:5]), torch.tensor(p[:, 2:6]))
        found.append(validator.match_predictions(torch.tensor(p[:, 0]), torch.tensor(t[:, 0]), iou).numpy())
    evaluation = analysis.evaluation
    assert np.array_equal(np.concatenate(found), evaluation.pred_tp)  # the same matching
    targets = np.concatenate([i.truths[:, 0] for i in predictions.images])
    result = ap_per_class(evaluation.pred_tp, evaluation.pred_conf, evaluation.pred_cls, targets)
    ap, classes = result[5], result[6]
    for cls, row in zip(classes.tolist(), ap, strict=True):
        figures = analysis.class_figures(int(cls))
        assert abs(figures.ap50 - row[0]) <= INTERPOLATION_TOLERANCE, (cls, figures.ap50, row[0])
        assert abs(figures.ap50_95 - row.mean()) <= INTERPOLATION_TOLERANCE
    assert abs(analysis.map50 - ap[:, 0].mean()) <= INTERPOLATION_TOLERANCE
    assert analysis.map50 > 0.1  # a real detector: the comparison is not of zeros


def test_ultralytics_validator_on_the_same_onnx(fall, ours, tmp_path):
    from ultralytics import YOLO

    predictions, analysis = ours
    settings = fall.settings()
    result = YOLO(str(predictions.model.onnx), task="detect").val(
        data=str(predictions.dataset_path / "data.yaml"), split="test", imgsz=TRAINED_IMGSZ, batch=1, conf=EVAL_CONF,
        iou=settings.inference.iou, agnostic_nms=True, device="cpu", plots=False, project=str(tmp_path),
        name="val", verbose=False)
    theirs = dict(zip(result.box.ap_class_index.tolist(), result.box.ap50.tolist(), strict=True))
    assert set(theirs) == {c.cls for c in analysis.classes if c.ap50 is not None}
    for cls, ap50 in theirs.items():
        assert abs(analysis.class_figures(cls).ap50 - ap50) <= CLASS_TOLERANCE, (cls, analysis.class_figures(cls), ap50)
    assert abs(analysis.map50 - result.box.map50) <= VALIDATOR_TOLERANCE, (analysis.map50, result.box.map50)
