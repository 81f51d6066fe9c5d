"""Identities: did:key <-> Ed25519 key <-> PeerID round trips, cross-checked with py-libp2p and the UCAN fixtures."""

import base64
import json
import pathlib

import base58
import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import Ed25519PublicKey
from libp2p.crypto.secp256k1 import create_new_key_pair as secp256k1_key_pair
from libp2p.peer.id import ID

from protocol import dagcbor
from protocol.errors import ErrorCode, ProtocolError
from protocol.ids import (
    did_from_peer_id,
    did_from_public_key,
    is_did,
    peer_id_from_did,
    peer_id_from_public_key,
    public_key_from_did,
    public_key_from_peer_id,
)

FIXTURES = pathlib.Path("/work/shared/fixtures/ucan-1.0.0")
PK = bytes(range(32))
keys = st.binary(min_size=32, max_size=32)


def malformed(fn, arg):
    with pytest.raises(ProtocolError) as e:
        fn(arg)
    assert e.value.code is ErrorCode.MALFORMED
    assert e.value.message and e.value.message != "Malformed"
    return e.value.message


@given(keys)
def test_round_trips(pk):
    did = did_from_public_key(pk)
    peer_id = peer_id_from_public_key(pk)
    assert did.startswith("did:key:z6Mk") and is_did(did)
    assert peer_id.startswith("12D3KooW")
    assert public_key_from_did(did) == pk
    assert public_key_from_peer_id(peer_id) == pk
    assert public_key_from_peer_id(base58.b58decode(peer_id)) == pk
    assert did_from_peer_id(peer_id) == did
    assert did_from_peer_id(base58.b58decode(peer_id)) == did
    assert peer_id_from_did(did) == peer_id


@given(keys)
def test_peer_id_agrees_with_py_libp2p(pk):
    libp2p_id = ID.from_pubkey(Ed25519PublicKey.from_bytes(pk))
    assert peer_id_from_public_key(pk) == libp2p_id.to_base58()
    assert public_key_from_peer_id(libp2p_id.to_bytes()) == pk
    assert ID.from_base58(peer_id_from_public_key(pk)).extract_public_key().to_bytes() == pk


def test_fixture_principals_map_consistently():
    fixture = json.loads((FIXTURES / "delegation.json").read_text())
    dids = {}
    for name, encoded in fixture["principals"].items():
        raw = base64.b64decode(encoded)
        assert raw[:2] == b"\x80\x26"  # varint(0x1300), the ed25519-priv multicodec
        pk = nacl.signing.SigningKey(raw[2:]).verify_key.encode()
        dids[name] = did_from_public_key(pk)
        assert public_key_from_did(dids[name]) == pk
        assert did_from_peer_id(peer_id_from_did(dids[name])) == dids[name]
        assert peer_id_from_did(dids[name]) == ID.from_pubkey(Ed25519PublicKey.from_bytes(pk)).to_base58()
    case = next(c for c in fixture["valid"] if c["name"] == "basic delegation bob > carol")
    payload = case["envelope"]["payload"]
    assert payload["iss"] == payload["sub"] == dids["bob"]
    assert payload["aud"] == dids["carol"]
    # The invocation fixtures' tokens name these three principals (and one outsider); every DID in them maps.
    named = set()

    def walk(node):
        if isinstance(node, dict):
            if set(node) == {"/"} and "bytes" in node["/"]:
                b64 = node["/"]["bytes"]
                _signature, sig_payload = dagcbor.decode(base64.b64decode(b64 + "=" * (-len(b64) % 4)))
                (body,) = [v for k, v in sig_payload.items() if k != "h"]
                named.update(body[k] for k in ("iss", "aud", "sub") if body.get(k) is not None)
                return
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads((FIXTURES / "invocation.json").read_text()))
    assert set(dids.values()) <= named
    for did in named:
        assert is_did(did) and did_from_peer_id(peer_id_from_did(did)) == did


def test_known_vector():
    # Ed25519 did:key test vector from the did:key method specification.
    did = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
    pk = public_key_from_did(did)
    assert did_from_public_key(pk) == did
    assert public_key_from_peer_id(peer_id_from_did(did)) == pk


