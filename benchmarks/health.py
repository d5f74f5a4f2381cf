"""How long `azaion health` takes (cron/container health checks run it every few minutes).

Runs the real CLI against a private RabbitMQ node: once where a recent offset commit answers the
progress check, once where an old commit makes it probe the stream for pending messages (with
nothing pending the probe waits its full PENDING_PROBE_S). Reference: `azaion --help` (CLI start-up) in the same run.
Prints one JSON line.
"""

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.services.rabbitmq import RabbitNode  # noqa: E402

AZAION = str(Path(sys.executable).parent / "azaion")


def timed(args: list[str], env: dict[str, str], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([AZAION, *args], env=env, capture_output=True, check=False)
        best = min(best, time.perf_counter() - started)
    return best


def write_offset(root: Path, age: timedelta) -> None:
    updated_at = (datetime.now(UTC) - age).isoformat()
    (root / "queue-state" / "offset.yaml").write_text(
        yaml.safe_dump({"stream": "azaion-annotations", "offset": 0, "updated_at": updated_at}))


def publish_one(node: RabbitNode) -> None:
    """The stream with a single message (offset 0), which offset.yaml marks as consumed."""
    from rstream import Producer

    async def send() -> None:
        async with Producer(node.host, node.stream_port, username=node.user, password=node.password) as producer:
            await producer.create_stream("azaion-annotations", exists_ok=True)
            await producer.send_wait("azaion-annotations", b"bench")

    asyncio.run(send())


def main() -> None:
    node = RabbitNode.existing_or_start()
    try:
        root = Path(tempfile.mkdtemp(prefix="azaion-health-bench-"))
        env = {**os.environ, **node.env(), "AZAION_ROOT_DIR": str(root), "AZAION_LOG_FORMAT": "json"}
        subprocess.run([AZAION, "init"], env=env, capture_output=True, check=True)
        publish_one(node)
        reference = timed(["--help"], env)
        write_offset(root, timedelta(minutes=1))
        recent = timed(["health"], env)
        write_offset(root, timedelta(hours=2))
        probed = timed(["health"], env)
    finally:
        node.stop()
    print(json.dumps({"benchmark": "health", "cli_startup_s": round(reference, 3),
                      "health_recent_commit_s": round(recent, 3), "health_with_stream_probe_s": round(probed, 3),
                      "ratio_recent_to_startup": round(recent / reference, 2),
                      "ratio_probe_to_startup": round(probed / reference, 2)}))


if __name__ == "__main__":
    main()
