"""benchmarks/gpu_check.sh without a GPU: it runs nothing, exits 0 and says why in one JSON line."""

import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def run_check(path: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": path})


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has an NVIDIA driver")
def test_without_a_driver_it_exits_0_with_the_reason():
    result = run_check(os.environ["PATH"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert report == {"benchmark": "gpu_check", "ran": False,
                      "reason": "no nvidia-smi: this machine has no NVIDIA driver, so no GPU to check"}


def test_a_driver_without_cuda_in_torch_is_a_reason_too(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("torch sees a GPU here")
    smi = tmp_path / "nvidia-smi"  # a driver whose GPU torch cannot use (e.g. a CUDA mismatch)
    smi.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3'\n")
    smi.chmod(0o755)
    result = run_check(f"{tmp_path}:{os.environ['PATH']}")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["ran"] is False
    assert "sees NVIDIA H100 80GB HBM3 but torch.cuda.is_available() is false" in report["reason"]
