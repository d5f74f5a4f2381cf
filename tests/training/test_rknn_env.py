"""RKNN export through the toolchain's own venv (`make rknn-env`, docs/edge.md), with a real
pretrained detector (YOLOv8s at 320) on the offline sample images: the .rknn is built there,
the toolkit's simulator runs it on the test split letterboxed here, and our pipeline scores its
outputs against the FP32 ONNX. Runs only where the venv exists: it is about 5.6 GB (torch 2.4
from PyPI brings its CUDA libraries) and 4-5 minutes to build, so `make test` does not build it.
"""

import json
import os
import subprocess  # nosec B404
import zipfile
from pathlib import Path

import pytest

from azaion_training.settings import load_settings
from azaion_training.training.quantize import rknn_python
from tests.conftest import run_azaion
from tests.inference.edge_data import TRAINED_IMGSZ, make_edge_root

RKNN_PYTHON = rknn_python(load_settings(env={k: v for k, v in os.environ.items() if k == "EXPORT_RKNN_VENV"}))
pytestmark = pytest.mark.skipif(not RKNN_PYTHON.is_file(),
                                reason=f"no RKNN toolchain venv at {RKNN_PYTHON.parent.parent}: `make rknn-env` "
                                       "builds it (5.6 GB, 4-5 min; not part of `make test`)")


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    return make_edge_root(tmp_path_factory.mktemp("rknn"))


def _printed_json(stdout: str) -> dict:
    lines = stdout.splitlines()
    return json.loads("\n".join(lines[lines.index("{"):]))


def test_the_rknn_venv_keeps_its_own_pins():
    done = subprocess.run([str(RKNN_PYTHON), "-c", "import numpy, onnx, rknn.api; print(numpy.__version__, "  # nosec
                           "onnx.__version__)"], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["1.26.4", "1.18.0"]


def test_rknn_int8_is_simulated_scored_and_kept(edge):
    root, env, good, _ = edge
    result = run_azaion("export", "--weights", str(root / "models" / good / "weights" / "best.pt"),
                        "--formats", "rknn", "--int8", "--json", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    variant = _printed_json(result.stdout)["variants"][0]
    assert variant["key"] == f"rknn-rk3588-int8-{TRAINED_IMGSZ}-opset-default" and variant["passed"]
    assert variant["fp32_map50"] > 0.5 and variant["drop"] <= 0.01 and variant["min_speedup"] is None
    with zipfile.ZipFile(variant["path"]) as archive:
        metadata = json.loads(archive.read("metadata.json"))
        assert archive.read("azaion.rknn")[:4] == b"RKNN"
    assert metadata["format"] == "rknn" and metadata["platform"] == "rk3588" and metadata["precision"] == "int8"
    assert metadata["imgsz"] == [TRAINED_IMGSZ, TRAINED_IMGSZ] and len(metadata["outputs"]) == 2
    record = json.loads((root / "models" / good / "run.json").read_text())
    assert record["exports"][variant["key"]]["sha256"] == variant["sha256"]


def test_rknn_int8_calibrated_on_blank_frames_is_refused(edge):
    """Blank grey calibration frames cost the RKNN INT8 model 0.013 mAP50 on these images: refused."""
    root, env, _, blank = edge
    result = run_azaion("export", "--weights", str(root / "models" / blank / "weights" / "best.pt"),
                        "--formats", "rknn", "--int8", "--json", env=env)
    assert result.returncode == 1 and "QUANT_MAX_MAP_DROP" in result.stderr, result.stderr[-3000:]
    variant = _printed_json(result.stdout)["variants"][0]
    assert variant["drop"] > 0.01 and variant["path"] is None
    assert not list(Path(root / "models" / blank / "export").glob("*.zip"))
