"""`azaion fetch-model`: the manifest first, then the parts it names — the small part through
the API, the big part from the CDN (cached under CDN_CACHE_DIR, default <root>/models/cache) —
reassembled, decrypted and verified against the manifest, which must be authentic and name
this folder/model (distribution/manifest.py). `fetch_model_bytes` keeps the plaintext in
memory (for inference: the decrypted model never touches disk); `fetch_model_to_file` writes
it atomically with mode 0600.

No silent downgrade: the newest manifest version fetched from each target is remembered per
folder/name (<root>/models/seen-versions.json); a manifest older than that is refused
(DowngradeRefused) unless `allow_downgrade`, which then records the version accepted. A
rollback publishes the older model as a new, higher version, so it is never refused.

Every integrity failure (a part whose SHA-256 differs from the manifest, parts of two
different publishes, a wrong model key) raises DecryptionError naming what did not match;
a manifest that is altered or belongs to another model raises ManifestRefused.

`no_manifest=True` takes models published by other tooling (same encryption, no manifest):
the PKCS7 padding must check out and an .onnx must pass onnx.checker, and a WARN line says
that integrity could not be verified against a manifest (and no version can be checked).
"""

import contextlib
import fcntl
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azaion_training.distribution.manifest import mac_key, manifest_version, part_names, part_version, verify
from azaion_training.distribution.publish import local_manifest_path, served_manifest
from azaion_training.distribution.targets import Target, file_sha256, open_target, target_identity
from azaion_training.errors import InputError, OperationFailed
from azaion_training.fsutil import atomic_write_bytes, atomic_write_text, atomic_writer
from azaion_training.layout import Layout, checked_name
from azaion_training.logs import get_logger, log
from azaion_training.security.crypto import DecryptionError, decrypt_stream, read_chunks
from azaion_training.security.keys import model_key
from azaion_training.settings import Settings

logger = get_logger("distribution.fetch")

DOWNGRADE_FLAG = "--allow-downgrade"


class DowngradeRefused(OperationFailed):
    """The target serves an older version than one fetched from it before."""


@dataclass(frozen=True)
class FetchResult:
    name: str
    path: Path
    size: int
    sha256: str
    verified: bool  # against an authenticated manifest (False with no_manifest)
    version: int | None = None  # the manifest's version (0: written before versions); None without one


def fetch_model_bytes(settings: Settings, name: str, target: str = "azaion", folder: str = "models",
                      no_manifest: bool = False, allow_downgrade: bool = False) -> tuple[bytes, dict[str, Any] | None]:
    """The decrypted, SHA-256-verified model in memory, and the authenticated manifest it was
    verified against (None with `no_manifest`)."""
    if no_manifest:
        return fetch_without_manifest(settings, name, target, folder), None
    parts: list[bytes] = []
    manifest = _fetch(settings, name, target, folder, parts.append, allow_downgrade)
    return b"".join(parts), manifest


def fetch_model_to_file(settings: Settings, name: str, out: Path | None = None, target: str = "azaion",
                        folder: str = "models", no_manifest: bool = False,
                        allow_downgrade: bool = False) -> FetchResult:
    """Fetch, verify and write the model to `out` (default ./NAME) atomically, mode 0600."""
    out = Path(out) if out else Path.cwd() / checked_name(name, "model name")
    if out.is_dir():
        out = out / checked_name(name, "model name")
    if no_manifest:
        data = fetch_without_manifest(settings, name, target, folder)
        atomic_write_bytes(out, data, mode=0o600)
        return FetchResult(name, out, len(data), hashlib.sha256(data).hexdigest(), verified=False)
    with atomic_writer(out, mode=0o600) as handle:
        manifest = _fetch(settings, name, target, folder, handle.write, allow_downgrade)
    return FetchResult(name, out, manifest["plaintext"]["size"], manifest["plaintext"]["sha256"], verified=True,
                       version=manifest_version(manifest))


def current_manifest(settings: Settings, name: str, target: str, folder: str = "models") -> dict[str, Any] | None:
    """The authenticated manifest the target serves now (None: none there); reads nothing else
    and records nothing. ManifestRefused when the served one fails its checks."""
    name = checked_name(name, "model name")
    folder = checked_name(folder, "folder")
    store = open_target(settings, target)
    try:
        return served_manifest(store, folder, name, mac_key(settings))
    finally:
        store.close()


