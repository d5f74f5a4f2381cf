"""Cockpit latency on a real-sized tree vs `azaion status --json` as a CLI.

Builds a tree of N annotations (default 100,000) from F source flights (default 10,000,
recorded in the annotation index as the consumer does), forms a dataset from it, starts
`azaion serve` and times, over real HTTP: `/`, `/api/status`, the dataset browser's first
page and a deep page. The first request of each (the one-off reading of the tree) is reported
apart from the steady-state p50/p95. In the same run `azaion status --json` is timed as a
CLI. Prints one JSON line. Target: p95 <= 300 ms on every page.

    .venv/bin/python benchmarks/cockpit.py [--n 100000] [--flights 10000] [--requests 40] [--dir DIR]
    .venv/bin/python benchmarks/cockpit.py --tree /bench-tree   # build once, keep, time again later
"""

import argparse
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from azaion_training.annotation_index import AnnotationIndex, IndexEntry, read_source_media
from azaion_training.dataset.form import form_dataset
from azaion_training.layout import Layout
from azaion_training.settings import load_settings

sys.path.insert(0, str(Path(__file__).parent))
from dataset_form import write_source  # noqa: E402  (the same synthetic annotations as that benchmark)

AZAION = Path(sys.executable).parent / "azaion"


def record_flights(layout: Layout, count: int, flights: int) -> None:
    """Every annotation's source media in the index, as the consumer records it (splits group by it)."""
    index = AnnotationIndex(layout.index_db)
    index.begin()
    for i in range(count):
        index.upsert(IndexEntry(f"{i:08x}-bench", "data", f"flight-{i % flights:05d}.mp4", 20, 0, None, None, ".jpg",
                                10, i, "2026-01-01T00:00:00+00:00"))
    index.set_meta("last_offset", str(count - 1))
    index.commit()
    index.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed(client: httpx.Client, path: str) -> float:
    started = time.perf_counter()
    response = client.get(path)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, (path, response.status_code, response.text[:300])
    return elapsed * 1000


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered), 1),
            "p95_ms": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100000)
    parser.add_argument("--flights", type=int, default=10000)
    parser.add_argument("--requests", type=int, default=40, help="timed requests per page")
    parser.add_argument("--size", type=int, default=64, help="image side in px")
    parser.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir, removed after)")
    parser.add_argument("--tree", type=Path, default=None,
                        help="a kept work dir: built when empty, reused as it is otherwise (tree_build_s null)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = args.tree or Path(tempfile.mkdtemp(prefix="bench-cockpit-", dir=args.dir))
    env = {**os.environ, "AZAION_ROOT_DIR": str(work / "azaion"), "AZAION_LOG_LEVEL": "WARNING",
           "RABBITMQ_PORT": str(free_port())}
    server = None
    try:
        os.environ["AZAION_ROOT_DIR"] = env["AZAION_ROOT_DIR"]
        settings = load_settings()
        layout = Layout(settings.paths)
        build_s = None
        if layout.datasets.is_dir() and any(layout.datasets.glob("*/data.yaml")):
            dataset = max(p.parent.name for p in layout.datasets.glob("*/data.yaml"))
        else:
            layout.init()
            started = time.perf_counter()
            write_source(layout, args.n, args.size)
            record_flights(layout, args.n, args.flights)
            dataset = form_dataset(settings, progress=False).path.name
            build_s = round(time.perf_counter() - started, 1)

        cli_ms = []
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run([str(AZAION), "status", "--json"], env=env, check=True, capture_output=True)
            cli_ms.append((time.perf_counter() - started) * 1000)

        port = free_port()
        started = time.perf_counter()
        server = subprocess.Popen([str(AZAION), "serve", "--port", str(port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
        while True:
            try:
                client.get("/static/cockpit.css")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        listening_s = time.perf_counter() - started
        pages = client.get(f"/api/datasets/{dataset}").json()["pages"]  # waits for the index if still building
        first_ready_s = time.perf_counter() - started
        paths = {"overview": "/", "api_status": "/api/status", "dataset_first_page": f"/datasets/{dataset}",
                 "dataset_deep_page": f"/datasets/{dataset}?page={pages * 3 // 4}",
                 "dataset_class_filter_deep": f"/datasets/{dataset}?split=train&class=2&page=20"}
        first = {name: round(timed(client, path), 1) for name, path in paths.items()}
        annotations = client.get("/api/status").json()["areas"]["data"]["images"]
        flights = len(set(read_source_media(layout.index_db).values()))
        latency = {}
        for name, path in paths.items():
            latency[name] = percentiles([timed(client, path) for _ in range(args.requests)])
        status_p50 = latency["api_status"]["p50_ms"]
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        if args.tree is None:
            shutil.rmtree(work, ignore_errors=True)
    worst_p95 = max(v["p95_ms"] for v in latency.values())
    print(json.dumps({
        "benchmark": "cockpit", "annotations": annotations, "flights": flights, "dataset_pages": pages,
        "requests_per_page": args.requests, "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
        "tree_build_s": build_s, "server_listening_s": round(listening_s, 2),
        "server_status_and_index_ready_s": round(first_ready_s, 2), "first_request_ms": first, **latency,
        "cli_status_json_ms": round(statistics.median(cli_ms), 1),
        "cli_status_vs_api_status_p50": round(statistics.median(cli_ms) / status_p50, 1),
        "worst_p95_ms": worst_p95, "target_p95_ms": 300, "target_met": worst_p95 <= 300,
    }))


if __name__ == "__main__":
    main()
