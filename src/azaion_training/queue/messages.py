"""The Azaion stream wire format (docs/wire-format.md): decode what the platform sends,
and encode the same bytes for samples, tests, benchmarks and the demo.

A stream entry is an AMQP 1.0 message (what .NET/Java stream clients publish) whose
application property `AnnotationStatus` carries the event type, or a bare body. A body is
a MessagePack array with positional fields, optionally gzip-compressed. Decoding checks
every field; anything wrong raises `MessageRejected` with a short reason code, so the
consumer can quarantine it and move on.
"""

import gzip
import json
import math
import operator
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any

import msgpack

from azaion_training.images import IMAGE_SUFFIXES, structure_problem
from azaion_training.labels import Box, label_text, stored_box_problem
from azaion_training.layout import is_safe_name
from azaion_training.queue.amqp import AmqpError, read_message

STATUS_PROPERTY = "AnnotationStatus"
# AMQP 1.0 section descriptors (header .. footer) start with 0x00 0x53 0x70..0x78.
_AMQP_SECTIONS = range(0x70, 0x79)
_GZIP_MAGIC = b"\x1f\x8b"
ECHO_MAX = 200  # characters of any received value echoed in a log line or a rejection record


class AnnotationStatus(IntEnum):
    Created = 10
    Edited = 20
    Validated = 30
    Deleted = 40


class Role(IntEnum):
    Operator = 10
    Validator = 20
    CompanionPC = 30
    Admin = 40
    ApiAdmin = 1000

    def is_validator(self) -> bool:
        return self in (Role.Validator, Role.Admin, Role.ApiAdmin)


class Source(IntEnum):
    AI = 0
    Manual = 1


class MessageRejected(ValueError):
    """A message that cannot be applied. `reason` is a short code (counted and stored in the
    rejection's JSON), `detail` says what exactly was wrong."""

    def __init__(self, reason: str, detail: str, status: AnnotationStatus | None = None):
        detail = capped(detail)  # details echo the sender's bytes: never let them flood logs and records
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.status = status


def capped(text: str, limit: int = ECHO_MAX) -> str:
    """`text` cut to `limit` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


@dataclass(frozen=True)
class NormalizedDetection:
    """A detection as the platform sends it: YOLO centre and size, normalised to 0..1."""

    cls: int
    x: float
    y: float
    w: float
    h: float
    confidence: float = 1.0

    def box(self) -> Box:
        return Box(self.cls, self.x, self.y, self.w, self.h)


@dataclass(frozen=True)
class AnnotationMessage:
    """Created/Edited: the 11 positional fields of the platform's AnnotationMessage."""

    created_date: datetime
    name: str
    original_media_name: str
    time: timedelta
    image_extension: str
    detections: list[NormalizedDetection]
    image: bytes | None
    created_role: Role
    created_email: str
    source: Source
    status: AnnotationStatus

    def label_text(self) -> str:
        return label_text([detection.box() for detection in self.detections])


@dataclass(frozen=True)
class AnnotationBulkMessage:
    """Validated/Deleted: field 0 is the list of annotation names (further fields ignored)."""

    annotation_names: list[str]
    status: AnnotationStatus = AnnotationStatus.Validated


@dataclass(frozen=True)
class Limits:
    max_image_bytes: int = 50 * 1024 * 1024

    @property
    def max_body_bytes(self) -> int:  # a gzip body may not inflate beyond this
        return self.max_image_bytes + 16 * 1024 * 1024


# ---------------------------------------------------------------- decoding


def decode(data: bytes, limits: Limits = Limits()) -> AnnotationMessage | AnnotationBulkMessage:
    """One stream entry (AMQP envelope or bare body, plain or gzip) -> a typed message."""
    body, properties = _open_envelope(bytes(data))
    status = _status_from_properties(properties)
    body = _inflate(body, limits, status)
    fields = _unpack(body, status)
    if status is None:
        status = _status_from_body(fields)
    if status in (AnnotationStatus.Created, AnnotationStatus.Edited):
        return _annotation(fields, status, limits)
    return _bulk(fields, status)


