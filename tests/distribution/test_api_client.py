"""The API client against the contract server: login, upload, transport-key download,
re-login on 401, retries on 5xx and timeouts, no retry on 4xx."""

import socket

import pytest

from azaion_training.distribution.api_client import ApiClient, ResourceNotFound
from azaion_training.errors import ConfigError, OperationFailed
from azaion_training.settings import ApiSettings
from tests.distribution.conftest import EMAIL, PASSWORD


def _client(api, password=PASSWORD, timeout_s=5.0) -> ApiClient:
    return ApiClient(ApiSettings(url=api.url, email=EMAIL, password=password, timeout_s=timeout_s),
                     hardware="CPU: T. GPU: None. Memory: 1 kB. DriveSerial: X", backoff_s=0.05)


def test_upload_then_load_bytes_decrypts_with_transport_key(api):
    with _client(api) as client:
        client.upload_file("model.small", b"\x00small part\xff", "models")
        assert api.resources[("models", "model.small")] == b"\x00small part\xff"
        assert client.load_bytes("model.small", "models") == b"\x00small part\xff"
    assert api.count("POST", "/login") == 1


def test_401_once_and_expired_token_trigger_one_relogin(api):
    with _client(api) as client:
        client.upload_file("a", b"1", "models")
        api.fail_next(401, path_prefix="/resources/")
        assert client.load_bytes("a", "models") == b"1"
        api.expire_tokens()
        assert client.load_bytes("a", "models") == b"1"
    assert api.count("POST", "/login") == 3


def test_5xx_and_timeouts_are_retried(api):
    with _client(api, timeout_s=0.5) as client:
        api.fail_next(500, times=2, path_prefix="/resources/")
        client.upload_file("b", b"2", "models")
        assert api.count("POST", "/resources/models", 500) == 2
        api.delay_next(1.5, path_prefix="/resources/get/")
        assert client.load_bytes("b", "models") == b"2"


def test_4xx_is_not_retried_and_missing_resource_is_named(api):
    with _client(api) as client:
        api.fail_next(400, times=5, path_prefix="/resources/models")
        with pytest.raises(OperationFailed, match="HTTP 400"):
            client.upload_file("c", b"3", "models")
        assert api.count("POST", "/resources/models") == 1
        with pytest.raises(ResourceNotFound, match="models/absent"):
            client.load_bytes("absent", "models")


def test_wrong_password_is_a_config_error_without_the_password(api):
    with _client(api, password="wrong-password-value") as client, pytest.raises(ConfigError) as error:
        client.upload_file("d", b"4")
    assert "AZAION_API_PASSWORD" in str(error.value) and "wrong-password-value" not in str(error.value)
    assert "wrong-password-value" not in repr(client)


def test_unreachable_api_fails_after_retries():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    client = ApiClient(ApiSettings(url=url, email=EMAIL, password=PASSWORD, retries=1), hardware="h", backoff_s=0.01)
    with pytest.raises(OperationFailed, match="unreachable.*2 attempts"):
        client.login()
