"""Who may use the cockpit (docs/cockpit.md).

Credentials are COCKPIT_TOKEN (the operator is then called "cockpit") and the named operators
of COCKPIT_USERS: a file readable by its owner only, one `name:scrypt:N:r:p:SALT:HASH` line per
operator (salt and hash base64), written by `azaion serve add-user NAME`. A login exchanges a
token for a session cookie `<payload>.<signature>`: payload = base64url JSON {operator,
expiry, nonce}, signature = HMAC-SHA256 under a key derived from the credentials (changing the
token or the users file ends every session). The form's CSRF token is an HMAC of the session's
nonce, so it needs no server-side table either.
"""

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from azaion_training.errors import ConfigError, InputError
from azaion_training.settings import Settings

SHARED_OPERATOR = "cockpit"  # who COCKPIT_TOKEN's holder is in the promotion history
MIN_REMOTE_TOKEN = 32  # characters of COCKPIT_TOKEN needed to listen beyond loopback
OPERATOR_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}
COOKIE = "azaion_cockpit"
COOKIE_MAX = 1024  # a longer cookie is not one of ours


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ---------------------------------------------------------------------------------- binding


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, settings: Settings) -> None:
    """A blank token is refused anywhere; listening beyond loopback needs a token of at least
    MIN_REMOTE_TOKEN characters (or only named operators), in every environment."""
    cockpit = settings.cockpit
    token = cockpit.token.get_secret_value() if cockpit.token is not None else None
    if token is not None and not token.strip():
        raise ConfigError("COCKPIT_TOKEN is blank: set a real token (e.g. `python -c 'import secrets; "
                          "print(secrets.token_urlsafe(32))'`) or unset it")
    if is_loopback(host):
        return
    if token is None and cockpit.users_file is None:
        raise ConfigError(f"refusing to listen on {host}: anything but loopback (127.0.0.1, ::1, localhost) "
                          "needs COCKPIT_TOKEN (at least 32 characters) or COCKPIT_USERS; set one, or use "
                          "--host 127.0.0.1 (behind an SSH tunnel or a proxy)")
    if token is not None and len(token) < MIN_REMOTE_TOKEN:
        raise ConfigError(f"refusing to listen on {host}: COCKPIT_TOKEN has {len(token)} characters, and "
                          f"anything but loopback needs at least {MIN_REMOTE_TOKEN} (e.g. `python -c 'import "
                          "secrets; print(secrets.token_urlsafe(32))'`)")


# ---------------------------------------------------------------------------------- users file


@dataclass(frozen=True)
class User:
    name: str
    salt: bytes
    digest: bytes
    n: int
    r: int
    p: int

    def matches(self, token: str) -> bool:
        derived = hashlib.scrypt(token.encode(), salt=self.salt, n=self.n, r=self.r, p=self.p,
                                 dklen=len(self.digest), maxmem=256 << 20)
        return hmac.compare_digest(derived, self.digest)

    def __repr__(self) -> str:
        return f"User({self.name!r})"


def user_line(name: str, token: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(token.encode(), salt=salt, dklen=32, **SCRYPT)
    return f"{name}:scrypt:{SCRYPT['n']}:{SCRYPT['r']}:{SCRYPT['p']}:{_b64(salt)}:{_b64(digest)}"


def _check_mode(path: Path) -> os.stat_result:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"COCKPIT_USERS={path} not found: create it with `azaion serve add-user NAME`") from None
    except OSError as exc:
        raise ConfigError(f"COCKPIT_USERS={path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"COCKPIT_USERS={path} is not a regular file")
    if info.st_mode & 0o077:
        raise ConfigError(f"COCKPIT_USERS={path} has mode {stat.S_IMODE(info.st_mode):04o}: it must be readable by "
                          f"its owner only; run `chmod 600 {path}`")
    return info


def _parse_user(path: Path, number: int, line: str) -> User:
    parts = line.split(":")
    problem = None
    if len(parts) != 7 or parts[1] != "scrypt":
        problem = "expected NAME:scrypt:N:r:p:SALT:HASH (as `azaion serve add-user` writes it)"
    elif not OPERATOR_NAME.fullmatch(parts[0]) or parts[0] == SHARED_OPERATOR:
        problem = (f"the name must be 1-64 characters of A-Z a-z 0-9 . _ - (not {SHARED_OPERATOR!r}, the "
                   "COCKPIT_TOKEN holder)")
    else:
        try:
            n, r, p = (int(v) for v in parts[2:5])
            salt, digest = _unb64(parts[5]), _unb64(parts[6])
            if not (2 <= n <= 2 ** 20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16
                    and len(salt) >= 8 and len(digest) >= 16):
                raise ValueError
            return User(parts[0], salt, digest, n, r, p)
        except ValueError:
            problem = "bad scrypt parameters, salt or hash"
    raise ConfigError(f"COCKPIT_USERS={path}:{number}: {problem} (the line is not shown)")


def load_users(path: Path) -> tuple[dict[str, User], bytes]:
    """The operators of a users file and its bytes (for the session key); a ConfigError for a
    file others may read, a malformed line or a name given twice."""
    _check_mode(path)
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"COCKPIT_USERS={path} cannot be read as UTF-8 text: {exc}") from None
    users: dict[str, User] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user = _parse_user(path, number, line)
        if user.name in users:
            raise ConfigError(f"COCKPIT_USERS={path}:{number}: operator {user.name!r} is listed twice")
        users[user.name] = user
    return users, data


