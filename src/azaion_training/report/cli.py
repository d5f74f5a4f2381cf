"""`azaion report RUN` (the HTML report of a training run) and `azaion status`."""

from pathlib import Path
from typing import Any

import typer

from azaion_training.cli_support import console, print_json
from azaion_training.errors import InputError
from azaion_training.layout import RunDir

commands = typer.Typer()  # cli.py merges every stage's `commands` into `azaion`


def _print_status(status: dict[str, Any]) -> None:
    from rich.table import Table

    console.print(f"[bold]Azaion data tree[/bold] {status['root']}"
                  + ("" if status["initialised"] else "  [yellow](not initialised: run `azaion init`)[/yellow]"))
    areas = Table("area", "images", "labels", title="Areas")
    for name, counts in status["areas"].items():
        areas.add_row(name, str(counts["images"]), str(counts["labels"]))
    areas.add_row("queue-rejected", str(status["rejected"]["messages"]), "-")
    console.print(areas)
    if status["data_classes"]:
        classes = Table("class", "boxes", title="Classes in data/")
        for name, count in status["data_classes"].items():
            classes.add_row(name, str(count))
        console.print(classes)
    queue = status["queue"]
    offset = "-" if queue["offset"] is None else queue["offset"]
    console.print(f"[bold]Consumer[/bold] stream {queue['stream'] or '-'}, offset {offset} "
                  f"(updated {queue['offset_updated_at'] or '-'}), last message {queue['last_message_time'] or '-'}"
                  + (f", lag {queue['lag']}" if queue.get("lag") is not None else ""), highlight=False)
    for title, key in (("Latest dataset", "latest_dataset"), ("Latest model", "latest_model"),
                       ("Last publish", "last_publish")):
        value = status[key]
        console.print(f"[bold]{title}[/bold] " + ("-" if value is None else ", ".join(
            f"{k}={v}" for k, v in value.items())), highlight=False, soft_wrap=True)


@commands.command("status")
def status_command(as_json: bool = typer.Option(False, "--json", help="Print the status as JSON.")) -> None:
    """One screen for operators: areas, classes in data/, consumer position, latest dataset/model/publish."""
    from azaion_training.cli_support import settings
    from azaion_training.report.status import collect_status

    status = collect_status(settings())
    if as_json:
        print_json(status)
    else:
        _print_status(status)


@commands.command("report")
def report_command(
    run: str | None = typer.Argument(None, metavar="RUN", show_default=False,
                                     help="A training run name under models/ or a run directory."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: RUN_DIR/report)."),
    run_option: str | None = typer.Option(None, "--run", hidden=True, help="Deprecated: the run, positional now."),
) -> None:
    """Write the HTML report (curves, per-class AP, PR curve, test predictions) of a training run."""
    from azaion_training.cli_support import layout, run_argument, settings
    from azaion_training.report.build import ReportInputs, build_report
    from azaion_training.training.runs import find_run

    run = run_argument(run, run_option, "azaion report RUN", "--run")
    run_dir = find_run(layout(), run).path
    if not RunDir(run_dir).results_csv.is_file():
        raise InputError(f"training run {run!r} has no results.csv ({run_dir}): nothing to report yet")
    result = build_report(settings(), ReportInputs(run_dir=run_dir, title=f"Training run {run_dir.name}"),
                          out or run_dir / "report")
    console.print(f"report: {result.index_html.absolute()}", highlight=False, soft_wrap=True)
