"""`azaion health`: one line per check, exit 0 healthy / 1 unhealthy (for cron and container health checks)."""

from pathlib import Path

import typer

from azaion_training.cli_support import console, print_json, settings, state
from azaion_training.errors import ConfigError, InputError, OperationFailed

commands = typer.Typer()  # cli.py merges every stage's `commands` into `azaion`
STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "red", "n/a": "dim"}


@commands.command("health")
def health(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    check: list[str] = typer.Option([], "--check", help="Run only this check (repeatable): "
                                    "config, broker, disk, gpu, progress, backup. Default: all."),
    disk_warn_pct: float | None = typer.Option(None, "--disk-warn-pct", min=0, max=100,
                                               help="Warn when the data root's disk is fuller than this "
                                                    "(default HEALTH_DISK_WARN_PCT, 80)."),
    disk_fail_pct: float | None = typer.Option(None, "--disk-fail-pct", min=0, max=100,
                                               help="Fail when the data root's disk is fuller than this "
                                                    "(default HEALTH_DISK_FAIL_PCT, 95)."),
    offset_max_age_min: float | None = typer.Option(None, "--offset-max-age-min", min=0,
                                                    help="A committed offset younger than this counts as progress "
                                                         "(default HEALTH_OFFSET_MAX_AGE_MIN, 30)."),
) -> None:
    """Check broker, disk, GPU, consumer progress, backups and configuration; exit 0 healthy, 1 unhealthy."""
    from azaion_training.ops.health import CHECK_NAMES, HealthOptions, run_health

    unknown = sorted(set(check) - set(CHECK_NAMES))
    if unknown:
        raise InputError(f"unknown check(s) {', '.join(unknown)}: choose from {', '.join(CHECK_NAMES)}")
    options = HealthOptions(checks=tuple(name for name in CHECK_NAMES if name in check) if check else CHECK_NAMES,
                            disk_warn_pct=disk_warn_pct, disk_fail_pct=disk_fail_pct,
                            offset_max_age_min=offset_max_age_min)
    report = run_health(state.config, options)
    _alert_on_health(report)
    if as_json:
        print_json(report.as_dict())
    else:
        for result in report.checks:
            style = STATUS_STYLE[result.status]
            console.print(f"[{style}]{result.status.upper():<4}[/{style}] {result.name:<8} {result.detail}",
                          highlight=False, soft_wrap=True)
    if not report.healthy:
        raise typer.Exit(1)


def _alert_on_health(report) -> None:
    """Webhook alerts on failing/recovered checks; never changes the exit code."""
    from azaion_training.ops.alerts import alert_on_health

    try:
        current = settings()
    except ConfigError:
        return  # the config check reports it; without settings there is no webhook to call
    alert_on_health(current, report)


@commands.command("alert")
def alert(
    unit: str = typer.Option(..., "--unit", help="The unit that failed (systemd passes it: azaion-alert@%n)."),
    message: str | None = typer.Option(None, "--message", help="Extra text for the alert."),
) -> None:
    """Post an alert that UNIT failed to ALERT_WEBHOOK_URL (the azaion-alert@.service OnFailure= hook)."""
    from azaion_training.ops.alerts import alert_body, post_alert

    body = alert_body("unit-failed", f"{unit} failed; read its logs: journalctl -u {unit}", unit=unit,
                      message=message)
    if not post_alert(settings().alerts, body):
        raise OperationFailed("the alert was not delivered (see the log line above)")


@commands.command("dev-api")
def dev_api(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 inside a container)."),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="Port to listen on."),
    store: Path | None = typer.Option(None, "--store", help="Keep uploads as files here (survive restarts)."),
    cdn_config: Path | None = typer.Option(None, "--cdn-config",
                                           help="A cdn.yaml to serve as the API's cdn.yaml resource."),
) -> None:
    """Development only: a local Azaion API (login, upload, transport-key download) for publish/fetch-model.

    Its one user is AZAION_API_EMAIL / AZAION_API_PASSWORD; point AZAION_API_URL at it."""
    from azaion_training.devapi import DevAzaionApi
    from azaion_training.settings import require_secret

    current = settings()
    if current.environment == "production":
        raise ConfigError("`azaion dev-api` is a development tool: set AZAION_ENV=development to run it")
    if not current.api.email:
        raise ConfigError("AZAION_API_EMAIL is not set: the dev API's one user is AZAION_API_EMAIL/_PASSWORD")
    password = require_secret(current.api.password, "AZAION_API_PASSWORD")
    if cdn_config is not None and not cdn_config.is_file():
        raise InputError(f"--cdn-config {cdn_config} is not a file")
    try:
        server = DevAzaionApi(users={current.api.email: password}, host=host, port=port, store=store)
    except OSError as exc:
        raise OperationFailed(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    if cdn_config is not None:
        server.put("", "cdn.yaml", cdn_config.read_bytes())
    console.print(f"dev API listening on {host}:{server.port} for {current.api.email}"
                  + (f", uploads kept under {store}" if store else ""), markup=False, highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()
