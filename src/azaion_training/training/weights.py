"""Base weights, and the one way this project reads a checkpoint it did not write itself.

`azaion weights pull NAME` fetches NAME into <root>/models/base/NAME from `WEIGHTS_BASE_URL`
(the Ultralytics release assets of the pinned Ultralytics version, or a mirror). Training never
downloads anything: a bare `TRAINING_MODEL` such as `yolo26m.pt` (no '/') names a file there.

A download is stored only when every check passed, else nothing is left behind:

- its sha256 (and size) equals the known one: `--sha256 HEX`, else the entry for NAME in the
  `weights.lock` shipped inside the package (resources/weights.lock, same as the repository's
  weights.lock), else the hash an earlier pull recorded in models/base/weights.lock.json. A name
  with no known hash is stored only with `--trust-on-first-use`, which records the hash it saw;
- it is complete (the announced length), at most `WEIGHTS_MAX_BYTES` (checked against
  Content-Length before reading and while reading), and done within `WEIGHTS_DEADLINE_S`;
- redirects (at most MAX_REDIRECTS, followed here, never by the HTTP library) stay on the base
  URL's host or go to a host named in `WEIGHTS_ALLOW_REDIRECT_HOSTS`, never from https to http;
- it loads weights-only (`load_weights_only`).

Weights-only loading: Ultralytics checkpoints are pickles, and unpickling runs whatever callables
the file names. `load_weights_only` is the one function that unpickles a checkpoint from outside
(a pull, TRAINING_MODEL, a fine-tune parent, a run being resumed): Ultralytics' allow-list load
(`torch_safe_load(path, safe_only=True)`: torch's `weights_only=True` unpickler plus the known
Ultralytics/torch model classes), which refuses a file that names anything else without running
it. Training then hands the file to `YOLO(...)`, which unpickles it again without that
restriction; so the file Ultralytics loads must be the file that was checked.
`checked_start_weights` guarantees it: it copies the source once into a private file (hashing the
bytes it copies), checks that copy, and returns the copy's path for `YOLO(...)`: the checked bytes
are the loaded bytes, whatever happens to the source afterwards. A run being resumed is checked in
place (its last.pt was written by this service inside the run directory, and Ultralytics' resume
must reopen that path).
"""

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from azaion_training.errors import ConfigError, InputError, OperationFailed
from azaion_training.fsutil import TEMP_PREFIX, atomic_write_text, file_size_sha256, fsync_dir
from azaion_training.layout import Layout, checked_name
from azaion_training.locks import InstanceLock
from azaion_training.logs import get_logger, log, register_secret
from azaion_training.settings import LifecycleSettings, Settings

logger = get_logger("lifecycle")

TIMEOUT_S = 60.0  # per connect/read: a stalled mirror fails instead of hanging
CHUNK = 1 << 20
MAX_REDIRECTS = 5
SHIPPED_LOCK = "weights.lock"  # in azaion_training/resources/ (the repository's weights.lock is the same file)
START_WEIGHTS = "start.pt"  # a run's checked private copy of the weights it started from
SHA256 = re.compile(r"[0-9a-f]{64}")
_BLOCKED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class CheckpointRefused(InputError):
    """A checkpoint that does not load weights-only, or does not hold an Ultralytics model."""


# ---------------------------------------------------------------------------------------- loading


def load_weights_only(path: Path, what: str) -> dict[str, Any]:
    """The checkpoint at `path`, unpickled by Ultralytics' allow-list load (weights and known
    model classes only; module docstring). CheckpointRefused, naming `what`, for a file that
    needs anything else to load (nothing in it is run), a damaged file, or one that is not an
    Ultralytics checkpoint (a dict holding 'model' or 'ema')."""
    import torch

    # Ultralytics quietly falls back to a full unpickle where torch lacks the checkpoint scan
    if not hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):
        raise OperationFailed(f"torch {torch.__version__} cannot load checkpoints weights-only (needs torch >= 2.6): "
                              f"refusing to unpickle {what}")
    from ultralytics.nn.tasks import torch_safe_load

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols are not the user's business
            checkpoint, _ = torch_safe_load(str(path), safe_only=True)
    except Exception as exc:  # a damaged or foreign file fails in torch/pickle/zip with many types
        raise CheckpointRefused(f"{what}: refused, {_refusal_reason(exc)}") from None
    if not isinstance(checkpoint, dict) or (checkpoint.get("model") is None and checkpoint.get("ema") is None):
        raise CheckpointRefused(f"{what}: refused, not an Ultralytics checkpoint (no 'model' or 'ema' in it)")
    return checkpoint


