"""DAG-CBOR codec: canonical encoding, one rejection test per strictness rule, limits, fixtures, and properties."""

import base64
import datetime
import enum
import json
import pathlib
from collections import OrderedDict

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import dagcbor
from protocol.cid import CID
from protocol.dagcbor import DEFAULT_MAX_DEPTH, DEFAULT_MAX_SIZE, decode, encode
from protocol.errors import ErrorCode, ProtocolError

FIXTURES = pathlib.Path("/work/shared/fixtures/ucan-1.0.0")
LINK = CID.of_dagcbor(b"link")
LINK_TAG = b"\xd8\x2a\x58\x25\x00" + bytes(LINK)


def malformed(data, **kw):
    with pytest.raises(ProtocolError) as e:
        decode(data, **kw)
    assert e.value.code is ErrorCode.MALFORMED, e.value
    return e.value


def _fixture_tokens():
    """Every UCAN envelope in the fixtures: real DAG-CBOR written by another implementation."""
    out = []

    def walk(node):
        if isinstance(node, dict):
            if set(node) == {"/"} and isinstance(node["/"], dict) and "bytes" in node["/"]:
                b64 = node["/"]["bytes"]
                out.append(base64.b64decode(b64 + "=" * (-len(b64) % 4)))
                return
            for k, v in node.items():
                if k == "token":
                    out.append(base64.b64decode(v))
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for name in ("delegation.json", "invocation.json"):
        walk(json.loads((FIXTURES / name).read_text()))
    return [t for t in out if t[:1] == b"\x82"]


# --- encoding -------------------------------------------------------------------------------------------------


def test_fixture_tokens_decode_and_reencode_byte_for_byte():
    tokens = _fixture_tokens()
    assert len(tokens) > 5
    for tok in tokens:
        value = decode(tok)
        assert encode(value) == tok
        signature, payload = value
        assert isinstance(signature, bytes) and payload["h"] == bytes.fromhex("3401ed01ed011371")


def test_fixture_links_decode_as_cids():
    links = []

    def walk(v):
        if isinstance(v, CID):
            links.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    for tok in _fixture_tokens():
        walk(decode(tok))
    assert links and all(c.codec == 0x71 for c in links)


def test_map_keys_sort_length_first_then_bytewise():
    value = {"bb": 1, "a": 2, "c": 3, "é": 4, "zz": 5, "aaa": 6}
    encoded = encode(value)
    # a, c (1 byte) < bb, zz, é (2 bytes; 0x62.. < 0x7a.. < 0xc3..) < aaa
    assert encoded == bytes.fromhex("a6" "616102" "616303" "62626201" "627a7a05" "62c3a904" "6361616106")
    assert list(decode(encoded)) == ["a", "c", "bb", "zz", "é", "aaa"]


@pytest.mark.parametrize(
    "n", [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, -1, -24, -25, -256, -257, -(2**64)]
)
def test_integers_use_the_shortest_head(n):
    assert encode(n) == cbor2.dumps(n)  # cbor2 writes minimal heads for ints
    assert decode(encode(n)) == n


def test_floats_are_always_64_bit():
    assert encode(1.0) == bytes.fromhex("fb3ff0000000000000")
    assert encode(0.5) == bytes.fromhex("fb3fe0000000000000")
    assert encode(-0.0) == bytes.fromhex("fb8000000000000000")
    assert decode(encode(1.0)) == 1.0 and type(decode(encode(1.0))) is float


def test_simple_values_strings_bytes_and_links():
    assert encode(None) == b"\xf6" and encode(True) == b"\xf5" and encode(False) == b"\xf4"
    assert encode("") == b"\x60" and encode(b"") == b"\x40"
    assert encode("x" * 24) == b"\x78\x18" + b"x" * 24
    assert encode(LINK) == LINK_TAG
    assert decode(LINK_TAG) == LINK
    assert decode(b"\xf5") is True and decode(b"\x01") == 1 and type(decode(b"\x01")) is int


def test_tuples_and_subclasses_encode_as_their_base_type():
    class Color(str, enum.Enum):
        RED = "red"

    class Level(enum.IntEnum):
        HIGH = 3

    assert encode((1, 2)) == encode([1, 2])
    assert encode(bytearray(b"ab")) == encode(b"ab") == encode(memoryview(b"ab"))
    assert encode(Color.RED) == encode("red")
    assert encode({Color.RED: Level.HIGH}) == encode({"red": 3})
    assert encode(OrderedDict([("b", 1), ("a", 2)])) == encode({"a": 2, "b": 1})
    assert encode(ErrorCode.MALFORMED) == encode("Malformed")


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        float("-inf"),
        [1.0, {"x": float("nan")}],
        {1: "int key"},
        {b"k": "bytes key"},
        {("t",): "tuple key"},
        {None: 1},
        {1, 2},
        frozenset(),
        object(),
        datetime.datetime(2020, 1, 1),
        cbor2.undefined,
        cbor2.CBORTag(1, 0),
        cbor2.CBORSimpleValue(16),
        2**64,
        -(2**64) - 1,
        "\ud800",
        {"\udfff": 1},
        1j,
    ],
)
def test_encode_rejects_values_outside_the_data_model(value):
    with pytest.raises(ProtocolError) as e:
        encode(value)
    assert e.value.code is ErrorCode.MALFORMED


