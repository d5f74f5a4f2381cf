"""`azaion status` on an empty and on a populated tree (populated by the real stages)."""

import json
import shutil

from azaion_training.annotation_index import AnnotationIndex
from azaion_training.demo.stream import StreamPlan, write_stream_dump
from azaion_training.labels import read_label_file
from azaion_training.queue.offsets import write_offset_record
from azaion_training.queue.replay import replay_dump
from tests.conftest import run_azaion

TOP_KEYS = {"root", "initialised", "areas", "rejected", "corrupted_reasons", "data_classes", "queue",
            "latest_dataset", "latest_model", "last_publish"}
AREAS = {"data", "seed", "deleted", "corrupted", "processed"}
QUEUE_KEYS = {"stream", "offset", "offset_updated_at", "last_message_time", "last_applied_at", "index_last_offset",
              "index_areas"}


def status_json(root) -> dict:
    done = run_azaion("status", "--json", env={"AZAION_ROOT_DIR": str(root)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_status_of_an_empty_tree(root):
    status = status_json(root)
    assert set(status) == TOP_KEYS
    assert set(status["areas"]) == AREAS
    assert all(counts == {"images": 0, "labels": 0} for counts in status["areas"].values())
    assert status["rejected"] == {"messages": 0, "reasons": {}}
    assert set(status["queue"]) == QUEUE_KEYS and status["queue"]["offset"] is None
    assert status["data_classes"] == {}
    assert status["latest_dataset"] is None and status["latest_model"] is None and status["last_publish"] is None
    human = run_azaion("status", env={"AZAION_ROOT_DIR": str(root)})
    assert human.returncode == 0 and "Areas" in human.stdout and "Latest model -" in human.stdout


def test_status_of_a_missing_tree_says_to_init(tmp_path):
    done = run_azaion("status", env={"AZAION_ROOT_DIR": str(tmp_path / "nothing")})
    assert done.returncode == 0 and "azaion init" in done.stdout


def test_status_of_a_populated_tree(settings, layout, tmp_path, tiny_model, tiny_onnx, monkeypatch):
    summary = write_stream_dump(tmp_path / "s.azqdump", StreamPlan(images=30, size=64, seed=2))
    replay_dump(settings, tmp_path / "s.azqdump")
    write_offset_record(layout.offset_file, settings.rabbitmq.queue_name, 41)
    index = AnnotationIndex(layout.index_db)  # what the consumer records with each commit
    index.set_meta("last_message_time", "2025-06-01T08:00:00+00:00")
    index.close()
    from azaion_training.dataset.form import form_dataset

    formed = form_dataset(settings, progress=False)
    run_dir = layout.models / "azaion-2025-01-02"
    shutil.copytree(tiny_model.parent.parent, run_dir)
    monkeypatch.setenv("MODEL_ENCRYPTION_KEY", "status-test-key-0123456789")
    from azaion_training.distribution.publish import publish_model
    from azaion_training.settings import load_settings

    publish_model(load_settings(), tiny_onnx, name="tiny.onnx", target=f"local:{tmp_path / 'target'}",
                  source_run=run_dir.name)

    status = status_json(layout.root)
    data_images = len(list(layout.data.images.iterdir()))
    assert status["areas"]["data"] == {"images": data_images, "labels": data_images}
    assert status["areas"]["deleted"]["images"] == summary.deleted
    assert status["rejected"]["messages"] == summary.malformed and sum(status["rejected"]["reasons"].values()) == 3
    boxes = sum(len(read_label_file(p)) for p in layout.data.labels.glob("*.txt"))
    assert sum(status["data_classes"].values()) == boxes
    assert all("(" in name or name.isalpha() for name in status["data_classes"])  # names, not ids
    assert status["queue"]["offset"] == 41 and status["queue"]["stream"] == settings.rabbitmq.queue_name
    assert status["queue"]["last_message_time"] == "2025-06-01T08:00:00+00:00"
    assert status["queue"]["last_applied_at"] is not None
    assert status["queue"]["index_areas"]["data"] == data_images
    assert status["latest_dataset"]["name"] == formed.path.name
    assert sum(status["latest_dataset"]["images"].values()) == data_images
    model = status["latest_model"]
    assert model["run"] == run_dir.name and model["metrics"]["epochs"] == 2 and 0 <= model["metrics"]["mAP50"] <= 1
    assert status["last_publish"]["name"] == "tiny.onnx" and status["last_publish"]["source_run"] == run_dir.name
    assert status["last_publish"]["size"] == tiny_onnx.stat().st_size
