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
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from azaion_training.errors import ConfigError, InputError
from azaion_training.logs import redact, register_secret

PLACEHOLDER_SECRETS = {"changeme", "change-me", "changeit", "placeholder", "secret", "password"}
CONFIG_ENV_VAR = "AZAION_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


SectionT = TypeVar("SectionT", bound=_Section)


def env(default: Any, name: str, *, required: bool = False, **constraints: Any) -> Any:
    """A settings field fed by environment variable `name` (`required`: `config render` needs it).
    The env table, the required list and the secret list are all derived from these markers."""
    return Field(default, json_schema_extra={"env": name, "required": required}, **constraints)


class ApiSettings(_Section):
    # the Azaion REST API (login, resources: publish and fetch-model)
    url: str = env("https://api.azaion.com", "AZAION_API_URL", required=True)
    # the API account; with the password and this machine's hardware it derives the transport key
    email: str = env("", "AZAION_API_EMAIL", required=True)
    # the API account's password
    password: SecretStr | None = env(None, "AZAION_API_PASSWORD", required=True)
    # a private CA bundle for the API; unset = the system CAs (TLS is always verified)
    ca_bundle: Path | None = env(None, "AZAION_API_CA_BUNDLE")
    # seconds per API request
    timeout_s: float = env(30.0, "AZAION_API_TIMEOUT_S", gt=0)
    # connection errors, timeouts and 5xx are retried with exponential backoff (other 4xx are not)
    retries: int = env(3, "AZAION_API_RETRIES", ge=0, le=10)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class RabbitMQSettings(_Section):
    # RabbitMQ Streams: host and stream-protocol port (not AMQP's 5672)
    host: str = env("127.0.0.1", "RABBITMQ_HOST", required=True)
    # the stream protocol's port
    port: int = env(5552, "RABBITMQ_PORT", required=True, ge=1, le=65535)
    # the stream reader's account
    user: str = env("azaion_receiver", "RABBITMQ_USER", required=True)
    # the stream reader's password
    password: SecretStr | None = env(None, "RABBITMQ_PASSWORD", required=True)
    # the stream the platform publishes annotation events to
    queue_name: str = env("azaion-annotations", "RABBITMQ_QUEUE_NAME", required=True, min_length=1)
    # the name the broker stores this consumer's offset under (store_offset/query_offset)
    consumer_name: str = env("azaion-training", "RABBITMQ_CONSUMER_NAME", min_length=1)
    # a message with a larger image is rejected (queue-rejected/)
    max_image_mb: float = env(50.0, "RABBITMQ_MAX_IMAGE_MB", gt=0)
    # cap of the reconnect backoff (broker down or restarted)
    reconnect_max_s: float = env(30.0, "RABBITMQ_RECONNECT_MAX_S", gt=0)


def _stride_multiple(value: int) -> int:
    """The one image-size rule: YOLO downsamples by 32."""
    if value % 32:
        raise ValueError("must be a multiple of 32 (the YOLO stride)")
    return value


def _plain_dir_name(value: str) -> str:
    if not value or "/" in value or value in (".", ".."):
        raise ValueError("must be a plain directory name under AZAION_ROOT_DIR (no '/', not '.' or '..')")
    return value


class PathSettings(_Section):
    # the data tree (docs/data-tree.md); the annotation areas are plain directory names under it
    root_dir: Path = env(Path("/azaion"), "AZAION_ROOT_DIR", required=True)
    # validated annotations: the input of dataset formation
    data_dir: str = env("data", "AZAION_DATA_DIR", required=True)
    # operator annotations awaiting validation
    data_seed_dir: str = env("data-seed", "AZAION_DATA_SEED_DIR", required=True)
    # soft-deleted annotations
    data_deleted_dir: str = env("data_deleted", "AZAION_DATA_DELETED_DIR", required=True)

    @field_validator("data_dir", "data_seed_dir", "data_deleted_dir")
    @classmethod
    def _plain_names(cls, value: str) -> str:
        return _plain_dir_name(value)


