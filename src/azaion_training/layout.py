"""The /azaion data tree. Every path the product touches comes from here.

    <root>/data/{images,labels}            validated annotations (dataset input)
    <root>/data-seed/{images,labels}       operator annotations awaiting validation
    <root>/data_deleted/{images,labels}    soft-deleted annotations
    <root>/data-corrupted/{images,labels}  quarantined by label/image checks (+ <stem>.reason.txt)
    <root>/data-processed/{images,labels}  augmentation cache (8 variants per source)
    <root>/queue-rejected/                 undecodable/invalid stream messages (<offset>.bin/.json)
    <root>/queue-state/                    offset.yaml, annotation index (sidecar), locks
    <root>/datasets/azaion-YYYY-MM-DD[-N]/ formed datasets
    <root>/models/                         training runs, azaion.pt, azaion.onnx, publish manifests
    <root>/classes.json                    annotation classes
"""

import re
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from azaion_training.errors import InputError
from azaion_training.settings import PathSettings

# Annotation names become file stems; anything else is rejected, never sanitised (design.md §3).
SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")


def is_safe_name(name: object) -> bool:
    return isinstance(name, str) and bool(SAFE_NAME.fullmatch(name)) and not name.startswith(".")


@dataclass(frozen=True)
class Area:
    """A directory holding images/ and labels/ side by side, keyed by annotation name."""

    root: Path

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def labels(self) -> Path:
        return self.root / "labels"

    def label_path(self, name: str) -> Path:
        return self.labels / f"{name}.txt"

    def image_path(self, name: str, extension: str) -> Path:
        return self.images / f"{name}{extension}"

    def find_image(self, name: str) -> Path | None:
        """The stored image of `name`, whatever its extension."""
        for candidate in self.images.glob(f"{glob_escape(name)}.*"):
            if candidate.stem == name and not candidate.name.startswith("."):
                return candidate
        return None

    def directories(self) -> tuple[Path, Path]:
        return self.images, self.labels


class Layout:
    def __init__(self, paths: PathSettings):
        self.root = Path(paths.root_dir).expanduser().absolute()
        self.data = Area(self.root / paths.data_dir)
        self.seed = Area(self.root / paths.data_seed_dir)
        self.deleted = Area(self.root / paths.data_deleted_dir)
        self.corrupted = Area(self.root / "data-corrupted")
        self.processed = Area(self.root / "data-processed")
        self.rejected = self.root / "queue-rejected"
        self.queue_state = self.root / "queue-state"
        self.offset_file = self.queue_state / "offset.yaml"
        self.index_db = self.queue_state / "annotations.sqlite3"
        self.locks = self.queue_state / "locks"
        self.datasets = self.root / "datasets"
        self.models = self.root / "models"
        self.current_pt = self.models / "azaion.pt"
        self.current_onnx = self.models / "azaion.onnx"
        self.classes_json = self.root / "classes.json"

    def areas(self) -> dict[str, Area]:
        return {"data": self.data, "seed": self.seed, "deleted": self.deleted,
                "corrupted": self.corrupted, "processed": self.processed}

    def dataset_dir(self, name: str) -> Path:
        return self.datasets / checked_name(name, "dataset name")

    def model_run_dir(self, name: str) -> Path:
        return self.models / checked_name(name, "run name")

    def lock_file(self, name: str) -> Path:
        return self.locks / f"{checked_name(name, 'lock name')}.lock"

    def inside_root(self, path: Path) -> bool:
        return Path(path).resolve().is_relative_to(self.root.resolve())

    def init(self) -> list[Path]:
        """Create the tree; idempotent, never deletes or overwrites. Returns what it created."""
        created: list[Path] = []
        directories = [d for area in self.areas().values() for d in (area.root, *area.directories())]
        directories += [self.rejected, self.queue_state, self.locks, self.datasets, self.models]
        for directory in directories:
            if not directory.is_dir():
                directory.mkdir(parents=True, exist_ok=True)
                created.append(directory)
        if not self.classes_json.exists():
            with resources.as_file(resources.files("azaion_training") / "resources" / "classes.json") as src:
                shutil.copyfile(src, self.classes_json)
            created.append(self.classes_json)
        return created


def checked_name(name: str, what: str) -> str:
    if not is_safe_name(name):
        raise InputError(f"invalid {what} {name!r}: use 1-200 characters of A-Z a-z 0-9 . _ - "
                         "not starting with '.'")
    return name


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)
