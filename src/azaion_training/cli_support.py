"""What every command module shares: the global --config option, settings/layout loading
and console output. Stage CLI modules import from here, never from cli.py."""

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from typer.core import TyperOption

from azaion_training.layout import Layout
from azaion_training.settings import Settings, load_settings

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def _flag_help_type(display_type_rich):
    """Typer's rich help shows a type for every option, flags included (`--force <bool>`), which
    reads as if the flag took a value (`--force true` is a usage error). Its plain help leaves
    flags without one; so does this, for every command (tests/unit/test_cli_usage.py)."""

    def display(self, ctx):
        return None if self.is_flag or self.count else display_type_rich(self, ctx)

    display.__wrapped__ = display_type_rich
    return display


if not hasattr(TyperOption.display_type_rich, "__wrapped__"):
    TyperOption.display_type_rich = _flag_help_type(TyperOption.display_type_rich)


@dataclass
class CliState:
    config: Path | None = None
    settings: Settings | None = None


state = CliState()


def settings() -> Settings:
    """Settings from --config / $AZAION_CONFIG / ./config.yaml plus environment overrides."""
    if state.settings is None:
        state.settings = load_settings(state.config)
    return state.settings


def layout() -> Layout:
    return Layout(settings().paths)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


def run_argument(positional: str | None, deprecated: str | None, usage: str, option: str) -> str:
    """The one convention for a run: a positional argument (`azaion models show RUN`). `deprecated`
    is the value of an older option spelling (`--run RUN`), still taken, with a note on stderr."""
    from azaion_training.errors import InputError

    if deprecated is not None:
        if positional is not None:
            raise InputError(f"the run is given twice: write `{usage}` without {option}")
        err_console.print(f"note: {option} RUN is deprecated; write `{usage}`", highlight=False)
        return deprecated
    if positional is None:
        raise InputError(f"missing RUN: `{usage}` (a run name under models/, see `azaion models list`, "
                         "or a run directory)")
    return positional
