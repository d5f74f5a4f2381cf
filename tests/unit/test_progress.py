"""The one progress reporter: periodic INFO lines when stdout is not a terminal."""

import logging
import threading

from azaion_training.progress import Progress


def records(caplog):
    return [r for r in caplog.records if r.name == "azaion.progress"]


def test_logs_periodically_and_once_at_the_end(caplog):
    caplog.set_level(logging.INFO)
    with Progress("linking files", 3, interval_s=0) as bar:
        for _ in range(3):
            bar.advance()
    logged = records(caplog)
    assert [r.context["done"] for r in logged] == [1, 2, 3, 3]
    assert all(r.levelno == logging.INFO and r.context["total"] == 3 for r in logged)
    assert logged[-1].getMessage() == "linking files: 3/3"


def test_quiet_between_intervals_and_when_disabled(caplog):
    caplog.set_level(logging.INFO)
    with Progress("slow", 100, interval_s=3600) as bar:
        bar.advance(50)
    with Progress("off", 100, enabled=False) as bar:
        bar.advance(100)
    assert [r.getMessage() for r in records(caplog)] == ["slow: 50/100"]


def test_unknown_total_and_concurrent_callbacks(caplog):
    """boto3 calls its transfer callback from several threads."""
    caplog.set_level(logging.INFO)
    with Progress("download", None, interval_s=3600) as bar:
        threads = [threading.Thread(target=lambda: [bar(1024) for _ in range(500)]) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert bar.done == 8 * 500 * 1024
    assert records(caplog)[-1].getMessage() == f"download: {8 * 500 * 1024}"
