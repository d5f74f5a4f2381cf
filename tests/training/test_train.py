"""`azaion train`: end to end, records, per-epoch logs, resume after SIGKILL, SIGTERM stop,
fine-tune, preflight, the single-instance lock, offline."""

import json
import os
import re
import signal
import subprocess
from datetime import date

import pytest

from azaion_training.layout import DatasetDir, Layout
from azaion_training.locks import InstanceLock
from azaion_training.settings import load_settings
from azaion_training.training.preflight import check_image_cache, planned_checkpoints, preflight
from azaion_training.training.train import TrainRequest, next_run_name, resumable_checkpoint, train
from tests.conftest import AZAION_BIN, run_azaion, write_synthetic_yolo_split
from tests.training.conftest import DATASET, make_root, tiny_env


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def epoch_lines(text: str) -> list[dict]:
    return [entry["context"] for entry in json_lines(text) if entry["message"] == "epoch done"]


def results_rows(run_dir) -> int:
    return len((run_dir / "results.csv").read_text().splitlines()) - 1


def test_train_end_to_end_records_run_and_moves_no_current_file(trained):
    root, _, result = trained
    layout = Layout(load_settings(env={"AZAION_ROOT_DIR": str(root)}).paths)
    run_dir = layout.models / f"azaion-{date.today().isoformat()}"
    assert results_rows(run_dir) == 2
    assert (run_dir / "weights" / "best.pt").is_file()
    # what is current is production per target (the registry): no models/azaion.pt is replaced
    assert not (layout.models / "azaion.pt").exists() and not (layout.models / "azaion.onnx").exists()
    assert not list(layout.models.glob(".tmp-*"))
    assert (layout.models / "checkpoint.txt").read_text().startswith(str(date.today().year))
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "finished" and record["epochs_done"] == 2 and record["mode"] == "new"
    assert record["dataset"] == str(layout.datasets / DATASET)
    assert set(record["metrics"]) == {"precision", "recall", "mAP50", "mAP50-95"}
    epochs = epoch_lines(result.stderr)
    assert [e["epoch"] for e in epochs] == [1, 2]
    for entry in epochs:
        assert {"losses", "precision", "recall", "mAP50", "mAP50-95", "epoch_time_s"} <= set(entry)
        assert entry["epochs"] == 2 and entry["epoch_time_s"] > 0 and "box_loss" in entry["losses"]


def test_train_publishes_the_parity_checked_onnx_through_the_gate(trained):
    root, published, result = trained
    # the run's own export, at the size it trained at (64), keyed by size and opset
    onnx = root / "models" / f"azaion-{date.today().isoformat()}" / "export" / "azaion-64-opset-default.onnx"
    assert onnx.is_file()
    history = [json.loads(line) for line in (root / "models/published/models/history.jsonl").read_text().splitlines()]
    assert [e["action"] for e in history] == ["promote"]
    gate = history[0]["gate"]  # the first promotion is judged too (the floor), with nothing to compare with
    assert gate["passed"] and gate["production"] is None and gate["imgsz"] == 64 and gate["engine"] == "ONNX"
    manifests = list(published.rglob("*.manifest.json"))
    assert len(manifests) == 1
    manifest = json.loads(manifests[0].read_text())
    assert manifest["source_run"] == f"azaion-{date.today().isoformat()}"
    assert manifest["plaintext"]["size"] == onnx.stat().st_size
    assert any(e["message"] == "parity check" for e in json_lines(result.stderr))


def test_resume_of_finished_run_is_refused(trained):
    root, _, _ = trained
    result = run_azaion("train", "--resume", env=tiny_env(root))
    assert result.returncode == 2
    assert "already finished" in result.stderr and "--from" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # trains through the CLI
def test_second_training_on_the_same_root_refuses_to_start(tmp_path, synthetic_dataset):
    root = make_root(tmp_path, synthetic_dataset)
    layout = Layout(load_settings(env={"AZAION_ROOT_DIR": str(root)}).paths)
    with InstanceLock(layout.lock_file("training"), "training run"):
        result = run_azaion("train", "--dataset", DATASET, "--epochs", "1", env=tiny_env(root))
    assert result.returncode == 1
    assert "another training run is already running" in result.stderr
    assert not list(layout.models.glob("azaion-*"))


