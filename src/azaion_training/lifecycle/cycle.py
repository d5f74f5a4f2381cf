"""`azaion cycle`: continuous training (docs/model-registry.md).

When at least `min_new` validated annotations in data/ are new — not in the dataset the
reference model trained on (production on the target, else the latest finished run) — form a
dataset (sticky splits), fine-tune from the production model on the target (TRAINING_MODEL when
nothing is promoted yet) for CYCLE_EPOCHS (default a tenth of TRAINING_EPOCHS: a fine-tune
starts from a converged model and needs far fewer epochs than a training from scratch), at the
production run's image size, then judge its ONNX and promote through the gate
(lifecycle/promote.py), and record the decision. One cycle at a time per root (a lock); the
step in progress is kept in `models/cycle/state.json`, so a crash or SIGTERM resumes it on the
next start (training through `--resume`). Finished cycles are appended to
`models/cycle/history.jsonl`. Every step logs one JSON line.
"""

import json
import logging
import os
import signal
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from azaion_training.errors import InputError
from azaion_training.fsutil import append_jsonl, atomic_write_text, read_jsonl
from azaion_training.layout import Layout
from azaion_training.lifecycle.registry import production, target_key
from azaion_training.locks import InstanceLock
from azaion_training.logs import get_logger, log
from azaion_training.settings import Settings, overridden

logger = get_logger("lifecycle.cycle")

FORM, TRAIN, PROMOTE = "form", "train", "promote"


@dataclass
class CycleState:
    cycle: str  # when it started (UTC), its id
    target: str
    data_count: int  # validated annotations in data/ when it started
    new: int  # of which new since the last cycle
    step: str = FORM
    dataset: str | None = None
    run: str | None = None
    base: str | None = None  # the weights the run starts from (production's best.pt); None: TRAINING_MODEL
    parent: str | None = None  # the production run it fine-tunes
    epochs: int | None = None  # the fine-tune budget
    imgsz: int | None = None  # the size it trains (and is judged) at


def cycle_dir(layout: Layout) -> Path:
    return layout.cycle_dir


def _state_path(layout: Layout) -> Path:
    return layout.cycle_state


def load_state(layout: Layout) -> CycleState | None:
    path = _state_path(layout)
    if not path.is_file():
        return None
    return CycleState(**json.loads(path.read_text(encoding="utf-8")))


def _save(layout: Layout, state: CycleState) -> None:
    atomic_write_text(_state_path(layout), json.dumps(asdict(state), indent=2) + "\n")


def cycle_history(layout: Layout) -> list[dict[str, Any]]:
    return read_jsonl(layout.cycle_history, "the cycle history")


def _append_history(layout: Layout, entry: dict[str, Any]) -> None:
    append_jsonl(layout.cycle_history, entry)


def validated_names(layout: Layout) -> set[str]:
    """Validated annotations: the stems of the label files in data/ (one per annotation)."""
    if not layout.data.labels.is_dir():
        return set()
    with os.scandir(layout.data.labels) as entries:
        return {e.name[:-4] for e in entries if e.name.endswith(".txt") and not e.name.startswith(".")}


def validated_count(layout: Layout) -> int:
    return len(validated_names(layout))


def trained_names(dataset: str | None) -> set[str]:
    """The annotations a dataset holds (its manifest's files), empty when it is gone."""
    from azaion_training.dataset.manifest import read_manifest
    from azaion_training.layout import DatasetDir

    if not dataset:
        return set()
    manifest = read_manifest(DatasetDir(Path(dataset)).manifest)
    return manifest.annotations() if manifest else set()


def reference_run(layout: Layout, target: str, settings: Settings | None = None):
    """The model new data is counted against: production on the target, else the latest finished run."""
    from azaion_training.training.runs import find_run, latest_run

    current = production(layout, target, settings=settings)
    if current is not None:
        try:
            return find_run(layout, current)
        except InputError:  # production trained on another machine: fall back to the local runs
            log(logger, logging.INFO, "production's run is not on this machine: new data is counted against the "
                "latest finished run", production=current)
    return latest_run(layout, status="finished")


def new_annotations(layout: Layout, target: str, settings: Settings | None = None) -> tuple[int, int, str | None]:
    """(new, validated, reference run): validated annotations not in the reference model's dataset."""
    names = validated_names(layout)
    reference = reference_run(layout, target, settings)
    trained = trained_names(reference.dataset if reference else None)
    return len(names - trained), len(names), reference.run if reference else None


