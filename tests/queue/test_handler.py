"""Routing, the sidecar index, quarantine and replay idempotence (no broker: dump replays)."""

import json

import msgpack

from azaion_training.annotation_index import AnnotationIndex, read_source_media
from azaion_training.queue.dumpfile import DumpRecord, read_dump, write_dump
from azaion_training.queue.handler import AnnotationHandler
from azaion_training.queue.messages import AnnotationStatus, Limits, Role, amqp_bytes
from azaion_training.queue.replay import replay_dump
from tests.conftest import run_azaion
from tests.queue.conftest import bulk, cli_summary, created, dump_of, jpeg, scenario, snapshot, temp_files


def test_routing_rules(tmp_path, settings, layout, root):
    result = replay_dump(settings, dump_of(tmp_path / "s.dump", scenario()))
    data, seed, deleted = layout.data, layout.seed, layout.deleted
    assert sorted(p.name for p in data.images.iterdir()) == ["api1.jpg", "o1.jpg", "o2.jpg", "v1.jpg", "v2.jpg"]
    assert sorted(p.name for p in data.labels.iterdir()) == ["api1.txt", "o1.txt", "o2.txt", "v1.txt", "v2.txt"]
    assert list(seed.images.iterdir()) == [] and list(seed.labels.iterdir()) == []
    assert sorted(p.name for p in deleted.images.iterdir()) == ["a1.jpg", "o3.jpg"]
    assert deleted.label_path("o3").read_text() == ""  # the operator's edit emptied it before deletion
    assert data.label_path("o2").read_text() == "3 0.250000 0.250000 0.100000 0.100000\n" \
                                                 "4 0.700000 0.700000 0.200000 0.300000\n"
    assert data.image_path("o2", ".jpg").read_bytes() == jpeg(__import__("zlib").crc32(b"o2") % 1000)
    assert data.image_path("v2", ".jpg").read_bytes() == jpeg(7)
    assert (result.created, result.edited, result.validated, result.deleted) == (6, 3, 1, 1)
    assert result.rejected == {} and result.records == 11

    index = AnnotationIndex(layout.index_db, readonly=True)
    rows = {entry.name: entry for entry in index.entries()}
    index.close()
    assert {name: row.area for name, row in rows.items()} == {
        "v1": "data", "o1": "data", "o2": "data", "o3": "deleted", "a1": "deleted", "api1": "data", "v2": "data"}
    assert rows["o2"].role == Role.Validator and rows["o2"].source == 1 and rows["o2"].stream_offset == 7
    assert rows["a1"].stream_offset == 9 and rows["a1"].source_media == "video-2.mp4"
    assert rows["v1"].created_date.startswith("2025-01-01")
    assert read_source_media(layout.index_db)["api1"] == "video-2.mp4"
    assert not (root / "queue-state" / "offset.yaml").exists()  # a dump's offsets are not the stream's
    assert temp_files(root) == []


def test_validated_already_in_data_and_deleted_absent_are_no_ops(tmp_path, settings, layout):
    replay_dump(settings, dump_of(tmp_path / "a.dump", [created("v1")]))
    before = snapshot(layout.root)
    result = replay_dump(settings, dump_of(tmp_path / "b.dump", [
        bulk(AnnotationStatus.Validated, "v1"), bulk(AnnotationStatus.Deleted, "nobody")], first_offset=10))
    assert snapshot(layout.root) == before
    assert result.applied == 1 and result.skipped == 1  # v1 present in data (recorded), 'nobody' absent


def test_edited_without_image_and_none_stored_is_quarantined(tmp_path, settings, layout):
    result = replay_dump(settings, dump_of(tmp_path / "a.dump", [
        created("ghost", status=AnnotationStatus.Edited, image=None)]))
    assert result.rejected == {"missing-image": 1}
    assert list(layout.data.labels.iterdir()) == []


