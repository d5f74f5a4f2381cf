"""`azaion backup`: what a snapshot holds (and never holds), consistency under a live writer, verify,
restore refusals, retention, the S3 destination on a moto server, the health check, and a restore
end to end: the real consumer on the real broker, snapshotted mid-stream, restored into a new root
and resumed there with nothing lost or applied twice, the same splits and the same production model."""

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from azaion_training.annotation_index import AnnotationIndex, IndexEntry, read_meta, read_source_media
from azaion_training.dataset.split import SplitItem
from azaion_training.dataset.split_registry import SplitRegistry
from azaion_training.layout import Layout
from azaion_training.lifecycle import registry
from azaion_training.ops.backup import FILES, SNAPSHOT_JSON, create_snapshot, list_snapshots
from azaion_training.ops.health import HealthOptions, run_health
from azaion_training.queue.messages import AnnotationStatus, Role
from azaion_training.queue.offsets import write_offset_record
from azaion_training.queue.replay import replay_dump
from azaion_training.queue.streamio import publish
from azaion_training.settings import PathSettings, Settings, load_settings
from azaion_training.training.runs import RunRecord
from tests.conftest import AZAION_BIN, run_azaion
from tests.ops.conftest import lock_held_by_another_process
from tests.queue.conftest import bulk, cli_summary, created, dump_of, log_lines, snapshot
from tests.queue.test_consumer import comparable, rabbit_settings, wait_for
from tests.services.s3 import BOOTSTRAP_KEYS, KeyPair, MotoS3

SECRET = "hunter2-not-for-backups"
RUN = "azaion-2026-01-01"