def _open_envelope(data: bytes) -> tuple[bytes, dict]:
    if len(data) >= 3 and data[0] == 0x00 and data[1] == 0x53 and data[2] in _AMQP_SECTIONS:
        try:
            message = read_message(data)  # bounded: never rstream's decoder (see queue/amqp.py)
        except AmqpError as exc:
            raise MessageRejected("undecodable", f"broken AMQP 1.0 envelope ({str(exc)[:200]})") from None
        body = b"".join(message.data) if message.data else message.value
        if isinstance(body, list) and body and all(isinstance(part, bytes | bytearray) for part in body):
            body = b"".join(body)
        if not isinstance(body, bytes | bytearray):
            raise MessageRejected("undecodable", f"AMQP body is {type(body).__name__}, expected binary data")
        return bytes(body), message.application_properties
    return data, {}


def _text(value: object) -> object:
    return value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else value


def _status_from_properties(properties: dict) -> AnnotationStatus | None:
    for key, value in properties.items():
        if str(_text(key)).lower() == STATUS_PROPERTY.lower():
            return parse_status(_text(value))
    return None


def parse_status(value: object) -> AnnotationStatus:
    """10/20/30/40 or Created/Edited/Validated/Deleted (any case)."""
    if isinstance(value, str):
        by_name = {status.name.lower(): status for status in AnnotationStatus}
        if value.strip().lower() in by_name:
            return by_name[value.strip().lower()]
        if value.strip().isdigit():
            value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and value in AnnotationStatus._value2member_map_:
        return AnnotationStatus(value)
    raise MessageRejected("unknown-status", f"{STATUS_PROPERTY} {capped(repr(value), 80)} is not one of "
                          "10/20/30/40 or Created/Edited/Validated/Deleted")


def _inflate(body: bytes, limits: Limits, status: AnnotationStatus | None) -> bytes:
    if not body.startswith(_GZIP_MAGIC):
        return body
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(body, limits.max_body_bytes + 1)
    except zlib.error as exc:
        raise MessageRejected("undecodable", f"broken gzip body ({exc})", status) from None
    if len(out) > limits.max_body_bytes:
        raise MessageRejected("image-too-large", f"gzip body inflates beyond {limits.max_body_bytes} bytes", status)
    if not inflater.eof:
        raise MessageRejected("undecodable", "truncated gzip body", status)
    return out


# What msgpack's errors mean when they come without a message (FormatError has none).
_UNPACK_HINTS = {"FormatError": "a byte that starts no MessagePack value (e.g. the reserved 0xc1)",
                 "StackError": "nested deeper than the decoder allows",
                 "ExtraData": "more bytes after the first value"}


def _unpack_error(exc: Exception, body: bytes) -> str:
    """`Type: message` of a decoder error, never empty: a bare exception gets what its type means
    and the body's first bytes, so a rejection record says what to look at."""
    name = type(exc).__name__
    text = str(exc).strip()
    if text:
        return f"{name}: {text[:120]}"
    hint = _UNPACK_HINTS.get(name, "the decoder gave no message")
    return f"{name}: {hint}; body starts {body[:8].hex(' ') or '(empty)'}, {len(body)} bytes"


def _unpack(body: bytes, status: AnnotationStatus | None) -> list:
    try:
        size = len(body)  # no length claimed inside may exceed the bytes there are
        fields = msgpack.unpackb(body, raw=False, timestamp=3, strict_map_key=False, max_str_len=size,
                                 max_bin_len=size, max_array_len=size, max_map_len=size // 2, max_ext_len=size)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise MessageRejected("bad-msgpack", f"body is not one MessagePack value ({_unpack_error(exc, body)})",
                              status) from None
    if not isinstance(fields, list):
        raise MessageRejected("bad-field", f"body is a MessagePack {type(fields).__name__}, expected an array",
                              status)
    return fields


def _status_from_body(fields: list) -> AnnotationStatus:
    if len(fields) >= 11:
        status = parse_status(fields[10])
        if status in (AnnotationStatus.Created, AnnotationStatus.Edited):
            return status
    raise MessageRejected("unknown-status", f"no {STATUS_PROPERTY} application property and the body "
                          "carries no Created/Edited status in field 10")


