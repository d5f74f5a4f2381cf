"""`azaion weights pull` against a local HTTP mirror, and training's resolution of a bare
TRAINING_MODEL into models/base/ (the supply-chain rules: test_weights_supply_chain.py)."""

import http.server
import threading
from functools import partial
from pathlib import Path

import pytest

from azaion_training.errors import ConfigError, InputError, OperationFailed
from azaion_training.settings import load_settings
from azaion_training.training.weights import pull, resolve_training_model, without_credentials
from tests.conftest import run_azaion

NAME = "yolo26n.pt"


class _MirrorHandler(http.server.SimpleHTTPRequestHandler):
    """Serves its directory; under /cut/ it announces the whole file, sends half and hangs up."""

    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if self.path.startswith("/cut/"):
            data = (Path(self.directory) / self.path.removeprefix("/cut/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real Ultralytics checkpoint (yolo26n from its yaml, saved as Ultralytics saves models)."""
    from ultralytics import YOLO

    path = tmp_path_factory.mktemp("checkpoint") / NAME
    YOLO("yolo26n.yaml").save(path)
    return path


@pytest.fixture
def mirror(tmp_path, checkpoint):
    """A local HTTP server over a folder holding the checkpoint, a truncated copy, junk and a
    torch file that is not a checkpoint; yields (base URL, folder, requests seen)."""
    import torch

    folder = tmp_path / "mirror"
    folder.mkdir()
    data = checkpoint.read_bytes()
    (folder / NAME).write_bytes(data)
    (folder / "half.pt").write_bytes(data[: len(data) // 2])
    (folder / "junk.pt").write_bytes(b"<html>not found</html>" * 100)
    torch.save({"weights": torch.zeros(3)}, folder / "tensors.pt")
    seen: list[str] = []
    handler = type("Handler", (_MirrorHandler,), {"requests": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder, seen
    server.shutdown()
    server.server_close()


def _settings(monkeypatch, base_url: str):
    monkeypatch.setenv("WEIGHTS_BASE_URL", base_url)
    return load_settings()


def _leftovers(layout) -> list[str]:
    """What models/base/ holds besides the lock of recorded hashes."""
    if not layout.base_weights.is_dir():
        return []
    return sorted(p.name for p in layout.base_weights.iterdir() if p != layout.base_weights_lock)


def test_pull_stores_the_checkpoint_once(root, layout, mirror, checkpoint, monkeypatch):
    base_url, _, seen = mirror
    settings = _settings(monkeypatch, base_url)
    first = pull(settings, NAME, trust_on_first_use=True)
    assert first.downloaded and first.path == layout.base_weights / NAME
    assert first.path.read_bytes() == checkpoint.read_bytes()
    again = pull(settings, NAME)  # no flag needed: its hash is recorded now, and the file matches it
    assert not again.downloaded and again.path == first.path
    assert (again.sha256, again.trust) == (first.sha256, "recorded")
    assert seen == [f"/{NAME}"]  # the second pull asked the mirror nothing
    assert _leftovers(layout) == [NAME]


@pytest.mark.parametrize(("path", "name", "reason"), [
    ("/cut", NAME, "truncated"),  # the connection drops before the announced length
    ("", "half.pt", "not a loadable checkpoint"),  # the mirror itself holds a truncated file
    ("", "junk.pt", "not a loadable checkpoint"),
    ("", "tensors.pt", "no 'model' or 'ema'"),
])
def test_bad_downloads_are_refused_and_leave_nothing(root, layout, mirror, monkeypatch, path, name, reason):
    base_url, _, _ = mirror
    with pytest.raises(OperationFailed, match=reason) as refused:
        pull(_settings(monkeypatch, base_url + path), name, trust_on_first_use=True)
    assert "refused" in str(refused.value)
    assert _leftovers(layout) == []


def test_missing_name_and_unsafe_name(root, layout, mirror, monkeypatch):
    base_url, _, _ = mirror
    settings = _settings(monkeypatch, base_url)
    with pytest.raises(InputError, match="yolo99x.pt: not found \\(HTTP 404\\)"):
        pull(settings, "yolo99x.pt", trust_on_first_use=True)
    for bad in ("../evil.pt", ".hidden.pt", "yolo26n.yaml"):
        with pytest.raises(InputError):
            pull(settings, bad, trust_on_first_use=True)
    assert _leftovers(layout) == []


def test_credentials_in_the_mirror_url_are_never_shown():
    assert without_credentials("https://user:s3cret@mirror.example:8443/w/yolo26m.pt?token=abc") == \
        "https://mirror.example:8443/w/yolo26m.pt"


def test_cli_pull_twice_and_404(root, mirror):
    base_url, _, _ = mirror
    env = {"WEIGHTS_BASE_URL": base_url}
    done = run_azaion("weights", "pull", NAME, "--trust-on-first-use", env=env)
    assert done.returncode == 0, done.stderr
    assert "pulled yolo26n.pt" in done.stdout and "checked against: trust-on-first-use" in done.stdout
    again = run_azaion("weights", "pull", NAME, env=env)
    assert again.returncode == 0 and "already present" in again.stdout and "nothing downloaded" in again.stdout
    assert "checked against: recorded" in again.stdout
    missing = run_azaion("weights", "pull", "yolo99x.pt", "--trust-on-first-use", env=env)
    assert missing.returncode == 2 and "HTTP 404" in missing.stderr
    assert "Traceback" not in missing.stdout + missing.stderr


def test_bare_training_model_resolves_into_models_base(root, layout, mirror, monkeypatch):
    with pytest.raises(ConfigError, match="azaion weights pull yolo26n.pt"):
        resolve_training_model(NAME, layout)
    assert resolve_training_model("yolo26n.yaml", layout) == "yolo26n.yaml"  # from-scratch config
    assert resolve_training_model("./yolo26n.pt", layout) == "./yolo26n.pt"  # a path stays a path
    pull(_settings(monkeypatch, mirror[0]), NAME, trust_on_first_use=True)
    assert resolve_training_model(NAME, layout) == str(layout.base_weights / NAME)


def test_train_preflight_and_cycle_without_base_weights_name_the_pull_command(root, layout, tmp_path):
    from tests.dataset.conftest import add_annotations

    add_annotations(layout, 4)
    cycle = ("cycle", "--once", "--min-new", "1", "--target", f"local:{tmp_path / 'target'}")
    for args in (("train", "--epochs", "1"), ("train", "--preflight"), cycle):
        done = run_azaion(*args, env={"TRAINING_MODEL": "yolo26s.pt", "MODEL_ENCRYPTION_KEY": "weights-tests-key"})
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "azaion weights pull yolo26s.pt" in done.stderr
        assert "Traceback" not in done.stdout + done.stderr
    assert not any(layout.datasets.glob("azaion-*")) and not any(layout.models.glob("azaion-*"))  # no work done


def test_preflight_finds_pulled_base_weights(root, layout, mirror, monkeypatch):
    from tests.dataset.conftest import add_annotations

    add_annotations(layout, 4)
    pull(_settings(monkeypatch, mirror[0]), NAME, trust_on_first_use=True)
    env = {"TRAINING_MODEL": NAME, "TRAINING_DEVICE": "cpu", "TRAINING_IMGSZ": "64", "COLUMNS": "400"}
    done = run_azaion("train", "--preflight", "--min-free-gb", "0", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{layout.base_weights / NAME}: 2.6 M parameters" in done.stdout
