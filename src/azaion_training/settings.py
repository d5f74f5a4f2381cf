"""One typed settings model for every stage.

Precedence: built-in defaults < `config.yaml` < environment variables. `config.yaml` is
rendered from `.env` at deploy time (`azaion config render`), which is strict: every
required variable must be set, values must validate, placeholder secrets are refused
outside development. Loading at run time is lenient about what a stage does not need;
a stage that needs a secret asks for it with `require_secret`.
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from azaion_training.errors import ConfigError
from azaion_training.logs import register_secret

PLACEHOLDER_SECRETS = {"changeme", "change-me", "changeit", "placeholder", "secret", "password"}
CONFIG_ENV_VAR = "AZAION_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ApiSettings(_Section):
    url: str = "https://api.azaion.com"
    email: str = ""
    password: SecretStr | None = None
    ca_bundle: Path | None = None
    timeout_s: float = Field(30.0, gt=0)
    retries: int = Field(3, ge=0, le=10)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class RabbitMQSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(5552, ge=1, le=65535)
    user: str = "azaion_receiver"
    password: SecretStr | None = None
    queue_name: str = Field("azaion-annotations", min_length=1)
    consumer_name: str = Field("azaion-training", min_length=1)
    max_image_mb: float = Field(50.0, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)


def _plain_dir_name(value: str) -> str:
    if not value or "/" in value or value in (".", ".."):
        raise ValueError("must be a plain directory name under AZAION_ROOT_DIR (no '/', not '.' or '..')")
    return value


class PathSettings(_Section):
    root_dir: Path = Path("/azaion")
    data_dir: str = "data"
    data_seed_dir: str = "data-seed"
    data_deleted_dir: str = "data_deleted"

    @field_validator("data_dir", "data_seed_dir", "data_deleted_dir")
    @classmethod
    def _plain_names(cls, value: str) -> str:
        return _plain_dir_name(value)


class TrainingSettings(_Section):
    model: str = "yolo26m.pt"
    epochs: int = Field(120, ge=1)
    batch_size: int = Field(11, ge=1)
    imgsz: int = Field(1280, ge=32)
    save_period: int = Field(1, ge=-1)
    workers: int = Field(24, ge=0)
    device: str = ""  # "" = Ultralytics' choice (first GPU, else CPU); "cpu", "0", "0,1"
    plots: bool = True  # Ultralytics' training plots (PR curves, confusion matrix, sample batches)

    @field_validator("imgsz")
    @classmethod
    def _stride_multiple(cls, value: int) -> int:
        if value % 32:
            raise ValueError("must be a multiple of 32 (the YOLO stride)")
        return value


class ExportSettings(_Section):
    onnx_imgsz: int = Field(1280, ge=32)
    max_batch: int = Field(8, ge=1, le=64)


class SecuritySettings(_Section):
    model_encryption_key: SecretStr | None = None


class CdnSettings(_Section):
    config_file: Path | None = None  # a local cdn.yaml; unset = fetched encrypted through the API
    bucket: str = "models"
    cache_dir: Path | None = None  # where fetched .big parts are kept; default <root>/models/cache


class InferenceSettings(_Section):
    every: int = Field(4, ge=1)
    batch: int = Field(4, ge=1, le=64)
    conf: float = Field(0.3, ge=0, le=1)
    iou: float = Field(0.3, ge=0, le=1)
    threads: int = Field(0, ge=0)  # 0 = ONNX Runtime's default


class Settings(_Section):
    environment: Literal["development", "production"] = "production"
    api: ApiSettings = ApiSettings()
    rabbitmq: RabbitMQSettings = RabbitMQSettings()
    paths: PathSettings = PathSettings()
    training: TrainingSettings = TrainingSettings()
    export: ExportSettings = ExportSettings()
    security: SecuritySettings = SecuritySettings()
    cdn: CdnSettings = CdnSettings()
    inference: InferenceSettings = InferenceSettings()

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data with every secret shown as ***."""
        return _masked(self.model_dump(mode="json"), self)


