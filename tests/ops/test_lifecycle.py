"""Lifecycle end to end with the real CLI and broker: a second `azaion queue consume` on the same
root refuses to start, naming the running one's pid; SIGTERM stops the first one cleanly."""

import json
import os
import signal
import subprocess
import time
import uuid

from tests.conftest import AZAION_BIN, run_azaion
from tests.ops.conftest import lock_held_by_another_process


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_second_consumer_refuses_and_sigterm_stops_the_first(rabbit, root, layout):
    env = {**os.environ, **rabbit.env(), "AZAION_ROOT_DIR": str(root), "AZAION_LOG_FORMAT": "json",
           "RABBITMQ_QUEUE_NAME": f"lifecycle-{uuid.uuid4().hex[:8]}"}
    lock = layout.lock_file("consumer")
    first = subprocess.Popen([str(AZAION_BIN), "queue", "consume", "--create-stream"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: lock.is_file() and lock.read_text().strip() == str(first.pid), 60, "the consumer's lock")

        second = run_azaion("queue", "consume", env=env, timeout=60)
        assert second.returncode == 1
        assert f"another annotation consumer is already running on this root (pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr

        first.send_signal(signal.SIGTERM)
        stdout, stderr = first.communicate(timeout=30)  # the systemd/compose grace period
        assert first.returncode == 0, stderr
        assert json.loads(stdout[stdout.index("{\n"):])["stopped_by"] == "signal"
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # The lock went with the process: a new consumer may start.
    after = run_azaion("queue", "consume", "--exit-when-idle", "0.5", env=env, timeout=60)
    assert after.returncode == 0, after.stderr


def test_second_training_refuses_while_one_runs(root, layout):
    with lock_held_by_another_process(layout.lock_file("training"), "training run") as running:
        result = run_azaion("train", "--resume", env={"AZAION_ROOT_DIR": str(root)}, timeout=120)
    assert result.returncode == 1
    assert f"another training run is already running on this root (pid {running.pid}" in result.stderr
    assert "Traceback" not in result.stderr
