"""`azaion train` and `azaion export`: argument parsing and printing only (torch and
Ultralytics are imported inside the stage functions)."""

from pathlib import Path

import typer

from azaion_training.cli_support import console, print_json, settings
from azaion_training.errors import InputError, OperationFailed
from azaion_training.settings import overridden

commands = typer.Typer()  # cli.py merges every stage's `commands` into `azaion`


@commands.command("train")
def train_command(
    run: str | None = typer.Argument(None, help="With --resume: the run (name or directory) to continue "
                                                "(default: the latest)."),
    dataset: str | None = typer.Option(None, "--dataset", help="Dataset name or path (default: form one)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Default TRAINING_EPOCHS."),
    batch: int | None = typer.Option(None, "--batch", min=1, help="Default TRAINING_BATCH_SIZE."),
    imgsz: int | None = typer.Option(None, "--imgsz", min=32, help="Default TRAINING_IMGSZ (a multiple of 32)."),
    device: str | None = typer.Option(None, "--device", help="cpu, 0, or 0,1 (DDP); default TRAINING_DEVICE."),
    from_weights: Path | None = typer.Option(None, "--from", help="Fine-tune: a new run starting from these weights."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last.pt."),
    preflight: bool = typer.Option(False, "--preflight", help="Check dataset, weights, device, memory and disk; "
                                                                "train nothing. Exit 0 go, 1 no-go."),
    min_free_gb: float | None = typer.Option(None, "--min-free-gb", help="Preflight: require this much free disk "
                                                                          "instead of the checkpoint estimate."),
    publish: bool = typer.Option(False, "--publish", help="Then promote the run through the gate "
                                                          "(`azaion models promote`)."),
    target: str = typer.Option("azaion", "--target", help="With --publish: azaion, or local:DIR."),
) -> None:
    """Train a YOLO model (new run, --from fine-tune, or --resume), or run the --preflight checks."""
    from azaion_training.training.train import TrainRequest, train
    from azaion_training.training.train import resume as resume_run

    if run is not None and not resume:
        raise InputError(f"unexpected argument {run!r}: a run name is only taken with --resume")
    if resume and (from_weights or dataset or epochs or preflight):
        raise InputError("--resume continues a run with its own dataset, epochs and schedule: "
                         "drop --from/--dataset/--epochs/--preflight, or start a new run without --resume")
    cfg = overridden(settings().training, epochs=epochs, batch_size=batch, imgsz=imgsz, device=device)
    request = TrainRequest(dataset, cfg.epochs, cfg.batch_size, cfg.imgsz, cfg.device, from_weights)
    if preflight:
        _preflight(request, min_free_gb)
        return
    result = resume_run(settings(), run, device) if resume else train(settings(), request)
    console.print(f"[green]training finished[/green]: {result.run_dir} ({result.epochs_done} epochs), "
                  f"mAP50 {result.metrics.get('mAP50', 0):.4f} [valid, PyTorch]; promote it with "
                  f"`azaion models promote {result.run_dir.name} --target TARGET`", highlight=False)
    if publish:
        from azaion_training.lifecycle.cli import promote_and_report

        promote_and_report(result.run_dir.name, target)


def _preflight(request, min_free_gb: float | None) -> None:
    from rich.table import Table

    from azaion_training.training.preflight import preflight

    checks = preflight(settings(), request, min_free_gb)
    table = Table("check", "result", "detail", title="training preflight")
    for check in checks:
        table.add_row(check.name, "[green]go[/green]" if check.ok else "[red]no-go[/red]", check.detail)
    console.print(table)
    failed = [c.name for c in checks if not c.ok]
    if failed:
        raise OperationFailed(f"preflight: no-go ({', '.join(failed)})")
    console.print("[green]preflight: go[/green]")


@commands.command("export")
def export_command(
    weights: Path | None = typer.Option(None, "--weights", help="Default models/azaion.pt."),
    formats: str = typer.Option("onnx", "--formats", help="Comma-separated: onnx, engine, coreml, and the edge "
                                                          "formats openvino, onnx-int8, rknn (docs/edge.md)."),
    int8: bool = typer.Option(False, "--int8", help="INT8 for openvino / rknn, calibrated on train images; kept "
                                                    "only within QUANT_MAX_MAP_DROP of the FP32 ONNX and "
                                                    "QUANT_MIN_SPEEDUP faster."),
    calibration_images: int | None = typer.Option(None, "--calibration-images", min=1,
                                                  help="INT8 calibration images from the train split, stratified "
                                                       "by class (default QUANT_CALIBRATION_IMAGES)."),
    split: str = typer.Option("test", "--split", help="Split the edge formats are judged on against the FP32 ONNX "
                                                      "(the promotion gate's: test)."),
    imgsz: int | None = typer.Option(None, "--imgsz", min=32, help="Default: the size the run trained at "
                                                                 "(EXPORT_ONNX_IMGSZ for weights outside any run)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Parity check of the ONNX against PyTorch."),
    dataset: str | None = typer.Option(None, "--dataset", help="Dataset whose valid split the parity check uses "
                                                               "(default: the latest run's)."),
    verify_images: int = typer.Option(200, "--verify-images", min=1, help="At most this many parity images."),
    check: Path | None = typer.Option(None, "--check", help="Only run the parity check on this existing .onnx."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Export the current model (ONNX, TensorRT, CoreML; OpenVINO, INT8, RKNN); check the ONNX against PyTorch.

    The parity check fails when the ONNX's mAP50 on the valid split is more than 0.01 lower."""
    from azaion_training.training.export import export, verify_onnx

    wanted = [f.strip() for f in formats.split(",") if f.strip()]
    if imgsz is not None:  # checked like the setting; without it, the size the run trained at (export_imgsz)
        imgsz = overridden(settings().export, onnx_imgsz=imgsz).onnx_imgsz
    if check is not None:
        report = verify_onnx(settings(), check, weights, dataset, imgsz, verify_images)
        _print_export({}, report, as_json)
        return
    from azaion_training.layout import SPLITS

    if split not in SPLITS:
        raise InputError(f"--split {split!r} is not one of {', '.join(SPLITS)}")
    result = export(settings(), weights, wanted, imgsz, verify, dataset, verify_images, int8=int8,
                    calibration_images=calibration_images, split=split)
    _print_export(result.files, result.parity, as_json, result.variants)
    if result.variants:
        from azaion_training.training.quantize import require_accepted

        require_accepted(result.variants)


def _print_export(files: dict, report, as_json: bool, variants: list | None = None) -> None:
    parity = None if report is None else {"images": report.images, "pytorch_map50": report.pytorch_map50,
                                          "onnx_map50": report.onnx_map50, "passed": report.passed}
    if as_json:
        print_json({"files": {k: str(v) for k, v in files.items()}, "parity": parity,
                    "variants": [v.to_dict() for v in variants or []]})
        return
    for variant in variants or []:
        speed = f", {variant.ms} ms/frame vs {variant.fp32_ms} ({variant.speedup}x)" if variant.ms else ""
        verdict = "[green]kept[/green]" if variant.passed else "[red]refused[/red]: " + "; ".join(variant.reasons)
        console.print(f"{variant.key}: mAP50 {variant.map50:.4f} vs FP32 ONNX {variant.fp32_map50:.4f} "
                      f"(drop {variant.drop:.4f}) on {variant.images} {variant.split} images{speed} {verdict}")
    for fmt, path in files.items():
        console.print(f"{fmt}: {path}")
    if parity:
        console.print(f"parity on {parity['images']} images: PyTorch mAP50 {parity['pytorch_map50']:.4f}, "
                      f"ONNX mAP50 {parity['onnx_map50']:.4f} [green]passed[/green]")
