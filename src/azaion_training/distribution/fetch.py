"""`azaion fetch-model`: the small part through the API, the big part from the CDN (cached
under CDN_CACHE_DIR, default <root>/models/cache), reassembled, decrypted and verified
against the published manifest, which must be authentic and name this folder/model
(distribution/manifest.py). `fetch_model_bytes` keeps the plaintext in memory (for
inference: the decrypted model never touches disk); `fetch_model_to_file` writes it
atomically with mode 0600.

Every integrity failure (a part whose SHA-256 differs from the manifest, parts of two
different publishes, a wrong model key) raises DecryptionError naming what did not match;
a manifest that is altered or belongs to another model raises ManifestRefused.

`no_manifest=True` takes models published by other tooling (same encryption, no manifest):
the PKCS7 padding must check out and an .onnx must pass onnx.checker, and a WARN line says
that integrity could not be verified against a manifest.
"""

import hashlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azaion_training.distribution.api_client import ResourceNotFound
from azaion_training.distribution.manifest import mac_key, part_names, verify
from azaion_training.distribution.publish import local_manifest_path
from azaion_training.distribution.targets import Target, file_sha256, open_target
from azaion_training.errors import OperationFailed
from azaion_training.fsutil import atomic_write_bytes, atomic_writer
from azaion_training.layout import Layout, checked_name
from azaion_training.logs import get_logger, log
from azaion_training.security.crypto import DecryptionError, decrypt_stream, read_chunks
from azaion_training.security.keys import model_key
from azaion_training.settings import Settings

logger = get_logger("distribution.fetch")


@dataclass(frozen=True)
class FetchResult:
    name: str
    path: Path
    size: int
    sha256: str
    verified: bool  # against an authenticated manifest (False with no_manifest)


def fetch_model_bytes(settings: Settings, name: str, target: str = "azaion", folder: str = "models",
                      no_manifest: bool = False) -> bytes:
    """The decrypted, SHA-256-verified model, in memory."""
    if no_manifest:
        return fetch_without_manifest(settings, name, target, folder)
    parts: list[bytes] = []
    _fetch(settings, name, target, folder, parts.append)
    return b"".join(parts)


def fetch_model_to_file(settings: Settings, name: str, out: Path | None = None, target: str = "azaion",
                        folder: str = "models", no_manifest: bool = False) -> FetchResult:
    """Fetch, verify and write the model to `out` (default ./NAME) atomically, mode 0600."""
    out = Path(out) if out else Path.cwd() / checked_name(name, "model name")
    if out.is_dir():
        out = out / checked_name(name, "model name")
    if no_manifest:
        data = fetch_without_manifest(settings, name, target, folder)
        atomic_write_bytes(out, data, mode=0o600)
        return FetchResult(name, out, len(data), hashlib.sha256(data).hexdigest(), verified=False)
    with atomic_writer(out, mode=0o600) as handle:
        manifest = _fetch(settings, name, target, folder, handle.write)
    return FetchResult(name, out, manifest["plaintext"]["size"], manifest["plaintext"]["sha256"], verified=True)


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
        cache = settings.cdn.cache_dir or Layout(settings.paths).models / "cache"
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


def _fetch(settings: Settings, name: str, target: str, folder: str, write: Callable[[bytes], object]) -> dict:
    """Decrypt the published model into `write`; raises before returning when anything does
    not match the manifest (callers discard what was written)."""
    name = checked_name(name, "model name")
    folder = checked_name(folder, "folder")
    key = model_key(settings)
    layout = Layout(settings.paths)
    small_name, big_name, _ = part_names(name)
    store = open_target(settings, target)
    try:
        manifest = _manifest(store, layout, folder, name, mac_key(settings))
        small = store.get_small(folder, small_name)
        _check_part(small_name, len(small), hashlib.sha256(small).hexdigest(), manifest["small"])
        cache = settings.cdn.cache_dir or layout.models / "cache"
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
    log(logger, logging.INFO, "fetched and verified the model", name=name, folder=folder,
        bytes=manifest["plaintext"]["size"], target=store.description)
    return manifest


def _manifest(store: Target, layout: Layout, folder: str, name: str, key: bytes) -> dict[str, Any]:
    """The authenticated manifest published with the model (through the target), else the local copy."""
    manifest_name = part_names(name)[2]
    try:
        text = store.get_small(folder, manifest_name)
        origin = f"{store.description} {folder}/{manifest_name}"
    except ResourceNotFound:
        local = local_manifest_path(layout, folder, name)
        if not local.is_file():
            raise OperationFailed(
                f"model {folder}/{name} has no manifest on {store.description} nor at {local}: it was not published "
                "completely (run `azaion publish` again), or by other tooling (then fetch it with --no-manifest, "
                "which checks the padding and the ONNX structure only)") from None
        text, origin = local.read_bytes(), str(local)
    return verify(text, origin, key, folder, name)


def _check_part(filename: str, size: int, sha256: str, expected: dict[str, Any]) -> None:
    if size != expected["size"] or sha256 != expected["sha256"]:
        raise DecryptionError(
            f"part {filename} does not match its manifest (size {size}, expected {expected['size']}; SHA-256 "
            f"{sha256[:12]}…, expected {str(expected['sha256'])[:12]}…): it was tampered with, truncated, or "
            "belongs to another publish of the model; publish again or clear the CDN cache")


def served_plaintext_sha256(settings: Settings, name: str, target: str, folder: str = "models") -> str | None:
    """SHA-256 of the plaintext the target's authenticated manifest names: what a fetch from the
    target yields now (None when the target has no manifest of that name)."""
    name = checked_name(name, "model name")
    folder = checked_name(folder, "folder")
    store = open_target(settings, target)
    try:
        manifest_name = part_names(name)[2]
        try:
            text = store.get_small(folder, manifest_name)
        except ResourceNotFound:
            return None
        return verify(text, f"{store.description} {folder}/{manifest_name}", mac_key(settings), folder,
                      name)["plaintext"]["sha256"]
    finally:
        store.close()
