"""Files leave the cockpit only by names it resolves inside the root: traversal, encoded
traversal, absolute paths and symlinks out of the root all answer 404. The app runs in
uvicorn in a thread here; requests go out byte for byte (http.client does not normalise)."""

import http.client
import json
import threading
import time

import pytest
import uvicorn

from azaion_training.layout import Layout
from azaion_training.web.app import create_app
from tests.queue.conftest import jpeg
from tests.web.conftest import free_port

SECRET = "outside-the-root-7f3a"


@pytest.fixture
def app_server(tmp_path, settings, layout: Layout):
    outside = tmp_path / "outside.txt"
    outside.write_text(SECRET)
    dataset = layout.datasets / "handmade"
    for sub in ("images", "labels"):
        (dataset / "train" / sub).mkdir(parents=True)
    (dataset / "data.yaml").write_text(f"path: {dataset}\ntrain: train/images\nval: train/images\nnc: 80\n")
    (dataset / "train" / "images" / "ok.jpg").write_bytes(jpeg(1))
    (dataset / "train" / "labels" / "ok.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (dataset / "train" / "images" / "escape.jpg").symlink_to(outside)
    (layout.rejected / "5.bin").symlink_to(outside)
    (layout.rejected / "5.json").write_text(json.dumps({"reason": "undecodable", "detail": "x", "offset": 5}))
    run = layout.models / "azaion-run"
    (run / "report").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "finished"}))
    (run / "report" / "link.html").symlink_to(outside)
    (run / "report" / "index.html").write_text("<p>report</p>")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, warm=False), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def raw_get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.putrequest("GET", path, skip_accept_encoding=True)
    connection.endheaders()
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, body


@pytest.mark.parametrize("path", [
    "/files/datasets/handmade/train/escape.jpg",  # symlink out of the root
    "/files/datasets/../../../../etc/passwd",
    "/files/datasets/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/files/datasets/handmade/train/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/files/datasets/handmade/train/%2fetc%2fpasswd",
    "/files/datasets/%2fetc/train/passwd",
    "/files/datasets/handmade/%2e%2e/images",
    "//etc/passwd",
    "/files/queue-rejected/5.bin",  # symlink out of the root
    "/files/queue-rejected/..%2fclasses.json",
    "/files/queue-rejected/%2e%2e%2fclasses.json",
    "/files/data-corrupted/..%2f..%2foutside.txt",
    "/runs/azaion-run/report/link.html",  # symlink out of the root
    "/runs/azaion-run/report/..%2frun.json",
    "/runs/%2e%2e/report/index.html",
    "/static/..%2f..%2fapp.py",
    "/static/../app.py",
])
def test_paths_outside_the_root_are_404(app_server, path):
    status, body = raw_get(app_server, path)
    assert status == 404, (path, status, body[:200])
    assert SECRET.encode() not in body and b"root:" not in body


def test_names_the_server_resolves_are_served(app_server, layout):
    status, body = raw_get(app_server, "/files/datasets/handmade/train/ok.jpg")
    assert status == 200 and body == (layout.datasets / "handmade" / "train" / "images" / "ok.jpg").read_bytes()
    status, body = raw_get(app_server, "/runs/azaion-run/report/index.html")
    assert status == 200 and body == b"<p>report</p>"
    status, body = raw_get(app_server, "/api/datasets/handmade")
    assert status == 200 and json.loads(body)["matching"] == 2  # listed, but escape.jpg is never served
