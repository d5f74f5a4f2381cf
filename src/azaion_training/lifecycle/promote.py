"""`azaion models promote` and `azaion models rollback` (docs/model-registry.md).

Promote judges the artefact: the run's ONNX at the size it trained at (exported once per run,
size and opset, parity-checked against PyTorch) is scored through the project's own inference
pipeline, and so is the ONNX production published, on the same test images. It is published
only when the gate passes:

- candidate mAP50 >= PROMOTION_MIN_MAP50 (also for the first promotion on a target);
- candidate mAP50 >= production mAP50 - PROMOTION_MIN_DELTA;
- no guarded class (>= PROMOTION_CLASS_MIN_INSTANCES test instances) loses more than
  PROMOTION_MAX_CLASS_DROP AP50.

A paired bootstrap interval of the mAP50 difference is reported with the figures (the decision
uses the point figures, so it does not depend on the bootstrap's seed). `--force` skips the gate
and is recorded. Everything a publish needs is checked first (fail fast, exit 2). The publish
itself is one recoverable step (registry.publish_recorded); afterwards the model is fetched back
through the target as a client would and re-run on sample images: a mismatch rolls back and
alerts.
"""

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azaion_training.errors import ConfigError, InputError, OperationFailed
from azaion_training.fsutil import file_sha256
from azaion_training.inference.scoring import evaluation_dir, sample_map50
from azaion_training.layout import Layout
from azaion_training.lifecycle.evaluate import Comparison, class_drops, compare
from azaion_training.lifecycle.registry import (
    FOLDER,
    PROMOTE,
    REFUSED,
    ROLLBACK,
    append_event,
    production_stack,
    publish_recorded,
    read_history,
    recover_pending,
    same_target,
    target_key,
)
from azaion_training.locks import InstanceLock
from azaion_training.logs import get_logger, log
from azaion_training.settings import Settings, overridden
from azaion_training.training.runs import RUN_ONNX, RunRecord, find_run

logger = get_logger("lifecycle.promote")

SAMPLE_TOLERANCE = 0.01  # post-publish: fetched model's sample mAP50 vs the gate's on the same images


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
    reasons: list[str] | None = None  # why the gate refused
    recovered: str | None = None  # a half-done publish this command completed or rolled back first

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "target": self.target, "action": self.action, "production": self.production,
                "forced": self.forced, "min_delta": self.min_delta, "event": self.event, "reasons": self.reasons,
                "recovered": self.recovered,
                "comparison": self.comparison.to_dict() if self.comparison else None}


def promotion_lock(layout: Layout) -> InstanceLock:
    return InstanceLock(layout.lock_file("promotion"), "promotion or rollback")


# ---------------------------------------------------------------------------------------- fail fast


def publish_problems(settings: Settings, target: str) -> list[str]:
    """What would make a publish to `target` fail, found in well under 2 s without exporting or
    evaluating anything: the model key, the target's folder or the API login (empty: ready)."""
    problems = []
    key = settings.security.model_encryption_key
    if key is None or not key.get_secret_value():
        problems.append("MODEL_ENCRYPTION_KEY is not set: add it to .env and render config.yaml, or export it")
    if target.startswith("local:") and len(target) > len("local:"):
        directory = Path(target.removeprefix("local:")).expanduser()
        existing = directory
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if directory.exists() and not directory.is_dir():
            problems.append(f"target {target}: {directory} is not a directory")
        elif not os.access(existing, os.W_OK | os.X_OK):
            problems.append(f"target {target}: {existing} is not writable by this user")
    elif target == "azaion":
        problems.extend(_azaion_problems(settings))
    else:
        problems.append(f"unknown target {target!r}: use 'azaion' (Azaion API + CDN) or 'local:DIR'")
    return problems


