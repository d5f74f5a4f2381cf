"""publish -> fetch through the Azaion API contract server and a moto S3 CDN, and through
local:DIR; failure modes (CDN down, read-only keys, tampering, swapped parts, wrong key);
secrets absent from everything the CLI prints."""

import json
import os
import stat

import pytest

from azaion_training.distribution.fetch import fetch_model_bytes, fetch_model_to_file
from azaion_training.distribution.manifest import ManifestRefused
from azaion_training.distribution.publish import publish_model
from azaion_training.errors import OperationFailed
from azaion_training.layout import Layout
from azaion_training.security.crypto import DecryptionError, calc_hash
from azaion_training.settings import load_settings
from tests.conftest import run_azaion
from tests.distribution.conftest import MODEL_SECRET, PASSWORD


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "azaion.onnx"
    path.write_bytes(os.urandom(50_000))
    return path


def test_publish_fetch_round_trip_via_api_and_cdn(azaion_settings, api, s3, model_file, tmp_path):
    result = publish_model(azaion_settings, model_file, folder="rt1", source_run="azaion-2026-01-01")
    manifest = result.manifest
    assert manifest["small"]["size"] == 3072 and manifest["source_run"] == "azaion-2026-01-01"
    assert manifest["version"] == 1 and manifest["small"]["name"] == "azaion.onnx.v1.small"
    assert len(api.resources[("rt1", "azaion.onnx.v1.small")]) == 3072
    assert json.loads(api.resources[("rt1", "azaion.onnx.manifest.json")]) == manifest
    reader = s3.client("s3", s3.downloader)
    stored_big = reader.get_object(Bucket="models", Key="rt1/azaion.onnx.v1.big")["Body"].read()
    assert api.resources[("rt1", "azaion.onnx.v1.small")] + stored_big != model_file.read_bytes()
    assert len(stored_big) == manifest["big"]["size"]
    # the plain names the Azaion platform's own loaders read hold the same parts
    assert api.resources[("rt1", "azaion.onnx.small")] == api.resources[("rt1", "azaion.onnx.v1.small")]
    assert reader.get_object(Bucket="models", Key="rt1/azaion.onnx.big")["Body"].read() == stored_big
    assert fetch_model_bytes(azaion_settings, "azaion.onnx", folder="rt1")[0] == model_file.read_bytes()
    # re-publishing the same file is safe: new IV, new parts, same plaintext on fetch
    publish_model(azaion_settings, model_file, folder="rt1")
    fetched = fetch_model_to_file(azaion_settings, "azaion.onnx", out=tmp_path / "out.onnx", folder="rt1")
    assert fetched.path.read_bytes() == model_file.read_bytes()
    assert stat.S_IMODE(fetched.path.stat().st_mode) == 0o600


def test_local_target_round_trip_80_mb(root, monkeypatch, tmp_path):
    monkeypatch.setenv("MODEL_ENCRYPTION_KEY", MODEL_SECRET)
    settings = load_settings()
    data = os.urandom(80 * 1024 * 1024)
    (tmp_path / "big.onnx").write_bytes(data)
    store = tmp_path / "store"
    publish_model(settings, tmp_path / "big.onnx", target=f"local:{store}")
    assert (store / "api/models/big.onnx.v1.small").stat().st_size == 3072
    assert (store / "cdn/models/big.onnx.v1.big").is_file() and (store / "api/models/big.onnx.manifest.json").is_file()
    assert (store / "cdn/models/big.onnx.big").read_bytes() == (store / "cdn/models/big.onnx.v1.big").read_bytes()
    assert fetch_model_bytes(settings, "big.onnx", target=f"local:{store}")[0] == data


def test_tampered_big_part_and_swapped_parts_are_refused(root, monkeypatch, tmp_path, model_file):
    monkeypatch.setenv("MODEL_ENCRYPTION_KEY", MODEL_SECRET)
    settings, target = load_settings(), f"local:{tmp_path / 'store'}"
    other = tmp_path / "other.onnx"
    other.write_bytes(os.urandom(60_000))
    publish_model(settings, model_file, name="a.onnx", target=target)
    publish_model(settings, other, name="b.onnx", target=target)
    api_dir, cdn_dir = tmp_path / "store/api/models", tmp_path / "store/cdn/models"
    original_small = (api_dir / "a.onnx.v1.small").read_bytes()
    (api_dir / "a.onnx.v1.small").write_bytes((api_dir / "b.onnx.v1.small").read_bytes())
    with pytest.raises(DecryptionError, match="a.onnx.v1.small does not match its manifest"):
        fetch_model_bytes(settings, "a.onnx", target=target)
    (api_dir / "a.onnx.v1.small").write_bytes(original_small)
    big = bytearray((cdn_dir / "a.onnx.v1.big").read_bytes())
    big[1000] ^= 1
    (cdn_dir / "a.onnx.v1.big").write_bytes(bytes(big))
    with pytest.raises(DecryptionError, match="a.onnx.v1.big does not match its manifest.*tampered"):
        fetch_model_bytes(settings, "a.onnx", target=target)


