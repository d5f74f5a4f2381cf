"""Counts per split and class of a formed dataset, and a PNG histogram."""

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from azaion_training.classes import model_class_names
from azaion_training.layout import SPLITS, DatasetDir


@dataclass
class DatasetStats:
    path: Path
    images: dict[str, int] = field(default_factory=dict)
    boxes: dict[str, Counter] = field(default_factory=dict)  # split -> class id -> boxes
    unreadable_labels: int = 0

    def classes(self) -> list[int]:
        return sorted(set().union(*self.boxes.values()))

    def to_dict(self) -> dict:
        return {"path": str(self.path), "images": self.images, "unreadable_labels": self.unreadable_labels,
                "boxes": {s: {str(c): n for c, n in sorted(self.boxes[s].items())} for s in SPLITS}}


def dataset_stats(dataset: Path) -> DatasetStats:
    stats, formed = DatasetStats(dataset), DatasetDir(dataset)
    for split in SPLITS:
        stats.images[split] = len(formed.images(split))
        stats.boxes[split] = Counter()
        labels = formed.split(split).labels
        for label in (labels.glob("*.txt") if labels.is_dir() else ()):
            try:
                lines = label.read_text(encoding="utf-8").splitlines()
                stats.boxes[split].update(int(line.split()[0]) for line in lines if line.strip())
            except (OSError, ValueError, UnicodeDecodeError):
                stats.unreadable_labels += 1
    return stats


def stats_table(stats: DatasetStats, classes_json: Path | None):
    from rich.table import Table

    names = model_class_names(classes_json)
    table = Table(title=f"{stats.path.name}")
    table.add_column("class")
    for split in SPLITS:
        table.add_column(split, justify="right")
    table.add_column("total", justify="right")
    table.add_row("[bold]images[/bold]", *(str(stats.images[s]) for s in SPLITS), str(sum(stats.images.values())))
    for cls in stats.classes():
        counts = [stats.boxes[s][cls] for s in SPLITS]
        table.add_row(f"{cls} {names.get(cls, f'Class-{cls}')}", *map(str, counts), str(sum(counts)))
    return table


def write_histogram(stats: DatasetStats, out: Path, classes_json: Path | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = model_class_names(classes_json)
    classes = stats.classes()
    positions = np.arange(len(classes))
    figure, axes = plt.subplots(figsize=(max(6, len(classes) * 0.6), 4.5))
    for offset, split in enumerate(SPLITS):
        axes.bar(positions + (offset - 1) * 0.27, [stats.boxes[split][c] for c in classes], 0.27, label=split)
    axes.set_xticks(positions, [names.get(c, str(c)) for c in classes], rotation=60, ha="right")
    axes.set_ylabel("boxes")
    axes.set_title(f"{stats.path.name}: boxes per class and split")
    axes.legend()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
