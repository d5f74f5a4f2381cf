"""Authenticated manifests (bound to folder and name, HMAC under a key derived from the model
key) and models published by other tooling without a manifest (`--no-manifest`)."""

import json
import os
import shutil
import stat
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from azaion_training.distribution.fetch import fetch_model_bytes
from azaion_training.distribution.manifest import UNAUTHENTICATED_FORMAT, ManifestRefused, canonical
from azaion_training.distribution.publish import publish_model
from azaion_training.inference.pipeline import model_bytes
from azaion_training.security.crypto import DecryptionError, encrypt
from azaion_training.security.keys import model_key
from azaion_training.security.split import split
from azaion_training.settings import load_settings
from tests.conftest import run_azaion
from tests.distribution.conftest import MODEL_SECRET

NAMES = ("{}.small", "{}.big", "{}.manifest.json")


@pytest.fixture
def store(root, monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("MODEL_ENCRYPTION_KEY", MODEL_SECRET)
    return tmp_path / "store"


def tiny_onnx() -> bytes:
    """A real, checker-valid ONNX model (one Identity node)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def publish_like_other_tooling(store: Path, name: str, data: bytes, folder: str = "models") -> None:
    """What the platform's existing tooling does: Azaion encryption and split, no manifest."""
    small, big = split(encrypt(data, model_key(load_settings())))
    (store / "api" / folder).mkdir(parents=True, exist_ok=True)
    (store / "cdn" / folder).mkdir(parents=True, exist_ok=True)
    (store / "api" / folder / f"{name}.small").write_bytes(small)
    (store / "cdn" / folder / f"{name}.big").write_bytes(big)


def model_files(store: Path, name: str, folder: str = "models") -> list[Path]:
    small, big, manifest = (pattern.format(name) for pattern in NAMES)
    return [store / "api" / folder / small, store / "cdn" / folder / big, store / "api" / folder / manifest]


def published(store: Path, tmp_path: Path, name: str, size: int, folder: str = "models") -> bytes:
    data = os.urandom(size)
    (tmp_path / name).write_bytes(data)
    publish_model(load_settings(), tmp_path / name, folder=folder, target=f"local:{store}")
    return data


def test_manifest_is_signed_and_binds_folder_and_name(store, tmp_path):
    published(store, tmp_path, "a.onnx", 20_000)
    manifest = json.loads(model_files(store, "a.onnx")[2].read_text())
    assert manifest["name"] == "a.onnx" and manifest["folder"] == "models" and len(manifest["mac"]) == 64
    assert b'"mac"' not in canonical(manifest)


@pytest.mark.parametrize("how", ["swap", "rename"])
def test_another_models_files_in_its_place_are_refused(store, tmp_path, how):
    """All three files of a.onnx replaced by those of b.onnx (swap), or b.onnx's set renamed to a.onnx."""
    published(store, tmp_path, "a.onnx", 20_000)
    published(store, tmp_path, "b.onnx", 30_000)
    move = shutil.copyfile if how == "swap" else os.replace
    for source, destination in zip(model_files(store, "b.onnx"), model_files(store, "a.onnx"), strict=True):
        move(source, destination)
    shutil.rmtree(Path(load_settings().paths.root_dir) / "models" / "published")  # no local copy to fall back on
    result = run_azaion("fetch-model", "a.onnx", "--target", f"local:{store}", "--out", str(tmp_path / "out.onnx"))
    assert result.returncode == 1, result.stderr
    assert "describes model models/b.onnx, not models/a.onnx" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_a_model_moved_to_another_folder_is_refused(store, tmp_path):
    published(store, tmp_path, "a.onnx", 20_000, folder="staging")
    for source, destination in zip(model_files(store, "a.onnx", "staging"), model_files(store, "a.onnx"), strict=True):
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    with pytest.raises(ManifestRefused, match="describes model staging/a.onnx, not models/a.onnx"):
        fetch_model_bytes(load_settings(), "a.onnx", target=f"local:{store}")


def test_an_edited_manifest_fails_its_mac(store, tmp_path):
    published(store, tmp_path, "a.onnx", 20_000)
    manifest_path = model_files(store, "a.onnx")[2]
    manifest = json.loads(manifest_path.read_text())
    manifest["name"], manifest["source_run"] = "a.onnx", "forged-run"  # any change, even a harmless-looking one
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestRefused, match="fails its authentication check"):
        fetch_model_bytes(load_settings(), "a.onnx", target=f"local:{store}")