def _refusal_reason(exc: Exception) -> str:
    cause = exc.__cause__ or exc
    blocked = _BLOCKED_GLOBAL.search(str(cause))
    if blocked:
        return (f"it needs {blocked.group(1)} to load, which is not on Ultralytics' weights-only allow-list "
                "(a checkpoint holds weights and known model classes; this one would run code or build foreign "
                "objects). Nothing in it was run. Use weights from a source you trust")
    text = " ".join(str(cause).split())[:200] or "empty file"
    return f"not a loadable checkpoint ({type(cause).__name__}: {text})"


def checked_start_weights(source: str, directory: Path, what: str, layout: Layout | None = None) -> str:
    """What to hand to `YOLO(...)` for `source` (a resolved TRAINING_MODEL or --from value): a
    model yaml unchanged; a .pt copied into `directory`/start.pt, checked there (sha256 against
    the known hash when `source` is base weights in models/base/, then `load_weights_only`) and
    returned as that copy's path. Nothing is left in `directory` when a check fails; a
    `directory` created here is removed again."""
    path = Path(source)
    if path.suffix != ".pt":
        return source
    label = f"{what} {source}"
    expected = None
    if layout is not None and path.parent.resolve() == layout.base_weights.resolve():
        expected = known_hash(path.name, layout)
    try:
        original = path.open("rb")
    except OSError as exc:
        raise InputError(f"{label}: cannot read it ({exc.strerror or exc})") from None
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".pt", dir=directory)
    try:
        with original, os.fdopen(fd, "wb") as copy:
            size, sha256 = _copy_hashing(original, copy)
        if expected is not None and not expected.matches(sha256, size):
            raise CheckpointRefused(f"{label}: refused, sha256 {sha256} ({size} bytes) differs from "
                                    f"{expected.describe()}: the file changed since it was pulled. Delete it and "
                                    f"pull it again with `{pull_command(path.name)}`")
        load_weights_only(Path(temp), label)
        target = directory / START_WEIGHTS
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    log(logger, logging.INFO, "start weights checked (weights-only load)", source=source, copy=str(target),
        sha256=sha256, size=size)
    return str(target)


def _copy_hashing(source: BinaryIO, target: BinaryIO) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    while chunk := source.read(CHUNK):
        target.write(chunk)
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


# ---------------------------------------------------------------------------------------- known hashes


@dataclass(frozen=True)
class KnownHash:
    sha256: str
    size: int | None  # None: not known (a --sha256 option)
    origin: str  # where the hash comes from, for messages
    kind: str  # weights.lock | --sha256 | recorded (the `trust` of a PullResult)

    def matches(self, sha256: str, size: int) -> bool:
        return sha256 == self.sha256 and (self.size is None or size == self.size)

    def describe(self) -> str:
        return f"the sha256 {self.sha256} expected by {self.origin}"


def _lock_entries(text: str, where: str, kind: str) -> dict[str, KnownHash]:
    """The `weights` map of a lock document: name -> {"sha256": 64 hex, "size": bytes, ...}."""
    try:
        document = json.loads(text)
        entries = document["weights"]
        if not isinstance(entries, dict):
            raise TypeError("'weights' is not a map")
        known = {}
        for name, entry in entries.items():
            sha256, size = entry["sha256"], entry.get("size")
            if not (isinstance(name, str) and isinstance(sha256, str) and SHA256.fullmatch(sha256)):
                raise ValueError(f"entry {name!r}: sha256 must be 64 lower-case hex digits")
            if size is not None and not (isinstance(size, int) and size > 0):
                raise ValueError(f"entry {name!r}: size must be a positive number of bytes")
            known[name] = KnownHash(sha256, size, where, kind)
        return known
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{where} is not a valid weights lock ({type(exc).__name__}: {exc}): restore it from the "
                          "repository (or delete a local lock to record the hashes again)") from None


