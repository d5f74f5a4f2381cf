"""`azaion dataset form|visualise|convert|stats` and `azaion augment`."""

import os
import signal
import threading
from pathlib import Path

import typer

from azaion_training.cli_support import console, err_console, layout, print_json, settings
from azaion_training.errors import InputError
from azaion_training.labels import MIN_BOX_AREA

commands = typer.Typer()  # cli.py merges every stage's `commands` into `azaion`
dataset_app = typer.Typer(no_args_is_help=True, help="Form, inspect and convert datasets.")
commands.add_typer(dataset_app, name="dataset")

WORKERS_HELP = "Augmentation worker processes (default: one per CPU; 0 runs in this process)."
MIN_AREA_HELP = "Drop augmented boxes whose clipped area is below this fraction of the image."


def _workers(value: int | None) -> int:
    if value is not None and value < 0:
        raise InputError(f"--workers {value} must be 0 or more")
    return os.cpu_count() or 1 if value is None else value


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        err_console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)


@dataset_app.command("form")
def form(name: str | None = typer.Option(None, "--name", help="Dataset name (default azaion-YYYY-MM-DD; "
                                                               "a taken name gets a -2, -3 suffix)."),
         seed: int = typer.Option(0, "--seed", help="Seed of the placement of source media never split before "
                                                    "(splits are sticky: seen media keep theirs)."),
         split: str = typer.Option("70/20/10", "--split", help="train/valid/test shares."),
         augment: bool = typer.Option(False, "--augment", help="Add 7 augmented variants per train image."),
         link: str = typer.Option("hardlink", "--link", help="hardlink | symlink | copy."),
         workers: int | None = typer.Option(None, "--workers", help=WORKERS_HELP),
         min_box_area: float = typer.Option(MIN_BOX_AREA, "--min-box-area", help=MIN_AREA_HELP),
         reshuffle: bool = typer.Option(False, "--reshuffle", help="Re-split everything: a new split generation "
                                                                   "(older models then saw valid/test data)."),
         as_json: bool = typer.Option(False, "--json", help="Print the result as JSON.")) -> None:
    """Form datasets/azaion-YYYY-MM-DD from data/: check labels (bad ones to data-corrupted/),
    split by source media (sticky), hardlink, write data.yaml and manifest.json."""
    from azaion_training.dataset.form import form_dataset
    from azaion_training.dataset.split import parse_ratios

    try:
        ratios = parse_ratios(split)
    except ValueError as exc:
        raise InputError(f"--split: {exc}") from None
    result = form_dataset(settings(), name=name, seed=seed, split=ratios, augment=augment, link=link,
                          workers=_workers(workers), min_box_area=min_box_area, reshuffle=reshuffle)
    if as_json:
        print_json(result.to_dict())
        return
    _warn(result.warnings)
    counts = ", ".join(f"{split} {result.counts[split]}" for split in result.counts)
    console.print(f"formed {result.path} ({counts} images; {result.corrupted} quarantined; "
                  f"{result.link_method}; {result.seconds:.1f} s; split generation {result.split_generation}, "
                  f"{result.new_groups} new source media)", highlight=False, soft_wrap=True)
    console.print(f"data.yaml: {result.data_yaml}", highlight=False, soft_wrap=True)


@dataset_app.command("visualise")
def visualise(target: str = typer.Argument(..., help="A dataset (name or path), or a folder with images/ and labels/."),
              out: Path = typer.Option(..., "--out", help="Folder for the PNG grids."),
              limit: int = typer.Option(32, "--limit", min=1, help="Images per split at most.")) -> None:
    """Draw boxes with class names and colours into PNG grids (no windows)."""
    from azaion_training.dataset.form import resolve_dataset
    from azaion_training.dataset.visualise import visualise as draw

    tree = layout()
    written = draw(resolve_dataset(target, tree), out, tree.classes_json, limit)
    for path in written:
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)
    if not written:
        err_console.print(f"[yellow]warning:[/yellow] no images found in {target}")


@dataset_app.command("convert")
def convert(src: Path = typer.Argument(..., help="Folder with the foreign annotations and their images."),
            fmt: str = typer.Option(..., "--format", help="voc (Pascal VOC XML) | oriented (DOTA-style corners)."),
            out: Path = typer.Option(..., "--out", help="Output folder (images/ + labels/)."),
            as_json: bool = typer.Option(False, "--json", help="Print the result as JSON.")) -> None:
    """Convert Pascal VOC or oriented-box annotations to YOLO labels; bad files are reported."""
    from azaion_training.dataset.convert import convert as run

    result = run(src, out, fmt, layout().classes_json)
    if as_json:
        print_json(result.to_dict())
        return
    for path, reason in result.bad.items():
        err_console.print(f"[yellow]skipped[/yellow] {path}: {reason}", highlight=False, soft_wrap=True)
    console.print(f"converted {result.converted} file(s), {result.boxes} box(es) into {out}; "
                  f"{len(result.bad)} file(s) could not be converted", highlight=False, soft_wrap=True)


@dataset_app.command("stats")
def stats(dataset: str | None = typer.Argument(None, help="Dataset name or path (default: the latest)."),
          out: Path | None = typer.Option(None, "--out", help="PNG histogram (default <dataset>/stats.png)."),
          as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON.")) -> None:
    """Images per split and boxes per class (table) plus a PNG histogram."""
    from azaion_training.dataset.form import resolve_dataset
    from azaion_training.dataset.stats import dataset_stats, stats_table, write_histogram

    tree = layout()
    found = dataset_stats(resolve_dataset(dataset, tree))
    png = write_histogram(found, out or found.path / "stats.png", tree.classes_json)
    if as_json:
        print_json({**found.to_dict(), "histogram": str(png)})
        return
    console.print(stats_table(found, tree.classes_json))
    console.print(f"histogram: {png}", highlight=False, soft_wrap=True)


@commands.command("augment")
def augment(watch: bool = typer.Option(False, "--watch", help="Keep running: a round every --interval seconds."),
            interval: float = typer.Option(300.0, "--interval", min=1, help="Seconds between rounds with --watch."),
            workers: int | None = typer.Option(None, "--workers", help=WORKERS_HELP),
            min_box_area: float = typer.Option(MIN_BOX_AREA, "--min-box-area", help=MIN_AREA_HELP),
            as_json: bool = typer.Option(False, "--json", help="Print the result as JSON.")) -> None:
    """Fill the augmentation cache (data-processed/): 8 outputs per annotation of data/.

    What is cached already is skipped."""
    from azaion_training.dataset.augment import augment_data
    from azaion_training.dataset.augment import watch as watch_loop

    count = _workers(workers)
    if watch:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            rounds = watch_loop(settings(), interval, stop, count, min_box_area)
        except KeyboardInterrupt:
            rounds = None
        console.print(f"augmentation watch stopped{f' after {rounds} round(s)' if rounds else ''}")
        return
    summary = augment_data(settings(), count, min_box_area)
    if as_json:
        print_json(summary.to_dict())
        return
    for name, reason in list(summary.skipped.items())[:10]:
        err_console.print(f"[yellow]skipped[/yellow] {name}: {reason}", highlight=False, soft_wrap=True)
    console.print(f"augmented {summary.augmented}, reused {summary.reused}, skipped {len(summary.skipped)} "
                  f"annotation(s); {summary.failed_variants} variant(s) failed", highlight=False, soft_wrap=True)