def add_user(path: Path, name: str, replace: bool = False) -> str:
    """Add (or with `replace`, renew) operator `name` in the users file, created 0600 when
    missing; returns the new token, which is stored only as its scrypt hash."""
    from azaion_training.fsutil import atomic_write_text

    if not OPERATOR_NAME.fullmatch(name) or name == SHARED_OPERATOR:
        raise InputError(f"invalid operator name {name!r}: use 1-64 characters of A-Z a-z 0-9 . _ - "
                         f"(not {SHARED_OPERATOR!r}, the COCKPIT_TOKEN holder)")
    lines: list[str] = []
    if path.exists():
        users, data = load_users(path)
        if name in users and not replace:
            raise InputError(f"operator {name!r} is already in {path}: pass --replace to give them a new token")
        lines = [line for line in data.decode("utf-8").splitlines()
                 if not line.strip().startswith(f"{name}:")]
    token = secrets.token_urlsafe(32)
    lines.append(user_line(name, token))
    atomic_write_text(path, "\n".join(lines) + "\n", mode=0o600)
    return token


# ---------------------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class Session:
    operator: str
    expires: int
    csrf: str


class Credentials:
    """COCKPIT_TOKEN and COCKPIT_USERS as loaded at start; signs and checks session cookies."""

    def __init__(self, token: str | None, users: dict[str, User], users_bytes: bytes = b"",
                 session_s: float = 12 * 3600):
        self._token = token.encode() if token else None
        self._users = users
        self.session_s = int(session_s)
        material = (self._token or b"") + b"\n" + users_bytes
        self._key = hmac.new(b"azaion-cockpit-session-v1", material, hashlib.sha256).digest()
        self._cache_key = secrets.token_bytes(32)  # verified user tokens, keyed by an HMAC: never the token
        self._verified: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()  # scrypt checks one at a time: wrong tokens cost at most one core
        self._revoked: dict[str, int] = {}  # signatures of sessions logged out -> their expiry

    @classmethod
    def from_settings(cls, settings: Settings) -> "Credentials":
        cockpit = settings.cockpit
        users, data = load_users(Path(cockpit.users_file)) if cockpit.users_file else ({}, b"")
        token = cockpit.token.get_secret_value() if cockpit.token is not None else None
        return cls(token, users, data, cockpit.session_hours * 3600)

    def __repr__(self) -> str:
        return f"Credentials(token={'set' if self._token else 'unset'}, users={sorted(self._users)})"

    @property
    def protected(self) -> bool:
        return self._token is not None or bool(self._users)

    def _known(self, operator: str) -> bool:
        return operator in self._users or (operator == SHARED_OPERATOR and self._token is not None)

    def operator_of(self, token: str) -> str | None:
        """Who holds `token` (SHARED_OPERATOR for COCKPIT_TOKEN), or None."""
        given = token.encode("utf-8", "replace")
        if not given or len(given) > 512:
            return None
        if self._token is not None and hmac.compare_digest(given, self._token):
            return SHARED_OPERATOR
        if not self._users:
            return None
        cache = hmac.new(self._cache_key, given, hashlib.sha256).digest()
        with self._lock:
            known = self._verified.get(cache)
            if known is not None and known in self._users:
                return known
            for user in self._users.values():
                if user.matches(token):
                    self._verified[cache] = user.name
                    while len(self._verified) > 256:
                        self._verified.popitem(last=False)
                    return user.name
        return None

    # ------------------------------------------------------------------ sessions

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def _csrf(self, nonce: str) -> str:
        return _b64(hmac.new(self._key, b"csrf:" + nonce.encode(), hashlib.sha256).digest())

    def issue(self, operator: str, now: float | None = None) -> str:
        """A session cookie value for `operator`, valid for session_s seconds."""
        expires = int((time.time() if now is None else now) + self.session_s)
        payload = _b64(json.dumps({"op": operator, "exp": expires, "n": secrets.token_hex(16)},
                                  separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def session(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie value carries, or None: forged, expired, or of an operator no
        longer known."""
        if not cookie or len(cookie) > COOKIE_MAX or cookie.count(".") != 1:
            return None
        payload, signature = cookie.split(".")
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()) or signature in self._revoked:
            return None
        try:
            data = json.loads(_unb64(payload))
            operator, expires, nonce = str(data["op"]), int(data["exp"]), str(data["n"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires <= (time.time() if now is None else now) or not self._known(operator):
            return None
        return Session(operator, expires, self._csrf(nonce))

    def revoke(self, cookie: str | None) -> None:
        """Log a session out for good (until a restart; it expires anyway): its cookie no longer counts."""
        session = self.session(cookie)
        if session is None or cookie is None:
            return
        now = time.time()
        with self._lock:
            self._revoked = {sig: exp for sig, exp in self._revoked.items() if exp > now}
            self._revoked[cookie.split(".")[1]] = session.expires
