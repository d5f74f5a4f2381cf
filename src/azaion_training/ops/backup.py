"""`azaion backup`: snapshots of the state that cannot be recreated, their checks and their restore
(docs/backup.md).

A snapshot is a directory `<destination>/<UTC time>/` (or the same under `s3://bucket/prefix/`):

    files/<path under the root>   the copies: SQLite databases through SQLite's online backup API
                                  (consistent while the consumer writes), everything else as read
    SHA256SUMS                    `sha256sum -c` format, for checking by hand
    snapshot.json                 format, created, host, root, stream offset, every file with size
                                  and sha256; written last (a local snapshot is built under a
                                  `.tmp-` name and renamed; an upload sends it last), so a snapshot
                                  without it is incomplete and never listed

What goes in (`snapshot_plan` below; the paths are fixed by layout.py): the split registry, the
annotation index and offset.yaml, the promotion and cycle histories, published manifests, run
records (every small file of a run directory, no weights), dataset manifests and classes.json.
`--with-weights` adds weights/*.pt, ONNX files and the current model; `--with-data` the
annotation areas and queue-rejected/. Never config.yaml or .env: they hold the secrets and are
not under the root.

Consistency while the consumer runs: offset.yaml is read first, then the index is copied through
the backup API (so the index's `last_offset` is the resume position and never runs behind the
files); with `--with-data` each annotation's files are placed in the area the copied index names
(its state at that offset), taking their content as found (at least that new). After a restore the
consumer replays from that offset; replays are idempotent, so the tree converges to what the
stream says, exactly once. A restore leaves `queue-state/restored.yaml` (layout.restore_marker),
which tells the consumer to resume after the restored offset rather than the broker's stored one
(which may be past what the restored tree holds) until it has overwritten the broker's copy.
"""

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from azaion_training.errors import AzaionError, ConfigError, InputError, OperationFailed
from azaion_training.fsutil import TEMP_PREFIX, atomic_writer, file_size_sha256, fsync_dir, make_durable
from azaion_training.layout import Layout, is_safe_name
from azaion_training.locks import InstanceLock
from azaion_training.logs import get_logger, log
from azaion_training.progress import Progress
from azaion_training.queue.offsets import read_offset_record, write_offset_record
from azaion_training.settings import BackupSettings, Settings, overridden, require_secret

logger = get_logger("backup")

FORMAT = 1
KIND = "azaion-backup"
SNAPSHOT_JSON = "snapshot.json"
CHECKSUMS = "SHA256SUMS"
FILES = "files"
SMALL_FILE_MAX = 4 << 20  # run and publish directories: files up to this size (plots, records); weights aside
MODEL_SUFFIXES = (".pt", ".onnx", ".engine", ".rknn", ".torchscript", ".tflite", ".big", ".small")
CHUNK = 1 << 20
STALE_UPLOAD_S = 24 * 3600  # an s3 snapshot without snapshot.json older than this is a dead upload
SHOWN = 10  # problems listed in one message
# Every lock a writer of the state holds (their owners: queue/consumer.py, training/train.py,
# lifecycle/promote.py, lifecycle/cycle.py): a restore takes them all, so none of them can run meanwhile.
STATE_LOCKS = {"consumer": "annotation consumer", "training": "training run",
               "promotion": "promotion or rollback", "cycle": "training cycle"}
# Annotation areas under their default names in a snapshot, whatever AZAION_DATA_DIR & co. say on either side.
AREA_PREFIXES = {"data": "data", "seed": "data-seed", "deleted": "data_deleted", "corrupted": "data-corrupted"}
INDEX_AREAS = ("data", "seed", "deleted")  # the areas the annotation index places names in
QUEUE_STATE_FILES = ("queue-state/annotations.sqlite3", "queue-state/offset.yaml")
SQLITE_FILES = ("queue-state/annotations.sqlite3", "datasets/splits.sqlite3")
# What a snapshot may hold: a restore writes nothing else (every path component must also be a
# safe name, so nothing leaves the root).
_ALLOWED = tuple(re.compile(pattern) for pattern in (
    r"queue-state/(annotations\.sqlite3|offset\.yaml)",
    r"datasets/splits\.sqlite3",
    r"datasets/[^/]+/manifest\.json",
    r"models/published/.+",
    r"models/cycle/history\.jsonl",
    r"models/[^/]+\.(pt|onnx)",
    r"models/[^/]+/[^/]+",
    r"models/[^/]+/weights/[^/]+\.pt",
    r"classes\.json",
    r"(data|data-seed|data_deleted|data-corrupted)/(images|labels)/[^/]+",
    r"data-corrupted/[^/]+\.reason\.txt",
    r"queue-rejected/[^/]+",
))
# Present in a root, these mean it already has a life of its own: a restore refuses to mix.
_LIVE_PATTERNS = tuple(re.compile(pattern) for pattern in (
    r"queue-state/(annotations\.sqlite3|offset\.yaml)", r"datasets/splits\.sqlite3",
    r"models/published/[^/]+/history\.jsonl", r"models/cycle/history\.jsonl", r"models/[^/]+/run\.json",
))
_NAME_FORMAT = "%Y%m%dT%H%M%SZ"


# ---------------------------------------------------------------- where snapshots live


@dataclass(frozen=True)
class Destination:
    """A local directory or `s3://bucket/prefix` holding snapshots side by side."""

    directory: Path | None = None
    bucket: str | None = None
    prefix: str = ""

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    def __str__(self) -> str:
        if self.is_s3:
            return f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return str(self.directory)