def _azaion_problems(settings: Settings) -> list[str]:
    from azaion_training.distribution.api_client import ApiClient

    api = overridden(settings.api, timeout_s=1.5, retries=0)
    if settings.cdn.config_file and not settings.cdn.config_file.is_file():
        return [f"CDN_CONFIG_FILE {settings.cdn.config_file} does not exist"]
    try:
        with ApiClient(api, hardware="readiness-check", backoff_s=0) as client:
            client.login()
    except ConfigError as exc:
        return [str(exc)]
    except OperationFailed as exc:
        return [f"the Azaion API at {settings.api.url} cannot be reached ({exc}): check AZAION_API_URL and the "
                "network"]
    return []


def require_publishable(settings: Settings, target: str) -> None:
    problems = publish_problems(settings, target)
    if problems:
        raise ConfigError(f"cannot publish to {target}: " + "; ".join(problems) + " (nothing was exported or "
                          "evaluated)")


# ---------------------------------------------------------------------------------------- the gate


@dataclass(frozen=True)
class GateRules:
    min_delta: float
    min_map50: float
    class_min_instances: int
    max_class_drop: float

    @classmethod
    def from_settings(cls, settings: Settings, min_delta: float | None = None) -> "GateRules":
        lifecycle = overridden(settings.lifecycle, promotion_min_delta=min_delta)
        return cls(lifecycle.promotion_min_delta, lifecycle.promotion_min_map50,
                   lifecycle.promotion_class_min_instances, lifecycle.promotion_max_class_drop)


def gate_reasons(comparison: Comparison, rules: GateRules) -> tuple[list[str], list[dict[str, Any]]]:
    """Why the gate refuses (empty: it passes) and the guarded classes that fell too far."""
    reasons = []
    candidate = comparison.candidate.metrics["mAP50"]
    where = comparison.where()
    if candidate < rules.min_map50:
        reasons.append(f"candidate mAP50 {candidate:.4f} [{where}] is below the floor PROMOTION_MIN_MAP50 "
                       f"{rules.min_map50}")
    drops: list[dict[str, Any]] = []
    if comparison.baseline is not None:
        production = comparison.baseline.metrics["mAP50"]
        if candidate < production - rules.min_delta:
            reasons.append(f"candidate mAP50 {candidate:.4f} < production {comparison.baseline.run} mAP50 "
                           f"{production:.4f} - {rules.min_delta} [{where}]")
        drops = class_drops(comparison, rules.class_min_instances, rules.max_class_drop)
        reasons.extend(f"class {d['class']} AP50 fell from {d['production_ap50']:.4f} to {d['candidate_ap50']:.4f} "
                       f"(-{d['drop']:.4f} > PROMOTION_MAX_CLASS_DROP {rules.max_class_drop}, "
                       f"{d['instances']} test instances)" for d in drops)
    return reasons, drops


def _gate_figures(comparison: Comparison, rules: GateRules, passed: bool, reasons: list[str],
                  drops: list[dict[str, Any]]) -> dict[str, Any]:
    base = comparison.baseline
    return {"passed": passed, "reasons": reasons, "min_delta": rules.min_delta, "min_map50": rules.min_map50,
            "class_min_instances": rules.class_min_instances, "max_class_drop": rules.max_class_drop,
            "dataset": comparison.dataset, "split": comparison.split, "images": comparison.images,
            "imgsz": comparison.imgsz, "engine": comparison.candidate.engine,
            "candidate": comparison.candidate.metrics, "candidate_imgsz": comparison.candidate.imgsz,
            "candidate_per_class": comparison.candidate.per_class,
            "candidate_sample": comparison.candidate.sample,
            "production": base.metrics if base else None, "production_imgsz": base.imgsz if base else None,
            "production_per_class": base.per_class if base else None,
            "delta": comparison.delta("mAP50"), "interval": comparison.interval, "class_drops": drops}


# ---------------------------------------------------------------------------------------- promote


