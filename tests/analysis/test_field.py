"""Field accuracy on a hand-made sequence of proposals and validators' events: the figures are
counted by hand here (not with the code under test), the Wilson bounds checked against their
defining equation, the model version against the promotion history, and the health check's
week-over-week recall alert."""

import json
import math

import pytest

from azaion_training.analysis.field import field_report
from azaion_training.annotation_index import AnnotationEvent, AnnotationIndex, Proposal
from azaion_training.field_accuracy import recall_drops, tabulate, wilson
from azaion_training.lifecycle import registry
from azaion_training.ops.health import HealthOptions, run_health
from tests.conftest import run_azaion

A = (0.5, 0.5, 0.2, 0.2)
A_NUDGED = (0.51, 0.5, 0.2, 0.2)  # IoU with A ~0.9
A_FAR = (0.62, 0.5, 0.2, 0.2)  # IoU with A = 0.016 / 0.064 = 0.25
B = (0.2, 0.2, 0.1, 0.1)
C = (0.8, 0.8, 0.1, 0.1)
D = (0.3, 0.7, 0.1, 0.1)
WEEK1, WEEK2 = "2025-06-03T10:00:00+00:00", "2025-06-10T10:00:00+00:00"  # ISO weeks 2025-W23, W24
VALIDATOR, OPERATOR = 20, 10
CREATED, EDITED, VALIDATED, DELETED = 10, 20, 30, 40


def box(cls, xywh, conf=1.0):
    return (cls, *xywh, conf)


def write_sequence(layout):
    """a1..a7: proposals (offsets 0-6) and the validators' events after them."""
    proposals = [
        ("a1", WEEK1, "video-1.mp4", [box(0, A, .9), box(1, B, .8)]),
        ("a2", WEEK1, "video-1.mp4", [box(0, A, .9), box(0, C, .4)]),
        ("a3", WEEK1, "video-2.mp4", [box(1, B, .7)]),
        ("a4", WEEK2, "video-2.mp4", [box(0, A, .6)]),
        ("a5", WEEK2, "video-2.mp4", [box(0, A, .8)]),
        ("a6", WEEK2, "video-3.mp4", [box(0, A, .8)]),
        ("a7", WEEK2, "video-3.mp4", [box(1, B, .5)]),
    ]
    events = [
        ("a1", 10, VALIDATED, None, None),                                      # accepted as proposed
        ("a2", 11, EDITED, VALIDATOR, [box(0, A_NUDGED), box(1, D)]),           # C removed, D added
        ("a3", 12, DELETED, None, None),                                        # deleted
        ("a4", 13, EDITED, VALIDATOR, [box(1, A)]),                             # class swapped
        ("a5", 14, EDITED, VALIDATOR, [box(0, A_FAR)]),                         # moved beyond IoU 0.5
        ("a6", 15, EDITED, OPERATOR, [box(0, A_FAR)]),                          # an operator: not judged
        ("a7", 16, EDITED, OPERATOR, []),                                       # emptied by an operator...
        ("a7", 17, VALIDATED, None, None),                                      # ...then validated
    ]
    index = AnnotationIndex(layout.index_db)
    index.begin()
    index.add_proposals(Proposal(name, offset, at, media, 30, boxes)
                        for offset, (name, at, media, boxes) in enumerate(proposals))
    index.add_events(AnnotationEvent(name, offset, CREATED, 30, at, boxes)
                     for offset, (name, at, _, boxes) in enumerate(proposals))
    index.add_events(AnnotationEvent(name, offset, status, role, "2025-06-20T00:00:00+00:00", boxes)
                     for name, offset, status, role, boxes in events)
    index.commit()
    index.close()


# Counted by hand (per class: true positives, false positives, misses):
#   a1: c0 TP, c1 TP            a2: c0 TP (A~A_NUDGED), c0 FP (C), c1 miss (D)     a3: c1 FP (deleted)
#   a4: c0 FP, c1 miss (swap)   a5: c0 FP + c0 miss (IoU 0.25)                      a7: c1 FP (emptied)
#   a6: pending (no validator yet)
EXPECTED = {
    "2025-W23": {0: (2, 1, 0), 1: (1, 1, 1)},
    "2025-W24": {0: (0, 2, 1), 1: (0, 1, 1)},
}


def totals():
    out: dict[int, list[int]] = {}
    for week in EXPECTED.values():
        for cls, counts in week.items():
            out[cls] = [a + b for a, b in zip(out.get(cls, [0, 0, 0]), counts, strict=True)]
    return out


