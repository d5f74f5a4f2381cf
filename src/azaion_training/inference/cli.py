"""`azaion infer`: detections on a video, an image or a directory of images."""

from pathlib import Path

import typer

from azaion_training.cli_support import console, print_json, settings

commands = typer.Typer()  # cli.py merges every stage's `commands` into `azaion`


@commands.command("infer")
def infer(
    source: Path = typer.Argument(..., help="A video file, an image, or a directory of images."),
    model: str = typer.Option("", "--model", "-m",
                              help="An .onnx/.engine/edge .zip path, or a published model name fetched and decrypted "
                                   "in memory. Default: <root>/models/azaion.onnx."),
    every: int = typer.Option(None, "--every", help="Process every N-th video frame (default INFERENCE_EVERY)."),
    batch: int = typer.Option(None, "--batch", help="Frames per engine call (default INFERENCE_BATCH)."),
    conf: float = typer.Option(None, "--conf", help="Confidence threshold (default INFERENCE_CONF)."),
    iou: float = typer.Option(None, "--iou", help="Overlap cleanup IoU threshold (default INFERENCE_IOU)."),
    out: Path = typer.Option(None, "--out", help="Output directory (default ./azaion-infer/<source name>)."),
    no_video: bool = typer.Option(False, "--no-video", help="Skip the annotated video / images."),
    engine: str = typer.Option("auto", "--engine",
                               help="auto (an edge archive on its own engine; an ONNX on TensorRT with an NVIDIA GPU, "
                                    "else ONNX Runtime), onnx, tensorrt, openvino or rknn (docs/edge.md)."),
    target: str = typer.Option("", "--from", help="Where a model name is fetched from (e.g. local:DIR); "
                                                  "default: the API and CDN."),
    no_manifest: bool = typer.Option(False, "--no-manifest",
                                     help="A model name published by other tooling (no manifest): decrypt anyway; "
                                          "only the padding and the ONNX structure are checked."),
    allow_downgrade: bool = typer.Option(False, "--allow-downgrade",
                                         help="With a published name: accept a manifest older than the newest "
                                              "version fetched from that target before."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Detect objects in a video, an image or a directory of images.

    Writes detections.jsonl, an annotated MP4 (or images) and summary.json."""
    from dataclasses import asdict

    from azaion_training.inference.pipeline import run_inference

    if model:
        chosen = model
    else:  # what is current is production on a target (the registry), never a moving file
        from azaion_training.lifecycle.promote import production_model_file

        chosen = str(production_model_file(settings(), target or "azaion"))
    summary = run_inference(settings(), source, chosen, out or Path.cwd() / "azaion-infer" / source.stem,
                            every=every, batch=batch, conf=conf, iou=iou,
                            write_video=not no_video, target=target or None, engine=engine,
                            no_manifest=no_manifest, allow_downgrade=allow_downgrade)
    if as_json:
        print_json(asdict(summary))
        return
    console.print(f"{summary.frames_processed} frames, {summary.detections} detections, "
                  f"{summary.fps} frames/s on {summary.engine}")
    for name, count in summary.per_class.items():
        console.print(f"  {name}: {count}")
    for what, path in summary.outputs.items():
        console.print(f"  {what}: {path}")
