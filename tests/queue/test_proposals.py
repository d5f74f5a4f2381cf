"""The data engine's records in the annotation index: an AI-sourced annotation keeps the model's
proposal through edits, validation and deletion, every change is an event, and re-applying
messages (a crash before or after the index commit) records nothing twice."""

import zlib

from azaion_training.annotation_index import AnnotationIndex
from azaion_training.queue.handler import AnnotationHandler
from azaion_training.queue.messages import (
    AnnotationBulkMessage,
    AnnotationStatus,
    Limits,
    NormalizedDetection,
    Role,
    SampleOptions,
    Source,
    encode_message,
    sample_annotation,
)
from tests.queue.conftest import jpeg

PROPOSED = ((1, 0.5, 0.5, 0.2, 0.2, 0.91), (2, 0.2, 0.3, 0.1, 0.1, 0.42))
EDITED = ((1, 0.5, 0.5, 0.2, 0.2, 1.0), (3, 0.8, 0.8, 0.1, 0.1, 1.0))


def annotation(name: str, boxes, role=Role.CompanionPC, source=Source.AI, status=AnnotationStatus.Created,
               image: bytes | None = b"") -> bytes:
    image = jpeg(zlib.crc32(name.encode()) % 1000) if image == b"" else image
    options = SampleOptions(role=role, source=source, detections=[NormalizedDetection(*b) for b in boxes])
    return encode_message(sample_annotation(name, image, options, status))


def bulk(status, *names) -> bytes:
    return encode_message(AnnotationBulkMessage(list(names), status))


def stream() -> list[bytes]:
    return [
        annotation("ai1", PROPOSED),                                             # 0 proposal
        annotation("ai2", PROPOSED),                                             # 1 proposal
        annotation("ai3", PROPOSED),                                             # 2 proposal
        annotation("man1", EDITED, role=Role.Validator, source=Source.Manual),   # 3 manual: no proposal
        annotation("ai1", EDITED, role=Role.Validator, status=AnnotationStatus.Edited, image=None),  # 4 edited
        bulk(AnnotationStatus.Validated, "ai2"),                                 # 5 validated as proposed
        bulk(AnnotationStatus.Deleted, "ai3"),                                   # 6 deleted
        # 7: an edit still says source AI (the platform keeps the annotation's source): not a new proposal
        annotation("ai2", EDITED, role=Role.Validator, status=AnnotationStatus.Edited, image=None),
    ]


def apply(layout, entries, first: int = 0, commit: bool = True, timestamp_ms: int = 1_750_000_000_000):
    handler = AnnotationHandler(layout, Limits(), "azaion-annotations")
    outcomes = [handler.handle(first + i, data, timestamp_ms + i * 1000) for i, data in enumerate(entries)]
    if commit:
        handler.commit()
    handler.close()
    return outcomes


def records(layout):
    index = AnnotationIndex(layout.index_db, readonly=True)
    try:
        return index.proposals(), index.events()
    finally:
        index.close()


def test_proposals_kept_across_edit_validate_delete(layout):
    assert apply(layout, stream()) == ["applied"] * 8
    proposals, events = records(layout)
    assert [p.name for p in proposals] == ["ai1", "ai2", "ai3"]
    for proposal in proposals:  # as first stored, whatever happened after
        assert proposal.boxes == [tuple(float(v) if i else int(v) for i, v in enumerate(b)) for b in PROPOSED]
        assert proposal.role == Role.CompanionPC and proposal.created_date.startswith("2025-01-01")
        assert proposal.source_media == "sample-video.mp4"
    by_name: dict[str, list] = {}
    for event in events:
        by_name.setdefault(event.name, []).append(event)
    assert [(e.stream_offset, e.status, e.role) for e in by_name["ai1"]] == [
        (0, AnnotationStatus.Created, Role.CompanionPC), (4, AnnotationStatus.Edited, Role.Validator)]
    assert by_name["ai1"][1].boxes == [(1, 0.5, 0.5, 0.2, 0.2, 1.0), (3, 0.8, 0.8, 0.1, 0.1, 1.0)]
    assert [(e.status, e.role, e.boxes) for e in by_name["ai2"][1:]] == [
        (AnnotationStatus.Validated, None, None), (AnnotationStatus.Edited, Role.Validator, by_name["ai1"][1].boxes)]
    assert [(e.stream_offset, e.status, e.boxes) for e in by_name["ai3"][1:]] == [(6, AnnotationStatus.Deleted, None)]
    assert by_name["ai3"][1].at.startswith("2025-06-15T15:06:46")  # the broker's time of offset 6
    assert [e.status for e in by_name["man1"]] == [AnnotationStatus.Created]


def test_reapplying_records_nothing_twice(layout):
    """The crash cases: the same messages applied again after the commit (a duplicate delivery,
    a replay), and after a crash that left the files durable but the index uncommitted."""
    entries = stream()
    apply(layout, entries)
    first = records(layout)
    assert apply(layout, entries) == ["skipped"] * 8  # after the commit: offsets already applied
    assert records(layout) == first

    # a crash before the index commit: the files were written (durable), the index was not
    fresh = layout.root.parent / "fresh"
    from azaion_training.layout import Layout
    from azaion_training.settings import load_settings

    other = Layout(load_settings(env={"AZAION_ROOT_DIR": str(fresh)}).paths)
    handler = AnnotationHandler(other, Limits(), "azaion-annotations")
    for i, data in enumerate(entries[:5]):
        handler.handle(i, data, 1_750_000_000_000 + i * 1000)
    group = handler.seal()
    handler.make_durable(group)
    handler.close()  # killed here: record() never ran
    assert records(other) == ([], [])
    apply(other, entries)  # the consumer resumes at the last commit: every message again
    assert records(other) == first
    assert apply(other, entries[4:], first=4) == ["skipped"] * 4


def test_an_abandoned_group_is_recorded_once_when_applied_again(layout):
    """A local failure drops the open group; the retry from the last commit records each once."""
    entries = stream()
    handler = AnnotationHandler(layout, Limits(), "azaion-annotations")
    for i, data in enumerate(entries[:3]):
        handler.handle(i, data, 1_750_000_000_000 + i * 1000)
    handler.abandon()
    for i, data in enumerate(entries):
        handler.handle(i, data, 1_750_000_000_000 + i * 1000)
    handler.commit()
    handler.close()
    proposals, events = records(layout)
    assert len(proposals) == 3 and len(events) == 8
