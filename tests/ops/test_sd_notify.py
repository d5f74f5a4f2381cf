"""The systemd notify protocol against a real datagram socket: the client alone, then
`azaion queue consume` under a pretend systemd (READY, periodic WATCHDOG, STOPPING; the pings
stop while the applier is wedged)."""

import signal
import socket
import tempfile
import time
import uuid
from pathlib import Path

from azaion_training.queue.streamio import publish
from azaion_training.sd_notify import Notifier
from tests.queue.conftest import created
from tests.queue.test_consumer import rabbit_settings, start_consumer, wait_for
from tests.queue.test_resilience import release, wedge


def listening(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + address[1:] if address.startswith("@") else address)
    sock.settimeout(0.05)
    return sock


def received(sock: socket.socket, seconds: float) -> list[str]:
    """Every datagram that arrives within `seconds`."""
    messages, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return messages


def test_notifier_sends_to_a_path_and_an_abstract_socket(monkeypatch):
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:  # socket paths must stay short
        for address in (str(Path(directory) / "notify"), f"@azaion-test-{uuid.uuid4().hex}"):
            with listening(address) as sock:
                notifier = Notifier(address)
                assert notifier.ready() and notifier.watchdog() and notifier.stopping()
                assert received(sock, 0.3) == ["READY=1", "WATCHDOG=1", "STOPPING=1"]
    assert not Notifier(None).ready()  # not under systemd: a no-op
    assert not Notifier("/nonexistent/socket").ready()  # a lost notification never raises
    monkeypatch.setenv("NOTIFY_SOCKET", "@x")
    assert Notifier.from_environment().address == "@x"


def test_consumer_speaks_the_notify_protocol_and_stops_pinging_when_wedged(rabbit, root, tmp_path, monkeypatch):
    stream_name = f"notify-{uuid.uuid4().hex[:8]}"
    address = f"@azaion-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # ping every 0.5 s; stuck after 1 s with a message in hand
    log = tmp_path / "consumer.log"
    with listening(address) as sock:
        process = start_consumer(rabbit, stream_name, log)
        try:
            wait_for(lambda: "stream does not exist yet" in log.read_text(), 60, "the consumer to wait for the stream")
            waiting = received(sock, 2.5)
            assert waiting.count("WATCHDOG=1") >= 3 and "READY=1" not in waiting  # alive, not yet subscribed
            fifo = wedge(root, "slow")
            publish(rabbit_settings(rabbit, stream_name), [created("a"), created("slow"), created("b")])
            wait_for(lambda: (root / "data" / "labels" / "a.txt").exists(), 60, "the first message")
            assert "READY=1" in received(sock, 1.5)  # subscribed (sent before "a" was applied)
            assert received(sock, 2.5) == []  # "slow" has been in hand for over 1 s: no ping
            release(fifo)
            resumed = received(sock, 2.5)
            assert resumed.count("WATCHDOG=1") >= 2, resumed
            wait_for(lambda: (root / "data" / "labels" / "b.txt").exists(), 30, "the messages behind the wedge")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0, log.read_text()
            assert "STOPPING=1" in received(sock, 0.5)
        finally:
            if process.poll() is None:
                process.kill()
