"""Shared fixtures. Stage-specific fixtures live in the conftest.py of each test folder.

Session fixtures that are expensive (a private RabbitMQ node, a tiny trained model and its
ONNX export) are built once and reused by every test that asks for them.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from azaion_training.classes import WeatherMode, model_class_names
from azaion_training.layout import Layout
from azaion_training.offline import configure_offline_environment
from azaion_training.scenes import encode_jpeg, label_text, render_scene
from azaion_training.settings import ENV_VARS, Settings, load_settings

configure_offline_environment()  # as the `azaion` entry point does: tests load Ultralytics in-process

REPO = Path(__file__).resolve().parent.parent
AZAION_BIN = Path(sys.executable).parent / "azaion"


# The fast lane (`make test-fast`, `pytest -m "not slow"`): no training, no browser, no broker.
# A test is slow when it asks (directly or through other fixtures) for one of these, or is
# marked `@pytest.mark.slow` itself (a test that trains through the CLI, say).
SLOW_FIXTURES = {
    "rabbit",  # a RabbitMQ node with streams
    "tiny_model", "tiny_onnx", "trained", "two_runs", "onnx_models",  # real trainings and exports
    "judged", "parity_root", "fall", "edge",  # a real pretrained detector exported, quantised, evaluated
    "browser", "page", "logged_in",  # Chromium
    "demo_run",  # the whole demo
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path_factory):
    """No test reads the developer's config.yaml or .env, or a real /azaion."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AZAION_CONFIG", raising=False)
    monkeypatch.setenv("AZAION_ROOT_DIR", str(tmp_path_factory.mktemp("azaion-root")))


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """An initialised, empty /azaion tree in tmp_path (AZAION_ROOT_DIR points at it)."""
    path = tmp_path / "azaion"
    monkeypatch.setenv("AZAION_ROOT_DIR", str(path))
    Layout(load_settings().paths).init()
    return path


@pytest.fixture
def settings(root) -> Settings:
    return load_settings()


@pytest.fixture
def layout(settings) -> Layout:
    return Layout(settings.paths)


def run_azaion(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 600,
               input_text: str | None = None) -> subprocess.CompletedProcess:
    """Run the installed `azaion` CLI in a subprocess, as a user would."""
    full_env = {**os.environ, "AZAION_LOG_FORMAT": "json", **(env or {})}
    return subprocess.run([str(AZAION_BIN), *args], env=full_env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, input=input_text)


@pytest.fixture(scope="session")
def rabbit():
    """A RabbitMQ broker with the stream plugin (private node unless one is configured)."""
    from tests.services.rabbitmq import RabbitNode

    node = RabbitNode.existing_or_start()
    yield node
    node.stop()


def write_synthetic_yolo_split(directory: Path, count: int, size: int, seed: int) -> None:
    (directory / "images").mkdir(parents=True, exist_ok=True)
    (directory / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    modes = list(WeatherMode)
    for i in range(count):
        scene = render_scene(rng, size, modes[i % len(modes)])
        (directory / "images" / f"img{i:04d}.jpg").write_bytes(encode_jpeg(scene.image))
        (directory / "labels" / f"img{i:04d}.txt").write_text(label_text(scene.labels))


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """A small YOLO dataset (train/valid of synthetic scenes at 160 px) with data.yaml; returns
    the data.yaml path. Read-only for tests: copy it before changing anything."""
    base = tmp_path_factory.mktemp("synthetic-dataset")
    write_synthetic_yolo_split(base / "train", 32, 160, seed=1)
    write_synthetic_yolo_split(base / "valid", 12, 160, seed=2)
    data_yaml = base / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"path": str(base), "train": "train/images", "val": "valid/images",
                                         "nc": 80, "names": model_class_names()}))
    return data_yaml


@pytest.fixture(scope="session")
def tiny_model(synthetic_dataset, tmp_path_factory) -> Path:
    """yolo26n trained from scratch for 2 epochs at imgsz 160 on the synthetic dataset (plain
    Ultralytics, so tests of our own stages compare against an independent reference)."""
    from ultralytics import YOLO

    project = tmp_path_factory.mktemp("tiny-model")
    model = YOLO("yolo26n.yaml")
    model.train(data=str(synthetic_dataset), epochs=2, imgsz=160, batch=8, workers=0, device="cpu",
                project=str(project), name="run", exist_ok=True, plots=False, amp=False, verbose=False)
    best = project / "run" / "weights" / "best.pt"
    assert best.is_file()
    return best


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model, tmp_path_factory) -> Path:
    """The tiny model exported by plain Ultralytics to ONNX with its defaults (dynamic batch; in
    Ultralytics 8.4.190 that is the raw (B, 4+nc, anchors) layout)."""
    import shutil

    from ultralytics import YOLO

    exported = Path(YOLO(str(tiny_model)).export(format="onnx", imgsz=160, dynamic=True, batch=8))
    target = tmp_path_factory.mktemp("tiny-onnx") / "tiny.onnx"
    shutil.copyfile(exported, target)
    return target
