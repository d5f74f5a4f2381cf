"""`azaion health`: live and dead broker, full-disk simulation, consumer progress against a real
stream, GPU expectations, config errors, and the --json schema."""

import asyncio
import json
import os
import shlex
import shutil
import stat
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from rstream import Producer

from azaion_training.ops.health import CHECK_NAMES, HealthOptions, run_health
from azaion_training.settings import load_settings
from tests.conftest import run_azaion
from tests.services.rabbitmq import free_port

STATUSES = {"ok", "warn", "fail", "n/a"}


def assert_report_schema(report: dict) -> None:
    assert set(report) == {"healthy", "checked_at", "checks"}
    assert isinstance(report["healthy"], bool)
    datetime.fromisoformat(report["checked_at"])
    for check in report["checks"]:
        assert set(check) == {"name", "status", "detail", "data"}
        assert check["name"] in CHECK_NAMES and check["status"] in STATUSES
        assert isinstance(check["detail"], str) and check["detail"]
        assert isinstance(check["data"], dict)
    assert report["healthy"] == all(check["status"] != "fail" for check in report["checks"])


def by_name(report: dict) -> dict[str, dict]:
    return {check["name"]: check for check in report["checks"]}


@pytest.fixture
def stream_env(rabbit, root) -> dict[str, str]:
    """The product pointed at the live broker and a fresh stream of its own."""
    return {**rabbit.env(), "RABBITMQ_QUEUE_NAME": f"health-{uuid.uuid4().hex[:8]}", "AZAION_ROOT_DIR": str(root)}


def publish(env: dict[str, str], count: int) -> None:
    async def send() -> None:
        async with Producer(env["RABBITMQ_HOST"], int(env["RABBITMQ_PORT"]), username=env["RABBITMQ_USER"],
                            password=env["RABBITMQ_PASSWORD"]) as producer:
            await producer.create_stream(env["RABBITMQ_QUEUE_NAME"], exists_ok=True)
            for index in range(count):
                await producer.send_wait(env["RABBITMQ_QUEUE_NAME"], f"message {index}".encode())

    asyncio.run(send())


def write_offset(layout, stream: str, offset: int, age: timedelta) -> None:
    updated_at = (datetime.now(UTC) - age).isoformat(timespec="milliseconds")
    layout.offset_file.write_text(yaml.safe_dump({"stream": stream, "offset": offset, "updated_at": updated_at}))


def progress(monkeypatch, env: dict[str, str], **options) -> dict:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    report = run_health(None, HealthOptions(checks=("progress",), **options))
    return report.as_dict()["checks"][0]


def test_live_broker_healthy_json(stream_env):
    result = run_azaion("health", "--json", env=stream_env)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert_report_schema(report)
    assert [check["name"] for check in report["checks"]] == list(CHECK_NAMES)
    checks = by_name(report)
    assert checks["broker"]["status"] == "ok"
    assert checks["broker"]["data"]["port"] == int(stream_env["RABBITMQ_PORT"])
    assert checks["config"]["status"] == "ok"
    assert checks["disk"]["data"]["root"] == stream_env["AZAION_ROOT_DIR"]
    # No stream yet and nothing committed: nothing is pending.
    assert checks["progress"]["status"] == "ok" and checks["progress"]["data"]["pending"] is False


def test_dead_broker_is_unhealthy_with_one_line_per_check(root):
    env = {"RABBITMQ_HOST": "127.0.0.1", "RABBITMQ_PORT": str(free_port()), "RABBITMQ_PASSWORD": "pw-dead",
           "AZAION_ROOT_DIR": str(root)}
    result = run_azaion("health", env=env)
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert [line.split()[1] for line in lines] == list(CHECK_NAMES)
    broker = next(line for line in lines if line.split()[1] == "broker")
    assert broker.startswith("FAIL") and f"127.0.0.1:{env['RABBITMQ_PORT']} unreachable" in broker
    assert "pw-dead" not in result.stdout + result.stderr


def test_full_disk_simulation_fails_and_warns_by_threshold(root):
    env = {"AZAION_ROOT_DIR": str(root)}
    full = run_azaion("health", "--check", "disk", "--disk-warn-pct", "0", "--disk-fail-pct", "0", env=env)
    assert full.returncode == 1
    assert full.stdout.startswith("FAIL disk") and "critical above 0 %" in full.stdout
    filling = run_azaion("health", "--check", "disk", "--json", env={**env, "HEALTH_DISK_WARN_PCT": "0"})
    assert filling.returncode == 0
    disk = json.loads(filling.stdout)["checks"][0]
    assert disk["status"] == "warn" and disk["data"]["warn_pct"] == 0 and disk["data"]["fail_pct"] == 95
    assert 0 < disk["data"]["used_pct"] <= 100


def test_missing_root_fails_disk_check(tmp_path):
    result = run_azaion("health", "--check", "disk", env={"AZAION_ROOT_DIR": str(tmp_path / "absent")})
    assert result.returncode == 1 and "does not exist" in result.stdout and "azaion init" in result.stdout


def test_invalid_config_fails_and_skips_the_rest(root):
    result = run_azaion("health", "--json", env={"AZAION_ROOT_DIR": str(root), "RABBITMQ_PORT": "70000"})
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert_report_schema(report)
    checks = by_name(report)
    assert checks["config"]["status"] == "fail" and "RABBITMQ_PORT" in checks["config"]["detail"]
    assert {checks[name]["status"] for name in CHECK_NAMES if name != "config"} == {"n/a"}


