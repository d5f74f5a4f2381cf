"""`azaion train`: Ultralytics YOLO training into `models/azaion-YYYY-MM-DD[-N]/`.

Three explicit modes: a new run from `TRAINING_MODEL` (a local .pt or a model yaml), a
fine-tune (`--from PATH`: a new run that starts from those weights), and a resume
(`--resume [RUN]`: continues an interrupted run from its `last.pt` with its epoch count and
schedule intact). Every run keeps its record (`<run>/run.json`, a `RunRecord`: lineage,
hyperparameters, metrics; docs/model-registry.md); a finished run's best.pt becomes
`models/azaion.pt`.

SIGTERM stops the run cleanly: the current batch ends, the epoch is validated and saved to
`last.pt`, and the process exits 143 before Ultralytics' final evaluation (which would strip
the optimizer state from `last.pt` and make it unresumable).
"""

import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from azaion_training.dataset.manifest import read_manifest
from azaion_training.errors import AzaionError, ConfigError, InputError, OperationFailed
from azaion_training.fsutil import atomic_write_text
from azaion_training.layout import DatasetDir, Layout, RunDir
from azaion_training.locks import InstanceLock
from azaion_training.logs import get_logger, log
from azaion_training.settings import Settings, TrainingSettings, overridden
from azaion_training.training.runs import RUN_PREFIX, RunRecord, find_run, run_of_weights
from azaion_training.training.weights import checked_start_weights, load_weights_only, resolve_training_model

logger = get_logger("training")

CHECKPOINT_STAMP = "checkpoint.txt"
METRIC_KEYS = {
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
    "metrics/mAP50(B)": "mAP50",
    "metrics/mAP50-95(B)": "mAP50-95",
}


class TrainingInterrupted(AzaionError):
    """SIGTERM stopped the run after a checkpoint; `azaion train --resume RUN` continues it."""

    exit_code = 143  # 128 + SIGTERM, what a supervisor expects from a process it stopped


class _StopAfterCheckpoint(Exception):
    """Raised from Ultralytics' on_model_save callback to leave training right after a save."""


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # finished | interrupted
    epochs_done: int
    epochs: int
    metrics: dict[str, float]
    best: Path | None


@dataclass
class TrainRequest:
    """What to train: arguments left None take their value from the settings."""

    dataset: str | None = None
    epochs: int | None = None
    batch: int | None = None
    imgsz: int | None = None
    device: str | None = None
    from_weights: Path | None = None
    # Extra Ultralytics train() arguments (optimizer, lr0, augmentation...), e.g. the demo's
    # tuning for a short CPU run; they override the arguments derived from the settings.
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    run_name: str | None = None  # a name picked by the caller (the cycle); default the next free one

    def training_settings(self, settings: Settings) -> TrainingSettings:
        """settings.training with this request's values in place (InputError on a bad one)."""
        return overridden(settings.training, epochs=self.epochs, batch_size=self.batch, imgsz=self.imgsz,
                          device=self.device)


# ---------------------------------------------------------------------------------------- inputs


def model_source(spec: str) -> str:
    """A loadable model: an existing .pt file, or a model yaml (a local file or one Ultralytics
    ships, e.g. yolo26m.yaml). Anything else is a ConfigError before any work starts."""
    path = Path(spec).expanduser()
    if path.suffix == ".pt":
        if not path.is_file():
            raise ConfigError(
                f"TRAINING_MODEL / --from {spec!r}: weights file not found. Put the base weights at that path "
                "(nothing is downloaded), or use a model yaml such as yolo26m.yaml to train from scratch."
            )
        return str(path.absolute())
    if path.suffix in (".yaml", ".yml"):
        if path.is_file():
            return str(path.absolute())
        from ultralytics.nn.tasks import yaml_model_load

        try:
            yaml_model_load(spec)
        except (FileNotFoundError, OSError):
            raise ConfigError(f"TRAINING_MODEL {spec!r}: no such model yaml (a local file or an Ultralytics "
                              "model name like yolo26m.yaml)") from None
        return spec
    raise ConfigError(f"TRAINING_MODEL {spec!r}: expected a local .pt weights file or a model .yaml")


