"""`azaion publish`: encrypt a model with the model key, split the ciphertext, send the big
part to the CDN first, then the small part and the manifest to the API (docs/encryption.md).

If the CDN upload fails nothing reaches the API. The manifest (`<name>.manifest.json`:
sizes and SHA-256 of the plaintext, the ciphertext and each part, bound to folder and name
and authenticated with the model key: distribution/manifest.py) is uploaded through the
API next to the small part, so `fetch-model` on any machine can verify what it
reassembles; a copy stays under <root>/models/published/<folder>/. Re-publishing replaces
all three; the manifest goes last.
"""

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from azaion_training.distribution.manifest import MANIFEST_FORMAT, mac_key, part_names, sign
from azaion_training.distribution.targets import open_target
from azaion_training.errors import InputError
from azaion_training.fsutil import atomic_write_text
from azaion_training.layout import Layout, checked_name
from azaion_training.logs import get_logger, log
from azaion_training.security.crypto import ciphertext_size, encrypt_stream, read_chunks
from azaion_training.security.keys import model_key
from azaion_training.security.split import SplitWriter
from azaion_training.settings import Settings

logger = get_logger("distribution.publish")


@dataclass(frozen=True)
class PublishResult:
    name: str
    folder: str
    target: str
    manifest: dict[str, Any]
    manifest_path: Path


def local_manifest_path(layout: Layout, folder: str, name: str) -> Path:
    return layout.models / "published" / folder / part_names(name)[2]


class _Hashing:
    """Counts and hashes bytes on their way to `write`."""

    def __init__(self, write=None):
        self.digest, self.size, self.write_next = hashlib.sha256(), 0, write

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        self.size += len(data)
        if self.write_next:
            self.write_next(data)

    def summary(self) -> dict[str, Any]:
        return {"size": self.size, "sha256": self.digest.hexdigest()}


def publish_model(settings: Settings, file: Path, name: str | None = None, folder: str = "models",
                  target: str = "azaion", source_run: str | None = None) -> PublishResult:
    file = Path(file)
    if not file.is_file():
        raise InputError(f"model file {file} not found: export a model first (`azaion export`) or pass --file")
    name = checked_name(name or file.name, "model name")
    folder = checked_name(folder, "folder")
    key, manifest_key = model_key(settings), mac_key(settings)
    layout = Layout(settings.paths)
    small_name, big_name, manifest_name = part_names(name)
    store = open_target(settings, target)
    started = time.monotonic()
    try:
        staging = layout.models / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=staging, prefix=".tmp-", suffix=".big") as big_file:
            plain, cipher, big = _Hashing(), _Hashing(), _Hashing(big_file.write)
            splitter = SplitWriter(ciphertext_size(file.stat().st_size), big.write)
            cipher.write_next = splitter.write
            with file.open("rb") as source:
                encrypt_stream(_through(read_chunks(source), plain), cipher.write, key)
            big_file.flush()
            small = splitter.small
            manifest = sign({
                "format": MANIFEST_FORMAT, "name": name, "folder": folder, "source_file": file.name,
                "source_run": source_run, "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "plaintext": plain.summary(), "ciphertext": cipher.summary(),
                "small": {"name": small_name, "size": len(small), "sha256": hashlib.sha256(small).hexdigest()},
                "big": {"name": big_name, **big.summary()},
            }, manifest_key)
            log(logger, logging.INFO, "encrypted and split the model", name=name, bytes=plain.size,
                small=len(small), big=big.size)
            store.put_big(folder, big_name, Path(big_file.name))  # CDN first: on failure the API gets nothing
        store.put_small(folder, small_name, small)
        store.put_small(folder, manifest_name, json.dumps(manifest, indent=2).encode())
    finally:
        store.close()
    manifest_path = local_manifest_path(layout, folder, name)
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    log(logger, logging.INFO, "published the model", name=name, folder=folder, target=store.description,
        seconds=round(time.monotonic() - started, 2))
    return PublishResult(name, folder, store.description, manifest, manifest_path)


def _through(chunks, hashing: _Hashing):
    for chunk in chunks:
        hashing.write(chunk)
        yield chunk
