"""Supply chain of checkpoints: weights-only loading wherever a checkpoint comes from outside
(`weights pull`, TRAINING_MODEL, `train --from`, resume), and `weights pull`'s hash, redirect,
size, deadline and URL rules, against real local HTTP servers and real Ultralytics checkpoints.

The malicious checkpoint is a real `torch.save` zip whose pickle calls os.system("touch
MARKER") when unpickled the ordinary way (the first test proves it); every refusal below asserts
the marker was never created."""

import hashlib
import http.server
import json
import os
import shlex
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from azaion_training.errors import InputError, OperationFailed
from azaion_training.settings import load_settings
from azaion_training.training.weights import (
    CheckpointRefused,
    checked_start_weights,
    file_url,
    load_weights_only,
    pull,
    shipped_lock,
)
from tests.conftest import REPO, run_azaion

NAME = "yolo26n.pt"


class _RunsCode:
    """Unpickling this runs a shell command: what a hostile .pt would do."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real Ultralytics checkpoint (yolo26n from its yaml, saved as Ultralytics saves models)."""
    from ultralytics import YOLO

    path = tmp_path_factory.mktemp("checkpoint") / NAME
    YOLO("yolo26n.yaml").save(path)
    return path


@pytest.fixture(scope="module")
def other_checkpoint(checkpoint, tmp_path_factory) -> Path:
    """Another valid checkpoint (the same model with one more entry): different bytes, loads fine."""
    import torch

    from azaion_training.training.weights import load_weights_only

    path = tmp_path_factory.mktemp("other") / NAME
    torch.save({**load_weights_only(checkpoint, "fixture"), "note": "a different file"}, path)
    return path


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "marker-the-pickle-ran"


@pytest.fixture
def malicious(tmp_path, marker) -> Path:
    import torch

    path = tmp_path / "evil" / NAME
    path.parent.mkdir()
    torch.save({"model": _RunsCode(f"touch {shlex.quote(str(marker))}"), "date": "2026-01-01"}, path)
    return path


class _Mirror(http.server.SimpleHTTPRequestHandler):
    """Serves its directory; `redirects` maps a path to a Location; /trickle/NAME sends NAME
    slowly; /nolength/NAME sends it without Content-Length. Records every request line path."""

    requests: list[str]
    redirects: dict[str, str]

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.requests.append(self.path)
        path = self.path.split("?", 1)[0]
        if path in self.redirects:
            self.send_response(302)
            self.send_header("Location", self.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        for prefix in ("/trickle/", "/nolength/"):
            if path.startswith(prefix):
                data = (Path(self.directory) / path.removeprefix(prefix)).read_bytes()
                self.send_response(200)
                if prefix == "/trickle/":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    for start in range(0, len(data), 64 if prefix == "/trickle/" else 1 << 16):
                        self.wfile.write(data[start:start + (64 if prefix == "/trickle/" else 1 << 16)])
                        self.wfile.flush()
                        if prefix == "/trickle/":
                            time.sleep(0.05)
                except OSError:  # the client gave up, as it should
                    pass
                self.close_connection = True
                return
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


class MirrorServer:
    def __init__(self, folder: Path):
        self.requests: list[str] = []
        self.redirects: dict[str, str] = {}
        handler = type("Handler", (_Mirror,), {"requests": self.requests, "redirects": self.redirects})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def folder(tmp_path, checkpoint) -> Path:
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / NAME).write_bytes(checkpoint.read_bytes())
    return folder


@pytest.fixture
def mirror(folder):
    server = MirrorServer(folder)
    yield server
    server.stop()


@pytest.fixture
def other_mirror(folder):
    """A second server: reached as http://localhost:PORT it is another host than 127.0.0.1."""
    server = MirrorServer(folder)
    yield server
    server.stop()


