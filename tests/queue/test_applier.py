"""The consumer's apply worker (queue/worker.py) without a broker: group commits, stopping, local
failures, a bounded ring, one group made durable while the next is applied, and its death with
the consumer."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from azaion_training.annotation_index import AnnotationIndex
from azaion_training.queue.handler import AnnotationHandler
from azaion_training.queue.messages import AnnotationStatus, Limits, Role
from azaion_training.queue.worker import RING_BYTES, ApplyWorker
from tests.queue.conftest import bulk, created, temp_files


def start(layout, handler_class=AnnotationHandler) -> tuple[ApplyWorker, list[int]]:
    commits: list[int] = []
    return ApplyWorker(lambda: handler_class(layout, Limits(), "s"), commits.append).start(), commits


async def send_all(worker: ApplyWorker, entries: list[bytes], first_offset: int = 0) -> None:
    for offset, data in enumerate(entries, first_offset):
        assert await worker.send(offset, data, 0, lambda: True)


async def wait_until(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def gone(pid: int) -> bool:
    """Not running: no such process, or a zombie nobody has reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_applies_in_order_and_commits_the_group_within_its_window(layout):
    async def scenario():
        worker, commits = start(layout)
        await send_all(worker, [created(f"a{i:02d}") for i in range(30)])
        await wait_until(lambda: commits and commits[-1] == 29)  # no stop needed: the group window closes it
        assert yaml.safe_load(layout.offset_file.read_text())["offset"] == 29
        assert sorted(p.stem for p in layout.data.labels.iterdir()) == [f"a{i:02d}" for i in range(30)]
        await worker.stop()
        return worker, commits

    worker, commits = asyncio.run(scenario())
    assert commits[-1] == 29 and worker.failure is None and worker.exit_code == 0
    assert worker.counts.applied == 30 and temp_files(layout.root) == []


def test_stop_commits_what_was_applied_and_leaves_the_queued_rest(layout):
    async def scenario():
        worker, commits = start(layout)
        await send_all(worker, [created("first")])
        await wait_until(lambda: layout.data.label_path("first").exists())
        worker.request_stop()  # as SIGTERM does
        late = [await worker.send(i, created(f"late{i}"), 0, lambda: True) for i in range(1, 11)]
        await worker.stop()
        return commits, late

    commits, late = asyncio.run(scenario())
    assert late == [False] * 10
    assert commits == [0]  # committed at stop, none of the later messages
    assert [p.stem for p in layout.data.labels.iterdir()] == ["first"]


def test_a_full_ring_holds_the_sender_back_and_a_wedged_worker_is_unhealthy(layout, root):
    """A write stuck in the kernel (a FIFO where an image goes): the ring fills, `send` waits
    (rstream then grants no credit), and the worker counts as stuck for the watchdog."""
    big = b"\0" * (3 << 20)  # not a message: never applied (the worker is stopped before it gets there)

    async def scenario():
        worker, commits = start(layout)
        await send_all(worker, [created("ready")])
        await wait_until(lambda: commits == [0])  # the worker has removed stale temp files: the FIFO stays
        fifo = root / "data" / "images" / ".tmp-slow.jpg"
        os.mkfifo(fifo)
        await send_all(worker, [created("slow")], first_offset=1)
        await asyncio.sleep(1.0)
        stuck = not worker.healthy(0.5) and worker.idle_for() == 0.0
        queued = 0
        while True:
            try:
                assert await asyncio.wait_for(worker.send(2 + queued, big, 0, lambda: True), 1.0)
            except TimeoutError:
                break
            queued += 1
        worker.request_stop()
        threading.Thread(target=fifo.read_bytes, daemon=True).start()  # the disk answers again
        await worker.stop()
        return worker, commits, stuck, queued

    worker, commits, stuck, queued = asyncio.run(scenario())
    assert stuck
    assert queued == RING_BYTES // len(big)  # bounded: what the ring holds, then the sender waits
    assert commits == [0, 1] and worker.failure is None  # "slow" was in hand: applied and committed
    assert sorted(p.stem for p in layout.data.labels.iterdir()) == ["ready", "slow"]


