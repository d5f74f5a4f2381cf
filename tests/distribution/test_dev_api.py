"""`azaion dev-api`: a development publish / fetch-model round trip through the local API
(serving cdn.yaml, so nothing needs CDN_CONFIG_FILE) and a moto S3 CDN; uploads kept under
--store survive a restart; refused in production."""

import os
import subprocess
import time

import httpx
import pytest

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

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.communicate(timeout=10)


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
