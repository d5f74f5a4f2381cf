"""Base weights: `azaion weights pull NAME` into <root>/models/base/NAME.

Training never downloads anything: a bare `TRAINING_MODEL` such as `yolo26m.pt` (no '/') names a
file in models/base/, fetched once by `azaion weights pull` from `WEIGHTS_BASE_URL` (the
Ultralytics release assets of the pinned Ultralytics version, or a mirror). A download is
stored only when it is complete and loads as an Ultralytics checkpoint; anything else leaves
nothing behind.
"""

import contextlib
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from azaion_training.errors import ConfigError, InputError, OperationFailed
from azaion_training.fsutil import TEMP_PREFIX, fsync_dir
from azaion_training.layout import Layout, checked_name
from azaion_training.logs import get_logger, log
from azaion_training.settings import Settings

logger = get_logger("lifecycle")

TIMEOUT_S = 60.0  # per connect/read: a stalled mirror fails instead of hanging
CHUNK = 1 << 20


@dataclass(frozen=True)
class PullResult:
    name: str
    path: Path
    downloaded: bool  # False: it was already there
    size: int
    sha256: str | None  # of the download (None when nothing was downloaded)
    source: str  # where it came from, without credentials

    def to_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "downloaded": self.downloaded, "size": self.size,
                "sha256": self.sha256, "source": self.source}


def pull_command(name: str) -> str:
    return f"azaion weights pull {name}"


def is_base_name(spec: str) -> bool:
    """A TRAINING_MODEL that names base weights: a .pt file name without any directory."""
    return "/" not in spec and spec.endswith(".pt")


def base_weights_path(spec: str, layout: Layout) -> Path:
    """models/base/NAME for a bare weights name; a ConfigError naming the pull command when the
    file is not there yet (checked before any work starts)."""
    path = layout.base_weights / checked_name(spec, "base weights name")
    if not path.is_file():
        raise ConfigError(f"TRAINING_MODEL {spec!r}: base weights not found in {layout.base_weights}: "
                          f"fetch them once with `{pull_command(spec)}`")
    return path


def resolve_training_model(spec: str, layout: Layout) -> str:
    """TRAINING_MODEL as training loads it: a bare weights name resolves into models/base/
    (see base_weights_path); paths and model yamls are returned unchanged."""
    return str(base_weights_path(spec, layout)) if is_base_name(spec) else spec


def without_credentials(url: str) -> str:
    """The URL minus user:password@ and the query string (a mirror may carry a token there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_checkpoint(path: Path) -> None:
    """Load `path` the way Ultralytics does (torch.load with weights_only=False under its
    module remapping); OperationFailed unless it is a dict holding 'model' or 'ema'."""
    from ultralytics.nn.tasks import torch_safe_load

    try:
        checkpoint, _ = torch_safe_load(str(path), safe_only=False)
    except Exception as exc:  # a damaged or foreign file fails in torch/pickle/zip with many types
        raise OperationFailed(f"not a loadable checkpoint: {type(exc).__name__}: {str(exc).strip()[:200]}") from None
    if not isinstance(checkpoint, dict) or not (checkpoint.get("model") or checkpoint.get("ema")):
        raise OperationFailed("not an Ultralytics checkpoint (no 'model' or 'ema' in it)")


def _download(url: str, handle, shown: str) -> tuple[int, str]:
    """Stream `url` into `handle`; (bytes, sha256). A short body is an error, never a file."""
    import httpx

    digest = hashlib.sha256()
    size = 0
    try:
        # identity: the stored bytes are the file itself, and Content-Length counts exactly them
        with httpx.stream("GET", url, headers={"Accept-Encoding": "identity"}, follow_redirects=True,
                          timeout=TIMEOUT_S) as response:
            if response.status_code == 404:
                raise InputError(f"{shown}: not found (HTTP 404): check the weights name and WEIGHTS_BASE_URL")
            if response.status_code != 200:
                raise OperationFailed(f"{shown}: HTTP {response.status_code}")
            expected = response.headers.get("content-length")
            for chunk in response.iter_raw(CHUNK):
                handle.write(chunk)
                digest.update(chunk)
                size += len(chunk)
    except httpx.RemoteProtocolError as exc:  # the connection ended before the announced length
        raise OperationFailed(f"{shown}: refused, truncated download ({size} bytes received; {exc})") from None
    except httpx.HTTPError as exc:  # connection refused or reset, timeout
        reason = str(exc).replace(url, shown)
        raise OperationFailed(f"{shown}: download failed ({type(exc).__name__}: {reason})") from None
    if expected is not None and expected.isdigit() and int(expected) != size:
        raise OperationFailed(f"{shown}: refused, truncated download ({size} of {expected} bytes)")
    return size, digest.hexdigest()


def pull(settings: Settings, name: str) -> PullResult:
    """Fetch base weights NAME into models/base/NAME (see the module docstring)."""
    checked_name(name, "base weights name")
    if not name.endswith(".pt"):
        raise InputError(f"base weights name {name!r}: expected a .pt file name such as yolo26m.pt")
    layout = Layout(settings.paths)
    target = layout.base_weights / name
    base_url = settings.lifecycle.weights_base_url.rstrip("/")
    url = f"{base_url}/{name}"
    shown = without_credentials(url)
    if target.is_file():
        log(logger, logging.INFO, "base weights already present", name=name, path=str(target))
        return PullResult(name, target, False, target.stat().st_size, None, shown)
    if urlsplit(base_url).scheme not in ("http", "https"):
        raise ConfigError(f"WEIGHTS_BASE_URL {without_credentials(base_url)!r}: expected an http(s) URL")

    layout.base_weights.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".pt", dir=layout.base_weights)
    try:
        with os.fdopen(fd, "wb") as handle:
            size, sha256 = _download(url, handle, shown)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            check_checkpoint(Path(temp))
        except OperationFailed as exc:
            raise OperationFailed(f"{shown}: refused, {exc}") from None
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_dir(layout.base_weights)
    log(logger, logging.INFO, "base weights pulled", name=name, path=str(target), size=size, sha256=sha256,
        source=shown)
    return PullResult(name, target, True, size, sha256, shown)
