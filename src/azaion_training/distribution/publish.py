"""`azaion publish`: encrypt a model with the model key, split the ciphertext, and publish it
atomically (docs/encryption.md, "Publishing"; docs/model-registry.md, "Atomic publish").

Every publish is a new version N of the model on its target: one more than the version of the
manifest the target serves now (1 when there is none). The steps, each a point a crash may
stop at (`faults.fault_point`, test-only):

1. read the served manifest and list the parts: N is one above both;  read-current
2. encrypt and split in one pass into a staging file;               encrypted
3. big part to the CDN as `<name>.v<N>.big` (first: on failure the API gets nothing); big-uploaded
4. small part to the API as `<name>.v<N>.small`;                    small-uploaded
5. the manifest `<name>.manifest.json`, naming those two parts:     switched
   this is the switch (an atomic rename on local:, one API upload on azaion);
6. after the switch, best effort: the local manifest copy under models/published/<folder>/,
   copies of the parts under the plain names `<name>.small` / `<name>.big` for the Azaion
   platform's own loaders (which read those names and no manifest), and pruning of parts
   older than version N-1.                                          local-copy, plain-big,
                                                                    plain-small, pruned
Until step 5 a fetch reads the old manifest and the old parts, which nothing touched; from
step 5 on it reads the new ones, which are complete. Version N-1's parts are kept so a fetch
that read the old manifest just before the switch still completes.

The manifest (`<name>.manifest.json`: version, sizes and SHA-256 of the plaintext, the
ciphertext and each part, bound to folder and name and authenticated with the model key:
distribution/manifest.py) lets `fetch-model` on any machine verify what it reassembles.
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

from azaion_training.distribution.api_client import ResourceNotFound
from azaion_training.distribution.faults import fault_point
from azaion_training.distribution.manifest import (
    MANIFEST_FORMAT,
    MAX_VERSION,
    ManifestRefused,
    mac_key,
    manifest_version,
    part_names,
    part_version,
    sign,
    verify,
    version_part_names,
)
from azaion_training.distribution.targets import Target, open_target, remove_stale_temp_files, target_identity
from azaion_training.errors import InputError, OperationFailed
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
    target: str  # the target's description (for messages)
    manifest: dict[str, Any]
    manifest_path: Path  # the local copy
    version: int = 0
    identity: str = ""  # distribution.targets.target_identity


def local_manifest_path(layout: Layout, folder: str, name: str) -> Path:
    return layout.published_dir(folder) / part_names(checked_name(name, "model name"))[2]


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


def served_manifest(store: Target, folder: str, name: str, key: bytes) -> dict[str, Any] | None:
    """The authenticated manifest the target serves for folder/name (None: none there).
    ManifestRefused when one is there but fails its checks."""
    manifest_name = part_names(name)[2]
    try:
        text = store.get_small(folder, manifest_name)
    except ResourceNotFound:
        return None
    return verify(text, f"{store.description} {folder}/{manifest_name}", key, folder, name)


def served_version(store: Target, folder: str, name: str, key: bytes) -> int:
    """The version the target serves (0: none, or a format-2 manifest). A manifest that fails its
    checks is published over (that is how a tampered one is repaired), and the version it claims
    still counts as a lower bound: a higher number never harms a client."""
    manifest_name = part_names(name)[2]
    try:
        return manifest_version(served_manifest(store, folder, name, key) or {})
    except ManifestRefused as exc:
        claimed = 0
        try:
            value = json.loads(store.get_small(folder, manifest_name)).get("version")
            claimed = value if type(value) is int and 0 <= value < MAX_VERSION else 0
        except (ValueError, AttributeError, OperationFailed):
            pass
        log(logger, logging.WARNING, "the served manifest is refused; publishing over it", name=name, folder=folder,
            target=store.description, reason=str(exc), claimed_version=claimed)
        return claimed


def next_version(store: Target, folder: str, name: str, key: bytes) -> int:
    """One above both the served version and every versioned part on the target: a version
    number is never reused, even after a crash left parts no manifest names, or after an older
    manifest was put back."""
    highest = served_version(store, folder, name, key)
    try:
        smalls, bigs = store.list_parts(folder, f"{name}.v")
    except OperationFailed as exc:
        log(logger, logging.WARNING, "could not list the target's parts; the version follows the served manifest",
            name=name, folder=folder, target=store.description, reason=str(exc))
        smalls, bigs = [], []
    for filename in (smalls or []) + bigs:
        highest = max(highest, part_version(name, filename) or 0)
    return highest + 1


def publish_model(settings: Settings, file: Path, name: str | None = None, folder: str = "models",
                  target: str = "azaion", source_run: str | None = None, version: int | None = None,
                  min_version: int = 1) -> PublishResult:
    """Publish `file` as the next version of folder/name on `target` (see the module doc).
    `version`: publish exactly this version (OperationFailed when the target already serves it
    or a newer one); else max(next_version(), `min_version`)."""
    file = Path(file)
    if not file.is_file():
        raise InputError(f"model file {file} not found: export a model first (`azaion export`) or pass --file")
    name = checked_name(name or file.name, "model name")
    folder = checked_name(folder, "folder")
    key, manifest_key = model_key(settings), mac_key(settings)
    layout = Layout(settings.paths)
    identity = target_identity(settings, target)
    manifest_name = part_names(name)[2]
    store = open_target(settings, target)
    started = time.monotonic()
    try:
        if version is None:
            version = max(next_version(store, folder, name, manifest_key), min_version)
        elif version <= (current := served_version(store, folder, name, manifest_key)):
            raise OperationFailed(f"{store.description} already serves version {current} of {folder}/{name}, so "
                                  f"version {version} cannot be published: another publish ran meanwhile; try again")
        if version > MAX_VERSION:
            raise OperationFailed(f"version {version} of {folder}/{name} is beyond {MAX_VERSION}")
        fault_point("read-current")
        small_name, big_name = version_part_names(name, version)
        layout.publish_staging.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(layout.publish_staging)
        with tempfile.NamedTemporaryFile(dir=layout.publish_staging, prefix=".tmp-", suffix=".big") as big_file:
            plain, cipher, big = _Hashing(), _Hashing(), _Hashing(big_file.write)
            splitter = SplitWriter(ciphertext_size(file.stat().st_size), big.write)
            cipher.write_next = splitter.write
            with file.open("rb") as source:
                encrypt_stream(_through(read_chunks(source), plain), cipher.write, key)
            big_file.flush()
            small = splitter.small
            manifest = sign({
                "format": MANIFEST_FORMAT, "version": version, "name": name, "folder": folder,
                "source_file": file.name, "source_run": source_run,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "plaintext": plain.summary(), "ciphertext": cipher.summary(),
                "small": {"name": small_name, "size": len(small), "sha256": hashlib.sha256(small).hexdigest()},
                "big": {"name": big_name, **big.summary()},
            }, manifest_key)
            log(logger, logging.INFO, "encrypted and split the model", name=name, version=version, bytes=plain.size,
                small=len(small), big=big.size)
            fault_point("encrypted")
            store.put_big(folder, big_name, Path(big_file.name))  # CDN first: on failure the API gets nothing
        fault_point("big-uploaded")
        store.put_small(folder, small_name, small)
        fault_point("small-uploaded")
        store.put_small(folder, manifest_name, json.dumps(manifest, indent=2).encode())  # the switch
        fault_point("switched")
        log(logger, logging.INFO, "switched the manifest", name=name, folder=folder, version=version,
            target=store.description)
        manifest_path = after_switch(store, layout, manifest, small)
    finally:
        store.close()
    log(logger, logging.INFO, "published the model", name=name, folder=folder, version=version,
        target=store.description, seconds=round(time.monotonic() - started, 2))
    return PublishResult(name, folder, store.description, manifest, manifest_path, version, identity)


def after_switch(store: Target, layout: Layout, manifest: dict[str, Any], small: bytes | None = None) -> Path:
    """The steps after the switch, each best effort (the new version is served already; a failure
    is logged and the next publish or recovery does it again): the local manifest copy, the
    parts under their plain names, and pruning parts older than the previous version."""
    name, folder, version = manifest["name"], manifest["folder"], manifest_version(manifest)
    manifest_path = local_manifest_path(layout, folder, name)
    try:
        atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    except OSError as exc:
        log(logger, logging.WARNING, "could not keep the local manifest copy", path=str(manifest_path),
            reason=str(exc))
    fault_point("local-copy")
    if version == 0:
        return manifest_path
    plain_small, plain_big = part_names(name)[:2]
    try:
        store.copy_big(folder, manifest["big"]["name"], plain_big)
        fault_point("plain-big")
        if small is None:
            small = store.get_small(folder, manifest["small"]["name"])
        store.put_small(folder, plain_small, small)
        fault_point("plain-small")
    except (OperationFailed, OSError) as exc:
        log(logger, logging.WARNING, "could not copy the parts to their plain names (read by the platform's own "
            "loaders; fetch-model reads the versioned ones)", name=name, folder=folder, reason=str(exc))
    prune(store, folder, name, keep_from=version - 1)
    fault_point("pruned")
    return manifest_path


def prune(store: Target, folder: str, name: str, keep_from: int, only: int | None = None) -> list[str]:
    """Delete versioned parts older than `keep_from` (or, with `only`, the parts of that one
    version); best effort. Returns the names deleted."""
    removed: list[str] = []
    try:
        smalls, bigs = store.list_parts(folder, f"{name}.v")
        for filenames, big in ((smalls or [], False), (bigs, True)):
            for filename in filenames:
                number = part_version(name, filename)
                if number is None or (number != only if only is not None else number >= keep_from):
                    continue
                if store.remove(folder, filename, big):
                    removed.append(filename)
    except (OperationFailed, OSError) as exc:
        log(logger, logging.WARNING, "could not delete old parts; they stay on the target", name=name, folder=folder,
            target=store.description, reason=str(exc))
    if removed:
        log(logger, logging.INFO, "deleted old parts", name=name, folder=folder, parts=removed)
    return removed


def _through(chunks, hashing: _Hashing):
    for chunk in chunks:
        hashing.write(chunk)
        yield chunk
