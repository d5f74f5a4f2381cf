"""`azaion train --preflight`: go/no-go checks before committing to a days-long run.

Each check returns (name, ok, detail); nothing is trained and nothing is written."""

import io
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azaion_training.errors import AzaionError
from azaion_training.labels import LabelError, label_path_for, read_label_file
from azaion_training.layout import DatasetDir, Layout, image_files
from azaion_training.settings import Settings
from azaion_training.training.train import TrainRequest, model_source, use_amp
from azaion_training.training.weights import checked_start_weights, resolve_training_model

GIB = 1024**3
TRAINING_SPLITS = ("train", "valid")  # the splits training cannot do without


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def check_dataset(dataset: Path) -> Check:
    """data.yaml present, train and valid splits with images, every label file valid."""
    directory = DatasetDir(dataset)
    if not directory.data_yaml.is_file():
        return Check("dataset", False, f"{directory.data_yaml} is missing")
    counts, bad = {}, []
    for split in TRAINING_SPLITS:
        images = directory.images(split)
        counts[split] = len(images)
        for image in images:
            label = label_path_for(image)
            if label.is_file():
                try:
                    read_label_file(label)
                except LabelError as exc:
                    bad.append(f"{label.name}: {exc}")
    empty = [split for split, count in counts.items() if not count]
    if empty or bad:
        problems = [f"no images in {', '.join(empty)}"] if empty else []
        problems += [f"{len(bad)} invalid label(s), e.g. {bad[0]}"] if bad else []
        return Check("dataset", False, f"{dataset.name}: " + "; ".join(problems))
    return Check("dataset", True, f"{dataset.name}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))


def check_data_to_form(layout: Layout) -> Check:
    """Without --dataset, `azaion train` forms a new dataset from data/: check that there is
    something to form it from (formation itself checks every pair)."""
    labels = sum(1 for _ in layout.data.labels.glob("*.txt")) if layout.data.labels.is_dir() else 0
    if not labels:
        return Check("dataset", False, f"no --dataset and {layout.data.root} has no annotations to form one from")
    return Check("dataset", True, f"a new dataset will be formed from {labels} annotations in {layout.data.root}")


def check_image_cache(cache: str, images: list[Path], imgsz: int, where: Path) -> Check | None:
    """TRAINING_CACHE=disk writes each training image decoded (.npy, full size) beside it; ram
    holds every training image resized to imgsz. Estimated from up to 30 images with the safety
    margins Ultralytics applies (10 % disk, 2x RAM): below them it silently trains uncached."""
    if cache == "none" or not images:
        return None
    import cv2

    sample = images[:: max(1, len(images) // 30)][:30]
    sizes = []
    for path in sample:
        image = cv2.imread(str(path))
        if image is not None:
            height, width = image.shape[:2]
            ratio = imgsz / max(height, width) if cache == "ram" else 1.0
            sizes.append(min(height, math.ceil(height * ratio)) * min(width, math.ceil(width * ratio)) * 3)
    needed = sum(sizes) / max(1, len(sizes)) * len(images) * (1.1 if cache == "disk" else 2.0)
    if cache == "disk":
        existing = where if where.exists() else where.parent
        available, what = shutil.disk_usage(existing).free, f"free in {existing}"
    else:
        available, what = _available_memory(), "RAM available"
    detail = (f"TRAINING_CACHE={cache}: {len(images)} images need {needed / GIB:.1f} GiB, "
              f"{available / GIB:.1f} GiB {what}")
    return Check("image cache", available >= needed,
                 detail + ("" if available >= needed else ": set TRAINING_CACHE=none or free space"))


def _available_memory() -> int:
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def check_weights(spec: str, what: str = "TRAINING_MODEL", layout: Layout | None = None) -> tuple[Check, Any]:
    """Load the weights the way training will: checked weights-only, then Ultralytics loads the
    checked private copy (training/weights.py); the copy lives in a temp dir, gone afterwards."""
    try:
        from ultralytics import YOLO

        with tempfile.TemporaryDirectory(prefix="azaion-preflight-") as private:
            model = YOLO(checked_start_weights(model_source(spec), Path(private), what, layout))
    except AzaionError as exc:
        return Check("base weights", False, str(exc)), None
    except Exception as exc:  # a corrupt or foreign .pt fails in torch/pickle with many types
        return Check("base weights", False, f"{spec} does not load: {type(exc).__name__}: {str(exc)[:200]}"), None
    params = sum(p.numel() for p in model.model.parameters())
    return Check("base weights", True, f"{spec}: {params / 1e6:.1f} M parameters"), model


def check_device(device: str) -> Check:
    import torch

    if device in ("cpu", ""):
        if device == "" and torch.cuda.is_available():
            return Check("device", True, f"auto: cuda:0 {torch.cuda.get_device_name(0)}")
        return Check("device", True, "cpu" + (" (auto: no GPU visible)" if device == "" else ""))
    try:
        wanted = [int(part) for part in device.split(",")]
    except ValueError:
        return Check("device", False, f"TRAINING_DEVICE {device!r}: expected cpu, 0 or a list like 0,1")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [d for d in wanted if d >= count]
    if missing:
        return Check("device", False, f"GPU {missing} requested, {count} visible")
    return Check("device", True, ", ".join(f"cuda:{d} {torch.cuda.get_device_name(d)}" for d in wanted))


def _torch_device(device: str) -> str:
    """The device of the first GPU the run will use (DDP ranks hold one batch share each)."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{(device or '0').split(',')[0]}"


def check_batch_fits(model: Any, device: str, batch: int, imgsz: int) -> Check:
    """One forward/backward pass of a random batch at the run's batch size and image size."""
    import torch

    target = torch.device(_torch_device(device))
    net = model.model.to(target).float().train()
    for p in net.parameters():
        p.requires_grad_(True)
    images = torch.rand(batch, 3, imgsz, imgsz, device=target)
    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats(target)
    try:
        with torch.autocast(target.type, enabled=use_amp(device)):
            outputs = net(images)
        _sum_tensors(outputs).backward()
    except torch.OutOfMemoryError:
        return Check("batch fits", False, f"batch {batch} at imgsz {imgsz} is out of memory on {target}: "
                                          "lower TRAINING_BATCH_SIZE or TRAINING_IMGSZ")
    finally:
        net.zero_grad(set_to_none=True)
    if target.type == "cuda":
        peak = torch.cuda.max_memory_allocated(target) / GIB
        total = torch.cuda.get_device_properties(target).total_memory / GIB
        return Check("batch fits", True, f"batch {batch} at imgsz {imgsz}: peak {peak:.1f} of {total:.1f} GiB")
    return Check("batch fits", True, f"batch {batch} at imgsz {imgsz} on cpu")


def _sum_tensors(outputs: Any) -> Any:
    import torch

    if isinstance(outputs, torch.Tensor):
        return outputs.float().sum()
    values = outputs.values() if isinstance(outputs, dict) else outputs
    return sum(_sum_tensors(v) for v in values if isinstance(v, torch.Tensor | dict | list | tuple))


def checkpoint_bytes(model: Any) -> int:
    """Size of one Ultralytics checkpoint with its optimizer state: about 5x the fp16 weights
    (measured on yolo26n: 26.4 MB for 5.3 MB of fp16 weights)."""
    import torch

    buffer = io.BytesIO()
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.model.state_dict().items()}, buffer)
    return buffer.tell() * 5


def planned_checkpoints(epochs: int, save_period: int) -> int:
    """last.pt + best.pt, plus epoch<N>.pt every `save_period` epochs."""
    return 2 + (epochs // save_period if save_period > 0 else 0)


def check_disk(models: Path, needed: int, override_gib: float | None) -> Check:
    needed = int(override_gib * GIB) if override_gib is not None else needed
    existing = models if models.exists() else models.parent
    free = shutil.disk_usage(existing).free
    detail = f"{free / GIB:.1f} GiB free in {existing}, {needed / GIB:.2f} GiB needed"
    return Check("disk space", free >= needed, detail + ("" if free >= needed else ": free space or lower epochs"))


def preflight(settings: Settings, request: TrainRequest, min_free_gib: float | None = None) -> list[Check]:
    from azaion_training.dataset.form import resolve_dataset

    layout = Layout(settings.paths)
    cfg = request.training_settings(settings)
    # missing base weights are a setup step, not a no-go: ConfigError naming `azaion weights pull`
    spec = str(request.from_weights) if request.from_weights else resolve_training_model(cfg.model, layout)
    device, batch, imgsz, epochs = cfg.device, cfg.batch_size, cfg.imgsz, cfg.epochs
    checks = []
    try:
        checks.append(check_dataset(resolve_dataset(request.dataset, layout)) if request.dataset
                      else check_data_to_form(layout))
    except AzaionError as exc:
        checks.append(Check("dataset", False, str(exc)))
    weights_check, model = check_weights(spec, "--from" if request.from_weights else "TRAINING_MODEL", layout)
    checks.append(weights_check)
    checks.append(check_device(device))
    if model is not None and checks[-1].ok:
        checks.append(check_batch_fits(model, device, batch, imgsz))
    dataset = resolve_dataset(request.dataset, layout) if request.dataset and checks[0].ok else None
    train_images = DatasetDir(dataset).images("train") if dataset else image_files(layout.data.images)
    cache_check = check_image_cache(cfg.cache, train_images, imgsz, dataset or layout.datasets)
    if cache_check:
        checks.append(cache_check)
    needed = checkpoint_bytes(model) * planned_checkpoints(epochs, cfg.save_period) if model is not None else 0
    checks.append(check_disk(layout.models, needed, min_free_gib))
    return checks
