"""Webhook alerts against a real local HTTP server: `azaion health` posts once when a check
starts failing and once when it recovers, `azaion alert --unit` posts a unit failure, the
token travels only as a Bearer header, no secret is in a body, and delivery problems never
change the health exit code."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import run_azaion
from tests.services.rabbitmq import free_port

TOKEN = "webhook-token-for-tests-7"
RABBIT_PASSWORD = "rabbit-password-for-tests-3"
MODEL_SECRET = "model-secret-for-alert-tests"


class Webhook:
    """Records every POST; answers `status` (and `location` for a redirect)."""

    def __init__(self, status: int = 200, location: str | None = None):
        self.requests: list[tuple[dict[str, str], dict]] = []
        self.status, self.location = status, location
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                webhook.requests.append((dict(self.headers), json.loads(body)))
                self.send_response(webhook.status)
                if webhook.location:
                    self.send_header("Location", webhook.location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/secret-path"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self) -> list[dict]:
        return [body for _, body in self.requests]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    server = Webhook()
    yield server
    server.stop()


@pytest.fixture
def broker_port() -> int:
    return free_port()


@pytest.fixture
def alert_env(root, webhook, broker_port) -> dict[str, str]:
    return {"AZAION_ROOT_DIR": str(root), "ALERT_WEBHOOK_URL": webhook.url, "ALERT_WEBHOOK_TOKEN": TOKEN,
            "ALERT_TIMEOUT_S": "3", "RABBITMQ_HOST": "127.0.0.1", "RABBITMQ_PORT": str(broker_port),
            "RABBITMQ_PASSWORD": RABBIT_PASSWORD, "MODEL_ENCRYPTION_KEY": MODEL_SECRET}


def health(env: dict[str, str]):
    return run_azaion("health", "--check", "broker", "--check", "disk", env=env, timeout=120)


class FakeBroker:
    """Something listening on the broker port, so the TCP reachability check passes."""

    def __init__(self, port: int):
        self.sock = socket.create_server(("127.0.0.1", port))

    def close(self) -> None:
        self.sock.close()


def assert_no_secret(webhook: Webhook) -> None:
    for headers, body in webhook.requests:
        text = json.dumps(body)
        for secret in (TOKEN, RABBIT_PASSWORD, MODEL_SECRET, "secret-path"):
            assert secret not in text
        assert headers["Authorization"] == f"Bearer {TOKEN}"


def test_health_alerts_once_on_failure_and_once_on_recovery(alert_env, webhook, broker_port):
    first = health(alert_env)
    assert first.returncode == 1
    assert len(webhook.requests) == 1
    body = webhook.bodies()[0]
    assert body["event"] == "health-failing" and body["source"] == "azaion-training"
    assert [check["name"] for check in body["checks"]] == ["broker"]
    assert "broker" in body["text"] and f"127.0.0.1:{broker_port} unreachable" in body["text"]
    assert body["host"] == socket.gethostname() and body["unit"] is None

    assert health(alert_env).returncode == 1
    assert len(webhook.requests) == 1  # still failing, same checks: no repeat

    broker = FakeBroker(broker_port)
    try:
        recovered = health(alert_env)
    finally:
        broker.close()
    assert recovered.returncode == 0, recovered.stdout
    assert len(webhook.requests) == 2
    body = webhook.bodies()[1]
    assert body["event"] == "health-recovered" and "recovered: broker" in body["text"]
    assert body["checks"][0]["name"] == "broker" and body["checks"][0]["status"] == "ok"

    assert health({**alert_env, "RABBITMQ_PORT": str(broker_port)}).returncode == 1  # fails again: a new alert
    assert [body["event"] for body in webhook.bodies()] == ["health-failing", "health-recovered", "health-failing"]
    assert_no_secret(webhook)


def test_a_check_outside_this_run_is_not_taken_for_recovered(alert_env, webhook):
    assert health(alert_env).returncode == 1
    only_disk = run_azaion("health", "--check", "disk", env=alert_env, timeout=60)
    assert only_disk.returncode == 0
    assert [body["event"] for body in webhook.bodies()] == ["health-failing"]


def test_unreachable_webhook_is_logged_and_retried_next_run(alert_env, webhook, broker_port):
    dead = f"http://127.0.0.1:{free_port()}/hook"
    first = health({**alert_env, "ALERT_WEBHOOK_URL": dead})
    assert first.returncode == 1 and "Traceback" not in first.stdout + first.stderr
    assert "alert not delivered: webhook unreachable" in first.stderr
    assert dead not in first.stdout + first.stderr  # a webhook URL can be a secret (Slack's is)
    broker = FakeBroker(broker_port)
    try:
        healthy = health({**alert_env, "ALERT_WEBHOOK_URL": dead})
        assert healthy.returncode == 0  # nothing was recorded as alerted, and nothing to recover from
    finally:
        broker.close()
    assert health(alert_env).returncode == 1
    assert [body["event"] for body in webhook.bodies()] == ["health-failing"]


def test_a_refusing_or_redirecting_webhook_does_not_change_the_exit_code(alert_env, webhook, broker_port):
    webhook.status = 500
    assert health(alert_env).returncode == 1
    other = Webhook()
    try:
        webhook.status, webhook.location = 307, other.url
        result = health(alert_env)
        assert result.returncode == 1 and "webhook refused it" in result.stderr
        assert other.requests == []  # the token is never resent to where a redirect points
    finally:
        other.stop()


def test_alert_command_posts_a_unit_failure(alert_env, webhook):
    result = run_azaion("alert", "--unit", "azaion-queue.service", "--message", "exit code 1", env=alert_env)
    assert result.returncode == 0, result.stdout + result.stderr
    body = webhook.bodies()[0]
    assert body["event"] == "unit-failed" and body["unit"] == "azaion-queue.service"
    assert "azaion-queue.service failed" in body["text"] and "exit code 1" in body["text"]
    assert_no_secret(webhook)
    webhook.status = 503
    refused = run_azaion("alert", "--unit", "azaion-queue.service", env=alert_env)
    assert refused.returncode == 1 and "not delivered" in refused.stderr


def test_without_a_webhook_alerts_are_only_logged(alert_env):
    env = {**alert_env, "ALERT_WEBHOOK_URL": ""}
    result = run_azaion("alert", "--unit", "azaion-train.service", env=env)
    assert result.returncode == 0 and "ALERT_WEBHOOK_URL is not set" in result.stderr