def shipped_lock() -> dict[str, KnownHash]:
    """The hashes pinned in the package's weights.lock (the repository's weights.lock)."""
    text = (resources.files("azaion_training") / "resources" / SHIPPED_LOCK).read_text(encoding="utf-8")
    return _lock_entries(text, f"the shipped {SHIPPED_LOCK}", SHIPPED_LOCK)


def recorded_lock(layout: Layout) -> dict[str, KnownHash]:
    """The hashes earlier pulls recorded on this server (models/base/weights.lock.json)."""
    path = layout.base_weights_lock
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable weights lock ({exc})") from None
    return _lock_entries(text, str(path), "recorded")


def known_hash(name: str, layout: Layout) -> KnownHash | None:
    """The pinned hash of NAME (weights.lock), else the one recorded on this server, else None."""
    return shipped_lock().get(name) or recorded_lock(layout).get(name)


def _record(layout: Layout, name: str, sha256: str, size: int, source: str | None, trust: str) -> None:
    path = layout.base_weights_lock
    recorded_lock(layout)  # refuses a damaged lock instead of overwriting it
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        document = {"about": "sha256 and size of the base weights `azaion weights pull` stored here; "
                             "a later pull of the same name must match", "weights": {}}
    document["weights"][name] = {"sha256": sha256, "size": size, "source": source, "trust": trust,
                                 "recorded": datetime.now().astimezone().isoformat(timespec="seconds")}
    atomic_write_text(path, json.dumps(document, indent=2, sort_keys=True) + "\n", mode=0o644)


# ---------------------------------------------------------------------------------------- pull


