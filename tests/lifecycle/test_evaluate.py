"""`azaion evaluate`: two tiny real models through the same evaluation on the same split."""

from azaion_training.lifecycle.promote import ensure_onnx
from azaion_training.training.runs import find_run
from tests.conftest import run_azaion
from tests.lifecycle.conftest import json_of


def test_evaluate_two_runs_side_by_side(two_runs):
    settings, layout = two_runs.settings(), two_runs.layout()
    for run in (two_runs.first, two_runs.second):  # the ONNX whose ms/image is measured
        ensure_onnx(settings, find_run(layout, run))
    result = json_of(run_azaion("evaluate", "--candidate", two_runs.second, "--baseline", two_runs.first, "--json",
                                env=two_runs.env))
    assert (result["split"], result["images"], result["imgsz"]) == ("test", 12, 64)
    assert result["dataset"] == str(layout.datasets / "tiny")
    candidate, baseline = result["candidate"], result["baseline"]
    assert (candidate["run"], baseline["run"]) == (two_runs.second, two_runs.first)
    for score in (candidate, baseline):
        assert set(score["metrics"]) == {"mAP50", "mAP50-95", "precision", "recall"}
        assert all(0 <= v <= 1 for v in score["metrics"].values())
        assert score["ms_per_image"] > 0
        assert isinstance(score["per_class"], dict)
    for key, delta in result["delta"].items():
        assert delta == round(candidate["metrics"][key] - baseline["metrics"][key], 4)


def test_evaluate_refuses_a_split_without_images(two_runs):
    result = run_azaion("evaluate", "--candidate", two_runs.first, "--split", "train", "--dataset",
                        str(two_runs.root / "nowhere"), env=two_runs.env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
