"""A rejection always says what was wrong: a decoder error without a message (msgpack's
FormatError has none) gets its type, what it means and the body's first bytes."""

import pytest

from azaion_training.queue.messages import MessageRejected, decode


@pytest.mark.parametrize("body,expected", [
    (b"\xc1\x00", "FormatError: a byte that starts no MessagePack value (e.g. the reserved 0xc1); body starts c1 00"),
    (b"\x92\x01", "incomplete input"),  # a message of its own is kept
])
def test_bad_msgpack_detail_is_never_empty(body, expected):
    with pytest.raises(MessageRejected) as rejected:
        decode(body)
    assert rejected.value.reason == "bad-msgpack"
    assert expected in rejected.value.detail
    assert not rejected.value.detail.endswith(": )")
