"""`ordered_map`: the engine calls of `azaion infer` on several threads, results in input order."""

import threading
import time

import pytest

from azaion_training.inference.pipeline import ordered_map


def test_results_come_in_input_order_although_later_items_finish_first():
    def slow_first(item: int) -> tuple[int, str]:
        time.sleep(0.05 if item % 3 == 0 else 0.0)
        return item, threading.current_thread().name

    results = list(ordered_map(slow_first, range(12), workers=3))
    assert [item for item, _ in results] == list(range(12))
    assert len({name for _, name in results}) > 1  # really on several threads


def test_at_most_workers_plus_one_items_are_taken_ahead():
    taken = []

    def items():
        for i in range(20):
            taken.append(i)
            yield i

    stream = ordered_map(lambda item: item, items(), workers=2)
    assert next(stream) == 0
    assert len(taken) == 3
    stream.close()


def test_an_error_in_one_item_reaches_the_consumer_and_stops_the_rest():
    done = []

    def fails_on_two(item: int) -> int:
        if item == 2:
            raise ValueError("bad frame 2")
        done.append(item)
        return item

    seen = []
    with pytest.raises(ValueError, match="bad frame 2"):
        for result in ordered_map(fails_on_two, range(50), workers=2):
            seen.append(result)
    assert seen == [0, 1] and max(done) < 10


def test_one_worker_runs_in_the_calling_thread():
    threads = list(ordered_map(lambda _: threading.current_thread(), range(2), workers=1))
    assert threads == [threading.current_thread()] * 2
