"""A development server for the Azaion REST API contract (docs/model-registry.md): real HTTP;
POST /login issues HS256 JWTs that expire; POST /resources/{folder} stores a multipart
`data` upload; POST /resources/get/{folder} returns the resource encrypted with the
caller's transport key. `azaion dev-api` runs it so a development `publish` /
`fetch-model` round-trips without the production API; the tests run it in-process and
switch faults on: fail the next N requests with a status, delay the next N requests,
expire every issued token.

Malformed requests get a 4xx with a JSON `{"error": ...}` naming what was wrong, never a
dropped connection: a Content-Length that is not a number (400), a missing or wrong
Content-Type (415), malformed JSON (400), a body over the cap (413, answered from the headers
before any of the body is read; a body is never read past its Content-Length). Authenticated
routes check the token before reading the body. Uploads are streamed into a temp file in
their target directory and renamed into place when the whole request was read; resources live
as files (under `store`, else in a temp dir of the server's own), never in memory.

Its encryption is written independently of azaion_training.security, straight from the
contract (AES-256-CBC, key SHA-256 of the key string, IV prepended, PKCS7), so tests catch
a product implementation that drifts from the Azaion format.
"""

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from azaion_training.layout import is_safe_name


def reference_calc_hash(text: str) -> str:
    return base64.b64encode(hashlib.sha384(text.encode()).digest()).decode()


def reference_encrypt(data: bytes, key: str) -> bytes:
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(hashlib.sha256(key.encode()).digest()), modes.CBC(iv)).encryptor()
    return iv + encryptor.update(padder.update(data) + padder.finalize()) + encryptor.finalize()


def reference_transport_key(email: str, password: str, hardware: str) -> str:
    hw_hash = reference_calc_hash(f"Azaion_{hardware}_%$$$)0_")
    return reference_calc_hash(f"{email}-{password}-{hw_hash}-#%@AzaionKey@%#---")


def valid_resource(folder: str, name: object) -> bool:
    """Names the server stores (and may write under its store directory)."""
    return (folder == "" or is_safe_name(folder)) and is_safe_name(name)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


MAX_JSON_BYTES = 64 * 1024  # login and get bodies are a few hundred bytes
MAX_UPLOAD_BYTES = 256 * 1024 * 1024  # the API gets the small part of a model (<= 3 KiB); room for tests
MAX_PART_HEADERS = 16 * 1024
DRAIN_LIMIT = 1 << 20  # an unread body up to this is read and discarded so the client sees the answer
CHUNK = 64 * 1024
_DIGITS = re.compile(r"[0-9]{1,18}")
_ROOT_FOLDER = "_root"  # the folder "" on disk


class _Refused(Exception):
    """Answer `status` with {"error": message}; `close`: the request cannot be framed, hang up."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


@dataclass
class Fault:
    status: int = 0  # answer with this status instead of serving (0 = serve)
    delay_s: float = 0.0
    times: int = 1
    path_prefix: str = "/"


class _PendingFile:
    """A file written as a temp file in its target directory and renamed into place on commit."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        self.path, self.temp, self.handle = path, Path(temp), os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        self.handle.write(data)

    def commit(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.temp, self.path)

    def discard(self) -> None:
        self.handle.close()
        with contextlib.suppress(FileNotFoundError):
            self.temp.unlink()


