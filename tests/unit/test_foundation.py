"""The foundation: settings, config render/check, the data tree, classes, logging, import side effects."""

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from azaion_training.classes import MODEL_SLOTS, WeatherMode, load_classes, model_class_names, split_class_id
from azaion_training.errors import ConfigError
from azaion_training.layout import Layout, is_safe_name
from azaion_training.logs import JsonFormatter, redact, register_secret
from azaion_training.settings import ENV_VARS, REQUIRED_ENV_VARS, load_settings, parse_env_file
from tests.conftest import AZAION_BIN, REPO, run_azaion


def filled_env(tmp_path: Path) -> dict[str, str]:
    values = parse_env_file(REPO / ".env.example")
    values.update({"AZAION_API_PASSWORD": "api-Secret-123", "RABBITMQ_PASSWORD": "rmq-Secret-456",
                   "MODEL_ENCRYPTION_KEY": "model-Secret-789", "AZAION_ROOT_DIR": str(tmp_path / "root"),
                   "TRAINING_MODEL": "yolo26n.yaml"})
    return values


def write_env(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def test_env_example_lists_every_required_variable():
    values = parse_env_file(REPO / ".env.example")
    assert set(REQUIRED_ENV_VARS) <= set(values)


def test_configuration_reference_is_generated_from_settings():
    """docs/configuration.md is exactly what `azaion config doc` makes of settings.py's env markers:
    a new variable cannot go undocumented (fix: `azaion config doc --write docs/configuration.md`)."""
    from azaion_training.settings_doc import reference, splice

    page = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert splice(page, reference()) == page, "docs/configuration.md is out of date: run " \
        "`azaion config doc --write docs/configuration.md`"
    assert [name for name in ENV_VARS if f"| `{name}` |" not in page] == []


def test_configuration_reference_reads_the_declarations():
    from azaion_training.settings_doc import variables

    found = {v.name: v for v in variables()}
    assert list(found) == list(ENV_VARS)
    assert found["MODEL_ENCRYPTION_KEY"].secret and found["MODEL_ENCRYPTION_KEY"].required
    assert found["TRAINING_CACHE"].allowed == "none \\| disk \\| ram" and found["TRAINING_CACHE"].default == "none"
    assert found["TRAINING_EPOCHS"].allowed == "integer ≥ 1" and found["TRAINING_EPOCHS"].key == "training.epochs"
    assert found["TRAINING_DEVICE"].comment.startswith('"" = Ultralytics\' choice')  # the comment above the field
    assert found["INFERENCE_BATCH"].comment.startswith("0 = 1 on CPU")  # the comment beside it
    assert found["AZAION_ENV"].section == "" and found["AZAION_ENV"].default == "production"


def test_yaml_then_env_precedence(tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"rabbitmq": {"host": "yaml-host", "port": 5553},
                                      "training": {"epochs": 7}}))
    monkeypatch.setenv("RABBITMQ_PORT", "6000")
    settings = load_settings(config)
    assert settings.rabbitmq.host == "yaml-host"  # from yaml
    assert settings.rabbitmq.port == 6000  # env beats yaml
    assert settings.training.epochs == 7
    assert settings.training.batch_size == 11  # default


def test_render_names_every_missing_variable(tmp_path):
    values = filled_env(tmp_path)
    for name in ("RABBITMQ_HOST", "TRAINING_EPOCHS", "MODEL_ENCRYPTION_KEY"):
        del values[name]
    out = tmp_path / "config.yaml"
    result = run_azaion("config", "render", "--env-file", str(write_env(tmp_path / ".env", values)),
                        "--out", str(out))
    assert result.returncode == 2
    for name in ("RABBITMQ_HOST", "TRAINING_EPOCHS", "MODEL_ENCRYPTION_KEY"):
        assert name in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("name,value,reason", [
    ("RABBITMQ_PORT", "abc", "integer"),
    ("TRAINING_EPOCHS", "-1", "greater than or equal to 1"),
    ("TRAINING_IMGSZ", "1000", "multiple of 32"),
    ("AZAION_DATA_DIR", "../escape", "plain directory name"),
])
def test_render_rejects_invalid_values(tmp_path, name, value, reason):
    values = filled_env(tmp_path)
    values[name] = value
    out = tmp_path / "config.yaml"
    result = run_azaion("config", "render", "--env-file", str(write_env(tmp_path / ".env", values)),
                        "--out", str(out))
    assert result.returncode == 2
    assert name in result.stderr and reason in result.stderr
    assert not out.exists()


def test_render_then_check_and_secrets_never_shown(tmp_path):
    values = filled_env(tmp_path)
    out = tmp_path / "config.yaml"
    rendered = run_azaion("config", "render", "--env-file", str(write_env(tmp_path / ".env", values)),
                          "--out", str(out))
    assert rendered.returncode == 0, rendered.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert yaml.safe_load(out.read_text())["rabbitmq"]["password"] == "rmq-Secret-456"
    checked = run_azaion("config", "check", "--config", str(out))
    assert checked.returncode == 0, checked.stderr
    assert "azaion-annotations" in checked.stdout and "***" in checked.stdout
    as_json = run_azaion("config", "check", "--config", str(out), "--json")
    assert json.loads(as_json.stdout)["security"]["model_encryption_key"] == "***"
    for result in (rendered, checked, as_json):
        for secret in ("api-Secret-123", "rmq-Secret-456", "model-Secret-789"):
            assert secret not in result.stdout + result.stderr


def test_check_rejects_unknown_key(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"rabbitmq": {"hots": "x"}}))
    result = run_azaion("config", "check", "--config", str(config))
    assert result.returncode == 2
    assert "rabbitmq.hots" in result.stderr and "unknown key" in result.stderr


