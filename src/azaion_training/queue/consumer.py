"""`azaion queue consume`: the long-running stream consumer.

One session = connect, wait for the stream, subscribe at the resume position, apply messages
as they arrive, until a signal, an idle timeout or a lost connection. rstream's callback only
queues each message for the `Applier`, a thread that applies them in order and group-commits
them, so the socket is read while earlier messages are decoded and written (both mostly wait on
the kernel, which releases the GIL). Lost connections, local failures and a message that
trips the handler end the session; the next one starts after a capped exponential backoff
from the last committed offset, so nothing is skipped (the handler quarantines a message at
its third failed attempt). Under systemd it speaks sd_notify, with a watchdog (`_watchdog`).
rstream's own recovery is off: it would resubscribe after the last *delivered*
chunk, not the last *applied* message.
"""

import asyncio
import contextlib
import logging
import queue
import signal
import threading
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
from azaion_training.ops.sd_notify import Notifier, watchdog_timeout_s
from azaion_training.queue.broker import stream_consumer
from azaion_training.queue.handler import (
    COMMIT_EVERY,
    LOCAL_FAILURES,
    MAX_ATTEMPTS,
    AnnotationHandler,
    IngestCounts,
    MessageFailed,
)
from azaion_training.queue.messages import Limits, capped
from azaion_training.queue.offsets import committed_offset
from azaion_training.queue.progress import ProgressLog
from azaion_training.settings import Settings

logger = get_logger("queue")
GROUP_WINDOW_S = 0.5  # the longest an applied message waits for its group commit
PUMP_INTERVAL_S = 0.2  # how often the committed offset is stored server-side and idleness checked
INBOX_DEPTH = 64  # messages delivered but not yet applied (bounds the memory they hold)
INBOX_FULL_WAIT_S = 0.005
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