def test_missing_base_weights_is_a_clear_error(tmp_path, synthetic_dataset):
    root = make_root(tmp_path, synthetic_dataset)
    result = run_azaion("train", "--dataset", DATASET, env=tiny_env(root, TRAINING_MODEL=str(tmp_path / "gone.pt")))
    assert result.returncode == 2
    assert "TRAINING_MODEL" in result.stderr and "gone.pt" in result.stderr and "Traceback" not in result.stderr


def _train_until_epoch_one(root, epochs: int) -> subprocess.Popen:
    """Start `azaion train` and return once its first epoch is logged (epoch 2 is under way)."""
    env = {**os.environ, "AZAION_LOG_FORMAT": "json", **tiny_env(root)}
    process = subprocess.Popen([str(AZAION_BIN), "train", "--dataset", DATASET, "--epochs", str(epochs)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in process.stderr:  # the JSON log lines
        if '"epoch done"' in line:
            return process
        seen.append(line)
    process.wait()
    raise AssertionError(f"training ended before its first epoch: {''.join(seen)[-2000:]}")


@pytest.mark.slow  # trains through the CLI
def test_sigkill_during_epoch_two_then_resume_ends_with_three_epochs(tmp_path, synthetic_dataset):
    root = make_root(tmp_path, synthetic_dataset)
    process = _train_until_epoch_one(root, epochs=3)
    process.kill()
    process.communicate()
    run_dir = root / "models" / f"azaion-{date.today().isoformat()}"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"  # killed, never updated
    assert resumable_checkpoint(run_dir)[1:] == (1, 3)

    result = run_azaion("train", "--resume", str(run_dir), env=tiny_env(root))  # a run directory, as report --run
    assert result.returncode == 0, result.stderr[-2000:]
    assert [e["epoch"] for e in epoch_lines(result.stderr)] == [2, 3]
    assert results_rows(run_dir) == 3
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "finished" and record["epochs_done"] == 3 and record["resumed_from_epoch"] == 1
    assert (run_dir / "weights" / "best.pt").is_file()


@pytest.mark.slow  # trains through the CLI
def test_sigterm_stops_after_a_resumable_checkpoint(tmp_path, synthetic_dataset):
    root = make_root(tmp_path, synthetic_dataset)
    process = _train_until_epoch_one(root, epochs=4)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    run_dir = root / "models" / f"azaion-{date.today().isoformat()}"
    assert f"azaion train --resume {run_dir.name}" in stderr
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "interrupted"
    last, done, epochs = resumable_checkpoint(run_dir)
    assert epochs == 4 and 2 <= done < 4 and record["epochs_done"] == done
    assert not (run_dir / "weights" / "best.pt").exists() or record["status"] != "finished"


def test_fine_tune_from_pt_on_a_dataset_formed_from_data_offline(trained, tmp_path, socket_guard):
    root = tmp_path / "azaion"
    settings = load_settings(env=tiny_env(root))
    layout = Layout(settings.paths)
    layout.init()
    write_synthetic_yolo_split(layout.data.root, 30, 96, seed=5)
    base = root / "base.pt"
    base.write_bytes(next((trained[0] / "models").glob("azaion-*/weights/best.pt")).read_bytes())
    result = train(settings, TrainRequest(epochs=1, from_weights=base))  # no --dataset: one is formed first
    assert result.status == "finished" and result.epochs_done == 1
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["mode"] == "fine-tune" and record["model"] == str(base)
    assert record["dataset"] == str(layout.datasets / f"azaion-{date.today().isoformat()}")
    assert result.best.is_file()
    assert socket_guard.attempts == []


def test_next_run_name_counts_up(tmp_path):
    day = date(2025, 3, 1)
    assert next_run_name(tmp_path, day) == "azaion-2025-03-01"
    (tmp_path / "azaion-2025-03-01").mkdir()
    (tmp_path / "azaion-2025-03-01-2").mkdir()
    assert next_run_name(tmp_path, day) == "azaion-2025-03-01-3"


def test_preflight_go(tmp_path, synthetic_dataset):
    root = make_root(tmp_path, synthetic_dataset)
    checks = preflight(load_settings(env=tiny_env(root)), TrainRequest(dataset=DATASET, epochs=3))
    assert [c.name for c in checks] == ["dataset", "base weights", "device", "batch fits", "disk space"]
    assert all(c.ok for c in checks), checks
    assert "32 train, 12 valid" in checks[0].detail
    assert planned_checkpoints(120, 1) == 122 and planned_checkpoints(10, -1) == 2


def test_preflight_checks_the_image_cache_fits(tmp_path, synthetic_dataset):
    """TRAINING_CACHE=disk|ram adds a check of the cache's size against free disk / available RAM."""
    root = make_root(tmp_path, synthetic_dataset)
    disk = preflight(load_settings(env=tiny_env(root, TRAINING_CACHE="disk")), TrainRequest(dataset=DATASET))
    cache = next(c for c in disk if c.name == "image cache")
    assert cache.ok and "TRAINING_CACHE=disk: 32 images need" in cache.detail, cache
    images = DatasetDir(root / "datasets" / DATASET).images("train")
    # 160x160x3 bytes x 2x margin x 3.2 million images = 490 GB: more than any machine here has
    too_big = check_image_cache("ram", images * 100_000, 160, root)
    assert not too_big.ok and "RAM available" in too_big.detail and "TRAINING_CACHE=none" in too_big.detail
    assert check_image_cache("none", images, 160, root) is None
    plain = preflight(load_settings(env=tiny_env(root)), TrainRequest(dataset=DATASET))
    assert "image cache" not in [c.name for c in plain]


def test_preflight_without_dataset_checks_what_train_would_form(tmp_path):
    """`train` without --dataset forms a new dataset from data/: preflight checks data/, not an old dataset."""
    root = tmp_path / "azaion"
    settings = load_settings(env=tiny_env(root))
    layout = Layout(settings.paths)
    layout.init()
    (layout.datasets / "azaion-2025-01-01").mkdir()  # an older dataset that train would not use
    (layout.datasets / "azaion-2025-01-01" / "data.yaml").write_text("nc: 80\n")
    empty = preflight(settings, TrainRequest())[0]
    assert not empty.ok and "no annotations" in empty.detail
    write_synthetic_yolo_split(layout.data.root, 3, 64, seed=3)
    ready = preflight(settings, TrainRequest())[0]
    assert ready.ok and "formed from 3 annotations" in ready.detail


def test_preflight_no_go_names_each_failure(tmp_path, synthetic_dataset):
    root = make_root(tmp_path, synthetic_dataset)
    bad_label = root / "datasets" / DATASET / "train" / "labels" / "img0000.txt"
    bad_label.write_text("0 1.5 0.5 0.1 0.1\n")
    result = run_azaion("train", "--preflight", "--dataset", DATASET, "--min-free-gb", "1000000",
                        env=tiny_env(root, TRAINING_MODEL=str(tmp_path / "missing.pt")))
    assert result.returncode == 1
    table = result.stdout
    for name in ("dataset", "base weights", "disk space"):
        assert re.search(rf"{name}\s+│ no-go", table), table
    assert "1 invalid label(s)" in table and "missing.pt" in table
    assert "no-go (dataset, base weights, disk space)" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--resume", "--epochs", "5"], "--resume continues a run"),
    (["some-run"], "only taken with --resume"),
    (["--imgsz", "100"], "multiple of 32"),
])
def test_bad_arguments_exit_2(tmp_path, args, message):
    result = run_azaion("train", *args, env={"AZAION_ROOT_DIR": str(tmp_path)})
    assert result.returncode == 2 and message in result.stderr
