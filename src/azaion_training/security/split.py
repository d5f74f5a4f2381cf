"""Split a ciphertext into a small part (API) and a big part (CDN), docs/encryption.md: small =
the first min(3072, ceil(20 %)) bytes, big = the rest; small + big is the ciphertext."""

from collections.abc import Callable

SMALL_MAX = 3072


def small_size(ciphertext_size: int) -> int:
    return min(SMALL_MAX, -(-ciphertext_size // 5))  # ceil(20 %) in integers


def split(ciphertext: bytes) -> tuple[bytes, bytes]:
    cut = small_size(len(ciphertext))
    return bytes(ciphertext[:cut]), bytes(ciphertext[cut:])


class SplitWriter:
    """A write() target for a ciphertext of known size: the first small_size bytes are kept
    in memory (`small`), the rest goes to `write_big` as it arrives."""

    def __init__(self, ciphertext_size: int, write_big: Callable[[bytes], object]):
        self.remaining_small = small_size(ciphertext_size)
        self.small_parts: list[bytes] = []
        self.write_big = write_big

    def write(self, data: bytes) -> None:
        if self.remaining_small:
            head = data[:self.remaining_small]
            self.small_parts.append(bytes(head))
            self.remaining_small -= len(head)
            data = data[len(head):]
        if data:
            self.write_big(data)

    @property
    def small(self) -> bytes:
        return b"".join(self.small_parts)
