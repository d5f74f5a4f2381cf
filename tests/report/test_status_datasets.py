"""`azaion status` names the dataset training takes by default (DatasetDir.latest), and a dataset
of another name when there is none of those, marked as not the default."""

import os

from azaion_training.layout import DatasetDir
from azaion_training.report.status import latest_dataset


def make(layout, name: str, mtime: float) -> DatasetDir:
    dataset = DatasetDir(layout.datasets / name)
    dataset.create_splits()
    dataset.write_data_yaml({0: "a"})
    os.utime(dataset.data_yaml, (mtime, mtime))
    return dataset


def test_status_names_the_default_dataset_else_the_newest_other(layout):
    layout.init()
    assert latest_dataset(layout) is None
    make(layout, "my-set", 1000)
    make(layout, "demo-set", 2000)
    (layout.datasets / "incomplete").mkdir()  # no data.yaml: never shown
    shown = latest_dataset(layout)
    assert shown["name"] == "demo-set" and shown["default"] is False
    make(layout, "azaion-2026-01-02", 500)  # older on disk, but the one training takes
    shown = latest_dataset(layout)
    assert shown["name"] == "azaion-2026-01-02" and shown["default"] is True
