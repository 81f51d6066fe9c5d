"""UCAN 1.0 envelopes: sealing, opening and signature checks of delegations and invocations.

An envelope is `[signature, {"h": varsig header, <tag>: payload}]` in canonical DAG-CBOR; the signature is
Ed25519 over the sigPayload's bytes; a token's CID is CIDv1 dag-cbor over the whole envelope.
Opening checks every field's type (`Malformed`) and every value's form (`InvalidClaim`); it never checks the
signature, which `verify_signature` does, so a validator can cache that costly step by CID.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Callable, Union

import nacl.exceptions
import nacl.signing
import nacl.utils

from consent.policy import Policy, parse_policy
from protocol import dagcbor
from protocol.cid import CID
from protocol.errors import ErrorCode, ProtocolError
from protocol.ids import did_from_public_key, public_key_from_did

__all__ = [
    "Delegation", "Invocation", "Token", "VARSIG_ED25519", "DLG_TAG", "INV_TAG", "open_envelope",
    "seal_envelope", "parse_token", "sign_delegation", "sign_invocation", "verify_signature",
]

# varsig: prefix 0x34, version 1, Ed25519 key (0xed), EdDSA (0xed), SHA2-512 (0x13), DAG-CBOR payload (0x71).
VARSIG_ED25519 = bytes.fromhex("3401ed01ed011371")
DLG_TAG = "ucan/dlg@1.0.0"
INV_TAG = "ucan/inv@1.0.0"
_READ_TAGS = {DLG_TAG: "dlg", DLG_TAG + "-rc.1": "dlg", INV_TAG: "inv", INV_TAG + "-rc.1": "inv"}

MAX_TOKEN_BYTES = 64 * 1024
MAX_TIME = 2**53 - 1  # the spec's 53-bit bound on timestamps
_COMMAND = re.compile(r"/|(/[^/]+)+")


def _malformed(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MALFORMED, message)


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_CLAIM, message)


def _cbor_head_len(n: int) -> int:
    return 1 if n < 24 else 2 if n < 0x100 else 3 if n < 0x10000 else 5 if n < 0x100000000 else 9


@dataclass(frozen=True)
class Opened:
    """A decoded envelope before its payload is interpreted."""

    raw: bytes
    signature: bytes
    tag: str
    payload: dict
    sig_payload_bytes: bytes


def open_envelope(raw: bytes, tags: Callable[[str], bool], *, max_size: int = MAX_TOKEN_BYTES) -> Opened:
    """Decode an envelope strictly and check its shape; `tags` says which payload tags are acceptable."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise _malformed("a signed envelope must be bytes")
    raw = bytes(raw)
    env = dagcbor.decode(raw, max_size=max_size)
    if not isinstance(env, list) or len(env) != 2:
        raise _malformed("a signed envelope must be a two-element array [signature, sigPayload]")
    sig, sp = env
    if not isinstance(sig, bytes):
        raise _malformed("an envelope's signature must be bytes")
    if not isinstance(sp, dict) or len(sp) != 2 or "h" not in sp:
        raise _malformed("an envelope's sigPayload must be a map of the header 'h' and one tagged payload")
    if sp["h"] != VARSIG_ED25519:
        raise _malformed("the varsig header must be Ed25519 over DAG-CBOR (34 01 ed01 ed01 13 71)")
    (tag,) = (k for k in sp if k != "h")
    if not isinstance(tag, str) or not tags(tag):
        raise _malformed(f"unexpected envelope tag {tag!r}")
    payload = sp[tag]
    if not isinstance(payload, dict):
        raise _malformed("an envelope's payload must be a map")
    # Canonical decoding means the sigPayload's bytes are exactly the rest of the envelope after the signature.
    start = 1 + _cbor_head_len(len(sig)) + len(sig)
    return Opened(raw, sig, tag, payload, raw[start:])


def seal_envelope(signing_key: nacl.signing.SigningKey, tag: str, payload: dict) -> bytes:
    """Sign and frame any payload, with no size limit (tests use it to build tokens parsing must refuse)."""
    return _seal(signing_key, tag, payload, max_size=None).raw


def _seal(signing_key: nacl.signing.SigningKey, tag: str, payload: dict, *,
          max_size: int | None = MAX_TOKEN_BYTES) -> Opened:
    """Sign and frame a payload; the Opened it returns is what open_envelope would make of the bytes.

    The envelope is the two-element array head, the signature as CBOR bytes, then the sigPayload bytes that were
    signed, so nothing is encoded twice. The payload is a fresh copy decoded from those bytes, so a token never
    shares (mutable) maps with its caller.
    """
    sig_payload_bytes = dagcbor.encode({"h": VARSIG_ED25519, tag: payload})
    signature = signing_key.sign(sig_payload_bytes).signature
    raw = b"\x82" + _bytes_head(len(signature)) + signature + sig_payload_bytes
    if max_size is not None and len(raw) > max_size:  # never sign a token that open_envelope would refuse
        raise ProtocolError(ErrorCode.TOO_LARGE, f"the token would be {len(raw)} bytes, over {max_size}")
    fresh = dagcbor.decode_trusted(sig_payload_bytes)[tag]
    return Opened(raw, signature, tag, fresh, sig_payload_bytes)