def parse_destination(settings: Settings, text: str | None) -> Destination:
    """`text` (an option), else BACKUP_DESTINATION, else <root>/backups."""
    layout = Layout(settings.paths)
    text = (text if text is not None else settings.backup.destination).strip()
    if not text:
        return Destination(layout.backups)
    if text.startswith("s3://"):
        bucket, _, prefix = text.removeprefix("s3://").partition("/")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise InputError(f"backup destination {text!r}: {bucket!r} is not an S3 bucket name; "
                             "use s3://BUCKET/PREFIX (3-63 characters of a-z 0-9 . -)")
        prefix = prefix.strip("/")
        if prefix and not all(is_safe_name(part) for part in prefix.split("/")):
            raise InputError(f"backup destination {text!r}: the prefix may hold only / and A-Z a-z 0-9 . _ - "
                             "(no part starting with '.')")
        return Destination(bucket=bucket, prefix=prefix)
    directory = Path(text).expanduser().absolute()
    if layout.inside_root(directory) and not directory.resolve().is_relative_to(layout.backups.resolve()):
        raise InputError(f"backup destination {directory} is inside the data root {layout.root}: use "
                         f"{layout.backups} (the default) or a directory outside the root, better on another disk")
    return Destination(directory)


class S3Snapshots:
    """Snapshots under s3://bucket/prefix with the BACKUP_S3_* credentials: a bucket of their own,
    apart from the model CDN, whose keys come from the platform and only serve models. Built like
    distribution/cdn.py's clients (path-style addressing, standard retries, bounded timeouts)."""

    def __init__(self, backup: BackupSettings, destination: Destination):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        if not backup.s3_endpoint:
            raise ConfigError(f"backup destination {destination} is on S3 but BACKUP_S3_ENDPOINT is not set: set it "
                              "(e.g. https://s3.eu-central-1.amazonaws.com or your MinIO URL) with "
                              "BACKUP_S3_ACCESS_KEY and BACKUP_S3_SECRET_KEY")
        if not backup.s3_access_key:
            raise ConfigError("BACKUP_S3_ACCESS_KEY is not set: S3 backups need BACKUP_S3_ACCESS_KEY and "
                              "BACKUP_S3_SECRET_KEY (a key pair allowed to list, read, write and delete in the bucket)")
        secret = require_secret(backup.s3_secret_key, "BACKUP_S3_SECRET_KEY")
        self.bucket, self.prefix, self.endpoint = destination.bucket, destination.prefix, backup.s3_endpoint
        config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"},
                        connect_timeout=10, read_timeout=60)
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=backup.s3_endpoint, aws_access_key_id=backup.s3_access_key,
            aws_secret_access_key=secret, region_name=backup.s3_region, config=config)
        self.transfer = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20)

    def __repr__(self) -> str:
        return f"S3Snapshots(endpoint={self.endpoint!r}, bucket={self.bucket!r}, prefix={self.prefix!r})"

    def key(self, *parts: str) -> str:
        return "/".join(part for part in (self.prefix, *parts) if part)

    def _failed(self, what: str, key: str, exc: Exception) -> OperationFailed:
        response = getattr(exc, "response", None)
        if isinstance(response, dict) and "Error" in response:
            reason = f"{response['Error'].get('Code', '?')}: {response['Error'].get('Message', '')}".strip()
        else:
            reason = f"{type(exc).__name__}: {exc}"
        return OperationFailed(f"S3 {what} of s3://{self.bucket}/{key} at {self.endpoint} failed ({reason}); "
                               "check BACKUP_S3_ENDPOINT, the bucket and the rights of BACKUP_S3_ACCESS_KEY")

    def upload(self, source: Path, key: str) -> None:
        try:
            self.client.upload_file(str(source), self.bucket, key, Config=self.transfer)
        except Exception as exc:
            raise self._failed("upload", key, exc) from None

    def download(self, key: str, target: Path) -> None:
        try:
            with atomic_writer(target, durable=False) as handle:
                self.client.download_fileobj(self.bucket, key, handle, Config=self.transfer)
        except Exception as exc:
            raise self._failed("download", key, exc) from None

    def read(self, key: str) -> bytes | None:
        """An object's bytes; None when there is no such object."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._failed("read", key, exc) from None

    def _pages(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        try:
            yield from self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, **kwargs)
        except Exception as exc:
            raise self._failed("listing", kwargs.get("Prefix", ""), exc) from None

    def names(self) -> list[str]:
        """The snapshot folders under the prefix (complete or not)."""
        prefix = self.key("") + "/" if self.prefix else ""
        found = []
        for page in self._pages(Prefix=prefix, Delimiter="/"):
            found += [entry["Prefix"][len(prefix):].rstrip("/") for entry in page.get("CommonPrefixes", ())]
        return sorted(name for name in found if is_safe_name(name))

    def objects(self, name: str) -> list[dict[str, Any]]:
        objects = []
        for page in self._pages(Prefix=self.key(name) + "/"):
            objects += page.get("Contents", ())
        return objects

    def delete(self, name: str) -> None:
        """Every object of one snapshot, snapshot.json first (it is never listed again)."""
        keys = [entry["Key"] for entry in self.objects(name)]
        keys.sort(key=lambda key: not key.endswith("/" + SNAPSHOT_JSON))
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            try:
                self.client.delete_objects(Bucket=self.bucket,
                                           Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True})
            except Exception as exc:
                raise self._failed("delete", batch[0], exc) from None


# ---------------------------------------------------------------- snapshot contents


@dataclass
class SnapshotFile:
    path: str  # under the root, '/'-separated, areas under their default names (AREA_PREFIXES)
    size: int
    sha256: str
    sqlite: bool = False


@dataclass
class SnapshotInfo:
    name: str
    location: str
    created: str
    host: str
    root: str
    files: int
    bytes: int
    with_weights: bool
    with_data: bool
    stream: str | None
    offset: int | None

    @classmethod
    def from_meta(cls, meta: dict[str, Any], location: str) -> "SnapshotInfo":
        files = meta.get("files", [])
        return cls(name=str(meta.get("name")), location=location, created=str(meta.get("created")),
                   host=str(meta.get("host")), root=str(meta.get("root")), files=len(files),
                   bytes=sum(int(f.get("size", 0)) for f in files), with_weights=bool(meta.get("with_weights")),
                   with_data=bool(meta.get("with_data")), stream=meta.get("stream"), offset=meta.get("offset"))

    def created_at(self) -> datetime | None:
        try:
            value = datetime.fromisoformat(self.created)
        except ValueError:
            return None
        return value if value.tzinfo else value.replace(tzinfo=UTC)


def allowed_path(path: str) -> bool:
    """Whether `path` is a place a snapshot may restore to (and is a plain relative path)."""
    parts = path.split("/")
    return (all(is_safe_name(part) for part in parts)
            and any(pattern.fullmatch(path) for pattern in _ALLOWED))


def _area_roots(layout: Layout) -> dict[str, Path]:
    """Snapshot prefix -> the directory it stands for in `layout`."""
    return {AREA_PREFIXES[key]: area.root for key, area in layout.areas().items() if key in AREA_PREFIXES}


def root_path(layout: Layout, path: str) -> Path:
    """Where a snapshot path lives under `layout`'s root."""
    head, _, rest = path.partition("/")
    areas = _area_roots(layout)
    return areas[head] / rest if head in areas and rest else layout.root / path


