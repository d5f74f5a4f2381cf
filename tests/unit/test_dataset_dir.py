"""DatasetDir, the one owner of a formed dataset's layout: its images per split (one suffix set,
hidden and temp files left out), data.yaml, and which dataset is the latest."""

import yaml

from azaion_training.fsutil import TEMP_PREFIX
from azaion_training.images import IMAGE_SUFFIXES
from azaion_training.layout import SPLITS, DatasetDir


def test_images_of_a_split_are_every_image_suffix_and_nothing_else(tmp_path):
    dataset = DatasetDir(tmp_path / "azaion-2025-01-01")
    dataset.create_splits()
    images = dataset.split("valid").images
    wanted = [f"a{i}{suffix.upper() if i % 2 else suffix}" for i, suffix in enumerate(IMAGE_SUFFIXES)]
    for name in [*wanted, "notes.txt", "clip.mp4", ".hidden.jpg", f"{TEMP_PREFIX}x.jpg"]:
        (images / name).write_bytes(b"x")
    (images / "folder.jpg").mkdir()
    assert [p.name for p in dataset.images("valid")] == sorted(wanted)
    assert dataset.images("test") == [] and DatasetDir(tmp_path / "missing").images("train") == []


def test_data_yaml_names_every_split_as_ultralytics_expects(tmp_path):
    dataset = DatasetDir(tmp_path / "azaion-2025-01-01")
    assert not dataset.is_complete()
    dataset.write_data_yaml({0: "Armored-Vehicle", 1: "Truck"})
    data = yaml.safe_load(dataset.data_yaml.read_text())
    assert data == {"path": str(dataset.root.absolute()), "train": "train/images", "val": "valid/images",
                    "test": "test/images", "nc": 2, "names": {0: "Armored-Vehicle", 1: "Truck"}}
    assert dataset.is_complete() and len(SPLITS) == 3


def test_latest_is_by_name_date_then_number_and_only_complete_azaion_datasets(tmp_path):
    assert DatasetDir.latest(tmp_path / "none") is None
    for name in ("azaion-2025-01-02", "azaion-2025-01-02-2", "azaion-2025-01-02-10", "azaion-2025-01-01-3",
                 "zzz-custom", "azaion-2025-01-03x"):
        DatasetDir(tmp_path / name).write_data_yaml({0: "a"})
    (tmp_path / "azaion-2030-01-01").mkdir()  # no data.yaml: still being formed
    assert DatasetDir.latest(tmp_path).name == "azaion-2025-01-02-10"
