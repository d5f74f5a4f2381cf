"""`azaion cycle`: too little data (no run), enough (dataset, run, decision), growth, a cycle
stopped by SIGTERM during training and resumed on the next start, fine-tuning production."""

import json
import os
import shutil
import signal
import subprocess

import pytest

from azaion_training.layout import Layout
from azaion_training.settings import load_settings
from tests.conftest import AZAION_BIN, run_azaion, write_synthetic_yolo_split
from tests.lifecycle.conftest import KEY
from tests.training.conftest import tiny_env


def _cycle_env(root, **extra: str) -> dict[str, str]:
    return tiny_env(root, MODEL_ENCRYPTION_KEY=KEY, TRAINING_EPOCHS="1", CYCLE_MIN_NEW="30", **extra)


def _add_annotations(layout: Layout, count: int, seed: int, tmp_path) -> None:
    """`count` new validated annotations in data/ (synthetic scenes, names prefixed by the seed)."""
    staging = tmp_path / f"new-{seed}"
    write_synthetic_yolo_split(staging, count, 96, seed=seed)
    for kind in ("images", "labels"):
        for path in (staging / kind).iterdir():
            shutil.move(path, getattr(layout.data, kind) / f"s{seed}-{path.name}")


def _history(layout: Layout) -> list[dict]:
    path = layout.models / "cycle" / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_cycle_with_too_little_data_trains_nothing(tmp_path):
    root = tmp_path / "azaion"
    layout = Layout(load_settings(env=_cycle_env(root)).paths)
    layout.init()
    _add_annotations(layout, 5, 1, tmp_path)
    result = run_azaion("cycle", "--once", "--target", f"local:{tmp_path / 'target'}", env=_cycle_env(root))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cycle skipped: 5 new validated annotations" in result.stdout and "30 needed" in result.stdout
    assert not list(layout.models.glob("azaion-*")) and not list(layout.datasets.iterdir())
    assert _history(layout) == [] and not (tmp_path / "target").exists()


