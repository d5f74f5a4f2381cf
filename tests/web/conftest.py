"""The cockpit's test tree, made by the real code paths: generated Azaion messages replayed
through the consumer's handler (with some that it rejects), one pair damaged on disk, dataset
formation (which quarantines it), and a real 2-epoch yolo26n training run at imgsz 64. Two
`azaion serve` processes run on it: read-only (open on loopback), and with COCKPIT_TOKEN (every
request logs in: Server sends the token as Authorization: Bearer unless told not to)."""

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from azaion_training.classes import WeatherMode
from azaion_training.layout import Layout
from azaion_training.queue.messages import AnnotationStatus, Role
from azaion_training.scenes import encode_jpeg, render_scene
from azaion_training.settings import load_settings
from tests.conftest import AZAION_BIN
from tests.dataset.conftest import make_old
from tests.queue.conftest import bulk, created, dump_of, jpeg
from tests.web.errors_tree import fall, predicted  # noqa: F401  (the error pages' tree, reused by tests/browser)

TOKEN = "cockpit-test-token-5b1f0c-9a7e42d18c3f6b05"  # >= 32 characters, as beyond loopback
MODEL_KEY = "cockpit-tests-model-key"
CORRUPTED = "damaged-on-disk"
BAD_BOX = ((1, 1.5, 0.5, 0.2, 0.2),)


def tree_env(root: Path, **extra: str) -> dict[str, str]:
    return {"AZAION_ROOT_DIR": str(root), "TRAINING_MODEL": "yolo26n.yaml", "TRAINING_WORKERS": "0",
            "TRAINING_DEVICE": "cpu", "TRAINING_IMGSZ": "64", "TRAINING_BATCH_SIZE": "8", "EXPORT_ONNX_IMGSZ": "64",
            "MODEL_ENCRYPTION_KEY": MODEL_KEY, "RABBITMQ_PORT": str(free_port()),
            # a 2-epoch model detects next to nothing: the quality floors are tested in tests/lifecycle
            "EXPORT_PARITY_MIN_MAP50": "0", "PROMOTION_MIN_MAP50": "0", **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stream() -> list[bytes]:
    """36 validated annotations (rendered scenes, 1-3 objects, all three weather modes) from 6
    flights, two operator annotations left in seed, one deleted, and four messages the
    consumer rejects."""
    rng = np.random.default_rng(3)
    modes = list(WeatherMode)
    entries = []
    for i in range(36):
        scene = render_scene(rng, 128, modes[i % 3], max_objects=3)
        entries.append(created(f"frame{i:03d}", Role.Validator, media=f"flight-{i % 6}.mp4",
                               boxes=tuple(scene.labels), image=encode_jpeg(scene.image)))
    entries += [created("seed1", Role.Operator), created("seed2", Role.Operator),
                bulk(AnnotationStatus.Deleted, "frame035")]
    entries += [b"\x00\x01 not a message", b"", created("frame-bad-box", Role.Validator, boxes=BAD_BOX),
                created("frame-bad-image", Role.Validator, image=b"\xff\xd8 truncated jpeg")]
    return entries


def busiest_class(dataset: Path, split: str = "train") -> int:
    """The class with most boxes in a split, as formation recorded it in manifest.json."""
    histogram = json.loads((dataset / "manifest.json").read_text())["class_histogram"][split]
    return int(max(histogram, key=histogram.get))


# tests/browser uses these fixtures too: the tree and the servers are built once per session.
_TREE: dict = {}
_SERVERS: dict = {}


@pytest.fixture(scope="session")
def web_tree(tmp_path_factory) -> dict:
    if not _TREE:
        _TREE.update(build_tree(tmp_path_factory))
    return _TREE


def build_tree(tmp_path_factory) -> dict:
    from azaion_training.dataset.form import form_dataset
    from azaion_training.offline import configure_offline_environment
    from azaion_training.queue.replay import replay_dump
    from azaion_training.training.train import TrainRequest, train

    base = tmp_path_factory.mktemp("cockpit")
    root = base / "azaion"
    env = tree_env(root)
    settings = load_settings(env=env)
    layout = Layout(settings.paths)
    layout.init()
    replay = replay_dump(settings, dump_of(base / "stream.dump", stream()))
    assert replay.rejected, replay
    # a pair damaged on disk after ingestion: formation quarantines it with a reason file
    layout.data.image_path(CORRUPTED, ".jpg").write_bytes(jpeg(99, size=96))
    layout.data.label_path(CORRUPTED).write_text("7 0.5 0.5 0.2\n")
    make_old(*(p for d in layout.data.directories() for p in d.iterdir()))
    formed = form_dataset(settings, progress=False)
    assert formed.corrupted == 1, formed.to_dict()
    configure_offline_environment()
    trained = train(settings, TrainRequest(dataset=formed.path.name, epochs=2, hyperparameters={"plots": False}))
    assert trained.status == "finished"
    return {"root": root, "env": env, "settings": settings, "layout": layout, "dataset": formed.path.name,
            "run": trained.run_dir.name, "published": base / "published"}


class Server:
    def __init__(self, env: dict[str, str], port: int):
        self.url = f"http://127.0.0.1:{port}"
        self.token = env.get("COCKPIT_TOKEN")
        self.process = subprocess.Popen([str(AZAION_BIN), "serve", "--port", str(port)],
                                        env={**os.environ, **env}, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=30).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"azaion serve did not start: {self.process.stdout.read()[-2000:]}")
            time.sleep(0.2)

    def _auth(self, kwargs: dict, auth: bool) -> dict:
        if auth and self.token:
            kwargs["headers"] = {"Authorization": f"Bearer {self.token}", **kwargs.get("headers", {})}
        return kwargs

    def get(self, path: str, auth: bool = True, **kwargs) -> httpx.Response:
        return httpx.get(self.url + path, timeout=120, **self._auth(kwargs, auth))

    def post(self, path: str, auth: bool = True, **kwargs) -> httpx.Response:
        return httpx.post(self.url + path, timeout=600, **self._auth(kwargs, auth))

    def json(self, path: str):
        response = self.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text[:500])
        return response.json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def shared_server(kind: str, env: dict[str, str]):
    if kind not in _SERVERS:
        _SERVERS[kind] = Server(env, free_port())
    yield _SERVERS[kind]
    running = _SERVERS.pop(kind, None)  # the first of the two fixture copies to finish stops it
    if running is not None:
        running.stop()


