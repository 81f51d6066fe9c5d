"""Canonical DAG-CBOR (PROTOCOL.md §3): the encoder every framed or signed byte goes through, and a strict decoder.

Data model: None, bool, int (-2**64 .. 2**64-1), finite float, str, bytes, list, dict with str keys, CID.
"""

from __future__ import annotations

import math
import struct

import cbor2

from protocol.cid import CID
from protocol.errors import ErrorCode, ProtocolError

DEFAULT_MAX_SIZE = 1 << 20
DEFAULT_MAX_DEPTH = 64

_INT_LIMIT = 1 << 64
_SMALL_HEADS = [[bytes([major << 5 | n]) for n in range(24)] for major in range(8)]
_H8 = struct.Struct(">BB").pack
_H16 = struct.Struct(">BH").pack
_H32 = struct.Struct(">BI").pack
_H64 = struct.Struct(">BQ").pack
_F64 = struct.Struct(">Bd").pack
_NULL, _FALSE, _TRUE = b"\xf6", b"\xf4", b"\xf5"
_TAG42 = b"\xd8\x2a"


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return _SMALL_HEADS[major][n]
    ib = major << 5
    if n < 0x100:
        return _H8(ib | 24, n)
    if n < 0x10000:
        return _H16(ib | 25, n)
    if n < 0x100000000:
        return _H32(ib | 26, n)
    return _H64(ib | 27, n)


def _malformed(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MALFORMED, message)


def _key_order(item: tuple[bytes, object]) -> tuple[int, bytes]:
    return len(item[0]), item[0]


def _encode_into(obj, out, depth: int, max_depth: int) -> None:
    # `out` is a bound list.append: the encoder is on every decode's path, so it avoids attribute lookups.
    # Exact-type checks first: they are the hot path and keep bool apart from int.
    t = type(obj)
    if t is str:
        try:
            b = obj.encode("utf-8")
        except UnicodeEncodeError:
            raise _malformed("a string contains a lone surrogate and has no UTF-8 form") from None
        n = len(b)
        out(_SMALL_HEADS[3][n] if n < 24 else _head(3, n))
        out(b)
    elif t is int:
        if obj >= 0:
            if obj >= _INT_LIMIT:
                raise _malformed("an integer is above 2**64-1, outside the DAG-CBOR range")
            out(_head(0, obj))
        else:
            if obj < -_INT_LIMIT:
                raise _malformed("an integer is below -2**64, outside the DAG-CBOR range")
            out(_head(1, -1 - obj))
    elif t is dict:
        if depth >= max_depth:
            raise _malformed(f"nesting is deeper than {max_depth} containers")
        items = []
        for k, v in obj.items():
            if type(k) is not str:
                if not isinstance(k, str):
                    raise _malformed(f"a map key is a {type(k).__name__}; DAG-CBOR map keys must be strings")
            try:
                items.append((k.encode("utf-8"), v))
            except UnicodeEncodeError:
                raise _malformed("a map key contains a lone surrogate and has no UTF-8 form") from None
        items.sort(key=_key_order)
        out(_head(5, len(items)))
        depth += 1
        for kb, v in items:
            n = len(kb)
            out(_SMALL_HEADS[3][n] if n < 24 else _head(3, n))
            out(kb)
            _encode_into(v, out, depth, max_depth)
    elif t is list or t is tuple:
        if depth >= max_depth:
            raise _malformed(f"nesting is deeper than {max_depth} containers")
        out(_head(4, len(obj)))
        depth += 1
        for v in obj:
            _encode_into(v, out, depth, max_depth)
    elif t is bytes:
        out(_head(2, len(obj)))
        out(obj)
    elif obj is None:
        out(_NULL)
    elif obj is True:
        out(_TRUE)
    elif obj is False:
        out(_FALSE)
    elif t is float:
        if not math.isfinite(obj):
            raise _malformed("NaN and Infinity are not allowed in DAG-CBOR")
        out(_F64(0xFB, obj))
    elif t is CID:
        b = b"\x00" + bytes(obj)
        out(_TAG42)
        out(_head(2, len(b)))
        out(b)
    # Subclasses (str enums, int enums, OrderedDict, bytearray...) encode as their base type.
    elif isinstance(obj, (bytearray, memoryview)):
        _encode_into(bytes(obj), out, depth, max_depth)
    elif isinstance(obj, str):
        _encode_into(str.__str__(obj), out, depth, max_depth)
    elif isinstance(obj, int):
        _encode_into(int(obj), out, depth, max_depth)
    elif isinstance(obj, float):
        _encode_into(float(obj), out, depth, max_depth)
    elif isinstance(obj, bytes):
        _encode_into(bytes(obj), out, depth, max_depth)
    elif isinstance(obj, dict):
        _encode_into(dict(obj), out, depth, max_depth)
    elif isinstance(obj, (list, tuple)):
        _encode_into(list(obj), out, depth, max_depth)
    else:
        raise _malformed(f"a {type(obj).__name__} is not in the DAG-CBOR data model")