def dataset_yaml(settings: Settings, layout: Layout, name: str | None) -> Path:
    """data.yaml of the named dataset (a name under datasets/ or a path), or of a dataset formed
    now from data/."""
    from azaion_training.dataset.form import form_dataset, resolve_dataset

    if name is None:
        return Path(form_dataset(settings).data_yaml).absolute()
    data_yaml = DatasetDir(resolve_dataset(name, layout)).data_yaml
    if not data_yaml.is_file():
        raise InputError(f"dataset {name!r} has no data.yaml ({data_yaml}): form it with `azaion dataset form`")
    return data_yaml.absolute()


def next_run_name(models: Path, today: date | None = None) -> str:
    base = f"{RUN_PREFIX}{(today or date.today()).isoformat()}"
    name, n = base, 1
    while (models / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def use_amp(device: str) -> bool:
    """AMP only on a GPU and only when Ultralytics' AMP check can run offline: it needs a local
    yolo26n.pt in its weights dir and would otherwise try to download one."""
    if device == "cpu":
        return False
    import torch

    if not torch.cuda.is_available():
        return False
    from ultralytics.utils import WEIGHTS_DIR

    if (WEIGHTS_DIR / "yolo26n.pt").is_file():
        return True
    log(logger, logging.WARNING, "mixed precision off: place yolo26n.pt in Ultralytics' weights dir to enable it",
        weights_dir=str(WEIGHTS_DIR))
    return False


def train_arguments(settings: Settings, layout: Layout, request: TrainRequest, data_yaml: Path,
                    run_name: str) -> dict[str, Any]:
    """The Ultralytics train() arguments of a new run (also used by the overhead benchmark)."""
    cfg = request.training_settings(settings)
    device = cfg.device
    return {
        "data": str(data_yaml.absolute()),
        "epochs": cfg.epochs,
        "batch": cfg.batch_size,
        "imgsz": cfg.imgsz,
        "device": device or None,
        "workers": cfg.workers,
        "save_period": cfg.save_period,
        "project": str(layout.models.absolute()),
        "name": run_name,
        "exist_ok": True,  # run_name is fresh (next_run_name under the training lock); run.json is already there
        "amp": use_amp(device),
        "plots": cfg.plots,
        "cache": False if cfg.cache == "none" else cfg.cache,  # TRAINING_CACHE (docs/training.md)
        "verbose": False,
        **request.hyperparameters,
    }


# ---------------------------------------------------------------------------------------- records


def split_generation(dataset: Path) -> int | None:
    """The split assignment generation recorded in the dataset's manifest.json (None: unknown)."""
    manifest = read_manifest(DatasetDir(dataset).manifest)
    value = manifest.split_generation if manifest else None
    return value if isinstance(value, int) else None


def warn_older_generation(parent: RunRecord | None, generation: int | None) -> str | None:
    """Fine-tuning a model trained under an older split generation: its valid/test frames may
    be in the parent's training data, so the new run's metrics are not comparable."""
    if parent is None or generation is None or parent.split_generation is None \
            or parent.split_generation >= generation:
        return None
    message = (f"fine-tuning from {parent.run} (split generation {parent.split_generation}) on a dataset of "
               f"generation {generation}: models trained before it saw today's valid/test data")
    log(logger, logging.WARNING, message, parent=parent.run, parent_generation=parent.split_generation,
        generation=generation)
    return message


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _completed_epochs(run_dir: Path) -> int:
    csv = RunDir(run_dir).results_csv
    return max(0, len(csv.read_text().splitlines()) - 1) if csv.is_file() else 0


# ---------------------------------------------------------------------------------------- training


class _EpochLogger:
    """Ultralytics callbacks: one log line per epoch, and the SIGTERM stop."""

    def __init__(self, run_name: str):
        self.run_name = run_name
        self.stop_requested = False
        self.checkpoint_saved = False
        self.in_epoch = False
        self.final_metrics: dict[str, float] = {}

    def attach(self, model: Any) -> None:
        model.add_callback("on_train_epoch_start", self.on_train_epoch_start)
        model.add_callback("on_train_batch_end", self.on_train_batch_end)
        model.add_callback("on_fit_epoch_end", self.on_fit_epoch_end)
        model.add_callback("on_model_save", self.on_model_save)

    def on_train_epoch_start(self, trainer: Any) -> None:
        self.in_epoch = True

    def on_train_batch_end(self, trainer: Any) -> None:
        if self.stop_requested:
            trainer.stop = True  # Ultralytics then validates and saves this epoch

    def on_fit_epoch_end(self, trainer: Any) -> None:
        metrics = {short: round(float(trainer.metrics.get(key, 0.0)), 5) for key, short in METRIC_KEYS.items()}
        if not self.in_epoch:  # Ultralytics' final validation of best.pt repeats this callback
            self.final_metrics = metrics
            log(logger, logging.INFO, "final validation of best.pt", run=self.run_name, **metrics)
            return
        self.in_epoch = False
        losses = {key.split("/", 1)[1]: value for key, value in trainer.label_loss_items(trainer.tloss).items()}
        log(logger, logging.INFO, "epoch done", run=self.run_name, epoch=trainer.epoch + 1, epochs=trainer.epochs,
            losses=losses, **metrics, epoch_time_s=round(float(trainer.epoch_time or 0.0), 3))
        self.final_metrics = metrics

    def on_model_save(self, trainer: Any) -> None:
        # after the last epoch's save nothing is left to resume: let Ultralytics finish the run
        if self.stop_requested and trainer.epoch + 1 < trainer.epochs:
            self.checkpoint_saved = True
            raise _StopAfterCheckpoint


def _fit(model: Any, arguments: dict[str, Any], epoch_logger: _EpochLogger) -> None:
    """model.train(**arguments) with SIGTERM turned into a stop after the next checkpoint."""
    def request_stop(signum: int, frame: object) -> None:
        log(logger, logging.WARNING, "SIGTERM: stopping after this batch and a checkpoint", run=epoch_logger.run_name)
        epoch_logger.stop_requested = True

    previous = signal.signal(signal.SIGTERM, request_stop)
    try:
        model.train(**arguments)
    except _StopAfterCheckpoint:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(layout: Layout, record: RunRecord, model: Any, arguments: dict[str, Any]) -> TrainResult:
    run_dir = record.path
    epoch_logger = _EpochLogger(run_dir.name)
    epoch_logger.attach(model)
    started = time.monotonic()
    record.status, record.started, record.pid, record.error = "running", _now(), os.getpid(), None
    run_dir.mkdir(parents=True, exist_ok=True)
    record.save()
    try:
        _fit(model, arguments, epoch_logger)
    except BaseException as exc:
        record.status, record.error, record.ended = "failed", str(exc)[:500], _now()
        record.epochs_done = _completed_epochs(run_dir)
        record.save()
        raise
    interrupted = epoch_logger.checkpoint_saved
    best = record.best_weights
    record.status = "interrupted" if interrupted else "finished"
    record.ended = _now()
    record.duration_s = round(record.duration_s + time.monotonic() - started, 1)
    record.epochs_done = _completed_epochs(run_dir)
    record.metrics = epoch_logger.final_metrics
    record.best = str(best) if best.is_file() else None
    record.last = str(record.last_weights)
    if not interrupted:
        if not best.is_file():
            raise OperationFailed(f"training of {run_dir.name} ended without {best}")
        # no "current" model file: what is current is production per target (the registry)
        atomic_write_text(layout.models / CHECKPOINT_STAMP, record.ended + "\n")
    record.save()
    log(logger, logging.INFO, f"training {record.status}", run=run_dir.name, epochs_done=record.epochs_done,
        epochs=record.epochs, **epoch_logger.final_metrics)
    if interrupted:
        raise TrainingInterrupted(f"training stopped by SIGTERM after saving {record.last} "
                                  f"({record.epochs_done} of {record.epochs} epochs); "
                                  f"continue with `azaion train --resume {run_dir.name}`")
    return TrainResult(run_dir, record.status, record.epochs_done, record.epochs, record.metrics, best)


def training_lock(layout: Layout) -> InstanceLock:
    return InstanceLock(layout.lock_file("training"), "training run")


def train(settings: Settings, request: TrainRequest) -> TrainResult:
    """A new run: from TRAINING_MODEL, or a fine-tune from `request.from_weights`."""
    layout = Layout(settings.paths)
    layout.init()
    source = model_source(str(request.from_weights) if request.from_weights
                          else resolve_training_model(settings.training.model, layout))
    what = "--from" if request.from_weights else "TRAINING_MODEL"
    if source.endswith(".pt"):  # fail fast, before a dataset is formed (the copy below is what guards)
        load_weights_only(Path(source), f"{what} {source}")
    with training_lock(layout):
        data_yaml = dataset_yaml(settings, layout, request.dataset)
        run_name = request.run_name or next_run_name(layout.models)
        if (layout.models / run_name).exists():
            raise InputError(f"training run {run_name!r} already exists in {layout.models}")
        arguments = train_arguments(settings, layout, request, data_yaml, run_name)
        from ultralytics import YOLO

        parent = run_of_weights(layout, request.from_weights) if request.from_weights else None
        record = RunRecord(
            run=run_name, path=layout.model_run_dir(run_name), mode="fine-tune" if request.from_weights else "new",
            model=source, parent=parent.run if parent else None, dataset=str(data_yaml.parent),
            split_generation=split_generation(data_yaml.parent), epochs=arguments["epochs"],
            batch=arguments["batch"], imgsz=arguments["imgsz"], device=arguments["device"] or "auto",
            hyperparameters=dict(request.hyperparameters), command=sys.argv[1:])
        # checked weights-only, and Ultralytics loads that checked copy (<run>/start.pt, training/weights.py)
        start = checked_start_weights(source, record.path, what, layout)
        warn_older_generation(parent, record.split_generation)
        log(logger, logging.INFO, "training started", run=record.run, mode=record.mode, model=record.model,
            parent=record.parent, dataset=record.dataset, split_generation=record.split_generation)
        return _run(layout, record, YOLO(start), arguments)


# ---------------------------------------------------------------------------------------- resume


def resumable_checkpoint(run_dir: Path) -> tuple[Path, int, int]:
    """(last.pt, epochs done, epochs planned) of an unfinished run; InputError otherwise."""
    last = RunDir(run_dir).last
    if not last.is_file():
        raise InputError(f"run {run_dir.name} has no checkpoint {last}: nothing to resume; start a new run")
    # weights-only; Ultralytics' resume then reopens this file in our own run directory (training/weights.py)
    checkpoint = load_weights_only(last, f"resume of {run_dir.name}: {last}")
    epochs = int((checkpoint.get("train_args") or {}).get("epochs", 0))
    done = int(checkpoint.get("epoch", -1)) + 1
    # Ultralytics strips the optimizer from last.pt (and sets epoch -1) when a run ends.
    if checkpoint.get("optimizer") is None or done <= 0 or done >= epochs:
        raise InputError(f"run {run_dir.name} already finished its {epochs or ''} epochs: nothing to resume. "
                         f"Start a new run with `azaion train`, or fine-tune from its weights with "
                         f"`azaion train --from {run_dir / 'weights' / 'best.pt'}`")
    return last, done, epochs


def resume(settings: Settings, run: str | Path | None = None, device: str | None = None) -> TrainResult:
    """Continue an interrupted run (a name under models/ or a run directory; default the latest)."""
    layout = Layout(settings.paths)
    with training_lock(layout):
        record = find_run(layout, run)
        last, done, epochs = resumable_checkpoint(record.path)
        from ultralytics import YOLO

        record.epochs = record.epochs or epochs
        record.resumed_from_epoch, record.command = done, sys.argv[1:]
        arguments = {"resume": True, "verbose": False}
        if device is not None:
            arguments["device"] = device
        log(logger, logging.INFO, "resuming training", run=record.run, epochs_done=done, epochs=epochs)
        return _run(layout, record, YOLO(str(last)), arguments)