# Environment variable -> (section, field). Required ones must be set for `config render`.
ENV_VARS: dict[str, tuple[str, str]] = {
    "AZAION_ENV": ("", "environment"),
    "AZAION_API_URL": ("api", "url"),
    "AZAION_API_EMAIL": ("api", "email"),
    "AZAION_API_PASSWORD": ("api", "password"),
    "AZAION_API_CA_BUNDLE": ("api", "ca_bundle"),
    "AZAION_API_TIMEOUT_S": ("api", "timeout_s"),
    "RABBITMQ_HOST": ("rabbitmq", "host"),
    "RABBITMQ_PORT": ("rabbitmq", "port"),
    "RABBITMQ_USER": ("rabbitmq", "user"),
    "RABBITMQ_PASSWORD": ("rabbitmq", "password"),
    "RABBITMQ_QUEUE_NAME": ("rabbitmq", "queue_name"),
    "RABBITMQ_CONSUMER_NAME": ("rabbitmq", "consumer_name"),
    "RABBITMQ_MAX_IMAGE_MB": ("rabbitmq", "max_image_mb"),
    "AZAION_ROOT_DIR": ("paths", "root_dir"),
    "AZAION_DATA_DIR": ("paths", "data_dir"),
    "AZAION_DATA_SEED_DIR": ("paths", "data_seed_dir"),
    "AZAION_DATA_DELETED_DIR": ("paths", "data_deleted_dir"),
    "TRAINING_MODEL": ("training", "model"),
    "TRAINING_EPOCHS": ("training", "epochs"),
    "TRAINING_BATCH_SIZE": ("training", "batch_size"),
    "TRAINING_IMGSZ": ("training", "imgsz"),
    "TRAINING_SAVE_PERIOD": ("training", "save_period"),
    "TRAINING_WORKERS": ("training", "workers"),
    "TRAINING_DEVICE": ("training", "device"),
    "TRAINING_PLOTS": ("training", "plots"),
    "EXPORT_ONNX_IMGSZ": ("export", "onnx_imgsz"),
    "EXPORT_MAX_BATCH": ("export", "max_batch"),
    "MODEL_ENCRYPTION_KEY": ("security", "model_encryption_key"),
    "CDN_CONFIG_FILE": ("cdn", "config_file"),
    "CDN_BUCKET": ("cdn", "bucket"),
    "CDN_CACHE_DIR": ("cdn", "cache_dir"),
    "INFERENCE_EVERY": ("inference", "every"),
    "INFERENCE_BATCH": ("inference", "batch"),
    "INFERENCE_CONF": ("inference", "conf"),
    "INFERENCE_IOU": ("inference", "iou"),
    "INFERENCE_THREADS": ("inference", "threads"),
}

# The environment strategy's variables plus the model key: `config render` needs them all.
REQUIRED_ENV_VARS = (
    "AZAION_API_URL", "AZAION_API_EMAIL", "AZAION_API_PASSWORD",
    "RABBITMQ_HOST", "RABBITMQ_PORT", "RABBITMQ_USER", "RABBITMQ_PASSWORD", "RABBITMQ_QUEUE_NAME",
    "AZAION_ROOT_DIR", "AZAION_DATA_DIR", "AZAION_DATA_SEED_DIR", "AZAION_DATA_DELETED_DIR",
    "TRAINING_MODEL", "TRAINING_EPOCHS", "TRAINING_BATCH_SIZE", "TRAINING_IMGSZ",
    "TRAINING_SAVE_PERIOD", "TRAINING_WORKERS", "EXPORT_ONNX_IMGSZ", "MODEL_ENCRYPTION_KEY",
)
SECRET_ENV_VARS = ("AZAION_API_PASSWORD", "RABBITMQ_PASSWORD", "MODEL_ENCRYPTION_KEY")
SECRET_FIELDS = tuple(ENV_VARS[name] for name in SECRET_ENV_VARS)
_FIELD_TO_ENV = {fields: name for name, fields in ENV_VARS.items()}


def parse_env_file(path: Path) -> dict[str, str]:
    """Read KEY=VALUE lines (optional `export `, quotes and # comments) from a .env file."""
    if not path.is_file():
        raise ConfigError(f"env file {path} not found: create it from .env.example")
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE, got {raw.strip()[:40]!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key.strip()] = value
    return values


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    for name, (section, field) in ENV_VARS.items():
        value = env.get(name)
        if value is None or value == "":
            continue
        if section:
            data.setdefault(section, {})
            if not isinstance(data[section], dict):
                continue  # the validator reports the bad section
            data[section][field] = value
        else:
            data[field] = value
    return data