class TrainingSettings(_Section):
    # base weights: a bare .pt name means <root>/models/base/NAME (`azaion weights pull`), else a path to a .pt, or a
    # model yaml (yolo26n.yaml) to train from scratch; never downloaded
    model: str = env("yolo26m.pt", "TRAINING_MODEL", required=True)
    # epochs of a new run (a cycle's fine-tune uses CYCLE_EPOCHS)
    epochs: int = env(120, "TRAINING_EPOCHS", required=True, ge=1)
    # images per batch, in total across GPUs
    batch_size: int = env(11, "TRAINING_BATCH_SIZE", required=True, ge=1)
    # training image size, a multiple of 32 (the YOLO stride)
    imgsz: int = env(1280, "TRAINING_IMGSZ", required=True, ge=32)
    # an epochN.pt every N epochs; -1 = none (last.pt and best.pt always)
    save_period: int = env(1, "TRAINING_SAVE_PERIOD", required=True, ge=-1)
    # dataloader worker processes
    workers: int = env(24, "TRAINING_WORKERS", required=True, ge=0)
    # "" = Ultralytics' choice (first GPU, else CPU); "cpu", "0", "0,1"
    device: str = env("", "TRAINING_DEVICE")
    # Ultralytics' training plots (PR curves, confusion matrix, sample batches)
    plots: bool = env(True, "TRAINING_PLOTS")
    # Decoded-image cache for the training dataloader: none, disk (.npy beside each image) or ram
    cache: Literal["none", "disk", "ram"] = env("none", "TRAINING_CACHE")

    @field_validator("imgsz")
    @classmethod
    def _stride_multiple(cls, value: int) -> int:
        return _stride_multiple(value)


class ExportSettings(_Section):
    # export size for weights outside any run (a run exports at the size it trained at); a multiple of 32
    onnx_imgsz: int = env(1280, "EXPORT_ONNX_IMGSZ", required=True, ge=32)
    # the ONNX's dynamic batch axis goes from 1 to this
    max_batch: int = env(8, "EXPORT_MAX_BATCH", ge=1, le=64)
    # a parity check where PyTorch and ONNX both score below this mAP50 proves nothing: it fails
    parity_min_map50: float = env(0.05, "EXPORT_PARITY_MIN_MAP50", ge=0, le=1)
    # quantised and edge exports (docs/edge.md) are refused when their mAP50 falls more than this
    # below the run's FP32 ONNX on the same split
    quant_max_map_drop: float = env(0.01, "QUANT_MAX_MAP_DROP", ge=0, le=1)
    # an INT8 export (not RKNN) must run at least this many times faster per frame than the FP32 ONNX
    quant_min_speedup: float = env(1.3, "QUANT_MIN_SPEEDUP", ge=0)
    # INT8 calibration images drawn from the dataset's train split, stratified by class
    quant_calibration_images: int = env(300, "QUANT_CALIBRATION_IMAGES", ge=1)
    # the RKNN toolchain's venv (`make rknn-env`); default: .venv-rknn beside the running venv
    rknn_venv: Path | None = env(None, "EXPORT_RKNN_VENV")

    @field_validator("onnx_imgsz")
    @classmethod
    def _stride_multiple(cls, value: int) -> int:
        return _stride_multiple(value)


class SecuritySettings(_Section):
    # shared with the platform: published models are AES-256 encrypted with calc_hash(this) and manifests authenticated
    # with a key derived from it (docs/encryption.md)
    model_encryption_key: SecretStr | None = env(None, "MODEL_ENCRYPTION_KEY", required=True)


class CdnSettings(_Section):
    # a local cdn.yaml; unset = fetched encrypted through the API
    config_file: Path | None = env(None, "CDN_CONFIG_FILE")
    # used when cdn.yaml names no bucket
    bucket: str = env("models", "CDN_BUCKET")
    # where fetched .big parts are kept; default <root>/models/cache
    cache_dir: Path | None = env(None, "CDN_CACHE_DIR")


