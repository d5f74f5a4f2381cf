"""A development server for the Azaion REST API contract (docs/model-registry.md): real HTTP;
POST /login issues HS256 JWTs that expire; POST /resources/{folder} stores a multipart
`data` upload; POST /resources/get/{folder} returns the resource encrypted with the
caller's transport key. `azaion dev-api` runs it so a development `publish` /
`fetch-model` round-trips without the production API; the tests run it in-process and
switch faults on: fail the next N requests with a status, delay the next N requests,
expire every issued token.

Its encryption is written independently of azaion_training.security, straight from the
contract (AES-256-CBC, key SHA-256 of the key string, IV prepended, PKCS7), so tests catch
a product implementation that drifts from the Azaion format.
"""

import base64
import hashlib
import hmac
import json
import os
import threading
import time
from dataclasses import dataclass, field
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


@dataclass
class Fault:
    status: int = 0  # answer with this status instead of serving (0 = serve)
    delay_s: float = 0.0
    times: int = 1
    path_prefix: str = "/"


@dataclass
class DevAzaionApi:
    users: dict[str, str]
    token_ttl_s: float = 300.0
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port
    store: Path | None = None  # uploads are also kept as files here (<store>/<folder>/<name>) and survive restarts
    resources: dict[tuple[str, str], bytes] = field(default_factory=dict)
    requests: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status)
    faults: list[Fault] = field(default_factory=list)
    issued_tokens: list[str] = field(default_factory=list)
    hardware_seen: set[str] = field(default_factory=set)

    def __post_init__(self):
        self._signing_key = os.urandom(32)
        self._generation = 0  # tokens of older generations are expired
        self._lock = threading.Lock()
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
        if self.store is not None:
            path = self.store / (folder or "_root") / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def get(self, folder: str, name: str) -> bytes | None:
        if (folder, name) not in self.resources and self.store is not None:
            path = self.store / (folder or "_root") / name
            if path.is_file():
                self.resources[(folder, name)] = path.read_bytes()
        return self.resources.get((folder, name))

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

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
        except ValueError:
            return None
        if data["exp"] < time.time() or data["gen"] < self._generation:
            return None
        return data["unique_name"]

    def take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if path.startswith(fault.path_prefix):
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                    return fault
        return None


def _handler_for(api: DevAzaionApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            fault = api.take_fault(self.path)
            if fault and fault.delay_s:
                time.sleep(fault.delay_s)
            if fault and fault.status:
                return self._answer(fault.status, b'{"error": "injected fault"}')
            if self.path == "/login":
                return self._login(body)
            user = api.token_user(self.headers.get("Authorization"))
            if user is None:
                return self._answer(401, b'{"error": "token missing, invalid or expired"}')
            if self.path.startswith("/resources/get/"):
                return self._get(user, self.path.removeprefix("/resources/get/"), body)
            if self.path.startswith("/resources/"):
                return self._upload(self.path.removeprefix("/resources/"), body)
            return self._answer(404, b'{"error": "no such endpoint"}')

        def _login(self, body: bytes) -> None:
            data = json.loads(body or b"{}")
            if api.users.get(data.get("email")) != data.get("password") or not data.get("password"):
                return self._answer(401, b'{"error": "bad credentials"}')
            self._answer(200, json.dumps({"token": api.issue_token(data["email"])}).encode())

        def _upload(self, folder: str, body: bytes) -> None:
            message = BytesParser(policy=HTTP).parsebytes(
                b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
            for part in message.iter_parts():
                if part.get_param("name", header="content-disposition") == "data":
                    if not valid_resource(folder, part.get_filename()):
                        return self._answer(400, b'{"error": "invalid folder or file name"}')
                    api.put(folder, part.get_filename(), part.get_payload(decode=True))
                    return self._answer(200, b'{"status": "ok"}')
            self._answer(400, b'{"error": "multipart field data missing"}')

        def _get(self, user: str, folder: str, body: bytes) -> None:
            data = json.loads(body or b"{}")
            if not valid_resource(folder, data.get("fileName")):
                return self._answer(400, b'{"error": "invalid folder or file name"}')
            resource = api.get(folder, data["fileName"])
            if resource is None:
                return self._answer(404, b'{"error": "no such resource"}')
            api.hardware_seen.add(data.get("hardware", ""))
            key = reference_transport_key(user, api.users[user], data.get("hardware", ""))
            self._answer(200, reference_encrypt(resource, key), "application/octet-stream")

        def _answer(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
            api.requests.append(("POST", self.path, status))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler
