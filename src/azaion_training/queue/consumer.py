"""`azaion queue consume`: the long-running stream consumer.

One session = connect, wait for the stream, subscribe at the resume position, apply messages
as they arrive (group commit on a short timer), until a signal, an idle timeout or a lost
connection. Lost connections and local failures end the session; the next one starts after
a capped exponential backoff from the last committed offset, so nothing is skipped. rstream's
own recovery is off: it would resubscribe after the last *delivered* chunk, not the last
*applied* message.
"""

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass

from rstream import Consumer, ConsumerOffsetSpecification, MessageContext, OffsetType
from rstream import connection as rstream_connection
from rstream import exceptions as rstream_errors
from rstream.recovery import BackOffRecoveryStrategy

from azaion_training.errors import ConfigError, InputError
from azaion_training.layout import Layout
from azaion_training.locks import InstanceLock
from azaion_training.logs import get_logger, log
from azaion_training.queue.handler import COMMIT_EVERY, AnnotationHandler, IngestCounts, ProgressLog, committed_offset
from azaion_training.queue.messages import Limits
from azaion_training.settings import Settings, require_secret

logger = get_logger("queue")
COMMIT_INTERVAL_S = 0.2
STREAM_POLL_S = 2.0
CLOSE_TIMEOUT_S = 2.0
# rstream reads the socket 256 bytes at a time: a 300 KB annotation costs >1000 Python-level
# reads. 1 MiB reads make consuming several times faster (process-wide; producers benefit too).
rstream_connection.CHUNK_SIZE = max(rstream_connection.CHUNK_SIZE, 1 << 20)
AUTH_ERRORS = (rstream_errors.AuthenticationFailure, rstream_errors.SASLAuthenticationFailureLoopback,
               rstream_errors.VirtualHostAccessFailure, rstream_errors.AccessRefused)


@dataclass(frozen=True)
class StartSpec:
    """Where to start: 'resume' (committed offset + 1, else first), 'first', 'last', 'next', 'offset'."""

    kind: str = "resume"
    offset: int | None = None

    def rstream(self) -> ConsumerOffsetSpecification:
        kinds = {"first": OffsetType.FIRST, "last": OffsetType.LAST, "next": OffsetType.NEXT,
                 "offset": OffsetType.OFFSET}
        return ConsumerOffsetSpecification(kinds[self.kind], self.offset)


def parse_start(text: str | None) -> StartSpec:
    if not text:
        return StartSpec()
    value = text.strip().lower()
    if value in ("first", "last", "next"):
        return StartSpec(value)
    if value.startswith("offset:") and value[7:].isdigit():
        return StartSpec("offset", int(value[7:]))
    raise InputError(f"--from {text!r} is not valid: use first, last, next or offset:N (N >= 0)")


@dataclass
class ConsumeResult:
    counts: IngestCounts
    committed_offset: int | None
    stopped_by: str  # signal | idle


class SessionEnded(Exception):
    """The connection was lost or a local failure happened: reconnect after a backoff."""