class ResourceStore(MutableMapping):
    """(folder, name) -> bytes, kept as files <root>/<folder or _root>/<name>."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, folder: str, name: str) -> Path:
        if not valid_resource(folder, name):
            raise KeyError((folder, name))
        return self.root / (folder or _ROOT_FOLDER) / name

    def writer(self, folder: str, name: str) -> _PendingFile:
        return _PendingFile(self.path(folder, name))

    def __getitem__(self, key: tuple[str, str]) -> bytes:
        try:
            return self.path(*key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise KeyError(key) from None

    def __setitem__(self, key: tuple[str, str], data: bytes) -> None:
        pending = self.writer(*key)
        try:
            pending.write(data)
            pending.commit()
        except BaseException:
            pending.discard()
            raise

    def __delitem__(self, key: tuple[str, str]) -> None:
        try:
            self.path(*key).unlink()
        except FileNotFoundError:
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        if not self.root.is_dir():
            return
        for directory in sorted(self.root.iterdir()):
            if directory.is_dir():
                folder = "" if directory.name == _ROOT_FOLDER else directory.name
                for file in sorted(directory.iterdir()):
                    if file.is_file() and not file.name.startswith("."):
                        yield folder, file.name

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass
class DevAzaionApi:
    users: dict[str, str] = field(repr=False)
    token_ttl_s: float = 300.0
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port
    store: Path | None = None  # resources are files here (<store>/<folder>/<name>) and survive restarts
    max_json_bytes: int = MAX_JSON_BYTES
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    requests: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status)
    faults: list[Fault] = field(default_factory=list)
    issued_tokens: list[str] = field(default_factory=list, repr=False)
    hardware_seen: set[str] = field(default_factory=set)
    resources: ResourceStore = field(init=False, repr=False)

    def __post_init__(self):
        self._signing_key = os.urandom(32)
        self._generation = 0  # tokens of older generations are expired
        self._lock = threading.Lock()
        # without a store, the resources still live on disk: a temp dir of this server's own
        self._temp = None if self.store is not None else tempfile.TemporaryDirectory(prefix="azaion-dev-api-")
        self.resources = ResourceStore(self.store if self.store is not None else Path(self._temp.name))
        self._server = ThreadingHTTPServer((self.host, self.port), _handler_for(self))
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host  # nosec B104 # a comparison
        return f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        """Block until interrupted (the server already runs in its thread)."""
        self._thread.join()

    def put(self, folder: str, name: str, data: bytes) -> None:
        self.resources[(folder, name)] = data

    def get(self, folder: str, name: str) -> bytes | None:
        return self.resources.get((folder, name))

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        if self._temp is not None:
            self._temp.cleanup()

    # --- switches used by tests
    def fail_next(self, status: int, times: int = 1, path_prefix: str = "/") -> None:
        self.faults.append(Fault(status=status, times=times, path_prefix=path_prefix))

    def delay_next(self, seconds: float, times: int = 1, path_prefix: str = "/") -> None:
        self.faults.append(Fault(delay_s=seconds, times=times, path_prefix=path_prefix))

    def expire_tokens(self) -> None:
        """Every token issued so far is rejected from now on (as if its exp had passed)."""
        self._generation += 1

    def count(self, method: str, path_prefix: str, status: int | None = None) -> int:
        return sum(1 for m, p, s in self.requests
                   if m == method and p.startswith(path_prefix) and (status is None or s == status))

    # --- JWT
    def issue_token(self, email: str) -> str:
        now = time.time()
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = _b64url(json.dumps({"unique_name": email, "role": "ResourceUploader", "iat": now,
                                     "gen": self._generation, "exp": now + self.token_ttl_s}).encode())
        signature = hmac.new(self._signing_key, f"{header}.{claims}".encode(), hashlib.sha256).digest()
        token = f"{header}.{claims}.{_b64url(signature)}"
        self.issued_tokens.append(token)
        return token

    def token_user(self, authorization: str | None) -> str | None:
        if not authorization or not authorization.startswith("Bearer "):
            return None
        try:
            header, claims, signature = authorization.removeprefix("Bearer ").split(".")
            expected = hmac.new(self._signing_key, f"{header}.{claims}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(_b64url(expected), signature):
                return None
            data = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
            if data["exp"] < time.time() or data["gen"] < self._generation:
                return None
            return data["unique_name"]
        except (ValueError, KeyError, TypeError):
            return None

    def take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if path.startswith(fault.path_prefix):
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                    return fault
        return None


class _Multipart:
    """A multipart/form-data body read in chunks: each part's content goes to the sink its
    headers choose (or nowhere), so no part is ever held whole in memory."""

    def __init__(self, read: Callable[[int], bytes], boundary: bytes):
        self.read = read  # b"" at the end of the body
        self.delimiter = b"\r\n--" + boundary
        self.buffer = b"\r\n"  # the first delimiter has no line break before it

    def parse(self, on_part: Callable[[Message], Callable[[bytes], None] | None]) -> None:
        self._until(self.delimiter)  # the preamble is ignored
        while True:
            while len(self.buffer) < 2:
                self._more()
            after, self.buffer = self.buffer[:2], self.buffer[2:]
            if after == b"--":
                return  # the closing delimiter; the epilogue is ignored
            if after != b"\r\n":
                raise _Refused(400, "malformed multipart body: a boundary line does not end with CRLF")
            headers = bytearray()
            while len(self.buffer) < 2:
                self._more()
            if self.buffer.startswith(b"\r\n"):
                self.buffer = self.buffer[2:]  # a part without headers
            else:
                self._until(b"\r\n\r\n", headers.extend, MAX_PART_HEADERS)
            message = BytesParser(policy=HTTP).parsebytes(bytes(headers) + b"\r\n\r\n")
            self._until(self.delimiter, on_part(message))

    def _more(self) -> None:
        chunk = self.read(CHUNK)
        if not chunk:
            raise _Refused(400, "malformed multipart body: it ends before its closing boundary")
        self.buffer += chunk

    def _until(self, marker: bytes, sink: Callable[[bytes], None] | None = None, limit: int | None = None) -> None:
        """Pass everything before the next `marker` to `sink` and consume the marker."""
        taken = 0
        while True:
            at = self.buffer.find(marker)
            cut = at if at >= 0 else max(0, len(self.buffer) - len(marker) + 1)  # a marker may straddle reads
            piece, self.buffer = self.buffer[:cut], self.buffer[cut + (len(marker) if at >= 0 else 0):]
            taken += len(piece)
            if limit is not None and taken > limit:
                raise _Refused(400, f"malformed multipart body: part headers longer than {limit} bytes")
            if sink is not None and piece:
                sink(piece)
            if at >= 0:
                return
            self._more()


def _handler_for(api: DevAzaionApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        unread = 0  # body bytes not read yet

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            self.unread = 0
            try:
                self._post()
            except _Refused as refused:
                self._refuse(refused)
            except (ConnectionError, TimeoutError):  # the client went away
                self.close_connection = True

        def _post(self) -> None:
            length = self._content_length()
            self.unread = length
            fault = api.take_fault(self.path)
            if fault and fault.delay_s:
                time.sleep(fault.delay_s)
            if fault and fault.status:
                raise _Refused(fault.status, "injected fault")
            if self.path == "/login":
                return self._login(self._json_body())
            user = api.token_user(self.headers.get("Authorization"))  # before a byte of the body is read
            if user is None:
                raise _Refused(401, "token missing, invalid or expired")
            if self.path.startswith("/resources/get/"):
                return self._get(user, self.path.removeprefix("/resources/get/"), self._json_body())
            if self.path.startswith("/resources/"):
                return self._upload(self.path.removeprefix("/resources/"))
            raise _Refused(404, "no such endpoint")

        # --- the body
        def _content_length(self) -> int:
            if self.headers.get("Transfer-Encoding"):
                raise _Refused(411, "Transfer-Encoding is not supported: send the body with a Content-Length",
                               close=True)
            raw = self.headers.get("Content-Length")
            if raw is None:
                return 0
            if not _DIGITS.fullmatch(raw.strip()):
                raise _Refused(400, f"Content-Length {raw[:40]!r} is not a number of bytes", close=True)
            return int(raw)

        def _read(self, size: int) -> bytes:
            """Up to `size` bytes of the body, never past its Content-Length; b"" at its end."""
            if not self.unread:
                return b""
            data = self.rfile.read(min(size, self.unread))
            if not data:
                raise _Refused(400, f"the body ended {self.unread} bytes before its Content-Length", close=True)
            self.unread -= len(data)
            return data

        def _require_type(self, wanted: str) -> None:
            if self.headers.get("Content-Type") is None or self.headers.get_content_type() != wanted:
                got = self.headers.get("Content-Type")
                raise _Refused(415, f"expected Content-Type: {wanted}"
                                    + (f", got {got[:60]!r}" if got is not None else ", got none"))

        def _json_body(self) -> dict:
            self._require_type("application/json")
            if self.unread > api.max_json_bytes:
                raise _Refused(413, f"a JSON body of {self.unread} bytes is more than {api.max_json_bytes}")
            body = bytearray()
            while chunk := self._read(CHUNK):
                body += chunk
            try:
                data = json.loads(body)
            except ValueError as exc:  # UnicodeDecodeError included
                raise _Refused(400, f"malformed JSON body: {exc}") from None
            if not isinstance(data, dict):
                raise _Refused(400, "the JSON body must be an object")
            return data

        # --- routes
        def _login(self, data: dict) -> None:
            email, password = data.get("email"), data.get("password")
            if not isinstance(email, str | None) or not isinstance(password, str | None):
                raise _Refused(400, "email and password must be strings")
            if not password or api.users.get(email) != password:
                raise _Refused(401, "bad credentials")
            self._answer(200, json.dumps({"token": api.issue_token(email)}).encode())

        def _upload(self, folder: str) -> None:
            if not (folder == "" or is_safe_name(folder)):
                raise _Refused(400, "invalid folder or file name")
            self._require_type("multipart/form-data")
            boundary = self.headers.get_param("boundary")
            if not isinstance(boundary, str) or not 0 < len(boundary) <= 70:
                raise _Refused(400, "multipart/form-data without a valid boundary")
            if self.unread > api.max_upload_bytes:
                raise _Refused(413, f"an upload of {self.unread} bytes is more than {api.max_upload_bytes}")
            pending: list[_PendingFile] = []

            def on_part(headers: Message) -> Callable[[bytes], None] | None:
                if headers.get_param("name", header="content-disposition") != "data":
                    return None  # other fields are read and dropped
                if pending:
                    raise _Refused(400, "more than one multipart field data")
                if not valid_resource(folder, headers.get_filename()):
                    raise _Refused(400, "invalid folder or file name")
                pending.append(api.resources.writer(folder, headers.get_filename()))
                return pending[0].write

            try:
                _Multipart(self._read, boundary.encode()).parse(on_part)
                while self._read(CHUNK):  # the epilogue
                    pass
                if not pending:
                    raise _Refused(400, "multipart field data missing")
                pending[0].commit()  # the whole request arrived: now the resource appears, whole
            finally:
                if pending and pending[0].temp.exists():
                    pending[0].discard()
            self._answer(200, b'{"status": "ok"}')

        def _get(self, user: str, folder: str, data: dict) -> None:
            name, hardware = data.get("fileName"), data.get("hardware", "")
            if not valid_resource(folder, name):
                raise _Refused(400, "invalid folder or file name")
            if not isinstance(hardware, str):
                raise _Refused(400, "hardware must be a string")
            resource = api.get(folder, name)
            if resource is None:
                raise _Refused(404, "no such resource")
            api.hardware_seen.add(hardware)
            key = reference_transport_key(user, api.users[user], hardware)
            self._answer(200, reference_encrypt(resource, key), "application/octet-stream")

        # --- answers
        def _refuse(self, refused: _Refused) -> None:
            if refused.close:
                self.close_connection = True
            elif self.unread <= DRAIN_LIMIT:  # read and drop the rest, so the client reads the answer
                while self._read_quietly():
                    pass
            payload = json.dumps({"error": refused.message}).encode()
            self._answer(refused.status, payload)
            if self.close_connection or self.unread:  # a body left unread (too large, or unframed)
                self.close_connection = True
                self._linger()

        def _read_quietly(self) -> bytes:
            try:
                return self._read(CHUNK)
            except _Refused:
                self.close_connection = True
                return b""

        def _linger(self) -> None:
            """Half-close, then drop what the client still sends for a moment: closing a socket
            with unread data resets the connection, and the client would lose the answer."""
            with contextlib.suppress(OSError):
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_WR)
                self.connection.settimeout(1.0)
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline and self.connection.recv(CHUNK):
                    pass

        def _answer(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
            api.requests.append(("POST", self.path, status))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            if self.close_connection or self.unread:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)

    return Handler
