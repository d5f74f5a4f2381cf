"""`azaion serve`: the operator's cockpit in a browser; `azaion serve add-user NAME` names an
operator in COCKPIT_USERS (docs/cockpit.md)."""

from pathlib import Path

import typer

from azaion_training.cli_support import console, err_console

commands = typer.Typer()  # cli.py merges every stage's `commands` into `azaion`
serve_app = typer.Typer(invoke_without_command=True, no_args_is_help=False)
commands.add_typer(serve_app, name="serve")

# uvicorn takes X-Forwarded-Proto (https: the session cookie gets Secure) only from a reverse
# proxy on this machine; never from anyone else
TRUSTED_PROXIES = "127.0.0.1,::1"


@serve_app.callback()
def serve(
    ctx: typer.Context,
    host: str | None = typer.Option(None, "--host", help="Address to listen on (default COCKPIT_HOST, 127.0.0.1); "
                                    "anything but loopback needs COCKPIT_TOKEN (>= 32 characters) or "
                                    "COCKPIT_USERS."),
    port: int | None = typer.Option(None, "--port", min=0, max=65535, help="Port (default COCKPIT_PORT, 8600)."),
) -> None:
    """The cockpit: health, areas, runs, models, datasets and quarantine in a browser (behind a login when
    COCKPIT_TOKEN or COCKPIT_USERS is set; loopback-only and read-only otherwise)."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from azaion_training.cli_support import settings, state
    from azaion_training.errors import OperationFailed
    from azaion_training.web.app import check_bind, create_app

    current = settings()
    host = host or current.cockpit.host
    port = current.cockpit.port if port is None else port
    check_bind(host, current)
    app = create_app(current, state.config, bind_host=host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                           proxy_headers=True, forwarded_allow_ips=TRUSTED_PROXIES,
                                           server_header=False))
    credentials = app.state.cockpit.credentials
    mode = "login required, promote/rollback enabled" if credentials.protected else "read-only, no login"
    console.print(f"cockpit on http://{host}:{port}/ ({mode})", markup=False, highlight=False)
    try:
        server.run()
    except SystemExit:  # uvicorn's way of reporting a failed start (after its own error line)
        pass
    if not server.started:
        raise OperationFailed(f"cannot listen on {host}:{port} (in use, or not an address of this machine)")


@serve_app.command("add-user")
def add_user(
    name: str = typer.Argument(..., help="The operator's name, as the promotion history records it."),
    users_file: Path | None = typer.Option(None, "--file", help="The users file (default COCKPIT_USERS)."),
    replace: bool = typer.Option(False, "--replace", help="Give an operator already listed a new token."),
) -> None:
    """Add an operator to COCKPIT_USERS (created 0600) and print their new token once: only its scrypt
    hash is kept. Restart `azaion serve` for it to count."""
    from azaion_training.cli_support import settings
    from azaion_training.errors import ConfigError
    from azaion_training.web.auth import add_user as add

    path = users_file or settings().cockpit.users_file
    if path is None:
        raise ConfigError("COCKPIT_USERS is not set: set it to the users file's path (e.g. "
                          "/opt/azaion-training/cockpit-users), or pass --file")
    token = add(Path(path), name, replace=replace)
    typer.echo(token)  # stdout: the token alone, for a pipe; the note goes to stderr
    err_console.print(f"{name} added to {path}: the line above is their token, shown only this once; "
                      "restart azaion serve for it to count", markup=False, highlight=False)
