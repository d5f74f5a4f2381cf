"""`azaion models list|show|promote|rollback`, `azaion evaluate` and `azaion cycle`: argument
parsing and printing only."""

from typing import Any

import typer

from azaion_training.cli_support import console, layout, print_json, run_argument, settings
from azaion_training.errors import OperationFailed
from azaion_training.layout import SPLITS

commands = typer.Typer()  # cli.py merges every stage's `commands` into `azaion`
models_app = typer.Typer(no_args_is_help=True, help="The model registry: versions, promotions, rollback.")
commands.add_typer(models_app, name="models")

TARGET_HELP = "azaion (Azaion API + CDN), or local:DIR."


def _figure(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _promoted(version: dict[str, Any]) -> str:
    done = [e for e in version["promotions"] if e.get("action") in ("promote", "rollback")]
    if not done:
        return "-"
    last = done[-1]
    where = last["target"] + (" (production)" if last["target"] in version["production_on"] else "")
    return f"{where} {last['at']}" + (" forced" if last.get("forced") else "") + \
        (" rollback" if last["action"] == "rollback" else "")


def _recovered(message: str | None) -> None:
    if message:
        console.print(f"recovered first: {message}", markup=False, highlight=False, soft_wrap=True)


def _production_score(version: dict[str, Any]) -> str:
    """Production's gate figure for a version: mAP50 on the gate's split, size and engine."""
    gates = [e.get("gate") for e in version["promotions"] if e.get("action") == "promote" and e.get("gate")]
    if not gates:
        return "-"
    gate = gates[-1]
    return f"{gate['candidate']['mAP50']:.4f} ({gate['split']}, {gate['images']} img, imgsz {gate.get('imgsz')}, ONNX)"


@models_app.command("list")
def list_command(as_json: bool = typer.Option(False, "--json", help="Print the versions as JSON.")) -> None:
    """Every training run as a version: status, dataset, parent, mAP50 (valid, PyTorch), the gate's
    ONNX score when promoted, promotions."""
    from rich.table import Table

    from azaion_training.lifecycle.registry import list_versions, recover_pending

    tree = layout()
    recovered = recover_pending(settings(), tree)
    versions = list_versions(tree, settings=settings())
    if as_json:
        print_json({"recovered": recovered, "versions": versions} if recovered else versions)
        return
    _recovered(recovered)
    table = Table(title="Model versions (mAP50, mAP50-95: valid split, PyTorch, end of training; gate: the ONNX "
                        "as judged when promoted)", title_justify="left")
    table.add_column("run", no_wrap=True, min_width=max((len(v["run"]) for v in versions), default=3))
    for name in ("status", "dataset", "parent", "mAP50", "mAP50-95", "gate", "promoted"):
        table.add_column(name, overflow="fold")
    for v in versions:
        table.add_row(v["run"], v["status"], v["dataset"] or "-", v["parent"] or v["base"] or "-",
                      _figure(v["mAP50"]), _figure(v["mAP50-95"]), _production_score(v), _promoted(v))
    console.print(table)


@models_app.command("show")
def show_command(run: str = typer.Argument(..., help="A run name under models/ or a run directory."),
                 as_json: bool = typer.Option(False, "--json", help="Print the version as JSON.")) -> None:
    """One version: lineage, hyperparameters, metrics, ONNX + sha256, promotions."""
    from azaion_training.lifecycle.registry import show_version

    version = show_version(layout(), run, settings=settings())
    if as_json:
        print_json(version)
        return
    for key, value in version.items():
        if key == "promotions":
            continue
        console.print(f"[bold]{key}[/bold]: {'-' if value in (None, '', [], {}) else value}", highlight=False,
                      soft_wrap=True)
    for event in version["promotions"]:
        gate = event.get("gate") or {}
        console.print(f"[bold]{event['action']}[/bold] {event['target']} at {event['at']} by {event['by']}"
                      + (" (forced)" if event.get("forced") else "")
                      + (f", gate passed={gate.get('passed')}" if gate else ""), highlight=False, soft_wrap=True)


def _print_comparison(comparison) -> None:
    from rich.markup import escape
    from rich.table import Table

    from azaion_training.lifecycle.evaluate import METRICS

    base = comparison.baseline
    sizes = f"imgsz {comparison.candidate.imgsz}" + (
        f" vs {base.imgsz}" if base and base.imgsz != comparison.candidate.imgsz else "")
    from pathlib import Path

    console.print(f"{comparison.candidate.run} vs {base.run if base else '(no baseline)'} on "
                  f"{Path(comparison.dataset).name} [{comparison.split}, {comparison.images} images, {sizes}, ONNX]",
                  markup=False, highlight=False, soft_wrap=True)
    table = Table("metric", "candidate", "baseline", "difference")
    for key in METRICS:
        table.add_row(key, _figure(comparison.candidate.metrics[key]),
                      _figure(base.metrics[key] if base else None), _figure(comparison.delta(key)))
    if comparison.interval:
        table.add_row("mAP50 difference, 95% interval", "", "",
                      f"{comparison.interval['low']:+.4f} .. {comparison.interval['high']:+.4f}")
    table.add_row("ONNX ms/image", _figure(comparison.candidate.ms_per_image),
                  _figure(base.ms_per_image if base else None),
                  _figure(round(comparison.candidate.ms_per_image - base.ms_per_image, 2)
                          if base and base.ms_per_image is not None and comparison.candidate.ms_per_image is not None
                          else None))
    classes = sorted(set(comparison.candidate.per_class) | set(base.per_class if base else {}))
    for name in classes:
        mine = comparison.candidate.ap50(name)
        theirs = base.ap50(name) if base else None
        instances = (comparison.candidate.per_class.get(name) or base.per_class.get(name))["instances"]
        table.add_row(escape(f"AP50 {name} ({instances})"), _figure(mine), _figure(theirs),
                      _figure(round(mine - theirs, 4) if mine is not None and theirs is not None else None))
    console.print(table)


@commands.command("evaluate")
def evaluate_command(
    candidate: str | None = typer.Argument(None, metavar="RUN", show_default=False,
                                           help="The candidate run to evaluate (name or directory)."),
    baseline: str | None = typer.Option(None, "--baseline", help="A run, or 'production' (on --target)."),
    target: str = typer.Option("azaion", "--target", help="With --baseline production: " + TARGET_HELP),
    dataset: str | None = typer.Option(None, "--dataset", help="Dataset name or path (default: the candidate's)."),
    split: str = typer.Option("test", "--split", help="train, valid or test."),
    imgsz: int | None = typer.Option(None, "--imgsz", min=32,
                                     help="Export and judge at this size (default: the size each run trained at)."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
    candidate_option: str | None = typer.Option(None, "--candidate", hidden=True,
                                                help="Deprecated: the candidate run, positional now."),
) -> None:
    """The candidate's ONNX and the baseline's through the same inference pipeline on the same split."""
    from azaion_training.errors import InputError
    from azaion_training.lifecycle.evaluate import compare
    from azaion_training.lifecycle.promote import production_onnx
    from azaion_training.lifecycle.registry import production_stack, read_history, target_key
    from azaion_training.training.runs import find_run

    candidate = run_argument(candidate, candidate_option, "azaion evaluate RUN", "--candidate")
    if split not in SPLITS:
        raise InputError(f"--split {split!r}: use {', '.join(SPLITS[:-1])} or {SPLITS[-1]}")
    tree = layout()
    base = base_onnx = None
    if baseline == "production":
        key = target_key(target, settings())
        events = read_history(tree, settings=settings())
        stack = production_stack(events, key, settings())
        if not stack:
            raise InputError(f"nothing is promoted on {key}: no production baseline")
        base, base_onnx = production_onnx(tree, key, stack[-1], events)
    elif baseline is not None:
        base = find_run(tree, baseline)
    comparison, _, _ = compare(settings(), find_run(tree, candidate), base, dataset, split, imgsz, base_onnx)
    if as_json:
        print_json(comparison.to_dict())
    else:
        _print_comparison(comparison)


@models_app.command("promote")
def promote_command(
    run: str = typer.Argument(..., help="The run to promote (name or directory)."),
    target: str = typer.Option("azaion", "--target", help=TARGET_HELP),
    min_delta: float | None = typer.Option(None, "--min-delta", min=-1.0, max=1.0,
                                           help="Publish if candidate mAP50 >= production - D (default "
                                                "PROMOTION_MIN_DELTA; negative: require an improvement)."),
    imgsz: int | None = typer.Option(None, "--imgsz", min=32,
                                     help="Export and judge at this size (default: the size the run trained at)."),
    force: bool = typer.Option(False, "--force", help="Publish even if the gate refuses (recorded as forced)."),
    as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON."),
) -> None:
    """Export the run's ONNX (once per size), judge it against production's ONNX, publish only if the gate passes."""
    promote_and_report(run, target, min_delta, force, as_json, imgsz)


def promote_and_report(run: str, target: str, min_delta: float | None = None, force: bool = False,
                       as_json: bool = False, imgsz: int | None = None) -> None:
    """Promote through the gate and print the decision; a refusal exits 1 (also `azaion train --publish`)."""
    from azaion_training.lifecycle.promote import promote

    decision = promote(settings(), run, target, min_delta, force, imgsz)
    if as_json:
        print_json(decision.to_dict())
    else:
        _recovered(decision.recovered)
        if decision.comparison is not None:
            _print_comparison(decision.comparison)
    if decision.action == "refused":
        raise OperationFailed(f"promotion of {run} refused: " + "; ".join(decision.reasons or []) +
                              f"; the published model on {decision.target} is unchanged (override with --force)")
    if not as_json:
        where = decision.comparison.where(decision.comparison.candidate) if decision.comparison else ""
        forced = ""
        if decision.forced:
            forced = f" (forced past: {'; '.join(decision.reasons)})" if decision.reasons else " (forced)"
        message = {"unchanged": f"{run} already is production on {decision.target}: nothing published",
                   "promote": f"promoted {run} to {decision.target}{forced}"
                              + (f", replacing {decision.production}" if decision.production else " (first)")
                              + (f"; judged on {where}" if where else "")}
        console.print(message[decision.action], markup=False, highlight=False, soft_wrap=True)


@models_app.command("rollback")
def rollback_command(target: str = typer.Option("azaion", "--target", help=TARGET_HELP),
                     as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON.")) -> None:
    """Re-publish the version promoted before the current one, and record it."""
    from azaion_training.lifecycle.promote import rollback

    decision = rollback(settings(), target)
    if as_json:
        print_json(decision.to_dict())
    else:
        console.print(f"rolled back {decision.target}: {decision.run} is production again "
                      f"(replacing {decision.production})", highlight=False, soft_wrap=True)


@commands.command("cycle")
def cycle_command(
    once: bool = typer.Option(False, "--once", help="One cycle, then exit (the default)."),
    watch: bool = typer.Option(False, "--watch", help="A cycle every --interval seconds until stopped."),
    interval: float | None = typer.Option(None, "--interval", min=1, help="Seconds; default CYCLE_INTERVAL_S."),
    min_new: int | None = typer.Option(None, "--min-new", min=1, help="Default CYCLE_MIN_NEW."),
    epochs: int | None = typer.Option(None, "--epochs", min=1,
                                      help="Fine-tune epochs (default CYCLE_EPOCHS: a tenth of TRAINING_EPOCHS)."),
    imgsz: int | None = typer.Option(None, "--imgsz", min=32,
                                     help="Train and judge at this size (default: production's training size)."),
    target: str = typer.Option("azaion", "--target", help=TARGET_HELP),
) -> None:
    """Continuous training: form, fine-tune from production, judge the ONNX, promote through the gate."""
    from azaion_training.errors import InputError
    from azaion_training.lifecycle.cycle import run_cycle
    from azaion_training.lifecycle.cycle import watch as watch_cycles

    if once and watch:
        raise InputError("--once and --watch exclude each other")
    if watch:
        watch_cycles(settings(), target, min_new, interval or settings().lifecycle.cycle_interval_s, epochs, imgsz)
        return
    outcome = run_cycle(settings(), target, min_new, epochs, imgsz)
    _recovered(outcome.get("recovered"))
    if outcome["action"] == "skipped":
        console.print(f"cycle skipped: {outcome['new']} new validated annotations (not in the dataset "
                      f"{outcome.get('reference') or 'any finished run'} trained on), {outcome['min_new']} needed",
                      markup=False, highlight=False, soft_wrap=True)
        return
    # a refusal is a normal outcome of the loop (exit 0): the history records it
    console.print(f"cycle done: dataset {outcome['dataset']}, run {outcome['run']} ({outcome['epochs']} epochs at "
                  f"imgsz {outcome['imgsz']}), decision {outcome['action']}"
                  + (f" (production on {outcome['target']} unchanged)" if outcome["action"] == "refused" else ""),
                  markup=False, highlight=False, soft_wrap=True)
    gate = outcome.get("gate") or {}
    if gate:
        production = gate.get("production") or {}
        interval = gate.get("interval") or {}
        console.print(f"gate [{gate['split']}, {gate['images']} images, imgsz {gate.get('imgsz')}, ONNX]: candidate "
                      f"mAP50 {gate['candidate']['mAP50']:.4f}"
                      + (f", production {production['mAP50']:.4f}, delta {gate['delta']:+.4f}" if production else
                         ", no production yet")
                      + (f", 95% interval {interval['low']:+.4f} .. {interval['high']:+.4f}" if interval else ""),
                      markup=False, highlight=False, soft_wrap=True)
        for drop in gate.get("class_drops") or []:
            console.print(f"  blocked by class {drop['class']}: AP50 {drop['production_ap50']:.4f} -> "
                          f"{drop['candidate_ap50']:.4f} ({drop['instances']} instances)",
                          markup=False, highlight=False, soft_wrap=True)
        for reason in outcome.get("reasons") or []:
            console.print(f"  refused: {reason}", markup=False, highlight=False, soft_wrap=True)
