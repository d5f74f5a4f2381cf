"""Helpers for the ingestion tests: Azaion-format messages with tiny real JPEGs, tree snapshots."""

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from azaion_training.queue.dumpfile import DumpRecord, write_dump
from azaion_training.queue.messages import (
    AnnotationBulkMessage,
    AnnotationStatus,
    NormalizedDetection,
    Role,
    SampleOptions,
    encode_message,
    sample_annotation,
)
from azaion_training.scenes import encode_jpeg

AREAS = ("data", "data-seed", "data_deleted", "queue-rejected")


def jpeg(seed: int = 0, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_jpeg(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def created(name: str, role: Role = Role.Validator, status=AnnotationStatus.Created, image: bytes | None = b"",
            media: str = "video-1.mp4", boxes=((1, 0.5, 0.5, 0.2, 0.2),)):
    """Stream entry bytes of a Created/Edited message (image b'' = a fresh JPEG, None = no image)."""
    image = jpeg(zlib.crc32(name.encode()) % 1000) if image == b"" else image
    options = SampleOptions(role=role, media=media, detections=[NormalizedDetection(*box) for box in boxes])
    return encode_message(sample_annotation(name, image, options, status))


def bulk(status: AnnotationStatus, *names: str) -> bytes:
    return encode_message(AnnotationBulkMessage(list(names), status))


def snapshot(root: Path, areas=AREAS) -> dict[str, str]:
    """relative path -> sha256 of every file in the annotation areas."""
    files = {}
    for area in areas:
        for path in sorted((root / area).rglob("*")):
            if path.is_file():
                files[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".tmp-*")]


def dump_of(path: Path, entries: list[bytes], first_offset: int = 0) -> Path:
    write_dump(path, [DumpRecord(first_offset + i, data) for i, data in enumerate(entries)])
    return path


def scenario() -> list[bytes]:
    """A stream exercising every routing rule."""
    return [
        created("v1", Role.Validator),                                  # -> data
        created("o1", Role.Operator),                                   # -> seed
        created("o2", Role.CompanionPC),                                # -> seed
        created("o3", Role.Operator),                                   # -> seed
        created("a1", Role.Admin, media="video-2.mp4"),                 # -> data
        created("api1", Role.ApiAdmin, media="video-2.mp4"),            # -> data
        bulk(AnnotationStatus.Validated, "o1", "v1", "missing1"),       # o1 seed->data, v1 no-op
        created("o2", Role.Validator, AnnotationStatus.Edited, image=None,
                boxes=((3, 0.25, 0.25, 0.1, 0.1), (4, 0.7, 0.7, 0.2, 0.3))),  # seed -> data, new label
        created("o3", Role.Operator, AnnotationStatus.Edited, image=None, boxes=()),  # stays seed, empty label
        bulk(AnnotationStatus.Deleted, "a1", "o3", "missing2"),         # data/seed -> deleted
        created("v2", Role.Validator, AnnotationStatus.Edited, image=jpeg(7)),  # edit with image -> data
    ]


@pytest.fixture
def stream_name(request) -> str:
    return "test-" + request.node.name.replace("[", "-").replace("]", "")[:60]


def cli_summary(stdout: str) -> dict:
    """The indented JSON summary a command prints after its JSON log lines."""
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    return json.loads("\n".join(lines[start:]))


def log_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{"timestamp"')]
