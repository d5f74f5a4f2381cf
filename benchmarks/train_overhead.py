"""Overhead of `azaion train` over plain Ultralytics `model.train` with identical arguments.

Builds a tiny synthetic dataset (32 train / 12 valid scenes at 160 px), then times, in this
one run, (a) the in-process `train()` of `azaion train` (lock, run record, per-epoch logs,
atomic install of best.pt) and (b) `YOLO(model).train(**same arguments)` into another project.
Three rounds, alternating which side goes first; prints one JSON line: the best wall time
of each and their ratio (target <= 1.05)."""

import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from azaion_training.classes import model_class_names  # noqa: E402
from azaion_training.layout import Layout  # noqa: E402
from azaion_training.logs import setup_logging  # noqa: E402
from azaion_training.offline import configure_offline_environment  # noqa: E402
from azaion_training.settings import load_settings  # noqa: E402
from azaion_training.training.train import TrainRequest, train, train_arguments  # noqa: E402
from tests.conftest import write_synthetic_yolo_split  # noqa: E402

EPOCHS, IMGSZ, BATCH, ROUNDS = 3, 96, 8, 3


def main() -> None:
    configure_offline_environment()
    setup_logging(level="WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "azaion"
        env = {"AZAION_ROOT_DIR": str(root), "TRAINING_MODEL": "yolo26n.yaml", "TRAINING_WORKERS": "0",
               "TRAINING_DEVICE": "cpu", "TRAINING_PLOTS": "false"}
        settings = load_settings(env=env)
        layout = Layout(settings.paths)
        layout.init()
        dataset = layout.datasets / "bench"
        write_synthetic_yolo_split(dataset / "train", 32, 160, seed=1)
        write_synthetic_yolo_split(dataset / "valid", 12, 160, seed=2)
        (dataset / "data.yaml").write_text(yaml.safe_dump({"path": str(dataset), "train": "train/images",
                                                           "val": "valid/images", "nc": 80,
                                                           "names": model_class_names()}))
        request = TrainRequest(dataset="bench", epochs=EPOCHS, batch=BATCH, imgsz=IMGSZ)
        from ultralytics import YOLO

        YOLO("yolo26n.yaml")  # import and first-build costs paid before either timing
        arguments = train_arguments(settings, layout, request, dataset / "data.yaml", "plain")
        ours, plain = [], []
        for round_ in range(ROUNDS):  # alternate which goes first, so neither always gets the warm caches
            for side in ("ours", "plain") if round_ % 2 else ("plain", "ours"):
                started = time.perf_counter()
                if side == "ours":
                    train(settings, request)
                else:
                    arguments["project"] = str(Path(tmp) / f"plain{round_}")
                    YOLO("yolo26n.yaml").train(**arguments)
                (ours if side == "ours" else plain).append(time.perf_counter() - started)

    print(json.dumps({"benchmark": "train_overhead", "epochs": EPOCHS, "imgsz": IMGSZ, "images": 32,
                      "rounds": ROUNDS,
                      "azaion_train_s": round(min(ours), 2), "plain_ultralytics_s": round(min(plain), 2),
                      "ratio": round(min(ours) / min(plain), 3), "target_ratio": 1.05}))


if __name__ == "__main__":
    main()
