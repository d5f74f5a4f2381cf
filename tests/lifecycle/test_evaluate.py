"""`azaion evaluate`: the ONNX of two tiny real runs through the same pipeline on the same split."""

from tests.conftest import run_azaion
from tests.lifecycle.conftest import json_of


def test_evaluate_two_runs_side_by_side(two_runs):
    layout = two_runs.layout()
    result = json_of(run_azaion("evaluate", "--candidate", two_runs.second, "--baseline", two_runs.first, "--json",
                                env=two_runs.env))
    assert (result["split"], result["images"], result["imgsz"], result["engine"]) == ("test", 12, 64, "ONNX")
    assert result["dataset"] == str(layout.datasets / "tiny")
    candidate, baseline = result["candidate"], result["baseline"]
    assert (candidate["run"], baseline["run"]) == (two_runs.second, two_runs.first)
    for score in (candidate, baseline):
        assert set(score["metrics"]) == {"mAP50", "mAP50-95", "precision", "recall"}
        assert all(0 <= v <= 1 for v in score["metrics"].values())
        assert score["ms_per_image"] > 0 and score["imgsz"] == 64 and len(score["onnx_sha256"]) == 64
        assert isinstance(score["per_class"], dict)
        assert score["onnx"].endswith("export/azaion-64-opset-default.onnx")  # exported once, at the trained size
    for key, delta in result["delta"].items():
        assert delta == round(candidate["metrics"][key] - baseline["metrics"][key], 4)
    assert result["interval"]["low"] <= result["interval"]["high"]


def test_evaluate_refuses_a_split_without_images(two_runs):
    result = run_azaion("evaluate", "--candidate", two_runs.first, "--split", "train", "--dataset",
                        str(two_runs.root / "nowhere"), env=two_runs.env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
