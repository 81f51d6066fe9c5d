"""CIDv1 content identifiers: binary form, base32 text form, and the sha2-256 CIDs the protocol computes.

Only CIDv1 is supported (PROTOCOL.md §3): a DAG-CBOR link or a `bafy…` text is always v1.
"""

from __future__ import annotations

import base64
import hashlib

from protocol import varint

DAG_CBOR = 0x71
RAW = 0x55
SHA2_256 = 0x12

_varint = varint.encode


def _read_varint(b: bytes, pos: int) -> tuple[int, int]:
    """Read one minimal unsigned varint at `pos`; return (value, next position)."""
    try:
        read = varint.decode(b, pos)
    except varint.VarintError as exc:
        raise ValueError(f"CID contains a varint that {exc}") from None
    if read is None:
        raise ValueError("CID contains a truncated varint")
    return read


class CID:
    """An immutable CIDv1: version, codec (multicodec code) and multihash (code, length, digest)."""

    __slots__ = ("version", "codec", "multihash", "_bytes", "_text")

    version: int
    codec: int
    multihash: bytes

    def __init__(self, version: int, codec: int, multihash: bytes) -> None:
        if version != 1:
            raise ValueError(f"only CIDv1 is supported, not version {version!r}")
        if not isinstance(codec, int) or isinstance(codec, bool) or not 0 <= codec < 1 << 63:
            raise ValueError(f"CID codec must be an unsigned 63-bit integer, not {codec!r}")
        multihash = bytes(multihash)
        _check_multihash(multihash)
        self._set(codec, multihash, b"\x01" + _varint(codec) + multihash)

    def _set(self, codec: int, multihash: bytes, raw: bytes) -> None:
        object.__setattr__(self, "version", 1)
        object.__setattr__(self, "codec", codec)
        object.__setattr__(self, "multihash", multihash)
        object.__setattr__(self, "_bytes", raw)

    def __setattr__(self, name, value):
        raise AttributeError("CID is immutable")

    def __delattr__(self, name):
        raise AttributeError("CID is immutable")

    @classmethod
    def of_dagcbor(cls, data: bytes) -> "CID":
        """The CID of DAG-CBOR bytes (sha2-256), e.g. a UCAN token's CID over its whole envelope bytes."""
        return cls(1, DAG_CBOR, bytes((SHA2_256, 32)) + hashlib.sha256(data).digest())

    @classmethod
    def of_raw(cls, data: bytes) -> "CID":
        """The raw-codec CID of bytes (sha2-256); its multihash is how a DHT key text becomes a key."""
        return cls(1, RAW, bytes((SHA2_256, 32)) + hashlib.sha256(data).digest())

    @classmethod
    def from_bytes(cls, b: bytes) -> "CID":
        if not isinstance(b, (bytes, bytearray, memoryview)):
            raise ValueError(f"a binary CID must be bytes, not {type(b).__name__}")
        b = bytes(b)
        # Fast path for the CIDs this protocol makes (one-byte codec, sha2-256): decode runs on every link.
        if len(b) == 36 and b[0] == 1 and b[1] < 0x80 and b[2] == SHA2_256 and b[3] == 32:
            cid = object.__new__(cls)
            cid._set(b[1], b[2:], b)
            return cid
        if not b:
            raise ValueError("a binary CID cannot be empty")
        if b[0] == SHA2_256:
            raise ValueError("CIDv0 (a bare sha2-256 multihash) is not supported; use CIDv1")
        version, pos = _read_varint(b, 0)
        if version != 1:
            raise ValueError(f"unsupported CID version {version}")
        codec, pos = _read_varint(b, pos)
        return cls(1, codec, b[pos:])

    @classmethod
    def parse(cls, text: str) -> "CID":
        if not isinstance(text, str) or not text.startswith("b"):
            raise ValueError("a CID text must be base32 lower-case multibase, starting with 'b'")
        body = text[1:]
        if not body or not body.isascii() or body != body.lower() or "=" in body:
            raise ValueError("a CID text must be unpadded lower-case base32")
        try:
            raw = base64.b32decode(body.upper() + "=" * (-len(body) % 8))
        except ValueError as e:  # binascii.Error is a ValueError
            raise ValueError(f"a CID text is not valid base32: {e}") from None
        cid = cls.from_bytes(raw)
        # Base32 leaves spare bits in the last character; only the encoding with zero bits is canonical.
        if str(cid) != text:
            raise ValueError("a CID text is not in canonical base32 form")
        return cid

    def __reduce__(self):
        return (CID.from_bytes, (self._bytes,))

    def __bytes__(self) -> bytes:
        return self._bytes

    def __str__(self) -> str:
        # Remembered: the text of an invocation's CID goes into every audit record, and base32 is not free.
        try:
            return self._text
        except AttributeError:
            text = "b" + base64.b32encode(self._bytes).decode("ascii").rstrip("=").lower()
            object.__setattr__(self, "_text", text)
            return text

    def __repr__(self) -> str:
        return f"CID({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, CID) and self._bytes == other._bytes

    def __hash__(self) -> int:
        return hash(self._bytes)


def _check_multihash(mh: bytes) -> None:
    _code, pos = _read_varint(mh, 0)
    length, pos = _read_varint(mh, pos)
    if len(mh) - pos != length:
        raise ValueError(f"CID multihash declares a {length}-byte digest but carries {len(mh) - pos} bytes")