class Applier:
    """Applies delivered messages in order in a thread of its own and group-commits them
    (`AnnotationHandler.commit`: files durable, then the index, then offset.yaml) every
    COMMIT_EVERY messages or GROUP_WINDOW_S; `on_commit(offset)` follows each commit."""

    def __init__(self, handler: AnnotationHandler, progress: ProgressLog, on_commit: Callable[[int], None]):
        self.handler = handler
        self.progress = progress
        self.on_commit = on_commit
        self.failure: str | None = None
        self.last_activity = time.monotonic()  # when a message was last offered or finished
        self.busy_since: float | None = None  # when the message or commit in hand was taken up
        self._stopping = False  # a plain flag: also set from a signal handler
        self._inbox: queue.Queue[tuple[int, bytes, int]] = queue.Queue(INBOX_DEPTH)
        self._thread = threading.Thread(target=self._run, name="azaion-applier", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return not self._stopping and self.failure is None

    def idle_for(self) -> float:
        """Seconds with nothing queued, nothing in hand and nothing offered; 0 while busy."""
        if self.busy_since is not None or not self._inbox.empty():
            return 0.0
        return time.monotonic() - self.last_activity

    def healthy(self, stuck_after_s: float) -> bool:
        """Alive and not stuck: no message or commit in hand for longer than `stuck_after_s`."""
        busy_since = self.busy_since
        return self._thread.is_alive() and (busy_since is None or time.monotonic() - busy_since <= stuck_after_s)

    def offer(self, offset: int, data: bytes, timestamp_ms: int) -> bool:
        """Queue a message; False when the inbox is full (offer it again a moment later)."""
        try:
            self._inbox.put_nowait((offset, data, timestamp_ms))
        except queue.Full:
            return False
        self.last_activity = time.monotonic()
        return True

    def request_stop(self) -> None:
        """The message being applied is the last one; queued ones stay uncommitted (delivered again)."""
        self._stopping = True

    def stop(self) -> None:
        """Stop after the current message and wait for the final commit."""
        self.request_stop()
        self._thread.join()

    def _run(self) -> None:
        try:
            self._apply_until_stopped()
        except Exception as exc:  # a bug: end the session (and reconnect) rather than hang it
            log(logger, logging.ERROR, "the applier failed", error=f"{type(exc).__name__}: {exc}"[:300])
            self.failure = f"applier failed: {type(exc).__name__}"
        self._commit()

    def _apply_until_stopped(self) -> None:
        commit_due: float | None = None  # when the open group must be committed
        while self.running:
            timeout = PUMP_INTERVAL_S if commit_due is None else max(0.0, commit_due - time.monotonic())
            try:
                offset, data, timestamp_ms = self._inbox.get(timeout=timeout)
            except queue.Empty:
                pass
            else:
                if not self.running:  # stopped while waiting: this message stays uncommitted
                    return
                self._apply(offset, data, timestamp_ms)
                commit_due = commit_due or time.monotonic() + GROUP_WINDOW_S
            if self.handler.pending >= COMMIT_EVERY or (commit_due and time.monotonic() >= commit_due):
                self._commit()
                commit_due = None
            self.progress.maybe_log()

    def _apply(self, offset: int, data: bytes, timestamp_ms: int) -> None:
        self.busy_since = time.monotonic()
        try:
            self.handler.handle(offset, data, timestamp_ms)
        except LOCAL_FAILURES as exc:  # this machine failed (disk, permissions, I/O): nothing is skipped
            log(logger, logging.ERROR, "could not apply a message (a local failure: disk, permissions or I/O); "
                "will retry from the last committed offset", offset=offset,
                error=capped(f"{type(exc).__name__}: {exc}"))
            self.failure = f"local failure at offset {offset}"
        except MessageFailed as exc:  # this message trips a fault: retried, quarantined at the last attempt
            log(logger, logging.WARNING, f"applying a message failed; will retry it from the last committed offset "
                f"(quarantined after {MAX_ATTEMPTS} attempts)", offset=offset, attempt=exc.attempt, error=exc.error)
            self.failure = f"message at offset {offset} failed (attempt {exc.attempt} of {MAX_ATTEMPTS})"
        finally:
            self.last_activity = time.monotonic()
            self.busy_since = None

    def _commit(self) -> None:
        """Commit the fully applied messages; after a failed commit, drop the group (its files
        converge when the messages are applied again)."""
        self.busy_since = time.monotonic()
        try:
            committed = self.handler.commit()
        except Exception as exc:
            self.handler.abandon()
            log(logger, logging.ERROR, "commit failed; will retry from the last committed offset",
                error=capped(f"{type(exc).__name__}: {exc}"))
            self.failure = self.failure or f"commit failed: {type(exc).__name__}"
            return
        finally:
            self.busy_since = None
        if committed is not None:
            self.on_commit(committed)


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
        self.stop_requested = False  # set from a signal handler
        self.stopped_by = "signal"
        self._applier: Applier | None = None  # the session's
        self._delivered: int | None = None  # messages at or below this offset are duplicates
        self._lost: str | None = None
        self._restored = False  # a restore marker is to go once the broker holds our offset
        self.notifier = Notifier.from_environment()
        # systemd's WatchdogSec=: pinged at half of it while healthy; a message (or a group
        # commit) in hand for longer than it counts as stuck, and the pings stop
        self.watchdog_s = watchdog_timeout_s() if self.notifier.enabled else None

    # ------------------------------------------------------------ top level

    async def run(self) -> ConsumeResult:
        self._install_signal_handlers()
        watchdog = asyncio.create_task(self._watchdog(self.watchdog_s)) if self.watchdog_s else None
        try:
            await self._sessions()
        finally:
            if watchdog is not None:
                watchdog.cancel()
        self.handler.close()
        self.progress.maybe_log(force=True)
        return ConsumeResult(self.handler.counts, self.committed, self.stopped_by)

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
        """WATCHDOG=1 every timeout_s / 2 while the event loop runs and the applier (when a session
        has one) is alive and not stuck; a blocked loop or a wedged applier stops the pings."""
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
        consumer = stream_consumer(self.rabbit, "azaion-consumer", recovery_strategy=BackOffRecoveryStrategy(False),
                                   on_close_handler=self._on_connection_closed)
        try:
            await asyncio.wait_for(consumer.start(), 15)
            if not await self._wait_for_stream(consumer):
                return
            offset_spec = await self._start_position(consumer)
            self._delivered = self.committed
            self._applier = Applier(self.handler, self.progress, self._on_commit)
            await consumer.subscribe(self.stream, self._on_message, offset_specification=offset_spec,
                                     subscriber_name=self.rabbit.consumer_name, initial_credit=8)
            self.notifier.ready()
            log(logger, logging.INFO, "consuming", stream=self.stream, host=self.rabbit.host,
                port=self.rabbit.port, start=offset_spec.offset_type.name, offset=offset_spec.offset)
            await self._pump(consumer, self._applier)
        finally:
            if self._applier is not None:
                self._applier.stop()  # finishes the current message and commits
                self._applier = None
            await self._store_offset(consumer, final=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.close(), CLOSE_TIMEOUT_S)

    async def _pump(self, consumer: Consumer, applier: Applier) -> None:
        """Store the committed offset server-side on a timer until stopped, idle or disconnected."""
        while not self.stop_requested:
            await asyncio.sleep(PUMP_INTERVAL_S)
            await self._store_offset(consumer)
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
        """rstream's delivery callback: queue the message for the applier. While its inbox is full
        this waits, and rstream grants the broker no new credit meanwhile: memory stays bounded."""
        applier = self._applier
        if applier is None or (self._delivered is not None and context.offset <= self._delivered):
            return
        while applier.running and not self._lost:
            if applier.offer(context.offset, data, context.timestamp):
                self._delivered = context.offset
                return
            await asyncio.sleep(INBOX_FULL_WAIT_S)

    def _on_commit(self, offset: int) -> None:  # called by the applier thread
        self.committed = offset

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
