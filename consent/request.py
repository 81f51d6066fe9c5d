"""The consent vocabulary on top of UCAN: scopes, signed consent requests, grants, and revocation records.

A consent request is a `mydata/consent-request@1.0.0` envelope signed by the requester (PROTOCOL.md §5);
a grant is one delegation per approved scope (§4); a revocation is an owner-signed `/ucan/revoke` invocation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import nacl.signing
import nacl.utils

from consent.envelope import (
    Delegation, Invocation, FieldReader, check_signature, open_envelope, parse_token, seal_envelope, sign_delegation,
    sign_invocation, verify_signature,
)
from protocol.cid import CID
from protocol.errors import ErrorCode, ProtocolError
from protocol.ids import did_from_public_key
from protocol.paths import validate_path, validate_prefix

__all__ = [
    "CONSENT_REQUEST_TAG", "PDS_COMMANDS", "REVOKE_COMMAND", "Scope", "ConsentRequest", "Revocation",
    "sign_consent_request", "read_consent_request", "parse_consent_request", "build_grant", "build_revocation",
    "parse_revocation",
]

CONSENT_REQUEST_TAG = "mydata/consent-request@1.0.0"
PDS_COMMANDS = ("/pds/read", "/pds/list", "/pds/write", "/pds/delete")
REVOKE_COMMAND = "/ucan/revoke"
MAX_SCOPES = 16
MAX_DESCRIPTION = 2000
MAX_PURPOSE = 2000
MAX_ADDRS = 16
MAX_ADDR_LEN = 256
NONCE_RANGE = (12, 32)


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_CLAIM, message)


def _malformed(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MALFORMED, message)


@dataclass(frozen=True)
class Scope:
    """One command on a prefix (`cv/`, or `""` for everything) or on one record (`cv/basics`)."""

    cmd: str
    path: str

    def __post_init__(self) -> None:
        if self.cmd not in PDS_COMMANDS:
            raise _invalid(f"scope command {self.cmd!r} is not one of {', '.join(PDS_COMMANDS)}")
        if self.is_prefix:
            validate_prefix(self.path)
        else:
            validate_path(self.path)
            if self.cmd == "/pds/list":
                raise _invalid("a /pds/list scope must name a prefix ('' or ending in '/')")

    @property
    def is_prefix(self) -> bool:
        return self.path == "" or (isinstance(self.path, str) and self.path.endswith("/"))

    def policy(self) -> list:
        # Paths cannot contain '*' or '\', so the prefix needs no escaping inside the glob.
        if self.is_prefix:
            return [["like", ".path", self.path + "*"]]
        return [["==", ".path", self.path]]

    def to_wire(self) -> dict:
        return {"cmd": self.cmd, "path": self.path}

    @classmethod
    def from_wire(cls, obj: Any) -> "Scope":
        if not isinstance(obj, dict) or set(obj) != {"cmd", "path"}:
            raise _malformed("a scope must be a map of exactly 'cmd' and 'path'")
        if not isinstance(obj["cmd"], str) or not isinstance(obj["path"], str):
            raise _malformed("a scope's 'cmd' and 'path' must be text")
        return cls(obj["cmd"], obj["path"])


@dataclass(frozen=True, eq=False)
class ConsentRequest:
    raw: bytes
    cid: CID
    signature: bytes
    sig_payload_bytes: bytes
    iss: str
    aud: str
    scopes: tuple[Scope, ...]
    purpose: str
    description: str
    retention_days: int
    exp: int
    iat: int
    nonce: bytes
    addrs: tuple[str, ...] | None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConsentRequest) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)


def _uint(f: FieldReader, name: str) -> int:
    v = f.raw(name)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise _malformed(f"consent request field {name!r} must be an unsigned integer")
    if v > 2**53 - 1:
        raise _invalid(f"consent request field {name!r} is outside the 53-bit range")
    return v


def _bounded_text(f: FieldReader, name: str, limit: int, *, nonempty: bool) -> str:
    v = f.text(name)
    if len(v) > limit:
        raise _invalid(f"consent request {name} is longer than {limit} characters")
    if nonempty and not v.strip():
        raise _invalid(f"consent request {name} must not be empty")
    return v


def read_consent_request(raw: bytes) -> ConsentRequest:
    """Decode and check every field of a consent request. Does NOT verify the signature."""
    o = open_envelope(raw, lambda tag: tag == CONSENT_REQUEST_TAG)
    f = FieldReader(o.payload, "consent request")
    iss, aud = f.did("iss"), f.did("aud")
    scopes_raw = f.raw("scopes")
    if not isinstance(scopes_raw, list):
        raise _malformed("consent request scopes must be a list")
    if not 1 <= len(scopes_raw) <= MAX_SCOPES:
        raise _invalid(f"a consent request asks for 1 to {MAX_SCOPES} scopes")
    scopes = tuple(Scope.from_wire(s) for s in scopes_raw)
    if len(set(scopes)) != len(scopes):
        raise _invalid("a consent request lists a scope twice")
    purpose = _bounded_text(f, "purpose", MAX_PURPOSE, nonempty=True)
    description = _bounded_text(f, "description", MAX_DESCRIPTION, nonempty=False)
    retention_days, exp, iat = _uint(f, "retention_days"), _uint(f, "exp"), _uint(f, "iat")
    if exp <= iat:
        raise _invalid("a consent request must end after it was issued")
    nonce = f.nonce()
    if not NONCE_RANGE[0] <= len(nonce) <= NONCE_RANGE[1]:
        raise _invalid(f"a consent request nonce is {NONCE_RANGE[0]} to {NONCE_RANGE[1]} bytes")
    addrs = None
    if "addrs" in o.payload:
        addrs = f.raw("addrs")
        if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
            raise _malformed("consent request addrs must be a list of multiaddr texts")
        if len(addrs) > MAX_ADDRS or not all(a.startswith("/") and len(a) <= MAX_ADDR_LEN for a in addrs):
            raise _invalid(f"consent request addrs must be at most {MAX_ADDRS} multiaddr texts")
        addrs = tuple(addrs)
    f.done()
    return ConsentRequest(
        raw=o.raw, cid=CID.of_dagcbor(o.raw), signature=o.signature, sig_payload_bytes=o.sig_payload_bytes,
        iss=iss, aud=aud, scopes=scopes, purpose=purpose, description=description, retention_days=retention_days,
        exp=exp, iat=iat, nonce=nonce, addrs=addrs,
    )


def parse_consent_request(raw: bytes) -> ConsentRequest:
    """Decode, check every field, and verify the requester's signature."""
    request = read_consent_request(raw)
    check_signature(request.iss, request.sig_payload_bytes, request.signature)
    return request


