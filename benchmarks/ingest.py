"""Ingestion throughput: end-to-end applied annotations/s of `azaion queue consume` versus a raw
rstream consume-only loop over the same stream, measured in the same run.

Publishes N realistic annotations (1280x1280 JPEGs of 200-400 KB, 1-20 boxes) to a private
RabbitMQ node (or RABBITMQ_TEST_STREAM_PORT), then times (publishing excluded):
  raw:  an rstream Consumer reading every entry (bytes kept, nothing decoded or written);
  e2e:  the product's consumer: decode, checks, durable writes, index, offsets (group commit).
The two alternate for --rounds rounds (each e2e round into a fresh tree, kept until the end:
deletions would slow the next round's file creation, below); the ratio is best e2e over best
raw, so a burst of load from the machine's neighbours in one round does not decide it.
With --processes the same is done with whole processes, also alternating: the real
`azaion queue consume --from first` (done when offset.yaml holds the last offset) against a
raw rstream consumer process (the product's transport settings, `queue/broker.py`; done at
the last entry), each timed from its start and from its subscription (its "consuming" log
line, its "subscribed" line) to done: interpreter start-up and imports are in the first figure
only. Prints one JSON line with the load average, which says how far the absolute figures are
from an idle machine's.
Usage: .venv/bin/python benchmarks/ingest.py [--count 1500] [--rounds 3] [--processes] [--dir DIR]

The data tree goes to a fresh directory in --dir, by default at the filesystem root when it is
writable (production's tree is /azaion), not in /tmp: this machine's ext4 has no journal, and
then a new inode is only allocated after skipping every inode deleted in the last minute in
the same block group. /tmp's group takes the deletions of every test run on the machine, which
made each created file cost up to 0.8 ms: that measured the neighbours, not the consumer.
"""

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from pydantic import SecretStr

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.services.rabbitmq: the private broker recipe

from rstream import ConsumerOffsetSpecification, OffsetType  # noqa: E402

from azaion_training.queue.broker import stream_consumer  # noqa: E402
from azaion_training.queue.consumer import StartSpec, StreamConsumer  # noqa: E402
from azaion_training.queue.messages import NormalizedDetection, Role, SampleOptions, sample_annotation  # noqa: E402
from azaion_training.queue.streamio import publish, to_amqp  # noqa: E402
from azaion_training.scenes import encode_jpeg, render_scene  # noqa: E402
from azaion_training.settings import PathSettings, RabbitMQSettings, Settings  # noqa: E402
from tests.services.rabbitmq import RabbitNode  # noqa: E402

DISTINCT_IMAGES = 12  # rendering 1280 px scenes is slow; names, boxes and roles differ per message


def realistic_messages(count: int, seed: int = 0) -> tuple[list, list[int]]:
    rng = np.random.default_rng(seed)
    images = []
    while len(images) < DISTINCT_IMAGES:
        jpeg = encode_jpeg(render_scene(rng, 1280).image, quality=87)
        if 200_000 <= len(jpeg) <= 400_000:
            images.append(jpeg)
    messages = []
    for i in range(count):
        boxes = [NormalizedDetection(int(rng.integers(0, 57)), *rng.uniform(0.1, 0.9, 2), *rng.uniform(0.01, 0.2, 2))
                 for _ in range(int(rng.integers(1, 21)))]
        options = SampleOptions(role=Role.Validator if i % 4 else Role.Operator, media=f"flight-{i // 50}.mp4",
                                frame=i % 50, detections=boxes)
        messages.append(sample_annotation(f"bench-{i:06d}", images[i % DISTINCT_IMAGES], options))
    return messages, [len(image) for image in images]


async def raw_consume(rabbit: RabbitMQSettings, count: int) -> float:
    received = 0
    done = asyncio.Event()

    def on_message(data: bytes, _context) -> None:
        nonlocal received
        received += 1
        if received >= count:
            done.set()

    started = time.perf_counter()  # connecting included, as in end_to_end
    async with stream_consumer(rabbit, "azaion-bench-raw") as consumer:
        await consumer.subscribe(rabbit.queue_name, on_message, initial_credit=8,
                                 offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST, None))
        await asyncio.wait_for(done.wait(), 600)
        return time.perf_counter() - started


def end_to_end(settings: Settings, count: int, last_offset: int) -> float:
    finished: list[float] = []

    def on_commit(offset: int) -> None:  # the worker reports it once files, index and offset.yaml are durable
        if offset >= last_offset and not finished:
            finished.append(time.perf_counter())
            consumer.stop_requested = True

    consumer = StreamConsumer(settings, StartSpec("first"), exit_when_idle=None, on_commit=on_commit)
    started = time.perf_counter()
    asyncio.run(consumer.run())
    assert consumer.counts.applied == count, consumer.counts.as_dict()
    return finished[0] - started


RAW_PROCESS = """
import asyncio, sys, time
from pydantic import SecretStr
from rstream import ConsumerOffsetSpecification, OffsetType
from azaion_training.queue.broker import stream_consumer
from azaion_training.settings import RabbitMQSettings

host, port, user, password, stream, count = sys.argv[1:7]
rabbit = RabbitMQSettings(host=host, port=int(port), user=user, password=SecretStr(password), queue_name=stream)

async def main():
    received, done = 0, asyncio.Event()

    def on_message(data, context):
        nonlocal received
        received += 1
        if received >= int(count):
            done.set()

    async with stream_consumer(rabbit, "azaion-bench-raw-process") as consumer:
        await consumer.subscribe(stream, on_message, initial_credit=8,
                                 offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST, None))
        print("subscribed", flush=True)
        await asyncio.wait_for(done.wait(), 600)

asyncio.run(main())
"""


