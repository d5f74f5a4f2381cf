"""`azaion report --run RUN` on a real Ultralytics run (the tiny_model fixture)."""

import json
import shutil

import numpy as np

from azaion_training.report import html, plots
from tests.conftest import run_azaion


def test_report_of_a_training_run(root, tiny_model):
    run_dir = root / "models" / "azaion-2025-03-04"
    shutil.copytree(tiny_model.parent.parent, run_dir)
    done = run_azaion("report", "--run", run_dir.name, env={"AZAION_ROOT_DIR": str(root)}, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = run_dir / "report"
    page = (out / "index.html").read_text()
    assert str(out / "index.html") in done.stdout
    for heading in ("Pipeline summary", "Dataset", "Training", "Per-class AP", "ground truth vs predictions"):
        assert heading in page
    assert "<script" not in page and "https://" not in page
    for png in ("class_histogram", "training_curves", "test_grid"):
        assert (out / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "report.json").read_text())
    assert summary["evaluation"]["split"] == "val" and summary["evaluation"]["images"] == 12
    assert 0 <= summary["evaluation"]["mAP50"] <= 1


def test_report_of_an_unknown_run_is_an_input_error(root):
    done = run_azaion("report", "--run", "azaion-1999-01-01", env={"AZAION_ROOT_DIR": str(root)})
    assert done.returncode == 2
    assert "azaion-1999-01-01" in done.stderr and "Traceback" not in done.stderr


def test_html_escapes_everything_it_is_given():
    page = html.page("<t>", "s", [("h&", html.table([{"a": "<b>x</b>", "n": 0.5}]))])
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page and "h&amp;" in page
    assert '<td class="num">0.500</td>' in page


def test_plots_write_pngs(tmp_path):
    pr = plots.precision_recall(np.linspace(0, 1, 50), np.array([np.linspace(1, 0, 50)]), ["Truck"], [0.5],
                                tmp_path / "pr.png")
    hist = plots.class_histogram({"train": {"Truck": 3, "Plane": 1}}, tmp_path / "h.png", "t", order=["Plane"])
    grid = plots.image_grid([np.zeros((32, 32, 3), np.uint8)] * 3, ["a", "b", "c"], tmp_path / "g.png")
    for png in (pr, hist, grid):
        assert png.read_bytes()[:4] == b"\x89PNG"