class StreamConsumer:
    def __init__(self, settings: Settings, start: StartSpec, exit_when_idle: float | None = None,
                 create_stream: bool = False, handler: AnnotationHandler | None = None):
        self.settings = settings
        self.rabbit = settings.rabbitmq
        self.stream = self.rabbit.queue_name
        self.start = start
        self.exit_when_idle = exit_when_idle
        self.create_stream = create_stream
        self.layout = Layout(settings.paths)
        self.handler = handler or AnnotationHandler(
            self.layout, Limits(int(self.rabbit.max_image_mb * 1024 * 1024)), self.stream)
        self.progress = ProgressLog(self.handler.counts)
        self.committed: int | None = None  # last offset committed by this process
        self.stored: int | None = None  # last offset stored server-side
        self.stop_requested = False  # set from a signal handler, read between messages
        self.stopped_by = "signal"
        self._seen: int | None = None  # messages at or below this offset are duplicates
        self._lost: str | None = None
        self._last_activity = time.monotonic()

    # ------------------------------------------------------------ top level

    async def run(self) -> ConsumeResult:
        self._install_signal_handlers()
        attempt = 0
        while not self.stop_requested:
            try:
                await self._session()
                attempt = 0
            except AUTH_ERRORS as exc:
                raise ConfigError(f"RabbitMQ at {self.rabbit.host}:{self.rabbit.port} refused user "
                                  f"{self.rabbit.user!r} ({type(exc).__name__}): check RABBITMQ_USER, "
                                  "RABBITMQ_PASSWORD and the user's permissions on the vhost") from None
            except (SessionEnded, OSError, TimeoutError, rstream_errors.ServerError,
                    rstream_errors.ClientError, ConnectionError) as exc:
                if self.stop_requested:
                    break
                attempt += 1
                delay = min(self.rabbit.reconnect_max_s, 0.5 * 2 ** (attempt - 1))
                log(logger, logging.WARNING, "stream connection lost or unavailable; reconnecting",
                    attempt=attempt, retry_in_s=delay, error=f"{type(exc).__name__}: {exc}"[:300],
                    host=self.rabbit.host, port=self.rabbit.port, resume_after=self.committed)
                await self._sleep(delay)
        self.handler.close()
        self.progress.maybe_log(force=True)
        return ConsumeResult(self.handler.counts, self.committed, self.stopped_by)

    def _install_signal_handlers(self) -> None:
        # signal.signal, not loop.add_signal_handler: the flag must be set even while a chunk's
        # messages are being applied synchronously, so the current message is the last one.
        def request_stop(signum, _frame) -> None:
            self.stop_requested = True
            log(logger, logging.INFO, "stop requested; finishing the current message",
                signal=signal.Signals(signum).name)

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, request_stop)

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop_requested and time.monotonic() < deadline:
            await asyncio.sleep(min(0.1, deadline - time.monotonic()))

    # ------------------------------------------------------------ one session

    async def _session(self) -> None:
        self._lost = None
        consumer = Consumer(self.rabbit.host, self.rabbit.port, username=self.rabbit.user,
                            password=require_secret(self.rabbit.password, "RABBITMQ_PASSWORD"),
                            frame_max=8 * 1024 * 1024, recovery_strategy=BackOffRecoveryStrategy(False),
                            on_close_handler=self._on_connection_closed, connection_name="azaion-consumer")
        try:
            await asyncio.wait_for(consumer.start(), 15)
            if not await self._wait_for_stream(consumer):
                return
            offset_spec = await self._start_position(consumer)
            self._seen = self.committed
            await consumer.subscribe(self.stream, self._on_message, offset_specification=offset_spec,
                                     subscriber_name=self.rabbit.consumer_name, initial_credit=8)
            log(logger, logging.INFO, "consuming", stream=self.stream, host=self.rabbit.host,
                port=self.rabbit.port, start=offset_spec.offset_type.name, offset=offset_spec.offset)
            self._last_activity = time.monotonic()
            await self._pump(consumer)
        finally:
            await self._commit(consumer, final=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.close(), CLOSE_TIMEOUT_S)

    async def _pump(self, consumer: Consumer) -> None:
        """Commit on a timer until stopped, idle or disconnected."""
        while not self.stop_requested:
            await asyncio.sleep(COMMIT_INTERVAL_S)
            await self._commit(consumer)
            self.progress.maybe_log()
            if self._lost:
                raise SessionEnded(self._lost)
            if self.exit_when_idle is not None and time.monotonic() - self._last_activity >= self.exit_when_idle:
                log(logger, logging.INFO, "no new message; exiting", idle_s=self.exit_when_idle)
                self.stopped_by = "idle"
                self.stop_requested = True

    async def _wait_for_stream(self, consumer: Consumer) -> bool:
        announced = False
        while not await consumer.stream_exists(self.stream):
            if self.create_stream:
                await consumer.create_stream(self.stream, exists_ok=True)
                log(logger, logging.INFO, "created stream", stream=self.stream)
                return True
            if not announced:
                log(logger, logging.WARNING, "stream does not exist yet; waiting for it "
                    "(pass --create-stream to create it)", stream=self.stream)
                announced = True
            await self._sleep(STREAM_POLL_S)
            if self.stop_requested:
                return False
        return True

    async def _start_position(self, consumer: Consumer) -> ConsumerOffsetSpecification:
        if self.committed is not None:  # a reconnect: right after what this process committed
            return ConsumerOffsetSpecification(OffsetType.OFFSET, self.committed + 1)
        if self.start.kind != "resume":
            return self.start.rstream()
        local = committed_offset(self.layout, self.stream)
        server = await self._server_offset(consumer)
        known = [value for value in (local, server) if value is not None]
        log(logger, logging.INFO, "resume position", offset_file=local, server=server)
        if not known:
            return ConsumerOffsetSpecification(OffsetType.FIRST, None)
        self.committed = self.stored = max(known)
        return ConsumerOffsetSpecification(OffsetType.OFFSET, self.committed + 1)

    async def _server_offset(self, consumer: Consumer) -> int | None:
        try:
            return await consumer.query_offset(self.stream, self.rabbit.consumer_name)
        except rstream_errors.OffsetNotFound:
            return None

    # ------------------------------------------------------------ messages and commits

    def _on_message(self, data: bytes, context: MessageContext) -> None:
        """rstream's delivery callback. Synchronous on purpose: a chunk's messages are applied
        one after another without yielding, so commits always fall between messages."""
        if self.stop_requested or self._lost or (self._seen is not None and context.offset <= self._seen):
            return
        try:
            self.handler.handle(context.offset, data, context.timestamp)
        except Exception as exc:  # this machine failed (disk, permissions): retry from the last commit
            log(logger, logging.ERROR, "could not apply a message; will retry from the last committed offset",
                offset=context.offset, error=f"{type(exc).__name__}: {exc}"[:300])
            self._lost = f"local failure at offset {context.offset}"
            self._abandon_or_commit()
            return
        self._seen = context.offset
        self._last_activity = time.monotonic()
        if self.handler.pending >= COMMIT_EVERY:
            self._commit_local()

    def _commit_local(self) -> None:
        committed = self.handler.commit()
        if committed is not None:
            self.committed = committed

    def _abandon_or_commit(self) -> None:
        """After a failure: keep the fully applied messages if the commit works, else drop the batch."""
        try:
            self._commit_local()
        except Exception:
            self.handler.abandon()

    async def _commit(self, consumer: Consumer, final: bool = False) -> None:
        if self.handler.pending:
            try:
                self._commit_local()
            except Exception as exc:
                self.handler.abandon()
                raise SessionEnded(f"commit failed: {type(exc).__name__}: {exc}") from exc
        if self.committed is not None and self.committed != self.stored and not self._lost:
            try:
                await asyncio.wait_for(consumer.store_offset(self.stream, self.rabbit.consumer_name,
                                                             self.committed), 1.0 if final else 5.0)
                self.stored = self.committed
            except Exception as exc:  # offset.yaml has it; the server copy catches up next time
                log(logger, logging.DEBUG, "could not store the offset server-side", error=str(exc))

    def _on_connection_closed(self, info) -> None:
        self._lost = f"{info.reason} ({', '.join(info.streams or [])})"


def consume(settings: Settings, start: StartSpec = StartSpec(), exit_when_idle: float | None = None,
            create_stream: bool = False) -> ConsumeResult:
    """Run the consumer until SIGTERM/SIGINT (or `exit_when_idle` seconds without a message)."""
    layout = Layout(settings.paths)
    with InstanceLock(layout.lock_file("consumer"), "annotation consumer"):
        return asyncio.run(StreamConsumer(settings, start, exit_when_idle, create_stream).run())