class InferenceSettings(_Section):
    # `azaion infer` uses every N-th video frame
    every: int = env(4, "INFERENCE_EVERY", ge=1)
    batch: int = env(0, "INFERENCE_BATCH", ge=0, le=64)  # 0 = 1 on CPU, 4 on a GPU
    # confidence threshold of a detection
    conf: float = env(0.3, "INFERENCE_CONF", ge=0, le=1)
    # overlap cleanup: of two boxes overlapping above this IoU (any classes) the less confident goes
    iou: float = env(0.3, "INFERENCE_IOU", ge=0, le=1)
    threads: int = env(0, "INFERENCE_THREADS", ge=0)  # per engine call; 0 = cores / workers
    workers: int = env(0, "INFERENCE_WORKERS", ge=0, le=16)  # engine calls at once; 0 = 2 (1 on one core)


class LoggingSettings(_Section):
    # the `--log-level` option overrides it for one command
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = env("INFO", "AZAION_LOG_LEVEL")
    # auto = human lines on a terminal, JSON lines otherwise
    format: Literal["auto", "json", "human"] = env("auto", "AZAION_LOG_FORMAT")

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class HealthSettings(_Section):
    # `azaion health`: the data root's disk warns above this % used...
    disk_warn_pct: float = env(80.0, "HEALTH_DISK_WARN_PCT", ge=0, le=100)
    # ...and fails above this
    disk_fail_pct: float = env(95.0, "HEALTH_DISK_FAIL_PCT", ge=0, le=100)
    # a committed offset younger than this (minutes) counts as progress
    offset_max_age_min: float = env(30.0, "HEALTH_OFFSET_MAX_AGE_MIN", gt=0)
    # TCP connect timeout of the broker check
    broker_timeout_s: float = env(3.0, "HEALTH_BROKER_TIMEOUT_S", gt=0)
    # the field check warns when a class's field recall (validators' verdicts on the production model's
    # proposals, docs/data-engine.md) falls by more than this from one week to the next
    field_recall_drop_alert: float = env(0.1, "FIELD_RECALL_DROP_ALERT", ge=0, le=1)


class BackupSettings(_Section):
    # where `azaion backup create` writes (and list/prune/health look): a directory or s3://bucket/prefix;
    # "" = <root>/backups (same disk as the data: copy it elsewhere, or point this at another disk or S3)
    destination: str = env("", "BACKUP_DESTINATION")
    # snapshots `azaion backup create` keeps (the newest); 0 = keep all
    keep: int = env(14, "BACKUP_KEEP", ge=0)
    # `azaion health` warns when the newest snapshot is older than this; 0 = no backups expected here (n/a)
    max_age_h: float = env(36.0, "BACKUP_MAX_AGE_H", ge=0)
    # S3 destinations: a bucket and key pair of the backups' own (not the model CDN's)
    s3_endpoint: str = env("", "BACKUP_S3_ENDPOINT")
    # the backup bucket's region
    s3_region: str = env("us-east-1", "BACKUP_S3_REGION", min_length=1)
    # the backup bucket's access key...
    s3_access_key: str = env("", "BACKUP_S3_ACCESS_KEY")
    # ...and its secret key
    s3_secret_key: SecretStr | None = env(None, "BACKUP_S3_SECRET_KEY")


class LifecycleSettings(_Section):
    # where `azaion weights pull` downloads base weights from (a mirror in production)
    weights_base_url: str = env("https://github.com/ultralytics/assets/releases/download/v8.4.0",
                                "WEIGHTS_BASE_URL")
    # hosts a weights download may be redirected to besides WEIGHTS_BASE_URL's own (comma list); the
    # default names the hosts GitHub serves release assets from (the default base URL redirects there)
    weights_allow_redirect_hosts: str = env("release-assets.githubusercontent.com,objects.githubusercontent.com",
                                            "WEIGHTS_ALLOW_REDIRECT_HOSTS")
    weights_max_bytes: int = env(1 << 30, "WEIGHTS_MAX_BYTES", gt=0)  # a larger download is refused
    weights_deadline_s: float = env(1800.0, "WEIGHTS_DEADLINE_S", gt=0)  # for a whole `weights pull`
    # the gate publishes a candidate only if its mAP50 >= production's - this (negative: must beat it)
    promotion_min_delta: float = env(0.0, "PROMOTION_MIN_DELTA", ge=-1, le=1)
    # ...and only if its mAP50 is at least this, also for the first promotion on a target
    promotion_min_map50: float = env(0.1, "PROMOTION_MIN_MAP50", ge=0, le=1)
    # per-class guard: a class with at least this many test instances...
    promotion_class_min_instances: int = env(20, "PROMOTION_CLASS_MIN_INSTANCES", ge=1)
    # ...may not lose more than this AP50 against production
    promotion_max_class_drop: float = env(0.1, "PROMOTION_MAX_CLASS_DROP", ge=0, le=1)
    # `azaion cycle` trains only when at least this many validated annotations are new
    cycle_min_new: int = env(500, "CYCLE_MIN_NEW", ge=1)
    # fine-tune budget of one cycle; 0 = a tenth of TRAINING_EPOCHS (at least 1)
    cycle_epochs: int = env(0, "CYCLE_EPOCHS", ge=0)
    # `azaion cycle --watch`: seconds between cycles
    cycle_interval_s: float = env(3600.0, "CYCLE_INTERVAL_S", gt=0)