def test_wilson_bounds_solve_the_score_equation():
    for k, n in ((2, 3), (0, 5), (17, 20), (1, 1)):
        low, high = wilson(k, n)
        p = k / n
        for bound in (low, high):
            if 0 < bound < 1:  # |p - q| = z sqrt(q (1 - q) / n) at both bounds
                assert abs(p - bound) == pytest.approx(1.959964 * math.sqrt(bound * (1 - bound) / n), abs=1e-9)
        assert low <= p <= high
    assert wilson(0, 0) is None


def test_field_report_by_class_week_media_and_model(settings, layout):
    write_sequence(layout)
    registry.append_event(layout, {"action": "promote", "run": "run-1", "target": "azaion",
                                   "at": "2025-06-01T00:00:00+00:00"})
    registry.append_event(layout, {"action": "promote", "run": "run-2", "target": "azaion",
                                   "at": "2025-06-08T00:00:00+00:00"})
    report = field_report(settings)
    assert (report.proposals, report.judged, report.pending, report.deleted) == (7, 6, 1, 1)
    rows = report.rows_of("all")
    for cls, (tp, fp, fn) in totals().items():
        row = rows[cls]
        assert (row.tp, row.fp, row.fn) == (tp, fp, fn)
        assert row.precision == pytest.approx(tp / (tp + fp)) and row.recall == pytest.approx(tp / (tp + fn))
        assert row.to_dict()["recall_ci95"] == [round(v, 4) for v in wilson(tp, tp + fn)]
    assert (rows[None].tp, rows[None].fp, rows[None].fn) == (3, 5, 3)

    weekly = field_report(settings, by="week")
    for week, classes in EXPECTED.items():
        for cls, counts in classes.items():
            row = weekly.rows_of(week)[cls]
            assert (row.tp, row.fp, row.fn) == counts, (week, cls)

    by_model = field_report(settings, by="model")  # week 1 was run-1's, week 2 run-2's
    assert {row.group for row in by_model.rows} == {"run-1", "run-2"}
    assert by_model.rows_of("run-1")[None].models == {"run-1": 3}

    by_media = field_report(settings, by="media")
    assert (by_media.rows_of("video-2.mp4")[1].fp, by_media.rows_of("video-2.mp4")[1].fn) == (1, 1)  # a3, a4

    since = field_report(settings, since=__import__("datetime").date(2025, 6, 9))
    assert (since.proposals, since.judged) == (4, 3)


def test_recall_drop_alert_and_health_check(settings, layout, root, monkeypatch):
    write_sequence(layout)
    weekly = field_report(settings, by="week").rows
    drops = {d.cls: round(d.drop, 6) for d in recall_drops(weekly, 0.1, min_boxes=1)}  # c0 1 -> 0, c1 .5 -> 0
    assert drops == {0: 1.0, 1: 0.5}
    assert {d.cls for d in recall_drops(weekly, 0.6, min_boxes=1)} == {0}
    assert recall_drops(weekly, 0.1) == []  # too few boxes per week for the default minimum
    assert tabulate([], "week", {}) == []

    monkeypatch.setattr("azaion_training.field_accuracy.ALERT_MIN_BOXES", 1)
    report = run_health(None, HealthOptions(checks=("field",)))
    [check] = report.checks
    assert check.status == "warn" and "2025-W23 to 2025-W24" in check.detail
    assert {d["class"] for d in check.data["drops"]} == {0, 1}
    monkeypatch.setenv("FIELD_RECALL_DROP_ALERT", "1")
    [check] = run_health(None, HealthOptions(checks=("field",))).checks
    assert check.status == "ok" and report.healthy

    layout.index_db.unlink()
    layout.index_db.write_bytes(b"not a database" * 100)
    [check] = run_health(None, HealthOptions(checks=("field",))).checks
    assert check.status == "warn" and "annotation index" in check.detail


def test_field_report_cli_json(layout, root):
    write_sequence(layout)
    result = run_azaion("field", "report", "--by", "week", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["judged"] == 6 and data["by"] == "week"
    assert {(r["group"], r["class"]): (r["tp"], r["fp"], r["missed"]) for r in data["rows"]
            if r["class"] is not None} == {(w, c): v for w, cs in EXPECTED.items() for c, v in cs.items()}
    plain = run_azaion("field", "report")
    assert plain.returncode == 0 and "recall" in plain.stdout
    assert run_azaion("field", "report", "--by", "nonsense").returncode == 2