def _visible_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    with os.scandir(directory) as entries:
        return sorted(Path(e.path) for e in entries if not e.name.startswith(".") and e.is_file(follow_symlinks=False))


def _small(path: Path) -> bool:
    try:
        return path.stat().st_size <= SMALL_FILE_MAX
    except FileNotFoundError:  # removed since it was listed (a run writing its plots)
        return False


def _run_files(run_dir: Path, with_weights: bool) -> list[Path]:
    files = [p for p in _visible_files(run_dir)
             if (p.suffix.lower() in MODEL_SUFFIXES and with_weights)
             or (p.suffix.lower() not in MODEL_SUFFIXES and _small(p))]
    if with_weights:
        files += [p for p in _visible_files(run_dir / "weights") if p.suffix == ".pt"]
    return files


def _state_files(layout: Layout, with_weights: bool) -> list[tuple[str, Path]]:
    """(snapshot path, source) of everything but the queue state, the split registry and the data."""
    from azaion_training.training.runs import is_run_dir

    def rel(path: Path) -> str:
        return path.relative_to(layout.root).as_posix()

    found: list[tuple[str, Path]] = []
    published = layout.models / "published"
    if published.is_dir():
        for path in sorted(published.rglob("*")):
            relative = path.relative_to(published).parts
            if (path.is_file() and not path.is_symlink() and not any(p.startswith(".") for p in relative)
                    and (path.suffix.lower() not in MODEL_SUFFIXES or with_weights) and _small(path)):
                found.append((rel(path), path))
    cycle_history = layout.models / "cycle" / "history.jsonl"
    if cycle_history.is_file():
        found.append((rel(cycle_history), cycle_history))
    if layout.models.is_dir():
        for run_dir in sorted(p for p in layout.models.iterdir() if not p.name.startswith(".")):
            if run_dir.name not in ("published", "cycle", "base", "cache", "engines") and is_run_dir(run_dir):
                found += [(rel(p), p) for p in _run_files(run_dir, with_weights)]
        if with_weights:
            found += [(rel(p), p) for p in _visible_files(layout.models) if p.suffix.lower() in (".pt", ".onnx")]
    if layout.datasets.is_dir():
        for dataset in sorted(p for p in layout.datasets.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if (dataset / "manifest.json").is_file():
                found.append((rel(dataset / "manifest.json"), dataset / "manifest.json"))
    if layout.classes_json.is_file():
        found.append((rel(layout.classes_json), layout.classes_json))
    return [(path, source) for path, source in found if allowed_path(path)]


# ---------------------------------------------------------------- copying


def _copy(source: Path, target: Path, whole_lines: bool = False) -> tuple[int, str] | None:
    """Copy `source` to `target` (a new file in a snapshot being built), hashing on the way; None
    when `source` went away. `whole_lines`: stop after the last newline (an append-only JSON-lines
    file may be caught mid-append)."""
    try:
        handle = source.open("rb")
    except FileNotFoundError:
        return None
    digest, size = hashlib.sha256(), 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with handle, target.open("wb") as out:
        if whole_lines:
            data = handle.read()
            data = data[:data.rfind(b"\n") + 1]
            out.write(data)
            digest.update(data)
            return len(data), digest.hexdigest()
        while chunk := handle.read(CHUNK):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _sqlite_uri(path: Path, mode: str) -> str:
    return f"{path.absolute().as_uri()}?mode={mode}"


def sqlite_problem(path: Path) -> str | None:
    """None when `path` is an SQLite database that passes PRAGMA integrity_check, else why not.
    Opened read-only and immutable: checking never changes the file or adds -wal/-shm files."""
    try:
        db = sqlite3.connect(_sqlite_uri(path, "ro") + "&immutable=1", uri=True)
    except sqlite3.Error as exc:
        return f"cannot be opened as SQLite ({exc})"
    try:
        rows = [row[0] for row in db.execute("PRAGMA integrity_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        return f"PRAGMA integrity_check failed: {exc}"
    finally:
        db.close()
    return None if rows == ["ok"] else "PRAGMA integrity_check: " + "; ".join(map(str, rows[:3]))


def _backup_sqlite(source: Path, target: Path) -> tuple[int, str]:
    """A consistent copy of a live database (SQLite's online backup API: one read transaction, so
    writers in WAL mode carry on), stored in rollback-journal mode so the copy is one self-contained
    file; it must pass integrity_check."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:  # read-write where we may (the last connection to close tidies the WAL away), else read-only
        src = sqlite3.connect(_sqlite_uri(source, "rw" if os.access(source, os.W_OK) else "ro"), uri=True, timeout=60)
    except sqlite3.Error as exc:
        raise OperationFailed(f"cannot open {source} to back it up ({exc}): check it exists and is readable") from None
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise OperationFailed(f"cannot back up {source}: {exc}; the database may be damaged "
                              "(restore it from an earlier snapshot)") from None
    finally:
        src.close()
    problem = sqlite_problem(target)
    if problem:
        raise OperationFailed(f"{source} is damaged ({problem}): the backup stopped; restore it from an earlier "
                              "snapshot (`azaion backup list`, docs/backup.md)")
    return file_size_sha256(target)


# ---------------------------------------------------------------- create


@dataclass
class CreateResult:
    name: str
    location: str
    files: int
    bytes: int
    stream: str | None
    offset: int | None
    with_weights: bool
    with_data: bool
    seconds: float
    pruned: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Builder:
    """Fills a snapshot directory (FILES/...) and records each file."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.files: dict[str, SnapshotFile] = {}

    def target(self, path: str) -> Path:
        return self.directory / FILES / path

    def add(self, path: str, copied: tuple[int, str] | None, sqlite: bool = False) -> bool:
        if copied is None:
            return False
        self.files[path] = SnapshotFile(path, copied[0], copied[1], sqlite)
        return True

    def copy(self, path: str, source: Path, whole_lines: bool = False) -> bool:
        if path in self.files:
            return True
        return self.add(path, _copy(source, self.target(path), whole_lines))


def _offset_now(layout: Layout, stream: str) -> tuple[str | None, int | None]:
    record = read_offset_record(layout.offset_file)
    return (record.stream or stream, record.offset) if record else (None, None)


def _index_rows(index_copy: Path) -> dict[str, tuple[str, str | None]]:
    """name -> (area, image extension) from the copied (consistent) annotation index."""
    if not index_copy.is_file():
        return {}
    db = sqlite3.connect(_sqlite_uri(index_copy, "ro") + "&immutable=1", uri=True)
    try:
        rows = db.execute("SELECT name, area, image_ext FROM annotations").fetchall()
    finally:
        db.close()
    return {name: (area, ext) for name, area, ext in rows if area in INDEX_AREAS}


def _copy_data(builder: _Builder, layout: Layout, index: dict[str, tuple[str, str | None]]) -> None:
    """The annotation areas and queue-rejected/, each annotation placed where the copied index says
    (see the module docstring), then data-corrupted/ and queue-rejected/ as they are."""
    areas = layout.areas()
    prefix = {key: AREA_PREFIXES[key] for key in INDEX_AREAS}
    with Progress("backup: annotation files", None) as progress:
        # data-corrupted first: a pair quarantined while we walk is then still found in data/ or by the
        # second pass below, and never copied twice
        corrupted = layout.corrupted
        for source in _visible_files(corrupted.root) + _visible_files(corrupted.images) + _visible_files(
                corrupted.labels):
            builder.copy(f"data-corrupted/{source.relative_to(corrupted.root).as_posix()}", source)
            progress.advance()
        for key in INDEX_AREAS:
            area = areas[key]
            for kind, directory in (("images", area.images), ("labels", area.labels)):
                for source in _visible_files(directory):
                    name = os.path.splitext(source.name)[0]  # <name>.txt, <name>.<image extension>
                    home = prefix[index[name][0]] if name in index else prefix[key]
                    builder.copy(f"{home}/{kind}/{source.name}", source)
                    progress.advance()
        # names the index places but the walk missed (moved between areas while we walked); one that
        # formation quarantined meanwhile stays in data-corrupted/, as formation decided
        homes = {*prefix.values(), AREA_PREFIXES["corrupted"]}
        have = {path.rsplit("/", 1)[1] for path in builder.files if path.split("/", 1)[0] in homes}
        for name, (area_key, ext) in index.items():
            label, image = f"{name}.txt", f"{name}{ext}" if ext else None
            if label in have and (image is None or image in have):
                continue
            for candidate, home in (*((areas[k], prefix[area_key]) for k in INDEX_AREAS),
                                    (corrupted, AREA_PREFIXES["corrupted"])):
                if label not in have and builder.copy(f"{home}/labels/{label}", candidate.label_path(name)):
                    have.add(label)
                found = candidate.find_image(name) if image is not None and image not in have else None
                if found is not None and builder.copy(f"{home}/images/{found.name}", found):
                    have.add(found.name)
        for source in _visible_files(layout.rejected):
            builder.copy(f"queue-rejected/{source.name}", source)
            progress.advance()


def _new_name(existing: Iterable[str]) -> str:
    taken = set(existing)
    base = datetime.now(UTC).strftime(_NAME_FORMAT)
    name, number = base, 1
    while name in taken:
        number += 1
        name = f"{base}-{number}"
    return name


def _write_meta(builder: _Builder, meta: dict[str, Any]) -> None:
    lines = "".join(f"{f.sha256}  {FILES}/{f.path}\n" for f in sorted(builder.files.values(), key=lambda f: f.path))
    (builder.directory / CHECKSUMS).write_text(lines, encoding="utf-8")
    (builder.directory / SNAPSHOT_JSON).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n",
                                                   encoding="utf-8")


def _build(settings: Settings, directory: Path, name: str, with_weights: bool, with_data: bool) -> dict[str, Any]:
    """Fill `directory` with a snapshot of the root; returns its snapshot.json data."""
    layout = Layout(settings.paths)
    if not layout.root.is_dir():
        raise InputError(f"data root {layout.root} does not exist: set AZAION_ROOT_DIR (nothing to back up)")
    builder = _Builder(directory)
    stream, offset = _offset_now(layout, settings.rabbitmq.queue_name)
    # offset.yaml before the index: the index's last_offset is then >= it, and is where a restored consumer resumes
    builder.copy("queue-state/offset.yaml", layout.offset_file)
    for path, source in (("queue-state/annotations.sqlite3", layout.index_db),
                         ("datasets/splits.sqlite3", layout.split_registry)):
        if source.is_file():
            builder.add(path, _backup_sqlite(source, builder.target(path)), sqlite=True)
    index_copy = builder.target("queue-state/annotations.sqlite3")
    if index_copy.is_file():
        db = sqlite3.connect(_sqlite_uri(index_copy, "ro") + "&immutable=1", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE key='last_offset'").fetchone()
        finally:
            db.close()
        if row is not None and str(row[0]).lstrip("-").isdigit():
            offset = max(int(row[0]), offset if offset is not None else int(row[0]))
    for path, source in _state_files(layout, with_weights):
        # JSON lines and CSV are appended to (histories, a training run's results.csv): whole lines only
        builder.copy(path, source, whole_lines=path.endswith((".jsonl", ".csv")))
    if with_data:
        _copy_data(builder, layout, _index_rows(index_copy))
    from importlib.metadata import PackageNotFoundError, version

    try:
        package_version = version("azaion-training")
    except PackageNotFoundError:
        package_version = None
    files = sorted(builder.files.values(), key=lambda f: f.path)
    meta = {"kind": KIND, "format": FORMAT, "name": name, "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": socket.gethostname(), "root": str(layout.root), "azaion_version": package_version,
            "stream": stream or (settings.rabbitmq.queue_name if offset is not None else None), "offset": offset,
            "with_weights": with_weights, "with_data": with_data,
            "areas": {key: layout.areas()[key].root.name for key in AREA_PREFIXES},
            "files": [asdict(f) for f in files]}
    _write_meta(builder, meta)
    return meta


@contextlib.contextmanager
def _destination_lock(destination: Destination) -> Iterator[None]:
    """One create or prune at a time per local destination (its `.lock`); S3 has no lock."""
    if destination.directory is None:
        yield
        return
    destination.directory.mkdir(parents=True, exist_ok=True)
    with InstanceLock(destination.directory / ".lock", "backup (create or prune)"):
        yield


def _staging(layout: Layout, purpose: str) -> Path:
    """A private work directory under <root>/backups/ (same disk as the root, not a small /tmp)."""
    layout.backups.mkdir(parents=True, exist_ok=True)
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{purpose}-", dir=layout.backups))


def create_snapshot(settings: Settings, to: str | None = None, with_weights: bool = False, with_data: bool = False,
                    keep: int | None = None) -> CreateResult:
    """Write one snapshot to `to` (default BACKUP_DESTINATION, else <root>/backups); then keep the
    newest `keep` (default BACKUP_KEEP; 0 keeps all)."""
    started = time.monotonic()
    destination = parse_destination(settings, to)
    keep = settings.backup.keep if keep is None else keep
    layout = Layout(settings.paths)
    with _destination_lock(destination):
        if destination.directory is not None:
            _remove_stale_temp_dirs(destination.directory)
            name = _new_name(p.name for p in destination.directory.iterdir())
            work = destination.directory / f"{TEMP_PREFIX}{name}"
            work.mkdir()
            try:
                meta = _build(settings, work, name, with_weights, with_data)
                files = [work / SNAPSHOT_JSON, work / CHECKSUMS, *(work / FILES / f["path"] for f in meta["files"])]
                make_durable(work, files, [work, *(p for p in work.rglob("*") if p.is_dir())])
                os.rename(work, destination.directory / name)
                fsync_dir(destination.directory)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
            location = str(destination.directory / name)
        else:
            store = S3Snapshots(settings.backup, destination)
            name = _new_name(store.names())
            work = _staging(layout, "s3")
            try:
                meta = _build(settings, work, name, with_weights, with_data)
                with Progress(f"backup: upload to {destination}", len(meta["files"])) as progress:
                    for entry in meta["files"]:
                        store.upload(work / FILES / entry["path"], store.key(name, FILES, entry["path"]))
                        progress.advance()
                store.upload(work / CHECKSUMS, store.key(name, CHECKSUMS))
                store.upload(work / SNAPSHOT_JSON, store.key(name, SNAPSHOT_JSON))  # last: the snapshot is complete
            finally:
                shutil.rmtree(work, ignore_errors=True)
            location = f"{destination}/{name}"
        result = CreateResult(name, location, len(meta["files"]), sum(f["size"] for f in meta["files"]),
                              meta["stream"], meta["offset"], with_weights, with_data,
                              round(time.monotonic() - started, 2))
        log(logger, logging.INFO, "backup snapshot written", **{k: v for k, v in result.as_dict().items()
                                                                 if k != "pruned"})
        if keep:
            result.pruned = _prune(settings, destination, keep)
    return result


def _remove_stale_temp_dirs(directory: Path) -> None:
    """Half-built snapshots of a create that died (never listed: their names start with .tmp-)."""
    for entry in directory.iterdir():
        if entry.name.startswith(TEMP_PREFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            log(logger, logging.INFO, "removed an incomplete snapshot left by an interrupted backup", path=str(entry))


# ---------------------------------------------------------------- list, prune


def _read_meta(directory: Path) -> dict[str, Any]:
    path = directory / SNAPSHOT_JSON
    if not path.is_file():
        raise InputError(f"{directory} is not a backup snapshot (no {SNAPSHOT_JSON}; an interrupted backup leaves "
                         "none): give a snapshot from `azaion backup list`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise OperationFailed(f"{path} is damaged ({type(exc).__name__}): the snapshot cannot be trusted; "
                              "use another one") from None
    return _checked_meta(meta, str(path))


def _checked_meta(meta: Any, origin: str) -> dict[str, Any]:
    if not isinstance(meta, dict) or meta.get("kind") != KIND or not isinstance(meta.get("files"), list):
        raise OperationFailed(f"{origin} is not an azaion backup manifest (kind {KIND!r} with a file list): "
                              "the snapshot is damaged or foreign")
    if not isinstance(meta.get("format"), int) or meta["format"] > FORMAT:
        raise InputError(f"{origin} has format {meta.get('format')!r}; this azaion reads format {FORMAT} "
                         "and older: restore with the release that wrote it, or upgrade")
    for entry in meta["files"]:
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("size"), int)
                and isinstance(entry.get("sha256"), str)):
            raise OperationFailed(f"{origin}: a file entry lacks path, size or sha256: the snapshot is damaged")
    return meta


def list_snapshots(settings: Settings, at: str | None = None) -> list[SnapshotInfo]:
    """The complete snapshots at `at` (default: the configured destination), oldest first."""
    destination = parse_destination(settings, at)
    found: list[SnapshotInfo] = []
    if destination.directory is not None:
        if not destination.directory.is_dir():
            return []
        for entry in sorted(destination.directory.iterdir()):
            if entry.name.startswith(".") or not (entry / SNAPSHOT_JSON).is_file():
                continue
            try:
                found.append(SnapshotInfo.from_meta(_read_meta(entry), str(entry)))
            except AzaionError as exc:
                log(logger, logging.WARNING, "skipping a snapshot with an unreadable snapshot.json", path=str(entry),
                    error=str(exc))
    else:
        store = S3Snapshots(settings.backup, destination)
        for name in store.names():
            data = store.read(store.key(name, SNAPSHOT_JSON))
            if data is None:
                continue  # an upload in progress, or one that died (prune removes it after a day)
            try:
                meta = _checked_meta(json.loads(data), f"{destination}/{name}/{SNAPSHOT_JSON}")
            except (ValueError, AzaionError) as exc:
                log(logger, logging.WARNING, "skipping a snapshot with an unreadable snapshot.json",
                    path=f"{destination}/{name}", error=str(exc))
                continue
            found.append(SnapshotInfo.from_meta(meta, f"{destination}/{name}"))
    return sorted(found, key=lambda s: (s.created_at() or datetime.min.replace(tzinfo=UTC), s.name))


def prune_snapshots(settings: Settings, keep: int, at: str | None = None) -> list[str]:
    """Delete all but the newest `keep` snapshots at `at`; returns the names removed."""
    destination = parse_destination(settings, at)
    with _destination_lock(destination):
        return _prune(settings, destination, keep)


def _prune(settings: Settings, destination: Destination, keep: int) -> list[str]:
    if keep < 1:
        raise InputError(f"--keep {keep}: keep at least 1 snapshot (pruning to none would delete every backup)")
    snapshots = list_snapshots(settings, str(destination))
    doomed = snapshots[:-keep]
    removed = []
    if destination.directory is not None:
        for info in doomed:
            path = Path(info.location)
            hidden = path.with_name(f"{TEMP_PREFIX}prune-{path.name}")
            os.rename(path, hidden)  # no longer listed, whatever happens to the rest
            fsync_dir(path.parent)
            shutil.rmtree(hidden)
            removed.append(info.name)
    else:
        store = S3Snapshots(settings.backup, destination)
        for info in doomed:
            store.delete(info.name)
            removed.append(info.name)
        complete = {info.name for info in snapshots}
        for name in store.names():
            objects = store.objects(name)
            newest = max((o["LastModified"].timestamp() for o in objects), default=0)
            if name not in complete and time.time() - newest > STALE_UPLOAD_S:
                store.delete(name)
                log(logger, logging.INFO, "removed an incomplete upload", snapshot=f"{destination}/{name}")
    if removed:
        log(logger, logging.INFO, "pruned backup snapshots", kept=min(keep, len(snapshots)), removed=removed,
            destination=str(destination))
    return removed


# ---------------------------------------------------------------- verify


@dataclass
class VerifyResult:
    snapshot: str
    name: str
    files: int
    bytes: int
    damaged: list[str]  # "path: what is wrong"

    @property
    def ok(self) -> bool:
        return not self.damaged

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def verify_directory(directory: Path) -> tuple[dict[str, Any], VerifyResult]:
    """Re-hash every file against snapshot.json and integrity_check every SQLite file."""
    meta = _read_meta(directory)
    damaged = []
    total = 0
    with Progress(f"verify {directory.name}", len(meta["files"])) as progress:
        for entry in meta["files"]:
            path, copy = entry["path"], directory / FILES / entry["path"]
            total += entry["size"]
            progress.advance()
            if not allowed_path(path):
                damaged.append(f"{path}: not a place a backup restores to (a damaged or forged snapshot.json)")
                continue
            if copy.is_symlink() or not copy.is_file():
                damaged.append(f"{path}: missing from the snapshot")
                continue
            size, digest = file_size_sha256(copy)
            if size != entry["size"]:
                damaged.append(f"{path}: {size} bytes, {entry['size']} recorded")
            elif digest != entry["sha256"]:
                damaged.append(f"{path}: sha256 differs from the one recorded")
            if entry.get("sqlite") and (problem := sqlite_problem(copy)):
                damaged.append(f"{path}: {problem}")
    return meta, VerifyResult(str(directory), str(meta.get("name", directory.name)), len(meta["files"]), total, damaged)


@contextlib.contextmanager
def opened_snapshot(settings: Settings, ref: str, staging_root: Layout | None = None) -> Iterator[Path]:
    """A snapshot as a local directory: `ref` is a snapshot directory, a name at the configured
    destination, or s3://bucket/prefix/NAME (downloaded under <root>/backups/, removed afterwards)."""
    destination = parse_destination(settings, None)
    remote: tuple[Destination, str] | None = None
    if ref.startswith("s3://"):
        parent, _, name = ref.rstrip("/").rpartition("/")
        remote = (parse_destination(settings, parent), name)
    elif Path(ref).expanduser().is_dir():
        yield Path(ref).expanduser().absolute()
        return
    elif is_safe_name(ref) and destination.directory is not None and (destination.directory / ref).is_dir():
        yield destination.directory / ref
        return
    elif is_safe_name(ref) and destination.is_s3:
        remote = (destination, ref)
    if remote is None or not is_safe_name(remote[1]) or not remote[0].is_s3:
        raise InputError(f"snapshot {ref!r} not found: give a snapshot directory, a name from `azaion backup list` "
                         f"(at {destination}), or s3://BUCKET/PREFIX/NAME")
    store = S3Snapshots(settings.backup, remote[0])
    data = store.read(store.key(remote[1], SNAPSHOT_JSON))
    if data is None:
        raise InputError(f"snapshot {ref} not found (no {SNAPSHOT_JSON} under it: missing, or an upload that did "
                         "not finish): see `azaion backup list --at " + str(remote[0]) + "`")
    work = _staging(staging_root or Layout(settings.paths), "fetch")
    try:
        try:
            meta = _checked_meta(json.loads(data), f"{ref}/{SNAPSHOT_JSON}")
        except ValueError:
            raise OperationFailed(f"{ref}/{SNAPSHOT_JSON} is not JSON: the snapshot is damaged") from None
        (work / SNAPSHOT_JSON).write_bytes(data)
        with Progress(f"backup: download {ref}", len(meta["files"])) as progress:
            for entry in meta["files"]:
                if allowed_path(entry["path"]):  # anything else is reported by verify, never fetched
                    with contextlib.suppress(OperationFailed):  # a missing object is reported by verify
                        store.download(store.key(remote[1], FILES, entry["path"]), work / FILES / entry["path"])
                progress.advance()
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def verify_snapshot(settings: Settings, ref: str) -> VerifyResult:
    with opened_snapshot(settings, ref) as directory:
        result = verify_directory(directory)[1]
    result.snapshot = ref if ref.startswith("s3://") else result.snapshot
    return result


def damage_message(result: VerifyResult) -> str:
    shown = "\n".join(f"  - {line}" for line in result.damaged[:SHOWN])
    more = f"\n  ... and {len(result.damaged) - SHOWN} more" if len(result.damaged) > SHOWN else ""
    return (f"snapshot {result.snapshot} is damaged: {len(result.damaged)} problem(s) in {result.files} file(s):\n"
            f"{shown}{more}\nuse another snapshot (`azaion backup list`)")


# ---------------------------------------------------------------- restore


@dataclass
class RestoreResult:
    snapshot: str
    root: str
    files: int
    unchanged: int
    bytes: int
    stream: str | None
    offset: int | None
    with_data: bool
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def _all_state_locks(layout: Layout) -> Iterator[None]:
    """Every writer's lock, or an InputError naming the one that runs."""
    with contextlib.ExitStack() as stack:
        for name, what in STATE_LOCKS.items():
            try:
                stack.enter_context(InstanceLock(layout.lock_file(name), what))
            except OperationFailed as exc:
                raise InputError(f"cannot restore into {layout.root}: {exc}") from None
        yield


def _live_state(layout: Layout, meta: dict[str, Any]) -> list[str]:
    """What in the root would be overwritten or mixed with the snapshot: live-state files the
    snapshot lacks or holds otherwise, any other file it would replace with other content, and
    journal files beside the databases (SQLite would replay them into the restored copy)."""
    recorded = {entry["path"]: entry for entry in meta["files"]}
    problems = []
    candidates = set(recorded)
    for pattern_path in _existing_live_paths(layout):
        candidates.add(pattern_path)
    for path in sorted(candidates):
        target = root_path(layout, path)
        if not target.is_file():
            continue
        entry = recorded.get(path)
        if entry is None:
            problems.append(f"{target} (live state the snapshot does not hold)")
        elif path == "classes.json":
            continue  # `azaion init` writes the default one: the snapshot's replaces it
        elif file_size_sha256(target) != (entry["size"], entry["sha256"]):
            problems.append(f"{target} (differs from the snapshot's)")
    if meta.get("with_data"):
        areas = dict(_area_roots(layout))
        areas["queue-rejected"] = layout.rejected
        for prefix, area_root in areas.items():
            own = [p for d in (area_root, area_root / "images", area_root / "labels") for p in _visible_files(d)]
            foreign = [p for p in own if f"{prefix}/{p.relative_to(area_root).as_posix()}" not in recorded]
            if foreign:
                problems.append(f"{area_root}: {len(foreign)} annotation file(s) the snapshot does not hold, "
                                f"e.g. {foreign[0].name}")
    for path in SQLITE_FILES:
        for suffix in ("-wal", "-journal"):
            side = root_path(layout, path + suffix)
            if side.is_file() and side.stat().st_size:
                problems.append(f"{side} (a journal of a live database)")
    return problems


def _existing_live_paths(layout: Layout) -> list[str]:
    found = []
    for relative in (*QUEUE_STATE_FILES, "datasets/splits.sqlite3", "models/cycle/history.jsonl"):
        if (layout.root / relative).is_file():
            found.append(relative)
    published = layout.models / "published"
    if published.is_dir():
        found += [p.relative_to(layout.root).as_posix() for p in sorted(published.glob("*/history.jsonl"))]
    if layout.models.is_dir():
        found += [p.relative_to(layout.root).as_posix() for p in sorted(layout.models.glob("*/run.json"))]
    return [path for path in found if any(pattern.fullmatch(path) for pattern in _LIVE_PATTERNS)]


def _restore_file(source: Path, target: Path, entry: dict[str, Any], durable: bool) -> None:
    digest = hashlib.sha256()
    with source.open("rb") as handle, atomic_writer(target, durable=durable) as out:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
        if digest.hexdigest() != entry["sha256"]:  # the temp file is dropped: `target` stays as it was
            raise OperationFailed(f"{source} changed while it was being restored (its sha256 is no longer the "
                                  "verified one): run the restore again")


def restore_snapshot(settings: Settings, ref: str, root: Path | None = None) -> RestoreResult:
    """Restore a verified snapshot into `root` (default AZAION_ROOT_DIR), which must be empty of
    live state and have no consumer, training, promotion or cycle running."""
    paths = overridden(settings.paths, root_dir=root) if root is not None else settings.paths
    layout = Layout(paths)
    if layout.root.exists() and not layout.root.is_dir():
        raise InputError(f"restore target {layout.root} exists and is not a directory: give an empty or new directory")
    layout.root.mkdir(parents=True, exist_ok=True)
    with opened_snapshot(settings, ref, staging_root=layout) as directory:
        meta, verified = verify_directory(directory)
        if not verified.ok:
            verified.snapshot = ref
            raise OperationFailed(damage_message(verified))
        with _all_state_locks(layout):
            problems = _live_state(layout, meta)
            if problems:
                listed = "\n".join(f"  - {p}" for p in problems[:SHOWN])
                more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
                raise InputError(f"{layout.root} already holds live state the restore would overwrite or mix with "
                                 f"the snapshot:\n{listed}{more}\nrestore into an empty root (AZAION_ROOT_DIR or "
                                 "--root), or stop every service and move these aside first")
            result = _restore_files(layout, directory, meta, settings.rabbitmq.queue_name)
    result.snapshot = ref
    log(logger, logging.INFO, "snapshot restored", **{k: v for k, v in result.as_dict().items() if k != "warnings"})
    return result


def _restore_files(layout: Layout, directory: Path, meta: dict[str, Any], stream_setting: str) -> RestoreResult:
    layout.init()
    late = (*SQLITE_FILES, "queue-state/offset.yaml")  # the state that says "this root is live" goes last
    entries = sorted(meta["files"], key=lambda e: (e["path"] in late, late.index(e["path"]) if e["path"] in late else 0,
                                                   e["path"]))
    written: list[Path] = []
    unchanged = 0
    with Progress("restore: files", len(entries)) as progress:
        for entry in entries:
            target = root_path(layout, entry["path"])
            if target.is_file() and file_size_sha256(target) == (entry["size"], entry["sha256"]):
                unchanged += 1
            else:
                if entry["path"] in late and written:
                    make_durable(layout.root, written, {p.parent for p in written})
                    written = []
                durable = entry["path"] in late
                _restore_file(directory / FILES / entry["path"], target, entry, durable)
                if not durable:
                    written.append(target)
            progress.advance()
    if written:
        make_durable(layout.root, written, {p.parent for p in written})
    stream, offset = meta.get("stream"), meta.get("offset")
    warnings = []
    if any(entry["path"] in QUEUE_STATE_FILES for entry in meta["files"]):
        # the consumer resumes after the restored offset, not the broker's (see the module docstring)
        write_offset_record(layout.restore_marker, stream or stream_setting, offset if offset is not None else -1)
    if stream and stream != stream_setting:
        warnings.append(f"the snapshot's stream is {stream!r} but RABBITMQ_QUEUE_NAME is {stream_setting!r}: the "
                        "consumer ignores an offset.yaml of another stream")
    if not meta.get("with_data") and any(entry["path"] == QUEUE_STATE_FILES[0] for entry in meta["files"]):
        warnings.append("the snapshot holds no annotation files (made without --with-data): put the annotation areas "
                        f"back from their own backup, at least as new as the snapshot ({meta.get('created')}), "
                        "before starting the consumer (docs/backup.md)")
    for warning in warnings:
        log(logger, logging.WARNING, warning)
    return RestoreResult(snapshot="", root=str(layout.root), files=len(entries) - unchanged, unchanged=unchanged,
                         bytes=sum(e["size"] for e in entries), stream=stream, offset=offset,
                         with_data=bool(meta.get("with_data")), warnings=warnings)


# ---------------------------------------------------------------- health


def check_backup(settings: Settings, now: datetime):
    """`azaion health`'s backup check: warn when the newest snapshot is older than BACKUP_MAX_AGE_H
    or there is none; n/a when BACKUP_MAX_AGE_H is 0 (no backups expected on this host)."""
    from azaion_training.ops.health import CheckResult

    max_age_h = settings.backup.max_age_h
    try:
        destination = str(parse_destination(settings, None))
    except AzaionError as exc:
        return CheckResult("backup", "warn", f"BACKUP_DESTINATION is not usable: {exc}", {})
    data: dict[str, Any] = {"destination": destination, "max_age_h": max_age_h}
    if not max_age_h:
        return CheckResult("backup", "n/a", "no backups expected on this host (BACKUP_MAX_AGE_H=0)", data)
    try:
        snapshots = list_snapshots(settings)
    except AzaionError as exc:
        return CheckResult("backup", "warn", f"cannot list the snapshots at {destination}: {exc}", data)
    data["snapshots"] = len(snapshots)
    if not snapshots:
        return CheckResult("backup", "warn", f"no backup snapshot at {destination}: enable azaion-backup.timer or "
                           "run `azaion backup create` (docs/backup.md)", data)
    newest = snapshots[-1]
    created = newest.created_at()
    age_h = (now - created).total_seconds() / 3600 if created else None
    data.update(newest=newest.name, age_h=round(age_h, 1) if age_h is not None else None)
    if age_h is None or age_h > max_age_h:
        age = f"{age_h:.0f} h old" if age_h is not None else "of unknown age"
        return CheckResult("backup", "warn", f"newest snapshot {newest.name} at {destination} is {age} (warning "
                           f"above {max_age_h:g} h): check azaion-backup.timer (journalctl -u azaion-backup)", data)
    return CheckResult("backup", "ok", f"newest snapshot {newest.name} is {age_h:.1f} h old "
                       f"({len(snapshots)} at {destination})", data)
