"""The consumer against a real RabbitMQ stream when a message trips a fault in the handler, and
when a message takes long (`--exit-when-idle` must not exit while messages wait)."""

import json
import os
import sqlite3
import threading
import time
from pathlib import Path

from azaion_training.annotation_index import AnnotationIndex
from azaion_training.layout import Layout
from azaion_training.queue.streamio import publish
from azaion_training.settings import PathSettings
from tests.conftest import run_azaion
from tests.queue.conftest import cli_summary, created, log_lines
from tests.queue.test_consumer import env_for, rabbit_settings, start_consumer, wait_for


def wedge(root: Path, name: str) -> Path:
    """A FIFO where the consumer writes `name`'s image: its open() blocks until `release`
    (a write stuck in the kernel, as on a hung disk). Make it after the consumer started:
    it removes leftover temp files at start."""
    fifo = root / "data" / "images" / f".tmp-{name}.jpg"
    os.mkfifo(fifo)
    return fifo


def release(fifo: Path) -> None:
    threading.Thread(target=fifo.read_bytes, daemon=True).start()


def test_a_message_that_trips_the_handler_is_quarantined_after_three_attempts(rabbit, root, stream_name):
    # The index row of "poison" holds text where an offset belongs (an index written by another
    # tool, or a bug): comparing it with the message's offset raises TypeError inside the handler.
    index = AnnotationIndex(Layout(PathSettings(root_dir=root)).index_db)
    index.close()
    with sqlite3.connect(Layout(PathSettings(root_dir=root)).index_db) as db:
        db.execute("INSERT INTO annotations (name, area, stream_offset, updated_at) VALUES "
                   "('poison', 'data', 'not-an-offset', 'x')")
    publish(rabbit_settings(rabbit, stream_name), [created("before"), created("poison"), created("after")])
    result = run_azaion("queue", "consume", "--exit-when-idle", "1.5", env=env_for(rabbit, stream_name), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = cli_summary(result.stdout)
    assert summary["committed_offset"] == 2 and summary["rejected_by_reason"] == {"internal-error": 1}
    record = json.loads((root / "queue-rejected" / "1.json").read_text())
    assert record["reason"] == "internal-error" and record["detail"].startswith("TypeError: ")
    assert (root / "queue-rejected" / "1.bin").stat().st_size > 0
    assert sorted(p.stem for p in (root / "data" / "labels").iterdir()) == ["after", "before"]
    lines = log_lines(result.stderr)
    errors = [line for line in lines if line["level"] == "ERROR"]
    assert len(errors) == 1 and "internal-error" in json.dumps(errors[0]), errors
    retries = [line for line in lines if line["message"].startswith("applying a message failed")]
    assert len(retries) == 2  # attempts 1 and 2; the third quarantines


def test_exit_when_idle_waits_for_a_slow_message_and_the_ones_behind_it(rabbit, root, tmp_path, stream_name):
    log = tmp_path / "consumer.log"
    process = start_consumer(rabbit, stream_name, log, "--exit-when-idle", "1")
    try:
        wait_for(lambda: "stream does not exist yet" in log.read_text(), 60, "the consumer to wait for the stream")
        fifo = wedge(root, "slow")
        publish(rabbit_settings(rabbit, stream_name), [created("a"), created("slow"), created("b"), created("c")])
        wait_for(lambda: (root / "data" / "labels" / "a.txt").exists(), 60, "the first message")
        time.sleep(3)  # three idle periods while "slow" is in hand and two messages wait
        assert process.poll() is None, log.read_text()
        assert "exiting" not in log.read_text()
        release(fifo)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert cli_summary(log.read_text())["committed_offset"] == 3
    assert sorted(p.stem for p in (root / "data" / "labels").iterdir()) == ["a", "b", "c", "slow"]