def test_encode_depth_limit_and_cycles():
    deep = [0]
    for _ in range(DEFAULT_MAX_DEPTH - 1):
        deep = [deep]
    assert decode(encode(deep)) == deep
    with pytest.raises(ProtocolError) as e:
        encode([deep])
    assert e.value.code is ErrorCode.MALFORMED
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(ProtocolError):
        encode(cyclic)


# --- strict decoding: one test per rule -----------------------------------------------------------------------


@pytest.mark.parametrize("hexdata", ["9f01ff", "5f4161ff", "7f6161ff", "bf616101ff", "9fff"])
def test_rejects_indefinite_lengths(hexdata):
    malformed(bytes.fromhex(hexdata))


@pytest.mark.parametrize(
    "hexdata",
    ["1801", "1817", "190017", "1900ff", "1a0000ffff", "1b00000000ffffffff", "3800", "39000a"],
)
def test_rejects_non_minimal_integers(hexdata):
    malformed(bytes.fromhex(hexdata))


@pytest.mark.parametrize("hexdata", ["580100", "59000100", "78016161", "980100", "b80161610f", "d82a5901" + "25"])
def test_rejects_non_minimal_lengths(hexdata):
    data = bytes.fromhex(hexdata)
    if data.startswith(b"\xd8\x2a"):
        data = b"\xd8\x2a\x59\x00\x25\x00" + bytes(LINK)
    malformed(data)


@pytest.mark.parametrize(
    "hexdata",
    [
        "a2616202616101",  # {"b", "a"}: bytewise order broken
        "a262616101616202",  # {"aa", "b"}: length-first order broken
        "a262c3a901627a7a02",  # {"é", "zz"}: bytewise on UTF-8, not on code points
    ],
)
def test_rejects_unsorted_map_keys(hexdata):
    malformed(bytes.fromhex(hexdata))


def test_rejects_duplicate_map_keys():
    malformed(bytes.fromhex("a2616101616102"))
    malformed(bytes.fromhex("a2616101616101"))


@pytest.mark.parametrize("hexdata", ["a10101", "a1416101", "a1f601", "a1810101", "a1a00101", "a1f401"])
def test_rejects_non_string_keys(hexdata):
    malformed(bytes.fromhex(hexdata))


@pytest.mark.parametrize(
    "hexdata",
    [
        "c074323031332d30332d32315432303a30343a30305a",  # tag 0 date-time text
        "c11a514b67b0",  # tag 1 epoch
        "c24101",  # bignum
        "c34100",  # negative bignum
        "d82b4100",  # tag 43
        "d8184101",  # tag 24 encoded CBOR
        "d81c81d81d00",  # shareable / shared reference (a cycle)
        "d9010082636162636161",  # string reference namespace
        "d9d9f701",  # self-described CBOR
        "d9010283010203",  # tag 258 set
    ],
)
def test_rejects_tags_other_than_42(hexdata):
    malformed(bytes.fromhex(hexdata))


@pytest.mark.parametrize(
    "data",
    [
        b"\xd8\x2a\x63abc",  # text, not bytes
        b"\xd8\x2a\x81\x00",  # array
        b"\xd8\x2a\x58\x24" + bytes(LINK),  # no 0x00 multibase prefix
        b"\xd8\x2a\x58\x25\x01" + bytes(LINK),  # wrong prefix byte
        b"\xd8\x2a\x41\x00",  # prefix only
        b"\xd8\x2a\x58\x23\x00\x12\x20" + bytes(32),  # CIDv0 inside
        b"\xd8\x2a\x58\x24\x00" + bytes(LINK)[:-1],  # truncated digest
        b"\xd8\x2a\x58\x26\x00" + bytes(LINK) + b"\x00",  # trailing byte inside the CID
        b"\xd8\x2a\xd8\x2a\x58\x25\x00" + bytes(LINK),  # tag 42 of tag 42
    ],
)
def test_rejects_tag_42_without_a_valid_cid(data):
    malformed(data)


@pytest.mark.parametrize("hexdata", ["f93c00", "f90000", "fa3f800000", "fa00000000"])
def test_rejects_half_and_single_floats(hexdata):
    malformed(bytes.fromhex(hexdata))


@pytest.mark.parametrize(
    "hexdata", ["fb7ff8000000000000", "fb7ff0000000000000", "fbfff0000000000000", "f97e00", "fa7fc00000"]
)
def test_rejects_nan_and_infinity(hexdata):
    malformed(bytes.fromhex(hexdata))


def test_rejects_undefined():
    malformed(b"\xf7")
    malformed(b"\xa1\x61a\xf7")


@pytest.mark.parametrize("hexdata", ["e0", "f0", "f3", "f814", "f820", "f8ff", "f81f"])
def test_rejects_other_simple_values(hexdata):
    malformed(bytes.fromhex(hexdata))


