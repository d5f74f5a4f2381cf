"""Files leave the cockpit only by names it resolves inside the root, and every file a page shows
is read through rootfiles.open_inside: traversal, encoded traversal, absolute paths and
symlinks out of the root answer 400 or 404, and the content of a symlinked reason file, label
file, queue-rejected record, manifest, run.json, results.csv or report.json is never shown. The
app runs in uvicorn in a thread here; requests go out byte for byte (http.client does not
normalise)."""

import http.client
import json
import threading
import time

import pytest
import uvicorn

from azaion_training.layout import Layout
from azaion_training.rootfiles import RefusedFile, is_file_inside, open_inside, read_inside
from azaion_training.web.app import create_app
from tests.web.conftest import SECRET, free_port, handmade_tree


@pytest.fixture
def app_server(tmp_path, settings, layout: Layout):
    handmade_tree(layout, tmp_path / "outside")
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


def raw_get(port: int, path: str, accept: str = "application/json") -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.putrequest("GET", path, skip_accept_encoding=True)
    connection.putheader("Accept", accept)
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
    "/files/queue-rejected/6.json",  # symlink out of the root
    "/files/queue-rejected/..%2fclasses.json",
    "/files/queue-rejected/%2e%2e%2fclasses.json",
    "/files/data-corrupted/..%2f..%2foutside.txt",
    "/files/data-corrupted/linked",
    "/runs/azaion-run/report/link.html",  # symlink out of the root
    "/runs/azaion-run/report/report.json",  # symlink out of the root
    "/runs/azaion-run/report/..%2frun.json",
    "/runs/%2e%2e/report/index.html",
    "/static/..%2f..%2fapp.py",
    "/static/../app.py",
])
def test_paths_outside_the_root_are_refused(app_server, path):
    status, body = raw_get(app_server, path)
    assert status in (400, 404), (path, status, body[:200])
    assert SECRET.encode() not in body and b"root:" not in body


@pytest.mark.parametrize("path", [
    "/quarantine", "/api/quarantine",  # reason file, queue-rejected record (and a FIFO reason file)
    "/api/status", "/",  # status counts reasons of both
    "/datasets/handmade/train/linked-label.jpg", "/api/datasets/handmade/train/linked-label.jpg",  # label file
    "/datasets/handmade", "/api/datasets/handmade",
    "/datasets", "/api/datasets", "/datasets/linked-manifest", "/api/datasets/linked-manifest",  # manifest.json
    "/runs", "/api/runs", "/runs/azaion-run", "/api/runs/azaion-run",  # results.csv, report.json
    "/runs/azaion-linked", "/api/runs/azaion-linked", "/models", "/api/models",  # run.json
])
def test_symlinked_files_are_never_shown(app_server, path):
    started = time.monotonic()
    status, body = raw_get(app_server, path, accept="text/html" if not path.startswith("/api/") else "*/*")
    assert status in (200, 404), (path, status, body[:300])
    assert time.monotonic() - started < 8  # the FIFO reason file is refused, not waited on
    assert SECRET.encode() not in body and b"root:x" not in body and b"7777" not in body, path


def test_refused_files_are_listed_as_refused(app_server):
    status, body = raw_get(app_server, "/api/quarantine")
    data = json.loads(body)
    corrupted = {r["name"]: r for r in data["corrupted"]}
    assert corrupted["plain"]["reason"] == "bad-label"
    for name in ("linked", "fifo"):
        assert corrupted[name]["reason"] == "unreadable-reason-file" and "not shown" in corrupted[name]["detail"]
    rejected = {r["offset"]: r for r in data["rejected"]}
    assert rejected[5]["reason"] == "undecodable" and rejected[5]["raw"] is False  # 5.bin leads out
    assert rejected[6]["reason"] == "unreadable-record"
    status, body = raw_get(app_server, "/api/datasets/handmade/train/linked-label.jpg")
    assert status == 200 and json.loads(body)["label_lines"] == []
    runs = {r["run"] for r in json.loads(raw_get(app_server, "/api/runs")[1])}
    assert runs == {"azaion-run", "azaion-linked"}
    assert json.loads(raw_get(app_server, "/api/runs/azaion-run")[1])["evaluation"] is None


def test_names_the_server_resolves_are_served(app_server, layout):
    status, body = raw_get(app_server, "/files/datasets/handmade/train/ok.jpg")
    assert status == 200 and body == (layout.datasets / "handmade" / "train" / "images" / "ok.jpg").read_bytes()
    status, body = raw_get(app_server, "/runs/azaion-run/report/index.html")
    assert status == 200 and body == b"<p>report</p>"
    status, body = raw_get(app_server, "/api/datasets/handmade")
    assert status == 200 and json.loads(body)["matching"] == 3  # listed, but escape.jpg is never served


def test_open_inside(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "file.txt").write_text("inside")
    (tmp_path / "outside.txt").write_text("outside")
    (root / "in-link").symlink_to(root / "sub" / "file.txt")  # a symlink within the root is followed
    (root / "out-link").symlink_to(tmp_path / "outside.txt")
    (root / "dir-link").symlink_to(tmp_path)
    (root / "sub" / "big").write_bytes(b"x" * 100)
    import os

    os.mkfifo(root / "fifo")
    assert read_inside(root, root / "sub" / "file.txt") == b"inside"
    assert read_inside(root, root / "in-link") == b"inside"
    for refused in (root / "out-link", root / "dir-link" / "outside.txt", root / "sub" / ".." / ".." / "outside.txt",
                    root / "fifo", root / "sub", root / "dir-link"):
        with pytest.raises(RefusedFile):
            open_inside(root, refused)
        assert not is_file_inside(root, refused)
    with pytest.raises(FileNotFoundError):
        open_inside(root, root / "missing")
    with pytest.raises(RefusedFile, match="larger than"):
        read_inside(root, root / "sub" / "big", limit=10)
