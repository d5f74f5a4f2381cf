"""`azaion demo`: the whole pipeline on generated data, ending with the report's path."""

from datetime import datetime
from pathlib import Path

import typer

from azaion_training.cli_support import console, print_json
from azaion_training.errors import InputError

commands = typer.Typer()  # cli.py merges every stage's `commands` into `azaion`


def demo_workdir(workdir: Path | None) -> Path:
    """A fresh directory: the given one must be empty (or not exist yet); by default a new
    timestamped folder under ./azaion-demo/."""
    if workdir is None:
        return Path("azaion-demo") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        raise InputError(f"--workdir {workdir} is not an empty directory: give a new path (the demo builds a "
                         "whole data tree there)")
    return workdir


@commands.command("demo")
def demo(
    workdir: Path | None = typer.Option(None, "--workdir", help="Empty directory for everything the demo "
                                        "makes (default: ./azaion-demo/<timestamp>)."),
    images: int = typer.Option(240, "--images", min=12, help="Annotated scenes to generate."),
    epochs: int = typer.Option(30, "--epochs", min=1, help="Training epochs."),
    imgsz: int = typer.Option(128, "--imgsz", min=64, help="Scene and training image size (multiple of 32)."),
    batch: int = typer.Option(8, "--batch", min=1, help="Training batch size."),
    video_frames: int = typer.Option(48, "--video-frames", min=4, help="Frames of the rendered flight video."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the scenes and the split."),
    min_map50: float = typer.Option(0.1, "--min-map50", min=0.0, max=1.0,
                                    help="The promotion gate's floor for the demo's model (PROMOTION_MIN_MAP50); "
                                         "lower it only for a deliberately tiny demo."),
    broker: bool = typer.Option(False, "--broker", help="Publish to and consume from the configured RabbitMQ "
                                "stream instead of replaying a dump file."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Run the whole pipeline on generated aerial scenes and write an HTML report.

    Needs no broker, GPU, cloud or internet."""
    from dataclasses import asdict

    from azaion_training.cli_support import settings
    from azaion_training.demo.pipeline import DemoOptions, run_demo
    from azaion_training.settings import TrainingSettings, overridden

    overridden(TrainingSettings(), imgsz=imgsz)  # the settings' image-size rule
    options = DemoOptions(workdir=demo_workdir(workdir), images=images, epochs=epochs, imgsz=imgsz,
                          batch=batch, video_frames=video_frames, seed=seed, min_map50=min_map50,
                          broker=settings() if broker else None)
    result = run_demo(options)
    if as_json:
        print_json(asdict(result))
        return
    console.print(f"demo finished in {result.timings_s['total']:.0f} s; test mAP50 "
                  f"{result.map50 if result.map50 is not None else float('nan'):.3f}")
    console.print(continue_text(result), highlight=False, soft_wrap=True, markup=False)


def continue_text(result) -> str:
    """The closing lines: the report, and how to go on working on the demo's tree."""
    art = result.artefacts
    azaion = f"{_azaion_command()} --config {art['config']}"
    lines = [f"report: {result.report.absolute()}", "",
             "The demo's tree stays usable (README.md, \"Continue on the demo tree\"):",
             f"  AZAION_ROOT_DIR={art['root']}",
             f"  config: {art['config']}  (mode 0600, the model key included; the key alone: {art['model_key']})",
             f"  {azaion} models list"]
    if result.promoted:
        lines.append(f"  {azaion} infer {art['video']} --model azaion.onnx --from {art['target']}")
    else:
        run = Path(art["run"]).name
        lines += [f"  The gate refused the model ({result.refused}): nothing was published to {art['target']}.",
                  f"  {azaion} models promote {run} --target {art['target']} --force   # publish it anyway"]
    return "\n".join(lines)


def _azaion_command() -> str:
    """`azaion` when that is what the shell finds, else the path this process was started by
    (`make demo` runs .venv/bin/azaion without activating the venv)."""
    import shutil
    import sys

    started = Path(sys.argv[0])
    found = shutil.which("azaion")
    if started.name != "azaion" or (found and Path(found).resolve() == started.resolve()):
        return "azaion"
    return str(started)