def test_unknown_check_is_an_input_error(root):
    result = run_azaion("health", "--check", "bogus", env={"AZAION_ROOT_DIR": str(root)})
    assert result.returncode == 2 and "unknown check(s) bogus" in result.stderr
    assert "Traceback" not in result.stderr


def test_progress_against_a_live_stream(monkeypatch, stream_env, layout):
    publish(stream_env, 3)  # offsets 0, 1, 2
    stream = stream_env["RABBITMQ_QUEUE_NAME"]

    write_offset(layout, stream, 0, timedelta(hours=2))
    stalled = progress(monkeypatch, stream_env)
    assert stalled["status"] == "fail" and stalled["data"]["pending"] is True
    assert "pending" in stalled["detail"] and "azaion queue consume" in stalled["detail"]

    write_offset(layout, stream, 2, timedelta(hours=2))  # the consumer caught up since the last run
    advanced = progress(monkeypatch, stream_env)
    assert advanced["status"] == "ok" and "advanced 0 -> 2" in advanced["detail"]

    idle = progress(monkeypatch, stream_env)  # unchanged and old, but nothing after offset 2
    assert idle["status"] == "ok" and idle["data"]["pending"] is False and "nothing pending" in idle["detail"]
    previous = yaml.safe_load((layout.health_reading).read_text())
    assert previous["offset"] == 2 and previous["stream"] == stream


def test_progress_recent_commit_and_unknown_pending(monkeypatch, root, layout):
    env = {"RABBITMQ_PORT": str(free_port()), "RABBITMQ_PASSWORD": "pw", "AZAION_ROOT_DIR": str(root)}
    write_offset(layout, "azaion-annotations", 7, timedelta(minutes=5))
    recent = progress(monkeypatch, env)
    assert recent["status"] == "ok" and "committed 5 min ago" in recent["detail"]

    stale = progress(monkeypatch, env, offset_max_age_min=1)  # broker down: cannot ask what is pending
    assert stale["status"] == "warn" and stale["data"]["pending"] is None and "cannot tell" in stale["detail"]


def test_onlooker_health_records_no_reading(monkeypatch, root, layout):
    """The cockpit runs health with record_reading=False: the cron job's previous reading stays its own."""
    env = {"RABBITMQ_PORT": str(free_port()), "RABBITMQ_PASSWORD": "pw", "AZAION_ROOT_DIR": str(root)}
    write_offset(layout, "azaion-annotations", 3, timedelta(minutes=5))
    progress(monkeypatch, env)  # the cron job's run records offset 3
    write_offset(layout, "azaion-annotations", 9, timedelta(minutes=1))
    looked = progress(monkeypatch, env, record_reading=False)
    assert "advanced 3 -> 9" in looked["detail"]
    assert yaml.safe_load((layout.health_reading).read_text())["offset"] == 3
    assert "advanced 3 -> 9" in progress(monkeypatch, env)["detail"]  # the cron job still sees the advance


def test_gpu_expected_without_nvidia_smi_fails(root, tmp_path):
    env = {"AZAION_ROOT_DIR": str(root), "TRAINING_DEVICE": "0", "PATH": str(tmp_path)}  # no nvidia-smi on PATH
    result = run_azaion("health", "--check", "gpu", env=env)
    assert result.returncode == 1 and "TRAINING_DEVICE=0 asks for a GPU" in result.stdout
    relaxed = run_azaion("health", "--check", "gpu", env={**env, "TRAINING_DEVICE": "cpu"})
    assert relaxed.returncode == 0 and relaxed.stdout.startswith("N/A  gpu")


def write_nvidia_smi(directory: Path, output: str, exit_code: int = 0) -> None:
    """CPU counterpart of the GPU test: an executable that prints nvidia-smi's CSV query format."""
    script = directory / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '%s' {shlex.quote(output)}\nexit {exit_code}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


@pytest.mark.parametrize(("output", "exit_code", "status", "detail"), [
    ("0, NVIDIA H100 80GB HBM3, 81559, 1024\n", 0, "ok", "0: NVIDIA H100 80GB HBM3 1024/81559 MiB used"),
    ("0, NVIDIA T4, 15360, 0\n", 0, "warn", "training needs >= 24 GB"),
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver\n", 9, "fail", "exit 9"),
])
def test_gpu_report_from_nvidia_smi_output(monkeypatch, root, tmp_path, output, exit_code, status, detail):
    write_nvidia_smi(tmp_path, output, exit_code)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("TRAINING_DEVICE", "0")
    check = run_health(None, HealthOptions(checks=("gpu",))).checks[0]
    assert check.status == status and detail in check.detail


@pytest.mark.gpu
@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="needs an NVIDIA GPU and driver (nvidia-smi)")
def test_gpu_real_nvidia_smi(monkeypatch, root):
    monkeypatch.setenv("TRAINING_DEVICE", "0")
    check = run_health(None, HealthOptions(checks=("gpu",))).checks[0]
    assert check.status in ("ok", "warn") and check.data["gpus"][0]["memory_total_mib"] > 0


def test_run_health_loads_the_given_config(tmp_path, root):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"paths": {"root_dir": str(root)}, "rabbitmq": {"port": free_port()}}))
    report = run_health(config, HealthOptions(checks=("config", "disk")))
    assert report.healthy and str(config) in report.checks[0].detail
    assert load_settings(config).paths.root_dir == root
