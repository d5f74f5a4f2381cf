"""Where published parts live. `azaion`: small parts and manifests through the Azaion API,
big parts in the CDN bucket under `<folder>/<part name>`. `local:DIR`: the same files under
DIR/api/<folder>/ and DIR/cdn/<folder>/, no servers (the embedded default for development
and demos).

A target's identity (`target_identity`, what the promotion history and the fetch state key
on) is where it is, not how it was spelled: `local:` + the directory's resolved real path
(symlinks, `..`, trailing slashes), and `azaion:<API URL>#bucket=<CDN_BUCKET>` for the Azaion
API and its CDN (docs/model-registry.md, "Targets").
"""

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from azaion_training.distribution.api_client import ApiClient, ResourceNotFound
from azaion_training.distribution.cdn import CDN_CONFIG_FOLDER, CDN_CONFIG_NAME, CdnManager, parse_cdn_config
from azaion_training.errors import ConfigError, InputError
from azaion_training.fsutil import (  # noqa: F401 (file_sha256 re-exported)
    TEMP_PREFIX,
    atomic_write_bytes,
    atomic_writer,
    file_sha256,
    fsync_dir,
    link_or_copy,
)
from azaion_training.logs import get_logger, log
from azaion_training.settings import Settings

logger = get_logger("distribution.targets")

LOCAL, AZAION = "local:", "azaion"
STALE_TEMP_S = 3600  # a publisher's temp file older than this was left by a crash


def target_identity(settings: Settings | None, target: str) -> str:
    """One identity per place: `local:<real path>` for `local:DIR` (however DIR is spelled),
    `azaion:<API URL>#bucket=<bucket>` for `azaion`. An identity given back is returned as is,
    so this is idempotent. `settings` is needed for `azaion` only."""
    if target.startswith(LOCAL) and len(target) > len(LOCAL):
        return LOCAL + os.path.realpath(Path(target.removeprefix(LOCAL)).expanduser())
    if target.startswith(AZAION + ":"):
        return target
    if target == AZAION:
        if settings is None:
            raise ValueError("the identity of the 'azaion' target needs the settings (API URL, CDN bucket)")
        parts = urlsplit(settings.api.url)
        url = urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), "", ""))
        return f"{AZAION}:{url}#bucket={settings.cdn.bucket}"
    raise InputError(f"unknown target {target!r}: use 'azaion' (Azaion API + CDN) or 'local:DIR'")


def remove_stale_temp_files(directory: Path, age_s: float = STALE_TEMP_S) -> None:
    """Temp files of a publisher that crashed mid-write (never visible under a part's name),
    once older than `age_s` (younger ones may belong to a publish in progress)."""
    if not directory.is_dir():
        return
    for entry in directory.glob(f"{TEMP_PREFIX}*"):
        with contextlib.suppress(OSError):
            if time.time() - entry.stat().st_mtime > age_s:
                entry.unlink()


def target_to_open(settings: Settings | None, target: str) -> str:
    """A target string that reopens the same place from any working directory."""
    identity = target_identity(settings, target)
    return identity if identity.startswith(LOCAL) else AZAION


class Target(Protocol):
    description: str

    def put_big(self, folder: str, filename: str, source: Path) -> None: ...

    def put_small(self, folder: str, filename: str, data: bytes) -> None: ...

    def get_small(self, folder: str, filename: str) -> bytes:
        """The resource's bytes; ResourceNotFound when it does not exist."""

    def get_big(self, folder: str, filename: str, cache: Path, sha256: str) -> Path:
        """A local path holding the big part (downloaded into `cache` unless a copy with
        this SHA-256 is already there)."""

    def copy_big(self, folder: str, filename: str, to: str) -> None:
        """Place a copy of big part `filename` under the name `to` (replacing it)."""

    def list_parts(self, folder: str, prefix: str) -> tuple[list[str] | None, list[str]]:
        """(small, big) part names starting with `prefix`; small is None where the target
        cannot list its small parts (the Azaion API)."""

    def remove(self, folder: str, filename: str, big: bool) -> bool:
        """Delete a part (best effort); False where the target cannot delete it."""

    def close(self) -> None: ...


