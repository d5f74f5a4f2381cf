"""`azaion health`: one line per check, exit 0 healthy / 1 unhealthy (for cron and container health checks)."""

import typer

from azaion_training.cli_support import console, print_json, state
from azaion_training.errors import InputError

commands = typer.Typer()  # cli.py merges every stage's `commands` into `azaion`
STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "red", "n/a": "dim"}


@commands.command("health")
def health(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    check: list[str] = typer.Option([], "--check", help="Run only this check (repeatable): "
                                    "config, broker, disk, gpu, progress. Default: all."),
    disk_warn_pct: float = typer.Option(80.0, "--disk-warn-pct", envvar="AZAION_HEALTH_DISK_WARN_PCT",
                                        min=0, max=100, help="Warn when the data root's disk is fuller than this."),
    disk_fail_pct: float = typer.Option(95.0, "--disk-fail-pct", envvar="AZAION_HEALTH_DISK_FAIL_PCT",
                                        min=0, max=100, help="Fail when the data root's disk is fuller than this."),
    offset_max_age_min: float = typer.Option(30.0, "--offset-max-age-min", envvar="AZAION_HEALTH_OFFSET_MAX_AGE_MIN",
                                             min=0, help="A committed offset younger than this counts as progress."),
) -> None:
    """Check broker, disk, GPU, consumer progress and configuration; exit 0 healthy, 1 unhealthy."""
    from azaion_training.ops.health import CHECK_NAMES, HealthOptions, run_health

    unknown = sorted(set(check) - set(CHECK_NAMES))
    if unknown:
        raise InputError(f"unknown check(s) {', '.join(unknown)}: choose from {', '.join(CHECK_NAMES)}")
    options = HealthOptions(checks=tuple(name for name in CHECK_NAMES if name in check) if check else CHECK_NAMES,
                            disk_warn_pct=disk_warn_pct, disk_fail_pct=disk_fail_pct,
                            offset_max_age_min=offset_max_age_min)
    report = run_health(state.config, options)
    if as_json:
        print_json(report.as_dict())
    else:
        for result in report.checks:
            style = STATUS_STYLE[result.status]
            console.print(f"[{style}]{result.status.upper():<4}[/{style}] {result.name:<8} {result.detail}",
                          highlight=False, soft_wrap=True)
    if not report.healthy:
        raise typer.Exit(1)