def test_a_local_failure_commits_the_applied_messages_and_reports(layout):
    async def scenario():
        worker, commits = start(layout)
        await send_all(worker, [created("good", boxes=())])
        await wait_until(lambda: layout.data.label_path("good").exists())
        images = layout.data.images
        for path in images.iterdir():
            path.unlink()
        images.rmdir()
        images.write_bytes(b"")  # the images directory is now a file: writing an image fails
        await send_all(worker, [created("bad")], first_offset=1)
        await wait_until(lambda: worker.failure is not None)
        await worker.stop()
        return worker, commits

    worker, commits = asyncio.run(scenario())
    assert worker.failure == "local failure at offset 1"
    assert commits == [0]  # the offset of the message that failed is never committed


class SlowDurableHandler(AnnotationHandler):
    """The first group's files become durable only once the test creates `go` (the test sees
    `syncing` meanwhile); later groups at once."""

    def make_durable(self, group):
        gate = self.layout.root / "go"
        if not gate.exists():
            (self.layout.root / "syncing").touch()
            while not gate.exists():
                time.sleep(0.01)
        super().make_durable(group)


def test_the_next_group_is_applied_while_one_is_made_durable_and_sees_its_rows(layout, root):
    """Group 1 (operator o1 -> seed) is held at its syncfs: its index rows and offset must not be
    written yet, while group 2 (a Validated of o1) is applied on top of it, reading o1's row from
    the worker's memory (the bare row set_areas gives an unknown name would lose its media)."""

    def index_row(name):
        index = AnnotationIndex(layout.index_db, readonly=True)
        try:
            return index.get(name)
        finally:
            index.close()

    async def scenario():
        worker, commits = start(layout, SlowDurableHandler)
        await send_all(worker, [created("o1", Role.Operator, media="flight-9.mp4")])
        await wait_until(lambda: (root / "syncing").exists())  # group 1 sealed, its syncfs "in progress"
        await send_all(worker, [bulk(AnnotationStatus.Validated, "o1")], first_offset=1)
        await wait_until(lambda: layout.data.label_path("o1").exists())  # group 2 applied meanwhile
        during = (list(commits), index_row("o1"), layout.offset_file.exists())
        (root / "go").touch()
        await wait_until(lambda: commits == [0, 1])
        await worker.stop()
        return during

    commits_during, row_during, offset_file_during = asyncio.run(scenario())
    assert commits_during == [] and row_during is None and not offset_file_during  # durable first, then recorded
    row = index_row("o1")
    assert (row.area, row.source_media, row.status, row.stream_offset) == ("data", "flight-9.mp4", 30, 1)
    assert yaml.safe_load(layout.offset_file.read_text())["offset"] == 1


CONSUMER_STAND_IN = """
import asyncio, sys
from azaion_training.layout import Layout
from azaion_training.queue.handler import AnnotationHandler
from azaion_training.queue.messages import Limits
from azaion_training.queue.worker import ApplyWorker
from azaion_training.settings import PathSettings

async def main():
    layout = Layout(PathSettings(root_dir=sys.argv[1]))
    worker = ApplyWorker(lambda: AnnotationHandler(layout, Limits(), "s"), lambda offset: None).start()
    print(worker.pid, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


def test_the_worker_dies_with_the_consumer_even_by_sigkill(root):
    parent = subprocess.Popen([sys.executable, "-c", CONSUMER_STAND_IN, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        worker_pid = int(parent.stdout.readline())
        assert not gone(worker_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not gone(worker_pid):
            assert time.monotonic() < deadline, "the worker outlived the consumer"
            time.sleep(0.02)
    finally:
        parent.kill()
        parent.wait()
