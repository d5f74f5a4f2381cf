"""Fixtures for publish/fetch: the Azaion API contract server, a moto S3 CDN with read-only
and write key pairs, and settings wired to both."""

import pytest

from azaion_training.devapi import DevAzaionApi
from azaion_training.settings import load_settings

EMAIL = "trainer@azaion.test"
PASSWORD = "Pa55-word-for-tests"
MODEL_SECRET = "model-secret-for-tests-42"


@pytest.fixture(scope="session")
def s3():
    from tests.services.s3 import MotoS3

    server = MotoS3()
    yield server
    server.stop()


@pytest.fixture
def api(s3):
    """A fresh contract server holding cdn.yaml (with the CDN's two key pairs)."""
    server = DevAzaionApi(users={EMAIL: PASSWORD})
    server.resources[("", "cdn.yaml")] = s3.cdn_yaml().encode()
    yield server
    server.stop()


@pytest.fixture
def azaion_env(api, root, monkeypatch) -> dict[str, str]:
    """Environment of a training machine pointed at the fake API (and the CDN behind it)."""
    env = {"AZAION_API_URL": api.url, "AZAION_API_EMAIL": EMAIL, "AZAION_API_PASSWORD": PASSWORD,
           "MODEL_ENCRYPTION_KEY": MODEL_SECRET, "AZAION_ROOT_DIR": str(root)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def azaion_settings(azaion_env):
    return load_settings()