def _bytes_head(n: int) -> bytes:
    """The CBOR head of a byte string of length n (major type 2), shortest form."""
    if n < 24:
        return bytes([0x40 | n])
    size = _cbor_head_len(n) - 1
    return bytes([0x40 | {1: 24, 2: 25, 4: 26, 8: 27}[size]]) + n.to_bytes(size, "big")


@functools.lru_cache(maxsize=4096)
def _verify_key(did: str) -> nacl.signing.VerifyKey:
    # Decoding a did:key (base58) costs about as much as the signature check; peers repeat, so remember them.
    # Failures raise and are therefore never cached.
    return nacl.signing.VerifyKey(public_key_from_did(did))


def _is_did(text: str) -> bool:
    try:
        _verify_key(text)
    except ProtocolError:
        return False
    return True


def check_signature(iss: str, sig_payload_bytes: bytes, signature: bytes) -> None:
    """Ed25519 check against the issuer's did:key; any failure, whatever its shape, is InvalidSignature."""
    try:
        _verify_key(iss).verify(sig_payload_bytes, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError,
            ValueError, TypeError):
        raise ProtocolError(ErrorCode.INVALID_SIGNATURE, "the signature does not verify against the issuer") from None


# ---------------------------------------------------------------- field readers

class FieldReader:
    """Reads a payload map once, field by field, and refuses any field it was not asked about."""

    def __init__(self, payload: dict, kind: str) -> None:
        self.p, self.kind, self.seen = payload, kind, set()

    def _get(self, name: str, required: bool) -> Any:
        self.seen.add(name)
        if name not in self.p:
            if required:
                raise _malformed(f"{self.kind} lacks the field {name!r}")
            return _ABSENT
        return self.p[name]

    def did(self, name: str, *, required: bool = True, nullable: bool = False) -> Any:
        v = self._get(name, required)
        if v is _ABSENT or (v is None and nullable):
            return None
        if not isinstance(v, str):
            raise _malformed(f"{self.kind} field {name!r} must be a DID text")
        if not _is_did(v):
            # Every principal here is an Ed25519 did:key; a signer must be, to be verifiable at all.
            raise _invalid(f"{self.kind} field {name!r} is not an Ed25519 did:key: {v!r}")
        return v

    def text(self, name: str) -> str:
        v = self._get(name, True)
        if not isinstance(v, str):
            raise _malformed(f"{self.kind} field {name!r} must be text")
        return v

    def command(self) -> str:
        cmd = self.text("cmd")
        # UCAN commands: '/'-rooted, lowercase, no trailing or doubled '/'.
        if not _COMMAND.fullmatch(cmd) or cmd != cmd.lower():
            raise _invalid(f"{cmd!r} is not a command ('/'-rooted lowercase path without a trailing '/')")
        return cmd

    def nonce(self) -> bytes:
        v = self._get("nonce", True)
        if not isinstance(v, bytes):
            raise _malformed(f"{self.kind} nonce must be bytes")
        return v

    def time(self, name: str, *, required: bool, nullable: bool) -> int | None:
        v = self._get(name, required)
        if v is _ABSENT or (v is None and nullable):
            return None
        if not isinstance(v, int) or isinstance(v, bool):
            raise _malformed(f"{self.kind} field {name!r} must be an integer of seconds")
        if not -MAX_TIME <= v <= MAX_TIME:
            raise _invalid(f"{self.kind} field {name!r} is outside the 53-bit range")
        return v

    def map(self, name: str, *, required: bool) -> dict | None:
        v = self._get(name, required)
        if v is _ABSENT:
            return None
        if not isinstance(v, dict):
            raise _malformed(f"{self.kind} field {name!r} must be a map")
        return v

    def cid(self, name: str) -> CID | None:
        v = self._get(name, False)
        if v is _ABSENT:
            return None
        if not isinstance(v, CID):
            raise _malformed(f"{self.kind} field {name!r} must be a CID link")
        return v

    def cids(self, name: str) -> tuple[CID, ...]:
        v = self._get(name, True)
        if not isinstance(v, list) or not all(isinstance(c, CID) for c in v):
            raise _malformed(f"{self.kind} field {name!r} must be a list of CID links")
        return tuple(v)

    def raw(self, name: str) -> Any:
        return self._get(name, True)

    def done(self) -> None:
        extra = set(self.p) - self.seen
        if extra:
            raise _malformed(f"{self.kind} has unknown fields {sorted(map(str, extra))}")