class LocalTarget:
    def __init__(self, directory: Path):
        self.directory = Path(os.path.realpath(directory.expanduser()))
        self.description = f"local:{self.directory}"

    def put_big(self, folder: str, filename: str, source: Path) -> None:
        with source.open("rb") as src, atomic_writer(self.directory / "cdn" / folder / filename) as dst:
            shutil.copyfileobj(src, dst, 4 * 1024 * 1024)

    def put_small(self, folder: str, filename: str, data: bytes) -> None:
        atomic_write_bytes(self.directory / "api" / folder / filename, data)

    def get_small(self, folder: str, filename: str) -> bytes:
        path = self.directory / "api" / folder / filename
        if not path.is_file():
            raise ResourceNotFound(f"{self.description} has no resource {folder}/{filename} ({path})")
        return path.read_bytes()

    def get_big(self, folder: str, filename: str, cache: Path, sha256: str) -> Path:
        path = self.directory / "cdn" / folder / filename
        if not path.is_file():
            raise ResourceNotFound(f"{self.description} has no CDN object {folder}/{filename} ({path})")
        return path

    def copy_big(self, folder: str, filename: str, to: str) -> None:
        directory = self.directory / "cdn" / folder
        temporary = directory / f"{TEMP_PREFIX}{to}.{os.getpid()}"
        temporary.unlink(missing_ok=True)
        link_or_copy(directory / filename, temporary)  # a hardlink: parts are replaced, never edited in place
        os.replace(temporary, directory / to)
        fsync_dir(directory)

    def list_parts(self, folder: str, prefix: str) -> tuple[list[str] | None, list[str]]:
        def names(area: str) -> list[str]:
            directory = self.directory / area / folder
            remove_stale_temp_files(directory)
            return sorted(p.name for p in directory.glob("*") if p.name.startswith(prefix)) \
                if directory.is_dir() else []

        return names("api"), names("cdn")

    def remove(self, folder: str, filename: str, big: bool) -> bool:
        (self.directory / ("cdn" if big else "api") / folder / filename).unlink(missing_ok=True)
        return True

    def close(self) -> None:
        pass


class AzaionTarget:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.api = ApiClient(settings.api)
        self.description = f"azaion ({settings.api.url})"
        self._cdn: CdnManager | None = None
        self.bucket = settings.cdn.bucket

    @property
    def cdn(self) -> CdnManager:
        """Built on first use from cdn.yaml: the local CDN_CONFIG_FILE, else fetched through the API."""
        if self._cdn is None:
            config_file = self.settings.cdn.config_file
            if config_file:
                if not config_file.is_file():
                    raise ConfigError(f"CDN_CONFIG_FILE {config_file} does not exist: fix the path or unset it "
                                      "to fetch cdn.yaml through the Azaion API")
                credentials = parse_cdn_config(config_file.read_bytes(), str(config_file))
            else:
                credentials = parse_cdn_config(self.api.load_bytes(CDN_CONFIG_NAME, CDN_CONFIG_FOLDER),
                                               f"{CDN_CONFIG_NAME} from the Azaion API")
            self.bucket = credentials.bucket or self.settings.cdn.bucket
            self._cdn = CdnManager(credentials)
        return self._cdn

    def put_big(self, folder: str, filename: str, source: Path) -> None:
        cdn = self.cdn
        cdn.upload_file(self.bucket, f"{folder}/{filename}", source)

    def put_small(self, folder: str, filename: str, data: bytes) -> None:
        self.api.upload_file(filename, data, folder)

    def get_small(self, folder: str, filename: str) -> bytes:
        return self.api.load_bytes(filename, folder)

    def get_big(self, folder: str, filename: str, cache: Path, sha256: str) -> Path:
        target = cache / folder / filename
        if target.is_file() and file_sha256(target) == sha256:
            log(logger, logging.INFO, "using the cached big part", path=str(target))
            return target
        cdn = self.cdn
        cdn.download_file(self.bucket, f"{folder}/{filename}", target)
        return target

    def copy_big(self, folder: str, filename: str, to: str) -> None:
        cdn = self.cdn
        cdn.copy_object(self.bucket, f"{folder}/{filename}", f"{folder}/{to}")

    def list_parts(self, folder: str, prefix: str) -> tuple[list[str] | None, list[str]]:
        cdn = self.cdn
        keys = cdn.list_keys(self.bucket, f"{folder}/{prefix}")
        return None, sorted(key.removeprefix(f"{folder}/") for key in keys)

    def remove(self, folder: str, filename: str, big: bool) -> bool:
        if not big:
            return False  # the Azaion API has no delete: old small parts (3 KiB each) stay
        cdn = self.cdn
        cdn.delete_object(self.bucket, f"{folder}/{filename}")
        return True

    def close(self) -> None:
        self.api.close()


def open_target(settings: Settings, target: str) -> Target:
    if target == AZAION:
        return AzaionTarget(settings)
    if target.startswith(LOCAL) and len(target) > len(LOCAL):
        directory = Path(target.removeprefix(LOCAL)).expanduser()
        if directory.exists() and not directory.is_dir():
            raise InputError(f"target {target}: {directory} is not a directory")
        return LocalTarget(directory)
    raise InputError(f"unknown target {target!r}: use 'azaion' (Azaion API + CDN) or 'local:DIR'")
