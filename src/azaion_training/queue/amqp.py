"""A bounded reader of AMQP 1.0 messages as stream entries carry them (docs/wire-format.md).

rstream's decoder trusts the element counts inside the bytes and pre-allocates `[None] * count`:
12 hostile bytes claiming 2.5e9 list elements cost it 19.7 GB. Here every count is checked
against the bytes its value declares and that remain before anything is allocated, so reading
an entry costs O(its size) whatever it claims. Only what the consumer needs is kept: the
application properties and the body (data sections joined, or an amqp-value).
"""

import struct
import uuid
from dataclasses import dataclass, field

SECTION_APPLICATION_PROPERTIES = 0x74
SECTION_DATA = 0x75
SECTION_VALUE = 0x77
_SECTIONS = range(0x70, 0x79)  # header .. footer
_MAX_DEPTH = 32
_FIXED = {0x4: 0, 0x5: 1, 0x6: 2, 0x7: 4, 0x8: 8, 0x9: 16}  # width by the constructor's high nibble
_SIGNED = {0x51, 0x54, 0x55, 0x61, 0x71, 0x81, 0x83}  # byte, smallint, smalllong, short, int, long, timestamp
_CONSTANTS = {0x40: None, 0x41: True, 0x42: False, 0x43: 0, 0x44: 0}


class AmqpError(ValueError):
    """The bytes are not a well-formed AMQP 1.0 message (the message says where)."""


@dataclass
class AmqpEntry:
    application_properties: dict = field(default_factory=dict)
    data: list[bytes] = field(default_factory=list)  # the data sections, in order
    value: object = None  # the amqp-value section, if any


def read_message(data: bytes) -> AmqpEntry:
    """Every section of an AMQP 1.0 message (`0x00 0x53 <code>` described values, back to back)."""
    reader = _Reader(memoryview(data))
    entry = AmqpEntry()
    while reader.pos < len(reader.buf):
        if reader.take(2) != b"\x00\x53":
            raise AmqpError(f"byte {reader.pos - 2}: expected a section (0x00 0x53)")
        code = reader.take(1)[0]
        if code not in _SECTIONS:
            raise AmqpError(f"byte {reader.pos - 1}: 0x{code:02x} is not an AMQP section")
        value = reader.value(0)
        if code == SECTION_APPLICATION_PROPERTIES:
            if not isinstance(value, dict):
                raise AmqpError("application-properties is not a map")
            entry.application_properties = value
        elif code == SECTION_DATA:
            if not isinstance(value, bytes):
                raise AmqpError("a data section is not binary")
            entry.data.append(value)
        elif code == SECTION_VALUE:
            entry.value = value
    return entry


class _Reader:
    def __init__(self, buf: memoryview):
        self.buf = buf
        self.pos = 0
        self.end = len(buf)  # the end of the compound value being read

    def take(self, size: int) -> memoryview:
        if size > self.end - self.pos:
            raise AmqpError(f"byte {self.pos}: {size} bytes needed, {self.end - self.pos} left")
        start = self.pos
        self.pos += size
        return self.buf[start:self.pos]

    def value(self, depth: int) -> object:
        if depth > _MAX_DEPTH:
            raise AmqpError(f"values nested deeper than {_MAX_DEPTH}")
        code = self.take(1)[0]
        if code == 0x00:  # described: the descriptor is read and dropped, the value kept
            self.value(depth + 1)
            return self.value(depth + 1)
        return self.typed(code, depth)

    def typed(self, code: int, depth: int) -> object:
        kind = code >> 4
        if kind in _FIXED:
            return self._fixed(code, self.take(_FIXED[kind]))
        if kind in (0xA, 0xB):
            raw = self.take(self._length(kind == 0xA)).tobytes()
            return raw if code in (0xA0, 0xB0) else raw.decode("utf-8", "replace")  # binary | string, symbol
        if kind in (0xC, 0xD):
            return self._compound(code, kind == 0xC, depth)
        if kind in (0xE, 0xF):
            return self._array(kind == 0xE, depth)
        raise AmqpError(f"byte {self.pos - 1}: unknown type constructor 0x{code:02x}")

    def _length(self, small: bool) -> int:
        return self.take(1)[0] if small else struct.unpack(">I", self.take(4))[0]

    def _fixed(self, code: int, raw: memoryview) -> object:
        if code in _CONSTANTS:
            return _CONSTANTS[code]
        if code == 0x45:
            return []
        if code == 0x56:
            return raw[0] != 0
        if code == 0x72:
            return struct.unpack(">f", raw)[0]
        if code == 0x82:
            return struct.unpack(">d", raw)[0]
        if code == 0x98:
            return uuid.UUID(bytes=raw.tobytes())
        if code in (0x73, 0x74, 0x84, 0x94):  # char, decimals: kept as raw bytes
            return raw.tobytes()
        return int.from_bytes(raw, "big", signed=code in _SIGNED)

    def _bounded(self, small: bool) -> tuple[int, int]:
        """Read a compound's size and count; returns (count, end) after checking both fit."""
        size = self._length(small)
        if size > self.end - self.pos:
            raise AmqpError(f"byte {self.pos}: declares {size} bytes, {self.end - self.pos} left")
        end = self.pos + size
        if size < (1 if small else 4):
            raise AmqpError(f"byte {self.pos}: declares {size} bytes, too few for its element count")
        count = self._length(small)
        if count > end - self.pos:  # every element takes at least one byte
            raise AmqpError(f"byte {self.pos}: claims {count} elements in {end - self.pos} bytes")
        return count, end

    def _within(self, end: int, read):
        outer, self.end = self.end, end
        try:
            result = read()
            if self.pos != end:
                raise AmqpError(f"byte {self.pos}: {end - self.pos} bytes left inside a compound value")
            return result
        finally:
            self.end = outer

    def _compound(self, code: int, small: bool, depth: int) -> list | dict:
        count, end = self._bounded(small)
        items = self._within(end, lambda: [self.value(depth + 1) for _ in range(count)])
        if code in (0xC0, 0xD0):
            return items
        if count % 2:
            raise AmqpError("a map with an odd number of elements")
        try:
            return dict(zip(items[::2], items[1::2], strict=True))
        except TypeError:
            raise AmqpError("a map key is not hashable") from None

    def _array(self, small: bool, depth: int) -> list:
        count, end = self._bounded(small)

        def read() -> list:
            if not count:
                return []
            element = self.take(1)[0]
            if element == 0x00:
                raise AmqpError("arrays of described values are not supported")
            width = _FIXED.get(element >> 4)  # zero-width ones (null, true, ...): bounded by _bounded
            if width and count * width > end - self.pos:
                raise AmqpError(f"byte {self.pos}: {count} elements of {width} bytes do not fit")
            return [self.typed(element, depth + 1) for _ in range(count)]

        return self._within(end, read)