_ABSENT = object()


# ---------------------------------------------------------------- tokens

@dataclass(frozen=True, eq=False)
class _Token:
    raw: bytes
    cid: CID
    tag: str
    signature: bytes
    sig_payload_bytes: bytes

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Token) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)


@dataclass(frozen=True, eq=False)
class Delegation(_Token):
    iss: str
    aud: str
    sub: str | None
    cmd: str
    pol: list
    policy: Policy
    nonce: bytes
    exp: int | None
    nbf: int | None
    meta: dict | None

    kind = "delegation"


@dataclass(frozen=True, eq=False)
class Invocation(_Token):
    iss: str
    sub: str
    cmd: str
    args: dict
    prf: tuple[CID, ...]
    nonce: bytes
    exp: int | None
    aud: str | None
    iat: int | None
    meta: dict | None
    cause: CID | None

    kind = "invocation"


Token = Union[Delegation, Invocation]


def _read_delegation(o: Opened) -> Delegation:
    f = FieldReader(o.payload, "delegation")
    pol = f.raw("pol")
    d = Delegation(
        raw=o.raw, cid=CID.of_dagcbor(o.raw), tag=o.tag, signature=o.signature,
        sig_payload_bytes=o.sig_payload_bytes,
        iss=f.did("iss"), aud=f.did("aud"), sub=f.did("sub", nullable=True), cmd=f.command(),
        pol=pol, policy=parse_policy(pol), nonce=f.nonce(),
        exp=f.time("exp", required=True, nullable=True), nbf=f.time("nbf", required=False, nullable=False),
        meta=f.map("meta", required=False),
    )
    f.done()
    return d


def _read_invocation(o: Opened) -> Invocation:
    f = FieldReader(o.payload, "invocation")
    i = Invocation(
        raw=o.raw, cid=CID.of_dagcbor(o.raw), tag=o.tag, signature=o.signature,
        sig_payload_bytes=o.sig_payload_bytes,
        iss=f.did("iss"), sub=f.did("sub"), cmd=f.command(), args=f.map("args", required=True),
        prf=f.cids("prf"), nonce=f.nonce(), exp=f.time("exp", required=True, nullable=True),
        aud=f.did("aud", required=False), iat=f.time("iat", required=False, nullable=False),
        meta=f.map("meta", required=False), cause=f.cid("cause"),
    )
    f.done()
    return i


def parse_token(raw: bytes) -> Token:
    """Decode and structurally check a delegation or invocation. Does NOT verify the signature."""
    o = open_envelope(raw, lambda tag: tag in _READ_TAGS)
    return _read_delegation(o) if _READ_TAGS[o.tag] == "dlg" else _read_invocation(o)


def verify_signature(token: Token) -> None:
    """Raise ProtocolError(InvalidSignature) unless the token is signed by its issuer."""
    check_signature(token.iss, token.sig_payload_bytes, token.signature)


def _did_of(signing_key: nacl.signing.SigningKey) -> str:
    return _did_of_key(bytes(signing_key.verify_key))


@functools.lru_cache(maxsize=256)
def _did_of_key(public_key: bytes) -> str:
    # A signer signs many tokens; its DID (a base58 encoding) need not be recomputed for each.
    return did_from_public_key(public_key)


def _fresh_nonce() -> bytes:
    return nacl.utils.random(16)


def sign_delegation(signing_key: nacl.signing.SigningKey, *, aud: str, sub: str | None, cmd: str, pol: list,
                    exp: int | None, nbf: int | None = None, meta: dict | None = None,
                    nonce: bytes | None = None) -> Delegation:
    payload: dict[str, Any] = {
        "iss": _did_of(signing_key), "aud": aud, "sub": sub, "cmd": cmd, "pol": pol,
        "nonce": _fresh_nonce() if nonce is None else nonce, "exp": exp,
    }
    if nbf is not None:
        payload["nbf"] = nbf
    if meta is not None:
        payload["meta"] = meta
    return _read_delegation(_seal(signing_key, DLG_TAG, payload))


def sign_invocation(signing_key: nacl.signing.SigningKey, *, sub: str, cmd: str, args: dict, prf: list[CID],
                    exp: int | None, aud: str | None = None, iat: int | None = None, meta: dict | None = None,
                    nonce: bytes | None = None, cause: CID | None = None) -> Invocation:
    payload: dict[str, Any] = {
        "iss": _did_of(signing_key), "sub": sub, "cmd": cmd, "args": args, "prf": list(prf),
        "nonce": _fresh_nonce() if nonce is None else nonce, "exp": exp,
    }
    for name, value in (("aud", aud), ("iat", iat), ("meta", meta), ("cause", cause)):
        if value is not None:
            payload[name] = value
    return _read_invocation(_seal(signing_key, INV_TAG, payload))
