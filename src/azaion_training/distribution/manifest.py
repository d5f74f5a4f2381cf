"""The publish manifest (`<name>.manifest.json`, docs/encryption.md): sizes and SHA-256 of the
plaintext, the ciphertext and each part, bound to its folder and name and authenticated with
HMAC-SHA256 under a key derived from MODEL_ENCRYPTION_KEY. Anyone who can write to the API
or the CDN can swap files, but only a holder of the model key can write a manifest that
`fetch-model` accepts for a given folder/name.

Manifests of format 1 (written before manifests carried a MAC) are refused: re-publish the
model, or fetch it with `--no-manifest`.
"""

import hashlib
import hmac
import json
from typing import Any

from azaion_training.errors import OperationFailed
from azaion_training.logs import register_secret
from azaion_training.settings import Settings, require_secret

MANIFEST_FORMAT = "azaion-aes-256-cbc-split/2"
UNAUTHENTICATED_FORMAT = "azaion-aes-256-cbc-split/1"
MAC_KEY_LABEL = b"azaion-training manifest MAC v1"
PARTS = ("plaintext", "ciphertext", "small", "big")


class ManifestRefused(OperationFailed):
    """The manifest is not authentic, not for this model, or not of a format fetch accepts."""


def part_names(name: str) -> tuple[str, str, str]:
    """The small part, big part and manifest resource names of a published model."""
    return f"{name}.small", f"{name}.big", f"{name}.manifest.json"


def mac_key(settings: Settings) -> bytes:
    """HMAC-SHA256(key = UTF-8 MODEL_ENCRYPTION_KEY, message = MAC_KEY_LABEL): a key of its own,
    so the MAC never reuses the AES key."""
    secret = require_secret(settings.security.model_encryption_key, "MODEL_ENCRYPTION_KEY")
    key = hmac.new(secret.encode("utf-8"), MAC_KEY_LABEL, hashlib.sha256).digest()
    register_secret(key.hex())
    return key


def canonical(manifest: dict[str, Any]) -> bytes:
    """The bytes the MAC covers: every field but `mac`, keys sorted, no spaces, UTF-8."""
    body = {key: value for key, value in manifest.items() if key != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(manifest: dict[str, Any], key: bytes) -> dict[str, Any]:
    return {**manifest, "mac": hmac.new(key, canonical(manifest), hashlib.sha256).hexdigest()}


def verify(text: bytes, origin: str, key: bytes, folder: str, name: str) -> dict[str, Any]:
    """The manifest in `text` when it is well formed, authentic, and describes folder/name."""
    try:
        manifest = json.loads(text)
        form = manifest.get("format")
    except (ValueError, AttributeError):
        raise ManifestRefused(f"manifest {origin} is not valid JSON") from None
    if form == UNAUTHENTICATED_FORMAT:
        raise ManifestRefused(
            f"manifest {origin} was written before manifests were authenticated ({form}): re-publish the model "
            "with `azaion publish`, or fetch it with --no-manifest (integrity then rests on the padding check only)")
    if form != MANIFEST_FORMAT:
        raise ManifestRefused(f"manifest {origin} has format {str(form)[:60]!r}; this version reads {MANIFEST_FORMAT}")
    expected = hmac.new(key, canonical(manifest), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, str(manifest.get("mac", ""))):
        raise ManifestRefused(
            f"manifest {origin} fails its authentication check: it was altered, or written with another model key "
            "(MODEL_ENCRYPTION_KEY is not the one it was published with)")
    small_name, big_name, _ = part_names(name)
    described = (manifest.get("folder"), manifest.get("name"))
    if described != (folder, name):
        raise ManifestRefused(f"manifest {origin} describes model {described[0]}/{described[1]}, not {folder}/{name}: "
                              "the files of another model were put in its place")
    try:
        well_formed = all(isinstance(manifest[part]["size"], int) and isinstance(manifest[part]["sha256"], str)
                          for part in PARTS)
        names = (manifest["small"]["name"], manifest["big"]["name"])
    except (KeyError, TypeError):
        well_formed, names = False, ()
    if not well_formed or names != (small_name, big_name):
        raise ManifestRefused(f"manifest {origin} lacks the sizes, hashes or part names of {folder}/{name}")
    return manifest
