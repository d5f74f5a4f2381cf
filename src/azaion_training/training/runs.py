"""Training runs on disk: `models/<run>/` with Ultralytics' files and our `run.json` record.

One owner for reading and finding runs: `azaion train` (new, fine-tune, resume), export's
parity dataset, `azaion status`, `azaion report` and the model registry all go through
`find_run` / `latest_run` (docs/model-registry.md).
"""

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from azaion_training.errors import InputError
from azaion_training.fsutil import atomic_write_text
from azaion_training.layout import Layout, RunDir, is_safe_name

RUN_PREFIX = "azaion-"
RUN_RECORD = "run.json"
RUN_ONNX = "azaion.onnx"  # the name a run's ONNX is published under (and its pre-keyed location)
EXPORT_DIR = "export"  # <run>/export/azaion-<imgsz>-<opset>.onnx: one file per export key


@dataclass
class RunRecord:
    """What `models/<run>/run.json` holds. A directory without run.json (a plain Ultralytics
    run copied in) reads as status "unknown" with only its name and path."""

    run: str
    path: Path
    status: str = "unknown"  # running | interrupted | finished | failed | unknown
    mode: str = "new"  # new (from TRAINING_MODEL) | fine-tune (--from); a resume keeps the mode
    model: str = ""  # the weights or model yaml the run started from
    parent: str | None = None  # the run whose weights a fine-tune started from
    dataset: str | None = None  # dataset directory
    split_generation: int | None = None  # the dataset's split assignment generation (manifest.json)
    epochs: int = 0
    batch: int | None = None
    imgsz: int | None = None
    device: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    started: str | None = None
    ended: str | None = None
    duration_s: float = 0.0
    epochs_done: int = 0
    resumed_from_epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    best: str | None = None
    last: str | None = None
    installed_as: str | None = None
    pid: int | None = None
    error: str | None = None
    onnx: str | None = None  # the ONNX exported last (one of `exports`)
    onnx_sha256: str | None = None
    parity: dict[str, Any] | None = None
    # export key (export_key) -> {"path", "sha256", "imgsz", "opset", "parity"}: ONNX exported once per key
    exports: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def best_weights(self) -> Path:
        return RunDir(self.path).best

    @property
    def last_weights(self) -> Path:
        return RunDir(self.path).last

    @property
    def onnx_path(self) -> Path:
        """The ONNX exported last (before keyed exports: <run>/azaion.onnx)."""
        return Path(self.onnx) if self.onnx else self.path / RUN_ONNX

    @property
    def trained_imgsz(self) -> int | None:
        """The image size the run trained at (its record, else Ultralytics' args.yaml)."""
        if self.imgsz:
            return int(self.imgsz)
        args = RunDir(self.path).args_yaml
        if args.is_file():
            import yaml

            try:
                value = (yaml.safe_load(args.read_text(encoding="utf-8")) or {}).get("imgsz")
            except yaml.YAMLError:
                return None
            return int(value) if isinstance(value, int) else None
        return None

    def export_file(self, imgsz: int, opset: int | None) -> Path:
        return self.path / EXPORT_DIR / f"azaion-{imgsz}-{export_key_opset(opset)}.onnx"

    def onnx_with_sha256(self, sha256: str) -> Path | None:
        """The run's ONNX file whose recorded sha256 is `sha256` (what a promotion published)."""
        candidates = [Path(e["path"]) for e in self.exports.values() if e.get("sha256") == sha256]
        if self.onnx_sha256 == sha256:
            candidates.append(self.onnx_path)
        return next((p for p in candidates if p.is_file()), None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data

    def save(self) -> None:
        atomic_write_text(self.path / RUN_RECORD, json.dumps(self.to_dict(), indent=2, default=str) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> "RunRecord":
        try:
            data = json.loads((run_dir / RUN_RECORD).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            data = {}
        known = {f.name for f in fields(cls)} - {"run", "path"}
        return cls(run=run_dir.name, path=run_dir, **{k: v for k, v in data.items() if k in known})

    def sort_key(self) -> float:
        """When the run started (its record), else when its directory last changed."""
        if self.started:
            try:
                return datetime.fromisoformat(self.started).timestamp()
            except ValueError:
                pass
        return self.path.stat().st_mtime


def export_key_opset(opset: int | None) -> str:
    return f"opset{opset}" if opset else "opset-default"


def export_key(imgsz: int, opset: int | None) -> str:
    """What makes two ONNX exports of one run the same: the image size and the ONNX opset asked
    for (None: the pinned Ultralytics' default)."""
    return f"onnx-{imgsz}-{export_key_opset(opset)}"


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and ((path / RUN_RECORD).is_file() or RunDir(path).results_csv.is_file())


def list_runs(layout: Layout) -> list[RunRecord]:
    """Every run under models/, oldest first."""
    if not layout.models.is_dir():
        return []
    runs = [RunRecord.load(p) for p in layout.models.iterdir() if not p.name.startswith(".") and is_run_dir(p)]
    return sorted(runs, key=lambda r: (r.sort_key(), r.run))


def latest_run(layout: Layout, status: str | None = None) -> RunRecord | None:
    """The run started last (with that status, when given)."""
    runs = [r for r in list_runs(layout) if status is None or r.status == status]
    return runs[-1] if runs else None


def find_run(layout: Layout, ref: str | Path | None) -> RunRecord:
    """A run by name under models/ or by directory path; the latest run when `ref` is None."""
    if ref is None:
        latest = latest_run(layout)
        if latest is None:
            raise InputError(f"no training run in {layout.models}: start one with `azaion train`")
        return latest
    text = str(ref)
    if is_safe_name(text) and is_run_dir(layout.models / text):
        return RunRecord.load(layout.models / text)
    path = Path(text).expanduser()
    if is_run_dir(path):
        return RunRecord.load(path.absolute())
    raise InputError(f"training run {text!r} not found: give a run name under {layout.models} "
                     "(see `azaion models list`) or a run directory")


def run_of_weights(layout: Layout, weights: Path) -> RunRecord | None:
    """The run a weights file belongs to: `<run>/weights/*.pt`."""
    weights = Path(weights).expanduser().absolute()
    run_dir = weights.parent.parent
    if weights.parent.name == "weights" and is_run_dir(run_dir):
        return RunRecord.load(run_dir)
    return None