def sign_consent_request(signing_key: nacl.signing.SigningKey, *, aud: str, scopes: Iterable[Scope | dict],
                         purpose: str, description: str, retention_days: int, exp: int, iat: int,
                         addrs: list[str] | None = None, nonce: bytes | None = None) -> ConsentRequest:
    payload: dict[str, Any] = {
        "iss": did_from_public_key(bytes(signing_key.verify_key)), "aud": aud,
        "scopes": [s.to_wire() if isinstance(s, Scope) else s for s in scopes],
        "purpose": purpose, "description": description, "retention_days": retention_days,
        "exp": exp, "iat": iat, "nonce": nacl.utils.random(16) if nonce is None else nonce,
    }
    if addrs is not None:
        payload["addrs"] = list(addrs)
    return read_consent_request(seal_envelope(signing_key, CONSENT_REQUEST_TAG, payload))


def build_grant(owner_key: nacl.signing.SigningKey, request: ConsentRequest, approved_scopes: Iterable[Scope],
                *, exp: int | None = None, redelegate: bool = False) -> list[Delegation]:
    """One delegation per approved scope, owner to requester, no later than the request's `exp`."""
    owner = did_from_public_key(bytes(owner_key.verify_key))
    if request.aud != owner:
        raise ProtocolError(ErrorCode.INVALID_AUDIENCE, "this consent request is addressed to someone else")
    approved = list(approved_scopes)
    if not approved:
        raise _invalid("a grant needs at least one approved scope (approving none is a denial)")
    for scope in approved:
        if scope not in request.scopes:
            raise _invalid(f"scope {scope.cmd} {scope.path!r} was not requested")
    if len(set(approved)) != len(approved):
        raise _invalid("a scope is approved twice")
    exp = request.exp if exp is None else exp
    if exp > request.exp:
        raise _invalid("a grant may not outlast the consent request's exp")
    meta = {
        "purpose": request.purpose, "request": request.cid, "retention_days": request.retention_days,
        "lawful_basis": "consent", "redelegate": bool(redelegate),
    }
    return [
        sign_delegation(owner_key, aud=request.iss, sub=owner, cmd=s.cmd, pol=s.policy(), exp=exp, meta=meta)
        for s in approved
    ]


@dataclass(frozen=True)
class Revocation:
    invocation: Invocation
    revoked: CID

    @property
    def issuer(self) -> str:
        return self.invocation.iss


def build_revocation(owner_key: nacl.signing.SigningKey, delegation: Delegation) -> Invocation:
    """A `/ucan/revoke` invocation by the delegation's issuer, expiring with the delegation."""
    owner = did_from_public_key(bytes(owner_key.verify_key))
    if delegation.iss != owner:
        raise ProtocolError(ErrorCode.UNAUTHORIZED, "only a delegation's issuer revokes it")
    return sign_invocation(owner_key, sub=owner, cmd=REVOKE_COMMAND, args={"revoke": delegation.cid}, prf=[],
                           exp=delegation.exp)


def parse_revocation(raw: bytes, *, issuer: str | None = None) -> Revocation:
    """Parse and verify a revocation record; with `issuer`, it must be that principal's (Unauthorized)."""
    token = parse_token(raw)
    if not isinstance(token, Invocation) or token.cmd != REVOKE_COMMAND:
        raise _invalid("a revocation is a /ucan/revoke invocation")
    if set(token.args) != {"revoke"} or not isinstance(token.args["revoke"], CID):
        raise _malformed("a revocation's args must be exactly {'revoke': <CID>}")
    if token.prf or token.iss != token.sub:
        raise _invalid("a revocation is issued by its subject with no proofs")
    verify_signature(token)
    if issuer is not None and token.iss != issuer:
        raise ProtocolError(ErrorCode.UNAUTHORIZED, "the revocation is not signed by the delegation's issuer")
    return Revocation(token, token.args["revoke"])


SCOPE_VERBS = ("read", "list", "write", "delete")


def parse_scope_text(text: str) -> Scope:
    """`read:cv/`, `write:cv/certificates/`, `list:cv/`, `delete:cv/x` -> Scope: how people type scopes."""
    verb, sep, path = text.partition(":")
    if not sep or verb not in SCOPE_VERBS:
        raise _malformed(f"scope '{text}' must look like read:cv/ (one of {', '.join(SCOPE_VERBS)}, a colon, a path)")
    return Scope(f"/pds/{verb}", path)


def scope_of(delegation: Delegation) -> dict:
    """The scope a grant delegation carries: its command and the path its one policy statement names.

    The inverse of `Scope.policy()`: `like "cv/*"` is the prefix `cv/`, `== "cv/basics"` the record `cv/basics`.
    """
    op, _selector, value = delegation.pol[0]
    return {"cmd": delegation.cmd, "path": value[:-1] if op == "like" else value}