def _field(fields: list, index: int, name: str, types: type | tuple, status: AnnotationStatus) -> Any:
    value = fields[index] if index < len(fields) else None
    if not isinstance(value, types) or isinstance(value, bool):
        wanted = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise MessageRejected("bad-field", f"field {index} ({name}) is {type(value).__name__}, expected {wanted}",
                              status)
    return value


def _enum(enum: type[IntEnum], value: int, index: int, name: str, status: AnnotationStatus) -> Any:
    try:
        return enum(value)
    except ValueError:
        raise MessageRejected("bad-field", f"field {index} ({name}) {value} is not a known {enum.__name__}",
                              status) from None


def checked_name(name: object, status: AnnotationStatus) -> str:
    if not is_safe_name(name):
        shown = repr(name)[:80]
        raise MessageRejected("unsafe-name", f"annotation name {shown} is not 1-200 characters of "
                              "A-Z a-z 0-9 . _ - (not starting with '.')", status)
    return name


def _annotation(fields: list, status: AnnotationStatus, limits: Limits) -> AnnotationMessage:
    if len(fields) < 10:
        raise MessageRejected("bad-field", f"annotation message has {len(fields)} fields, expected 11", status)
    name = checked_name(fields[1], status)
    created = _field(fields, 0, "createdDate", datetime, status)
    media = _field(fields, 2, "originalMediaName", str, status)
    ticks = _field(fields, 3, "time", int, status)
    extension = image_extension(_field(fields, 4, "imageExtension", str, status), status)
    detections = parse_detections(_field(fields, 5, "detections", (str, bytes), status), status)
    image = fields[6] if len(fields) > 6 else None
    if image is not None and not isinstance(image, bytes):
        raise MessageRejected("bad-field", f"field 6 (image) is {type(image).__name__}, expected binary", status)
    if image:
        check_image(image, limits, status)
    role = _enum(Role, _field(fields, 7, "createdRole", int, status), 7, "createdRole", status)
    email = fields[8] if isinstance(fields[8], str) else ""
    source = _enum(Source, _field(fields, 9, "source", int, status), 9, "source", status)
    return AnnotationMessage(created, name, media, timedelta(microseconds=ticks / 10), extension, detections,
                             image or None, role, email, source, status)


def image_extension(value: str, status: AnnotationStatus) -> str:
    extension = value.strip().lower()
    extension = extension if extension.startswith(".") else f".{extension}"
    if extension not in IMAGE_SUFFIXES:
        raise MessageRejected("bad-field", f"imageExtension {value[:20]!r} is not one of {IMAGE_SUFFIXES}", status)
    return extension


_DETECTION_ALIASES = (  # the accepted keys (lower-cased) of cls, x, y, w, h, confidence, in that order
    ("cls", "class", "classnumber"),
    ("x", "centerx"),
    ("y", "centery"),
    ("w", "width"),
    ("h", "height"),
    ("confidence", "probability"),
)
_PLAIN_KEYS = operator.itemgetter(*(aliases[0] for aliases in _DETECTION_ALIASES))  # the platform's own keys


def _first(lowered: dict, aliases: tuple[str, ...]) -> object:
    for alias in aliases:
        if alias in lowered:
            return lowered[alias]
    return None


def parse_detections(text: str | bytes, status: AnnotationStatus) -> list[NormalizedDetection]:
    """The detections JSON string -> validated detections (keys matched case-insensitively)."""
    try:
        items = json.loads(text) if text else []
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageRejected("bad-detection", f"detections are not JSON ({exc})", status) from None
    if not isinstance(items, list):
        raise MessageRejected("bad-detection", f"detections JSON is a {type(items).__name__}, expected a list",
                              status)
    detections = []
    for number, item in enumerate(items):
        if not isinstance(item, dict):
            raise MessageRejected("bad-detection", f"detection {number} is not an object", status)
        lowered = {key.lower(): value for key, value in item.items()}  # JSON object keys are str
        try:  # every first alias present (what the platform sends): they win anyway
            cls, x, y, w, h, confidence = _PLAIN_KEYS(lowered)
        except KeyError:
            cls, x, y, w, h, confidence = [_first(lowered, aliases) for aliases in _DETECTION_ALIASES]
        problem = stored_box_problem(cls, x, y, w, h)
        if problem:
            raise MessageRejected("bad-detection", f"detection {number}: {problem}", status)
        if not (isinstance(confidence, int | float) and not isinstance(confidence, bool)
                and math.isfinite(confidence)):
            confidence = 1.0
        detections.append(NormalizedDetection(cls, float(x), float(y), float(w), float(h), float(confidence)))
    return detections


