"""What every command module shares: the global --config option, settings/layout loading
and console output. Stage CLI modules import from here, never from cli.py."""

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from azaion_training.layout import Layout
from azaion_training.settings import Settings, load_settings

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


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
