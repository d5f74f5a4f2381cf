"""`azaion predict-dataset` and `azaion analyse` (docs/error-analysis.md): argument parsing and
printing only."""

from typing import Any

import typer

from azaion_training.cli_support import console, print_json, settings
from azaion_training.errors import InputError

commands = typer.Typer()  # cli.py merges every stage's `commands` into `azaion`

MODEL_HELP = ("A run (name or directory: its ONNX at the size it trained at), production[:TARGET] (the ONNX "
              "production published there) or an .onnx file. Default: production on azaion, else the latest "
              "finished run.")
DATASET_HELP = "Dataset name or path (default: the one the model's run trained on, else the latest)."
SPLIT_HELP = "train, valid or test."
LISTED = 3  # boxes named per error kind in the worst-images table


def _figure(value: Any, signed: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:+.4f}" if signed else f"{value:.4f}"
    return f"{value:+d}" if signed and isinstance(value, int) else str(value)


def _plain(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@commands.command("predict-dataset")
def predict_dataset_command(
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    dataset: str | None = typer.Option(None, "--dataset", help=DATASET_HELP),
    split: str = typer.Option("test", "--split", help=SPLIT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print what was done as JSON."),
) -> None:
    """Run the model's ONNX over a dataset split (as the gate does) and cache every detection:
    only images not cached yet are predicted, an interrupted run continues where it stopped."""
    from azaion_training.analysis.predictions import predict_dataset, resolve_model, resolve_split

    ref = resolve_model(settings(), model)
    formed = resolve_split(settings(), dataset, split, ref)
    run = predict_dataset(settings(), ref, formed, split, progress=not as_json)
    if as_json:
        print_json({"model": {"label": ref.label, "run": ref.run, "onnx": str(ref.onnx), "onnx_sha256": ref.sha256,
                              "imgsz": ref.imgsz},
                    "dataset": run.dataset, "split": run.split, "images": run.images, "imgsz": ref.imgsz,
                    "engine": run.engine, "where": run.where(), "predicted": run.predicted, "reused": run.reused,
                    "seconds": run.seconds, "images_per_s": run.images_per_s, "cache": str(run.store)})
        return
    speed = f", {run.images_per_s} images/s" if run.images_per_s else ""
    _plain(f"{ref.label} (ONNX {ref.short}) on {run.dataset} [{run.where()}]: predicted {run.predicted}, "
           f"reused {run.reused} from the cache{speed}")
    _plain(f"cache: {run.store}")


@commands.command("analyse")
def analyse_command(
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    dataset: str | None = typer.Option(None, "--dataset", help=DATASET_HELP),
    split: str = typer.Option("test", "--split", help=SPLIT_HELP),
    worst: int = typer.Option(10, "--worst", min=0, help="How many of the worst images to list."),
    conf: float | None = typer.Option(None, "--conf", min=0.0, max=1.0,
                                      help="Judge boxes at this confidence (default INFERENCE_CONF, the field's)."),
    compare: tuple[str, str] | None = typer.Option(None, "--compare", metavar="RUN_A RUN_B",
                                                   help="Compare two models on one split (differences are B - A)."),
    as_json: bool = typer.Option(False, "--json", help="Print the analysis as JSON."),
) -> None:
    """Where the model fails on a dataset split: per-class figures, the confusion matrix and the
    worst images with their error kinds (predicting whatever is not cached yet)."""
    if compare:
        if model is not None:
            raise InputError("--compare names both models: leave out --model")
        from azaion_training.analysis.compare import compare_models

        comparison = compare_models(settings(), compare[0], compare[1], dataset, split, conf, worst,
                                    progress=not as_json)
        if as_json:
            print_json(comparison.to_dict())
        else:
            _print_comparison(comparison)
        return
    from azaion_training.analysis.outcomes import analyse

    analysis, run = analyse(settings(), model, dataset, split, conf, progress=not as_json)
    if as_json:
        print_json({**analysis.to_dict(worst), "predicted": run.predicted, "reused": run.reused})
        return
    _print_analysis(analysis, worst)


def _print_analysis(analysis, worst: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    where = f"[{analysis.where()}]"
    _plain(f"{analysis.model.label} (ONNX {analysis.model.short}) on {analysis.dataset} {where}: mAP50 "
           f"{_figure(analysis.map50)}, mAP50-95 {_figure(analysis.map50_95)}, precision "
           f"{_figure(analysis.precision)}, recall {_figure(analysis.recall)} (boxes judged at confidence >= "
           f"{analysis.conf:g}, IoU {analysis.iou:g})")
    table = Table("class", "labels", "predicted", "TP", "wrong class", "missed", "duplicate", "poor loc.",
                  "background", "precision", "recall", "AP50", "AP50-95",
                  title=escape(f"Per class {where}"), title_justify="left")
    for c in analysis.classes:
        n = c.counts
        table.add_row(escape(c.name), str(c.instances), str(c.predictions), str(n.true_positive), str(n.wrong_class),
                      str(n.missed), str(n.duplicate), str(n.localisation), str(n.background), _figure(c.precision),
                      _figure(c.recall), _figure(c.ap50), _figure(c.ap50_95))
    t = analysis.totals
    table.add_row("all", str(sum(c.instances for c in analysis.classes)), str(t.true_positive + t.false_positives),
                  str(t.true_positive), str(t.wrong_class), str(t.missed), str(t.duplicate), str(t.localisation),
                  str(t.background), _figure(analysis.precision), _figure(analysis.recall), _figure(analysis.map50),
                  _figure(analysis.map50_95))
    console.print(table)
    matrix = analysis.confusion
    confusion = Table("label \\ predicted", *[escape(n) for n in matrix.names], "(missed)",
                      title=escape(f"Confusion matrix {where}: rows label boxes, columns predictions"),
                      title_justify="left")
    for i, name in enumerate([*matrix.names, "(background)"]):
        confusion.add_row(escape(name), *[str(v) if v else "." for v in matrix.counts[i].tolist()])
    console.print(confusion)
    names = {c.cls: c.name for c in analysis.classes}
    ranked = analysis.worst(worst)
    if not worst:
        return
    images = Table("image", "score", "missed", "wrong class", "duplicate", "poor loc.", "background", "what",
                   title=escape(f"Worst {len(ranked)} images by error score {where}"), title_justify="left")
    for image in ranked:
        n = image.counts
        images.add_row(escape(image.name), f"{image.error_score:.2f}", str(n.missed), str(n.wrong_class),
                       str(n.duplicate), str(n.localisation), str(n.background), escape(_kinds(image, names)))
    console.print(images)
    if not ranked:
        _plain("no image has an error at this confidence")


def _kinds(image, names: dict[int, str]) -> str:
    """e.g. `missed: Fall; wrong class: Normal as Fall 0.81; background: Fall 0.45`."""
    from azaion_training.analysis.outcomes import Outcome

    def name(cls: int | None) -> str:
        return names.get(cls, f"Class-{cls}") if cls is not None else "?"

    described = {
        Outcome.MISSED: lambda o: name(o.cls),
        Outcome.WRONG_CLASS: lambda o: f"{name(o.true_cls)} as {name(o.cls)} {o.conf:.2f}",
        Outcome.DUPLICATE: lambda o: f"{name(o.cls)} {o.conf:.2f}",
        Outcome.LOCALISATION: lambda o: f"{name(o.cls)} {o.conf:.2f} IoU {o.iou:.2f}",
        Outcome.BACKGROUND: lambda o: f"{name(o.cls)} {o.conf:.2f}",
    }
    parts = []
    for kind, describe in described.items():
        items = [describe(o) for o in image.boxes if o.kind is kind]
        if items:
            more = f" +{len(items) - LISTED}" if len(items) > LISTED else ""
            parts.append(f"{kind.value.replace('_', ' ')}: {', '.join(items[:LISTED])}{more}")
    return "; ".join(parts)


def _print_comparison(comparison) -> None:
    from rich.markup import escape
    from rich.table import Table

    a, b = comparison.a, comparison.b
    where = f"[{comparison.where()}]"
    _plain(f"A = {a.model.label} (ONNX {a.model.short}), B = {b.model.label} (ONNX {b.model.short}) on {a.dataset} "
           f"{where}; boxes judged at confidence >= {a.conf:g}; differences are B - A")
    metrics = Table("metric", "A", "B", "B - A", title=escape(f"Overall {where}"), title_justify="left")
    deltas = comparison.metric_deltas()
    for key, x, y in (("mAP50", a.map50, b.map50), ("mAP50-95", a.map50_95, b.map50_95),
                      ("precision", a.precision, b.precision), ("recall", a.recall, b.recall)):
        metrics.add_row(key, _figure(x), _figure(y), _figure(deltas[key], signed=True))
    interval = comparison.interval
    metrics.add_row("mAP50 B - A, 95% interval", "", "", f"{interval.low:+.4f} .. {interval.high:+.4f}")
    for field_name in ("true_positive", "wrong_class", "missed", "duplicate", "localisation", "background"):
        x, y = getattr(a.totals, field_name), getattr(b.totals, field_name)
        metrics.add_row(field_name.replace("_", " "), str(x), str(y), _figure(y - x, signed=True))
    console.print(metrics)
    classes = Table("class", "labels", "AP50 A", "AP50 B", "B - A", "TP", "wrong class", "missed", "false boxes",
                    title=escape(f"Per class, B - A {where}"), title_justify="left")
    for c in comparison.classes:
        delta = c.counts_b - c.counts_a
        classes.add_row(escape(c.name), str(c.instances), _figure(c.ap50_a), _figure(c.ap50_b),
                        _figure(c.ap50_delta, signed=True), _figure(delta.true_positive, signed=True),
                        _figure(delta.wrong_class, signed=True), _figure(delta.missed, signed=True),
                        _figure(delta.duplicate + delta.localisation + delta.background, signed=True))
    console.print(classes)
    for title, rows in ((f"Images that got worse ({len(comparison.worse)} shown)", comparison.worse),
                        (f"Images that got better ({len(comparison.better)} shown)", comparison.better)):
        table = Table("image", "score A", "score B", "B - A", "errors A", "errors B",
                      title=escape(f"{title} {where}"), title_justify="left")
        for row in rows:
            table.add_row(escape(row.name), f"{row.score_a:.2f}", f"{row.score_b:.2f}", f"{row.delta:+.2f}",
                          str(row.counts_a.errors), str(row.counts_b.errors))
        console.print(table)
    _plain(f"{comparison.unchanged} image(s) kept their error score")
