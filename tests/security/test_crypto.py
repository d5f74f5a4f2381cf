"""AES, key derivations and the split (docs/encryption.md), and interoperability with OpenSSL."""

import base64
import hashlib
import os
import subprocess

import pytest

from azaion_training.devapi import reference_encrypt
from azaion_training.errors import ConfigError
from azaion_training.security.crypto import (
    DecryptionError,
    calc_hash,
    ciphertext_size,
    decrypt,
    decrypt_stream,
    encrypt,
    encrypt_stream,
    memory_chunks,
)
from azaion_training.security.keys import model_key
from azaion_training.security.split import SplitWriter, small_size, split
from azaion_training.settings import load_settings

KEY = calc_hash("unit-test-key")


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1024])
def test_round_trip_and_overhead(size):  # BT-ENC-01/03/04, RL-ENC-01
    data = os.urandom(size)
    ciphertext = encrypt(data, KEY)
    assert len(ciphertext) == ciphertext_size(size) and 16 < len(ciphertext) - size <= 32
    assert decrypt(ciphertext, KEY) == data


def test_round_trip_onnx_model(tiny_onnx):  # BT-ENC-02
    data = tiny_onnx.read_bytes()
    assert decrypt(encrypt(data, KEY), KEY) == data


def test_80_mb_round_trip_through_split():
    data = os.urandom(80 * 1024 * 1024)
    small, big = split(encrypt(data, KEY))
    assert len(small) == 3072
    assert decrypt(small + big, KEY) == data


def test_random_iv_and_key_sensitivity():  # ST-ENC-01, BT-ENC-05
    data = b"x" * 1000
    first, second, other_key = encrypt(data, KEY), encrypt(data, KEY), encrypt(data, calc_hash("other"))
    assert first[:16] != second[:16] and first[16:] != second[16:]
    assert other_key[16:] != first[16:]


def test_wrong_key_raises_decryption_error():  # BT-ENC-06, ST-ENC-02
    # A fixed IV keeps this deterministic: raw CBC cannot catch every wrong key (~1/256 of them
    # leave a valid padding); fetch's SHA-256 check against the manifest closes that gap.
    ciphertext = _fixed_iv_encrypt(b"model bytes" * 100, KEY)
    with pytest.raises(DecryptionError, match="wrong key"):
        decrypt(ciphertext, calc_hash("not the key"))


def test_tampered_padding_and_truncation_raise():  # RT-ENC-01
    ciphertext = bytearray(encrypt(os.urandom(1024), KEY))  # 1024 B: the last block is all padding 0x10
    ciphertext[-17] ^= 0xFF  # flips the last plaintext byte: padding 0x10 becomes 0xEF
    with pytest.raises(DecryptionError, match="bad padding"):
        decrypt(bytes(ciphertext), KEY)
    for truncated in (ciphertext[:-1], ciphertext[:16], b""):
        with pytest.raises(DecryptionError, match="truncated"):
            decrypt(bytes(truncated), KEY)


def test_streams_match_memory_and_catch_truncation():
    data = os.urandom(3 * 1024 * 1024 + 5)
    parts: list[bytes] = []
    encrypt_stream(memory_chunks(data, 1 << 20), parts.append, KEY)
    ciphertext = b"".join(parts)
    assert decrypt(ciphertext, KEY) == data
    out: list[bytes] = []
    decrypt_stream(memory_chunks(ciphertext, 7), len(ciphertext), out.append, KEY)  # odd chunking
    assert b"".join(out) == data
    with pytest.raises(DecryptionError, match="truncated"):
        decrypt_stream(memory_chunks(ciphertext[:-16]), len(ciphertext), [].append, KEY)


def test_interoperates_with_openssl_and_the_reference(tmp_path):
    """The Azaion format is plain OpenSSL AES-256-CBC with key SHA-256(key string) and the IV in front."""
    data = os.urandom(5000)
    aes_key = hashlib.sha256(KEY.encode()).hexdigest()
    ours = encrypt(data, KEY)
    (tmp_path / "body").write_bytes(ours[16:])
    plain = subprocess.run(["openssl", "enc", "-d", "-aes-256-cbc", "-K", aes_key, "-iv", ours[:16].hex(),
                            "-in", str(tmp_path / "body")], capture_output=True, check=True).stdout
    assert plain == data
    iv = os.urandom(16)
    (tmp_path / "plain").write_bytes(data)
    theirs = subprocess.run(["openssl", "enc", "-aes-256-cbc", "-K", aes_key, "-iv", iv.hex(),
                             "-in", str(tmp_path / "plain")], capture_output=True, check=True).stdout
    assert decrypt(iv + theirs, KEY) == data
    assert decrypt(reference_encrypt(data, KEY), KEY) == data


def test_calc_hash_is_base64_sha384():
    # SHA-384("abc") from FIPS 180-2, base64-encoded
    expected = base64.b64encode(bytes.fromhex(
        "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed"
        "8086072ba1e7cc2358baeca134c825a7")).decode()
    assert calc_hash("abc") == expected


def test_model_key_from_configuration(root, monkeypatch):  # ST-ENC-03
    with pytest.raises(ConfigError, match="MODEL_ENCRYPTION_KEY"):
        model_key(load_settings())
    monkeypatch.setenv("MODEL_ENCRYPTION_KEY", "the-shared-secret")
    assert model_key(load_settings()) == model_key(load_settings()) == calc_hash("the-shared-secret")


@pytest.mark.parametrize("size, expected_small", [(32, 7), (10_000, 2000), (15_360, 3072), (100_000, 3072)])
def test_split_sizes_and_reassembly(size, expected_small):  # BT-SPL-01/02
    ciphertext = os.urandom(size)
    small, big = split(ciphertext)
    assert len(small) == small_size(size) == expected_small
    assert len(small) <= max(3072, -(-size // 5))
    assert small + big == ciphertext
    big_parts: list[bytes] = []
    writer = SplitWriter(size, big_parts.append)
    for chunk in memory_chunks(ciphertext, 1000):
        writer.write(chunk)
    assert writer.small == small and b"".join(big_parts) == big


def _fixed_iv_encrypt(data: bytes, key: str) -> bytes:
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    iv = bytes(range(16))
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(hashlib.sha256(key.encode()).digest()), modes.CBC(iv)).encryptor()
    return iv + encryptor.update(padder.update(data) + padder.finalize()) + encryptor.finalize()
