"""The report's PNG plots (matplotlib, Agg backend: no display needed)."""

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

# Ultralytics results.csv columns shown as training curves, grouped by panel.
LOSS_COLUMNS = ("train/box_loss", "train/cls_loss", "train/dfl_loss", "val/box_loss", "val/cls_loss", "val/dfl_loss")
METRIC_COLUMNS = ("metrics/mAP50(B)", "metrics/mAP50-95(B)", "metrics/precision(B)", "metrics/recall(B)")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_results_csv(path: Path) -> dict[str, list[float]]:
    """Ultralytics' per-epoch results.csv as column -> values (header names stripped)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            try:
                columns.setdefault(key.strip(), []).append(float(value))
            except (TypeError, ValueError):
                columns.setdefault(key.strip(), []).append(float("nan"))
    return columns


def training_curves(results: Mapping[str, Sequence[float]], out: Path) -> Path:
    plt = _pyplot()
    epochs = results.get("epoch") or list(range(1, len(next(iter(results.values()), [])) + 1))
    fig, (losses, metrics) = plt.subplots(1, 2, figsize=(11, 4))
    for column in LOSS_COLUMNS:
        if column in results:
            losses.plot(epochs, results[column], label=column, marker="o", markersize=2,
                        linestyle="--" if column.startswith("val") else "-")
    losses.set(title="Losses per epoch", xlabel="epoch", ylabel="loss")
    losses.legend(fontsize=7)
    for column in METRIC_COLUMNS:
        if column in results:
            metrics.plot(epochs, results[column], marker="o", markersize=3,
                         label=column.removeprefix("metrics/").removesuffix("(B)"))
    metrics.set(title="Validation metrics per epoch", xlabel="epoch", ylim=(0, 1))
    metrics.legend(fontsize=7)
    return _save(fig, out)


def class_histogram(counts: Mapping[str, Mapping[str, int]], out: Path, title: str,
                    order: Sequence[str] = ()) -> Path:
    """Grouped bars: counts[group][class name] -> boxes (groups are splits or areas); classes
    in `order` first (e.g. by class id), any others after them."""
    plt = _pyplot()
    present = {name for group in counts.values() for name in group}
    names = [name for name in order if name in present] + sorted(present - set(order))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names) + 2), 4))
    width = 0.8 / max(1, len(counts))
    positions = np.arange(len(names))
    for i, (group, per_class) in enumerate(counts.items()):
        ax.bar(positions + i * width, [per_class.get(name, 0) for name in names], width, label=group)
    ax.set_xticks(positions + width * (len(counts) - 1) / 2, names, rotation=45, ha="right", fontsize=8)
    ax.set(title=title, ylabel="boxes")
    if counts:
        ax.legend()
    return _save(fig, out)


def precision_recall(recall: np.ndarray, precision: np.ndarray, class_names: Sequence[str],
                     ap50: Sequence[float], out: Path) -> Path:
    """One PR curve (IoU 0.5) per class plus their mean; precision is (classes, points)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for curve, name, ap in zip(precision, class_names, ap50, strict=True):
        ax.plot(recall, curve, linewidth=1, alpha=0.7, label=f"{name} {ap:.2f}")
    if len(precision):
        ax.plot(recall, np.mean(precision, axis=0), color="black", linewidth=2.5,
                label=f"all classes {float(np.mean(ap50)):.2f} mAP50")
    ax.set(title="Precision-recall on the test split (IoU 0.5)", xlabel="recall", ylabel="precision",
           xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize=7, loc="lower left")
    return _save(fig, out)


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str], out: Path, columns: int = 4) -> Path:
    """BGR images in a grid with a title each."""
    plt = _pyplot()
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.6 * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles, strict=False):
        ax.imshow(image[..., ::-1])
        ax.set_title(title, fontsize=8)
    return _save(fig, out)


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(out, dpi=110)
    _pyplot().close(fig)
    return out