def _settings(monkeypatch, base_url: str, **env: str):
    monkeypatch.setenv("WEIGHTS_BASE_URL", base_url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def _stored(layout) -> list[str]:
    """Files in models/base/ besides the recorded-hash lock (temp files included)."""
    if not layout.base_weights.is_dir():
        return []
    return sorted(p.name for p in layout.base_weights.iterdir() if p != layout.base_weights_lock)


def _recorded(layout) -> dict:
    path = layout.base_weights_lock
    return json.loads(path.read_text())["weights"] if path.is_file() else {}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------- weights-only loading


def test_the_malicious_fixture_really_runs_code_when_unpickled(malicious, marker):
    """The reproduction: an ordinary (Ultralytics default) load of this file runs its command."""
    import torch

    assert not marker.exists()
    torch.load(malicious, weights_only=False)  # what `torch_safe_load(..., safe_only=False)` does  # nosec B614
    assert marker.exists()


def test_load_weights_only_refuses_code_and_accepts_real_checkpoints(malicious, marker, checkpoint, tiny_model):
    with pytest.raises(CheckpointRefused, match=r"it needs posix\.system to load.*Nothing in it was run") as refused:
        load_weights_only(malicious, "a test file")
    assert "a test file: refused" in str(refused.value)
    assert not marker.exists()
    assert load_weights_only(checkpoint, "yolo26n")["model"] is not None
    # a checkpoint written by a real (plain Ultralytics) training run, with its training state
    assert load_weights_only(tiny_model, "best.pt")["train_args"]["epochs"] == 2


def test_pull_of_a_malicious_checkpoint_is_refused_and_runs_nothing(root, layout, mirror, folder, malicious, marker,
                                                                     monkeypatch):
    (folder / NAME).write_bytes(malicious.read_bytes())
    with pytest.raises(OperationFailed, match="posix.system") as refused:
        pull(_settings(monkeypatch, mirror.url), NAME, trust_on_first_use=True)
    assert "refused" in str(refused.value)
    assert not marker.exists()
    assert _stored(layout) == [] and _recorded(layout) == {}
    done = run_azaion("weights", "pull", NAME, "--trust-on-first-use", env={"WEIGHTS_BASE_URL": mirror.url})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "not on Ultralytics' weights-only allow-list" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not marker.exists() and _stored(layout) == []


def test_training_model_pointing_at_a_malicious_file_is_refused(root, layout, malicious, marker):
    from tests.dataset.conftest import add_annotations

    add_annotations(layout, 4)
    env = {"TRAINING_MODEL": str(malicious), "TRAINING_DEVICE": "cpu", "TRAINING_IMGSZ": "64", "COLUMNS": "400"}
    preflight = run_azaion("train", "--preflight", "--min-free-gb", "0", env=env)
    assert preflight.returncode == 1, preflight.stdout + preflight.stderr
    assert f"TRAINING_MODEL {malicious}: refused" in preflight.stdout
    trained = run_azaion("train", "--epochs", "1", env=env)
    assert trained.returncode == 2, trained.stdout + trained.stderr
    assert f"TRAINING_MODEL {malicious}: refused, it needs posix.system" in trained.stderr
    for result in (preflight, trained):
        assert "Traceback" not in result.stdout + result.stderr
    assert not marker.exists()
    assert not any(layout.datasets.glob("azaion-*")) and not any(layout.models.glob("azaion-*"))  # refused first


def test_fine_tune_parent_that_is_malicious_is_refused(root, layout, malicious, marker):
    from tests.dataset.conftest import add_annotations

    add_annotations(layout, 4)
    env = {"TRAINING_MODEL": "yolo26n.yaml", "TRAINING_DEVICE": "cpu", "TRAINING_IMGSZ": "64"}
    done = run_azaion("train", "--from", str(malicious), "--epochs", "1", env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"--from {malicious}: refused" in done.stderr and "Traceback" not in done.stdout + done.stderr
    assert not marker.exists()
    assert not any(layout.models.glob("azaion-*"))


def test_resume_checks_last_pt_weights_only(tmp_path, malicious, marker):
    from azaion_training.training.train import resumable_checkpoint

    run_dir = tmp_path / "azaion-2026-01-01"
    (run_dir / "weights").mkdir(parents=True)
    (run_dir / "weights" / "last.pt").write_bytes(malicious.read_bytes())
    with pytest.raises(CheckpointRefused, match="resume of azaion-2026-01-01.*refused, it needs posix.system"):
        resumable_checkpoint(run_dir)
    assert not marker.exists()


def test_training_loads_the_checked_copy_not_the_file_that_was_checked(tmp_path, checkpoint, malicious, marker):
    """The bytes Ultralytics loads are the bytes that passed the check: swapping the source
    afterwards changes nothing."""
    from ultralytics import YOLO

    source = tmp_path / "shared" / NAME
    source.parent.mkdir()
    source.write_bytes(checkpoint.read_bytes())
    run_dir = tmp_path / "run"
    start = checked_start_weights(str(source), run_dir, "TRAINING_MODEL")
    assert start == str(run_dir / "start.pt") and Path(start).read_bytes() == checkpoint.read_bytes()
    source.write_bytes(malicious.read_bytes())  # replaced after the check
    assert sum(p.numel() for p in YOLO(start).model.parameters()) > 2_000_000
    assert not marker.exists()
    assert sorted(p.name for p in run_dir.iterdir()) == ["start.pt"]  # no temp file left
    fresh = tmp_path / "fresh-run"
    with pytest.raises(CheckpointRefused):
        checked_start_weights(str(source), fresh, "--from")
    assert not fresh.exists() and not marker.exists()  # a refused copy leaves nothing, not even the directory
    assert checked_start_weights("yolo26n.yaml", fresh, "TRAINING_MODEL") == "yolo26n.yaml"  # nothing to unpickle


def test_base_weights_changed_after_their_pull_are_refused_by_training(root, layout, mirror, other_checkpoint,
                                                                       tmp_path, monkeypatch):
    pulled = pull(_settings(monkeypatch, mirror.url), NAME, trust_on_first_use=True)
    assert checked_start_weights(str(pulled.path), tmp_path / "ok", "TRAINING_MODEL", layout)
    pulled.path.write_bytes(other_checkpoint.read_bytes())  # still a valid checkpoint, but not the pulled one
    with pytest.raises(CheckpointRefused, match=f"differs from the sha256 {pulled.sha256} expected by "
                                                f".*weights.lock.json.*azaion weights pull {NAME}"):
        checked_start_weights(str(pulled.path), tmp_path / "changed", "TRAINING_MODEL", layout)


# ---------------------------------------------------------------------------------------- hashes


def test_the_repository_lock_is_the_shipped_lock_and_pins_nothing_unverified():
    shipped = REPO / "src" / "azaion_training" / "resources" / "weights.lock"
    assert (REPO / "weights.lock").read_bytes() == shipped.read_bytes()
    assert shipped_lock() == {}  # see docs/training.md: no hash of the upstream files was verified here


def test_no_known_hash_without_trust_on_first_use_is_refused_before_downloading(root, layout, mirror, monkeypatch):
    with pytest.raises(InputError, match="no known sha256.*--sha256 HEX.*--trust-on-first-use"):
        pull(_settings(monkeypatch, mirror.url), NAME)
    assert mirror.requests == [] and _stored(layout) == []
    done = run_azaion("weights", "pull", NAME, env={"WEIGHTS_BASE_URL": mirror.url})
    assert done.returncode == 2 and "no known sha256" in done.stderr and "Traceback" not in done.stderr
    bad = run_azaion("weights", "pull", NAME, "--sha256", "abc", env={"WEIGHTS_BASE_URL": mirror.url})
    assert bad.returncode == 2 and "expected the file's SHA-256 as 64 hex digits" in bad.stderr
    assert mirror.requests == []


def test_trust_on_first_use_records_the_hash_and_later_pulls_must_match(root, layout, mirror, folder, checkpoint,
                                                                         other_checkpoint, monkeypatch):
    settings = _settings(monkeypatch, mirror.url)
    first = pull(settings, NAME, trust_on_first_use=True)
    assert first.trust == "trust-on-first-use" and first.sha256 == _sha256(checkpoint)
    entry = _recorded(layout)[NAME]
    assert (entry["sha256"], entry["size"], entry["source"]) == (first.sha256, first.size, f"{mirror.url}/{NAME}")
    first.path.unlink()  # gone; meanwhile the mirror serves another file under the same name
    (folder / NAME).write_bytes(other_checkpoint.read_bytes())
    with pytest.raises(OperationFailed, match=f"differs from the sha256 {first.sha256} expected by .*weights.lock"):
        pull(settings, NAME, trust_on_first_use=True)  # the flag does not override a recorded hash
    assert _stored(layout) == [] and _recorded(layout)[NAME]["sha256"] == first.sha256


def test_sha256_option_mismatch_stores_nothing_and_a_match_is_stored(root, layout, mirror, checkpoint, monkeypatch):
    settings = _settings(monkeypatch, mirror.url)
    with pytest.raises(OperationFailed, match="differs from the sha256 0{64} expected by --sha256; nothing was stored"):
        pull(settings, NAME, sha256="0" * 64)
    assert _stored(layout) == [] and _recorded(layout) == {}
    result = pull(settings, NAME, sha256=_sha256(checkpoint).upper())
    assert result.downloaded and result.trust == "--sha256" and result.path.read_bytes() == checkpoint.read_bytes()
    assert _recorded(layout)[NAME]["sha256"] == _sha256(checkpoint)
    with pytest.raises(OperationFailed, match="already present, but its sha256"):
        pull(settings, NAME, sha256="1" * 64)  # the file there is checked too


# ---------------------------------------------------------------------------------------- transport


def test_redirects_stay_on_the_host_unless_allowed(root, layout, mirror, other_mirror, checkpoint, monkeypatch):
    mirror.redirects["/same/yolo26n.pt"] = f"/{NAME}"
    mirror.redirects["/away/yolo26n.pt"] = f"http://localhost:{other_mirror.port}/{NAME}?sig=redirect-secret"
    same = pull(_settings(monkeypatch, f"{mirror.url}/same"), NAME, trust_on_first_use=True)
    assert same.source == f"{mirror.url}/{NAME}"  # where the bytes came from, not the first URL
    same.path.unlink()
    with pytest.raises(OperationFailed, match="redirected to another host 'localhost'.*WEIGHTS_ALLOW_REDIRECT_HOSTS"):
        pull(_settings(monkeypatch, f"{mirror.url}/away"), NAME)
    assert other_mirror.requests == [] and _stored(layout) == []
    allowed = pull(_settings(monkeypatch, f"{mirror.url}/away", WEIGHTS_ALLOW_REDIRECT_HOSTS="example.org, localhost"),
                   NAME)
    assert allowed.source == f"http://localhost:{other_mirror.port}/{NAME}"  # no query: no signature shown
    assert allowed.path.read_bytes() == checkpoint.read_bytes()
    assert other_mirror.requests == [f"/{NAME}?sig=redirect-secret"]


def test_redirect_loops_end(root, layout, mirror, monkeypatch):
    mirror.redirects["/loop/yolo26n.pt"] = "/loop/yolo26n.pt"
    with pytest.raises(OperationFailed, match="more than 5 redirects"):
        pull(_settings(monkeypatch, f"{mirror.url}/loop"), NAME, trust_on_first_use=True)
    assert len(mirror.requests) == 6 and _stored(layout) == []


def test_size_cap_before_and_while_reading(root, layout, mirror, checkpoint, monkeypatch):
    cap = str(checkpoint.stat().st_size - 1)
    with pytest.raises(OperationFailed, match=f"announced, more than WEIGHTS_MAX_BYTES={cap}"):
        pull(_settings(monkeypatch, mirror.url, WEIGHTS_MAX_BYTES=cap), NAME, trust_on_first_use=True)
    assert _stored(layout) == []
    with pytest.raises(OperationFailed, match=f"more than WEIGHTS_MAX_BYTES={cap} bytes"):  # no Content-Length
        pull(_settings(monkeypatch, f"{mirror.url}/nolength", WEIGHTS_MAX_BYTES=cap), NAME, trust_on_first_use=True)
    assert _stored(layout) == []
    ok = pull(_settings(monkeypatch, f"{mirror.url}/nolength", WEIGHTS_MAX_BYTES=str(int(cap) + 1)), NAME,
              trust_on_first_use=True)
    assert ok.path.read_bytes() == checkpoint.read_bytes()


def test_deadline_ends_a_trickling_download(root, layout, mirror, monkeypatch):
    started = time.monotonic()
    with pytest.raises(OperationFailed, match="not done within WEIGHTS_DEADLINE_S=1 s"):
        pull(_settings(monkeypatch, f"{mirror.url}/trickle", WEIGHTS_DEADLINE_S="1"), NAME, trust_on_first_use=True)
    assert time.monotonic() - started < 5  # the whole file would take minutes at this pace
    assert _stored(layout) == []


def test_a_query_token_stays_in_place_and_is_never_shown(root, layout, mirror, monkeypatch):
    token = "tok-3f9a1c77e2"
    assert file_url(f"https://m.example/w/?token={token}", NAME) == f"https://m.example/w/{NAME}?token={token}"
    base = f"{mirror.url}/?token={token}"
    result = pull(_settings(monkeypatch, base), NAME, trust_on_first_use=True)
    assert mirror.requests == [f"/{NAME}?token={token}"]
    assert result.source == f"{mirror.url}/{NAME}" and token not in json.dumps(result.to_dict())
    assert token not in layout.base_weights_lock.read_text()
    result.path.unlink()
    done = run_azaion("weights", "pull", NAME, "--json", env={"WEIGHTS_BASE_URL": base})
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["source"] == f"{mirror.url}/{NAME}"
    missing = run_azaion("weights", "pull", "yolo99x.pt", "--trust-on-first-use", env={"WEIGHTS_BASE_URL": base})
    assert missing.returncode == 2 and "HTTP 404" in missing.stderr
    for output in (done.stdout, done.stderr, missing.stdout, missing.stderr):
        assert token not in output


def test_a_file_already_present_is_checked_or_recorded_never_downloaded(root, layout, mirror, checkpoint, monkeypatch):
    settings = _settings(monkeypatch, mirror.url)
    layout.base_weights.mkdir(parents=True)
    (layout.base_weights / NAME).write_bytes(checkpoint.read_bytes())  # put there by hand, before hashes existed
    unchecked = pull(settings, NAME)
    assert (unchecked.downloaded, unchecked.trust, unchecked.sha256) == (False, "unchecked", _sha256(checkpoint))
    assert _recorded(layout) == {}
    recorded = pull(settings, NAME, trust_on_first_use=True)
    assert recorded.trust == "trust-on-first-use" and _recorded(layout)[NAME]["sha256"] == _sha256(checkpoint)
    assert pull(settings, NAME).trust == "recorded"
    assert mirror.requests == []
