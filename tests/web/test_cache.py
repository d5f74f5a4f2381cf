"""The cockpit's kept figures: computed once, recomputed in the background when the tree
changes, and a reader never waits for a recomputation."""

import threading
import time

from azaion_training.web.cache import Refreshing, tree_signature


def test_recomputes_in_the_background_when_the_signature_changes():
    signature = {"value": 1}
    release = threading.Event()
    calls = []

    def compute():
        calls.append(signature["value"])
        if len(calls) > 1:
            release.wait(10)  # a slow recomputation
        return signature["value"]

    kept = Refreshing("test", compute, lambda: signature["value"], min_interval_s=0)
    assert kept.get() == 1 and calls == [1]
    assert kept.get() == 1 and calls == [1]  # unchanged signature: nothing recomputed
    signature["value"] = 2
    started = time.monotonic()
    assert kept.get() == 1  # the previous value, at once, while the new one is computed
    assert time.monotonic() - started < 1
    release.set()
    deadline = time.monotonic() + 10
    while kept.get() != 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert calls == [1, 2]


def test_tree_signature_changes_when_a_file_is_renamed_into_an_area(layout, tmp_path):
    before = tree_signature(layout)
    assert tree_signature(layout) == before
    time.sleep(0.01)
    temp = layout.data.labels / ".tmp-x"
    temp.write_text("0 0.5 0.5 0.1 0.1\n")
    temp.rename(layout.data.labels / "x.txt")
    assert tree_signature(layout) != before