def production_onnx(layout: Layout, key: str, name: str, events: list[dict[str, Any]]) -> tuple[RunRecord, Path]:
    """Production's run and the exact ONNX file it published (by the sha256 in its history)."""
    try:
        record = find_run(layout, name)
    except InputError:
        raise InputError(f"production on {key} is run {name}, which is not in {layout.models}: the gate cannot "
                         "evaluate it here; promote on the machine that holds it, or skip the gate with --force") \
            from None
    published = [e for e in events if e.get("run") == name and same_target(e.get("target"), key)
                 and e.get("action") in (PROMOTE, ROLLBACK) and e.get("onnx_sha256")]
    sha256 = published[-1]["onnx_sha256"] if published else record.onnx_sha256
    path = record.onnx_with_sha256(sha256) if sha256 else None
    if path is None:
        raise OperationFailed(f"the ONNX that production {name} published on {key} (sha256 {sha256}) is no longer "
                              f"in {record.path}: the gate cannot judge against it; restore it, or --force")
    return record, path


def _post_publish_check(settings: Settings, target: str, onnx: Path, sha256: str, comparison: Comparison | None,
                        images: list[Path]) -> str | None:
    """Fetch the model back through the target as a client would, decrypt it and re-run it on the
    gate's sample images: None when it is what the gate judged, else what differs."""
    from azaion_training.distribution.fetch import fetch_model_bytes

    try:
        data, _ = fetch_model_bytes(settings, RUN_ONNX, target=target, folder=FOLDER)
    except (InputError, OperationFailed) as exc:
        return f"fetching the published model back failed: {exc}"
    fetched = hashlib.sha256(data).hexdigest()
    if fetched != sha256:
        return f"the fetched model's sha256 {fetched} is not the judged ONNX's {sha256}"
    if comparison is not None and comparison.candidate.sample and images:
        expected = comparison.candidate.sample["mAP50"]
        measured = sample_map50(data, images, settings)
        if abs(measured - expected) > SAMPLE_TOLERANCE:
            return (f"the fetched model scores mAP50 {measured:.4f} on {comparison.candidate.sample['images']} "
                    f"sample images where the gate measured {expected:.4f}")
    return None


def promote(settings: Settings, run: str, target: str = "azaion", min_delta: float | None = None,
            force: bool = False, imgsz: int | None = None, operator: str | None = None) -> Decision:
    layout = Layout(settings.paths)
    key = target_key(target, settings)
    rules = GateRules.from_settings(settings, min_delta)
    with promotion_lock(layout):
        recovered = recover_pending(settings, layout)
        record = find_run(layout, run)
        if record.status != "finished":
            raise InputError(f"run {record.run} is {record.status}: only a finished run can be promoted")
        events = read_history(layout, settings=settings)
        stack = production_stack(events, key, settings)
        current = stack[-1] if stack else None
        if current == record.run:
            log(logger, logging.INFO, "already production", run=record.run, target=key)
            return Decision(record.run, key, "unchanged", current, recovered=recovered)
        require_publishable(settings, target)
        baseline, baseline_onnx = production_onnx(layout, key, current, events) if current else (None, None)
        comparison, _, _ = compare(settings, record, baseline, split="test", imgsz=imgsz, baseline_onnx=baseline_onnx)
        record = find_run(layout, record.run)  # compare() exported and recorded the ONNX
        reasons, drops = gate_reasons(comparison, rules)
        passed = not reasons
        event = {"run": record.run, "target": key, "from": current, "forced": force,
                 "onnx_sha256": comparison.candidate.onnx_sha256, "imgsz": comparison.candidate.imgsz,
                 "gate": _gate_figures(comparison, rules, passed, reasons, drops)}
        if operator:
            event["by"] = operator
        if not passed and not force:
            event = append_event(layout, {"action": REFUSED, **event})
            log(logger, logging.WARNING, "promotion refused by the gate", run=record.run, target=key,
                production=current, reasons=reasons)
            return Decision(record.run, key, REFUSED, current, comparison, rules.min_delta, force, event, reasons,
                            recovered)
        onnx = Path(comparison.candidate.onnx)
        event = publish_recorded(settings, layout, onnx, target, {"action": PROMOTE, **event}, name=RUN_ONNX,
                                 folder=FOLDER)
        log(logger, logging.INFO, "promoted", run=record.run, target=key, previous=current, forced=force)
        images = evaluation_dir(layout, record, None, "test").images("test")
        problem = _post_publish_check(settings, target, onnx, comparison.candidate.onnx_sha256, comparison, images)
        if problem:
            _undo(settings, layout, target, key, record.run, current, baseline_onnx, problem, operator)
            raise OperationFailed(f"post-publish check of {record.run} on {key} failed: {problem}; "
                                  + (f"rolled back to {current}" if current else
                                     "there is no earlier model to roll back to: the target needs attention"))
        return Decision(record.run, key, PROMOTE, current, comparison, rules.min_delta, force, event,
                        reasons or None, recovered)


