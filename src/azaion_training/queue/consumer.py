"""`azaion queue consume`: the long-running stream consumer.

One session = fork the apply worker, connect, wait for the stream, subscribe at the resume
position, apply messages as they arrive, until a signal, an idle timeout or a lost connection.
rstream's callback only passes each message to the `ApplyWorker` (worker.py), a child process
that applies them in order and group-commits them, so the socket is read in this process while
earlier messages are decoded and written in the other (no shared GIL). Lost connections, local
failures and a message that trips the handler end the session; the next one starts after a
capped exponential backoff from the last committed offset, so nothing is skipped (the handler
quarantines a message at its third failed attempt). Under systemd it speaks sd_notify, with a
watchdog (`_watchdog`). rstream's own recovery is off: it would resubscribe after the last
*delivered* chunk, not the last *applied* message.
"""

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from rstream import Consumer, ConsumerOffsetSpecification, MessageContext, OffsetType
from rstream import exceptions as rstream_errors
from rstream.recovery import BackOffRecoveryStrategy

from azaion_training.errors import ConfigError, InputError
from azaion_training.fsutil import fsync_dir
from azaion_training.layout import Layout
from azaion_training.locks import InstanceLock
from azaion_training.logs import get_logger, log
from azaion_training.queue.broker import stream_consumer
from azaion_training.queue.handler import AnnotationHandler, IngestCounts
from azaion_training.queue.messages import Limits
from azaion_training.queue.offsets import committed_offset
from azaion_training.queue.progress import ProgressLog
from azaion_training.queue.worker import ApplyWorker
from azaion_training.sd_notify import Notifier, watchdog_timeout_s
from azaion_training.settings import Settings

