"""`azaion`: one CLI for every stage. This module only parses arguments, calls the stage and
prints. Each stage declares its commands in its own `cli` module on a module-level
`commands = typer.Typer()` (`@commands.command("name")`, groups with `commands.add_typer`),
merged here; stage modules import torch/ultralytics inside commands, so `azaion queue ...`
stays light."""

import os
import sqlite3
import sys
from pathlib import Path

import typer
from rich.markup import escape

from azaion_training.analysis import cli as analysis_cli
from azaion_training.analysis import engine_cli as data_engine_cli
from azaion_training.cli_support import console, err_console, print_json, state
from azaion_training.dataset import cli as dataset_cli
from azaion_training.demo import cli as demo_cli
from azaion_training.distribution import cli as distribution_cli
from azaion_training.errors import AzaionError, ConfigError, InputError
from azaion_training.fsutil import atomic_write_text
from azaion_training.inference import cli as inference_cli
from azaion_training.lifecycle import cli as lifecycle_cli
from azaion_training.logs import redact, setup_logging
from azaion_training.offline import configure_offline_environment
from azaion_training.ops import backup_cli
from azaion_training.ops import cli as ops_cli
from azaion_training.queue import cli as queue_cli
from azaion_training.report import cli as report_cli
from azaion_training.settings import LoggingSettings, load_settings, parse_env_file, settings_from_env, to_yaml
from azaion_training.training import cli as training_cli
from azaion_training.training import weights_cli
from azaion_training.web import cli as web_cli

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Azaion AI Training: annotations -> datasets -> YOLO models -> encrypted models -> inference.")
config_app = typer.Typer(no_args_is_help=True, help="Render and check config.yaml.")
app.add_typer(config_app, name="config")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Typer vendors Click and exports its usage errors (typer.BadParameter) but not their base class,
# whose `show()` prints the usage line: found through the public class, never a private module.
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

# Every stage's `commands` Typer, merged into `azaion`. The stage CLI modules are the top layer:
# they may import any stage package; no stage package imports a CLI module (tests/unit/test_imports.py).
STAGE_CLIS = (queue_cli, dataset_cli, training_cli, distribution_cli, inference_cli, demo_cli, ops_cli, backup_cli,
              report_cli, weights_cli, lifecycle_cli, analysis_cli, data_engine_cli, web_cli)


@app.callback()
def _global(ctx: typer.Context,
            config: Path | None = typer.Option(None, "--config", "-c", envvar="AZAION_CONFIG",
                                               help="config.yaml to read (default ./config.yaml when present)."),
            log_level: str = typer.Option("", "--log-level", help="DEBUG, INFO, WARNING or ERROR "
                                          "(default AZAION_LOG_LEVEL)."),
            ) -> None:
    if log_level and log_level.upper() not in LOG_LEVELS:
        raise typer.BadParameter(f"{log_level!r} is not one of {', '.join(LOG_LEVELS)}", param_hint="'--log-level'")
    state.config = config
    try:
        state.settings = load_settings(config)
        wanted = state.settings.logging
    except ConfigError:
        state.settings, wanted = None, LoggingSettings()  # the command that needs the settings says why
    # The log's `service` field names the command (queue, train, publish, ...).
    setup_logging(service=ctx.invoked_subcommand or "azaion", level=log_level or wanted.level, fmt=wanted.format)


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
    path = config or state.config or Path("config.yaml")
    settings = load_settings(path)
    if as_json:
        print_json(settings.masked())
        return
    import yaml

    console.print(f"[green]{path} is valid[/green]; effective settings (secrets masked):")
    console.print(yaml.safe_dump(settings.masked(), sort_keys=False), markup=False, highlight=False)


@config_app.command("doc")
def config_doc(write: Path | None = typer.Option(None, "--write", help="Regenerate the reference inside this "
                                                 "Markdown file (docs/configuration.md) instead of printing it."),
               check: Path | None = typer.Option(None, "--check", help="Exit 1 when this file's reference is not "
                                                 "what settings.py declares.")) -> None:
    """The configuration reference generated from settings.py: every variable with its config.yaml key,
    default, allowed values, whether it is required or secret, and the comment beside its field."""
    from azaion_training import settings_doc

    if check is not None:
        page = check.read_text(encoding="utf-8")
        if settings_doc.splice(page, settings_doc.reference()) != page:
            err_console.print(f"{check} is out of date: run `azaion config doc --write {check}`")
            raise typer.Exit(1)
        console.print(f"{check} lists every variable settings.py declares")
    elif write is not None:
        changed = settings_doc.write(write)
        console.print(f"{'updated' if changed else 'unchanged'}: {write}")
    else:
        sys.stdout.write(settings_doc.reference())


@app.command("init")
def init_tree() -> None:
    """Create the /azaion tree under AZAION_ROOT_DIR (idempotent; never deletes or overwrites)."""
    from azaion_training.cli_support import layout

    tree = layout()
    try:
        created = tree.init()
    except OSError as exc:
        raise InputError(f"cannot create the data tree under AZAION_ROOT_DIR={tree.root}: "
                         f"{exc.strerror or exc} ({exc.filename}); point it at a directory you can write") from None
    for path in created:
        console.print(f"created {path}")
    console.print(f"{tree.root}: {len(created)} created, everything else already in place")


for _stage in STAGE_CLIS:
    app.add_typer(_stage.commands)


def main() -> None:
    try:
        configure_offline_environment()
        # Without standalone mode click returns the code of a `typer.Exit(code)` instead of exiting.
        exit_code = app(standalone_mode=False, prog_name="azaion")
        if isinstance(exit_code, int) and exit_code:
            sys.exit(exit_code)
    except AzaionError as exc:
        _fail(str(exc), exc.exit_code)
    except ClickException as exc:
        # Usage errors: Click's usage line, a hint and the message; exit 2.
        exc.show()
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        sys.exit(130)
    except sqlite3.DatabaseError as exc:
        # Every state database we keep (annotation index, check cache) is ours: damage is bad input.
        _fail(f"a state database under AZAION_ROOT_DIR is damaged or not an SQLite file ({exc}): "
              "move it aside and restore it from a backup", 2)
    except OSError as exc:
        _fail(f"{exc.strerror or type(exc).__name__}: {exc.filename or ''}".rstrip(": "), 1)


def _fail(message: str, exit_code: int) -> None:
    err_console.print(f"[red]error:[/red] {escape(redact(message))}", markup=True, highlight=False)
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