@pytest.mark.parametrize("pk", [b"", bytes(31), bytes(33), "x" * 32, None, 32])
def test_bad_public_keys(pk):
    malformed(did_from_public_key, pk)
    malformed(peer_id_from_public_key, pk)


def test_public_key_accepts_buffers():
    assert did_from_public_key(bytearray(PK)) == did_from_public_key(PK)
    assert peer_id_from_public_key(memoryview(PK)) == peer_id_from_public_key(PK)


def _z(raw: bytes) -> str:
    return "did:key:z" + base58.b58encode(raw).decode()


@pytest.mark.parametrize(
    "did, words",
    [
        ("", "did:key:z"),
        ("did:web:example.com", "did:key:z"),
        ("did:key:" + "u" + base64.urlsafe_b64encode(b"\xed\x01" + PK).decode(), "did:key:z"),
        ("DID:KEY:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp", "did:key:z"),
        ("did:key:z", "Ed25519"),
        ("did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooW0", "base58"),  # '0' is not base58
        ("did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp ", "canonical"),
        ("did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp\n", "canonical"),
        ("did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWé", "base58"),
        (_z(b"\xe7\x01" + bytes(33)), "Ed25519"),  # secp256k1 multicodec
        (_z(b"\x80\x24" + bytes(33)), "Ed25519"),  # P-256 multicodec
        (_z(b"\xed\x01" + bytes(31)), "32 bytes"),
        (_z(b"\xed\x01" + bytes(33)), "32 bytes"),
        (_z(b"\xed"), "Ed25519"),
    ],
)
def test_bad_dids(did, words):
    assert words in malformed(public_key_from_did, did)
    malformed(peer_id_from_did, did)
    assert not is_did(did)


@pytest.mark.parametrize("value", [None, 42, b"did:key:z6Mk", ["did:key:z6Mk"]])
def test_non_text_dids(value):
    malformed(public_key_from_did, value)
    assert not is_did(value)


def test_bad_peer_ids():
    good = base58.b58decode(peer_id_from_public_key(PK))
    secp = ID.from_pubkey(secp256k1_key_pair().public_key)
    cases = [
        ("", "identity multihash"),
        ("0OIl", "base58"),
        (peer_id_from_public_key(PK) + " ", "canonical"),
        ("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", "sha2-256"),  # an RSA-style hashed PeerID
        (b"\x12\x20" + bytes(32), "sha2-256"),
        (secp.to_base58(), "key type 2"),
        (secp.to_bytes(), "key type 2"),
        (b"\x01\x24" + good[2:], "identity multihash"),
        (good[:-1], "length"),
        (good + b"\x00", "length"),
        (b"\x00\x24\x08\x01\x12\x21" + bytes(32), "Ed25519"),  # protobuf says 33 bytes of data
        (b"\x00\x24\x10\x01\x12\x20" + bytes(32), "Ed25519"),  # wrong protobuf field
        (b"\x00", "identity multihash"),
        (b"", "identity multihash"),
        (bytes(1000), "length"),
    ]
    for peer_id, words in cases:
        assert words in malformed(public_key_from_peer_id, peer_id), peer_id
        malformed(did_from_peer_id, peer_id)


@pytest.mark.parametrize("value", [None, 42, 3.5, ["12D3KooW"]])
def test_non_text_peer_ids(value):
    malformed(public_key_from_peer_id, value)


@given(st.text(max_size=80))
def test_random_did_text_only_raises_malformed(text):
    for candidate in (text, "did:key:z" + text, "did:key:z6Mk" + text):
        try:
            pk = public_key_from_did(candidate)
        except ProtocolError as e:
            assert e.code is ErrorCode.MALFORMED
            assert not is_did(candidate)
        else:
            assert did_from_public_key(pk) == candidate and is_did(candidate)


@given(st.one_of(st.binary(max_size=60), st.text(max_size=60)))
def test_random_peer_ids_only_raise_malformed(value):
    try:
        pk = public_key_from_peer_id(value)
    except ProtocolError as e:
        assert e.code is ErrorCode.MALFORMED
    else:
        assert len(pk) == 32