def served_plaintext_sha256(settings: Settings, name: str, target: str, folder: str = "models") -> str | None:
    """SHA-256 of the plaintext the target's authenticated manifest names: what a fetch from the
    target yields now (None when the target has no manifest of that name)."""
    manifest = current_manifest(settings, name, target, folder)
    return manifest["plaintext"]["sha256"] if manifest else None


def fetch_without_manifest(settings: Settings, name: str, target: str, folder: str) -> bytes:
    """Reassemble and decrypt parts published without a manifest; the padding must check out
    and an .onnx must pass onnx.checker. Nothing is returned (or written) otherwise."""
    name = checked_name(name, "model name")
    folder = checked_name(folder, "folder")
    key = model_key(settings)
    small_name, big_name, _ = part_names(name)
    store = open_target(settings, target)
    try:
        small = store.get_small(folder, small_name)
        cache = settings.cdn.cache_dir or Layout(settings.paths).model_cache
        big_path = store.get_big(folder, big_name, cache, sha256="")  # no hash to trust a cached copy by
    finally:
        store.close()
    parts: list[bytes] = []
    with big_path.open("rb") as big:
        decrypt_stream(itertools.chain((small,), read_chunks(big)), len(small) + big_path.stat().st_size,
                       parts.append, key)
    data = b"".join(parts)
    if name.endswith(".onnx"):
        import onnx

        try:
            onnx.checker.check_model(data)
        except (ValueError, onnx.checker.ValidationError) as exc:
            raise DecryptionError(f"model {folder}/{name} decrypted (padding valid) but is not a valid ONNX model "
                                  f"({str(exc).splitlines()[0][:160]}): the parts were tampered with or do not "
                                  "belong together") from None
    log(logger, logging.WARNING, "integrity could not be verified against a manifest (fetched with --no-manifest): "
        "only the padding" + (" and the ONNX structure were" if name.endswith(".onnx") else " was") + " checked",
        name=name, folder=folder, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
        target=store.description)
    return data


def _fetch(settings: Settings, name: str, target: str, folder: str, write: Callable[[bytes], object],
           allow_downgrade: bool = False) -> dict:
    """Decrypt the published model into `write`; raises before returning when anything does
    not match the manifest (callers discard what was written)."""
    name = checked_name(name, "model name")
    folder = checked_name(folder, "folder")
    key = model_key(settings)
    layout = Layout(settings.paths)
    identity = target_identity(settings, target)
    store = open_target(settings, target)
    try:
        manifest = _manifest(store, layout, folder, name, mac_key(settings))  # first: it names the parts
        version = manifest_version(manifest)
        check_not_older(layout, identity, folder, name, version, allow_downgrade)
        small_name, big_name = manifest["small"]["name"], manifest["big"]["name"]
        small = store.get_small(folder, small_name)
        _check_part(small_name, len(small), hashlib.sha256(small).hexdigest(), manifest["small"])
        cache = settings.cdn.cache_dir or layout.model_cache
        big_path = store.get_big(folder, big_name, cache, manifest["big"]["sha256"])
        _check_part(big_name, big_path.stat().st_size, file_sha256(big_path), manifest["big"])
    finally:
        store.close()
    digest = hashlib.sha256()

    def verified_write(data: bytes) -> None:
        digest.update(data)
        write(data)

    with big_path.open("rb") as big:
        decrypt_stream(itertools.chain((small,), read_chunks(big)), manifest["ciphertext"]["size"], verified_write, key)
    if digest.hexdigest() != manifest["plaintext"]["sha256"]:
        raise DecryptionError(f"model {folder}/{name} decrypted to bytes whose SHA-256 differs from its manifest: "
                              "the model key (MODEL_ENCRYPTION_KEY) is not the one it was published with")
    remember_version(layout, identity, folder, name, version, allow_downgrade)
    if big_path.parent == cache / folder:
        _prune_cache(big_path.parent, name, big_name)
    log(logger, logging.INFO, "fetched and verified the model", name=name, folder=folder, version=version,
        bytes=manifest["plaintext"]["size"], target=store.description)
    return manifest


