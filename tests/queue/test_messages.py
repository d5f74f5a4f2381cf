"""Wire format: decode what the platform sends, encode the same bytes, reject everything else."""

import gzip
from datetime import UTC, datetime, timedelta

import msgpack
import pytest

from azaion_training.images import image_format, structure_problem
from azaion_training.queue.messages import (
    AnnotationBulkMessage,
    AnnotationMessage,
    AnnotationStatus,
    Limits,
    MessageRejected,
    Role,
    Source,
    amqp_bytes,
    decode,
    encode_annotation,
    encode_bulk,
)
from tests.queue.conftest import created, jpeg


def platform_fields(**overrides) -> list:
    """A Created body laid out as the C# [Key(n)] class serialises it."""
    fields = [msgpack.Timestamp.from_datetime(datetime(2025, 3, 1, 12, 0, tzinfo=UTC)), "ann-1", "flight-7.mp4",
              12_345_670, ".jpg",
              '[{"annotationName": "ann-1", "ClassNumber": 20, "CenterX": 0.5, "CenterY": 0.4, "Width": 0.1, '
              '"Height": 0.2, "Probability": 0.9}]', jpeg(1), 20, "v@azaion.com", 1, 10]
    for index, value in overrides.items():
        fields[int(index[1:])] = value
    return fields


def test_decodes_platform_message_with_aliases_timestamp_and_ticks():
    message = decode(amqp_bytes(AnnotationStatus.Created, msgpack.packb(platform_fields(), use_bin_type=True)))
    assert isinstance(message, AnnotationMessage)
    assert message.created_date == datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert message.time == timedelta(microseconds=1_234_567)
    assert (message.created_role, message.source, message.status) == (Role.Validator, Source.Manual,
                                                                       AnnotationStatus.Created)
    assert message.original_media_name == "flight-7.mp4"
    assert message.label_text() == "20 0.500000 0.400000 0.100000 0.200000\n"
    assert message.detections[0].confidence == 0.9


@pytest.mark.parametrize("status", [10, "Edited", "edited", b"EDITED", "20"])
def test_status_property_as_int_or_name(status):
    from rstream import AMQPMessage

    body = msgpack.packb(platform_fields(), use_bin_type=True)
    data = bytes(AMQPMessage(body=body, application_properties={"AnnotationStatus": status}))
    expected = AnnotationStatus.Created if status == 10 else AnnotationStatus.Edited
    assert decode(data).status is expected


def test_bare_and_gzip_bodies_and_round_trip():
    body = msgpack.packb(platform_fields(), use_bin_type=True)
    bare, zipped = decode(body), decode(amqp_bytes(AnnotationStatus.Created, gzip.compress(body)))
    assert bare == zipped  # bare body: status from field 10
    assert decode(amqp_bytes(AnnotationStatus.Created, encode_annotation(bare))) == bare
    assert decode(amqp_bytes(AnnotationStatus.Created, encode_annotation(bare, compress=True))) == bare
    names = decode(amqp_bytes(AnnotationStatus.Deleted, encode_bulk(["a", "b"]) ))
    assert names == AnnotationBulkMessage(["a", "b"], AnnotationStatus.Deleted)
    extra = msgpack.packb([["x"], "ignored", 30], use_bin_type=True)  # further bulk fields ignored
    assert decode(amqp_bytes(AnnotationStatus.Validated, extra)).annotation_names == ["x"]


def rejected(data: bytes, limits: Limits = Limits()) -> str:
    with pytest.raises(MessageRejected) as info:
        decode(data, limits)
    return info.value.reason


def created_with(**overrides) -> bytes:
    return amqp_bytes(AnnotationStatus.Created, msgpack.packb(platform_fields(**overrides), use_bin_type=True))


