"""The consumer's apply worker: a child process that applies the delivered messages in order and
group-commits them (docs/wire-format.md, Offsets). The stream is read in the consumer's process
while the messages are decoded, checked and written in this one: two interpreters, no shared GIL.

One worker per session of `StreamConsumer` (consumer.py), forked before the session connects.

- Consumer -> worker: the entries, in stream order, in a shared ring of RING_BYTES (copied in
  once, copied out once: no pipe buffers to allocate per message), each announced on a pipe by
  a header `offset:int64 timestamp_ms:int64 length:uint32 inline:uint8`; an entry too large for
  the ring follows its header on the pipe. The consumer closes the pipe to end the session.
  The worker acknowledges the ring bytes it has copied out on a pipe of its own (the system
  calls on both pipes order the ring's reads and writes between the two processes). A full ring
  makes the delivery callback wait, and rstream grants the broker no new credit meanwhile.
  The ring lets either process run ahead of the other by about a hundred annotations, so on a
  busy machine neither waits for the other to be scheduled.
- Worker -> consumer: a pipe of JSON lines: each commit (offset, counts so far), a failure, and a
  last line when it exits.
- Shared memory, four doubles: since when the message or commit in hand is in hand (0: none),
  when the worker last did anything, how many entries it has taken, and the stop flag.

Group commit, in this order: a group (COMMIT_EVERY messages or GROUP_WINDOW_S) is sealed; a
thread of the worker makes its files durable with one syncfs while the next group is applied;
then its index rows are written (one SQLite transaction; until then they live in the handler's
memory, where every lookup sees them), then offset.yaml, then the consumer hears of the offset.
One group is made durable at a time. Without syncfs (an fsync per file, which a later rename of
the file could dodge) each group is made durable before the next one is applied.

The worker dies with the consumer: PR_SET_PDEATHSIG has the kernel send it SIGKILL when the
consumer dies, even by SIGKILL (where prctl is missing, end of file on its pipe ends it). It
also holds the consumer's instance lock (an inherited descriptor): no new consumer starts on the
root while it lives. SIGTERM/SIGINT (systemd and a terminal signal the whole group) stop it after
the message in hand, as the stop flag does; the messages still queued are delivered again.
"""

import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import mmap
import os
import queue
import select
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.sharedctypes import RawArray

from azaion_training.fsutil import has_syncfs
from azaion_training.logs import get_logger, log
from azaion_training.queue.handler import (
    COMMIT_EVERY,
    LOCAL_FAILURES,
    MAX_ATTEMPTS,
    AnnotationHandler,
    Group,
    IngestCounts,
    MessageFailed,
)
from azaion_training.queue.messages import capped

logger = get_logger("queue")
GROUP_WINDOW_S = 0.5  # the longest an applied message waits for its group to be sealed
POLL_S = 0.2  # the worker looks at its stop flag at least this often; the consumer at its own flags
RING_BYTES = 32 << 20  # entries the worker has not taken yet (about 110 of 280 KB)
INLINE_OVER = RING_BYTES // 4  # a larger entry goes through the pipe (the ring would hold only it)
ACK_EVERY = RING_BYTES // 8  # the worker acknowledges ring bytes in steps of this (or when it waits)
HEADER = struct.Struct(">qqIB")  # offset, broker timestamp in ms, length of the entry, inline
ACK = struct.Struct(">Q")  # ring bytes copied out so far
BUSY, ACTIVITY, TAKEN, STOP = range(4)  # the shared doubles
_PR_SET_PDEATHSIG = 1
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
HEAP_KEEP_BYTES = 64 << 20  # the worker's malloc keeps freed memory up to this for the next entries
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


