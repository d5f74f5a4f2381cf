"""`azaion dev-api`: a development publish / fetch-model round trip through the local API
(serving cdn.yaml, so nothing needs CDN_CONFIG_FILE) and a moto S3 CDN; uploads kept under
--store survive a restart; refused in production; malformed, unauthenticated and oversized
requests get a 4xx with a message (no traceback, the body not read); uploads are streamed
to disk."""

import json
import os
import socket
import subprocess
import time
import tracemalloc

import httpx
import pytest

from azaion_training.devapi import DevAzaionApi
from tests.conftest import AZAION_BIN, run_azaion
from tests.distribution.conftest import EMAIL, MODEL_SECRET, PASSWORD
from tests.services.s3 import _free_port


class DevApiProcess:
    def __init__(self, env: dict[str, str], *args: str, port: int | None = None):
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([str(AZAION_BIN), "dev-api", "--port", str(self.port), *args],
                                        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                httpx.post(f"{self.url}/login", json={}, timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"dev-api did not start: {self.process.stderr.read()}")

    def stop(self) -> str:
        """Stop it; returns what it wrote to stderr."""
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.communicate(timeout=10)[1]


@pytest.fixture
def dev_env(s3, root, tmp_path) -> dict[str, str]:
    cdn_yaml = tmp_path / "cdn.yaml"
    cdn_yaml.write_text(s3.cdn_yaml())
    cdn_yaml.chmod(0o600)
    return {"AZAION_ENV": "development", "AZAION_API_EMAIL": EMAIL, "AZAION_API_PASSWORD": PASSWORD,
            "MODEL_ENCRYPTION_KEY": MODEL_SECRET, "AZAION_ROOT_DIR": str(root), "CDN_CONFIG": str(cdn_yaml)}


def test_publish_and_fetch_round_trip_through_the_dev_api(dev_env, tmp_path):
    store = tmp_path / "api-store"
    args = ("--store", str(store), "--cdn-config", dev_env["CDN_CONFIG"])
    server = DevApiProcess(dev_env, *args)
    model = tmp_path / "dev.onnx"
    model.write_bytes(os.urandom(40_000))
    client_env = {**dev_env, "AZAION_API_URL": server.url}
    try:
        publish = run_azaion("publish", "--file", str(model), "--folder", "dev", env=client_env)
        assert publish.returncode == 0, publish.stdout + publish.stderr
    finally:
        server.stop()
    assert (store / "dev" / "dev.onnx.small").stat().st_size == 3072
    restarted = DevApiProcess(dev_env, *args, port=server.port)  # the uploads come back from --store
    try:
        out = tmp_path / "fetched.onnx"
        fetch = run_azaion("fetch-model", "dev.onnx", "--folder", "dev", "--out", str(out), env=client_env)
        assert fetch.returncode == 0, fetch.stdout + fetch.stderr
        assert out.read_bytes() == model.read_bytes()
    finally:
        restarted.stop()


def test_dev_api_refuses_production_and_bad_names(dev_env, tmp_path):
    refused = run_azaion("dev-api", "--port", "0", env={**dev_env, "AZAION_ENV": "production"}, timeout=60)
    assert refused.returncode == 2 and "development tool" in refused.stderr
    server = DevApiProcess(dev_env, "--store", str(tmp_path / "store"))
    try:
        token = httpx.post(f"{server.url}/login", json={"email": EMAIL, "password": PASSWORD}).json()["token"]
        answer = httpx.post(f"{server.url}/resources/get/models", json={"fileName": "../../passwd", "hardware": "h"},
                            headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 400
    finally:
        server.stop()
    assert not (tmp_path / "passwd").exists()


# ---------------------------------------------------------------------------------------- malformed requests

BOUNDARY = "azaion-test-boundary"


def _multipart(payload: bytes, field: str = "data", name: str = "up.bin", close: bool = True) -> bytes:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + payload + (f"\r\n--{BOUNDARY}--\r\n".encode() if close else b"")


def _raw(port: int, head: str, body: bytes = b"", half_close: bool = False) -> tuple[int, dict]:
    """One request over a plain socket (headers exactly as given); (status, JSON answer). The
    client waits at most 10 s: a server that waits for a body never sent fails here."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST {head}\r\nHost: 127.0.0.1\r\n\r\n".encode() + body)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    assert data, "the server dropped the connection without an answer"
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


@pytest.fixture
def plain_dev_env(root) -> dict[str, str]:
    return {"AZAION_ENV": "development", "AZAION_API_EMAIL": EMAIL, "AZAION_API_PASSWORD": PASSWORD,
            "AZAION_ROOT_DIR": str(root)}


def test_malformed_unauthenticated_and_oversized_requests_get_a_4xx_and_no_traceback(plain_dev_env, tmp_path):
    server = DevApiProcess(plain_dev_env, "--store", str(tmp_path / "store"))
    try:
        token = httpx.post(f"{server.url}/login", json={"email": EMAIL, "password": PASSWORD}).json()["token"]
        auth = f"Authorization: Bearer {token}"
        multipart = f"Content-Type: multipart/form-data; boundary={BOUNDARY}"
        good = _multipart(b"x" * 100)
        cases = [  # (request line + headers, body, half-close, status, message)
            ("/login HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 9", b'{"email":', False,
             400, "malformed JSON body"),
            ("/login HTTP/1.1\r\nContent-Length: 2", b"{}", False, 415, "expected Content-Type: application/json"),
            ("/login HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 2", b"{}", False, 415,
             "got 'text/plain'"),
            ("/login HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: abc", b"{}", False, 400,
             "Content-Length 'abc' is not a number of bytes"),
            ("/login HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2", b"[]", False, 400,
             "must be an object"),
            ("/login HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 1000000000", b"", False, 413,
             "more than 65536"),
            # the body is never sent: answered from the headers, before any of it is read
            ("/resources/models HTTP/1.1\r\nContent-Length: 1000000000\r\n" + multipart, b"", False, 401,
             "token missing"),
            (f"/resources/models HTTP/1.1\r\n{auth}\r\n{multipart}\r\nContent-Length: 1000000000000", b"", False,
             413, "more than 268435456"),
            (f"/resources/models HTTP/1.1\r\n{auth}\r\nContent-Type: application/json\r\nContent-Length: 2", b"{}",
             False, 415, "expected Content-Type: multipart/form-data"),
            (f"/resources/models HTTP/1.1\r\n{auth}\r\n{multipart}\r\nContent-Length: {len(good)}",
             good.replace(b'name="data"', b'name="other"'), False, 400, "multipart field data missing"),
            (f"/resources/models HTTP/1.1\r\n{auth}\r\n{multipart}\r\nContent-Length: {len(good) - 8}",
             good[:-8], False, 400, "ends before its closing boundary"),
            (f"/resources/models HTTP/1.1\r\n{auth}\r\n{multipart}\r\nContent-Length: {len(good) + 50}", good,
             True, 400, "the body ended 50 bytes before its Content-Length"),
            (f"/resources/get/models HTTP/1.1\r\n{auth}\r\nContent-Type: application/json\r\nContent-Length: 5",
             b"{nope", False, 400, "malformed JSON body"),
        ]
        for head, body, half_close, status, message in cases:
            answer = _raw(server.port, head, body, half_close)
            assert answer[0] == status and message in answer[1]["error"], (head, answer)
        assert not (tmp_path / "store" / "models").exists() or not any((tmp_path / "store" / "models").iterdir())
        again = httpx.post(f"{server.url}/login", json={"email": EMAIL, "password": PASSWORD})
        assert again.status_code == 200  # still serving
    finally:
        stderr = server.stop()
    assert "Traceback" not in stderr, stderr


def test_upload_streams_into_a_temp_file_and_appears_whole_at_the_end(tmp_path):
    store = tmp_path / "store"
    api = DevAzaionApi(users={EMAIL: PASSWORD}, store=store)
    try:
        token = httpx.post(f"{api.url}/login", json={"email": EMAIL, "password": PASSWORD}).json()["token"]
        payload = os.urandom(8 << 20)
        body = memoryview(_multipart(payload, name="big.bin"))
        folder = store / "models"
        tracemalloc.start()
        with socket.create_connection(("127.0.0.1", api.port), timeout=30) as sock:
            sock.sendall(f"POST /resources/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                         f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode())
            sock.sendall(body[: len(body) // 2])
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # half of it is on disk already, under a temp name
                temps = [p for p in folder.glob(".tmp-*")] if folder.is_dir() else []
                if temps and temps[0].stat().st_size >= (2 << 20):
                    break
                time.sleep(0.05)
            assert temps and temps[0].stat().st_size >= (2 << 20)
            assert not (folder / "big.bin").exists()
            sock.sendall(body[len(body) // 2:])
            answer = b""
            while chunk := sock.recv(1 << 16):
                answer += chunk
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert answer.startswith(b"HTTP/1.0 200")
        assert (folder / "big.bin").read_bytes() == payload and not list(folder.glob(".tmp-*"))
        assert api.resources[("models", "big.bin")] == payload
        assert peak < (2 << 20), f"{peak} bytes allocated while receiving an 8 MiB upload"
    finally:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
        api.stop()


def test_an_upload_over_the_cap_is_answered_413_to_a_real_client(tmp_path):
    api = DevAzaionApi(users={EMAIL: PASSWORD}, max_upload_bytes=1 << 20)
    try:
        token = httpx.post(f"{api.url}/login", json={"email": EMAIL, "password": PASSWORD}).json()["token"]
        answer = httpx.post(f"{api.url}/resources/models", headers={"Authorization": f"Bearer {token}"},
                            files={"data": ("big.bin", os.urandom(2 << 20), "application/octet-stream")})
        assert answer.status_code == 413 and "more than 1048576" in answer.json()["error"]
        assert ("models", "big.bin") not in api.resources
        small = httpx.post(f"{api.url}/resources/models", headers={"Authorization": f"Bearer {token}"},
                           files={"data": ("small.bin", b"fits", "application/octet-stream")})
        assert small.status_code == 200 and api.resources[("models", "small.bin")] == b"fits"
        assert "users" not in repr(api) and PASSWORD not in repr(api)
    finally:
        api.stop()