def _bulk(fields: list, status: AnnotationStatus) -> AnnotationBulkMessage:
    names = _field(fields, 0, "annotationNames", list, status)
    return AnnotationBulkMessage([checked_name(name, status) for name in names], status)


# ---------------------------------------------------------------- image check (the rule: images.py)


def check_image(image: bytes, limits: Limits, status: AnnotationStatus) -> None:
    if len(image) > limits.max_image_bytes:
        raise MessageRejected("image-too-large", f"image is {len(image)} bytes, over the limit of "
                              f"{limits.max_image_bytes} (RABBITMQ_MAX_IMAGE_MB)", status)
    problem = structure_problem(image)
    if problem:
        raise MessageRejected("not-an-image", f"image bytes ({len(image)} bytes, starting {image[:8].hex()}): "
                              f"{problem}", status)


# ---------------------------------------------------------------- encoding (what the platform sends)


def detections_json(detections: list[NormalizedDetection], name: str) -> str:
    return json.dumps([{"annotation_name": name, "cls": d.cls, "x": d.x, "y": d.y, "w": d.w, "h": d.h,
                        "confidence": d.confidence} for d in detections])


def encode_annotation(message: AnnotationMessage, compress: bool = False) -> bytes:
    """The msgpack body of a Created/Edited message (createdDate as a msgpack Timestamp, time
    as 100-ns ticks, detections as a JSON string), optionally gzip-compressed."""
    created = message.created_date if message.created_date.tzinfo else message.created_date.replace(tzinfo=UTC)
    ticks = round(message.time / timedelta(microseconds=1)) * 10
    body = msgpack.packb([
        msgpack.Timestamp.from_datetime(created), message.name, message.original_media_name, ticks,
        message.image_extension, detections_json(message.detections, message.name), message.image,
        int(message.created_role), message.created_email, int(message.source), int(message.status),
    ], use_bin_type=True)
    return gzip.compress(body, mtime=0) if compress else body


def encode_bulk(names: list[str], compress: bool = False) -> bytes:
    body = msgpack.packb([list(names)], use_bin_type=True)
    return gzip.compress(body, mtime=0) if compress else body


def amqp_message(status: AnnotationStatus, body: bytes):
    """An rstream AMQPMessage with the `AnnotationStatus` application property (as the
    platform's stream clients publish it)."""
    from rstream import AMQPMessage

    return AMQPMessage(body=body, application_properties={STATUS_PROPERTY: int(status)})


def amqp_bytes(status: AnnotationStatus, body: bytes) -> bytes:
    """The stream entry bytes of `amqp_message` (what a consumer receives, what dumps store)."""
    return bytes(amqp_message(status, body))


def encode_message(message: AnnotationMessage | AnnotationBulkMessage, compress: bool = False) -> bytes:
    """A typed message -> its full stream entry bytes (AMQP envelope + body)."""
    if isinstance(message, AnnotationMessage):
        return amqp_bytes(message.status, encode_annotation(message, compress))
    return amqp_bytes(message.status, encode_bulk(message.annotation_names, compress))


@dataclass(frozen=True)
class SampleOptions:
    """What `sample_annotation` varies (kept here so publish-sample, tests and the benchmark agree)."""

    role: Role = Role.Validator
    source: Source = Source.Manual
    media: str = "sample-video.mp4"
    frame: int = 0
    detections: list[NormalizedDetection] = field(default_factory=list)


def sample_annotation(name: str, image: bytes, options: SampleOptions = SampleOptions(),
                      status: AnnotationStatus = AnnotationStatus.Created) -> AnnotationMessage:
    return AnnotationMessage(
        created_date=datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=options.frame),
        name=name, original_media_name=options.media, time=timedelta(milliseconds=40 * options.frame),
        image_extension=".jpg", detections=list(options.detections), image=image,
        created_role=options.role, created_email="sample@azaion.com", source=options.source, status=status)