class ApplyWorker:
    """The consumer's side of one worker process. `start()` forks it (from the event loop's
    thread); `on_commit(offset)` follows each commit it reports."""

    def __init__(self, make_handler: Callable[[], AnnotationHandler], on_commit: Callable[[int], None],
                 failing: tuple[int, int] = (-1, 0)):
        self.make_handler = make_handler
        self.on_commit = on_commit
        self.failing = failing  # the handler's attempts at a failing message: carried from worker to worker
        self.failure: str | None = None
        self.committed: int | None = None
        self.counts = IngestCounts()  # as of the last report
        self.pid: int | None = None
        self.exit_code: int | None = None
        self.sent = 0  # entries announced whole
        self._offered_at = time.monotonic()
        self._shared = RawArray("d", 4)
        self._ring = mmap.mmap(-1, RING_BYTES)  # shared with the worker (anonymous, MAP_SHARED)
        self._written = 0  # ring bytes written so far
        self._acked = 0  # ring bytes the worker has copied out so far
        self._stopping = False  # a plain flag: also set from a signal handler
        self._frames: int | None = None  # the write end of the header pipe
        self._acks: int | None = None  # the read end of the acknowledgement pipe
        self._reports: int | None = None  # the read end of the report pipe
        self._partial = b""
        self._final = False
        self._ended = asyncio.Event()

    # ------------------------------------------------------------ the consumer's side

    def start(self) -> "ApplyWorker":
        loop = asyncio.get_running_loop()
        frames_in, frames_out = os.pipe()
        acks_in, acks_out = os.pipe()
        reports_in, reports_out = os.pipe()
        self._shared[ACTIVITY] = time.monotonic()
        parent = os.getpid()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()  # or the child would write the parent's buffered output again
        # Frozen until stop(): the child's collector never walks (and copies) what it inherits, and
        # the consumer's walks only what the session allocates (in a CLI process that was a few % of
        # its CPU per message, the modules and settings walked again and again).
        gc.freeze()
        try:
            pid = os.fork()
        except BaseException:
            gc.unfreeze()
            raise
        if pid == 0:  # the worker: never returns
            code = 70
            try:
                for fd in (frames_out, acks_in, reports_in):
                    os.close(fd)
                code = _worker_main(self.make_handler, self.failing, _Channel(frames_in, acks_out, self._ring),
                                    reports_out, self._shared, parent)
            except BaseException as exc:  # noqa: BLE001 - whatever happens, the child must not return
                with contextlib.suppress(Exception):
                    log(logger, logging.ERROR, "the apply worker failed to start",
                        error=f"{type(exc).__name__}: {exc}"[:300])
            finally:
                os._exit(code)
        self.pid = pid
        for fd in (frames_in, acks_out, reports_out):
            os.close(fd)
        for fd in (frames_out, acks_in, reports_in):
            os.set_blocking(fd, False)
        self._frames, self._acks, self._reports = frames_out, acks_in, reports_in
        loop.add_reader(reports_in, self._read_reports)
        return self

    @property
    def running(self) -> bool:
        return not self._stopping and self.failure is None and self._frames is not None

    def request_stop(self) -> None:
        """The message in hand is the worker's last; queued ones stay uncommitted (delivered again).
        Safe in a signal handler."""
        self._stopping = True
        self._shared[STOP] = 1.0

    async def send(self, offset: int, data: bytes, timestamp_ms: int, keep_going: Callable[[], bool]) -> bool:
        """Queue one entry for the worker; waits while the ring (or the pipe) is full. False when
        it was not queued: the worker stopped, failed or is gone, or `keep_going()` turned false."""
        size = len(data)
        inline = size > INLINE_OVER
        if not inline:
            while self.running and keep_going() and RING_BYTES - (self._written - self._acked) < size:
                await self._wait_for(self._acks)  # then read the acknowledgements
                if self._acks is not None:
                    self._read_acks()
            if not (self.running and keep_going()):
                return False
            self._put_in_ring(memoryview(data))
        views = [memoryview(HEADER.pack(offset, timestamp_ms, size, inline))]
        if inline:
            views.append(memoryview(data))
        remaining = sum(len(view) for view in views)
        whole = remaining
        while self.running and keep_going():
            try:
                written = os.writev(self._frames, views)
            except BlockingIOError:
                await self._wait_for(self._frames, write=True)
                continue
            except OSError as exc:  # EPIPE: the worker is gone
                self.failure = self.failure or f"the apply worker is gone ({type(exc).__name__})"
                return False
            remaining -= written
            if not remaining:
                self.sent += 1
                self._offered_at = time.monotonic()
                return True
            while written:  # a part went in: the rest follows in the next write
                if written >= len(views[0]):
                    written -= len(views.pop(0))
                else:
                    views[0], written = views[0][written:], 0
        if remaining < whole or not inline:
            self._close_frames()  # half a header is in the pipe, or bytes in the ring no header announced
        return False

    async def stop(self) -> None:
        """Stop after the message in hand, and wait for the final commit and the worker's exit."""
        self.request_stop()
        self._close_frames()
        if self.pid is None:
            return
        await self._ended.wait()
        self._reap(block=True)
        self._ring.close()
        gc.unfreeze()

    def idle_for(self) -> float:
        """Seconds with nothing queued, nothing in hand and nothing sent; 0 while busy."""
        if self._shared[BUSY] or self._shared[TAKEN] < self.sent:
            return 0.0
        return time.monotonic() - max(self._shared[ACTIVITY], self._offered_at)

    def healthy(self, stuck_after_s: float) -> bool:
        """Alive and not stuck: no message or commit in hand for longer than `stuck_after_s`."""
        busy_since = self._shared[BUSY]
        return (not self._ended.is_set() and self.exit_code is None
                and (not busy_since or time.monotonic() - busy_since <= stuck_after_s))

    def _put_in_ring(self, data: memoryview) -> None:
        start = self._written % RING_BYTES
        first = min(len(data), RING_BYTES - start)
        self._ring[start:start + first] = data[:first]
        if first < len(data):  # wraps around
            self._ring[:len(data) - first] = data[first:]
        self._written += len(data)

    def _read_acks(self) -> None:
        try:
            acks = os.read(self._acks, 1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            acks = b""
        if not acks:  # the worker is gone: its reports say why
            self.failure = self.failure or "the apply worker is gone"
            return
        if len(acks) >= ACK.size:  # acknowledgements are totals: the last one says it all
            last = len(acks) - len(acks) % ACK.size
            self._acked = max(self._acked, ACK.unpack(acks[last - ACK.size:last])[0])

    async def _wait_for(self, fd: int, write: bool = False) -> None:
        """Until `fd` is readable (writable), or POLL_S (then the caller looks at its flags again)."""
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        (loop.add_writer if write else loop.add_reader)(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await asyncio.wait_for(ready, POLL_S)
        except TimeoutError:
            pass
        finally:
            (loop.remove_writer if write else loop.remove_reader)(fd)

    def _close_frames(self) -> None:
        if self._frames is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_writer(self._frames)
            os.close(self._frames)
            self._frames = None
        if self._acks is not None:
            os.close(self._acks)
            self._acks = None

    def _read_reports(self) -> None:
        try:
            chunk = os.read(self._reports, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            asyncio.get_running_loop().remove_reader(self._reports)
            os.close(self._reports)
            self._reports = None
            if not self._final:
                self._reap(block=False)
                status = f" (exit status {self.exit_code})" if self.exit_code is not None else ""
                self.failure = self.failure or f"the apply worker ended unexpectedly{status}"
            self._ended.set()
            return
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            self._on_report(json.loads(line))

    def _on_report(self, report: dict) -> None:
        if "counts" in report:
            self.counts = IngestCounts.from_dict(report["counts"])
        if "failing" in report:
            self.failing = tuple(report["failing"])
        if report.get("failure"):
            self.failure = self.failure or report["failure"]
        committed = report.get("committed")
        if committed is not None and committed != self.committed:
            self.committed = committed
            self.on_commit(committed)
        self._final = self._final or bool(report.get("final"))

    def _reap(self, block: bool) -> None:
        if self.pid is None or self.exit_code is not None:
            return
        try:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            self.exit_code = -1
            return
        if pid:
            self.exit_code = os.waitstatus_to_exitcode(status)


# ---------------------------------------------------------------- the worker process


class _Channel:
    """The worker's end of the entries: headers (and inline entries) from the pipe, the rest
    copied out of the ring, acknowledged in steps."""

    def __init__(self, frames: int, acks: int, ring: mmap.mmap):
        self.frames = frames
        self.acks = acks
        self.ring = ring
        self.taken = 0  # ring bytes copied out
        self.acked = 0

    def read(self) -> tuple[int, bytes, int] | None:
        """The next entry (offset, bytes, timestamp_ms); None at the pipe's end (or in the middle of an entry)."""
        header = self._read_exactly(HEADER.size)
        if header is None:
            return None
        offset, timestamp_ms, size, inline = HEADER.unpack(header)
        if inline:
            data = self._read_exactly(size)
            return None if data is None else (offset, data, timestamp_ms)
        start = self.taken % RING_BYTES
        end = start + size
        data = self.ring[start:end] if end <= RING_BYTES else self.ring[start:] + self.ring[:end - RING_BYTES]
        self.taken += size
        if self.taken - self.acked >= ACK_EVERY:
            self.acknowledge()
        return offset, data, timestamp_ms

    def acknowledge(self) -> None:
        """Tell the consumer how much of the ring is free again (before waiting for more)."""
        if self.taken != self.acked:
            with contextlib.suppress(OSError):  # the consumer is gone
                os.write(self.acks, ACK.pack(self.taken))
            self.acked = self.taken

    def _read_exactly(self, size: int) -> bytes | None:
        """`size` bytes from the pipe (blocking); None at its end."""
        chunk = os.read(self.frames, size) if size else b""
        if len(chunk) == size:
            return chunk
        parts, got = [chunk], len(chunk)
        while chunk and got < size:
            chunk = os.read(self.frames, size - got)
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts) if got == size else None


def _worker_main(make_handler: Callable[[], AnnotationHandler], failing: tuple[int, int], channel: _Channel,
                 reports: int, shared, parent: int) -> int:
    _die_with(parent)
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)  # the consumer's event loop owns that one
    _keep_heap()
    worker = _Worker(channel, reports, shared)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, worker.on_signal)
    try:
        handler = make_handler()
    except Exception as exc:  # the tree or the index cannot be opened: a local failure, retried
        worker.failure = f"could not open the data tree: {type(exc).__name__}"
        log(logger, logging.ERROR, "the apply worker could not open the data tree; will retry",
            error=capped(f"{type(exc).__name__}: {exc}"))
        worker.report(final=True, failure=worker.failure, failing=list(failing))
        return 1
    handler.failing = failing
    return worker.run(handler)


