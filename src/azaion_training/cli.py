"""`azaion`: one CLI for every stage. This module only parses arguments, calls the stage and
prints. Each stage declares its commands in its own `cli` module on a module-level
`commands = typer.Typer()` (`@commands.command("name")`, groups with `commands.add_typer`),
merged here; stage modules import torch/ultralytics inside commands, so `azaion queue ...`
stays light."""

import importlib
import os
import sys
from pathlib import Path

import typer
from typer._click.exceptions import ClickException  # Typer vendors Click: not `click`'s
from rich.markup import escape

from azaion_training.cli_support import console, err_console, print_json, state
from azaion_training.errors import AzaionError, ConfigError
from azaion_training.fsutil import atomic_write_text
from azaion_training.logs import setup_logging
from azaion_training.settings import parse_env_file, settings_from_env, to_yaml

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Azaion AI Training: annotations -> datasets -> YOLO models -> encrypted models -> inference.")
config_app = typer.Typer(no_args_is_help=True, help="Render and check config.yaml.")
app.add_typer(config_app, name="config")

# Stage modules whose `commands` Typer is merged into `azaion`.
STAGE_CLI_MODULES = (
    "azaion_training.queue.cli",
    "azaion_training.dataset.cli",
    "azaion_training.training.cli",
    "azaion_training.distribution.cli",
    "azaion_training.inference.cli",
    "azaion_training.demo.cli",
    "azaion_training.ops.cli",
    "azaion_training.report.cli",
)


@app.callback()
def _global(ctx: typer.Context,
            config: Path | None = typer.Option(None, "--config", "-c", envvar="AZAION_CONFIG",
                                               help="config.yaml to read (default ./config.yaml when present)."),
            log_level: str = typer.Option("", "--log-level", help="DEBUG, INFO, WARNING or ERROR."),
            ) -> None:
    state.config = config
    # The log's `service` field names the command (queue, train, publish, ...).
    setup_logging(service=ctx.invoked_subcommand or "azaion", level=log_level or None)


@config_app.command("render")
def config_render(env_file: Path | None = typer.Option(None, "--env-file",
                                                       help="A .env file; the process environment overrides it."),
                  out: Path = typer.Option(Path("config.yaml"), "--out", help="Where to write config.yaml.")) -> None:
    """Render config.yaml from .env and the environment (strict: all required variables, valid values)."""
    env = parse_env_file(env_file) if env_file else {}
    env.update({k: v for k, v in os.environ.items() if v})
    settings = settings_from_env(env)
    atomic_write_text(out, to_yaml(settings), mode=0o600)
    console.print(f"wrote {out} (mode 0600)")


@config_app.command("check")
def config_check(config: Path | None = typer.Option(None, "--config", help="config.yaml to validate."),
                 as_json: bool = typer.Option(False, "--json", help="Print the settings as JSON.")) -> None:
    """Validate config.yaml (plus environment overrides) and print the effective settings, secrets masked."""
    from azaion_training.settings import load_settings

    path = config or state.config or Path("config.yaml")
    if not path.is_file():
        raise ConfigError(f"config file {path} not found: render it with `azaion config render`")
    settings = load_settings(path)
    if as_json:
        print_json(settings.masked())
        return
    import yaml

    console.print(f"[green]{path} is valid[/green]; effective settings (secrets masked):")
    console.print(yaml.safe_dump(settings.masked(), sort_keys=False), markup=False, highlight=False)


@app.command("init")
def init_tree() -> None:
    """Create the /azaion tree under AZAION_ROOT_DIR (idempotent; never deletes or overwrites)."""
    from azaion_training.cli_support import layout

    tree = layout()
    created = tree.init()
    for path in created:
        console.print(f"created {path}")
    console.print(f"{tree.root}: {len(created)} created, everything else already in place")


for _module in STAGE_CLI_MODULES:
    app.add_typer(importlib.import_module(_module).commands)


def main() -> None:
    try:
        # Without standalone mode click returns the code of a `typer.Exit(code)` instead of exiting.
        exit_code = app(standalone_mode=False)
        if isinstance(exit_code, int) and exit_code:
            sys.exit(exit_code)
    except AzaionError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", markup=True, highlight=False)
        sys.exit(exc.exit_code)
    except ClickException as exc:
        # Usage errors: Click's usage line, a hint and the message; exit 2.
        exc.show()
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        sys.exit(130)


if __name__ == "__main__":
    main()
