"""The single-instance lock (locks.py): a second holder is refused with the owner's pid; a
SIGKILLed holder never blocks, because the kernel drops an flock with its process."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from azaion_training.errors import OperationFailed
from azaion_training.locks import InstanceLock

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from azaion_training.locks import InstanceLock
    lock = InstanceLock(Path(sys.argv[1]), "annotation consumer").acquire()
    print("holding", flush=True)
    time.sleep(120)
""")


@pytest.fixture
def holder(layout):
    """Another process that holds the consumer lock until it is killed."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(layout.lock_file("consumer"))],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "holding"
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def test_second_process_is_refused_with_the_holders_pid(layout, holder):
    with pytest.raises(OperationFailed) as refused:
        InstanceLock(layout.lock_file("consumer"), "annotation consumer").acquire()
    message = str(refused.value)
    assert "another annotation consumer is already running" in message
    assert f"pid {holder.pid}" in message
    assert str(layout.lock_file("consumer")) in message


def test_sigkilled_holder_never_blocks(layout, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    assert layout.lock_file("consumer").read_text().strip() == str(holder.pid)  # the stale file stays
    with InstanceLock(layout.lock_file("consumer"), "annotation consumer"):
        assert layout.lock_file("consumer").read_text().strip() == str(os.getpid())


def test_released_lock_can_be_taken_again_and_locks_are_per_name(layout):
    consumer = InstanceLock(layout.lock_file("consumer"), "annotation consumer")
    with consumer, InstanceLock(layout.lock_file("training"), "training run"):
        with pytest.raises(OperationFailed, match=f"pid {os.getpid()}"):
            InstanceLock(layout.lock_file("consumer"), "annotation consumer").acquire()
    with InstanceLock(layout.lock_file("consumer"), "annotation consumer"):
        pass
