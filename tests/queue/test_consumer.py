"""The consumer against a real RabbitMQ stream: resume, signals, SIGKILL, broker restart."""

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import yaml
from pydantic import SecretStr

from azaion_training.annotation_index import AnnotationIndex
from azaion_training.images import structure_problem
from azaion_training.labels import parse_label_text
from azaion_training.layout import Layout
from azaion_training.queue.messages import (
    AnnotationMessage,
    AnnotationStatus,
    MessageRejected,
    Role,
    decode,
)
from azaion_training.queue.replay import replay_dump
from azaion_training.queue.streamio import publish
from azaion_training.settings import PathSettings, RabbitMQSettings, Settings
from tests.conftest import AZAION_BIN, run_azaion
from tests.queue.conftest import bulk, cli_summary, created, dump_of, log_lines, snapshot, temp_files


def rabbit_settings(rabbit, stream: str) -> RabbitMQSettings:
    return RabbitMQSettings(host=rabbit.host, port=rabbit.stream_port, user=rabbit.user,
                            password=SecretStr(rabbit.password), queue_name=stream)


def env_for(rabbit, stream: str) -> dict:
    return {**rabbit.env(), "RABBITMQ_QUEUE_NAME": stream, "AZAION_LOG_FORMAT": "json"}


def start_consumer(rabbit, stream: str, log: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(AZAION_BIN), "queue", "consume", *args], env={**os.environ, **env_for(rabbit, stream)},
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_for(condition, timeout: float, what: str, poll_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)