def _manifest(store: Target, layout: Layout, folder: str, name: str, key: bytes) -> dict[str, Any]:
    """The authenticated manifest published with the model (through the target), else the local copy."""
    manifest = served_manifest(store, folder, name, key)
    if manifest is not None:
        return manifest
    local = local_manifest_path(layout, folder, name)
    if not local.is_file():
        raise OperationFailed(
            f"model {folder}/{name} has no manifest on {store.description} nor at {local}: it was not published "
            "completely (run `azaion publish` again), or by other tooling (then fetch it with --no-manifest, "
            "which checks the padding and the ONNX structure only)")
    return verify(local.read_bytes(), str(local), key, folder, name)


def _check_part(filename: str, size: int, sha256: str, expected: dict[str, Any]) -> None:
    if size != expected["size"] or sha256 != expected["sha256"]:
        raise DecryptionError(
            f"part {filename} does not match its manifest (size {size}, expected {expected['size']}; SHA-256 "
            f"{sha256[:12]}…, expected {str(expected['sha256'])[:12]}…): it was tampered with, truncated, or "
            "belongs to another publish of the model; publish again or clear the CDN cache")


def _prune_cache(directory: Path, name: str, keep: str) -> None:
    """Cached big parts of other versions of this model are never used again."""
    for entry in directory.glob(f"{name}.*"):
        if entry.name != keep and (part_version(name, entry.name) is not None or entry.name == f"{name}.big"):
            with contextlib.suppress(OSError):
                entry.unlink()


# ---------------------------------------------------------------------------------------- seen versions


def _state_key(folder: str, name: str) -> str:
    return f"{folder}/{name}"


def _read_seen(layout: Layout) -> dict[str, dict[str, int]]:
    path = layout.seen_versions
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} (the newest model versions fetched, which guard against downgrades) cannot be "
                         f"read ({exc}): fix it, or delete it to start over") from None
    versions = data.get("versions") if isinstance(data, dict) else None
    if not isinstance(versions, dict):
        raise InputError(f"{path} is not a seen-versions file: fix it, or delete it to start over")
    return versions


def seen_version(layout: Layout, identity: str, folder: str, name: str) -> int:
    """The newest version of folder/name fetched from the target `identity` (0: none)."""
    value = _read_seen(layout).get(identity, {}).get(_state_key(folder, name), 0)
    return value if type(value) is int else 0


def check_not_older(layout: Layout, identity: str, folder: str, name: str, version: int,
                    allow_downgrade: bool) -> None:
    seen = seen_version(layout, identity, folder, name)
    if version >= seen:
        return
    if allow_downgrade:
        log(logger, logging.WARNING, "accepting an older model version (--allow-downgrade)", name=name, folder=folder,
            target=identity, version=version, newest_seen=seen)
        return
    raise DowngradeRefused(
        f"model {folder}/{name} on {identity} is version {version}, older than version {seen} fetched from there "
        f"before (recorded in {layout.seen_versions}): an old manifest was put back or replayed; nothing was "
        f"fetched. If the older model is intended, pass {DOWNGRADE_FLAG} (a rollback with `azaion models "
        "rollback` publishes it as a new, higher version instead)")


def remember_version(layout: Layout, identity: str, folder: str, name: str, version: int,
                     allow_downgrade: bool = False) -> None:
    """Record `version` as the newest fetched (or, when a downgrade was allowed, the one accepted)."""
    path = layout.seen_versions
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = layout.lock_file("seen-versions")
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # two fetches at once: neither update is lost
            versions = _read_seen(layout)
            mine = versions.setdefault(identity, {})
            key = _state_key(folder, name)
            old = mine.get(key, 0)
            if version == old or (version < old and not allow_downgrade):
                return
            mine[key] = version
            atomic_write_text(path, json.dumps({"format": 1, "versions": versions}, indent=2, sort_keys=True) + "\n")
        finally:
            os.close(fd)
    except OSError as exc:
        raise OperationFailed(f"cannot record the fetched model version in {path} ({exc}): make the data root "
                              "writable (AZAION_ROOT_DIR)") from None
