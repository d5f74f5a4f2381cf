"""The demo's annotation stream: synthetic "flights" (source videos, each in one weather
mode) whose frames are annotated by operators and validators, then validated, some deleted,
plus a few malformed entries -- encoded exactly as the platform sends them, into a dump file
that `azaion queue replay` (or a broker) consumes."""

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from azaion_training.classes import WeatherMode
from azaion_training.queue.dumpfile import DumpRecord, write_dump
from azaion_training.queue.messages import (
    AnnotationBulkMessage,
    AnnotationMessage,
    AnnotationStatus,
    NormalizedDetection,
    Role,
    Source,
    amqp_bytes,
    encode_message,
)
from azaion_training.scenes import encode_jpeg, render_scene

# Six visually distinct base classes (ArmorVehicle, Truck, Vehicle, Artillery, Plane, Building).
DEMO_CLASSES = (0, 1, 2, 3, 10, 15)
START = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)


@dataclass(frozen=True)
class StreamPlan:
    images: int = 240
    size: int = 192
    frames_per_video: int = 8
    max_objects: int = 4
    operator_share: float = 0.4  # annotated by operators (-> seed), most validated later
    unvalidated_share: float = 0.1  # of those, left waiting in seed
    deleted_share: float = 0.05  # validated annotations deleted again
    seed: int = 0


@dataclass
class StreamSummary:
    messages: int = 0
    annotations: int = 0
    by_validators: int = 0
    by_operators: int = 0
    validated: int = 0  # annotations named in the Validated bulk messages
    deleted: int = 0  # annotations named in the Deleted bulk messages
    validated_messages: int = 0
    deleted_messages: int = 0
    malformed: int = 0
    videos: int = 0
    per_mode: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def build_messages(plan: StreamPlan) -> tuple[list[bytes], StreamSummary]:
    """Stream entries (AMQP bytes) in publish order, and what they contain."""
    rng = np.random.default_rng(plan.seed)
    summary = StreamSummary()
    entries: list[bytes] = []
    operators: list[str] = []
    validators: list[str] = []
    modes = list(WeatherMode)
    for index in range(plan.images):
        video, frame = divmod(index, plan.frames_per_video)
        mode = modes[video % len(modes)]
        scene = render_scene(rng, plan.size, mode, DEMO_CLASSES, plan.max_objects)
        name = str(uuid.UUID(int=int(rng.integers(2**63)) << 64 | index))
        by_operator = rng.random() < plan.operator_share
        message = AnnotationMessage(
            created_date=START + timedelta(minutes=video, seconds=frame),
            name=name, original_media_name=f"flight-{video:03d}-{mode.name.lower()}.mp4",
            time=timedelta(milliseconds=500 * frame), image_extension=".jpg",
            detections=[NormalizedDetection(c, x, y, w, h) for c, x, y, w, h in scene.labels],
            image=encode_jpeg(scene.image), created_role=Role.Operator if by_operator else Role.Validator,
            created_email="operator@demo.azaion" if by_operator else "validator@demo.azaion",
            source=Source.Manual, status=AnnotationStatus.Created)
        entries.append(encode_message(message, compress=index % 5 == 0))
        (operators if by_operator else validators).append(name)
        summary.per_mode[mode.name] = summary.per_mode.get(mode.name, 0) + 1
    summary.annotations, summary.videos = plan.images, -(-plan.images // plan.frames_per_video)
    summary.by_operators, summary.by_validators = len(operators), len(validators)

    waiting = int(len(operators) * plan.unvalidated_share)
    to_validate = operators[waiting:]
    entries.append(encode_message(AnnotationBulkMessage(to_validate, AnnotationStatus.Validated)))
    to_delete = [str(name) for name in rng.choice(validators, int(len(validators) * plan.deleted_share),
                                                  replace=False)]
    entries.append(encode_message(AnnotationBulkMessage(to_delete, AnnotationStatus.Deleted)))
    summary.validated, summary.deleted = len(to_validate), len(to_delete)
    summary.validated_messages = summary.deleted_messages = 1

    bad = malformed_entries()
    entries.extend(bad)
    summary.malformed = len(bad)
    summary.messages = len(entries)
    return entries, summary


def malformed_entries() -> list[bytes]:
    """What a real stream occasionally carries: garbage, a path-like name, a box off the image."""
    off_image = AnnotationMessage(START, "bad-box-0001", "flight-bad.mp4", timedelta(0), ".jpg",
                                  [NormalizedDetection(1, 1.7, 0.5, 0.2, 0.2)], None, Role.Validator,
                                  "validator@demo.azaion", Source.Manual, AnnotationStatus.Created)
    return [
        amqp_bytes(AnnotationStatus.Created, b"\xc1 this is not msgpack"),
        encode_message(AnnotationBulkMessage(["../../etc/passwd"], AnnotationStatus.Deleted)),
        encode_message(off_image),
    ]


def write_stream_dump(path: Path, plan: StreamPlan) -> StreamSummary:
    entries, summary = build_messages(plan)
    base_ms = int(START.timestamp() * 1000)
    write_dump(path, (DumpRecord(offset, data, base_ms + offset) for offset, data in enumerate(entries)))
    return summary