@pytest.mark.parametrize("hexdata", ["62c328", "63eda080", "61ff", "62c0af", "a162c3280f"])
def test_rejects_invalid_utf8(hexdata):
    malformed(bytes.fromhex(hexdata))


@pytest.mark.parametrize("data", [b"\x01\x00", b"\xa0\xa0", b"\xf6\xff", LINK_TAG + b"\x00"])
def test_rejects_trailing_bytes(data):
    malformed(data)


def test_rejects_every_truncation():
    value = {"a": [1, 2**40, -5, 1.5, "text", b"bytes", None, True, LINK, {"nested": {"x": [""]}}]}
    data = encode(value)
    for end in range(len(data)):
        malformed(data[:end])


@pytest.mark.parametrize("hexdata", ["ff", "1c", "5c", "9c", "bc", "dc", "fc", "1f", "3f"])
def test_rejects_stray_break_and_reserved_heads(hexdata):
    malformed(bytes.fromhex(hexdata))


@pytest.mark.parametrize(
    "data",
    [
        b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",  # 2**64-1 byte string, no content
        b"\x7b\x7f\xff\xff\xff\xff\xff\xff\xff",
        b"\x9b\x00\x00\x00\x00\xff\xff\xff\xff\x00",  # 4 G items announced, one present
        b"\xbb\x00\x00\x00\x00\xff\xff\xff\xff",
    ],
)
def test_rejects_huge_announced_lengths_without_allocating(data):
    malformed(data)


def test_rejects_non_bytes_input_and_accepts_buffers():
    malformed("a string")
    malformed(None)
    malformed([1])
    assert decode(bytearray(b"\x82\x01\x02")) == [1, 2]
    assert decode(memoryview(b"\x82\x01\x02")) == [1, 2]


# --- limits ---------------------------------------------------------------------------------------------------


def test_deep_nesting_is_an_error_not_a_recursion_error():
    for opener in (b"\x81", b"\xa1\x61a"):
        e = malformed(opener * 100_000 + b"\x00")
        assert "deeper" in e.message


def test_a_caller_raised_depth_limit_still_cannot_cause_a_recursion_error():
    malformed(b"\x81" * 20_000 + b"\x00", max_depth=10**6)


def test_depth_limit_counts_containers_and_a_link_is_a_leaf():
    ok = b"\x81" * DEFAULT_MAX_DEPTH + b"\x00"
    assert decode(ok) is not None
    malformed(b"\x81" * (DEFAULT_MAX_DEPTH + 1) + b"\x00")
    assert decode(b"\x81" * DEFAULT_MAX_DEPTH + LINK_TAG) is not None
    assert decode(b"\x81\x81\x00", max_depth=2) == [[0]]
    malformed(b"\x81\x81\x00", max_depth=1)
    malformed(b"\xa1\x61a\xa0", max_depth=1)
    assert decode(b"\x00", max_depth=0) == 0
    malformed(b"\x80", max_depth=0)


def test_size_limit_is_too_large():
    big = encode(b"x" * (DEFAULT_MAX_SIZE - 5))
    assert len(big) == DEFAULT_MAX_SIZE
    assert decode(big) == b"x" * (DEFAULT_MAX_SIZE - 5)
    for data, kw in ((encode(b"x" * DEFAULT_MAX_SIZE), {}), (encode("x" * 100), {"max_size": 64})):
        with pytest.raises(ProtocolError) as e:
            decode(data, **kw)
        assert e.value.code is ErrorCode.TOO_LARGE
    assert decode(encode("x" * 10), max_size=64) == "x" * 10


# --- properties -----------------------------------------------------------------------------------------------

cids = st.one_of(
    st.binary(max_size=40).map(CID.of_dagcbor),
    st.binary(max_size=40).map(CID.of_raw),
    st.builds(
        lambda codec, digest: CID(1, codec, bytes((0x00, len(digest))) + digest),
        st.integers(0, 2**63 - 1),
        st.binary(max_size=40),
    ),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    st.binary(),
    cids,
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children), st.dictionaries(st.text(), children)),
    max_leaves=40,
)


@given(values)
def test_round_trip(value):
    data = encode(value)
    back = decode(data)
    assert back == value
    assert encode(back) == data


def _check_strict(data: bytes) -> None:
    try:
        value = decode(data)
    except ProtocolError as e:
        assert e.code in (ErrorCode.MALFORMED, ErrorCode.TOO_LARGE)
        return
    # Whatever is accepted is exactly the canonical encoding of what came out.
    assert encode(value) == data


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_protocol_error(data):
    _check_strict(data)


@settings(max_examples=500)
@given(values, st.data())
def test_mutated_encodings_only_raise_protocol_error(value, draw):
    data = bytearray(encode(value))
    for _ in range(draw.draw(st.integers(1, 4))):
        kind = draw.draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw.draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw.draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[pos] = draw.draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw.draw(st.binary(min_size=1, max_size=9))
        elif kind == "delete" and data:
            del data[pos]
        elif kind == "truncate":
            del data[pos:]
    _check_strict(bytes(data))


def test_module_constants():
    assert dagcbor.DEFAULT_MAX_SIZE == 1 << 20 and dagcbor.DEFAULT_MAX_DEPTH == 64