def _die_with(parent: int) -> None:
    """Have the kernel SIGKILL this process when the consumer dies (Linux), and stop at once
    when it already has."""
    if _LIBC is not None:
        with contextlib.suppress(AttributeError, OSError):
            _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(0)


def _keep_heap() -> None:
    """glibc's malloc returns freed blocks of a few hundred KB to the system at once, and every
    entry then costs fresh pages (page faults, zeroing; costly in a VM). Keep them instead."""
    if _LIBC is not None and hasattr(_LIBC, "mallopt"):
        _LIBC.mallopt(_M_MMAP_THRESHOLD, HEAP_KEEP_BYTES)
        _LIBC.mallopt(_M_TRIM_THRESHOLD, HEAP_KEEP_BYTES)


class _Worker:
    """The worker's loop: frames in, messages applied in order, groups sealed, made durable
    (in `_sync_thread`, overlapping the next group), recorded, reported."""

    def __init__(self, channel: _Channel, reports: int, shared):
        self.channel = channel
        self.frames = channel.frames
        self.reports = reports
        self.shared = shared
        self.failure: str | None = None
        self.handler: AnnotationHandler | None = None
        self.committed: int | None = None
        self._stopping = False
        self._overlap = has_syncfs()
        self._to_sync: queue.SimpleQueue[Group | None] = queue.SimpleQueue()
        self._syncing: Group | None = None  # handed to the sync thread, not recorded yet
        self._synced = threading.Event()
        self._sync_error: BaseException | None = None
        self._wake_in, self._wake_out = os.pipe()  # the sync thread wakes the loop when a group is durable
        self._poll = select.poll()
        self._poll.register(self.frames, select.POLLIN)
        self._poll.register(self._wake_in, select.POLLIN)

    def on_signal(self, _signum, _frame) -> None:
        self._stopping = True

    def stop_requested(self) -> bool:
        return self._stopping or bool(self.shared[STOP])

    def report(self, **fields) -> None:
        with contextlib.suppress(OSError):  # the consumer is gone: nobody to tell
            os.write(self.reports, (json.dumps(fields) + "\n").encode())

    def run(self, handler: AnnotationHandler) -> int:
        self.handler = handler
        sync_thread = threading.Thread(target=self._sync_thread, name="azaion-sync", daemon=True)
        sync_thread.start()
        try:
            self._apply_until_stopped()
        except Exception as exc:  # a bug: end the session (and reconnect) rather than hang it
            log(logger, logging.ERROR, "the applier failed", error=f"{type(exc).__name__}: {exc}"[:300])
            self.failure = self.failure or f"applier failed: {type(exc).__name__}"
        self._commit_all()
        self._to_sync.put(None)
        sync_thread.join()
        self.report(final=True, committed=self.committed, counts=handler.counts.as_dict(),
                    failing=list(handler.failing), failure=self.failure)
        handler.close()
        return 0

    def _apply_until_stopped(self) -> None:
        seal_due: float | None = None  # when the open group must be sealed
        while self.failure is None and not self.stop_requested():
            self._record_if_durable()
            timeout = POLL_S if seal_due is None else min(POLL_S, max(0.0, seal_due - time.monotonic()))
            events = dict(self._poll.poll(0))
            if not events:  # caught up: free the ring before waiting
                self.channel.acknowledge()
                events = dict(self._poll.poll(timeout * 1000))
            if self._wake_in in events:
                os.read(self._wake_in, 64)
            if self.frames in events:
                frame = self._read_frame()
                if frame is None or self.stop_requested():  # end of the session (or of the consumer)
                    return
                self._apply(*frame)
                seal_due = seal_due or time.monotonic() + GROUP_WINDOW_S
            if self.handler.pending >= COMMIT_EVERY or (seal_due and time.monotonic() >= seal_due):
                self._seal()
                seal_due = None

    def _read_frame(self) -> tuple[int, bytes, int] | None:
        entry = self.channel.read()
        if entry is not None:
            self.shared[TAKEN] += 1
            self.shared[ACTIVITY] = time.monotonic()
        return entry

    def _apply(self, offset: int, data: bytes, timestamp_ms: int) -> None:
        self.shared[BUSY] = time.monotonic()
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
            self.shared[ACTIVITY] = time.monotonic()
            self.shared[BUSY] = 0.0
        if self.failure is not None:
            self.report(failure=self.failure, failing=list(self.handler.failing))

    # ------------------------------------------------------------ group commit

    def _seal(self) -> None:
        """Seal the open group and have its files made durable: in the sync thread while the next
        group is applied (after the previous one is recorded), or here without syncfs."""
        self._wait_until_durable()
        group = self.handler.seal()
        if group is None:
            return
        if self._overlap:
            self._syncing = group
            self._to_sync.put(group)
            return
        self.shared[BUSY] = time.monotonic()
        try:
            self.handler.make_durable(group)
        except Exception as exc:
            self._commit_failed(exc)
            return
        finally:
            self.shared[BUSY] = 0.0
        self._record(group)

    def _sync_thread(self) -> None:
        while (group := self._to_sync.get()) is not None:
            try:
                self.handler.make_durable(group)
            except BaseException as exc:  # noqa: BLE001 - the loop reports it
                self._sync_error = exc
            self._synced.set()
            with contextlib.suppress(OSError):
                os.write(self._wake_out, b"\0")

    def _record_if_durable(self) -> None:
        if self._syncing is None or not self._synced.is_set():
            return
        group, self._syncing = self._syncing, None
        self._synced.clear()
        error, self._sync_error = self._sync_error, None
        if error is not None:
            self._commit_failed(error)
        else:
            self._record(group)

    def _wait_until_durable(self) -> None:
        """Wait for the group in the sync thread (counted as in hand: a hung disk stops the
        watchdog's pings) and record it."""
        if self._syncing is None:
            return
        self.shared[BUSY] = time.monotonic()
        try:
            self._synced.wait()
        finally:
            self.shared[BUSY] = 0.0
        self._record_if_durable()

    def _record(self, group: Group) -> None:
        """The group's files are durable: its index rows, then its offset, then tell the consumer."""
        self.shared[BUSY] = time.monotonic()
        try:
            committed = self.handler.record(group)
        except Exception as exc:
            self._commit_failed(exc)
            return
        finally:
            self.shared[BUSY] = 0.0
        self.committed = committed
        self.report(committed=committed, counts=self.handler.counts.as_dict())

    def _commit_failed(self, exc: BaseException) -> None:
        """Drop the failed group and the open one (applied on top of it): their files converge
        when the messages are applied again from the last committed offset."""
        self.handler.abandon()
        log(logger, logging.ERROR, "commit failed; will retry from the last committed offset",
            error=capped(f"{type(exc).__name__}: {exc}"))
        self.failure = self.failure or f"commit failed: {type(exc).__name__}"
        self.report(failure=self.failure)

    def _commit_all(self) -> None:
        """At the end: commit every message applied (the group being made durable, then the open one)."""
        self._wait_until_durable()
        self._seal()
        self._wait_until_durable()