def _describe(loc: tuple[Any, ...]) -> str:
    key = ".".join(str(part) for part in loc)
    fields = (str(loc[0]), str(loc[1])) if len(loc) >= 2 else ("", str(loc[0]))
    env_name = _FIELD_TO_ENV.get(fields)
    return f"{env_name} ({key})" if env_name else f"config key {key}"


def _validate(data: dict[str, Any], origin: str) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            if error["type"] == "extra_forbidden":
                problems.append(f"  - config key {'.'.join(map(str, error['loc']))}: unknown key; "
                                "remove it or fix its spelling")
            else:
                shown = "" if _is_secret_loc(error["loc"]) else f" (got {error.get('input')!r})"
                problems.append(f"  - {_describe(error['loc'])}: {error['msg']}{shown}")
        raise ConfigError(f"invalid settings in {origin}:\n" + "\n".join(problems)) from None


def _is_secret_loc(loc: tuple[Any, ...]) -> bool:
    return len(loc) >= 2 and _FIELD_TO_ENV.get((str(loc[0]), str(loc[1]))) in SECRET_ENV_VARS


def _register_secrets(settings: Settings) -> None:
    for section, field in SECRET_FIELDS:
        secret = getattr(getattr(settings, section), field)
        if secret is not None:
            register_secret(secret.get_secret_value())


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found: render it with `azaion config render`") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def default_config_path() -> Path | None:
    if os.environ.get(CONFIG_ENV_VAR):
        return Path(os.environ[CONFIG_ENV_VAR])
    local = Path("config.yaml")
    return local if local.is_file() else None


def load_settings(config: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Defaults < config.yaml (explicit path, $AZAION_CONFIG, or ./config.yaml) < environment."""
    config = config or default_config_path()
    data = read_config_file(config) if config else {}
    origin = f"{config} and the environment" if config else "the environment"
    settings = _validate(_apply_env(data, os.environ if env is None else env), origin)
    _register_secrets(settings)
    return settings


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """Strict construction for `config render`: every required variable set, every value
    valid, no placeholder secret outside development. One error lists every problem."""
    for name in SECRET_ENV_VARS:
        register_secret(env.get(name))
    missing = [name for name in REQUIRED_ENV_VARS if not env.get(name)]
    if missing:
        raise ConfigError(
            f"{len(missing)} required variable(s) not set: {', '.join(missing)}. "
            "Set them in .env (see .env.example) or the environment, then render again."
        )
    settings = _validate(_apply_env({}, env), "the environment")
    if settings.environment != "development":
        placeholders = [n for n in SECRET_ENV_VARS if (env.get(n) or "").strip().lower() in PLACEHOLDER_SECRETS]
        if placeholders:
            raise ConfigError(
                f"placeholder secret value in {', '.join(placeholders)}: set real secrets, or set "
                "AZAION_ENV=development for a development setup."
            )
    _register_secrets(settings)
    return settings


def to_yaml(settings: Settings) -> str:
    """The config.yaml text for these settings (secrets in clear: the file is mode 0600)."""
    data = settings.model_dump(mode="json")
    for section, field in SECRET_FIELDS:
        secret = getattr(getattr(settings, section), field)
        data[section][field] = secret.get_secret_value() if secret is not None else None
    header = "# Rendered by `azaion config render`. Contains secrets: keep it mode 0600, never commit it.\n"
    return header + yaml.safe_dump(data, sort_keys=False)


def require_secret(secret: SecretStr | None, env_name: str) -> str:
    """The secret's value, or a ConfigError naming the variable that must be set."""
    if secret is None or not secret.get_secret_value():
        raise ConfigError(f"{env_name} is not set: add it to .env and render config.yaml, or export it.")
    return secret.get_secret_value()


def _masked(data: dict[str, Any], settings: Settings) -> dict[str, Any]:
    for section, field in SECRET_FIELDS:
        if getattr(getattr(settings, section), field) is not None:
            data[section][field] = "***"
    return data
