"""`azaion serve`: the operator's cockpit in a browser."""

import typer

from azaion_training.cli_support import console

commands = typer.Typer()  # cli.py merges every stage's `commands` into `azaion`


@commands.command("serve")
def serve(
    host: str | None = typer.Option(None, "--host", help="Address to listen on (default COCKPIT_HOST, 127.0.0.1); "
                                    "anything but loopback needs COCKPIT_TOKEN."),
    port: int | None = typer.Option(None, "--port", min=0, max=65535, help="Port (default COCKPIT_PORT, 8600)."),
) -> None:
    """The cockpit: health, areas, runs, models, datasets and quarantine in a browser (read-only without a token)."""
    import uvicorn

    from azaion_training.cli_support import settings, state
    from azaion_training.errors import OperationFailed
    from azaion_training.web.app import check_bind, create_app

    current = settings()
    host = host or current.cockpit.host
    port = current.cockpit.port if port is None else port
    check_bind(host, current)
    app = create_app(current, state.config)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    mode = "promote/rollback enabled" if current.cockpit.token else "read-only"
    console.print(f"cockpit on http://{host}:{port}/ ({mode})", markup=False, highlight=False)
    try:
        server.run()
    except SystemExit:  # uvicorn's way of reporting a failed start (after its own error line)
        pass
    if not server.started:
        raise OperationFailed(f"cannot listen on {host}:{port} (in use, or not an address of this machine)")
