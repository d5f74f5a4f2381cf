"""Our pipeline against Ultralytics itself: `YOLO(model.onnx).predict()` runs ONNX Runtime with
Ultralytics' own pre- and post-processing; our detections must be the same boxes."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from azaion_training.inference.engines import OnnxEngine
from azaion_training.inference.nms import box_iou
from azaion_training.inference.pipeline import Detector, letterbox_for, preprocess

ASSETS = Path(__import__("ultralytics").__file__).parent / "assets"


@pytest.fixture(scope="module")
def images(valid_images, odd_images) -> list[np.ndarray]:
    """Square, non-square, up- and down-scaled frames, and two real photos (810x1080, 1280x720)."""
    paths = valid_images[:4] + odd_images[:4] + [ASSETS / "bus.jpg", ASSETS / "zidane.jpg"]
    return [cv2.imread(str(p)) for p in paths]


def _conf_with_detections_everywhere(engine: OnnxEngine, images: list[np.ndarray]) -> float:
    """A 2-epoch model is barely confident: pick a threshold under every image's best score,
    so each compared image has detections."""
    best = []
    for image in images:
        box = letterbox_for(image.shape[:2], engine.input_shape, engine.dynamic_hw, engine.stride)
        output = engine.run(preprocess([image], [box]))[0][0]
        best.append(output[:, 4].max() if engine.end2end else output[4:].max())
    return float(min(best)) * 0.5


def _assert_same_boxes(ours, theirs) -> None:
    reference = theirs.boxes
    assert len(ours) == len(reference) > 0
    ref_xyxy, ref_cls = reference.xyxy.numpy().astype(float), reference.cls.numpy().astype(int)
    used = set()
    for det in ours:
        ious = box_iou(np.array([det.x1, det.y1, det.x2, det.y2]), ref_xyxy)
        ious[[i for i in range(len(ious)) if i in used or ref_cls[i] != det.cls]] = -1
        match = int(ious.argmax())
        assert ious[match] >= 0.95, f"no Ultralytics box of class {det.cls} matches {det}"
        used.add(match)


@pytest.mark.parametrize("layout_name", ["end2end", "raw"])
def test_detections_match_ultralytics_predict(onnx_models, images, layout_name):
    from ultralytics import YOLO

    model = onnx_models[layout_name]
    engine = OnnxEngine(model.read_bytes(), batch_size=4)
    conf = _conf_with_detections_everywhere(engine, images)
    # End-to-end models need no NMS, so Ultralytics applies none: iou=1 turns our cleanup off to compare.
    # Raw models: Ultralytics' class-agnostic NMS is our cleanup.
    iou = 1.0 if layout_name == "end2end" else 0.5
    ours = Detector(engine, conf=conf, iou=iou).detect(images)
    reference = YOLO(str(model), task="detect")
    for image, found in zip(images, ours, strict=True):
        theirs = reference.predict(image, imgsz=160, conf=conf, iou=iou, agnostic_nms=True, verbose=False)[0]
        _assert_same_boxes(found, theirs)


def test_letterbox_is_ultralytics_letterbox(images):
    from ultralytics.data.augment import LetterBox

    for image in images:
        for rect in (False, True):
            box = letterbox_for(image.shape[:2], (160, 160), rect, 32)
            theirs = LetterBox((160, 160), auto=rect, stride=32)(image=image)
            ours = preprocess([image], [box])[0]
            expected = theirs[..., ::-1].transpose(2, 0, 1).astype(np.float32) / 255
            assert ours.shape == expected.shape
            np.testing.assert_array_equal(ours, expected)


def test_batch_one_and_batch_four_give_the_same_detections(onnx_models, images):
    data = onnx_models["raw"].read_bytes()
    engine_one, engine_four = OnnxEngine(data, batch_size=1), OnnxEngine(data, batch_size=4)
    conf = _conf_with_detections_everywhere(engine_one, images)
    one = Detector(engine_one, conf, 0.3).detect(images)
    four = Detector(engine_four, conf, 0.3).detect(images)
    assert sum(map(len, one)) > 0
    for a, b in zip(one, four, strict=True):
        assert [d.cls for d in a] == [d.cls for d in b]
        assert [d.conf for d in a] == pytest.approx([d.conf for d in b], rel=1e-4)
        np.testing.assert_allclose([[d.x1, d.y1, d.x2, d.y2] for d in a], [[d.x1, d.y1, d.x2, d.y2] for d in b],
                                   atol=0.05)


def test_detections_are_normalised_and_in_range(onnx_models, images):  # BT-INF-03
    engine = OnnxEngine(onnx_models["end2end"].read_bytes(), batch_size=4)
    results = Detector(engine, conf=0.0, iou=0.3).detect(images)
    assert sum(map(len, results)) > 0
    for image, found in zip(images, results, strict=True):
        height, width = image.shape[:2]
        for d in found:
            assert 0 <= d.cls <= 79 and 0 <= d.conf <= 1
            assert all(0 <= v <= 1 for v in (d.cx, d.cy, d.w, d.h))
            assert 0 <= d.x1 <= d.x2 <= width and 0 <= d.y1 <= d.y2 <= height
            assert d.cx == pytest.approx((d.x1 + d.x2) / 2 / width) and d.w == pytest.approx((d.x2 - d.x1) / width)