def _undo(settings: Settings, layout: Layout, target: str, key: str, run: str, previous: str | None,
          previous_onnx: Path | None, problem: str, operator: str | None) -> None:
    """The post-publish check failed: publish the previous production again (a new version) and alert."""
    from azaion_training.ops.alerts import alert_body, post_alert

    if previous is not None and previous_onnx is not None:
        event = {"action": ROLLBACK, "run": previous, "target": key, "from": run,
                 "onnx_sha256": file_sha256(previous_onnx), "reason": f"post-publish check failed: {problem}"}
        if operator:
            event["by"] = operator
        publish_recorded(settings, layout, previous_onnx, target, event, name=RUN_ONNX, folder=FOLDER)
    log(logger, logging.ERROR, "post-publish check failed", run=run, target=key, problem=problem,
        rolled_back_to=previous)
    post_alert(settings.alerts, alert_body("post-publish-check-failed",
                                           f"post-publish check of {run} on {key} failed: {problem}; "
                                           + (f"rolled back to {previous}" if previous else
                                              "nothing to roll back to")))


def rollback(settings: Settings, target: str = "azaion", operator: str | None = None) -> Decision:
    """Re-publish the version promoted before the current one on `target` (as a new version)."""
    layout = Layout(settings.paths)
    key = target_key(target, settings)
    with promotion_lock(layout):
        recovered = recover_pending(settings, layout)
        events = read_history(layout, settings=settings)
        stack = production_stack(events, key, settings)
        if len(stack) < 2:
            raise InputError(f"nothing to roll back to on {key}: "
                             + ("no version was promoted there" if not stack else f"{stack[0]} is the only one"))
        require_publishable(settings, target)
        current, previous = stack[-1], stack[-2]
        record, onnx = production_onnx(layout, key, previous, events)
        event = {"action": ROLLBACK, "run": previous, "target": key, "from": current,
                 "onnx_sha256": file_sha256(onnx)}
        if operator:
            event["by"] = operator
        event = publish_recorded(settings, layout, onnx, target, event, name=RUN_ONNX, folder=FOLDER)
        log(logger, logging.INFO, "rolled back", target=key, run=previous, replaced=current)
        return Decision(previous, key, ROLLBACK, current, event=event, recovered=recovered)


def production_model_file(settings: Settings, target: str = "azaion") -> Path:
    """The ONNX file production on `target` published, from this root's registry (InputError when
    nothing is promoted there)."""
    layout = Layout(settings.paths)
    key = target_key(target, settings)
    events = read_history(layout, settings=settings)
    stack = production_stack(events, key, settings)
    if not stack:
        raise InputError(f"no --model given and nothing is promoted on {key}: pass --model PATH (or a published "
                         "name with --from TARGET), or promote a run (`azaion models promote RUN --target ...`)")
    return production_onnx(layout, key, stack[-1], events)[1]