def test_wrong_model_key_is_refused(root, monkeypatch, tmp_path, model_file):
    target = f"local:{tmp_path / 'store'}"
    monkeypatch.setenv("MODEL_ENCRYPTION_KEY", MODEL_SECRET)
    publish_model(load_settings(), model_file, target=target)
    monkeypatch.setenv("MODEL_ENCRYPTION_KEY", "some-other-model-key")
    with pytest.raises(ManifestRefused, match="another model key.*MODEL_ENCRYPTION_KEY"):  # the MAC key is derived
        fetch_model_to_file(load_settings(), "azaion.onnx", out=tmp_path / "x.onnx", target=target)
    assert not (tmp_path / "x.onnx").exists()


def test_tampered_cdn_object_and_stale_cache(azaion_settings, api, s3, model_file):
    publish_model(azaion_settings, model_file, folder="tamper")
    assert fetch_model_bytes(azaion_settings, "azaion.onnx", folder="tamper")[0] == model_file.read_bytes()
    cached = Layout(azaion_settings.paths).model_cache / "tamper/azaion.onnx.v1.big"
    cached.write_bytes(b"stale")  # a damaged cache is replaced by a fresh download
    assert fetch_model_bytes(azaion_settings, "azaion.onnx", folder="tamper")[0] == model_file.read_bytes()
    cached.unlink()
    writer = s3.client("s3", s3.uploader)
    body = bytearray(writer.get_object(Bucket="models", Key="tamper/azaion.onnx.v1.big")["Body"].read())
    body[-1] ^= 0x55
    writer.put_object(Bucket="models", Key="tamper/azaion.onnx.v1.big", Body=bytes(body))
    with pytest.raises(DecryptionError, match="azaion.onnx.v1.big does not match its manifest"):
        fetch_model_bytes(azaion_settings, "azaion.onnx", folder="tamper")


def test_read_only_cdn_keys_cannot_publish_and_nothing_reaches_the_api(azaion_settings, api, s3, model_file):
    cdn_yaml = s3.cdn_yaml().replace(s3.uploader.access_key, s3.downloader.access_key)
    api.resources[("", "cdn.yaml")] = cdn_yaml.replace(s3.uploader.secret_key, s3.downloader.secret_key).encode()
    with pytest.raises(OperationFailed, match="s3://models/ro/azaion.onnx.v1.big.*AccessDenied"):
        publish_model(azaion_settings, model_file, folder="ro")
    assert api.count("POST", "/resources/ro") == 0


def test_cli_cdn_down_exits_1_without_api_upload(azaion_env, api, model_file, tmp_path):
    cdn_file = tmp_path / "cdn.yaml"
    cdn_file.write_text("host: http://127.0.0.1:9\ndownloader_access_key: a\ndownloader_access_secret: b\n"
                        "uploader_access_key: c\nuploader_access_secret: d\n")
    result = run_azaion("publish", "--file", str(model_file), "--folder", "down",
                        env={**azaion_env, "CDN_CONFIG_FILE": str(cdn_file)})
    assert result.returncode == 1, result.stderr
    assert "s3://models/down/azaion.onnx.v1.big" in result.stderr and "Traceback" not in result.stderr
    assert api.count("POST", "/resources/down") == 0


def test_cli_round_trip_keeps_every_secret_out_of_the_output(azaion_env, api, s3, model_file, tmp_path):
    publish = run_azaion("--log-level", "DEBUG", "publish", "--file", str(model_file), "--name", "cli.onnx",
                         env=azaion_env)
    assert publish.returncode == 0, publish.stderr
    out = tmp_path / "fetched" / "cli.onnx"
    fetch = run_azaion("--log-level", "DEBUG", "fetch-model", "cli.onnx", "--out", str(out), env=azaion_env)
    assert fetch.returncode == 0, fetch.stderr
    assert out.read_bytes() == model_file.read_bytes() and stat.S_IMODE(out.stat().st_mode) == 0o600
    from azaion_training.devapi import reference_transport_key

    secrets = [PASSWORD, MODEL_SECRET, calc_hash(MODEL_SECRET), s3.uploader.secret_key, s3.downloader.secret_key,
               *api.issued_tokens]
    secrets += [reference_transport_key(azaion_env["AZAION_API_EMAIL"], PASSWORD, hw) for hw in api.hardware_seen]
    assert api.issued_tokens and api.hardware_seen
    captured = publish.stdout + publish.stderr + fetch.stdout + fetch.stderr
    assert "published models/cli.onnx" in captured and "verified" in captured
    for secret in secrets:
        assert secret not in captured


def test_cli_bad_input_exits_2(azaion_env, model_file, tmp_path):
    target = f"local:{tmp_path / 'store'}"
    result = run_azaion("publish", "--file", str(model_file), "--target", target,
                        env={**azaion_env, "MODEL_ENCRYPTION_KEY": ""})
    assert result.returncode == 2 and "MODEL_ENCRYPTION_KEY" in result.stderr
    assert not (tmp_path / "store").exists()
    result = run_azaion("fetch-model", "../etc/passwd", "--target", target, env=azaion_env)
    assert result.returncode == 2 and "invalid model name" in result.stderr
    result = run_azaion("publish", "--file", str(model_file), "--target", "ftp://x", env=azaion_env)
    assert result.returncode == 2 and "unknown target" in result.stderr