@pytest.mark.slow  # trains through the CLI
def test_cycles_form_train_promote_and_resume_after_sigterm(tmp_path):
    root = tmp_path / "azaion"
    env = _cycle_env(root)
    target = f"local:{tmp_path / 'target'}"
    layout = Layout(load_settings(env=env).paths)
    layout.init()

    _add_annotations(layout, 40, 1, tmp_path)
    first = run_azaion("cycle", "--once", "--target", target, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    [entry] = _history(layout)
    assert entry["action"] == "promote" and entry["production_before"] is None and entry["parent"] is None
    assert entry["data_count"] == 40 and entry["new"] == 40
    run = json.loads((layout.models / entry["run"] / "run.json").read_text())
    assert run["mode"] == "new" and run["dataset"] == entry["dataset"] and run["split_generation"] == 1
    steps = [e["context"]["step"] for e in _json_lines(first.stderr) if e["message"] == "cycle step"]
    assert steps == ["form", "train", "promote"]
    assert (tmp_path / "target" / "cdn" / "models" / "azaion.onnx.big").is_file()

    _add_annotations(layout, 10, 2, tmp_path)  # 10 < 30 new since the last cycle's dataset
    # new = not in the dataset production trained on (its 40 are not new any more)
    assert "cycle skipped: 10 new" in run_azaion("cycle", "--once", "--target", target, env=env).stdout

    _add_annotations(layout, 25, 3, tmp_path)  # 35 new: a second cycle, stopped during training
    process = subprocess.Popen([str(AZAION_BIN), "cycle", "--once", "--target", target],
                               env={**os.environ, "AZAION_LOG_FORMAT": "json", **env, "CYCLE_EPOCHS": "3"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if '"epoch done"' in line:
            process.send_signal(signal.SIGTERM)
            break
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr[-3000:]
    state = json.loads((layout.models / "cycle" / "state.json").read_text())
    assert state["step"] == "train" and state["parent"] == entry["run"] and state["new"] == 35 and state["epochs"] == 3
    assert json.loads((layout.models / state["run"] / "run.json").read_text())["status"] == "interrupted"

    resumed = run_azaion("cycle", "--once", "--target", target, env={**env, "COLUMNS": "200"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "gate [test, " in resumed.stdout and "ONNX]: candidate mAP50" in resumed.stdout  # figures on stdout
    messages = [e["message"] for e in _json_lines(resumed.stderr)]
    assert "cycle resumed" in messages and "resuming training" in messages and "training started" not in messages
    second = _history(layout)[-1]
    assert second["run"] == state["run"] and second["dataset"] == state["dataset"] != entry["dataset"]
    assert second["production_before"] == entry["run"] and second["action"] in ("promote", "refused")
    assert second["gate"]["split"] == "test" and second["gate"]["production"] is not None
    run = json.loads((layout.models / second["run"] / "run.json").read_text())
    assert run["mode"] == "fine-tune" and run["parent"] == entry["run"] and run["status"] == "finished"
    assert run["epochs_done"] == 3 and run["resumed_from_epoch"] >= 1
    assert not (layout.models / "cycle" / "state.json").exists()


def test_cycle_without_base_weights_fails_before_any_work(tmp_path):
    root = tmp_path / "azaion"
    env = _cycle_env(root, TRAINING_MODEL=str(tmp_path / "gone.pt"))
    layout = Layout(load_settings(env=env).paths)
    layout.init()
    _add_annotations(layout, 30, 1, tmp_path)
    result = run_azaion("cycle", "--once", "--target", f"local:{tmp_path / 'target'}", env=env)
    assert result.returncode == 2 and "gone.pt" in result.stderr and "Traceback" not in result.stderr
    assert not list(layout.datasets.iterdir()) and not (layout.models / "cycle" / "state.json").exists()


@pytest.mark.slow  # trains through the CLI
def test_watch_repeats_cycles_and_stops_on_sigterm(tmp_path):
    env = {**os.environ, "AZAION_LOG_FORMAT": "json", **_cycle_env(tmp_path / "azaion")}
    process = subprocess.Popen([str(AZAION_BIN), "cycle", "--watch", "--interval", "1", "--target",
                                f"local:{tmp_path / 'target'}"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    sleeps = 0
    for line in process.stderr:
        sleeps += '"cycle sleeping"' in line
        if sleeps == 2:  # a second cycle ran after the interval
            process.send_signal(signal.SIGTERM)
            break
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr[-2000:]
    assert "cycle watch stopped" in stderr


def test_cycle_budget_defaults_to_a_tenth_of_training_epochs():
    from azaion_training.lifecycle.cycle import cycle_epochs

    assert cycle_epochs(load_settings(env={"TRAINING_EPOCHS": "120"}), None) == 12
    assert cycle_epochs(load_settings(env={"TRAINING_EPOCHS": "5"}), None) == 1
    assert cycle_epochs(load_settings(env={"TRAINING_EPOCHS": "120", "CYCLE_EPOCHS": "7"}), None) == 7
    assert cycle_epochs(load_settings(env={"CYCLE_EPOCHS": "7"}), 2) == 2  # --epochs wins


def test_cycle_fails_fast_without_the_model_key(tmp_path):
    """Everything a publish needs is checked before forming, training or exporting anything."""
    import time

    root = tmp_path / "azaion"
    env = {k: v for k, v in _cycle_env(root).items() if k != "MODEL_ENCRYPTION_KEY"}
    layout = Layout(load_settings(env=env).paths)
    layout.init()
    _add_annotations(layout, 30, 1, tmp_path)
    started = time.monotonic()
    result = run_azaion("cycle", "--once", "--target", f"local:{tmp_path / 'target'}", env=env)
    assert result.returncode == 2 and "MODEL_ENCRYPTION_KEY" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 15  # the CLI's own start-up included; the check itself is immediate
    assert not list(layout.datasets.iterdir()) and not list(layout.models.glob("azaion-*"))
