"""`azaion field report`, `azaion review label-errors`, `azaion review next` (docs/data-engine.md):
argument parsing and printing only."""

from datetime import date, datetime
from pathlib import Path

import typer

from azaion_training.cli_support import console, print_json, settings
from azaion_training.errors import InputError

commands = typer.Typer()  # cli.py merges every stage's `commands` into `azaion`
field_app = typer.Typer(no_args_is_help=True, help="Field accuracy: the production model as the validators judged it.")
review_app = typer.Typer(no_args_is_help=True, help="What to look at: likely label errors, frames to annotate next.")
commands.add_typer(field_app, name="field")
commands.add_typer(review_app, name="review")

MODEL_HELP = ("A run, production[:TARGET] or an .onnx file (default: production on azaion, else the latest "
              "finished run).")


def _plain(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _interval(found: list[float] | None) -> str:
    return "" if found is None else f"[{found[0]:.2f}, {found[1]:.2f}]"


def _since(text: str | None) -> date | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise InputError(f"--since {text!r}: use a date YYYY-MM-DD") from None


@field_app.command("report")
def field_report_command(
    since: str | None = typer.Option(None, "--since", help="Only proposals made on or after this date (YYYY-MM-DD)."),
    by: str = typer.Option("class", "--by", help="Group per class (all together), week, media or model."),
    target: str = typer.Option("azaion", "--target", help="Whose production history names the model versions."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Per class: the production model's field precision and recall (proposal boxes against the
    validators' final boxes, IoU 0.5), with counts and Wilson 95 % intervals."""
    from azaion_training.analysis.field import field_report

    report = field_report(settings(), _since(since), by, target)
    if as_json:
        print_json(report.to_dict())
        return
    _plain(f"field accuracy by {report.by}{' since ' + report.since if report.since else ''}: "
           f"{report.proposals} proposals, {report.judged} judged ({report.deleted} deleted), "
           f"{report.pending} awaiting a validator; IoU 0.5")
    if not report.rows:
        _plain("no judged proposals yet: AI-sourced annotations appear here once a validator validates, edits "
               "or deletes them")
        return
    _plain(f"{'group':<16} {'class':<22} {'proposed':>8} {'final':>6} {'tp':>5} {'fp':>5} {'missed':>6} "
           f"{'precision':>9} {'95% CI':<14} {'recall':>6} {'95% CI':<14} models")
    for row in report.rows:
        d = row.to_dict()
        models = ", ".join(f"{k}: {v}" for k, v in sorted(d["models"].items()))
        _plain(f"{d['group']:<16} {d['name']:<22} {d['proposed']:>8} {d['final']:>6} {d['tp']:>5} {d['fp']:>5} "
               f"{d['missed']:>6} {_figure(d['precision']):>9} {_interval(d['precision_ci95']):<14} "
               f"{_figure(d['recall']):>6} {_interval(d['recall_ci95']):<14} {models}")


@review_app.command("label-errors")
def label_errors_command(
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    dataset: str | None = typer.Option(None, "--dataset", help="Dataset name or path (default: the model's, "
                                       "else the latest)."),
    split: str = typer.Option("test", "--split", help="valid or test (train: only images the model never "
                              "trained on, i.e. those a newer dataset added)."),
    limit: int = typer.Option(200, "--limit", min=1, help="How many images to list, worst first."),
    as_json: bool = typer.Option(False, "--json", help="Print the ranking as JSON."),
) -> None:
    """Rank a split's images by cleanlab's label quality score on the model's out-of-sample
    predictions and write them as JSONL (overlooked / swapped / badly located boxes); nothing
    in the data is changed."""
    from azaion_training.analysis.label_errors import find_label_errors

    report = find_label_errors(settings(), model, dataset, split, limit, progress=not as_json)
    if as_json:
        print_json(report.to_dict())
        return
    _plain(f"{report.model.label} (ONNX {report.model.short}) on {report.dataset}/{report.split}: "
           f"{report.judged} images judged out of sample, {report.skipped_trained} skipped (trained on)")
    for issue in report.ranked[:20]:
        kinds = ", ".join(sorted({i.kind for i in issue.issues})) or "-"
        _plain(f"{issue.rank:>4}  {issue.score:.3f}  {issue.name:<40} {kinds}")
    _plain(f"ranking ({len(report.ranked)} images): {report.path}")


@review_app.command("next")
def next_command(
    source: Path = typer.Option(..., "--source", help="A video, an image or a directory of images."),
    budget: int = typer.Option(50, "--budget", min=1, help="How many frames to choose."),
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    every: int = typer.Option(10, "--every", min=1, help="Video: consider every N-th frame."),
    name: str | None = typer.Option(None, "--name", help="The selection's folder name under "
                                    "<root>/analysis/selections/ (default next-<time>)."),
    as_json: bool = typer.Option(False, "--json", help="Print the choice as JSON."),
) -> None:
    """Choose the frames to annotate next: where the production model is unsure, spread over
    what the source shows, never two near-duplicates; writes them and selection.jsonl."""
    from azaion_training.analysis.selection import next_to_annotate

    result = next_to_annotate(settings(), source, budget, model, every, name, progress=not as_json)
    if as_json:
        print_json(result.to_dict())
        return
    _plain(f"{len(result.chosen)} of {result.candidates} frames chosen with {result.model}")
    for item in result.chosen:
        _plain(f"{item['rank']:>4}  {item['frame']}  {item['reason']}")
    _plain(f"frames and selection.jsonl: {result.directory}")