def _watch(stream, marker: str, seen: list[float]) -> None:
    """Note when a line holding `marker` comes out of `stream` (and drain the rest)."""
    for line in stream:
        if not seen and marker in line:
            seen.append(time.perf_counter())


def raw_process(rabbit: RabbitMQSettings, count: int) -> tuple[float, float]:
    """(seconds from start, seconds from subscription) until a raw consumer process has every entry."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", RAW_PROCESS, rabbit.host, str(rabbit.port), rabbit.user,
                                rabbit.password.get_secret_value(), rabbit.queue_name, str(count)],
                               stdout=subprocess.PIPE, text=True)
    subscribed: list[float] = []
    _watch(process.stdout, "subscribed", subscribed)
    assert process.wait(timeout=600) == 0
    finished = time.perf_counter()
    return finished - started, finished - subscribed[0]


def consume_process(rabbit: RabbitMQSettings, tree: Path, last_offset: int) -> tuple[float, float]:
    """(seconds from start, seconds from subscription) until `azaion queue consume` has made the
    last entry durable (offset.yaml holds its offset)."""
    env = {**os.environ, "RABBITMQ_HOST": rabbit.host, "RABBITMQ_PORT": str(rabbit.port), "RABBITMQ_USER": rabbit.user,
           "RABBITMQ_PASSWORD": rabbit.password.get_secret_value(), "RABBITMQ_QUEUE_NAME": rabbit.queue_name,
           "AZAION_ROOT_DIR": str(tree), "AZAION_LOG_FORMAT": "json"}
    offset_file = tree / "queue-state" / "offset.yaml"
    started = time.perf_counter()
    process = subprocess.Popen([str(Path(sys.executable).parent / "azaion"), "queue", "consume", "--from", "first"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    subscribed: list[float] = []
    watcher = threading.Thread(target=_watch, args=(process.stderr, '"message": "consuming"', subscribed), daemon=True)
    watcher.start()
    try:
        while True:
            try:
                match = re.search(r"^offset: (\d+)$", offset_file.read_text(), re.MULTILINE)
            except OSError:
                match = None
            if match and int(match.group(1)) >= last_offset:
                break
            assert process.poll() is None, "the consumer ended early"
            time.sleep(0.005)
        finished = time.perf_counter()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        watcher.join(timeout=10)
    return finished - started, finished - subscribed[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", action="store_true",
                        help="also compare whole processes: azaion queue consume vs a raw rstream consumer")
    parser.add_argument("--dir", default="/" if os.access("/", os.W_OK) else None,
                        help="where the data tree's directory is made (default: / when writable, else the temp dir)")
    args = parser.parse_args()
    node = RabbitNode.existing_or_start()
    try:
        with tempfile.TemporaryDirectory(prefix="azaion-bench-", dir=args.dir) as workdir:
            rabbit = RabbitMQSettings(host=node.host, port=node.stream_port, user=node.user,
                                      password=SecretStr(node.password), queue_name=f"bench-{int(time.time())}")
            messages, sizes = realistic_messages(args.count)
            publish(rabbit, [to_amqp(message) for message in messages])
            load_before = os.getloadavg()[0]
            raw_rates, e2e_rates = [], []
            raw_process_s, consume_process_s = [], []  # (from start, from subscription) per round
            for round_number in range(args.rounds):
                raw_rates.append(args.count / asyncio.run(raw_consume(rabbit, args.count)))
                tree = Path(workdir) / f"azaion-{round_number}"
                e2e_rates.append(args.count / end_to_end(Settings(rabbitmq=rabbit, paths=PathSettings(root_dir=tree)),
                                                         args.count, args.count - 1))
                if args.processes:
                    raw_process_s.append(raw_process(rabbit, args.count))
                    consume_process_s.append(consume_process(rabbit, Path(workdir) / f"process-{round_number}",
                                                             args.count - 1))
            load_after = os.getloadavg()[0]
    finally:
        node.stop()
    figures = {
        "benchmark": "ingest", "messages": args.count, "rounds": args.rounds, "image_kb_min": min(sizes) // 1024,
        "image_kb_max": max(sizes) // 1024, "data_dir": args.dir or tempfile.gettempdir(),
        "e2e_annotations_per_s": round(max(e2e_rates), 1), "raw_consume_per_s": round(max(raw_rates), 1),
        "ratio_to_raw": round(max(e2e_rates) / max(raw_rates), 3),
        "round_ratios": [round(e2e / raw, 3) for e2e, raw in zip(e2e_rates, raw_rates, strict=True)],
    }
    if args.processes:
        for which, index in (("from_start", 0), ("from_subscription", 1)):
            raw = [args.count / times[index] for times in raw_process_s]
            consume = [args.count / times[index] for times in consume_process_s]
            figures[f"process_{which}"] = {
                "consume_per_s": round(max(consume), 1), "raw_per_s": round(max(raw), 1),
                "ratio_to_raw": round(max(consume) / max(raw), 3),
                "round_ratios": [round(c / r, 3) for c, r in zip(consume, raw, strict=True)]}
    print(json.dumps({**figures, "load_avg_1min": [round(load_before, 1), round(load_after, 1)],
                      "cpus": os.cpu_count(), "target_per_s": 300, "target_ratio": 0.6}))


if __name__ == "__main__":
    main()