class AlertSettings(_Section):
    webhook_url: str = env("", "ALERT_WEBHOOK_URL")  # empty: alerts only logged
    # sent as Authorization: Bearer (redirects are not followed)
    webhook_token: SecretStr | None = env(None, "ALERT_WEBHOOK_TOKEN")
    # seconds per alert POST
    timeout_s: float = env(5.0, "ALERT_TIMEOUT_S", gt=0)


class CockpitSettings(_Section):
    # `azaion serve` listens here; anything but loopback needs COCKPIT_TOKEN (>= 32 characters)
    host: str = env("127.0.0.1", "COCKPIT_HOST")
    # `azaion serve`'s port
    port: int = env(8600, "COCKPIT_PORT", ge=1, le=65535)
    # with it (or COCKPIT_USERS) every page needs a login; >= 32 characters to bind beyond loopback
    token: SecretStr | None = env(None, "COCKPIT_TOKEN")
    # named operators: a 0600 file of `name:scrypt:...` lines (`azaion serve add-user NAME`)
    users_file: Path | None = env(None, "COCKPIT_USERS")
    # Host header values served, comma-separated (`name` or `name:port`); empty = the bind address,
    # localhost, 127.0.0.1 and [::1] on any port
    allowed_hosts: str = env("", "COCKPIT_ALLOWED_HOSTS")
    # how long a login lasts
    session_hours: float = env(12.0, "COCKPIT_SESSION_HOURS", gt=0, le=24 * 30)


class Settings(_Section):
    # production refuses placeholder secrets (changeme, ...); development allows them and `azaion dev-api`
    environment: Literal["development", "production"] = env("production", "AZAION_ENV")
    api: ApiSettings = ApiSettings()
    rabbitmq: RabbitMQSettings = RabbitMQSettings()
    paths: PathSettings = PathSettings()
    training: TrainingSettings = TrainingSettings()
    export: ExportSettings = ExportSettings()
    security: SecuritySettings = SecuritySettings()
    cdn: CdnSettings = CdnSettings()
    inference: InferenceSettings = InferenceSettings()
    logging: LoggingSettings = LoggingSettings()
    health: HealthSettings = HealthSettings()
    backup: BackupSettings = BackupSettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
    alerts: AlertSettings = AlertSettings()
    cockpit: CockpitSettings = CockpitSettings()

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data with every secret shown as ***."""
        return _masked(self.model_dump(mode="json"), self)


def _env_markers() -> list[tuple[str, str, str, bool, bool]]:
    """(variable, section, field, required, secret) for every field marked with `env(...)`;
    section "" is a top-level field."""
    found = []

    def collect(model: type[BaseModel], section: str) -> None:
        for name, info in model.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            if "env" in extra:
                secret = info.annotation is SecretStr or SecretStr in get_args(info.annotation)
                found.append((str(extra["env"]), section, name, bool(extra["required"]), secret))
            elif isinstance(info.annotation, type) and issubclass(info.annotation, _Section):
                collect(info.annotation, name)

    collect(Settings, "")
    return found


# Environment variable -> (section, field), derived from the `env(...)` markers above.
ENV_VARS: dict[str, tuple[str, str]] = {name: (section, field) for name, section, field, _, _ in _env_markers()}
# The environment strategy's variables plus the model key: `config render` needs them all.
REQUIRED_ENV_VARS = tuple(name for name, _, _, required, _ in _env_markers() if required)
SECRET_ENV_VARS = tuple(name for name, _, _, _, secret in _env_markers() if secret)
SECRET_FIELDS = tuple(ENV_VARS[name] for name in SECRET_ENV_VARS)
_FIELD_TO_ENV = {fields: name for name, fields in ENV_VARS.items()}


def _read_text(path: Path, what: str, hint: str) -> str:
    """The file's UTF-8 text (a leading BOM dropped), or a ConfigError saying why it cannot be
    read; never any of its content, which may hold secrets."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found: {hint}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory: give the path of the file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (invalid byte at offset {exc.start}): "
                          "save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror or type(exc).__name__}") from None


