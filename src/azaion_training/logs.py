"""Logging: JSON lines on stderr (`timestamp`, `level`, `service`, `message`, `context`),
human-readable lines on a TTY, and every known secret value redacted from both."""

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Any

REDACTED = "***"
_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Every later log record has this value replaced by ***. Short values are ignored
    (redacting 'a' everywhere would mangle logs without protecting anything)."""
    if value and len(value) >= 4:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "message": record.getMessage(),
            "context": getattr(record, "context", None) or {},
        }
        if record.exc_info:
            entry["context"] = {**entry["context"], "exception": self.formatException(record.exc_info)}
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


class HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        context = getattr(record, "context", None)
        text = f"{stamp} {record.levelname:<7} {record.getMessage()}"
        if context:
            text += "  " + " ".join(f"{k}={v}" for k, v in context.items())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return redact(text)


def setup_logging(service: str = "azaion", level: str = "INFO", fmt: str = "auto") -> None:
    """Configure the root logger (the CLI does it from settings.logging). `fmt`: json, human,
    or auto (human lines on a terminal, JSON lines otherwise)."""
    level = level.upper()
    # stderr: stdout carries what a command prints (tables, `--json` documents) and stays parseable
    json_lines = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if json_lines else HumanFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party chatter stays at WARNING unless we are debugging.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "httpx", "httpcore", "rstream", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"azaion.{name}")


def log(logger: logging.Logger, level: int, message: str, **context: Any) -> None:
    """Log with structured context: log(logger, logging.INFO, "epoch done", epoch=3)."""
    logger.log(level, message, extra={"context": context})
