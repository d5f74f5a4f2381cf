"""Fixtures of the training/export tests: a root holding the synthetic dataset, one shared
CLI training run (2 epochs at imgsz 64, exported and published to a local target), and a
socket guard that records any attempt to reach beyond loopback."""

import shutil
import socket
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_azaion

DATASET = "tiny"
KEY = "training-tests-model-key"


def make_root(base: Path, synthetic_dataset: Path) -> Path:
    """An /azaion root with the synthetic dataset copied in as datasets/tiny (absolute path:),
    its valid images copied as its test split (the split the promotion gate judges on)."""
    root = base / "azaion"
    target = root / "datasets" / DATASET
    shutil.copytree(synthetic_dataset.parent, target)
    shutil.copytree(target / "valid", target / "test")
    data = yaml.safe_load((target / "data.yaml").read_text())
    data["path"], data["test"] = str(target), "test/images"
    (target / "data.yaml").write_text(yaml.safe_dump(data))
    return root


def tiny_env(root: Path, **extra: str) -> dict[str, str]:
    """Settings of the tiny from-scratch trainings. Their 1-2 epoch models detect next to nothing,
    so the quality floors (parity floor, promotion floor) are switched off here: these tests are
    about mechanics. The floors themselves are tested with a real pretrained detector
    (tests/lifecycle/test_judge_artefact.py)."""
    return {"AZAION_ROOT_DIR": str(root), "TRAINING_MODEL": "yolo26n.yaml", "TRAINING_WORKERS": "0",
            "TRAINING_DEVICE": "cpu", "TRAINING_IMGSZ": "64", "TRAINING_BATCH_SIZE": "8",
            "EXPORT_ONNX_IMGSZ": "64", "TRAINING_PLOTS": "false", "COLUMNS": "160",
            "EXPORT_PARITY_MIN_MAP50": "0", "PROMOTION_MIN_MAP50": "0", **extra}


@pytest.fixture(scope="session")
def trained(synthetic_dataset, tmp_path_factory):
    """`azaion train --epochs 2 --publish --target local:DIR` on a fresh root."""
    base = tmp_path_factory.mktemp("trained")
    root = make_root(base, synthetic_dataset)
    published = base / "published"
    result = run_azaion("train", "--dataset", DATASET, "--epochs", "2", "--publish", "--target", f"local:{published}",
                        env=tiny_env(root, MODEL_ENCRYPTION_KEY=KEY))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, published, result


class SocketGuard:
    """Refuses and records every connect() to a non-loopback address."""

    def __init__(self, monkeypatch):
        self.attempts: list[object] = []
        original = socket.socket.connect

        def guarded_connect(sock, address):
            host = address[0] if isinstance(address, tuple) else address
            if isinstance(host, str) and not (host.startswith(("127.", "/")) or host in ("::1", "localhost")):
                self.attempts.append(address)
                raise OSError(f"network access blocked by the test: {address}")
            return original(sock, address)

        monkeypatch.setattr(socket.socket, "connect", guarded_connect)
        monkeypatch.setattr(socket.socket, "connect_ex", lambda sock, address: guarded_connect(sock, address) or 0)


@pytest.fixture
def socket_guard(monkeypatch) -> SocketGuard:
    return SocketGuard(monkeypatch)
