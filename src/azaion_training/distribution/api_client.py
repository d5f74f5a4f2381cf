"""Client of the Azaion REST API (docs/encryption.md): JWT login, multipart upload of
resources, and download of resources encrypted with this user's per-machine transport key.

Login is lazy; a 401/403 triggers one re-login and one retry. Connection errors, timeouts
and 5xx answers are retried with exponential backoff; other 4xx are not. TLS is verified
(AZAION_API_CA_BUNDLE adds a private CA). The password and token never reach a log line or
an error message.
"""

import logging
import time

import httpx

from azaion_training.errors import ConfigError, OperationFailed
from azaion_training.logs import get_logger, log, register_secret
from azaion_training.security.crypto import DecryptionError, decrypt
from azaion_training.security.hardware import hardware_info
from azaion_training.security.keys import api_transport_key, hardware_hash
from azaion_training.settings import ApiSettings, require_secret

logger = get_logger("distribution.api")


class ResourceNotFound(OperationFailed):
    """The API has no resource of that name in that folder."""


class ApiClient:
    def __init__(self, api: ApiSettings, hardware: str | None = None, backoff_s: float = 0.5):
        if not api.email:
            raise ConfigError("AZAION_API_EMAIL is not set: add it to .env and render config.yaml, or export it.")
        self.url = api.url
        self.email = api.email
        self._password = require_secret(api.password, "AZAION_API_PASSWORD")
        self.retries = api.retries
        self.backoff_s = backoff_s
        self.hardware = hardware if hardware is not None else hardware_info()
        self._token: str | None = None
        verify = str(api.ca_bundle) if api.ca_bundle else True
        self._http = httpx.Client(base_url=api.url, timeout=api.timeout_s, verify=verify)

    def __repr__(self) -> str:
        return f"ApiClient(url={self.url!r}, email={self.email!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "ApiClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def login(self) -> None:
        response = self._send("POST", "/login", json={"email": self.email, "password": self._password})
        if response.status_code in (400, 401, 403):
            raise ConfigError(f"the Azaion API at {self.url} refused the login of {self.email} "
                              f"(HTTP {response.status_code}): check AZAION_API_EMAIL and AZAION_API_PASSWORD")
        self._raise_for_status(response, "login")
        try:
            token = response.json()["token"]
        except (ValueError, KeyError, TypeError):
            raise OperationFailed(f"the Azaion API at {self.url} answered the login without a token") from None
        register_secret(token)
        self._token = token
        log(logger, logging.INFO, "logged in to the Azaion API", url=self.url, email=self.email)

    def upload_file(self, filename: str, data: bytes, folder: str = "models") -> None:
        """POST /resources/{folder}, multipart field `data`."""
        path = f"/resources/{folder}"
        response = self._authorised("POST", path, files={"data": (filename, data, "application/octet-stream")})
        self._raise_for_status(response, f"upload of {folder}/{filename}")
        log(logger, logging.INFO, "uploaded to the Azaion API", resource=f"{folder}/{filename}", bytes=len(data))

    def load_bytes(self, filename: str, folder: str = "models") -> bytes:
        """POST /resources/get/{folder}; the answer is decrypted with the transport key."""
        response = self._authorised("POST", f"/resources/get/{folder}",
                                    json={"fileName": filename, "hardware": self.hardware})
        if response.status_code == 404:
            raise ResourceNotFound(f"the Azaion API at {self.url} has no resource {folder}/{filename}")
        self._raise_for_status(response, f"download of {folder}/{filename}")
        key = api_transport_key(self.email, self._password, hardware_hash(self.hardware))
        try:
            return decrypt(response.content, key)
        except DecryptionError:
            raise DecryptionError(
                f"cannot decrypt {folder}/{filename} from the Azaion API with this user's transport key "
                "(derived from AZAION_API_EMAIL, AZAION_API_PASSWORD and this machine's hardware)") from None

    def _authorised(self, method: str, path: str, **kwargs) -> httpx.Response:
        if self._token is None:
            self.login()
        response = self._send(method, path, headers={"Authorization": f"Bearer {self._token}"}, **kwargs)
        if response.status_code in (401, 403):
            log(logger, logging.INFO, "the Azaion API refused the token; logging in again",
                path=path, status=response.status_code)
            self.login()
            response = self._send(method, path, headers={"Authorization": f"Bearer {self._token}"}, **kwargs)
        return response

    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        """One request, retried on connection errors, timeouts and 5xx with backoff."""
        attempt = 0
        while True:
            last = attempt == self.retries
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if last:
                    raise OperationFailed(f"the Azaion API at {self.url} is unreachable ({method} {path}): "
                                          f"{type(exc).__name__} after {attempt + 1} attempts") from None
                problem = type(exc).__name__
            else:
                if response.status_code < 500 or last:
                    return response
                problem = f"HTTP {response.status_code}"
            delay = self.backoff_s * 2 ** attempt
            log(logger, logging.WARNING, "Azaion API request failed; retrying", path=path, problem=problem,
                attempt=attempt + 1, retry_in_s=delay)
            time.sleep(delay)
            attempt += 1

    def _raise_for_status(self, response: httpx.Response, what: str) -> None:
        if response.is_success:
            return
        detail = response.text[:200].strip()
        raise OperationFailed(f"{what} failed: the Azaion API at {self.url} answered HTTP {response.status_code}"
                              + (f" ({detail})" if detail else ""))
