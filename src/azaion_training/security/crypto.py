"""Azaion-compatible encryption (docs/encryption.md): AES-256-CBC, AES key = SHA-256 of the UTF-8
key string, a random 16-byte IV prepended to the ciphertext, PKCS7 padding checked strictly.

`encrypt`/`decrypt` work on bytes in memory. `encrypt_stream`/`decrypt_stream` push big
files (80 MB models) through OpenSSL in 256 KiB chunks: no whole-file copies, cache-hot buffers.
"""

import base64
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from azaion_training.errors import OperationFailed

BLOCK = 16  # AES block and IV size in bytes
CHUNK = 256 * 1024  # fits in L2: the encrypted chunk is written out while still cache-hot

Writer = Callable[[bytes], object]


class DecryptionError(OperationFailed):
    """The ciphertext cannot be decrypted with this key: wrong key, tampered or truncated data."""


BAD_PADDING = "decryption failed (bad padding): wrong key, or the data was tampered with or truncated"


def calc_hash(text: str) -> str:
    """base64(SHA-384(UTF-8 text)): the Azaion key-derivation hash."""
    return base64.b64encode(hashlib.sha384(text.encode("utf-8")).digest()).decode("ascii")


def ciphertext_size(plaintext_size: int) -> int:
    """IV + plaintext padded up to the next whole block (PKCS7 always adds 1..16 bytes)."""
    return BLOCK + (plaintext_size // BLOCK + 1) * BLOCK


def _cipher(key: str, iv: bytes) -> Cipher:
    return Cipher(algorithms.AES(hashlib.sha256(key.encode("utf-8")).digest()), modes.CBC(iv))


def _padder():
    return padding.PKCS7(BLOCK * 8).padder()


def _unpadder():
    return padding.PKCS7(BLOCK * 8).unpadder()


def encrypt(data: bytes, key: str) -> bytes:
    """IV ‖ AES-256-CBC(PKCS7(data)), with a fresh random IV on every call."""
    parts: list[bytes] = []
    encrypt_stream(memory_chunks(data), parts.append, key)
    return b"".join(parts)


def _check_size(size: int) -> None:
    if size < 2 * BLOCK or size % BLOCK:
        raise DecryptionError(
            f"cannot decrypt {size} bytes: an Azaion ciphertext is a 16-byte IV plus a positive multiple "
            "of 16 bytes; the data is truncated or not encrypted")


def decrypt(data: bytes, key: str) -> bytes:
    """The plaintext of IV ‖ ciphertext, or DecryptionError (never garbage on bad padding)."""
    parts: list[bytes] = []
    decrypt_stream(memory_chunks(data), len(data), parts.append, key)
    return b"".join(parts)


def encrypt_stream(chunks: Iterable[bytes], write: Writer, key: str) -> None:
    """Encrypt the concatenation of `chunks`, writing IV ‖ ciphertext piece by piece."""
    iv = os.urandom(BLOCK)
    write(iv)
    encryptor = _cipher(key, iv).encryptor()
    padder = _padder()
    aligned = True  # while every chunk so far was whole blocks, the padder holds nothing: skip its copy
    for chunk in chunks:
        aligned = aligned and len(chunk) % BLOCK == 0
        write(encryptor.update(chunk if aligned else padder.update(chunk)))
    write(encryptor.update(padder.finalize()) + encryptor.finalize())


def decrypt_stream(chunks: Iterable[bytes], total_size: int, write: Writer, key: str) -> None:
    """Decrypt IV ‖ ciphertext arriving in `chunks` (`total_size` bytes in all). Plaintext is
    written before the padding is checked, so `write` must go somewhere that is discarded
    when this raises DecryptionError (a temp file, a list)."""
    _check_size(total_size)
    pending = b""
    decryptor = unpadder = None
    seen = 0
    for chunk in chunks:
        seen += len(chunk)
        if decryptor is None:
            pending += chunk
            if len(pending) < BLOCK:
                continue
            decryptor = _cipher(key, bytes(pending[:BLOCK])).decryptor()
            unpadder = _unpadder()
            chunk, pending = pending[BLOCK:], b""
        write(unpadder.update(decryptor.update(chunk)))
    if seen != total_size or decryptor is None:
        raise DecryptionError(f"ciphertext is {seen} bytes, expected {total_size}: truncated or extended")
    try:
        write(unpadder.update(decryptor.finalize()) + unpadder.finalize())
    except ValueError:
        raise DecryptionError(BAD_PADDING) from None


def read_chunks(handle: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    """The contents of a binary file object in `size`-byte pieces."""
    return iter(lambda: handle.read(size), b"")


def memory_chunks(data: bytes, size: int = CHUNK) -> Iterator[memoryview]:
    """`data` in `size`-byte views (no copies); chunking keeps OpenSSL's output cache-hot."""
    view = memoryview(data)
    return (view[start:start + size] for start in range(0, len(view), size))
