"""Varint length-prefixed frames (PROTOCOL.md §3), sans-IO: encode a frame, or feed bytes and take whole frames.

The decoder checks the prefix as soon as it is complete, so an oversized length is refused before any of its
payload is waited for.
"""

from __future__ import annotations

from protocol import varint
from protocol.errors import ErrorCode, ProtocolError

MAX_VARINT_LEN = varint.MAX_LEN  # 63 bits: the contract's bound, and what every libp2p peer can express
DEFAULT_MAX_FRAME = 1 << 20


def encode_varint(n: int) -> bytes:
    """Minimal unsigned LEB128 of `n` (0 <= n < 2**63)."""
    return varint.encode(n)


def encode_frame(payload: bytes) -> bytes:
    return encode_varint(len(payload)) + payload


def _read_prefix(buf: bytearray) -> tuple[int, int] | None:
    """(length, prefix size) of the varint at the start of `buf`; None while it is incomplete."""
    try:
        return varint.decode(buf)
    except varint.VarintError as exc:
        raise ProtocolError(ErrorCode.MALFORMED, f"the frame length prefix {exc}") from None


class FrameDecoder:
    """Accumulates stream bytes and hands out complete frame payloads in order."""

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._length: int | None = None  # payload length once the current prefix has been read
        self._error: ProtocolError | None = None

    def feed(self, data: bytes) -> None:
        """Add bytes; raises ProtocolError as soon as the pending prefix is bad or announces too much."""
        self._check()
        self._buf += data
        self._parse_prefix()

    def next_frame(self) -> bytes | None:
        """The next complete payload, or None until more bytes are fed."""
        self._check()
        self._parse_prefix()
        if self._length is None or len(self._buf) < self._length:
            return None
        payload = bytes(self._buf[: self._length])
        del self._buf[: self._length]
        self._length = None
        self._parse_prefix()
        return payload

    def pending(self) -> bool:
        """True when bytes of a frame not yet returned by next_frame are buffered (a frame has started)."""
        return bool(self._buf) or self._length is not None

    def _parse_prefix(self) -> None:
        if self._length is not None or not self._buf:
            return
        try:
            parsed = _read_prefix(self._buf)
            if parsed is None:
                return
            length, size = parsed
            if length > self.max_size:
                raise ProtocolError(
                    ErrorCode.TOO_LARGE, f"the frame announces {length} bytes, more than the {self.max_size} allowed"
                )
        except ProtocolError as err:
            # The stream position is lost after a bad prefix: every later call repeats the refusal.
            self._error = err
            self._buf.clear()
            raise
        del self._buf[:size]
        self._length = length

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
