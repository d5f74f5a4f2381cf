"""`azaion models promote` and `azaion models rollback` (docs/model-registry.md).

Promote: the run's own ONNX (exported once, parity-checked, kept as `<run>/azaion.onnx`) is
published only when the gate passes: candidate mAP50 >= production mAP50 - min_delta, both
through one evaluation on the candidate dataset's test split. The first promotion on a target
has nothing to compare with and publishes; `--force` skips the gate. A refusal leaves the
published model untouched. Every decision is appended to the promotion history.
"""

import logging
from dataclasses import dataclass
from typing import Any

from azaion_training.distribution.targets import file_sha256
from azaion_training.errors import InputError, OperationFailed
from azaion_training.layout import Layout
from azaion_training.lifecycle.evaluate import Comparison, compare
from azaion_training.lifecycle.registry import (
    PROMOTE,
    REFUSED,
    ROLLBACK,
    append_event,
    production_stack,
    read_history,
    target_key,
)
from azaion_training.locks import InstanceLock
from azaion_training.logs import get_logger, log
from azaion_training.settings import Settings, overridden
from azaion_training.training.runs import RunRecord, find_run

logger = get_logger("lifecycle.promote")


@dataclass
class Decision:
    run: str
    target: str
    action: str  # promote | refused | rollback | unchanged (already production)
    production: str | None  # production before this decision
    comparison: Comparison | None = None
    min_delta: float | None = None
    forced: bool = False
    event: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "target": self.target, "action": self.action, "production": self.production,
                "forced": self.forced, "min_delta": self.min_delta, "event": self.event,
                "comparison": self.comparison.to_dict() if self.comparison else None}


def promotion_lock(layout: Layout) -> InstanceLock:
    return InstanceLock(layout.lock_file("promotion"), "promotion or rollback")


def ensure_onnx(settings: Settings, record: RunRecord) -> RunRecord:
    """The run's own parity-checked ONNX (exported now unless it already has one), recorded."""
    from azaion_training.training.export import export

    if record.onnx_sha256 and record.onnx_path.is_file() and file_sha256(record.onnx_path) == record.onnx_sha256:
        return record
    if not record.best_weights.is_file():
        raise InputError(f"run {record.run} has no {record.best_weights}: only a finished run can be promoted")
    result = export(settings, weights=record.best_weights, formats=["onnx"], verify=True, dataset=record.dataset,
                    onnx_out=record.onnx_path)
    record.onnx, record.onnx_sha256 = str(record.onnx_path), file_sha256(record.onnx_path)
    if result.parity:
        record.parity = {"images": result.parity.images, "pytorch_map50": result.parity.pytorch_map50,
                         "onnx_map50": result.parity.onnx_map50, "passed": result.parity.passed}
    record.save()
    return record


def gate_passes(comparison: Comparison, min_delta: float) -> bool:
    if comparison.baseline is None:
        raise ValueError("the gate compares against a production model: there is none")
    return comparison.candidate.metrics["mAP50"] >= comparison.baseline.metrics["mAP50"] - min_delta


def _gate_figures(comparison: Comparison | None, min_delta: float, passed: bool | None) -> dict[str, Any] | None:
    if comparison is None:
        return None
    return {"min_delta": min_delta, "passed": passed, "dataset": comparison.dataset, "split": comparison.split,
            "images": comparison.images, "candidate": comparison.candidate.metrics,
            "production": comparison.baseline.metrics if comparison.baseline else None}


def _publish(settings: Settings, record: RunRecord, target: str) -> None:
    from azaion_training.distribution.publish import publish_model

    publish_model(settings, record.onnx_path, target=target, source_run=record.run)


def production_run(layout: Layout, key: str, name: str) -> RunRecord:
    try:
        return find_run(layout, name)
    except InputError:
        raise InputError(f"production on {key} is run {name}, which is not in {layout.models}: the gate cannot "
                         "evaluate it here; promote on the machine that holds it, or skip the gate with --force") \
            from None


def promote(settings: Settings, run: str, target: str = "azaion", min_delta: float | None = None,
            force: bool = False) -> Decision:
    layout = Layout(settings.paths)
    key = target_key(target)
    min_delta = overridden(settings.lifecycle, promotion_min_delta=min_delta).promotion_min_delta
    with promotion_lock(layout):
        record = find_run(layout, run)
        if record.status != "finished":
            raise InputError(f"run {record.run} is {record.status}: only a finished run can be promoted")
        stack = production_stack(read_history(layout), key)
        current = stack[-1] if stack else None
        if current == record.run:
            log(logger, logging.INFO, "already production", run=record.run, target=key)
            return Decision(record.run, key, "unchanged", current)
        record = ensure_onnx(settings, record)
        comparison, passed = None, None
        if current is not None and not force:
            comparison = compare(settings, record, production_run(layout, key, current))
            passed = gate_passes(comparison, min_delta)
        event = {"run": record.run, "target": key, "from": current, "forced": force,
                 "onnx_sha256": record.onnx_sha256, "gate": _gate_figures(comparison, min_delta, passed)}
        if passed is False:
            event = append_event(layout, {"action": REFUSED, **event})
            log(logger, logging.WARNING, "promotion refused by the gate", run=record.run, target=key,
                production=current, candidate_map50=comparison.candidate.metrics["mAP50"],
                production_map50=comparison.baseline.metrics["mAP50"], min_delta=min_delta)
            return Decision(record.run, key, REFUSED, current, comparison, min_delta, force, event)
        _publish(settings, record, target)
        event = append_event(layout, {"action": PROMOTE, **event})
        log(logger, logging.INFO, "promoted", run=record.run, target=key, previous=current, forced=force)
        return Decision(record.run, key, PROMOTE, current, comparison, min_delta, force, event)


def rollback(settings: Settings, target: str = "azaion") -> Decision:
    """Re-publish the version promoted before the current one on `target`."""
    layout = Layout(settings.paths)
    key = target_key(target)
    with promotion_lock(layout):
        events = read_history(layout)
        stack = production_stack(events, key)
        if len(stack) < 2:
            raise InputError(f"nothing to roll back to on {key}: "
                             + ("no version was promoted there" if not stack else f"{stack[0]} is the only one"))
        current, previous = stack[-1], stack[-2]
        record = find_run(layout, previous)
        promoted = [e for e in events if e.get("action") == PROMOTE and e.get("run") == previous
                    and e.get("target") == key][-1]
        if not record.onnx_path.is_file() or file_sha256(record.onnx_path) != promoted.get("onnx_sha256"):
            raise OperationFailed(f"{record.onnx_path} is missing or differs from the ONNX promoted on "
                                  f"{promoted['at']} (sha256 {promoted.get('onnx_sha256')}): nothing was changed")
        _publish(settings, record, target)
        event = append_event(layout, {"action": ROLLBACK, "run": previous, "target": key, "from": current,
                                      "onnx_sha256": promoted.get("onnx_sha256")})
        log(logger, logging.INFO, "rolled back", target=key, run=previous, replaced=current)
        return Decision(previous, key, ROLLBACK, current, event=event)
