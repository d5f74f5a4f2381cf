"""The publish manifest (`<name>.manifest.json`, docs/encryption.md): sizes and SHA-256 of the
plaintext, the ciphertext and each part, bound to its folder and name and authenticated with
HMAC-SHA256 under a key derived from MODEL_ENCRYPTION_KEY. Anyone who can write to the API
or the CDN can swap files, but only a holder of the model key can write a manifest that
`fetch-model` accepts for a given folder/name.

Format 3 carries `version` (1, 2, ... per model name and target, covered by the MAC) and
names the version's own parts `<name>.v<N>.small` / `<name>.v<N>.big`, so a publish can
write them beside the served ones and switch the manifest last. Format 2 (no version, parts
`<name>.small` / `<name>.big`) is still read, as version 0. Manifests of format 1 (written
before manifests carried a MAC) are refused: re-publish the model, or fetch it with
`--no-manifest`.
"""

import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any

from azaion_training.errors import OperationFailed
from azaion_training.logs import register_secret
from azaion_training.settings import Settings, require_secret

MANIFEST_FORMAT = "azaion-aes-256-cbc-split/3"
UNVERSIONED_FORMAT = "azaion-aes-256-cbc-split/2"  # read as version 0, parts under the plain names
UNAUTHENTICATED_FORMAT = "azaion-aes-256-cbc-split/1"
MAC_KEY_LABEL = b"azaion-training manifest MAC v1"
PARTS = ("plaintext", "ciphertext", "small", "big")
MAX_VERSION = 10**15 - 1


class ManifestRefused(OperationFailed):
    """The manifest is not authentic, not for this model, or not of a format fetch accepts."""


def part_names(name: str) -> tuple[str, str, str]:
    """The plain small part, big part and manifest resource names of a published model. The
    plain part names are what format-2 manifests name, what models published by other tooling
    use, and what a publish keeps a copy under for the Azaion platform's own loaders."""
    return f"{name}.small", f"{name}.big", f"{name}{MANIFEST_SUFFIX}"


MANIFEST_SUFFIX = ".manifest.json"


def local_manifests(published: Path) -> list[Path]:
    """The local copies of publish manifests under `published` (layout.published: one folder per
    resource folder), whatever the model names."""
    if not published.is_dir():
        return []
    return sorted(p for p in published.glob(f"*/*{MANIFEST_SUFFIX}") if p.is_file() or p.is_symlink())


def version_part_names(name: str, version: int) -> tuple[str, str]:
    """The small and big part names of one published version (version 0: the plain names)."""
    if version == 0:
        return part_names(name)[:2]
    return f"{name}.v{version}.small", f"{name}.v{version}.big"


def part_version(name: str, filename: str) -> int | None:
    """N when `filename` is `<name>.v<N>.small|big`, else None."""
    match = re.fullmatch(re.escape(name) + r"\.v([1-9][0-9]{0,14})\.(?:small|big)", filename)
    return int(match.group(1)) if match else None


def manifest_version(manifest: dict[str, Any]) -> int:
    """The manifest's version; 0 for a format-2 manifest (written before versions existed)."""
    return manifest.get("version", 0) if manifest.get("format") == MANIFEST_FORMAT else 0


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
    if form not in (MANIFEST_FORMAT, UNVERSIONED_FORMAT):
        raise ManifestRefused(f"manifest {origin} has format {str(form)[:60]!r}; this version reads {MANIFEST_FORMAT} "
                              f"and {UNVERSIONED_FORMAT}")
    expected = hmac.new(key, canonical(manifest), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, str(manifest.get("mac", ""))):
        raise ManifestRefused(
            f"manifest {origin} fails its authentication check: it was altered, or written with another model key "
            "(MODEL_ENCRYPTION_KEY is not the one it was published with)")
    version = manifest.get("version") if form == MANIFEST_FORMAT else 0
    if type(version) is not int or not (1 if form == MANIFEST_FORMAT else 0) <= version <= MAX_VERSION:
        raise ManifestRefused(f"manifest {origin} has no valid version ({str(version)[:20]!r})")
    small_name, big_name = version_part_names(name, version)
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