def azaion(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return run_azaion(*args, env={"AZAION_ROOT_DIR": str(root), **env})


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def populate(root: Path, groups: int = 400) -> Layout:
    """A root with every kind of state, written by the product's own functions, plus weights and
    things that must never be backed up."""
    layout = Layout(PathSettings(root_dir=root))
    layout.init()
    index = AnnotationIndex(layout.index_db)
    index.begin()
    index.upsert(IndexEntry("a1", "data", "m1.mp4", 20, 0, "2026-01-01T00:00:00", 0, ".jpg", 10, 7, "2026-01-01"))
    index.set_meta("last_offset", "7")
    index.commit()
    index.close()
    write_offset_record(layout.offset_file, "azaion-annotations", 7)
    with SplitRegistry(layout.split_registry) as splits:  # enough groups for several database pages
        splits.assign([SplitItem(f"a{i}", f"m{i}.mp4", [i % 17]) for i in range(groups)], (70, 20, 10), 0,
                      "azaion-2026-01-01")
    run = layout.models / RUN
    RunRecord(run=RUN, path=run, status="finished", dataset=str(layout.datasets / RUN), metrics={"mAP50": 0.5},
              started="2026-01-01T00:00:00+00:00").save()
    (run / "args.yaml").write_text("epochs: 1\n")
    (run / "results.csv").write_text("epoch,metrics/mAP50(B)\n1,0.5\n")
    (run / "weights").mkdir()
    (run / "weights" / "best.pt").write_bytes(b"pt" * 1000)
    (run / "azaion.onnx").write_bytes(b"onnx" * 1000)
    registry.append_event(layout, {"action": "promote", "run": RUN, "target": "azaion", "forced": True})
    (registry.history_path(layout).parent / "azaion.onnx.manifest.json").write_text('{"version": 1}\n')
    (layout.models / "cycle").mkdir()
    (layout.models / "cycle" / "history.jsonl").write_text('{"decision": "promote"}\n')
    (layout.models / "cycle" / "state.json").write_text('{"step": "train"}\n')
    (layout.datasets / RUN / "train").mkdir(parents=True)
    (layout.datasets / RUN / "manifest.json").write_text('{"name": "azaion-2026-01-01", "files": []}\n')
    (layout.datasets / RUN / "data.yaml").write_text("nc: 80\n")
    (layout.data.labels / "a1.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    (root / "config.yaml").write_text(f"rabbitmq:\n  password: {SECRET}\n")
    (root / ".env").write_text(f"RABBITMQ_PASSWORD={SECRET}\n")
    return layout


def snapshot_dir(root: Path) -> Path:
    names = [p for p in (root / "backups").iterdir() if not p.name.startswith(".")]
    assert len(names) == 1, names
    return names[0]


def recorded(directory: Path) -> dict:
    return json.loads((directory / SNAPSHOT_JSON).read_text())


def paths_of(directory: Path) -> set[str]:
    return {entry["path"] for entry in recorded(directory)["files"]}


STATE = {"queue-state/offset.yaml", "queue-state/annotations.sqlite3", "datasets/splits.sqlite3",
         "datasets/azaion-2026-01-01/manifest.json", f"models/{RUN}/run.json", f"models/{RUN}/args.yaml",
         f"models/{RUN}/results.csv", "models/published/models/history.jsonl",
         "models/published/models/azaion.onnx.manifest.json", "models/cycle/history.jsonl", "classes.json"}


# ---------------------------------------------------------------- create, verify, list


def test_snapshot_holds_the_state_and_nothing_else(root):
    populate(root)
    env = {"RABBITMQ_PASSWORD": SECRET, "BACKUP_S3_SECRET_KEY": SECRET}
    result = azaion(root, "backup", "create", "--json", **env)
    assert result.returncode == 0, result.stderr
    created_result = json.loads(result.stdout)
    directory = snapshot_dir(root)
    assert created_result["location"] == str(directory) and created_result["offset"] == 7
    assert paths_of(directory) == STATE  # no weights, no ONNX, no config, no cycle state, no data
    meta = recorded(directory)
    assert meta["format"] == 1 and meta["root"] == str(root) and meta["host"] and meta["stream"] == "azaion-annotations"
    assert datetime.fromisoformat(meta["created"]).tzinfo is not None
    assert directory.name == datetime.fromisoformat(meta["created"]).strftime("%Y%m%dT%H%M%SZ")
    for entry in meta["files"]:  # size and sha256 of each copy; the databases are flagged
        copy = directory / FILES / entry["path"]
        assert copy.stat().st_size == entry["size"] and sha256(copy) == entry["sha256"], entry["path"]
        assert entry["sqlite"] == entry["path"].endswith(".sqlite3")
    # the copy of a database is a self-contained file with the same rows
    with sqlite3.connect(directory / FILES / "datasets" / "splits.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert db.execute("SELECT COUNT(*) FROM groups").fetchone()[0] == 400
    # coreutils can check it too
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=directory, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    everything = b"".join(p.read_bytes() for p in directory.rglob("*") if p.is_file())
    assert SECRET.encode() not in everything and SECRET not in result.stdout + result.stderr

    weights = azaion(root, "backup", "create", "--with-weights", "--json")
    assert weights.returncode == 0, weights.stderr
    with_weights = Path(json.loads(weights.stdout)["location"])
    assert paths_of(with_weights) == STATE | {f"models/{RUN}/weights/best.pt", f"models/{RUN}/azaion.onnx"}

    verified = azaion(root, "backup", "verify", str(directory))
    assert verified.returncode == 0 and f"{len(STATE)} files" in verified.stdout and "all intact" in verified.stdout
    listed = azaion(root, "backup", "list", "--json")
    assert [s["location"] for s in json.loads(listed.stdout)] == [str(directory), str(with_weights)]
    assert [s["with_weights"] for s in json.loads(listed.stdout)] == [False, True]


def test_a_history_line_caught_mid_append_is_left_out(root):
    layout = populate(root)
    with registry.history_path(layout).open("a") as handle:
        handle.write('{"action": "promote", "run": "half-writ')
    assert azaion(root, "backup", "create").returncode == 0
    copy = snapshot_dir(root) / FILES / "models" / "published" / "models" / "history.jsonl"
    assert [json.loads(line)["run"] for line in copy.read_text().splitlines()] == [RUN]


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from azaion_training.annotation_index import AnnotationIndex, IndexEntry, read_meta, read_source_media
    index = AnnotationIndex(Path(sys.argv[1]))
    print("writing", flush=True)
    batch = 0
    while True:  # each commit: 20 rows and the meta saying how many batches are in
        index.begin()
        for row in range(20):
            index.upsert(IndexEntry(f"n{batch}-{row}", "data", None, None, None, None, None, ".jpg", 10, batch, "t"))
        index.set_meta("last_offset", str(batch))
        index.commit()
        batch += 1
""")


def test_databases_are_copied_consistently_while_a_writer_commits(root):
    layout = Layout(PathSettings(root_dir=root))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(layout.index_db)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        wait_for(lambda: read_meta(layout.index_db, "last_offset") is not None, 30, "the first commit")
        seen = []
        for _ in range(4):
            result = create_snapshot(load_settings(), keep=0)
            copy = Path(result.location) / FILES / "queue-state" / "annotations.sqlite3"
            with sqlite3.connect(copy) as db:
                last = int(db.execute("SELECT value FROM meta WHERE key='last_offset'").fetchone()[0])
                rows = db.execute("SELECT COUNT(*) FROM annotations").fetchone()[0]
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert rows == 20 * (last + 1)  # never half a transaction
            assert result.offset == last
            seen.append(last)
            time.sleep(0.05)
        assert writer.poll() is None and seen == sorted(seen) and seen[-1] > seen[0]
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()


def damage_a_page(path: Path) -> None:
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page + 8:page * 2] = b"\xa5" * (page - 8)  # the second page's cells: garbage
    path.write_bytes(bytes(data))


def test_verify_names_each_damaged_file(root):
    populate(root)
    assert azaion(root, "backup", "create").returncode == 0
    directory = snapshot_dir(root)
    history = directory / FILES / "models" / "published" / "models" / "history.jsonl"
    history.write_text(history.read_text().replace(RUN, "azaion-2099-12-31"))  # same size, other run
    (directory / FILES / "classes.json").unlink()
    splits = directory / FILES / "datasets" / "splits.sqlite3"
    damage_a_page(splits)
    # a database damaged before it was hashed: only integrity_check can tell
    meta = recorded(directory)
    for entry in meta["files"]:
        if entry["path"] == "datasets/splits.sqlite3":
            entry["sha256"], entry["size"] = sha256(splits), splits.stat().st_size
    (directory / SNAPSHOT_JSON).write_text(json.dumps(meta))
    result = azaion(root, "backup", "verify", directory.name)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "3 problem(s)" in result.stderr
    assert "models/published/models/history.jsonl: sha256 differs" in result.stderr
    assert "classes.json: missing from the snapshot" in result.stderr
    assert "datasets/splits.sqlite3: " in result.stderr and "integrity_check" in result.stderr
    assert "Traceback" not in result.stderr
    as_json = json.loads(azaion(root, "backup", "verify", str(directory), "--json").stdout)
    assert as_json["ok"] is False and len(as_json["damaged"]) == 3
    # a restore verifies first: nothing is written
    target = root.parent / "restored"
    refused = azaion(root, "backup", "restore", str(directory), "--root", str(target))
    assert refused.returncode == 1 and "is damaged" in refused.stderr
    assert not (target / "queue-state" / "offset.yaml").exists() and not (target / "classes.json").exists()


def test_verify_and_restore_refuse_what_is_not_a_snapshot(root, tmp_path):
    populate(root)
    for ref in (str(tmp_path), "no-such-snapshot"):
        result = azaion(root, "backup", "verify", ref)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "no snapshot.json" in azaion(root, "backup", "verify", str(tmp_path)).stderr
    assert "azaion backup list" in azaion(root, "backup", "verify", "no-such-snapshot").stderr
    forged = tmp_path / "forged"
    (forged / FILES / "etc").mkdir(parents=True)
    (forged / FILES / "etc" / "passwd").write_text("x\n")
    (forged / SNAPSHOT_JSON).write_text(json.dumps({"kind": "azaion-backup", "format": 1, "files": [
        {"path": "../etc/passwd", "size": 2, "sha256": hashlib.sha256(b"x\n").hexdigest()}]}))
    result = azaion(root, "backup", "restore", str(forged), "--root", str(tmp_path / "new"))
    assert result.returncode == 1 and "../etc/passwd: not a place a backup restores to" in result.stderr
    (forged / SNAPSHOT_JSON).write_text(json.dumps({"kind": "azaion-backup", "format": 99, "files": []}))
    newer = azaion(root, "backup", "verify", str(forged))
    assert newer.returncode == 2 and "format 99" in newer.stderr


def test_an_interrupted_backup_never_looks_complete(root):
    layout = populate(root)
    layout.backups.mkdir()
    (layout.backups / ".tmp-20260101T000000Z" / FILES).mkdir(parents=True)  # a create that died
    (layout.backups / "20260101T000000Z").mkdir()  # no snapshot.json
    assert list_snapshots(load_settings()) == []
    layout.split_registry.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)  # damaged at the source
    result = azaion(root, "backup", "create")
    assert result.returncode == 1 and "splits.sqlite3" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in layout.backups.iterdir()) == [".lock", "20260101T000000Z"]  # no half snapshot
    assert list_snapshots(load_settings()) == []


def test_prune_keeps_the_newest(root):
    populate(root)
    locations = [create_snapshot(load_settings(), keep=0).location for _ in range(3)]
    assert [s.location for s in list_snapshots(load_settings())] == locations
    result = azaion(root, "backup", "prune", "--keep", "2")
    assert result.returncode == 0 and "removed 1 snapshot(s)" in result.stdout
    assert [s.location for s in list_snapshots(load_settings())] == locations[1:]
    assert not Path(locations[0]).exists()
    newest = json.loads(azaion(root, "backup", "create", "--keep", "1", "--json").stdout)
    assert [s.location for s in list_snapshots(load_settings())] == [newest["location"]]
    assert newest["pruned"] == [Path(p).name for p in locations[1:]]
    assert not [p for p in (root / "backups").iterdir() if p.name.startswith(".tmp-")]
    zero = azaion(root, "backup", "prune", "--keep", "0")
    assert zero.returncode == 2 and "Traceback" not in zero.stderr


def test_destination_inside_the_root_is_refused(root):
    populate(root)
    result = azaion(root, "backup", "create", "--to", str(root / "data"))
    assert result.returncode == 2 and "inside the data root" in result.stderr
    assert not (root / "data" / "snapshot.json").exists()


# ---------------------------------------------------------------- restore


def test_restore_into_an_empty_root_and_refusals(root, tmp_path):
    layout = populate(root)
    directory = Path(create_snapshot(load_settings(), keep=0).location)
    target = tmp_path / "new-root"
    result = azaion(root, "backup", "restore", str(directory), "--root", str(target))
    assert result.returncode == 0, result.stderr
    assert "resumes after offset 7" in result.stdout and "holds no annotation files" in result.stdout
    restored = Layout(PathSettings(root_dir=target))
    for path in STATE:
        assert sha256(target / path) == sha256(directory / FILES / path), path
    assert (restored.data.images).is_dir() and not (target / "config.yaml").exists()
    assert registry.production(restored, "azaion") == registry.production(layout, "azaion") == RUN
    marker = restored.restore_marker.read_text()
    assert "offset: 7" in marker
    # the same snapshot again: everything already in place
    again = azaion(root, "backup", "restore", str(directory), "--root", str(target), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["unchanged"] == len(STATE)

    # live state that differs: refused, named, nothing written
    write_offset_record(restored.offset_file, "azaion-annotations", 99)
    before = sha256(restored.split_registry)
    refused = azaion(root, "backup", "restore", str(directory), "--root", str(target))
    assert refused.returncode == 2 and str(restored.offset_file) in refused.stderr
    assert "differs from the snapshot's" in refused.stderr and "Traceback" not in refused.stderr
    assert sha256(restored.split_registry) == before
    # a live root (the original) holds history the snapshot lacks once another promotion happened
    registry.append_event(layout, {"action": "rollback", "run": RUN, "target": "azaion"})
    live = azaion(root, "backup", "restore", str(directory))
    assert live.returncode == 2 and "history.jsonl" in live.stderr


@pytest.mark.parametrize("lock,what", [("consumer", "annotation consumer"), ("training", "training run"),
                                       ("promotion", "promotion or rollback"), ("cycle", "training cycle")])
def test_restore_refuses_while_a_writer_holds_its_lock(root, tmp_path, lock, what):
    populate(root)
    directory = Path(create_snapshot(load_settings(), keep=0).location)
    target = tmp_path / "busy"
    busy = Layout(PathSettings(root_dir=target))
    with lock_held_by_another_process(busy.lock_file(lock), what) as holder:
        result = azaion(root, "backup", "restore", str(directory), "--root", str(target))
    assert result.returncode == 2, result.stderr
    assert f"another {what} is already running" in result.stderr and f"pid {holder.pid}" in result.stderr
    assert not busy.offset_file.exists() and not busy.split_registry.exists()


# ---------------------------------------------------------------- S3


class BackupBucket(MotoS3):
    """moto with IAM on: `backup` may list, read, write and delete in the bucket, `reader` only read."""

    def _provision(self) -> tuple[KeyPair, KeyPair]:
        import httpx

        self.client("s3").create_bucket(Bucket=self.bucket)
        iam = self.client("iam")
        pairs = []
        read = ["s3:GetObject", "s3:ListBucket"]
        for user, actions in (("reader", read), ("backup", [*read, "s3:PutObject", "s3:DeleteObject"])):
            iam.create_user(UserName=user)
            policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": [
                f"arn:aws:s3:::{self.bucket}", f"arn:aws:s3:::{self.bucket}/*"]}]}
            iam.put_user_policy(UserName=user, PolicyName=f"{user}-s3", PolicyDocument=json.dumps(policy))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            pairs.append(KeyPair(key["AccessKeyId"], key["SecretAccessKey"]))
        httpx.post(f"{self.url}/moto-api/reset-auth", content=b"0").raise_for_status()
        return pairs[0], pairs[1]  # MotoS3 keeps them as downloader, uploader

    @property
    def reader(self) -> KeyPair:
        return self.downloader

    @property
    def backup(self) -> KeyPair:
        return self.uploader


@pytest.fixture(scope="module")
def s3():
    server = BackupBucket(bucket="azaion-backups")
    yield server
    server.stop()


def s3_env(server: BackupBucket, keys: KeyPair | None = None) -> dict[str, str]:
    keys = keys or server.backup
    return {"BACKUP_S3_ENDPOINT": server.url, "BACKUP_S3_ACCESS_KEY": keys.access_key,
            "BACKUP_S3_SECRET_KEY": keys.secret_key}


def test_s3_destination_create_list_verify_restore_prune(root, tmp_path, s3):
    populate(root)
    env = {**s3_env(s3), "BACKUP_DESTINATION": "s3://azaion-backups/gpu-1/state"}
    made = [json.loads(azaion(root, "backup", "create", "--json", "--keep", "0", **env).stdout) for _ in range(2)]
    assert made[0]["location"].startswith("s3://azaion-backups/gpu-1/state/") and made[0]["files"] == len(STATE)
    keys = [o["Key"] for o in s3.client("s3", s3.backup).list_objects_v2(Bucket="azaion-backups")["Contents"]]
    assert f"gpu-1/state/{made[0]['name']}/{SNAPSHOT_JSON}" in keys
    assert f"gpu-1/state/{made[0]['name']}/{FILES}/datasets/splits.sqlite3" in keys
    assert not (root / "backups").exists() or not [p for p in (root / "backups").iterdir() if p.name != ".lock"]
    listed = json.loads(azaion(root, "backup", "list", "--json", **env).stdout)
    assert [s["name"] for s in listed] == [m["name"] for m in made]
    verified = azaion(root, "backup", "verify", made[0]["location"], **env)
    assert verified.returncode == 0 and "all intact" in verified.stdout, verified.stderr
    # restore straight from the bucket (by name: the configured destination is the bucket)
    target = tmp_path / "from-s3"
    restored = azaion(root, "backup", "restore", made[1]["name"], "--root", str(target), **env)
    assert restored.returncode == 0, restored.stderr
    for path in STATE:
        assert (target / path).is_file(), path
    assert not [p for p in (target / "backups").iterdir()]  # the download was cleaned up
    # damage in the bucket is found
    s3.client("s3", s3.backup).put_object(Bucket="azaion-backups", Key=f"gpu-1/state/{made[0]['name']}/{FILES}/"
                                            "models/published/models/history.jsonl", Body=b"forged\n")
    damaged = azaion(root, "backup", "verify", made[0]["location"], **env)
    assert damaged.returncode == 1 and "history.jsonl: " in damaged.stderr
    # an upload that never finished is not a snapshot
    s3.client("s3", s3.backup).put_object(Bucket="azaion-backups", Key="gpu-1/state/20300101T000000Z/files/x",
                                            Body=b"x")
    assert [s["name"] for s in json.loads(azaion(root, "backup", "list", "--json", **env).stdout)] == \
        [m["name"] for m in made]
    pruned = azaion(root, "backup", "prune", "--keep", "1", **env)
    assert pruned.returncode == 0 and made[0]["name"] in pruned.stdout, pruned.stderr
    remaining = {o["Key"].split("/")[2] for o in
                 s3.client("s3", s3.backup).list_objects_v2(Bucket="azaion-backups")["Contents"]}
    assert remaining == {made[1]["name"], "20300101T000000Z"}  # the young incomplete upload stays a day
    for result in (*made,):
        assert s3.backup.secret_key not in json.dumps(result)


def test_s3_destination_names_what_is_missing_or_refused(root, s3):
    populate(root)
    bucket = "s3://azaion-backups/refused"
    missing = azaion(root, "backup", "create", "--to", bucket)
    assert missing.returncode == 2 and "BACKUP_S3_ENDPOINT" in missing.stderr
    no_secret = azaion(root, "backup", "create", "--to", bucket, BACKUP_S3_ENDPOINT=s3.url,
                       BACKUP_S3_ACCESS_KEY=s3.reader.access_key)
    assert no_secret.returncode == 2 and "BACKUP_S3_SECRET_KEY is not set" in no_secret.stderr
    read_only = azaion(root, "backup", "create", "--to", bucket, **s3_env(s3, s3.reader))
    assert read_only.returncode == 1 and "AccessDenied" in read_only.stderr and "s3://azaion-backups/refused/" \
        in read_only.stderr
    assert s3.reader.secret_key not in read_only.stdout + read_only.stderr
    bad_name = azaion(root, "backup", "create", "--to", "s3://No_Such/x", **s3_env(s3))
    assert bad_name.returncode == 2 and "not an S3 bucket name" in bad_name.stderr
    wrong_keys = azaion(root, "backup", "list", "--at", bucket, **s3_env(s3, KeyPair(**{
        "access_key": BOOTSTRAP_KEYS["aws_access_key_id"], "secret_key": "wrong-secret"})))
    assert wrong_keys.returncode == 1 and "wrong-secret" not in wrong_keys.stderr


# ---------------------------------------------------------------- health


def test_health_backup_check(root, monkeypatch):
    populate(root)

    def check() -> dict:
        return run_health(None, HealthOptions(checks=("backup",))).as_dict()["checks"][0]

    none = check()
    assert none["status"] == "warn" and "no backup snapshot" in none["detail"]
    assert "azaion-backup.timer" in none["detail"]
    made = create_snapshot(load_settings(), keep=0)
    fresh = check()
    assert fresh["status"] == "ok" and fresh["data"]["newest"] == made.name and fresh["data"]["snapshots"] == 1
    monkeypatch.setenv("BACKUP_MAX_AGE_H", "0.0001")  # 0.36 s
    time.sleep(0.5)
    stale = check()
    assert stale["status"] == "warn" and "warning above 0.0001 h" in stale["detail"]
    monkeypatch.setenv("BACKUP_MAX_AGE_H", "0")
    assert check()["status"] == "n/a"
    cli = azaion(root, "health", "--check", "backup", "--json", BACKUP_MAX_AGE_H="36")
    assert cli.returncode == 0 and json.loads(cli.stdout)["checks"][0]["status"] == "ok"


# ---------------------------------------------------------------- end to end with the real consumer


def annotations(prefix: str, count: int, media_from: int) -> list[bytes]:
    """Created annotations (validators to data, operators to seed; 5 frames per source media), with
    a validation, a deletion and an edit after every tenth."""
    entries: list[bytes] = []
    for i in range(count):
        name = f"{prefix}{i:04d}"
        role = Role.Validator if i % 2 == 0 else Role.Operator
        entries.append(created(name, role, media=f"video-{media_from + i // 5:03d}.mp4",
                               boxes=((i % 17, 0.5, 0.5, 0.2, 0.2),)))
        if i % 10 == 9:
            entries.append(bulk(AnnotationStatus.Validated, f"{prefix}{i - 8:04d}", f"{prefix}{i - 6:04d}"))
            entries.append(bulk(AnnotationStatus.Deleted, f"{prefix}{i - 4:04d}"))
            entries.append(created(f"{prefix}{i - 2:04d}", Role.Validator, AnnotationStatus.Edited, image=None,
                                   media=f"video-{media_from + (i - 2) // 5:03d}.mp4",
                                   boxes=((3, 0.3, 0.3, 0.1, 0.1),)))
    return entries


def consumer_env(rabbit, stream: str, root: Path) -> dict[str, str]:
    return {**os.environ, **rabbit.env(), "RABBITMQ_QUEUE_NAME": stream, "AZAION_ROOT_DIR": str(root),
            "AZAION_LOG_FORMAT": "json"}


def committed(root: Path) -> int:
    import yaml

    path = root / "queue-state" / "offset.yaml"
    return yaml.safe_load(path.read_text())["offset"] if path.exists() else -1


def reference_of(tmp_path: Path, name: str, entries: list[bytes]) -> dict[str, str]:
    """The tree a replay of `entries` into a fresh root gives (minus rejection times), computed once."""
    if name not in REFERENCES:
        root = tmp_path / f"reference-{name}"
        replay_dump(Settings(paths=PathSettings(root_dir=root)), dump_of(tmp_path / f"{name}.dump", entries))
        REFERENCES[name] = comparable(root)
    return REFERENCES[name]


REFERENCES: dict[str, dict[str, str]] = {}


def splits_by_media(manifest: Path) -> dict[str, str]:
    media: dict[str, str] = {}
    for entry in json.loads(manifest.read_text())["files"]:
        assert media.setdefault(entry["source_media"], entry["split"]) == entry["split"]  # never straddles
    return media


def test_restore_end_to_end_with_the_consumer_running(rabbit, tmp_path):
    stream_name = f"backup-e2e-{os.getpid()}-{time.monotonic_ns()}"
    from azaion_training.dataset.form import form_dataset

    original, restored = tmp_path / "original", tmp_path / "restored"
    settings_of = {root: Settings(paths=PathSettings(root_dir=root)) for root in (original, restored)}
    Layout(settings_of[original].paths).init()
    rabbit_config = rabbit_settings(rabbit, stream_name)
    first = annotations("a", 40, media_from=0)
    later = [annotations(f"b{chunk}", 60, media_from=10 + 12 * chunk) for chunk in range(6)]
    everything = first + [entry for chunk in later for entry in chunk]
    reference = reference_of(tmp_path, "everything", everything)  # the whole stream replayed into a fresh tree
    publish(rabbit_config, first)
    log = tmp_path / "consumer.log"
    consumer = subprocess.Popen([str(AZAION_BIN), "queue", "consume"], env=consumer_env(rabbit, stream_name, original),
                                stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    publisher = threading.Thread(target=lambda: [publish(rabbit_config, chunk) or time.sleep(0.3) for chunk in later])
    try:
        wait_for(lambda: comparable(original) == reference_of(tmp_path, "first", first), 60, "the first batch",
                 poll_s=0.5)
        # files go into place before the group commit: wait for the index (formation reads the media there)
        index_db = Layout(settings_of[original].paths).index_db
        wait_for(lambda: len(read_source_media(index_db)) == 40, 30, "the first batch's commit")
        first_offset = committed(original)
        # state beside the annotations: a dataset (the split registry), runs and promotions
        first_dataset = form_dataset(settings_of[original], name="azaion-2026-01-01", progress=False)
        layout = Layout(settings_of[original].paths)
        for number, run in enumerate(("azaion-2026-01-01", "azaion-2026-01-02")):
            RunRecord(run=run, path=layout.models / run, status="finished", dataset=str(first_dataset.path),
                      metrics={"mAP50": 0.4 + number / 10}, started=f"2026-01-0{number + 1}T00:00:00+00:00",
                      parent=None if number == 0 else "azaion-2026-01-01").save()
            registry.append_event(layout, {"action": "promote", "run": run, "target": "azaion", "forced": False})
        registry.append_event(layout, {"action": "promote", "run": "azaion-2026-01-01",
                                       "target": f"local:{tmp_path / 'field'}", "forced": True})

        # more annotations stream in while the snapshot is taken
        publisher.start()
        wait_for(lambda: committed(original) > first_offset, 60, "the consumer to take up the second batch")
        made = create_snapshot(settings_of[original], with_data=True, keep=0)
        assert consumer.poll() is None  # taken while the consumer ran...
        publisher.join()
        wait_for(lambda: comparable(original) == reference, 120, "every message", poll_s=0.5)
    finally:
        if publisher.is_alive():
            publisher.join()
        consumer.send_signal(signal.SIGTERM)
        assert consumer.wait(timeout=30) == 0, log.read_text()
    final = committed(original)  # the files go into place before their offset is committed: read it now
    assert first_offset < made.offset < final  # ...in the middle of the stream
    original_dataset = form_dataset(settings_of[original], name="azaion-2026-02-01", progress=False)

    # restore into a new root; the consumer there resumes after the snapshot's offset, although the broker
    # stored the original consumer's last one, and replays the rest
    result = run_azaion("backup", "restore", made.location, "--root", str(restored), "--json",
                        env=consumer_env(rabbit, stream_name, restored))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["offset"] == made.offset and not json.loads(result.stdout)["warnings"]
    resumed = run_azaion("queue", "consume", "--exit-when-idle", "2", env=consumer_env(rabbit, stream_name, restored),
                         timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    # no loss, no duplicate: the same tree as the original and as a replay of the whole stream
    assert comparable(restored) == reference
    position = next(line for line in log_lines(resumed.stderr) if line["message"] == "resume position")["context"]
    assert position["restored"] is True and position["server"] == final and position["offset_file"] == made.offset
    assert cli_summary(resumed.stdout)["committed_offset"] == final
    assert not Layout(settings_of[restored].paths).restore_marker.exists()  # the broker follows the restored tree

    names = [p.stem for p in restored.glob("*/labels/*.txt")]
    assert len(names) == len(set(names)) == 40 + 6 * 60
    assert snapshot(restored, ("data", "data-seed", "data_deleted")) == snapshot(original,
                                                                                 ("data", "data-seed", "data_deleted"))

    # the same splits per source media, the first dataset's media where they were
    restored_dataset = form_dataset(settings_of[restored], name="azaion-2026-02-01", progress=False)
    assert splits_by_media(restored_dataset.manifest) == splits_by_media(original_dataset.manifest)
    first_splits = splits_by_media(first_dataset.manifest)
    assert {m: s for m, s in splits_by_media(restored_dataset.manifest).items() if m in first_splits} == first_splits
    assert restored_dataset.split_generation == original_dataset.split_generation == 1

    # the same versions and production models
    restored_layout = Layout(settings_of[restored].paths)
    assert registry.list_versions(restored_layout) == registry.list_versions(layout)
    for target in ("azaion", f"local:{tmp_path / 'field'}"):
        assert registry.production(restored_layout, target) == registry.production(layout, target) is not None
    assert registry.production(restored_layout, "azaion") == "azaion-2026-01-02"
    assert datetime.fromisoformat(json.loads((Path(made.location) / SNAPSHOT_JSON).read_text())["created"]) <= \
        datetime.now(UTC)
