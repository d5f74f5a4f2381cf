"""One image rule and one label rule for the consumer and formation (images.py, labels.py).

Fuzzed images OpenCV cannot decode (a JPEG/PNG header followed by garbage, bit-flipped JPEGs,
BMP/WebP/TIFF magic followed by garbage) never reach a dataset: formation quarantines them
with a reason. Whatever the consumer's structural check refuses, formation refuses for the
same reason; and the consumer refuses a box that formation would refuse once written."""

import cv2
import numpy as np
import pytest

from azaion_training.dataset.form import form_dataset
from azaion_training.images import decode_problem, structure_problem
from azaion_training.labels import Box, parse_label_text
from azaion_training.layout import SPLITS, DatasetDir
from azaion_training.queue.messages import (
    MessageRejected,
    NormalizedDetection,
    SampleOptions,
    decode,
    encode_message,
    sample_annotation,
)
from azaion_training.scenes import encode_jpeg, render_scene
from tests.dataset.conftest import add_annotations, make_old

SUFFIX = {"jpeg": ".jpg", "png": ".png", "bmp": ".bmp", "webp": ".webp", "tiff": ".tif"}


def opencv_reads(data: bytes) -> bool:
    """The full-resolution colour decode training does."""
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None


def good_jpeg(seed: int = 0) -> bytes:
    return encode_jpeg(render_scene(np.random.default_rng(seed), 64, max_objects=2).image)


def fuzzed_images() -> dict[str, tuple[str, bytes]]:
    """name -> (format, bytes) of images OpenCV cannot decode that pass the structural check."""
    rng = np.random.default_rng(7)
    garbage = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    jpeg = good_jpeg()
    png = cv2.imencode(".png", np.full((40, 50, 3), 90, np.uint8))[1].tobytes()
    cases = {
        "jpeg-header-garbage": ("jpeg", jpeg[:jpeg.index(b"\xff\xda")] + garbage + b"\xff\xd9"),
        "png-header-garbage": ("png", png[:33] + garbage + png[-12:]),
        "bmp-magic-garbage": ("bmp", b"BM" + garbage),
        "webp-magic-garbage": ("webp", b"RIFF" + len(garbage).to_bytes(4, "little") + b"WEBPVP8 " + garbage),
        "tiff-magic-garbage": ("tiff", b"II*\0" + garbage),
    }
    flipped = 0
    while flipped < 4:  # bit flips in the JPEG headers that OpenCV cannot decode
        data = bytearray(jpeg)
        for _ in range(3):
            data[int(rng.integers(2, jpeg.index(b"\xff\xda")))] ^= 1 << int(rng.integers(0, 8))
        if structure_problem(bytes(data)) is None and not opencv_reads(bytes(data)):
            cases[f"jpeg-bitflip-{flipped}"] = ("jpeg", bytes(data))
            flipped += 1
    return cases


def test_fuzzed_images_pass_the_structure_but_not_the_decode():
    for name, (_, data) in fuzzed_images().items():
        assert structure_problem(data) is None, name  # only a decode can tell
        assert not opencv_reads(data), name
        assert "cannot be decoded" in decode_problem(data), name


def test_formation_quarantines_every_image_opencv_cannot_decode(settings, layout):
    good = add_annotations(layout, 12)
    fuzzed = fuzzed_images()
    for name, (kind, data) in fuzzed.items():
        layout.data.image_path(name, SUFFIX[kind]).write_bytes(data)
        layout.data.label_path(name).write_text("1 0.5 0.5 0.2 0.2\n")
        make_old(layout.data.image_path(name, SUFFIX[kind]), layout.data.label_path(name))

    result = form_dataset(settings, progress=False)

    assert result.corrupted == len(fuzzed) and sum(result.sources.values()) == len(good)
    dataset = DatasetDir(result.path)
    admitted = [image for split in SPLITS for image in dataset.images(split)]
    assert sorted(p.stem for p in admitted) == good
    assert all(cv2.imread(str(p)) is not None for p in admitted)
    for name, (kind, _) in fuzzed.items():
        reason = (layout.corrupted.root / f"{name}.reason.txt").read_text()
        assert f"{kind.upper()} image cannot be decoded" in reason, (name, reason)
        assert layout.corrupted.image_path(name, SUFFIX[kind]).is_file()
        assert layout.corrupted.label_path(name).is_file()

    again = form_dataset(settings, progress=False)  # nothing bad is left, and the cached checks hold
    assert again.corrupted == 0 and sum(again.sources.values()) == len(good)


def consumer_refusal(image: bytes, boxes: list[tuple] = ((1, 0.5, 0.5, 0.2, 0.2),)) -> str | None:
    """The consumer's reason for refusing a Created message with this image and these boxes."""
    options = SampleOptions(detections=[NormalizedDetection(*box) for box in boxes])
    try:
        decode(encode_message(sample_annotation("probe", image, options)))
    except MessageRejected as exc:
        return exc.detail
    return None


@pytest.mark.parametrize("image", [
    good_jpeg()[:-300],  # truncated upload
    good_jpeg()[:2] + good_jpeg()[200:],  # SOI then scan data: no frame header
    b"GIF89a" + bytes(100),
    b"\xff\xd8\xff",
    cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()[:-20],
    *(data for _, data in fuzzed_images().values()),
])
def test_what_the_consumer_refuses_formation_refuses_for_the_same_reason(image):
    problem = structure_problem(image)
    refusal = consumer_refusal(image)
    assert (refusal is None) == (problem is None)
    if problem is not None:
        assert problem in refusal and decode_problem(image) == problem
    else:  # the consumer stores it; formation's decode then quarantines it
        assert decode_problem(image) is not None


@pytest.mark.parametrize("box, accepted", [
    ((1, 0.5, 0.5, 0.2, 0.2), True),
    ((1, 0.5, 0.5, 1e-9, 0.2), False),  # a valid number, stored as 0.000000
    ((1, 0.5, 0.5, 0.2, 4e-7), False),  # stored as 0.000000
    ((1, 0.5, 0.5, 6e-7, 0.2), True),  # stored as 0.000001
    ((1, 0.5, 0.5, 0.9999999, 0.2), True),  # stored as 1.000000
    ((1, 0.5, 0.5, 0.0, 0.2), False),
    ((80, 0.5, 0.5, 0.1, 0.1), False),
])
def test_the_consumer_refuses_the_boxes_formation_would_refuse_once_written(box, accepted):
    refusal = consumer_refusal(good_jpeg(), [box])
    assert (refusal is None) == accepted, refusal
    if accepted:  # the label line the consumer writes passes formation's check
        assert parse_label_text(Box(*box).line())[0].cls == box[0]
    else:
        assert refusal.startswith("detection 0:")