@dataclass(frozen=True)
class PullResult:
    name: str
    path: Path
    downloaded: bool  # False: it was already there
    size: int
    sha256: str
    source: str | None  # the URL it was downloaded from (after redirects), without credentials
    # what its sha256 was checked against: weights.lock | --sha256 | recorded (an earlier pull here) |
    # trust-on-first-use (nothing known, recorded now) | unchecked (already present, nothing known)
    trust: str

    def to_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "downloaded": self.downloaded, "size": self.size,
                "sha256": self.sha256, "source": self.source, "trust": self.trust}


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
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def file_url(base_url: str, name: str) -> str:
    """NAME appended to the base URL's path; its query (a mirror's token) stays in place."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"WEIGHTS_BASE_URL {without_credentials(base_url)!r}: expected an http(s) URL")
    return urlunsplit((parts.scheme, parts.netloc, f"{parts.path.rstrip('/')}/{quote(name)}", parts.query, ""))


def checked_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    digest = value.strip().lower()
    if not SHA256.fullmatch(digest):
        raise InputError(f"--sha256 {value!r}: expected the file's SHA-256 as 64 hex digits")
    return digest


@dataclass(frozen=True)
class _Limits:
    max_bytes: int
    deadline: float  # time.monotonic() by which the download must be done
    deadline_s: float
    redirect_hosts: frozenset[str]

    @classmethod
    def of(cls, lifecycle: LifecycleSettings) -> "_Limits":
        hosts = {h.strip().lower().rstrip(".") for h in lifecycle.weights_allow_redirect_hosts.split(",")}
        return cls(lifecycle.weights_max_bytes, time.monotonic() + lifecycle.weights_deadline_s,
                   lifecycle.weights_deadline_s, frozenset(hosts - {""}))

    def remaining(self, shown: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise OperationFailed(f"{shown}: refused, not done within WEIGHTS_DEADLINE_S={self.deadline_s:g} s")
        return left


def _redirect_target(current: str, location: str, first_host: str, limits: _Limits, shown: str) -> str:
    target = urljoin(current, location)
    parts = urlsplit(target)
    host = (parts.hostname or "").lower().rstrip(".")
    if parts.scheme not in ("http", "https") or not host:
        raise OperationFailed(f"{shown}: refused, redirected to a URL that is not http(s)")
    if urlsplit(current).scheme == "https" and parts.scheme == "http":
        raise OperationFailed(f"{shown}: refused, redirected from https to http ({without_credentials(target)})")
    if host != first_host and host not in limits.redirect_hosts:
        raise OperationFailed(f"{shown}: refused, redirected to another host {host!r} "
                              f"({without_credentials(target)}); if that host is trusted, add it to "
                              "WEIGHTS_ALLOW_REDIRECT_HOSTS")
    return target


def _download(url: str, handle: BinaryIO, limits: _Limits) -> tuple[int, str, str]:
    """Stream `url` into `handle`, following redirects by the rules above; (bytes, sha256, the
    URL the bytes came from). A short, oversized or late body is an error, never a file."""
    import httpx

    first_host = (urlsplit(url).hostname or "").lower().rstrip(".")
    current, shown = url, without_credentials(url)
    digest, size = hashlib.sha256(), 0
    try:
        with httpx.Client(follow_redirects=False) as client:
            for _ in range(MAX_REDIRECTS + 1):
                timeout = min(TIMEOUT_S, limits.remaining(shown))
                # identity: the stored bytes are the file itself, and Content-Length counts exactly them
                with client.stream("GET", current, headers={"Accept-Encoding": "identity"},
                                   timeout=timeout) as response:
                    if response.is_redirect:
                        current = _redirect_target(current, response.headers["location"], first_host, limits,
                                                   shown)
                        shown = without_credentials(current)
                        continue
                    if response.status_code == 404:
                        raise InputError(f"{shown}: not found (HTTP 404): check the weights name and "
                                         "WEIGHTS_BASE_URL")
                    if response.status_code != 200:
                        raise OperationFailed(f"{shown}: HTTP {response.status_code}")
                    announced = response.headers.get("content-length")
                    announced = int(announced) if announced and announced.isdigit() else None
                    if announced is not None and announced > limits.max_bytes:
                        raise OperationFailed(f"{shown}: refused, {announced} bytes announced, more than "
                                              f"WEIGHTS_MAX_BYTES={limits.max_bytes}")
                    for piece in response.iter_raw():  # as it arrives: the deadline is checked on every piece
                        size += len(piece)
                        if size > limits.max_bytes:
                            raise OperationFailed(f"{shown}: refused, more than WEIGHTS_MAX_BYTES="
                                                  f"{limits.max_bytes} bytes")
                        limits.remaining(shown)
                        handle.write(piece)
                        digest.update(piece)
                    if announced is not None and announced != size:
                        raise OperationFailed(f"{shown}: refused, truncated download ({size} of {announced} bytes)")
                    return size, digest.hexdigest(), current
            raise OperationFailed(f"{shown}: refused, more than {MAX_REDIRECTS} redirects")
    except httpx.RemoteProtocolError as exc:  # the connection ended before the announced length
        raise OperationFailed(f"{shown}: refused, truncated download ({size} bytes received; "
                              f"{_scrubbed(exc, url, current)})") from None
    except httpx.TimeoutException:
        limits.remaining(shown)  # past the deadline: say so
        raise OperationFailed(f"{shown}: download failed, no data for {TIMEOUT_S:g} s") from None
    except httpx.HTTPError as exc:  # connection refused or reset
        raise OperationFailed(f"{shown}: download failed ({type(exc).__name__}: {_scrubbed(exc, url, current)})") \
            from None


def _scrubbed(exc: Exception, *urls: str) -> str:
    text = str(exc)
    for url in urls:
        text = text.replace(url, without_credentials(url))
    return text


def _register_url_secrets(url: str) -> None:
    """A mirror's password or query token never reaches a log line."""
    parts = urlsplit(url)
    register_secret(parts.password)
    for pair in parts.query.split("&"):
        register_secret(pair.partition("=")[2])


