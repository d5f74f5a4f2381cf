"""The /azaion data tree. Every path the product touches comes from here.

    <root>/data/{images,labels}            validated annotations (dataset input)
    <root>/data-seed/{images,labels}       operator annotations awaiting validation
    <root>/data_deleted/{images,labels}    soft-deleted annotations
    <root>/data-corrupted/{images,labels}  quarantined by label/image checks (+ <stem>.reason.txt)
    <root>/data-processed/{images,labels}  augmentation cache (8 variants per source)
    <root>/queue-rejected/                 undecodable/invalid stream messages (<offset>.bin/.json)
    <root>/queue-state/                    offset.yaml, annotation index (sidecar), locks
    <root>/datasets/azaion-YYYY-MM-DD[-N]/ formed datasets
    <root>/datasets/splits.sqlite3         split registry: source media -> split, kept for good
    <root>/models/                         training runs, azaion.pt, azaion.onnx, publish manifests
    <root>/models/base/                    base weights fetched by `azaion weights pull`
    <root>/models/published/<folder>/      promotion history, pending publish, manifest copies
    <root>/models/cache/, seen-versions.json  fetched big parts; newest version fetched per model
    <root>/analysis/predictions/<onnx sha256[:16]>/imgsz<N>-conf<C>-iou<I>.sqlite3
                                           cached detections of one ONNX, keyed by image sha256 (docs/error-analysis.md)
    <root>/classes.json                    annotation classes
    <root>/backups/<UTC time>/             snapshots of the state (`azaion backup`, docs/backup.md)
"""

import os
import re
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from azaion_training.errors import InputError
from azaion_training.images import is_image_name
from azaion_training.settings import PathSettings

# Annotation names become file stems; anything else is rejected, never sanitised (docs/wire-format.md).
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


SPLITS = ("train", "valid", "test")
DATA_YAML_KEYS = {"train": "train", "valid": "val", "test": "test"}  # data.yaml names them as Ultralytics does
DATASET_NAME = re.compile(r"azaion-(\d{4}-\d{2}-\d{2})(?:-(\d+))?")


def image_files(directory: Path) -> list[Path]:
    """The images in `directory` (images.IMAGE_SUFFIXES; hidden and temp files left out), sorted."""
    if not directory.is_dir():
        return []
    with os.scandir(directory) as entries:
        return sorted(Path(e.path) for e in entries
                      if not e.name.startswith(".") and is_image_name(e.name) and e.is_file())


