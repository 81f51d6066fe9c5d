"""CIDv1: binary and base32 text round trips, fixture CIDs, cross-check with py-cid, and broken input."""

import base64
import copy
import hashlib
import json
import pathlib
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.cid import CID

FIXTURES = pathlib.Path("/work/shared/fixtures/ucan-1.0.0")


def _mh(digest: bytes, code: int = 0x12) -> bytes:
    assert len(digest) < 0x80 and code < 0x80
    return bytes((code, len(digest))) + digest


def test_of_dagcbor_matches_the_ucan_fixture_cids():
    cases = json.loads((FIXTURES / "delegation.json").read_text())["valid"]
    assert cases
    for case in cases:
        cid = CID.of_dagcbor(base64.b64decode(case["token"]))
        assert str(cid) == case["cid"]
        assert CID.parse(case["cid"]) == cid


def test_of_dagcbor_and_of_raw_fields():
    data = b"/mydata/service/cv"
    digest = hashlib.sha256(data).digest()
    c = CID.of_dagcbor(data)
    assert (c.version, c.codec, c.multihash) == (1, 0x71, b"\x12\x20" + digest)
    assert bytes(c) == b"\x01\x71\x12\x20" + digest
    assert str(c).startswith("bafyrei")
    r = CID.of_raw(data)
    assert (r.version, r.codec, r.multihash) == (1, 0x55, b"\x12\x20" + digest)
    assert str(r).startswith("bafkrei")
    assert r != c and r.multihash == c.multihash


def test_text_agrees_with_py_cid():
    import cid as pycid  # py-cid: an independent implementation, used only here

    for data in (b"", b"x", b"hello world"):
        for ours, codec in ((CID.of_dagcbor(data), "dag-cbor"), (CID.of_raw(data), "raw")):
            theirs = pycid.make_cid(1, codec, ours.multihash)
            assert str(ours) == theirs.encode("base32").decode()
            assert bytes(ours) == theirs.buffer


def test_immutable_hashable_equal_and_copyable():
    a, b = CID.of_dagcbor(b"a"), CID.of_dagcbor(b"a")
    assert a == b and hash(a) == hash(b) and a is not b
    assert {a: 1}[b] == 1
    assert a != CID.of_dagcbor(b"b") and a != bytes(a) and a != str(a)
    with pytest.raises(AttributeError):
        a.codec = 0x55
    with pytest.raises(AttributeError):
        del a.multihash
    assert pickle.loads(pickle.dumps(a)) == a
    assert copy.deepcopy(a) == a
    assert repr(a) == f"CID('{a}')"


def test_non_sha256_and_multibyte_codec_round_trip():
    c = CID(1, 0x300000, _mh(b"\x01\x02\x03", code=0x00))  # identity multihash, 3-byte varint codec
    assert CID.from_bytes(bytes(c)) == c
    assert CID.parse(str(c)) == c
    assert c.codec == 0x300000


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"", "empty"),
        (b"\x12\x20" + bytes(32), "CIDv0"),
        (b"\x02\x71" + _mh(bytes(32)), "version 2"),
        (b"\x00\x71" + _mh(bytes(32)), "version 0"),
        (b"\x81\x00\x71" + _mh(bytes(32)), "non-minimal version varint"),
        (b"\x01\xf1\x00" + _mh(bytes(32)), "non-minimal codec varint"),
        (b"\x01\x71\x12\x80\x00" + bytes(0), "non-minimal length varint"),
        (b"\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01" + _mh(bytes(32)), "varint over 9 bytes"),
        (b"\x01\xff", "truncated codec varint"),
        (b"\x01\x71", "no multihash"),
        (b"\x01\x71\x12", "no digest length"),
        (b"\x01\x71\x12\x20" + bytes(31), "truncated digest"),
        (b"\x01\x71\x12\x20" + bytes(33), "trailing byte"),
    ],
)
def test_from_bytes_rejects(raw, why):
    with pytest.raises(ValueError):
        CID.from_bytes(raw)


def test_from_bytes_rejects_non_bytes():
    with pytest.raises(ValueError):
        CID.from_bytes(str(CID.of_raw(b"x")))  # type: ignore[arg-type]


def test_constructor_rejects_bad_fields():
    with pytest.raises(ValueError):
        CID(0, 0x71, _mh(bytes(32)))
    with pytest.raises(ValueError):
        CID(1, -1, _mh(bytes(32)))
    with pytest.raises(ValueError):
        CID(1, True, _mh(bytes(32)))
    with pytest.raises(ValueError):
        CID(1, 0x71, b"\x12\x20")


def test_parse_rejects():
    good = str(CID.of_dagcbor(b"x"))
    v0_text = "b" + base64.b32encode(b"\x12\x20" + bytes(32)).decode().rstrip("=").lower()
    for bad in [
        "",
        "b",
        good.upper(),
        "B" + good[1:],
        "z" + good[1:],
        good + "=",
        good[:-1] + "1",  # not a base32 character
        good[:-1],  # truncated: wrong digest length
        good[:-1] + chr(ord(good[-1]) + 1),  # non-zero spare bits: not canonical (or a different digest)
        good[:5] + "é" + good[6:],
        v0_text,
        "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",
    ]:
        with pytest.raises(ValueError):
            CID.parse(bad)
    with pytest.raises(ValueError):
        CID.parse(b"bafy")  # type: ignore[arg-type]


def test_parse_rejects_non_canonical_spare_bits():
    c = CID.of_dagcbor(b"x")
    text = str(c)  # 36 bytes -> 58 base32 chars, 2 spare bits in the last one
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    last = alphabet.index(text[-1])
    assert last & 0b11 == 0
    with pytest.raises(ValueError):
        CID.parse(text[:-1] + alphabet[last | 1])


@given(st.binary(max_size=64))
def test_from_bytes_never_crashes_and_round_trips(raw):
    try:
        c = CID.from_bytes(raw)
    except ValueError:
        return
    assert bytes(c) == raw
    assert CID.parse(str(c)) == c


@given(st.text(max_size=80))
def test_parse_never_crashes_and_round_trips(text):
    try:
        c = CID.parse(text)
    except ValueError:
        return
    assert str(c) == text


@given(st.binary(max_size=300))
def test_of_dagcbor_round_trips(data):
    c = CID.of_dagcbor(data)
    assert CID.from_bytes(bytes(c)) == c
    assert CID.parse(str(c)) == c
