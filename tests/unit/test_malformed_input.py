"""Malformed files and values, through the installed CLI: a clear message, exit 2, no
traceback, and no secret in anything printed."""

import os
import sqlite3
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_azaion
from tests.unit.test_foundation import filled_env, write_env

PASSWORD = "Hunter2-rmq-Secret"


def assert_clear_error(result, *expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    assert result.stderr.startswith("error: "), output
    for text in expected:
        assert text in result.stderr, output
    assert PASSWORD not in output, output


def test_env_file_not_utf8(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_bytes(b"AZAION_ENV=development\nRABBITMQ_HOST=\xff\xfe\n")
    assert_clear_error(run_azaion("config", "render", "--env-file", str(env_file), "--out", str(tmp_path / "c")),
                       "is not UTF-8")


def test_config_file_not_utf8(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_bytes(b"rabbitmq:\n  host: \xe9t\xe9\n")
    assert_clear_error(run_azaion("config", "check", "--config", str(config)), "is not UTF-8")
    assert_clear_error(run_azaion("status", env={"AZAION_CONFIG": str(config)}), "is not UTF-8")


def test_config_path_is_a_directory(tmp_path):
    assert_clear_error(run_azaion("config", "check", "--config", str(tmp_path)), "is a directory")
    assert_clear_error(run_azaion("status", env={"AZAION_CONFIG": str(tmp_path)}), "is a directory")


def test_init_with_the_root_a_file(tmp_path):
    root = tmp_path / "azaion"
    root.write_text("not a directory")
    assert_clear_error(run_azaion("init", env={"AZAION_ROOT_DIR": str(root)}), "cannot create the data tree")
    assert root.read_text() == "not a directory"


def test_init_with_an_unwritable_root(tmp_path):
    if os.geteuid() == 0:
        root = Path("/sys/azaion-unwritable")  # read-only even for root
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        root = locked / "azaion"
    assert_clear_error(run_azaion("init", env={"AZAION_ROOT_DIR": str(root)}), "cannot create the data tree")


@pytest.mark.parametrize("content", [b"garbage, not SQLite" * 10, b"SQLite format 3\x00" + b"\xff" * 200])
def test_damaged_annotation_index(root, tmp_path, content):
    (root / "queue-state" / "annotations.sqlite3").write_bytes(content)
    assert_clear_error(run_azaion("status"), "annotations.sqlite3")
    dump = tmp_path / "empty.dump"
    dump.write_bytes(b"")
    assert_clear_error(run_azaion("queue", "replay", str(dump)), "annotations.sqlite3")


def test_annotation_index_without_its_tables(root):
    sqlite3.connect(root / "queue-state" / "annotations.sqlite3").execute("CREATE TABLE other (x)").connection.close()
    assert_clear_error(run_azaion("status"), "state database")


def test_publish_to_a_local_target_that_is_a_file(root, tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x08\x01" * 100)
    target = tmp_path / "target-file"
    target.write_text("x")
    result = run_azaion("publish", "--file", str(model), "--target", f"local:{target}",
                        env={"MODEL_ENCRYPTION_KEY": "a-model-key-of-some-length"})
    assert_clear_error(result, "is not a directory")
    assert target.read_text() == "x"


def test_env_line_without_equals_does_not_show_the_line(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(f"AZAION_ENV=development\nRABBITMQ_PASSWORD {PASSWORD}\n")
    result = run_azaion("config", "render", "--env-file", str(env_file), "--out", str(tmp_path / "c"))
    assert_clear_error(result, ".env:2", "expected KEY=VALUE")


def test_yaml_syntax_error_on_the_password_line(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"rabbitmq:\n  host: broker\n  password: {PASSWORD}: x\n")
    assert_clear_error(run_azaion("config", "check", "--config", str(config)), "not valid YAML", "line 3")


def test_password_typed_into_the_port(tmp_path):
    env = {"RABBITMQ_PASSWORD": PASSWORD, "RABBITMQ_PORT": PASSWORD}
    assert_clear_error(run_azaion("status", env=env), "RABBITMQ_PORT", "valid integer")
    values = {**filled_env(tmp_path), "RABBITMQ_PASSWORD": PASSWORD, "RABBITMQ_PORT": PASSWORD}
    env_file = write_env(tmp_path / ".env", values)
    result = run_azaion("config", "render", "--env-file", str(env_file), "--out", str(tmp_path / "c"))
    assert_clear_error(result, "RABBITMQ_PORT", "valid integer")


def test_a_non_secret_bad_value_is_still_shown():
    result = run_azaion("status", env={"RABBITMQ_PORT": "fivefivefivetwo"})
    assert_clear_error(result, "RABBITMQ_PORT", "fivefivefivetwo")


def test_env_file_with_a_bom_keeps_its_first_variable(tmp_path):
    values = filled_env(tmp_path)
    values.pop("AZAION_ENV", None)
    values["RABBITMQ_PASSWORD"] = "changeme"  # a placeholder: accepted in development only
    env_file = tmp_path / ".env"
    text = "AZAION_ENV=development\n" + "".join(f"{k}={v}\n" for k, v in values.items())
    env_file.write_bytes(b"\xef\xbb\xbf" + text.encode())
    out = tmp_path / "config.yaml"
    result = run_azaion("config", "render", "--env-file", str(env_file), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(out.read_text())["environment"] == "development"
