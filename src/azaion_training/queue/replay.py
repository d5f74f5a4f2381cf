"""`azaion queue replay`: apply a dump file through the consumer's handler, no broker needed."""

from dataclasses import dataclass
from pathlib import Path

from azaion_training.errors import OperationFailed
from azaion_training.layout import Layout
from azaion_training.locks import InstanceLock
from azaion_training.queue.dumpfile import iter_dump
from azaion_training.queue.handler import COMMIT_EVERY, LOCAL_FAILURES, AnnotationHandler, IngestCounts, MessageFailed
from azaion_training.queue.messages import Limits
from azaion_training.queue.progress import ProgressLog
from azaion_training.settings import Settings


@dataclass
class ReplayResult:
    records: int
    applied: int
    skipped: int
    rejected: dict[str, int]
    created: int
    edited: int
    validated: int
    deleted: int

    @classmethod
    def from_counts(cls, records: int, counts: IngestCounts) -> "ReplayResult":
        by = counts.by_status
        return cls(records, counts.applied, counts.skipped, dict(counts.rejected), by["Created"], by["Edited"],
                   by["Validated"], by["Deleted"])


def replay_dump(settings: Settings, path: Path) -> ReplayResult:
    """Apply a dump file through the same handler as the consumer. Idempotent: replaying a dump
    twice leaves the tree as after the first time. A message the handler fails on is tried
    again in place until the handler quarantines it (MessageFailed); a local failure stops the
    replay with what was applied before the last commit kept."""
    layout = Layout(settings.paths)
    limits = Limits(int(settings.rabbitmq.max_image_mb * 1024 * 1024))
    with InstanceLock(layout.lock_file("consumer"), "annotation consumer"):
        handler = AnnotationHandler(layout, limits, settings.rabbitmq.queue_name, record_offset=False)
        progress = ProgressLog(handler.counts, every_s=5.0, what="replay progress")
        records = 0
        try:
            for record in iter_dump(path):
                while True:
                    try:
                        handler.handle(record.offset, record.data, record.timestamp_ms)
                        break
                    except MessageFailed:
                        continue
                records += 1
                if handler.pending >= COMMIT_EVERY:
                    handler.commit()
                progress.maybe_log()
            handler.commit()
        except LOCAL_FAILURES as exc:
            raise OperationFailed(f"replay stopped at record {records} of {path}: {type(exc).__name__}: "
                                  f"{str(exc)[:200]} (fix it and replay again: applied records are skipped)") from None
        finally:
            handler.close()
    progress.maybe_log(force=True)
    return ReplayResult.from_counts(records, handler.counts)