def test_a_manifest_from_before_authentication_is_refused_with_the_way_out(store, tmp_path):
    data = published(store, tmp_path, "a.onnx", 20_000)
    manifest_path = model_files(store, "a.onnx")[2]
    manifest = json.loads(manifest_path.read_text())
    manifest["format"] = UNAUTHENTICATED_FORMAT
    del manifest["mac"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestRefused, match="before manifests were authenticated.*re-publish.*--no-manifest"):
        fetch_model_bytes(load_settings(), "a.onnx", target=f"local:{store}")
    with pytest.raises(DecryptionError, match="not a valid ONNX model"):  # random bytes: padding passes, onnx refuses
        fetch_model_bytes(load_settings(), "a.onnx", target=f"local:{store}", no_manifest=True)
    (tmp_path / "a.bin").write_bytes(data)
    publish_model(load_settings(), tmp_path / "a.bin", target=f"local:{store}")  # re-publishing fixes it
    assert fetch_model_bytes(load_settings(), "a.bin", target=f"local:{store}")[0] == data


# ---------------------------------------------------------------- models published by other tooling


def test_foreign_model_needs_the_flag_and_then_fetches_with_one_warning(store, tmp_path):
    model = tiny_onnx()
    publish_like_other_tooling(store, "foreign.onnx", model)
    out = tmp_path / "out" / "foreign.onnx"
    refused = run_azaion("fetch-model", "foreign.onnx", "--target", f"local:{store}", "--out", str(out))
    assert refused.returncode == 1 and "--no-manifest" in refused.stderr and not out.exists()

    fetched = run_azaion("fetch-model", "foreign.onnx", "--target", f"local:{store}", "--out", str(out),
                         "--no-manifest")
    assert fetched.returncode == 0, fetched.stderr
    assert out.read_bytes() == model and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "NOT verified against a manifest" in fetched.stdout
    records = (fetched.stdout + fetched.stderr).splitlines()
    warnings = [json.loads(line) for line in records if line.startswith("{")]
    warnings = [line for line in warnings if line["level"] == "WARNING"]
    assert len(warnings) == 1 and "integrity could not be verified against a manifest" in warnings[0]["message"]
    assert MODEL_SECRET not in fetched.stdout + fetched.stderr


def test_tampered_foreign_model_is_refused_and_nothing_written(store, tmp_path):
    publish_like_other_tooling(store, "foreign.onnx", tiny_onnx())
    big = model_files(store, "foreign.onnx")[1]
    data = bytearray(big.read_bytes())
    data[-17] ^= 0x80  # the last byte of the next-to-last block: the padding byte decrypts to > 16
    big.write_bytes(bytes(data))
    out = tmp_path / "out.onnx"
    result = run_azaion("fetch-model", "foreign.onnx", "--target", f"local:{store}", "--out", str(out),
                        "--no-manifest")
    assert result.returncode == 1 and "bad padding" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_foreign_bytes_that_are_not_onnx_are_refused(store, tmp_path):
    publish_like_other_tooling(store, "junk.onnx", os.urandom(9000))
    result = run_azaion("fetch-model", "junk.onnx", "--target", f"local:{store}", "--out", str(tmp_path / "j.onnx"),
                        "--no-manifest")
    assert result.returncode == 1 and "not a valid ONNX model" in result.stderr
    assert not (tmp_path / "j.onnx").exists()


def test_infer_takes_the_flag_too(store, tmp_path):
    model = tiny_onnx()
    publish_like_other_tooling(store, "foreign.onnx", model)
    assert model_bytes(load_settings(), "foreign.onnx", f"local:{store}", no_manifest=True)[0] == model
    image = tmp_path / "frame.jpg"
    image.write_bytes(b"not decoded: the model is refused first")
    result = run_azaion("infer", str(image), "--model", "foreign.onnx", "--from", f"local:{store}",
                        "--out", str(tmp_path / "infer"))
    assert result.returncode == 1 and "--no-manifest" in result.stderr and "Traceback" not in result.stderr
