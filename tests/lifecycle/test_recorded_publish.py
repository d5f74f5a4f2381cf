"""One identity per target (every spelling of a folder shares one history, one production and one
gate), and a publish plus its history line as one recoverable step: a real publisher
(registry.publish_recorded in a subprocess) is ended by the test-only hook AZAION_FAULT_AFTER
(distribution/faults.py) before the switch, between the switch and the history line, and after
the history line; the next recover_pending (also run by `azaion models list` and `azaion status`)
leaves the history agreeing with what the field fetches."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from azaion_training.distribution.faults import FAULT_ENV, FAULT_EXIT
from azaion_training.distribution.fetch import fetch_model_bytes
from azaion_training.errors import OperationFailed
from azaion_training.layout import Layout
from azaion_training.lifecycle.registry import (
    begin_publish,
    history_path,
    last_published,
    pending_path,
    production,
    production_stack,
    publish_lock,
    publish_recorded,
    read_history,
    recover_pending,
    target_key,
)
from azaion_training.settings import load_settings
from tests.conftest import run_azaion
from tests.distribution.conftest import EMAIL, MODEL_SECRET, PASSWORD
from tests.lifecycle.conftest import json_of

pytestmark = pytest.mark.slow  # kills real publisher processes and recovers

NAME = "azaion.onnx"
PUBLISHER = ("import sys; from pathlib import Path; from azaion_training.settings import load_settings; "
             "from azaion_training.layout import Layout; "
             "from azaion_training.lifecycle.registry import publish_recorded; s = load_settings(); "
             "publish_recorded(s, Layout(s.paths), Path(sys.argv[1]), sys.argv[2], "
             "{'action': 'promote', 'run': sys.argv[3]})")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def keyed(root, monkeypatch):
    monkeypatch.setenv("MODEL_ENCRYPTION_KEY", MODEL_SECRET)
    return load_settings()


@pytest.fixture
def models(tmp_path) -> tuple[Path, Path]:
    old, new = tmp_path / "old" / NAME, tmp_path / "new" / NAME
    for path, size in ((old, 30_000), (new, 45_000)):
        path.parent.mkdir()
        path.write_bytes(os.urandom(size))
    return old, new


def recorded(settings, file: Path, target: str, run: str, action: str = "promote") -> dict:
    return publish_recorded(settings, Layout(settings.paths), file, target, {"action": action, "run": run})


def killed(file: Path, target: str, run: str, step: str) -> None:
    result = subprocess.run([sys.executable, "-c", PUBLISHER, str(file), target, run],
                            env={**os.environ, FAULT_ENV: step}, capture_output=True, text=True, timeout=120)
    assert result.returncode == FAULT_EXIT, f"{step}: {result.returncode} {result.stderr[-2000:]}"


def served(settings, target: str) -> str:
    return sha(fetch_model_bytes(settings, NAME, target=target)[0])


def test_every_spelling_of_one_folder_is_one_target(keyed, models, tmp_path, monkeypatch):
    old, new = models
    store = tmp_path / "pub"
    store.mkdir()
    (tmp_path / "link").symlink_to(store)
    spellings = [f"local:{store}", f"local:{store}/", f"local:{store}/../pub", f"local:{tmp_path / 'link'}"]
    key = target_key(spellings[0])
    assert {target_key(s) for s in spellings} == {key} == {f"local:{os.path.realpath(store)}"}
    runs = []
    for number, spelling in enumerate(spellings, 1):
        event = recorded(keyed, old if number % 2 else new, spelling, f"run-{number}")
        runs.append(f"run-{number}")
        assert event["target"] == key and event["version"] == number  # one version sequence, not four "firsts"
    layout = Layout(keyed.paths)
    events = read_history(layout)
    for spelling in spellings:
        assert production_stack(events, spelling, keyed) == runs
        assert production(layout, spelling) == "run-4"
    monkeypatch.chdir(tmp_path)
    assert production(layout, "local:pub") == "run-4" and production(layout, "local:./link/") == "run-4"
    assert last_published(events, spellings[2])["onnx_sha256"] == served(keyed, spellings[3]) == sha(new.read_bytes())


def test_history_lines_with_the_old_keys_are_read_as_identities(keyed, tmp_path):
    store = tmp_path / "pub"
    store.mkdir()
    (tmp_path / "link").symlink_to(store)
    layout = Layout(keyed.paths)
    path = history_path(layout)
    path.parent.mkdir(parents=True)
    lines = [{"action": "promote", "run": "r1", "target": f"local:{tmp_path}/x/../pub"},  # old: absolute, unresolved
             {"action": "promote", "run": "r2", "target": "azaion"},  # old: one plain key for every API
             {"action": "promote", "run": "r3", "target": f"local:{tmp_path / 'link'}"}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    azaion = target_key("azaion", keyed)
    assert azaion == "azaion:https://api.azaion.com#bucket=models"
    assert [e["target"] for e in read_history(layout, settings=keyed)] == [f"local:{os.path.realpath(store)}",
                                                                           azaion, f"local:{os.path.realpath(store)}"]
    assert production_stack(read_history(layout, settings=keyed), f"local:{store}/", keyed) == ["r1", "r3"]
    assert production(layout, "azaion", settings=keyed) == "r2"
    assert production(layout, azaion) == "r2"  # read without settings: the plain key still counts as azaion


def test_a_crash_between_the_switch_and_the_history_line_is_completed(keyed, models, tmp_path):
    old, new = models
    target = f"local:{tmp_path / 'pub'}"
    recorded(keyed, old, target, "run-a")
    killed(new, target, "run-b", "published")
    layout = Layout(keyed.paths)
    assert pending_path(layout).is_file()
    assert production(layout, target) == "run-a"  # the history lags ...
    assert served(keyed, target) == sha(new.read_bytes())  # ... what the field gets: the switch happened

    listed = run_azaion("models", "list", "--json")
    document = json_of(listed)
    message = document["recovered"]
    assert message.startswith("completed a half-done promote of run-b on local:") and "(version 2)" in message
    assert "completed a half-done promote" in listed.stderr and document["versions"] == []
    events = read_history(layout)
    assert production(layout, target) == "run-b"
    assert last_published(events, target)["onnx_sha256"] == served(keyed, target)
    assert last_published(events, target)["version"] == 2 and not pending_path(layout).exists()
    assert recover_pending(keyed, layout) is None
    assert recorded(keyed, old, target, "run-a", "rollback")["version"] == 3


def test_a_crash_after_the_history_line_is_not_recorded_twice(keyed, models, tmp_path):
    old, new = models
    target = f"local:{tmp_path / 'pub'}"
    recorded(keyed, old, target, "run-a")
    killed(new, target, "run-b", "history-appended")
    layout = Layout(keyed.paths)
    assert pending_path(layout).is_file()
    status = json_of(run_azaion("status", "--json"))  # `azaion status` recovers too
    assert status["recovered"].startswith("completed a half-done promote of run-b")
    assert [e["run"] for e in read_history(layout)] == ["run-a", "run-b"]
    assert production(layout, target) == "run-b" and served(keyed, target) == sha(new.read_bytes())


@pytest.mark.parametrize("step", ["intent-written", "big-uploaded", "small-uploaded"])
def test_a_crash_before_the_switch_is_rolled_back(keyed, models, tmp_path, step):
    old, new = models
    store = tmp_path / "pub"
    target = f"local:{store}"
    recorded(keyed, old, target, "run-a")
    layout = Layout(keyed.paths)
    history = history_path(layout).read_bytes()
    killed(new, target, "run-b", step)
    assert pending_path(layout).is_file()
    message = recover_pending(keyed, layout)
    assert message.startswith("rolled back a half-done promote of run-b on local:")
    assert "still serves version 1" in message
    assert history_path(layout).read_bytes() == history and not pending_path(layout).exists()
    assert served(keyed, target) == sha(old.read_bytes()) and production(layout, target) == "run-a"
    assert not list(store.rglob(f"{NAME}.v2.*"))  # the parts of the switch that never happened are gone
    assert recorded(keyed, new, target, "run-b")["version"] == 2


def test_a_crash_on_the_api_and_cdn_is_completed(api, s3, root, monkeypatch, models):
    env = {"AZAION_API_URL": api.url, "AZAION_API_EMAIL": EMAIL, "AZAION_API_PASSWORD": PASSWORD,
           "MODEL_ENCRYPTION_KEY": MODEL_SECRET}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    old, new = models
    recorded(settings, old, "azaion", "run-a")
    killed(new, "azaion", "run-b", "published")
    layout = Layout(settings.paths)
    assert "completed a half-done promote of run-b on azaion:http://127.0.0.1" in recover_pending(settings, layout)
    events = read_history(layout, settings=settings)
    assert production(layout, "azaion", settings=settings) == "run-b"
    assert last_published(events, "azaion", settings=settings)["onnx_sha256"] == served(settings, "azaion") == \
        sha(new.read_bytes())


def test_a_failed_publish_leaves_nothing_pending(keyed, models, tmp_path):
    old, new = models
    store = tmp_path / "pub"
    target = f"local:{store}"
    recorded(keyed, old, target, "run-a")
    layout = Layout(keyed.paths)
    history = history_path(layout).read_bytes()
    shutil.rmtree(store / "cdn" / "models")
    (store / "cdn" / "models").write_text("not a directory: the big part cannot be written")
    with pytest.raises(OSError):
        recorded(keyed, new, target, "run-b")
    assert not pending_path(layout).exists() and history_path(layout).read_bytes() == history


def test_a_file_changed_since_it_was_judged_is_not_published(keyed, models, tmp_path):
    old, new = models
    target = f"local:{tmp_path / 'pub'}"
    layout = Layout(keyed.paths)
    with pytest.raises(OperationFailed, match="changed since it was judged"):
        publish_recorded(keyed, layout, new, target, {"action": "promote", "run": "r", "onnx_sha256": sha(b"judged")})
    assert not (tmp_path / "pub").exists() and read_history(layout) == [] and not pending_path(layout).exists()


def test_an_intent_of_a_publish_in_progress_is_left_alone(keyed, models, tmp_path):
    old, _ = models
    target = f"local:{tmp_path / 'pub'}"
    layout = Layout(keyed.paths)
    event = {"action": "promote", "run": "r", "target": target_key(target)}
    with publish_lock(layout):
        begin_publish(layout, {"id": "e1", "action": "promote", "run": "r", "target_key": target_key(target),
                               "target": target_key(target), "name": NAME, "folder": "models", "version": 1,
                               "onnx_sha256": sha(old.read_bytes()), "event": {**event, "id": "e1"}})
        assert recover_pending(keyed, layout) is None and pending_path(layout).is_file()
        with pytest.raises(OperationFailed, match="still pending"):
            begin_publish(layout, json.loads(pending_path(layout).read_text()))
    message = recover_pending(keyed, layout)
    assert message.startswith("rolled back a half-done promote of r") and "still serves nothing" in message
    assert read_history(layout) == []


def test_a_publish_waits_for_a_recovery_holding_the_lock(keyed, models, tmp_path):
    old, _ = models
    layout = Layout(keyed.paths)
    lock = publish_lock(layout).acquire()  # as a `models list` recovering right now would
    threading.Timer(1.0, lock.release).start()
    started = time.monotonic()
    assert recorded(keyed, old, f"local:{tmp_path / 'pub'}", "r")["version"] == 1
    assert time.monotonic() - started >= 0.9
