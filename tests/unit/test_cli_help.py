"""What `azaion ... --help` shows: flags as flags (no `<bool>` value placeholder), and a run named
one way everywhere (positional; the older `--run`/`--candidate` spellings still work, with a note)."""

import pytest
import typer
from typer.testing import CliRunner

from azaion_training import cli
from tests.conftest import run_azaion
from tests.unit.test_cli_usage import LEAVES

GROUPS = [()] + sorted({path[:i] for path, _ in LEAVES for i in range(1, len(path))})


def help_text(*path: str) -> str:
    done = CliRunner().invoke(cli.app, [*path, "--help"], env={"COLUMNS": "200"}, prog_name="azaion")
    assert done.exit_code == 0, done.output
    return done.output


@pytest.mark.parametrize("path", [p for p, _ in LEAVES] + GROUPS, ids=lambda p: " ".join(p) or "azaion")
def test_help_shows_flags_without_a_value(path):
    text = help_text(*path)
    assert "<bool>" not in text
    assert "--help" in text


def test_a_flag_takes_no_value():
    text = help_text("models", "promote")
    line = next(line for line in text.splitlines() if "--force" in line)
    assert "Publish even if the gate refuses" in line and "<" not in line.split("Publish")[0]
    command = typer.main.get_command(cli.app).commands["models"].commands["promote"]
    assert next(p for p in command.params if p.name == "force").is_flag


@pytest.mark.parametrize("path", [("report",), ("evaluate",), ("models", "show"), ("models", "promote")],
                         ids=" ".join)
def test_runs_are_positional(path):
    usage = next(line for line in help_text(*path).splitlines() if "Usage:" in line)
    assert "RUN" in usage.upper(), usage


def test_report_takes_the_old_spelling_with_a_note(tmp_path):
    done = run_azaion("report", "--run", "azaion-1999-01-01", env={"AZAION_ROOT_DIR": str(tmp_path)})
    assert done.returncode == 2 and "deprecated" in done.stderr and "azaion report RUN" in done.stderr
    assert "azaion-1999-01-01" in done.stderr  # then the same answer as `azaion report azaion-1999-01-01`
    both = run_azaion("report", "x", "--run", "y", env={"AZAION_ROOT_DIR": str(tmp_path)})
    assert both.returncode == 2 and "given twice" in both.stderr
    missing = run_azaion("evaluate", env={"AZAION_ROOT_DIR": str(tmp_path)})
    assert missing.returncode == 2 and "missing RUN" in missing.stderr and "Traceback" not in missing.stderr
