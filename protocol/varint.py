"""Unsigned varints (multiformats unsigned-varint, i.e. LEB128): minimal encodings of at most 9 bytes (63 bits).

The one place that decides what a valid varint is, for frame length prefixes and for CIDs alike.
"""

from __future__ import annotations

MAX_LEN = 9


class VarintError(ValueError):
    """Bytes that are not a minimal varint of at most MAX_LEN bytes."""


def encode(n: int) -> bytes:
    if n < 0 or n >= 1 << (7 * MAX_LEN):
        raise ValueError(f"varint out of range: {n}")
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decode(buf: bytes | bytearray, pos: int = 0) -> tuple[int, int] | None:
    """(value, position after it) of the varint at `pos`; None while `buf` ends before its last byte."""
    value = 0
    for i in range(pos, min(len(buf), pos + MAX_LEN)):
        byte = buf[i]
        value |= (byte & 0x7F) << (7 * (i - pos))
        if not byte & 0x80:
            # A trailing zero group means the same number has a shorter encoding.
            if byte == 0 and i > pos:
                raise VarintError("is not a minimal varint")
            return value, i + 1
    if len(buf) - pos >= MAX_LEN:
        raise VarintError(f"is longer than {MAX_LEN} bytes")
    return None