def test_placeholder_secret_refused_outside_development(tmp_path):
    values = filled_env(tmp_path)
    values["RABBITMQ_PASSWORD"] = "changeme"
    env_file = write_env(tmp_path / ".env", values)
    refused = run_azaion("config", "render", "--env-file", str(env_file), "--out", str(tmp_path / "a.yaml"))
    assert refused.returncode == 2 and "RABBITMQ_PASSWORD" in refused.stderr
    accepted = run_azaion("config", "render", "--env-file", str(env_file), "--out", str(tmp_path / "b.yaml"),
                          env={"AZAION_ENV": "development"})
    assert accepted.returncode == 0, accepted.stderr


def test_secret_repr_and_logs_are_masked(tmp_path, monkeypatch):
    monkeypatch.setenv("RABBITMQ_PASSWORD", "rmq-Secret-456")
    settings = load_settings()
    assert "rmq-Secret-456" not in repr(settings) and "rmq-Secret-456" not in str(settings.masked())
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "connecting with rmq-Secret-456", None, None)
    line = json.loads(JsonFormatter("test").format(record))
    assert set(line) == {"timestamp", "level", "service", "message", "context"}
    assert "rmq-Secret-456" not in line["message"] and "***" in line["message"]
    register_secret("another-secret")
    assert redact("x another-secret y") == "x *** y"


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")


def test_init_twice_keeps_existing_files(tmp_path):
    root = tmp_path / "root"
    first = run_azaion("init", env={"AZAION_ROOT_DIR": str(root)})
    assert first.returncode == 0, first.stderr
    for area in ("data", "data-seed", "data_deleted"):
        assert (root / area / "images").is_dir() and (root / area / "labels").is_dir()
    for directory in ("data-corrupted", "queue-rejected", "datasets", "models"):
        assert (root / directory).is_dir()
    (root / "data" / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (root / "classes.json").write_text("[]")
    second = run_azaion("init", env={"AZAION_ROOT_DIR": str(root)})
    assert second.returncode == 0
    assert (root / "data" / "labels" / "a.txt").read_text() == "0 0.5 0.5 0.1 0.1\n"
    assert (root / "classes.json").read_text() == "[]"


def test_layout_paths_follow_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("AZAION_ROOT_DIR", str(tmp_path))
    monkeypatch.setenv("AZAION_DATA_SEED_DIR", "seed-area")
    layout = Layout(load_settings().paths)
    assert layout.seed.images == tmp_path / "seed-area" / "images"
    assert layout.data.labels == tmp_path / "data" / "labels"


@pytest.mark.parametrize("name,ok", [("abc-123_x.y", True), ("../x", False), ("a/b", False), ("a\0b", False),
                                     ("", False), (".hidden", False), ("x" * 200, True), ("x" * 201, False)])
def test_safe_names(name, ok):
    assert is_safe_name(name) is ok


def test_class_ids_and_names_for_all_80_slots():
    classes = load_classes()
    assert len([c for c in classes.values() if c.mode is WeatherMode.Norm]) == 17
    assert sorted(classes) == [*range(0, 17), *range(20, 37), *range(40, 57)]
    names = model_class_names()
    assert len(names) == MODEL_SLOTS
    assert names[1] == "Truck" and names[21] == "Truck(Wint)" and names[41] == "Truck(Night)"
    assert names[17] == "Class-17" and names[79] == "Class-79"
    assert split_class_id(41) == (1, WeatherMode.Night)
    assert classes[21].color == classes[1].color and len(classes[0].rgb) == 3


IMPORT_EVERYTHING = """
import importlib, json, os, pkgutil, sys
import cv2  # OpenCV's own import sets LD_LIBRARY_PATH: a third party's doing, not ours
before = dict(os.environ)
import azaion_training
names = [m.name for m in pkgutil.walk_packages(azaion_training.__path__, "azaion_training.")]
for name in names:
    importlib.import_module(name)
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
print(json.dumps({"modules": len(names), "changed": changed}))
"""


def _bare_env(home: Path) -> dict[str, str]:
    """A process environment with a fresh HOME and none of the offline switches set."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("YOLO_", "XDG_")) and k not in ("NO_ALBUMENTATIONS_UPDATE", "MPLCONFIGDIR")}
    return {**env, "HOME": str(home), "MPLCONFIGDIR": str(home.parent / "mpl")}


def _files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_importing_the_package_changes_no_environment_and_writes_nothing(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], env=_bare_env(home), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["modules"] > 40
    assert result["changed"] == []
    assert _files_under(home) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_the_cli_makes_ultralytics_offline_at_start(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**_bare_env(home), "AZAION_ROOT_DIR": str(tmp_path / "root")}
    done = subprocess.run([str(AZAION_BIN), "status", "--json"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    font = home / ".config" / "azaion-training" / "Ultralytics" / "Arial.ttf"
    assert font.is_file() and font.stat().st_size > 100_000


def test_log_lines_name_the_command_and_follow_the_level_setting(root):
    formed = run_azaion("dataset", "form", env={"AZAION_LOG_LEVEL": "warning"})
    assert formed.returncode == 0, formed.stderr
    lines = [json.loads(line) for line in formed.stderr.splitlines() if line.startswith('{"timestamp"')]
    assert lines, formed.stderr
    assert {line["service"] for line in lines} == {"dataset"}
    assert {line["level"] for line in lines} == {"WARNING"}  # "dataset formed" (INFO) filtered out
    bad = run_azaion("--log-level", "loud", "status")
    assert bad.returncode == 2 and "Usage: azaion" in bad.stderr and "Traceback" not in bad.stderr
