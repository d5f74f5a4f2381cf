"""The one place that turns RabbitMQ settings into rstream clients (consumer, dump, health
probe, publishers) and reads the password."""

from typing import Any

from rstream import Consumer, Producer
from rstream import connection as rstream_connection

from azaion_training.settings import RabbitMQSettings, require_secret

FRAME_MAX = 8 * 1024 * 1024  # one frame holds the largest annotation (RABBITMQ_MAX_IMAGE_MB) and its envelope
# rstream reads the socket 256 bytes at a time: a 300 KB annotation costs >1000 Python-level
# reads. 1 MiB reads make consuming several times faster (process-wide; producers benefit too).
rstream_connection.CHUNK_SIZE = max(rstream_connection.CHUNK_SIZE, 1 << 20)


def credentials(rabbit: RabbitMQSettings) -> dict[str, Any]:
    return {"host": rabbit.host, "port": rabbit.port, "username": rabbit.user,
            "password": require_secret(rabbit.password, "RABBITMQ_PASSWORD")}


def stream_consumer(rabbit: RabbitMQSettings, connection_name: str, **options: Any) -> Consumer:
    """A Consumer for `rabbit`'s node (`options`: rstream's own, e.g. recovery_strategy)."""
    return Consumer(**credentials(rabbit), frame_max=FRAME_MAX, connection_name=connection_name, **options)


def stream_producer(rabbit: RabbitMQSettings, connection_name: str, **options: Any) -> Producer:
    return Producer(**credentials(rabbit), frame_max=FRAME_MAX, connection_name=connection_name, **options)
