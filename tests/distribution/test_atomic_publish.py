"""Atomic publish (parts under version-unique names, manifest switched last), monotonic manifest
versions and the no-downgrade rule of fetch-model and infer.

A real publisher (`azaion publish`, or registry.publish_recorded as a promotion runs it, in a
subprocess) is ended with os._exit after each of its 12 steps by the test-only hook
AZAION_FAULT_AFTER (distribution/faults.py), and also SIGKILLed at spread moments of a bigger
publish: after each, `azaion fetch-model` yields exactly the old or the new model, never an
error."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from azaion_training.distribution.faults import FAULT_ENV, FAULT_EXIT
from azaion_training.distribution.fetch import DowngradeRefused, fetch_model_bytes
from azaion_training.distribution.manifest import UNVERSIONED_FORMAT, ManifestRefused, mac_key, sign
from azaion_training.distribution.publish import publish_model
from azaion_training.layout import Layout
from azaion_training.security.crypto import encrypt
from azaion_training.security.keys import model_key
from azaion_training.security.split import split
from azaion_training.settings import load_settings
from tests.conftest import run_azaion
from tests.distribution.conftest import MODEL_SECRET

pytestmark = pytest.mark.slow  # kills real publisher processes at every step

NAME = "azaion.onnx"
# every step of publish_model, in order; the manifest is switched by the step named "switched"
STEPS = ("read-current", "encrypted", "big-uploaded", "small-uploaded", "switched", "local-copy", "plain-big",
         "plain-small", "pruned")
BEFORE_SWITCH = STEPS[:STEPS.index("switched")]
RECORDED_PUBLISHER = ("import sys; from pathlib import Path; from azaion_training.settings import load_settings; "
                      "from azaion_training.layout import Layout; "
                      "from azaion_training.lifecycle.registry import publish_recorded; s = load_settings(); "
                      "publish_recorded(s, Layout(s.paths), Path(sys.argv[1]), sys.argv[2], "
                      "{'action': 'promote', 'run': 'run-b'})")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def keyed(root, monkeypatch):
    monkeypatch.setenv("MODEL_ENCRYPTION_KEY", MODEL_SECRET)
    return load_settings()


@pytest.fixture
def models(tmp_path) -> tuple[Path, Path]:
    old, new = tmp_path / "old" / NAME, tmp_path / "new" / NAME
    for path, size in ((old, 40_000), (new, 50_000)):
        path.parent.mkdir()
        path.write_bytes(os.urandom(size))
    return old, new


def fetched_sha(target: str, out: Path, *extra: str, env: dict | None = None) -> str:
    """`azaion fetch-model` as a device runs it; fails the test on any error."""
    result = run_azaion("fetch-model", NAME, "--target", target, "--out", str(out), *extra, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return sha(out.read_bytes())


def killed_publish(file: Path, target: str, step: str, env: dict | None = None) -> None:
    result = run_azaion("publish", "--file", str(file), "--target", target, env={**(env or {}), FAULT_ENV: step})
    assert result.returncode == FAULT_EXIT, f"{step}: {result.returncode} {result.stderr[-2000:]}"


def test_a_publisher_killed_after_any_step_leaves_the_old_or_the_new_model(keyed, models, tmp_path):
    old, new = models
    for step in STEPS:
        store = tmp_path / f"store-{step}"
        target = f"local:{store}"
        publish_model(keyed, old, target=target)
        killed_publish(new, target, step)
        expected = old if step in BEFORE_SWITCH else new
        assert fetched_sha(target, tmp_path / f"{step}.onnx") == sha(expected.read_bytes()), step
        manifest = json.loads((store / "api/models" / f"{NAME}.manifest.json").read_text())
        assert manifest["version"] == (1 if step in BEFORE_SWITCH else 2), step
    # the steps a promotion adds around the publish (registry.publish_recorded): intent, history line
    for step, expected in (("intent-written", old), ("published", new), ("history-appended", new)):
        store = tmp_path / f"store-{step}"
        target = f"local:{store}"
        publish_model(keyed, old, target=target)
        result = subprocess.run([sys.executable, "-c", RECORDED_PUBLISHER, str(new), target],
                                env={**os.environ, FAULT_ENV: step}, capture_output=True, text=True, timeout=120)
        assert result.returncode == FAULT_EXIT, result.stderr[-2000:]
        assert fetched_sha(target, tmp_path / f"{step}.onnx") == sha(expected.read_bytes()), step
        (Layout(keyed.paths).published_dir("models") / "pending.json").unlink()  # recovery: tests/lifecycle
    # publishing again after a crash before the switch works; a version that left parts is not reused
    for step, version in (("encrypted", 2), ("small-uploaded", 3)):
        store = tmp_path / f"store-{step}"
        result = publish_model(keyed, new, target=f"local:{store}")
        assert result.version == version and fetch_model_bytes(keyed, NAME, target=f"local:{store}")[0] == \
            new.read_bytes()


def test_spread_sigkills_of_a_bigger_publish_never_break_a_fetch(keyed, tmp_path):
    """Time-based kills land inside the writes too (mid-copy of the big part, mid-rename)."""
    old, new = tmp_path / "old.onnx", tmp_path / "new.onnx"
    old.write_bytes(os.urandom(3_000_000))
    new.write_bytes(os.urandom(24_000_000))
    outcomes = set()
    for number, delay in enumerate((0.05, 0.25, 0.45, 0.65, 0.9, 1.3)):
        store = tmp_path / f"store-{number}"
        target = f"local:{store}"
        publish_model(keyed, old, name=NAME, target=target)
        publisher = subprocess.Popen([sys.executable, "-c", (
            "import sys; from pathlib import Path; from azaion_training.settings import load_settings; "
            "from azaion_training.distribution.publish import publish_model; "
            "publish_model(load_settings(), Path(sys.argv[1]), name=sys.argv[2], target=sys.argv[3])"),
            str(new), NAME, target], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        publisher.send_signal(signal.SIGKILL)
        publisher.wait(timeout=30)
        got = fetched_sha(target, tmp_path / f"kill-{number}.onnx")
        assert got in (sha(old.read_bytes()), sha(new.read_bytes())), delay
        outcomes.add(got == sha(new.read_bytes()))
    assert outcomes  # (which delays fall before the switch depends on the machine)


@pytest.mark.parametrize("step", ["small-uploaded", "switched", "plain-big"])
def test_killed_publishes_to_the_api_and_cdn(azaion_settings, azaion_env, api, s3, models, tmp_path, step):
    old, new = models
    publish_model(azaion_settings, old)
    killed_publish(new, "azaion", step, env=azaion_env)
    expected = old if step in BEFORE_SWITCH else new
    assert fetched_sha("azaion", tmp_path / "f.onnx", env=azaion_env) == sha(expected.read_bytes())
    publish_model(azaion_settings, new)  # the next publish completes what the crash left
    assert fetch_model_bytes(azaion_settings, NAME)[0] == new.read_bytes()


def test_versions_count_up_and_only_the_previous_versions_parts_are_kept(keyed, models, tmp_path):
    old, new = models
    store = tmp_path / "store"
    for number in range(1, 5):
        result = publish_model(keyed, old if number % 2 else new, target=f"local:{store}")
        assert result.version == number and result.manifest["version"] == number
    api_dir, cdn_dir = store / "api/models", store / "cdn/models"
    assert sorted(p.name for p in cdn_dir.iterdir()) == [f"{NAME}.big", f"{NAME}.v3.big", f"{NAME}.v4.big"]
    assert sorted(p.name for p in api_dir.iterdir()) == [f"{NAME}.manifest.json", f"{NAME}.small",
                                                          f"{NAME}.v3.small", f"{NAME}.v4.small"]
    assert (api_dir / f"{NAME}.small").read_bytes() == (api_dir / f"{NAME}.v4.small").read_bytes()


def test_an_edited_version_fails_the_mac(keyed, models, tmp_path):
    old, _ = models
    store = tmp_path / "store"
    publish_model(keyed, old, target=f"local:{store}")
    publish_model(keyed, old, target=f"local:{store}")
    path = store / "api/models" / f"{NAME}.manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["version"] == 2
    for forged in (1, 9):
        path.write_text(json.dumps({**manifest, "version": forged}))
        with pytest.raises(ManifestRefused, match="fails its authentication check"):
            fetch_model_bytes(keyed, NAME, target=f"local:{store}")


def _fetch_cli(target: str, out: Path, *extra: str):
    return run_azaion("fetch-model", NAME, "--target", target, "--out", str(out), *extra)


def test_an_older_manifest_put_back_is_refused_unless_allowed(keyed, models, tmp_path):
    old, new = models
    store = tmp_path / "store"
    target = f"local:{store}"
    manifest_path = store / "api/models" / f"{NAME}.manifest.json"
    publish_model(keyed, old, target=target)
    first_manifest = manifest_path.read_bytes()
    assert fetched_sha(target, tmp_path / "1.onnx") == sha(old.read_bytes())
    publish_model(keyed, new, target=target)
    assert fetched_sha(target, tmp_path / "2.onnx") == sha(new.read_bytes())
    seen = json.loads(Layout(keyed.paths).seen_versions.read_text())
    assert seen["versions"][f"local:{os.path.realpath(store)}"] == {f"models/{NAME}": 2}

    manifest_path.write_bytes(first_manifest)  # authentic, and its parts are still there: a replay
    refused = _fetch_cli(target, tmp_path / "r.onnx")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "version 1, older than version 2" in refused.stderr and "--allow-downgrade" in refused.stderr
    assert not (tmp_path / "r.onnx").exists()
    # the same place spelled another way is the same target
    alias = f"local:{store}/../{store.name}/"
    assert _fetch_cli(alias, tmp_path / "r.onnx").returncode == 1
    with pytest.raises(DowngradeRefused):
        fetch_model_bytes(keyed, NAME, target=target)

    assert fetched_sha(target, tmp_path / "a.onnx", "--allow-downgrade") == sha(old.read_bytes())
    assert fetched_sha(target, tmp_path / "b.onnx") == sha(old.read_bytes())  # accepted once: now the newest seen

    publish_model(keyed, new, target=target)  # version 3
    assert fetched_sha(target, tmp_path / "3.onnx") == sha(new.read_bytes())
    manifest_path.write_bytes(first_manifest)
    infer = run_azaion("infer", str(old), "--model", NAME, "--from", target, "--out", str(tmp_path / "infer"))
    assert infer.returncode == 1 and "Traceback" not in infer.stderr
    assert "version 1, older than version 3" in infer.stderr, infer.stderr
    assert "--allow-downgrade" in infer.stderr
    allowed = run_azaion("infer", str(old), "--model", NAME, "--from", target, "--out", str(tmp_path / "infer"),
                         "--allow-downgrade")
    assert "older than" not in allowed.stderr and "accepting an older model version" in allowed.stderr


def test_a_rollback_is_a_new_version_and_is_not_refused(keyed, models, tmp_path):
    old, new = models
    target = f"local:{tmp_path / 'store'}"
    publish_model(keyed, old, target=target)
    assert fetched_sha(target, tmp_path / "1.onnx") == sha(old.read_bytes())
    publish_model(keyed, new, target=target)
    assert fetched_sha(target, tmp_path / "2.onnx") == sha(new.read_bytes())
    assert publish_model(keyed, old, target=target).version == 3  # the older model, published again
    assert fetched_sha(target, tmp_path / "3.onnx") == sha(old.read_bytes())


def test_an_unversioned_manifest_reads_as_version_0(keyed, models, tmp_path):
    """Format 2 (before versions): plain part names, no version; fetched as version 0, so a device
    that has seen a versioned publish refuses it."""
    old, new = models
    store = tmp_path / "store"
    target = f"local:{store}"
    data = old.read_bytes()
    ciphertext = encrypt(data, model_key(keyed))
    small, big = split(ciphertext)
    (store / "api/models").mkdir(parents=True)
    (store / "cdn/models").mkdir(parents=True)
    (store / "api/models" / f"{NAME}.small").write_bytes(small)
    (store / "cdn/models" / f"{NAME}.big").write_bytes(big)
    legacy = sign({"format": UNVERSIONED_FORMAT, "name": NAME, "folder": "models", "source_file": NAME,
                   "source_run": None, "created": "2026-01-01T00:00:00+00:00",
                   "plaintext": {"size": len(data), "sha256": sha(data)},
                   "ciphertext": {"size": len(ciphertext), "sha256": sha(ciphertext)},
                   "small": {"name": f"{NAME}.small", "size": len(small), "sha256": sha(small)},
                   "big": {"name": f"{NAME}.big", "size": len(big), "sha256": sha(big)}}, mac_key(keyed))
    manifest_path = store / "api/models" / f"{NAME}.manifest.json"
    manifest_path.write_text(json.dumps(legacy))
    fetched = run_azaion("fetch-model", NAME, "--target", target, "--out", str(tmp_path / "0.onnx"))
    assert fetched.returncode == 0 and "version 0" in fetched.stdout
    assert publish_model(keyed, new, target=target).version == 1
    assert fetched_sha(target, tmp_path / "1.onnx") == sha(new.read_bytes())
    manifest_path.write_text(json.dumps(legacy))
    assert _fetch_cli(target, tmp_path / "x.onnx").returncode == 1


def test_a_tampered_served_manifest_is_published_over_with_a_higher_version(keyed, models, tmp_path):
    old, new = models
    store = tmp_path / "store"
    target = f"local:{store}"
    for _ in range(3):
        publish_model(keyed, old, target=target)
    path = store / "api/models" / f"{NAME}.manifest.json"
    path.write_text(path.read_text().replace('"source_run": null', '"source_run": "forged"'))
    result = publish_model(keyed, new, target=target)
    assert result.version == 4 and fetch_model_bytes(keyed, NAME, target=target)[0] == new.read_bytes()


def test_the_local_copy_of_the_manifest_lives_under_published_dir(keyed, models, tmp_path):
    old, _ = models
    result = publish_model(keyed, old, target=f"local:{tmp_path / 'store'}")
    assert result.manifest_path == Layout(keyed.paths).published_dir("models") / f"{NAME}.manifest.json"
    assert json.loads(result.manifest_path.read_text()) == result.manifest