def _expected(name: str, layout: Layout, wanted: str | None) -> tuple[KnownHash | None, KnownHash | None]:
    """(the hash the file must have, the hash recorded on this server for NAME)."""
    pinned = shipped_lock().get(name)
    recorded = recorded_lock(layout).get(name)
    if wanted is not None:
        if pinned is not None and pinned.sha256 != wanted:
            raise InputError(f"--sha256 {wanted} contradicts {pinned.describe()} for {name}: "
                             "check where each hash comes from")
        return pinned or KnownHash(wanted, None, "--sha256", "--sha256"), recorded
    return pinned or recorded, recorded


def pull(settings: Settings, name: str, sha256: str | None = None, trust_on_first_use: bool = False) -> PullResult:
    """Fetch base weights NAME into models/base/NAME (see the module docstring)."""
    checked_name(name, "base weights name")
    if not name.endswith(".pt"):
        raise InputError(f"base weights name {name!r}: expected a .pt file name such as yolo26m.pt")
    wanted = checked_sha256(sha256)
    lifecycle = settings.lifecycle
    _register_url_secrets(lifecycle.weights_base_url)
    layout = Layout(settings.paths)
    target = layout.base_weights / name
    with InstanceLock(layout.lock_file("weights-pull"), "weights pull"):
        expected, recorded = _expected(name, layout, wanted)
        if target.is_file():
            return _already_present(layout, name, target, expected, recorded, trust_on_first_use)
        if expected is None and not trust_on_first_use:
            raise InputError(f"{name}: no known sha256 (not in the shipped {SHIPPED_LOCK} nor in "
                             f"{layout.base_weights_lock}): pass `--sha256 HEX` from a source you trust, or "
                             "`--trust-on-first-use` to store this download and record its hash")
        url = file_url(lifecycle.weights_base_url, name)
        layout.base_weights.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".pt", dir=layout.base_weights)
        try:
            with os.fdopen(fd, "wb") as handle:
                size, got, final_url = _download(url, handle, _Limits.of(lifecycle))
                handle.flush()
                os.fsync(handle.fileno())
            source = without_credentials(final_url)
            if expected is not None and not expected.matches(got, size):
                raise OperationFailed(f"{source}: refused, sha256 {got} ({size} bytes) differs from "
                                      f"{expected.describe()}; nothing was stored")
            try:
                load_weights_only(Path(temp), source)
            except CheckpointRefused as exc:
                raise OperationFailed(str(exc)) from None
            os.chmod(temp, 0o644)
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        fsync_dir(layout.base_weights)
        trust = expected.kind if expected is not None else "trust-on-first-use"
        if recorded is None or recorded.sha256 != got:
            _record(layout, name, got, size, source, trust)
    log(logger, logging.INFO, "base weights pulled", name=name, path=str(target), size=size, sha256=got,
        source=source, trust=trust)
    return PullResult(name, target, True, size, got, source, trust)


def _already_present(layout: Layout, name: str, target: Path, expected: KnownHash | None,
                     recorded: KnownHash | None, trust_on_first_use: bool) -> PullResult:
    """NAME is already in models/base/: checked against the known hash (nothing is downloaded)."""
    size, got = file_size_sha256(target)
    if expected is not None and not expected.matches(got, size):
        raise OperationFailed(f"{target}: already present, but its sha256 {got} ({size} bytes) differs from "
                              f"{expected.describe()}: delete it and pull it again")
    if expected is not None:
        trust = expected.kind
    elif trust_on_first_use:
        trust = "trust-on-first-use"
    else:
        trust = "unchecked"  # stored before hashes were recorded: --trust-on-first-use records it
    if trust != "unchecked" and (recorded is None or recorded.sha256 != got):
        _record(layout, name, got, size, None, trust)
    log(logger, logging.INFO, "base weights already present", name=name, path=str(target), sha256=got, trust=trust)
    return PullResult(name, target, False, size, got, None, trust)
