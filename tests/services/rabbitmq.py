"""A private RabbitMQ node with the stream plugin, for tests and benchmarks.

The machine's own node (AMQP 5672) may run without the stream plugin, so we never rely on
it: if RABBITMQ_TEST_STREAM_PORT points at a broker whose stream port answers we use that,
otherwise we start our own node in a temp dir on free ports and stop it afterwards.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"  # not the /usr/sbin wrapper: it su-s to rabbitmq


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class RabbitNode:
    """host/stream_port/user/password of a broker with streams; `restart()` and `stop()`
    work only on a node this process started."""

    host: str = "127.0.0.1"
    stream_port: int = 0
    amqp_port: int = 0
    user: str = "guest"
    password: str = "guest"
    workdir: Path | None = None
    node_name: str = ""
    _env: dict = field(default_factory=dict)
    _process: subprocess.Popen | None = None

    @classmethod
    def existing_or_start(cls) -> "RabbitNode":
        port = int(os.environ.get("RABBITMQ_TEST_STREAM_PORT", "0") or 0)
        if port and port_answers("127.0.0.1", port):
            return cls(stream_port=port)
        node = cls()
        node.start()
        return node

    def start(self) -> None:
        if not Path(RABBITMQ_SERVER).exists():
            raise RuntimeError("rabbitmq-server is not installed: apt-get install rabbitmq-server")
        self.workdir = Path(tempfile.mkdtemp(prefix="azaion-rabbit-"))
        self.amqp_port, self.stream_port, dist_port = free_port(), free_port(), free_port()
        self.node_name = f"azaion-test-{os.getpid()}@localhost"
        (self.workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"stream.listeners.tcp.1 = 127.0.0.1:{self.stream_port}\n"
            "stream.advertised_host = 127.0.0.1\n"
            f"stream.advertised_port = {self.stream_port}\n"
            "distribution.listener.interface = 127.0.0.1\n"
            "management.tcp.port = 0\n"
            "loopback_users = none\n"
        )
        (self.workdir / "enabled_plugins").write_text("[rabbitmq_stream].\n")
        self._env = {
            **os.environ,
            "HOME": str(self.workdir),
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.workdir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_PID_FILE": str(self.workdir / "rabbit.pid"),
        }
        try:
            self._boot()
        except BaseException:
            self.stop()
            raise

    def _boot(self) -> None:
        log = open(self.workdir / "server.out", "ab")  # noqa: SIM115 - kept open for the child
        self._process = subprocess.Popen([RABBITMQ_SERVER], env=self._env, stdout=log, stderr=log,
                                         start_new_session=True)
        subprocess.run([RABBITMQCTL, "-n", self.node_name, "wait", self._env["RABBITMQ_PID_FILE"],
                        "--timeout", "60"], env=self._env, check=True, capture_output=True, timeout=90)
        deadline = time.monotonic() + 30
        while not port_answers(self.host, self.stream_port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"stream port {self.stream_port} never answered; see {self.workdir}/log")
            time.sleep(0.2)

    def stop_broker(self) -> None:
        """Stop the node but keep its data (for restart tests)."""
        if self._process is None:
            return
        subprocess.run([RABBITMQCTL, "-n", self.node_name, "stop", self._env["RABBITMQ_PID_FILE"]],
                       env=self._env, capture_output=True, timeout=60)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def restart(self) -> None:
        self.stop_broker()
        self._boot()

    def stop(self) -> None:
        self.stop_broker()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def env(self) -> dict[str, str]:
        """The RABBITMQ_* variables that point the product at this broker."""
        return {"RABBITMQ_HOST": self.host, "RABBITMQ_PORT": str(self.stream_port),
                "RABBITMQ_USER": self.user, "RABBITMQ_PASSWORD": self.password}
