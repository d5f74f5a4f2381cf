"""The consumer's applier thread without a broker: group commits, stopping, local failures."""

import time

import yaml

from azaion_training.queue.consumer import INBOX_DEPTH, Applier
from azaion_training.queue.handler import AnnotationHandler
from azaion_training.queue.messages import Limits
from azaion_training.queue.progress import ProgressLog
from tests.queue.conftest import created, temp_files


def start_applier(layout) -> tuple[Applier, list[int]]:
    handler = AnnotationHandler(layout, Limits(), "s")
    commits: list[int] = []
    return Applier(handler, ProgressLog(handler.counts), commits.append), commits


def offer_all(applier: Applier, entries: list[bytes], first_offset: int = 0) -> None:
    for offset, data in enumerate(entries, first_offset):
        while not applier.offer(offset, data, 0):
            time.sleep(0.005)


def wait_until(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_applies_in_order_and_commits_the_group_within_its_window(layout):
    applier, commits = start_applier(layout)
    offer_all(applier, [created(f"a{i:02d}") for i in range(30)])
    wait_until(lambda: commits and commits[-1] == 29)  # no stop needed: the group window closes it
    assert yaml.safe_load(layout.offset_file.read_text())["offset"] == 29
    assert sorted(p.stem for p in layout.data.labels.iterdir()) == [f"a{i:02d}" for i in range(30)]
    applier.stop()
    assert commits[-1] == 29 and applier.failure is None and temp_files(layout.root) == []


def test_stop_commits_what_was_applied_and_leaves_the_queued_rest(layout):
    applier, commits = start_applier(layout)
    offer_all(applier, [created("first")])
    wait_until(lambda: layout.data.label_path("first").exists())
    applier.request_stop()  # as SIGTERM does
    offer_all(applier, [created(f"late{i}") for i in range(10)], first_offset=1)
    applier.stop()
    assert commits == [0]  # committed at stop, none of the queued messages
    assert [p.stem for p in layout.data.labels.iterdir()] == ["first"]
    accepted = sum(applier.offer(100 + i, b"", 0) for i in range(INBOX_DEPTH))
    assert accepted < INBOX_DEPTH  # the inbox is bounded (what rstream holds beyond it, its credit bounds)


def test_a_local_failure_commits_the_applied_messages_and_reports(layout):
    applier, commits = start_applier(layout)
    offer_all(applier, [created("good", boxes=())])
    wait_until(lambda: layout.data.label_path("good").exists())
    images = layout.data.images
    for path in images.iterdir():
        path.unlink()
    images.rmdir()
    images.write_bytes(b"")  # the images directory is now a file: writing an image fails
    offer_all(applier, [created("bad")], first_offset=1)
    wait_until(lambda: applier.failure is not None)
    applier.stop()
    assert applier.failure == "local failure at offset 1"
    assert commits == [0]  # the offset of the message that failed is never committed