def publish_when_ready(settings: RabbitMQSettings, entries: list[bytes], timeout: float = 30) -> None:
    """Publish right after a broker restart: the stream's leader may take a moment to come back."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            publish(settings, entries)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def long_stream(count: int) -> list[bytes]:
    """Created annotations from operators and validators, with validations, edits, deletions and bad input."""
    entries: list[bytes] = []
    for i in range(count):
        entries.append(created(f"k{i:04d}", Role.Operator if i % 2 else Role.Validator, media=f"v{i // 20}.mp4"))
        if i % 10 == 9:
            entries.append(bulk(AnnotationStatus.Validated, *(f"k{j:04d}" for j in range(i - 8, i, 4))))
            entries.append(bulk(AnnotationStatus.Deleted, f"k{i - 5:04d}", f"k{i - 2:04d}"))
            entries.append(created(f"k{i - 3:04d}", Role.Validator, AnnotationStatus.Edited, image=None))
        if i % 50 == 25:
            entries.append(b"\xc1 not a message")
    return entries


def decode_or_none(entry: bytes):
    try:
        return decode(entry)
    except MessageRejected:
        return None


def reference_tree(tmp_path: Path, entries: list[bytes]) -> dict[str, str]:
    root = tmp_path / "reference"
    replay_dump(Settings(paths=PathSettings(root_dir=root)), dump_of(tmp_path / "reference.dump", entries))
    return comparable(root)


def comparable(root: Path) -> dict[str, str]:
    """The tree minus rejection JSONs (they carry the time of rejection)."""
    return {path: digest for path, digest in snapshot(root).items() if not path.endswith(".json")}


def offset_file(root: Path) -> dict:
    return yaml.safe_load((root / "queue-state" / "offset.yaml").read_text())


def test_consume_applies_stream_and_commits_offsets(rabbit, root, tmp_path, stream_name):
    entries = long_stream(30)
    publish(rabbit_settings(rabbit, stream_name), entries)
    result = run_azaion("queue", "consume", "--exit-when-idle", "1.5", env=env_for(rabbit, stream_name), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = cli_summary(result.stdout)
    assert summary["stopped_by"] == "idle" and summary["committed_offset"] == len(entries) - 1
    assert summary["rejected_by_reason"] == {"bad-msgpack": 1}
    assert comparable(root) == reference_tree(tmp_path, entries)
    saved = offset_file(root)
    assert saved["stream"] == stream_name and saved["offset"] == len(entries) - 1 and saved["updated_at"]
    index = AnnotationIndex(Layout(PathSettings(root_dir=root)).index_db, readonly=True)
    assert index.get_meta("last_offset") == str(len(entries) - 1) and index.get_meta("last_message_time")
    index.close()
    assert any(line["message"] == "ingest progress" for line in log_lines(result.stderr))
    # nothing new: a second run applies nothing and keeps the offset
    again = run_azaion("queue", "consume", "--exit-when-idle", "1", env=env_for(rabbit, stream_name), timeout=60)
    assert cli_summary(again.stdout)["applied"] == 0 and offset_file(root)["offset"] == len(entries) - 1


def test_sigterm_commits_and_server_offset_resumes_without_offset_file(rabbit, root, tmp_path, stream_name):
    entries = [created(f"t{i:04d}", Role.Validator) for i in range(400)]
    publish(rabbit_settings(rabbit, stream_name), entries)
    log = tmp_path / "consumer.log"
    process = start_consumer(rabbit, stream_name, log)
    labels = root / "data" / "labels"
    wait_for(lambda: (root / "queue-state" / "offset.yaml").exists() and len(list(labels.iterdir())) > 20, 60,
             "the consumer to apply some messages")
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert process.wait(timeout=10) == 0, log.read_text()
    assert time.monotonic() - started < 5
    committed = offset_file(root)["offset"]
    applied = sorted(path.stem for path in labels.iterdir())
    assert applied == [f"t{i:04d}" for i in range(committed + 1)]  # exactly the committed prefix
    # the offset file and the index are gone: the server-side offset alone says where to resume
    (root / "queue-state" / "offset.yaml").unlink()
    for path in (root / "queue-state").glob("annotations.sqlite3*"):
        path.unlink()
    result = run_azaion("queue", "consume", "--exit-when-idle", "1.5", env=env_for(rabbit, stream_name), timeout=120)
    assert result.returncode == 0, result.stdout
    assert cli_summary(result.stdout)["applied"] == len(entries) - committed - 1
    assert len(list(labels.iterdir())) == len(entries)


def test_sigkill_at_random_moments_then_resume(rabbit, root, tmp_path, stream_name):
    entries = long_stream(800)
    publish(rabbit_settings(rabbit, stream_name), entries)
    rng = random.Random(3)
    log = tmp_path / "consumer.log"
    offset_yaml = root / "queue-state" / "offset.yaml"
    committed_at_kill = []

    def labels() -> set[str]:  # every annotation has one label file somewhere, whatever its area
        return {path.stem for path in root.glob("*/labels/[!.]*")}

    created_at = [message.name if isinstance(message := decode_or_none(entry), AnnotationMessage) else None
                  for entry in entries]

    for run in range(1, 5):
        process = start_consumer(rabbit, stream_name, log)
        # a random moment mid-stream, each run further (of 800 names) however fast the consumer goes
        target = 150 * run + rng.randint(0, 100)
        wait_for(lambda target=target: len(labels()) >= target, 60, "the consumer to apply more", poll_s=0.005)
        process.kill()
        process.wait()
        committed_at_kill.append(offset_file(root)["offset"] if offset_yaml.exists() else -1)
        committed_names = {name for name in created_at[:committed_at_kill[-1] + 1] if name}
        assert committed_names <= labels()  # the committed offset never runs ahead of the files
        for image in (root / "data" / "images").glob("[!.]*"):  # every visible file is whole (temp files are dot-files)
            assert structure_problem(image.read_bytes()) is None, image
        for label in (root / "data" / "labels").glob("[!.]*"):
            parse_label_text(label.read_text())
    result = run_azaion("queue", "consume", "--exit-when-idle", "1.5", env=env_for(rabbit, stream_name), timeout=180)
    assert result.returncode == 0, result.stdout
    assert any(0 <= offset < len(entries) - 1 for offset in committed_at_kill), committed_at_kill  # mid-stream
    assert comparable(root) == reference_tree(tmp_path, entries)
    assert temp_files(root) == []
    assert offset_file(root)["offset"] == len(entries) - 1


def test_broker_restart_during_consumption(rabbit, root, tmp_path, stream_name):
    settings = rabbit_settings(rabbit, stream_name)
    publish(settings, [created(f"r{i:03d}") for i in range(20)])
    log = tmp_path / "consumer.log"
    process = start_consumer(rabbit, stream_name, log)
    labels = root / "data" / "labels"
    try:
        wait_for(lambda: len(list(labels.iterdir())) == 20, 60, "the first batch")
        rabbit.restart()
        publish_when_ready(settings, [created(f"r{i:03d}") for i in range(20, 40)])
        wait_for(lambda: len(list(labels.iterdir())) == 40, 90, "the batch published after the restart")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0, log.read_text()
    warnings = [line for line in log_lines(log.read_text()) if line["level"] == "WARNING"]
    assert any("reconnecting" in line["message"] for line in warnings)
    assert offset_file(root)["offset"] >= 39  # offsets are not dense across a restart
    assert sorted(p.stem for p in labels.iterdir()) == [f"r{i:03d}" for i in range(40)]


def test_waits_for_a_missing_stream_and_refuses_a_second_instance(rabbit, root, tmp_path, stream_name):
    log = tmp_path / "consumer.log"
    process = start_consumer(rabbit, stream_name, log)
    try:
        wait_for(lambda: "stream does not exist yet" in log.read_text(), 30, "the waiting log line")
        second = run_azaion("queue", "consume", "--exit-when-idle", "1", env=env_for(rabbit, stream_name))
        assert second.returncode == 1 and "already running" in second.stderr
        publish(rabbit_settings(rabbit, stream_name), [created("late1"), created("late2", Role.Operator)])
        wait_for(lambda: (root / "data-seed" / "labels" / "late2.txt").exists(), 30, "messages on the new stream")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_create_stream_flag_and_cli_tools(rabbit, root, tmp_path, stream_name):
    env = env_for(rabbit, stream_name)
    created_run = run_azaion("queue", "consume", "--create-stream", "--exit-when-idle", "0.5", env=env, timeout=60)
    assert created_run.returncode == 0, created_run.stdout
    assert any(line["message"] == "created stream" for line in log_lines(created_run.stderr))
    sample = run_azaion("queue", "publish-sample", "--count", "3", "--size", "96", env=env, timeout=120)
    assert sample.returncode == 0, sample.stderr
    dump = tmp_path / "stream.dump"
    dumped = run_azaion("queue", "dump", "--out", str(dump), "--idle", "1", env=env, timeout=60)
    assert dumped.returncode == 0 and cli_summary(dumped.stdout)["records"] == 4  # 3 Created + 1 Validated
    replayed = run_azaion("queue", "replay", str(dump), env=env)
    assert cli_summary(replayed.stdout)["applied"] == 4
    assert len(list((root / "data" / "labels").iterdir())) == 3  # the operator's was validated
    bad = run_azaion("queue", "consume", "--from", "somewhere", env=env)
    assert bad.returncode == 2 and "--from" in bad.stderr



def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def not_running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_sigkill_of_the_consumer_mid_group_takes_its_worker_along(rabbit, root, tmp_path, stream_name):
    """kill -9 of `azaion queue consume` while its apply worker holds applied, uncommitted messages:
    the worker dies with it, and the restart applies exactly what was not committed."""
    entries = [created(f"g{i:04d}", Role.Validator, media=f"v{i // 25}.mp4") for i in range(900)]
    publish(rabbit_settings(rabbit, stream_name), entries)
    log = tmp_path / "consumer.log"
    labels = root / "data" / "labels"

    def committed() -> int:
        return offset_file(root)["offset"] if (root / "queue-state" / "offset.yaml").exists() else -1

    for _attempt in range(5):  # the kill must land inside a group: applied files beyond the committed offset
        process = start_consumer(rabbit, stream_name, log)
        wait_for(lambda process=process: len(children_of(process.pid)) == 1, 30, "the apply worker")
        worker = children_of(process.pid)[0]
        target = committed() + 30
        wait_for(lambda target=target: len(list(labels.iterdir())) > target, 60, "more applied", poll_s=0.002)
        process.kill()
        process.wait()
        wait_for(lambda worker=worker: not_running(worker), 10, "the worker to die with the consumer", poll_s=0.01)
        last_commit = committed()
        if len(list(labels.iterdir())) > last_commit + 1:
            break
    else:
        raise AssertionError("never killed mid-group")
    assert last_commit < len(entries) - 1
    result = run_azaion("queue", "consume", "--exit-when-idle", "1.5", env=env_for(rabbit, stream_name), timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr  # the instance lock was free: no worker left
    summary = cli_summary(result.stdout)
    assert summary["applied"] == len(entries) - last_commit - 1 and summary["skipped"] == 0  # none twice
    assert comparable(root) == reference_tree(tmp_path, entries) and temp_files(root) == []
    index = AnnotationIndex(Layout(PathSettings(root_dir=root)).index_db, readonly=True)
    rows = {entry.name: entry.stream_offset for entry in index.entries()}
    index.close()
    assert rows == {f"g{i:04d}": i for i in range(len(entries))}
    assert offset_file(root)["offset"] == len(entries) - 1