@dataclass(frozen=True)
class RunDir:
    """A training run's directory: Ultralytics' files (weights/, results.csv, args.yaml) and ours
    (run.json, the checked start weights, export/) (docs/model-registry.md)."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def record(self) -> Path:
        return self.root / "run.json"

    @property
    def weights(self) -> Path:
        return self.root / "weights"

    @property
    def best(self) -> Path:
        return self.weights / "best.pt"

    @property
    def last(self) -> Path:
        return self.weights / "last.pt"

    @property
    def start_weights(self) -> Path:
        return self.root / "start.pt"  # the checked private copy training loads (training/weights.py)

    @property
    def results_csv(self) -> Path:
        return self.root / "results.csv"

    @property
    def args_yaml(self) -> Path:
        return self.root / "args.yaml"

    @property
    def exports(self) -> Path:
        return self.root / "export"


@dataclass(frozen=True)
class DatasetDir:
    """A formed dataset: <split>/{images,labels} for each of SPLITS, manifest.json and data.yaml,
    written last (a dataset without it is incomplete: never used, never the latest)."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def data_yaml(self) -> Path:
        return self.root / "data.yaml"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    def split(self, split: str) -> Area:
        return Area(self.root / split)

    def images(self, split: str) -> list[Path]:
        return image_files(self.split(split).images)

    def is_complete(self) -> bool:
        return self.data_yaml.is_file()

    def create_splits(self) -> None:
        for split in SPLITS:
            for directory in self.split(split).directories():
                directory.mkdir(parents=True)

    def write_data_yaml(self, names: dict[int, str]) -> None:
        import yaml

        from azaion_training.fsutil import atomic_write_text

        data = {"path": str(self.root.absolute()),
                **{DATA_YAML_KEYS[split]: f"{split}/images" for split in SPLITS},
                "nc": len(names), "names": names}
        atomic_write_text(self.data_yaml, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))

    @staticmethod
    def latest(datasets: Path) -> "DatasetDir | None":
        """The newest complete datasets/azaion-YYYY-MM-DD[-N], by its name (date, then number):
        the one training uses when none is named (other names are never "latest")."""
        found = []
        if datasets.is_dir():
            for entry in datasets.iterdir():
                match = DATASET_NAME.fullmatch(entry.name)
                if match and DatasetDir(entry).is_complete():
                    found.append((match.group(1), int(match.group(2) or 1), entry))
        return DatasetDir(max(found)[2]) if found else None


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
        # left by `azaion backup restore`: the consumer resumes after the restored offset, not the broker's
        self.restore_marker = self.queue_state / "restored.yaml"
        self.datasets = self.root / "datasets"
        self.split_registry = self.datasets / "splits.sqlite3"  # sticky splits (dataset/split_registry.py)
        self.models = self.root / "models"
        self.base_weights = self.models / "base"  # `azaion weights pull` (training/weights.py)
        self.base_weights_lock = self.base_weights / "weights.lock.json"  # hashes `weights pull` recorded
        # per resource folder: history.jsonl, pending.json, manifest copies (published_dir; docs/model-registry.md)
        self.published = self.models / "published"
        self.publish_staging = self.models / ".staging"  # a big part between encryption and upload
        self.model_cache = self.models / "cache"  # fetched big parts (CDN_CACHE_DIR overrides it)
        # the newest manifest version fetched per target, folder and name (no silent downgrade)
        self.seen_versions = self.models / "seen-versions.json"
        self.cycle_dir = self.models / "cycle"  # `azaion cycle` (lifecycle/cycle.py)
        self.cycle_state = self.cycle_dir / "state.json"  # the step in progress
        self.cycle_history = self.cycle_dir / "history.jsonl"  # one line per finished cycle
        self.engines = self.models / "engines"  # TensorRT engines built from ONNX, per GPU model
        self.health_reading = self.queue_state / "health-offset.yaml"  # the previous `azaion health` progress reading
        self.health_alert_state = self.queue_state / "health-alert.json"  # checks failing at the last alert
        self.classes_json = self.root / "classes.json"
        self.analysis = self.root / "analysis"  # error analysis (analysis/, docs/error-analysis.md)
        self.predictions = self.analysis / "predictions"  # detections cache, one folder per ONNX
        # the data engine (docs/data-engine.md): ranked likely label errors, frames chosen to annotate next
        self.label_errors = self.analysis / "label-errors"
        self.selections = self.analysis / "selections"
        self.backups = self.root / "backups"  # `azaion backup create`'s default destination (ops/backup.py)

    def areas(self) -> dict[str, Area]:
        return {"data": self.data, "seed": self.seed, "deleted": self.deleted,
                "corrupted": self.corrupted, "processed": self.processed}

    def dataset_dir(self, name: str) -> Path:
        return self.datasets / checked_name(name, "dataset name")

    def model_run_dir(self, name: str) -> Path:
        return self.models / checked_name(name, "run name")

    def published_dir(self, folder: str) -> Path:
        """models/published/<folder>/: the promotion history, the pending-publish intent and the
        local copies of manifests published from this root (docs/model-registry.md)."""
        return self.published / checked_name(folder, "folder")

    def predictions_file(self, onnx_sha256: str, imgsz: int, conf: float, iou: float) -> Path:
        """The detections cache of one ONNX file (by its sha256) run at `imgsz` with detections
        kept down to `conf` and overlaps cleaned at `iou` (analysis/predictions.py)."""
        if not re.fullmatch(r"[0-9a-f]{64}", onnx_sha256):
            raise InputError(f"{onnx_sha256!r} is not a sha256 hex digest")
        return self.predictions / onnx_sha256[:16] / f"imgsz{int(imgsz)}-conf{conf:g}-iou{iou:g}.sqlite3"

    def label_errors_file(self, dataset: str, split: str, onnx_sha256: str) -> Path:
        """`azaion review label-errors`' ranked JSONL of one dataset split judged by one ONNX."""
        return (self.label_errors / f"{checked_name(dataset, 'dataset name')}-{checked_name(split, 'split')}-"
                f"{checked_name(onnx_sha256[:16], 'sha256')}.jsonl")

    def selection_dir(self, name: str) -> Path:
        """`azaion review next`'s chosen frames and their list (frames/, selection.jsonl)."""
        return self.selections / checked_name(name, "selection name")

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
