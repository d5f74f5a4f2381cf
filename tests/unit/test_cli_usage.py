"""Usage errors on every command: Click's usage line and message, exit 2, never a traceback.

The command tree is walked from the real `azaion` app, so a new command is swept without
touching this file."""

import logging
import sys

import pytest
import typer

from azaion_training import cli
from tests.conftest import run_azaion

BOGUS = "--no-such-option-xyz"


def _commands(group, path=()):
    """(path, command) for every leaf command under `group`."""
    for name, command in sorted(group.commands.items()):
        if getattr(command, "commands", None) is not None:
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


LEAVES = list(_commands(typer.main.get_command(cli.app)))
IDS = [" ".join(path) for path, _ in LEAVES]


def _numeric(param) -> bool:
    return getattr(getattr(param, "type_descriptor", None), "annotation", None) in (int, float)


def _required_args(command) -> list[str]:
    """A placeholder value for every required argument and option (types: text, path, number)."""
    args: list[str] = []
    for param in command.params:
        if not param.required:
            continue
        value = "1" if _numeric(param) else "x"
        args += [value] if param.param_type_name == "argument" else [param.opts[0], value]
    return args


@pytest.fixture
def azaion(monkeypatch, capsys):
    """Run `cli.main` in-process as `azaion ARGS`; return (exit code, stdout + stderr)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["azaion", *args])
        with pytest.raises(SystemExit) as exited:
            cli.main()
        out, err = capsys.readouterr()
        return exited.value.code, out + err

    yield run
    root.handlers[:] = handlers  # the CLI's callback configures logging
    root.setLevel(level)


def _assert_usage_error(code: int, output: str) -> None:
    assert code == 2, output
    assert "Usage: azaion" in output, output
    assert "Traceback" not in output, output


def test_the_sweep_sees_every_stage():
    names = {path[0] for path, _ in LEAVES}
    assert {"queue", "dataset", "train", "export", "publish", "fetch-model", "infer", "health", "status",
            "report", "demo", "config", "init", "augment"} <= names


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=IDS)
def test_bogus_option(azaion, path, command):
    code, output = azaion(*path, BOGUS)
    _assert_usage_error(code, output)
    assert f"No such option: {BOGUS}" in output


@pytest.mark.parametrize(("path", "command"), [leaf for leaf in LEAVES if _required_args(leaf[1])],
                         ids=[i for i, leaf in zip(IDS, LEAVES, strict=True) if _required_args(leaf[1])])
def test_missing_required_argument(azaion, path, command):
    code, output = azaion(*path)
    _assert_usage_error(code, output)
    assert "Missing" in output


def _numeric_options(command):
    return [p for p in command.params if p.param_type_name == "option" and _numeric(p)]


@pytest.mark.parametrize(("path", "command"), [leaf for leaf in LEAVES if _numeric_options(leaf[1])],
                         ids=[i for i, leaf in zip(IDS, LEAVES, strict=True) if _numeric_options(leaf[1])])
def test_bad_number(azaion, path, command):
    for option in _numeric_options(command):
        code, output = azaion(*path, *_required_args(command), option.opts[0], "notanumber")
        _assert_usage_error(code, output)
        assert "Invalid value for" in output and option.opts[0] in output, output


def test_unknown_command_and_bad_global_option(azaion):
    for args in (("no-such-command",), (BOGUS, "status"), ("queue", "no-such-command")):
        _assert_usage_error(*azaion(*args))


def test_installed_entry_point_prints_usage_without_traceback():
    result = run_azaion("train", "--epochs", "notanumber")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("Usage: azaion train"), result.stderr
    assert "Invalid value for '--epochs'" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