def test_bad_input_is_quarantined_never_reaches_data(tmp_path, settings, layout, root):
    body = msgpack.packb(["not", "an", "annotation"])
    entries = [
        b"\xc1garbage",
        amqp_bytes(AnnotationStatus.Created, body),
        created("../escape"),
        created("ok1", image=b"\xff\xd8\xffnot really"),
        created("ok2", boxes=((1, 0.5, 1.5, 0.1, 0.1),)),
        created("ok3", boxes=((99, 0.5, 0.5, 0.1, 0.1),)),
        created("fine"),
    ]
    result = replay_dump(settings, dump_of(tmp_path / "bad.dump", entries, first_offset=100))
    assert result.applied == 1 and sum(result.rejected.values()) == 6
    assert sorted(p.name for p in layout.data.images.iterdir()) == ["fine.jpg"]
    for offset, data in zip(range(100, 106), entries, strict=False):
        assert (layout.rejected / f"{offset}.bin").read_bytes() == data
        record = json.loads((layout.rejected / f"{offset}.json").read_text())
        assert record["offset"] == offset and record["reason"] and record["detail"]
    assert json.loads((layout.rejected / "102.json").read_text())["reason"] == "unsafe-name"
    assert json.loads((layout.rejected / "102.json").read_text())["status"] == "Created"
    assert not (root.parent / "escape.jpg").exists() and not (root / "data" / "escape.jpg").exists()
    outside = [p.name for p in root.parent.iterdir() if p != root]
    assert outside == ["bad.dump"]  # nothing written outside AZAION_ROOT_DIR


def test_image_size_limit_is_configurable(tmp_path, settings, layout, monkeypatch):
    settings.rabbitmq.max_image_mb = 0.001
    result = replay_dump(settings, dump_of(tmp_path / "a.dump", [created("big", image=jpeg(1, size=160))]))
    assert result.rejected == {"image-too-large": 1}


def test_replaying_a_stream_twice_gives_the_identical_tree(tmp_path, settings, layout):
    entries = [*scenario(), b"\xc1bad"]
    replay_dump(settings, dump_of(tmp_path / "s.dump", entries))
    first = snapshot(layout.root)
    again = replay_dump(settings, dump_of(tmp_path / "s.dump", entries))
    assert snapshot(layout.root) == first
    assert again.applied == 0 and again.skipped == len(entries)
    # any prefix again, then the rest: still identical
    for cut in (3, 7):
        replay_dump(settings, dump_of(tmp_path / "p.dump", entries[:cut]))
        replay_dump(settings, dump_of(tmp_path / "r.dump", entries[cut:], first_offset=cut))
        assert snapshot(layout.root) == first


def test_reapplying_after_a_half_applied_message_converges(tmp_path, settings, layout):
    """A crash after some file moves of a message but before its commit: re-applying finishes it."""
    entries = scenario()
    reference_root = tmp_path / "reference"
    replay_dump(settings, dump_of(tmp_path / "s.dump", entries))
    expected = snapshot(layout.root)
    # Undo part of message 9 (Deleted a1, o3) by hand, as if the crash came mid-way; forget its index rows.
    layout.deleted.image_path("a1", ".jpg").rename(layout.data.image_path("a1", ".jpg"))
    handler = AnnotationHandler(layout, Limits(), "s", record_offset=False)
    handler.index.db.execute("UPDATE annotations SET stream_offset=8 WHERE name IN ('a1','o3')")
    handler.handle(9, entries[9])
    handler.commit()
    handler.close()
    assert snapshot(layout.root) == expected
    assert not reference_root.exists()


def test_dump_file_round_trip_and_corruption(tmp_path, settings):
    records = [DumpRecord(5, b"abc", 1700000000000), DumpRecord(9, created("x"))]
    path = tmp_path / "d.dump"
    assert write_dump(path, records) == 2
    assert read_dump(path) == records
    path.write_bytes(path.read_bytes()[:-10])
    result = run_azaion("queue", "replay", str(path))
    assert result.returncode == 2 and "truncated or corrupt" in result.stderr and "Traceback" not in result.stderr
    missing = run_azaion("queue", "replay", str(tmp_path / "nope.dump"))
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_replay_cli(tmp_path, root, layout):
    result = run_azaion("queue", "replay", str(dump_of(tmp_path / "s.dump", scenario())))
    assert result.returncode == 0, result.stderr
    summary = cli_summary(result.stdout)
    assert summary["applied"] == 11 and summary["deleted"] == 1
    assert layout.data.label_path("v1").is_file()
