"""Publishing to and dumping from the annotation stream (development, tests, benchmarks)."""

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from rstream import AMQPMessage, ConfirmationStatus, MessageContext

from azaion_training.errors import OperationFailed
from azaion_training.logs import get_logger, log
from azaion_training.queue.broker import stream_consumer, stream_producer
from azaion_training.queue.consumer import StartSpec
from azaion_training.queue.dumpfile import DumpRecord, write_dump
from azaion_training.queue.messages import (
    AnnotationBulkMessage,
    AnnotationMessage,
    AnnotationStatus,
    NormalizedDetection,
    Role,
    SampleOptions,
    amqp_message,
    encode_annotation,
    encode_bulk,
    sample_annotation,
)
from azaion_training.settings import RabbitMQSettings

logger = get_logger("queue")
# A synthetic scene for sample messages: (JPEG bytes, its boxes). The demo renders them
# (`azaion_training.scenes`); this module stays free of cv2 and of the demo.
SceneSource = Callable[[int], tuple[bytes, list[NormalizedDetection]]]


def to_amqp(message: AnnotationMessage | AnnotationBulkMessage) -> AMQPMessage:
    if isinstance(message, AnnotationMessage):
        return amqp_message(message.status, encode_annotation(message))
    return amqp_message(message.status, encode_bulk(message.annotation_names))


async def publish_async(rabbit: RabbitMQSettings, messages: Iterable[AMQPMessage | bytes],
                        timeout_s: float = 120.0) -> int:
    """Publish entries to the stream (created when missing) and wait for every confirmation."""
    confirmed = failed = sent = 0

    def on_confirm(status: ConfirmationStatus) -> None:
        nonlocal confirmed, failed
        confirmed += 1
        failed += 0 if status.is_confirmed else 1

    async with stream_producer(rabbit, "azaion-publisher") as producer:
        if not await producer.stream_exists(rabbit.queue_name):
            await producer.create_stream(rabbit.queue_name, exists_ok=True)
        for message in messages:
            await producer.send(rabbit.queue_name, message, on_publish_confirm=on_confirm)
            sent += 1
        deadline = time.monotonic() + timeout_s
        while confirmed < sent and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    if confirmed < sent or failed:
        raise OperationFailed(f"the broker confirmed {confirmed - failed} of {sent} messages to "
                              f"{rabbit.queue_name!r}: retry, and check the broker's log")
    return sent


def publish(rabbit: RabbitMQSettings, messages: Iterable[AMQPMessage | bytes]) -> int:
    return asyncio.run(publish_async(rabbit, messages))


def sample_messages(count: int, scene: SceneSource, seed: int = 0) -> list[AnnotationMessage | AnnotationBulkMessage]:
    """Realistic Azaion messages: Created annotations of `scene(i)` (operators to seed,
    validators to data), then one Validated for the operator ones."""
    messages: list[AnnotationMessage | AnnotationBulkMessage] = []
    for i in range(count):
        image, detections = scene(i)
        role = Role.Operator if i % 3 == 0 else Role.Validator
        options = SampleOptions(role=role, media=f"sample-video-{i // 10:03d}.mp4", frame=i % 10,
                                detections=detections)
        messages.append(sample_annotation(f"sample-{seed}-{i:06d}", image, options))
    operators = [m.name for m in messages if m.created_role is Role.Operator]
    if operators:
        messages.append(AnnotationBulkMessage(operators, AnnotationStatus.Validated))
    return messages


@dataclass
class DumpResult:
    records: int
    first_offset: int | None
    last_offset: int | None


async def _collect(rabbit: RabbitMQSettings, start: StartSpec, idle_s: float, limit: int | None) -> list[DumpRecord]:
    records: list[DumpRecord] = []
    last = time.monotonic()

    def on_message(data: bytes, context: MessageContext) -> None:
        nonlocal last
        if limit is None or len(records) < limit:
            records.append(DumpRecord(context.offset, bytes(data), context.timestamp))
            last = time.monotonic()

    async with stream_consumer(rabbit, "azaion-dump") as consumer:
        if not await consumer.stream_exists(rabbit.queue_name):
            raise OperationFailed(f"stream {rabbit.queue_name!r} does not exist on {rabbit.host}:{rabbit.port}")
        spec = start if start.kind != "resume" else StartSpec("first")
        await consumer.subscribe(rabbit.queue_name, on_message, offset_specification=spec.rstream())
        while time.monotonic() - last < idle_s and (limit is None or len(records) < limit):
            await asyncio.sleep(0.05)
    return records


def dump_stream(rabbit: RabbitMQSettings, out: Path, start: StartSpec, idle_s: float = 2.0,
                limit: int | None = None) -> DumpResult:
    """Write the stream's entries (from `start` until `idle_s` without a new one) to a dump file."""
    records = asyncio.run(_collect(rabbit, start, idle_s, limit))
    write_dump(out, records)
    log(logger, logging.INFO, "stream dumped", file=str(out), records=len(records))
    return DumpResult(len(records), records[0].offset if records else None, records[-1].offset if records else None)
