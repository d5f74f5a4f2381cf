"""The registry: every run is a version with its lineage (dataset, split generation, base
weights or parent run, hyperparameters, metrics); `azaion models list/show`; one run lookup."""

import pytest

from azaion_training.errors import InputError
from azaion_training.training.runs import RunRecord, find_run, latest_run
from azaion_training.training.train import warn_older_generation
from tests.conftest import run_azaion
from tests.lifecycle.conftest import json_of
from tests.training.conftest import DATASET


def test_models_list_shows_both_runs_with_lineage(two_runs):
    versions = {v["run"]: v for v in json_of(run_azaion("models", "list", "--json", env=two_runs.env))}
    first, second = versions[two_runs.first], versions[two_runs.second]
    assert first["mode"] == "new" and first["parent"] is None and first["base"] == "yolo26n.yaml"
    assert second["mode"] == "fine-tune" and second["parent"] == two_runs.first and second["base"] is None
    for version in (first, second):
        assert version["status"] == "finished" and version["dataset"] == DATASET
        assert 0 <= version["mAP50"] <= 1 and 0 <= version["mAP50-95"] <= version["mAP50"] + 1e-9

    table = run_azaion("models", "list", env=two_runs.env)
    assert table.returncode == 0, table.stderr
    for column in ("run", "status", "dataset", "parent", "mAP50", "mAP50-95", "promoted"):
        assert column in table.stdout
    assert two_runs.second in table.stdout


def test_models_show_has_hyperparameters_metrics_and_lineage(two_runs):
    shown = json_of(run_azaion("models", "show", two_runs.second, "--json", env=two_runs.env))
    assert shown["parent"] == two_runs.first
    assert shown["model"] == str(two_runs.layout().models / two_runs.first / "weights" / "best.pt")
    assert shown["dataset"] == str(two_runs.layout().datasets / DATASET)
    assert (shown["epochs"], shown["epochs_done"], shown["imgsz"], shown["batch"]) == (1, 1, 64, 8)
    assert set(shown["metrics"]) == {"precision", "recall", "mAP50", "mAP50-95"}
    by_path = json_of(run_azaion("models", "show", str(two_runs.layout().models / two_runs.second), "--json",
                                 env=two_runs.env))
    assert by_path["run"] == shown["run"]

    missing = run_azaion("models", "show", "azaion-1999-01-01", env=two_runs.env)
    assert missing.returncode == 2 and "not found" in missing.stderr and "Traceback" not in missing.stderr


def test_one_run_lookup_by_name_path_and_latest(two_runs):
    layout = two_runs.layout()
    assert latest_run(layout).run == two_runs.second
    assert find_run(layout, None).run == two_runs.second
    assert find_run(layout, two_runs.first).path == layout.models / two_runs.first
    assert find_run(layout, layout.models / two_runs.first).run == two_runs.first
    with pytest.raises(InputError, match="not found"):
        find_run(layout, "../etc")


def test_fine_tune_from_an_older_split_generation_warns(tmp_path):
    parent = RunRecord(run="azaion-2025-01-01", path=tmp_path, split_generation=1)
    message = warn_older_generation(parent, 2)
    assert message and "models trained before it saw today's valid/test data" in message
    assert warn_older_generation(parent, 1) is None and warn_older_generation(None, 2) is None
