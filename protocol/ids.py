"""Principal identities (PROTOCOL.md §1): Ed25519 public key <-> did:key <-> libp2p PeerID, with no lookup.

Pure mappings of 32 raw key bytes; whether the bytes are a valid curve point is the signature check's business.
"""

from __future__ import annotations

import base58

from protocol.errors import ErrorCode, ProtocolError

_DID_PREFIX = "did:key:z"
_ED25519_MULTICODEC = b"\xed\x01"
# libp2p PublicKey protobuf: field 1 (KeyType) = 1 (Ed25519), field 2 (Data) = 32 bytes.
_PROTOBUF_ED25519 = b"\x08\x01\x12\x20"
# Identity multihash (code 0x00) of the 36-byte protobuf key: libp2p inlines keys of at most 42 bytes.
_PEER_ID_PREFIX = b"\x00\x24" + _PROTOBUF_ED25519
_SHA2_256_MULTIHASH = b"\x12\x20"


def _malformed(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MALFORMED, message)


def _key_bytes(pk) -> bytes:
    if not isinstance(pk, (bytes, bytearray, memoryview)):
        raise _malformed(f"an Ed25519 public key must be bytes, not {type(pk).__name__}")
    pk = bytes(pk)
    if len(pk) != 32:
        raise _malformed(f"an Ed25519 public key is 32 bytes, not {len(pk)}")
    return pk


def _b58decode(text: str, what: str) -> bytes:
    try:
        raw = base58.b58decode(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise _malformed(f"{what} is not valid base58btc") from None
    # The base58 library strips trailing whitespace; one identity must have exactly one text.
    if base58.b58encode(raw).decode("ascii") != text:
        raise _malformed(f"{what} is not in canonical base58btc form")
    return raw


def did_from_public_key(pk: bytes) -> str:
    return _DID_PREFIX + base58.b58encode(_ED25519_MULTICODEC + _key_bytes(pk)).decode("ascii")


def public_key_from_did(did: str) -> bytes:
    if not isinstance(did, str):
        raise _malformed(f"a DID must be text, not {type(did).__name__}")
    if not did.startswith(_DID_PREFIX):
        raise _malformed("a DID must be a base58btc did:key, starting with 'did:key:z'")
    raw = _b58decode(did[len(_DID_PREFIX) :], "the did:key")
    if not raw.startswith(_ED25519_MULTICODEC):
        raise _malformed("the did:key is not an Ed25519 key (multicodec 0xed01)")
    if len(raw) != 34:
        raise _malformed(f"the did:key holds a {len(raw) - 2}-byte key; an Ed25519 key is 32 bytes")
    return raw[2:]


def peer_id_from_public_key(pk: bytes) -> str:
    return base58.b58encode(_PEER_ID_PREFIX + _key_bytes(pk)).decode("ascii")


def public_key_from_peer_id(peer_id: str | bytes) -> bytes:
    """The Ed25519 key inlined in a PeerID, given as base58btc text or as the binary multihash."""
    if isinstance(peer_id, str):
        raw = _b58decode(peer_id, "the PeerID")
    elif isinstance(peer_id, (bytes, bytearray, memoryview)):
        raw = bytes(peer_id)
    else:
        raise _malformed(f"a PeerID must be text or bytes, not {type(peer_id).__name__}")
    if raw.startswith(_SHA2_256_MULTIHASH):
        raise _malformed("the PeerID is a sha2-256 hash of a non-Ed25519 key, so it carries no Ed25519 key")
    if raw[:1] != b"\x00" or len(raw) < 2:
        raise _malformed("the PeerID is not an identity multihash of a public key")
    if raw[1] != len(raw) - 2:
        raise _malformed("the PeerID's identity multihash length does not match its content")
    if raw[2:3] == b"\x08" and len(raw) > 3 and raw[3] != 1:
        raise _malformed(f"the PeerID's key is of libp2p key type {raw[3]}, not Ed25519 (1)")
    if raw[:6] != _PEER_ID_PREFIX or len(raw) != 38:
        raise _malformed("the PeerID does not hold a 32-byte Ed25519 key in libp2p's protobuf form")
    return raw[6:]


def did_from_peer_id(peer_id: str | bytes) -> str:
    return did_from_public_key(public_key_from_peer_id(peer_id))


def peer_id_from_did(did: str) -> str:
    return peer_id_from_public_key(public_key_from_did(did))


def is_did(text: str) -> bool:
    """True when `text` is a well-formed Ed25519 did:key (the only DID kind this protocol uses)."""
    try:
        public_key_from_did(text)
    except ProtocolError:
        return False
    return True