@pytest.fixture(scope="session")
def server(web_tree):
    """`azaion serve` without a token: read-only."""
    yield from shared_server("read-only", web_tree["env"])


@pytest.fixture(scope="session")
def token_server(web_tree):
    """`azaion serve` with COCKPIT_TOKEN set: promote and rollback enabled."""
    yield from shared_server("token", {**web_tree["env"], "COCKPIT_TOKEN": TOKEN})


def rejected_reasons(root: Path) -> dict[str, int]:
    reasons: dict[str, int] = {}
    for record in (root / "queue-rejected").glob("*.json"):
        reason = json.loads(record.read_text())["reason"]
        reasons[reason] = reasons.get(reason, 0) + 1
    return reasons


# ------------------------------------------------------------------ a small tree made by hand

SECRET = "outside-the-root-7f3a"


def handmade_tree(layout: Layout, outside: Path) -> None:
    """A tiny dataset, two quarantined messages and a run, written directly (no training), with a
    symlink out of the root at every kind of file the cockpit reads or serves: dataset image,
    label file, manifest.json, queue-rejected record and raw entry, reason file, run.json,
    results.csv, report.json and a report page. Every file outside holds SECRET."""
    from tests.queue.conftest import jpeg

    outside.mkdir(parents=True, exist_ok=True)
    text = outside / "secret.txt"
    text.write_text(f"{SECRET}\nroot:x:0:0:{SECRET}\n")
    as_json = outside / "secret.json"
    as_json.write_text(json.dumps({"reason": SECRET, "detail": SECRET, "status": "finished", "model": SECRET,
                                   "dataset": SECRET, "per_class": [{"class": SECRET, "ap50": 0.5}],
                                   "counts": {"train": 7777}, "created": SECRET}))
    as_csv = outside / "secret.csv"
    as_csv.write_text(f"epoch,metrics/mAP50(B),train/box_loss,{SECRET}\n1,0.7777,0.7777,1\n")
    label = outside / "secret-label.txt"
    label.write_text("3 0.7777 0.5 0.2 0.2\n")

    dataset = layout.datasets / "handmade"
    for sub in ("images", "labels"):
        (dataset / "train" / sub).mkdir(parents=True)
    (dataset / "data.yaml").write_text(f"path: {dataset}\ntrain: train/images\nval: train/images\nnc: 80\n")
    (dataset / "train" / "images" / "ok.jpg").write_bytes(jpeg(1))
    (dataset / "train" / "labels" / "ok.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (dataset / "train" / "images" / "escape.jpg").symlink_to(text)
    (dataset / "train" / "images" / "linked-label.jpg").write_bytes(jpeg(2))
    (dataset / "train" / "labels" / "linked-label.txt").symlink_to(label)
    linked_manifest = layout.datasets / "linked-manifest"
    (linked_manifest / "train" / "images").mkdir(parents=True)
    (linked_manifest / "data.yaml").write_text("nc: 80\n")
    (linked_manifest / "manifest.json").symlink_to(as_json)

    (layout.rejected / "5.bin").symlink_to(text)
    (layout.rejected / "5.json").write_text(json.dumps({"reason": "undecodable", "detail": "x", "offset": 5}))
    (layout.rejected / "6.json").symlink_to(as_json)
    (layout.corrupted.root / "linked.reason.txt").symlink_to(text)
    (layout.corrupted.root / "plain.reason.txt").write_text("bad-label\nline 1: expected 5 fields\n")
    os.mkfifo(layout.corrupted.root / "fifo.reason.txt")  # would block a reader that waits for a writer

    run = layout.models / "azaion-run"
    (run / "report").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "finished", "epochs": 1, "started": "2026-01-01T00:00:00"}))
    (run / "results.csv").symlink_to(as_csv)
    (run / "report" / "report.json").symlink_to(as_json)
    (run / "report" / "link.html").symlink_to(text)
    (run / "report" / "index.html").write_text("<p>report</p>")
    linked_run = layout.models / "azaion-linked"
    linked_run.mkdir()
    (linked_run / "run.json").symlink_to(as_json)
