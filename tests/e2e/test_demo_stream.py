"""The demo's stream goes through the real consumer handler with every routing outcome."""

from collections import Counter

from azaion_training.demo.pipeline import ingest_stream
from azaion_training.demo.stream import DEMO_CLASSES, StreamPlan, write_stream_dump
from azaion_training.layout import Layout
from azaion_training.queue.dumpfile import read_dump
from azaion_training.queue.messages import MessageRejected, decode
from azaion_training.queue.replay import replay_dump
from azaion_training.settings import load_settings


def test_stream_messages_decode_and_cover_classes_and_modes(tmp_path):
    dump = tmp_path / "stream.azqdump"
    summary = write_stream_dump(dump, StreamPlan(images=36, size=64, seed=3))
    records = read_dump(dump)
    assert len(records) == summary.messages == 36 + 2 + summary.malformed
    decoded, rejected = [], []
    for record in records:
        try:
            decoded.append(decode(record.data))
        except MessageRejected as exc:
            rejected.append(exc.reason)
    assert len(rejected) == summary.malformed == 3
    classes = Counter(d.cls for m in decoded if hasattr(m, "detections") for d in m.detections)
    assert {cls % 20 for cls in classes} <= set(DEMO_CLASSES)
    assert {cls // 20 * 20 for cls in classes} == {0, 20, 40}  # Norm, Wint and Night
    media = {m.original_media_name for m in decoded if hasattr(m, "original_media_name")}
    assert len(media) == summary.videos == 5


def test_replay_routes_the_stream(settings, layout, tmp_path):
    dump = tmp_path / "stream.azqdump"
    summary = write_stream_dump(dump, StreamPlan(images=40, size=64, seed=1))
    result = replay_dump(settings, dump)
    assert result.records == summary.messages
    assert sum(result.rejected.values()) == summary.malformed
    data = len(list(layout.data.images.iterdir()))
    seed = len(list(layout.seed.images.iterdir()))
    deleted = len(list(layout.deleted.images.iterdir()))
    assert deleted == summary.deleted
    assert seed == summary.by_operators - summary.validated
    assert data == summary.by_validators - summary.deleted + summary.validated


def test_broker_path_publishes_and_consumes(rabbit, root, tmp_path, monkeypatch):
    for name, value in rabbit.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RABBITMQ_QUEUE_NAME", f"demo-{tmp_path.name}")
    settings = load_settings()
    dump = tmp_path / "stream.azqdump"
    summary = write_stream_dump(dump, StreamPlan(images=24, size=64, seed=4))
    counts = ingest_stream(settings, dump, broker=True)
    assert counts["published"] == summary.messages
    assert counts["rejected"] == summary.malformed
    assert counts["committed_offset"] == summary.messages - 1
    layout = Layout(settings.paths)
    assert len(list(layout.deleted.images.iterdir())) == summary.deleted
    assert len(list(layout.data.images.iterdir())) == summary.by_validators - summary.deleted + summary.validated