@pytest.mark.parametrize("data, reason", [
    (b"\x00\x01garbage", "bad-msgpack"),
    (b"\x00Su\xff\x00", "undecodable"),  # broken AMQP envelope
    (amqp_bytes(AnnotationStatus.Created, msgpack.packb(platform_fields())[:-30]), "bad-msgpack"),  # truncated
    (amqp_bytes(AnnotationStatus.Created, b"\x1f\x8b\x08\x00garbage"), "undecodable"),  # broken gzip
    (amqp_bytes(AnnotationStatus.Created, msgpack.packb({"a": 1})), "bad-field"),
    (msgpack.packb([["a"]]), "unknown-status"),  # bare bulk: no status anywhere
    (created_with(f3="12"), "bad-field"),
    (created_with(f7=55), "bad-field"),  # unknown role
    (created_with(f0="2025-01-01"), "bad-field"),
    (created_with(f6=b"not an image at all"), "not-an-image"),
    (created_with(f6=jpeg(1)[:-100]), "not-an-image"),  # truncated JPEG
    (created_with(f4=".exe"), "bad-field"),
    (created_with(f5='[{"cls": 1, "x": 1.5, "y": 0.5, "w": 0.1, "h": 0.1}]'), "bad-detection"),
    (created_with(f5='[{"cls": 80, "x": 0.5, "y": 0.5, "w": 0.1, "h": 0.1}]'), "bad-detection"),
    (created_with(f5='[{"cls": 1, "x": 0.5, "y": 0.5, "w": 0, "h": 0.1}]'), "bad-detection"),
    (created_with(f5='[{"cls": 1, "x": 0.5, "y": 0.5, "w": 1e-9, "h": 0.1}]'), "bad-detection"),  # stored as 0.000000
    (created_with(f5="{not json"), "bad-detection"),
    (created_with(f1="../x"), "unsafe-name"),
    (created_with(f1="a/b"), "unsafe-name"),
    (created_with(f1="a\0b"), "unsafe-name"),
    (created_with(f1=""), "unsafe-name"),
    (created_with(f1=".hidden"), "unsafe-name"),
    (created_with(f1="x" * 201), "unsafe-name"),
    (created_with(f1=17), "unsafe-name"),
    (amqp_bytes(AnnotationStatus.Deleted, encode_bulk(["ok", "../../etc/passwd"])), "unsafe-name"),
])
def test_bad_input_is_rejected_with_a_reason(data, reason):
    assert rejected(data) == reason


@pytest.mark.parametrize("w, accepted", [
    (1e-6, True), (5.1e-7, True),  # written as 0.000001
    (4.9e-7, False), (1e-300, False),  # written as 0.000000
    (1, True), (0.9999999, True), (float("nan"), False),
])
def test_a_valid_box_is_accepted_exactly_when_its_label_line_would_be(w, accepted):
    from azaion_training.labels import Box, LabelError, parse_line

    try:
        parse_line(Box(3, 0.5, 0.5, w, 0.2).line())
        formation_accepts = True
    except LabelError:
        formation_accepts = False
    assert formation_accepts is accepted
    detections = f'[{{"cls": 3, "x": 0.5, "y": 0.5, "w": {w}, "h": 0.2}}]'.replace("nan", "NaN")
    if accepted:
        assert decode(created_with(f5=detections)).detections[0].w == w
    else:
        assert rejected(created_with(f5=detections)) == "bad-detection"


def test_unknown_status_property():
    from rstream import AMQPMessage

    data = bytes(AMQPMessage(body=msgpack.packb(platform_fields()), application_properties={"AnnotationStatus": 50}))
    assert rejected(data) == "unknown-status"


def test_image_size_limit():
    assert rejected(created("big"), Limits(max_image_bytes=100)) == "image-too-large"
    assert isinstance(decode(created("big")), AnnotationMessage)


def test_image_format_recognises_real_formats():
    import cv2
    import numpy as np

    picture = np.zeros((20, 30, 3), np.uint8)
    for suffix, expected in ((".png", "png"), (".jpg", "jpeg"), (".bmp", "bmp"), (".webp", "webp"), (".tif", "tiff")):
        data = cv2.imencode(suffix, picture)[1].tobytes()
        assert image_format(data) == expected and structure_problem(data) is None
    assert image_format(b"GIF89a....") is None and "unknown magic" in structure_problem(b"GIF89a" + bytes(20))


def test_queue_package_imports_without_heavy_libraries():
    import subprocess
    import sys

    code = ("import sys, azaion_training.queue.cli, azaion_training.queue.consumer, azaion_training.queue.handler;"
            "print(sorted(m for m in ('cv2', 'torch', 'ultralytics', 'numpy', 'PIL') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