def _encode(obj, max_depth: int) -> bytes:
    chunks: list[bytes] = []
    try:
        _encode_into(obj, chunks.append, 0, max_depth)
    except RecursionError:  # only reachable when a caller raises max_depth above Python's recursion limit
        raise _malformed("nesting is too deep to encode") from None
    return b"".join(chunks)


def encode(obj) -> bytes:
    """Canonical DAG-CBOR bytes of `obj`; ProtocolError(MALFORMED) for anything outside the data model.

    Nesting deeper than DEFAULT_MAX_DEPTH containers is refused: no default decoder would accept it, and the
    limit also stops cyclic structures.
    """
    return _encode(obj, DEFAULT_MAX_DEPTH)


def _decode_link(value, immutable: bool = False) -> CID:
    if type(value) is not bytes or value[:1] != b"\x00":
        raise _malformed("tag 42 must hold a byte string starting with 0x00 (a binary CID)")
    try:
        return CID.from_bytes(value[1:])
    except ValueError as e:
        raise _malformed(f"tag 42 holds an invalid CID: {e}") from None


# cbor2 >= 6 calls semantic decoders with (decoded content, immutable flag).
_SEMANTIC_DECODERS = {42: _decode_link}


def decode_trusted(data: bytes):
    """Decode bytes this process encoded itself, or that an AEAD tag proves unchanged since it did.

    The canonical re-encode check of `decode` is skipped: it cannot fail for such bytes and would double the
    cost. Never use it for bytes from outside.
    """
    try:
        return cbor2.loads(data, semantic_decoders=_SEMANTIC_DECODERS)
    except Exception as e:
        raise _malformed(f"not valid CBOR: {e}") from None


def decode(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE, max_depth: int = DEFAULT_MAX_DEPTH):
    """Decode exactly one canonical DAG-CBOR item; ProtocolError(MALFORMED) for anything else.

    `max_depth` counts nested lists and maps (a CID is a leaf). Input longer than `max_size` is TOO_LARGE.
    """
    if type(data) is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise _malformed(f"DAG-CBOR input must be bytes, not {type(data).__name__}")
        data = bytes(data)
    if len(data) > max_size:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"DAG-CBOR input is {len(data)} bytes, above the {max_size}-byte limit")
    try:
        # cbor2 counts a tag as a nesting level; the re-encode below enforces the exact container depth.
        obj = cbor2.loads(
            data,
            semantic_decoders=_SEMANTIC_DECODERS,
            max_depth=max_depth + 1,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
        )
    except Exception as e:
        cause = e
        while cause is not None:
            if isinstance(cause, ProtocolError):
                raise cause from None
            cause = cause.__cause__
        if "nesting depth" in str(e):
            raise _malformed(f"nesting is deeper than {max_depth} containers") from None
        raise _malformed(f"not valid CBOR: {e}") from None
    # cbor2 tolerates non-minimal heads, unsorted keys, short floats, other tags, simple values and trailing
    # bytes; the canonical encoding of what it read matches the input byte for byte only if none were there.
    try:
        canonical = _encode(obj, max_depth)
    except ProtocolError as e:
        raise _malformed(f"not DAG-CBOR: {e.message}") from None
    if canonical != data:
        raise _malformed(
            "not canonical DAG-CBOR (non-minimal integer or length, unsorted map keys, non-64-bit float, "
            "a tag other than 42, or trailing bytes)"
        )
    return obj
