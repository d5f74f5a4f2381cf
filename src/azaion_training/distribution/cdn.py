"""The S3-compatible CDN that holds the big model parts (docs/encryption.md).

Two boto3 clients against the same endpoint: one with the downloader (read-only) key pair,
one with the uploader key pair. The credentials come from `cdn.yaml` (keys `host`,
`downloader_access_key`, `downloader_access_secret`, `uploader_access_key`,
`uploader_access_secret`, optional `bucket`), fetched encrypted through the Azaion API, or
read from the local file CDN_CONFIG_FILE names. Transfers of big files are multipart.
Failures raise OperationFailed naming the bucket and key (the original printed and
returned False).
"""

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from azaion_training.errors import ConfigError, OperationFailed
from azaion_training.fsutil import atomic_writer
from azaion_training.logs import get_logger, log, register_secret
from azaion_training.progress import Progress

logger = get_logger("distribution.cdn")

CDN_CONFIG_NAME = "cdn.yaml"
CDN_CONFIG_FOLDER = ""  # cdn.yaml sits at the root of the API's resources
MULTIPART_CHUNK = 8 * 1024 * 1024
PROGRESS_EVERY_S = 2.0
_KEYS = ("host", "downloader_access_key", "downloader_access_secret", "uploader_access_key", "uploader_access_secret")


@dataclass(frozen=True)
class CdnCredentials:
    host: str
    downloader_access_key: str = field(repr=False)
    downloader_access_secret: str = field(repr=False)
    uploader_access_key: str = field(repr=False)
    uploader_access_secret: str = field(repr=False)
    bucket: str | None = None


def parse_cdn_config(text: bytes | str, origin: str) -> CdnCredentials:
    """CDN credentials from the text of a cdn.yaml; `origin` names it in error messages."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"{origin} is not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{origin} must be a mapping with keys {', '.join(_KEYS)}")
    missing = [key for key in _KEYS if not data.get(key)]
    if missing:
        raise ConfigError(f"{origin} lacks {', '.join(missing)}")
    values = {key: str(data[key]) for key in _KEYS}
    for key in _KEYS[1:]:
        register_secret(values[key])
    return CdnCredentials(**values, bucket=str(data["bucket"]) if data.get("bucket") else None)


class CdnManager:
    def __init__(self, credentials: CdnCredentials):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.host = credentials.host
        config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"},
                        connect_timeout=10, read_timeout=60)

        def client(key: str, secret: str) -> Any:
            return boto3.session.Session().client("s3", endpoint_url=credentials.host, aws_access_key_id=key,
                                                  aws_secret_access_key=secret, region_name="us-east-1",
                                                  config=config)

        self._reader = client(credentials.downloader_access_key, credentials.downloader_access_secret)
        self._writer = client(credentials.uploader_access_key, credentials.uploader_access_secret)
        self._transfer = TransferConfig(multipart_threshold=MULTIPART_CHUNK, multipart_chunksize=MULTIPART_CHUNK)

    def __repr__(self) -> str:
        return f"CdnManager(host={self.host!r})"

    def upload_file(self, bucket: str, key: str, source: Path) -> None:
        """Upload a local file (multipart when big) with the uploader credentials."""
        size = os.path.getsize(source)
        try:
            with Progress(f"upload s3://{bucket}/{key} (bytes)", size, interval_s=PROGRESS_EVERY_S) as progress:
                self._writer.upload_file(str(source), bucket, key, Config=self._transfer, Callback=progress)
        except Exception as exc:
            raise OperationFailed(f"CDN upload of s3://{bucket}/{key} to {self.host} failed: "
                                  f"{_describe(exc)}") from None
        log(logger, logging.INFO, "uploaded to the CDN", bucket=bucket, key=key, bytes=size)

    def download_file(self, bucket: str, key: str, target: Path) -> None:
        """Download with the downloader credentials; `target` appears whole or not at all."""
        try:
            with (atomic_writer(target, mode=0o600) as handle,
                  Progress(f"download s3://{bucket}/{key} (bytes)", None, interval_s=PROGRESS_EVERY_S) as progress):
                self._reader.download_fileobj(bucket, key, handle, Config=self._transfer, Callback=progress)
        except Exception as exc:
            raise OperationFailed(f"CDN download of s3://{bucket}/{key} from {self.host} failed: "
                                  f"{_describe(exc)}") from None
        log(logger, logging.INFO, "downloaded from the CDN", bucket=bucket, key=key, bytes=target.stat().st_size)

    def copy_object(self, bucket: str, source_key: str, key: str) -> None:
        """Server-side copy within the bucket (multipart when big), with the uploader credentials."""
        try:
            self._writer.copy({"Bucket": bucket, "Key": source_key}, bucket, key, Config=self._transfer)
        except Exception as exc:
            raise OperationFailed(f"CDN copy of s3://{bucket}/{source_key} to {key} on {self.host} failed: "
                                  f"{_describe(exc)}") from None
        log(logger, logging.INFO, "copied on the CDN", bucket=bucket, source=source_key, key=key)

    def list_keys(self, bucket: str, prefix: str) -> list[str]:
        """The keys under `prefix` (uploader credentials: whoever publishes also tidies up)."""
        keys: list[str] = []
        try:
            for page in self._writer.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys.extend(item["Key"] for item in page.get("Contents", []))
        except Exception as exc:
            raise OperationFailed(f"CDN listing of s3://{bucket}/{prefix}* on {self.host} failed: "
                                  f"{_describe(exc)}") from None
        return keys

    def delete_object(self, bucket: str, key: str) -> None:
        try:
            self._writer.delete_object(Bucket=bucket, Key=key)
        except Exception as exc:
            raise OperationFailed(f"CDN delete of s3://{bucket}/{key} on {self.host} failed: "
                                  f"{_describe(exc)}") from None
        log(logger, logging.INFO, "deleted from the CDN", bucket=bucket, key=key)


def _describe(exc: Exception) -> str:
    """A short, secret-free reason: the S3 error code and message, or the exception type."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        return f"{error.get('Code', '?')}: {error.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {exc}"
