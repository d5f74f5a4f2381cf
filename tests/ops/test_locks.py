"""The single-instance lock (locks.py): a second holder is refused with the owner's pid; a
SIGKILLed holder never blocks, because the kernel drops an flock with its process."""

import os
import signal

import pytest

from azaion_training.errors import OperationFailed
from azaion_training.locks import InstanceLock
from tests.ops.conftest import lock_held_by_another_process


@pytest.fixture
def holder(layout):
    with lock_held_by_another_process(layout.lock_file("consumer"), "annotation consumer") as process:
        yield process


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
