"""`azaion field report`: the production model's field precision and recall as the validators
judged its proposals (docs/data-engine.md, "Field accuracy"). The figures are field_accuracy.py's
(the proposals and events the consumer keeps, matched with the gate's rules); this module adds
which model made each proposal: the run that was production on the target at the annotation's
created date, replayed from the promotion history (lifecycle/registry.py).
"""

from datetime import UTC, date, datetime
from typing import Any

from azaion_training.field_accuracy import (
    FieldReport,
    Judged,
    class_names,
    judge,
    parse_time,
    read_records,
    tabulate,
)
from azaion_training.layout import Layout
from azaion_training.lifecycle.registry import production_stack, read_history, target_key
from azaion_training.settings import Settings


def production_at(history: list[dict[str, Any]], target: str, settings: Any) -> list[tuple[datetime, str | None]]:
    """(time, production run after it) for each event of the promotion history, oldest first."""
    timeline = []
    for i, event in enumerate(history):
        moment = parse_time(event.get("at"))
        if moment is None:
            continue
        stack = production_stack(history[:i + 1], target, settings)
        timeline.append((moment, stack[-1] if stack else None))
    timeline.sort(key=lambda item: item[0])
    return timeline


def model_at(timeline: list[tuple[datetime, str | None]], moment: datetime | None) -> str | None:
    if moment is None:
        return None
    current = None
    for at, run in timeline:
        if at > moment:
            break
        current = run
    return current


def field_report(settings: Settings, since: date | None = None, by: str = "class",
                 target: str = "azaion") -> FieldReport:
    """The production model's field precision and recall as the validators judged its proposals."""
    layout = Layout(settings.paths)
    proposals, events = read_records(layout)
    if since is not None:
        start = datetime(since.year, since.month, since.day, tzinfo=UTC)
        proposals = [p for p in proposals if (t := parse_time(p.created_date)) is not None and t >= start]
    judged, pending = judge(proposals, events)
    key = target_key(target, settings)
    timeline = production_at(read_history(layout, settings=settings), key, settings)
    judged = [Judged(j.name, j.proposed_at, j.media, j.proposal, j.final, j.deleted, j.judged_at,
                     model_at(timeline, j.proposed_at)) for j in judged]
    rows = tabulate(judged, by, class_names(settings))
    return FieldReport(by, since.isoformat() if since else None, key, len(proposals), len(judged), pending,
                       sum(j.deleted for j in judged), rows)


