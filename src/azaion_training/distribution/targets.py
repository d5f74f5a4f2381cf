"""Where published parts live. `azaion`: small parts and manifests through the Azaion API,
big parts in the CDN bucket under `<folder>/<name>.big`. `local:DIR`: the same files under
DIR/api/<folder>/ and DIR/cdn/<folder>/, no servers (the embedded default for development
and demos)."""

import logging
import shutil
from pathlib import Path
from typing import Protocol

from azaion_training.distribution.api_client import ApiClient, ResourceNotFound
from azaion_training.distribution.cdn import CDN_CONFIG_FOLDER, CDN_CONFIG_NAME, CdnManager, parse_cdn_config
from azaion_training.errors import ConfigError, InputError
from azaion_training.fsutil import atomic_write_bytes, atomic_writer, file_sha256  # noqa: F401 (re-exported)
from azaion_training.logs import get_logger, log
from azaion_training.settings import Settings

logger = get_logger("distribution.targets")


class Target(Protocol):
    description: str

    def put_big(self, folder: str, filename: str, source: Path) -> None: ...

    def put_small(self, folder: str, filename: str, data: bytes) -> None: ...

    def get_small(self, folder: str, filename: str) -> bytes:
        """The resource's bytes; ResourceNotFound when it does not exist."""

    def get_big(self, folder: str, filename: str, cache: Path, sha256: str) -> Path:
        """A local path holding the big part (downloaded into `cache` unless a copy with
        this SHA-256 is already there)."""

    def close(self) -> None: ...


class LocalTarget:
    def __init__(self, directory: Path):
        self.directory = directory.expanduser().absolute()
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

    def close(self) -> None:
        self.api.close()


def open_target(settings: Settings, target: str) -> Target:
    if target == "azaion":
        return AzaionTarget(settings)
    if target.startswith("local:") and len(target) > len("local:"):
        directory = Path(target.removeprefix("local:"))
        if directory.exists() and not directory.is_dir():
            raise InputError(f"target {target}: {directory} is not a directory")
        return LocalTarget(directory)
    raise InputError(f"unknown target {target!r}: use 'azaion' (Azaion API + CDN) or 'local:DIR'")