def cycle_epochs(settings: Settings, epochs: int | None) -> int:
    if epochs:
        return epochs
    return settings.lifecycle.cycle_epochs or max(1, settings.training.epochs // 10)


def _step(state: CycleState, step: str, **context: Any) -> None:
    state.step = step
    log(logger, logging.INFO, "cycle step", cycle=state.cycle, step=step, **context)


def cycle_lock(layout: Layout) -> InstanceLock:
    return InstanceLock(layout.lock_file("cycle"), "cycle")


def run_cycle(settings: Settings, target: str = "azaion", min_new: int | None = None, epochs: int | None = None,
              imgsz: int | None = None) -> dict[str, Any]:
    """One cycle (or the rest of an interrupted one); returns what it did."""
    from azaion_training.lifecycle.promote import require_publishable
    from azaion_training.lifecycle.registry import recover_pending

    layout = Layout(settings.paths)
    layout.init()
    min_new = overridden(settings.lifecycle, cycle_min_new=min_new).cycle_min_new
    with cycle_lock(layout):
        recovered = recover_pending(settings, layout)
        state = load_state(layout)
        if state is None:
            new, count, reference = new_annotations(layout, target_key(target, settings), settings)
            if new < min_new:
                log(logger, logging.INFO, "cycle skipped: not enough new annotations", new=new, min_new=min_new,
                    validated=count, reference=reference)
                return {"action": "skipped", "new": new, "min_new": min_new, "validated": count,
                        "reference": reference, "recovered": recovered}
            key = target_key(target, settings)
            fine_tune = production(layout, key, settings=settings) is not None
            # a fine-tune of production gets the cycle's budget; the first model trains in full
            state = CycleState(datetime.now(UTC).isoformat(timespec="seconds"), key, count, new,
                               epochs=cycle_epochs(settings, epochs) if fine_tune else
                               (epochs or settings.training.epochs))
            if not fine_tune:
                from azaion_training.training.train import model_source
                from azaion_training.training.weights import resolve_training_model

                model_source(resolve_training_model(settings.training.model, layout))  # missing: fails before any work
            require_publishable(settings, target)  # before hours of training, not after
            cycle_dir(layout).mkdir(parents=True, exist_ok=True)
            _step(state, FORM, new=new, validated=count, target=state.target)
            _save(layout, state)
        else:
            require_publishable(settings, target)
            log(logger, logging.INFO, "cycle resumed", cycle=state.cycle, step=state.step, run=state.run)
        if state.step == FORM:
            _form(settings, layout, state, imgsz)
        if state.step == TRAIN:
            _train(settings, layout, state)
        decision = _promote(settings, state, target)
        entry = {**asdict(state), "ended": datetime.now(UTC).isoformat(timespec="seconds"), **decision,
                 "recovered": recovered}
        entry.pop("step")
        _append_history(layout, entry)
        _state_path(layout).unlink()
        log(logger, logging.INFO, "cycle done", cycle=state.cycle, run=state.run, decision=decision["action"])
        return entry


def _form(settings: Settings, layout: Layout, state: CycleState, imgsz: int | None) -> None:
    from azaion_training.dataset.form import form_dataset
    from azaion_training.training.runs import find_run

    current = production(layout, state.target, settings=settings)
    parent = find_run(layout, current) if current is not None else None
    if parent is not None:
        state.parent, state.base = current, str(parent.best_weights)
    # the production run's size: a candidate is judged at the size it trained at, like production
    state.imgsz = imgsz or (parent.trained_imgsz if parent else None) or settings.training.imgsz
    formed = form_dataset(settings, progress=False)
    state.dataset = str(formed.path)
    _step(state, TRAIN, dataset=formed.path.name, sources=formed.sources, parent=state.parent)
    _save(layout, state)


def _train(settings: Settings, layout: Layout, state: CycleState) -> None:
    from azaion_training.training.runs import RunRecord, is_run_dir
    from azaion_training.training.train import TrainRequest, next_run_name, resume, train

    if state.run is not None and RunRecord.load(layout.models / state.run).last_weights.is_file():
        if RunRecord.load(layout.models / state.run).status != "finished":
            resume(settings, state.run)
    else:
        if state.run is None or is_run_dir(layout.models / state.run):  # killed before its first checkpoint
            state.run = next_run_name(layout.models)
            _save(layout, state)
        request = TrainRequest(dataset=state.dataset, from_weights=Path(state.base) if state.base else None,
                               run_name=state.run, epochs=state.epochs, imgsz=state.imgsz)
        train(settings, request)
    _step(state, PROMOTE, run=state.run)
    _save(layout, state)


def _promote(settings: Settings, state: CycleState, target: str) -> dict[str, Any]:
    from azaion_training.lifecycle.promote import promote

    decision = promote(settings, state.run, target=target)
    comparison = decision.comparison
    return {"action": decision.action, "production_before": decision.production,
            "gate": decision.event.get("gate") if decision.event else None, "reasons": decision.reasons,
            "candidate_mAP50": comparison.candidate.metrics["mAP50"] if comparison else None}


def watch(settings: Settings, target: str, min_new: int | None, interval_s: float, epochs: int | None = None,
          imgsz: int | None = None) -> None:
    """A cycle every `interval_s` seconds. SIGTERM while sleeping ends the watch (exit 0); during a
    cycle it acts as on a single cycle (training checkpoints and exits 143, other steps stop at
    once), and the next start resumes that cycle."""
    stop = threading.Event()
    sleeping = False

    def on_sigterm(signum: int, frame: object) -> None:
        stop.set()
        if not sleeping:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        while True:
            run_cycle(settings, target, min_new, epochs, imgsz)
            sleeping = True
            log(logger, logging.INFO, "cycle sleeping", seconds=interval_s)
            if stop.wait(interval_s):
                log(logger, logging.INFO, "cycle watch stopped")
                return
            sleeping = False
    finally:
        signal.signal(signal.SIGTERM, previous)
