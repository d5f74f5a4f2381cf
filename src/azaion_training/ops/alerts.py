"""Alerts to a webhook (ALERT_WEBHOOK_URL, optional ALERT_WEBHOOK_TOKEN sent as a Bearer header).

One JSON body for every alert: a Slack-compatible `text` plus structured fields (`event`:
health-failing, health-recovered or unit-failed; `host`, `at`, `checks`, `unit`, `message`).
`azaion health` posts when a check starts failing and when it recovers, not on every run:
the failing checks are remembered in queue-state/health-alert.json, next to the health
offset reading, and forgotten only once an alert about them was delivered (an undelivered
alert is retried by the next run). Delivery problems are logged and never raised: alerting
must not change what the caller reports. Bodies hold check details and names only, never a
secret; the webhook URL (often a secret itself, e.g. Slack's) is not logged.
"""

import json
import logging
import socket
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from azaion_training.fsutil import atomic_write_text
from azaion_training.layout import Layout
from azaion_training.logs import get_logger, log, redact, register_secret
from azaion_training.ops.health import HealthReport
from azaion_training.settings import AlertSettings, Settings

logger = get_logger("ops.alerts")
DETAIL_MAX = 300
MESSAGE_MAX = 2000


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would resend the token to wherever it points: refuse it."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def alert_body(event: str, summary: str, checks: list[dict[str, Any]] | None = None, unit: str | None = None,
               message: str | None = None) -> dict[str, Any]:
    host = socket.gethostname()
    message = message[:MESSAGE_MAX] if message else message
    lines = [f"[azaion-training on {host}] {summary}"]
    lines += [f"• {check['name']}: {check['status']} - {check['detail']}" for check in checks or []]
    if message:
        lines.append(message)
    return {"text": "\n".join(lines), "source": "azaion-training", "event": event, "host": host,
            "at": datetime.now(UTC).isoformat(timespec="seconds"), "unit": unit, "message": message,
            "checks": checks or []}


def post_alert(alerts: AlertSettings, body: dict[str, Any]) -> bool:
    """POST the alert; True when delivered (or nowhere to deliver: then it is only logged)."""
    text = redact(json.dumps(body, ensure_ascii=False))
    url = alerts.webhook_url.strip()
    if not url:
        log(logger, logging.WARNING, "alert not sent: ALERT_WEBHOOK_URL is not set", event=body["event"],
            text=body["text"])
        return True
    register_secret(url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        log(logger, logging.ERROR, "alert not sent: ALERT_WEBHOOK_URL must be an http(s) URL", event=body["event"])
        return False
    headers = {"Content-Type": "application/json", "User-Agent": "azaion-training-alerts"}
    if alerts.webhook_token is not None and alerts.webhook_token.get_secret_value():
        headers["Authorization"] = f"Bearer {alerts.webhook_token.get_secret_value()}"
    request = urllib.request.Request(url, data=text.encode("utf-8"), headers=headers, method="POST")
    try:
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=alerts.timeout_s) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections
        reason = getattr(exc, "reason", exc)
        log(logger, logging.ERROR, "alert not delivered: webhook unreachable", event=body["event"],
            webhook_host=parts.hostname, problem=f"{type(exc).__name__}: {reason}"[:DETAIL_MAX])
        return False
    if not 200 <= status < 300:
        log(logger, logging.ERROR, "alert not delivered: webhook refused it", event=body["event"],
            webhook_host=parts.hostname, status=status)
        return False
    log(logger, logging.INFO, "alert delivered", event=body["event"], webhook_host=parts.hostname)
    return True


def alert_on_health(settings: Settings, report: HealthReport) -> None:
    """Post health-failing when a check fails that was not failing before, health-recovered
    when a failing check passes again; nothing while the failing set stays the same. Without a
    webhook it does nothing: the health lines already say what fails."""
    if not settings.alerts.webhook_url.strip():
        return
    layout = Layout(settings.paths)
    state_dir, state_file = layout.queue_state, layout.health_alert_state
    previous = _read_failing(state_file)
    ran = {check.name: check for check in report.checks}
    failing = {name for name, check in ran.items() if check.status == "fail"}
    newly = sorted(failing - previous)
    recovered = sorted((previous & set(ran)) - failing)
    still = (previous - set(ran)) | failing
    if newly:
        summary = f"health check failing: {', '.join(sorted(failing))} (new: {', '.join(newly)})"
        shown = sorted(failing)
    elif recovered:
        summary = f"health check recovered: {', '.join(recovered)}"
        summary += f"; still failing: {', '.join(sorted(still))}" if still else ""
        shown = recovered + sorted(failing)
    else:
        return
    checks = [{"name": name, "status": ran[name].status, "detail": ran[name].detail[:DETAIL_MAX]} for name in shown]
    body = alert_body("health-failing" if newly else "health-recovered", summary, checks)
    if not post_alert(settings.alerts, body) or not state_dir.is_dir():
        return
    try:
        atomic_write_text(state_file, json.dumps({"failing": sorted(still), "updated_at": body["at"]}) + "\n")
    except OSError as exc:
        log(logger, logging.ERROR, "cannot record the alert state: the next run may alert again",
            path=str(state_file), problem=str(exc)[:DETAIL_MAX])


def _read_failing(path: Path) -> set[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(name) for name in data["failing"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()  # first run, or an unreadable state: alert again rather than stay silent