logger = get_logger("queue")
PUMP_INTERVAL_S = 0.2  # how often the committed offset is stored server-side and idleness checked
STREAM_POLL_S = 2.0
CLOSE_TIMEOUT_S = 2.0
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
                 create_stream: bool = False, on_commit: Callable[[int], None] | None = None):
        self.settings = settings
        self.rabbit = settings.rabbitmq
        self.stream = self.rabbit.queue_name
        self.start = start
        self.exit_when_idle = exit_when_idle
        self.create_stream = create_stream
        self.layout = Layout(settings.paths)
        self.limits = Limits(int(self.rabbit.max_image_mb * 1024 * 1024))
        self.make_handler().close()  # the tree and the index open (or their errors surface) before any session
        self.counts = IngestCounts()  # of the sessions that ended
        self.progress = ProgressLog(IngestCounts())
        self.on_commit = on_commit  # an observer (benchmarks, tests)
        self.committed: int | None = None  # last offset committed by this process
        self.stored: int | None = None  # last offset stored server-side
        self.stop_requested = False  # set from a signal handler
        self.stopped_by = "signal"
        self._failing: tuple[int, int] = (-1, 0)  # the handler's attempts at a failing message, across sessions
        self._applier: ApplyWorker | None = None  # the session's
        self._delivered: int | None = None  # messages at or below this offset are duplicates
        self._lost: str | None = None
        self._restored = False  # a restore marker is to go once the broker holds our offset
        self.notifier = Notifier.from_environment()
        # systemd's WatchdogSec=: pinged at half of it while healthy; a message (or a group
        # commit) in hand for longer than it counts as stuck, and the pings stop
        self.watchdog_s = watchdog_timeout_s() if self.notifier.enabled else None

    # ------------------------------------------------------------ top level

    def make_handler(self) -> AnnotationHandler:
        """The handler the apply worker runs (built in the worker process)."""
        return AnnotationHandler(self.layout, self.limits, self.stream)

    async def run(self) -> ConsumeResult:
        self._install_signal_handlers()
        watchdog = asyncio.create_task(self._watchdog(self.watchdog_s)) if self.watchdog_s else None
        try:
            await self._sessions()
        finally:
            if watchdog is not None:
                watchdog.cancel()
        self.progress.counts = self.counts
        self.progress.maybe_log(force=True)
        return ConsumeResult(self.counts, self.committed, self.stopped_by)

    async def _sessions(self) -> None:
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
                log(logger, logging.WARNING, "session ended (connection lost, broker unavailable or a failure "
                    "applying); reconnecting",
                    attempt=attempt, retry_in_s=delay, error=f"{type(exc).__name__}: {exc}"[:300],
                    host=self.rabbit.host, port=self.rabbit.port, resume_after=self.committed)
                await self._sleep(delay)

    async def _watchdog(self, timeout_s: float) -> None:
        """WATCHDOG=1 every timeout_s / 2 while the event loop runs and the apply worker (when a
        session has one) is alive and not stuck; a blocked loop or a wedged worker stops the pings."""
        while True:
            applier = self._applier
            if applier is None or applier.healthy(timeout_s):
                self.notifier.watchdog()
            await asyncio.sleep(timeout_s / 2)

    def _install_signal_handlers(self) -> None:
        def request_stop(signum, _frame) -> None:
            self.stop_requested = True
            self.notifier.stopping()
            if self._applier is not None:
                self._applier.request_stop()  # the message being applied is the last one
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
        # forked first: the worker inherits no connection (it does inherit the instance lock)
        applier = self._applier = ApplyWorker(self.make_handler, self._on_commit, self._failing).start()
        if self.stop_requested:  # a signal came before the worker existed
            applier.request_stop()
        consumer = stream_consumer(self.rabbit, "azaion-consumer", recovery_strategy=BackOffRecoveryStrategy(False),
                                   on_close_handler=self._on_connection_closed)
        try:
            await asyncio.wait_for(consumer.start(), 15)
            if not await self._wait_for_stream(consumer):
                return
            offset_spec = await self._start_position(consumer)
            self._delivered = self.committed
            await consumer.subscribe(self.stream, self._on_message, offset_specification=offset_spec,
                                     subscriber_name=self.rabbit.consumer_name, initial_credit=8)
            self.notifier.ready()
            log(logger, logging.INFO, "consuming", stream=self.stream, host=self.rabbit.host,
                port=self.rabbit.port, start=offset_spec.offset_type.name, offset=offset_spec.offset)
            await self._pump(consumer, applier)
        finally:
            await applier.stop()  # finishes the message in hand and commits
            self._applier = None
            self._failing = applier.failing
            self.counts.add(applier.counts)
            self.progress.counts = self.counts
            await self._store_offset(consumer, final=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.close(), CLOSE_TIMEOUT_S)

    async def _pump(self, consumer: Consumer, applier: ApplyWorker) -> None:
        """Store the committed offset server-side on a timer until stopped, idle or disconnected."""
        while not self.stop_requested:
            await asyncio.sleep(PUMP_INTERVAL_S)
            await self._store_offset(consumer)
            self.progress.maybe_log()
            if self._lost or applier.failure:
                raise SessionEnded(self._lost or applier.failure)
            if self.exit_when_idle is not None and applier.idle_for() >= self.exit_when_idle:
                log(logger, logging.INFO, "nothing delivered and nothing pending; exiting", idle_s=self.exit_when_idle)
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
        # Restored from a backup (ops/backup.py): the broker's offset may be past what the restored tree
        # holds, so resume after the local one and overwrite the broker's; the marker goes once that is done.
        self._restored = self.layout.restore_marker.exists()
        known = [value for value in (local, None if self._restored else server) if value is not None]
        log(logger, logging.INFO, "resume position", offset_file=local, server=server, restored=self._restored)
        if not known:
            return ConsumerOffsetSpecification(OffsetType.FIRST, None)
        self.committed = max(known)
        self.stored = None if self._restored else self.committed
        return ConsumerOffsetSpecification(OffsetType.OFFSET, self.committed + 1)

    async def _server_offset(self, consumer: Consumer) -> int | None:
        try:
            return await consumer.query_offset(self.stream, self.rabbit.consumer_name)
        except rstream_errors.OffsetNotFound:
            return None

    # ------------------------------------------------------------ messages and commits

    async def _on_message(self, data: bytes, context: MessageContext) -> None:
        """rstream's delivery callback: pass the message to the apply worker. While its pipe is
        full this waits, and rstream grants the broker no new credit meanwhile: memory stays bounded."""
        applier = self._applier
        if applier is None or (self._delivered is not None and context.offset <= self._delivered):
            return
        if await applier.send(context.offset, data, context.timestamp, lambda: not self._lost):
            self._delivered = context.offset

    def _on_commit(self, offset: int) -> None:  # the worker reported a commit
        self.committed = offset
        applier = self._applier
        if applier is not None:
            live = IngestCounts()
            live.add(self.counts)
            live.add(applier.counts)
            self.progress.counts = live
        if self.on_commit is not None:
            self.on_commit(offset)

    async def _store_offset(self, consumer: Consumer, final: bool = False) -> None:
        """Store the last durable offset server-side (never one whose effects are not durable)."""
        committed = self.committed
        if committed is not None and committed != self.stored and not self._lost:
            try:
                await asyncio.wait_for(consumer.store_offset(self.stream, self.rabbit.consumer_name, committed),
                                       1.0 if final else 5.0)
                self.stored = committed
                if self._restored:
                    self._restored = False
                    self.layout.restore_marker.unlink(missing_ok=True)
                    fsync_dir(self.layout.restore_marker.parent)
                    log(logger, logging.INFO, "the broker's stored offset now follows the restored tree",
                        offset=committed)
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