def parse_env_file(path: Path) -> dict[str, str]:
    """Read KEY=VALUE lines (optional `export `, quotes and # comments) from a .env file."""
    text = _read_text(path, "env file", "create it from .env.example")
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE (the line is not shown: it may hold a secret)")
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
                problems.append(f"  - {_describe(error['loc'])}: {error['msg']}{_shown(error)}")
        raise ConfigError(f"invalid settings in {origin}:\n" + "\n".join(problems)) from None


def _shown(error: Any) -> str:
    """The offending input for an error message, unless it is (or holds) a secret: a password
    typed into the wrong variable must not be echoed."""
    value = error.get("input")
    if _is_secret_loc(error["loc"]) or not isinstance(value, str | int | float) or isinstance(value, bool):
        return ""
    text = str(value)
    if redact(text) != text:
        return ""
    text = repr(text[:80]) + ("..." if len(text) > 80 else "") if isinstance(value, str) else text
    return f" (got {text})"


def _register_raw_secrets(data: Mapping[str, Any]) -> None:
    """Register the secret values before validation, so no error message can echo them."""
    for section, field in SECRET_FIELDS:
        holder = data.get(section) if section else data
        if isinstance(holder, Mapping) and isinstance(holder.get(field), str):
            register_secret(holder[field])


def _is_secret_loc(loc: tuple[Any, ...]) -> bool:
    return len(loc) >= 2 and _FIELD_TO_ENV.get((str(loc[0]), str(loc[1]))) in SECRET_ENV_VARS


def _register_secrets(settings: Settings) -> None:
    for section, field in SECRET_FIELDS:
        secret = getattr(getattr(settings, section), field)
        if secret is not None:
            register_secret(secret.get_secret_value())


def read_config_file(path: Path) -> dict[str, Any]:
    text = _read_text(path, "config file", "render it with `azaion config render`")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        # PyYAML's own message quotes the offending line, which may hold a secret.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem} "
                          "(the line is not shown: it may hold a secret)") from None
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
    data = _apply_env(data, os.environ if env is None else env)
    _register_raw_secrets(data)
    settings = _validate(data, origin)
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
    """The config.yaml text for these settings (secrets in clear: readable by its owner and the services'
    group only -- `azaion config render` writes it 0600, deploy/render-config.sh sets 0640)."""
    data = settings.model_dump(mode="json")
    for section, field in SECRET_FIELDS:
        secret = getattr(getattr(settings, section), field)
        data[section][field] = secret.get_secret_value() if secret is not None else None
    header = ("# Rendered by `azaion config render`. Contains secrets: keep it readable only by its owner and "
              "the service group (0600 or 0640), never commit it.\n")
    return header + yaml.safe_dump(data, sort_keys=False)


def overridden(section: SectionT, **values: Any) -> SectionT:
    """The one "command-line value, else the setting" merge: `section` with every value that
    is not None in its place, checked by the same rules as the settings (an InputError names
    each bad value)."""
    updates = {name: value for name, value in values.items() if value is not None}
    try:
        return section.model_validate({**section.model_dump(), **updates})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, error['loc']))}: {error['msg']}{_shown(error)}"
                             for error in exc.errors())
        raise InputError(f"invalid value: {problems}") from None


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
