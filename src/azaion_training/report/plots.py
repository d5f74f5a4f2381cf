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


# Colours x line styles: 80 distinct (colour, style) pairs, one per model slot, so curves of
# 17 classes x 3 weather modes never share a look (matplotlib's default cycle has 10 colours).
CURVE_STYLES = ("-", "--", ":", "-.")


def curve_styles(count: int) -> list[tuple[tuple[float, ...], str]]:
    """`count` distinct (colour, line style) pairs: the 10 strong tab20 colours solid, then dashed,
    dotted, dash-dotted; then the 10 light ones in the same four styles; beyond 80 they repeat."""
    from matplotlib import colormaps

    strong, light = colormaps["tab20"].colors[0::2], colormaps["tab20"].colors[1::2]
    return [((strong, light)[i // 40 % 2][i % 10], CURVE_STYLES[i // 10 % 4]) for i in range(count)]


def precision_recall(recall: np.ndarray, precision: np.ndarray, class_names: Sequence[str],
                     ap50: Sequence[float], out: Path) -> Path:
    """One PR curve (IoU 0.5) per class plus their mean; precision is (classes, points)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 5.5))
    styles = curve_styles(len(precision))
    for curve, name, ap, (colour, style) in zip(precision, class_names, ap50, styles, strict=True):
        ax.plot(recall, curve, color=colour, linestyle=style, linewidth=1.3, label=f"{name} {ap:.2f}")
    if len(precision):
        ax.plot(recall, np.mean(precision, axis=0), color="black", linewidth=2.5,
                label=f"all classes {float(np.mean(ap50)):.2f} mAP50")
    ax.set(title="Precision-recall on the held-out split (IoU 0.5)", xlabel="recall", ylabel="precision",
           xlim=(0, 1), ylim=(0, 1.02))
    # Beside the axes: with 17+ classes a legend inside would hide the curves.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), ncol=1 if len(precision) <= 24 else 2,
              title="class, AP50", title_fontsize=7)
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
    fig.savefig(out, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return out
