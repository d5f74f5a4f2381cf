"""Encrypt+split and reassemble+decrypt of an 80 MB file vs `openssl enc -aes-256-cbc` on the
same file in the same run (file to file on both sides; best of 3). Prints one JSON line."""

import hashlib
import itertools
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from azaion_training.security.crypto import (
    calc_hash,
    ciphertext_size,
    decrypt_stream,
    encrypt_stream,
    read_chunks,
)
from azaion_training.security.split import SplitWriter

SIZE = 80 * 1024 * 1024
MB = SIZE / 1e6
KEY = calc_hash("benchmark key")


def best_times(rounds: int, actions: dict) -> dict[str, float]:
    """Best wall time of each action; rounds interleave the actions so load spikes hit all alike."""
    best = dict.fromkeys(actions, float("inf"))
    for _ in range(rounds):
        for name, action in actions.items():
            started = time.perf_counter()
            action()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        plain, big, out = work / "model.onnx", work / "model.big", work / "model.out"
        plain.write_bytes(os.urandom(SIZE))
        state = {}

        def encrypt_and_split() -> None:
            with plain.open("rb") as source, big.open("wb") as big_file:
                splitter = SplitWriter(ciphertext_size(SIZE), big_file.write)
                encrypt_stream(read_chunks(source), splitter.write, KEY)
            state["small"] = splitter.small

        def reassemble_and_decrypt() -> None:
            with big.open("rb") as big_file, out.open("wb") as target:
                chunks = itertools.chain((state["small"],), read_chunks(big_file))
                decrypt_stream(chunks, ciphertext_size(SIZE), target.write, KEY)

        def reassemble_and_decrypt_in_memory() -> None:  # what fetch_model_bytes does
            parts: list[bytes] = []
            with big.open("rb") as big_file:
                chunks = itertools.chain((state["small"],), read_chunks(big_file))
                decrypt_stream(chunks, ciphertext_size(SIZE), parts.append, KEY)
            state["plain"] = b"".join(parts)

        aes_key, iv = hashlib.sha256(KEY.encode()).hexdigest(), os.urandom(16).hex()
        openssl = ["openssl", "enc", "-aes-256-cbc", "-K", aes_key, "-iv", iv]
        times = best_times(5, {
            "openssl_enc": lambda: subprocess.run([*openssl, "-in", str(plain), "-out", str(work / "o.enc")],
                                                  check=True),
            "ours_enc": encrypt_and_split,
            "openssl_dec": lambda: subprocess.run([*openssl, "-d", "-in", str(work / "o.enc"),
                                                   "-out", str(work / "o.dec")], check=True),
            "ours_dec": reassemble_and_decrypt,
            "ours_mem": reassemble_and_decrypt_in_memory,
        })
        openssl_enc, ours_enc, openssl_dec, ours_dec, ours_mem = times.values()
        assert out.read_bytes() == plain.read_bytes() == state["plain"]
    print(json.dumps({
        "benchmark": "crypto", "size_mb": round(MB, 1),
        "encrypt_split_mb_s": round(MB / ours_enc, 1), "openssl_encrypt_mb_s": round(MB / openssl_enc, 1),
        "encrypt_ratio": round(openssl_enc / ours_enc, 2),
        "reassemble_decrypt_mb_s": round(MB / ours_dec, 1), "openssl_decrypt_mb_s": round(MB / openssl_dec, 1),
        "decrypt_ratio": round(openssl_dec / ours_dec, 2),
        "reassemble_decrypt_in_memory_mb_s": round(MB / ours_mem, 1),
        "in_memory_ratio": round(openssl_dec / ours_mem, 2),
        "target_ratio": 0.8,
    }))


if __name__ == "__main__":
    main()
