"""Consent requests, grants and revocations: building, parsing, every rejection rule, end to end with validation."""

from __future__ import annotations

import nacl.signing
import pytest

from consent.envelope import Delegation, parse_token, seal_envelope, sign_invocation
from consent.request import (
    CONSENT_REQUEST_TAG, REVOKE_COMMAND, Scope, build_grant, build_revocation, parse_consent_request,
    parse_revocation, sign_consent_request,
)
from consent.validate import check_node_rules, validate_invocation
from protocol import dagcbor
from protocol.cid import CID
from protocol.errors import ErrorCode, ProtocolError
from protocol.ids import did_from_public_key

OWNER = nacl.signing.SigningKey(b"\x21" * 32)
AGENT = nacl.signing.SigningKey(b"\x22" * 32)
OTHER = nacl.signing.SigningKey(b"\x23" * 32)
OWNER_DID, AGENT_DID, OTHER_DID = (did_from_public_key(bytes(k.verify_key)) for k in (OWNER, AGENT, OTHER))
NOW = 1_800_000_000
SCOPES = [Scope("/pds/read", "cv/"), Scope("/pds/list", "cv/"), Scope("/pds/write", "cv/certificates/acme")]


def request(**over):
    kw = dict(aud=OWNER_DID, scopes=SCOPES, purpose="Show your CV to recruiters", description="We render it.",
              retention_days=30, exp=NOW + 86400, iat=NOW, addrs=["/ip4/127.0.0.1/tcp/4001"])
    kw.update(over)
    return sign_consent_request(AGENT, **kw)


def test_request_round_trip():
    req = request()
    again = parse_consent_request(req.raw)
    assert again == req and again.cid == CID.of_dagcbor(req.raw)
    assert (again.iss, again.aud, again.scopes, again.retention_days, again.addrs) == (
        AGENT_DID, OWNER_DID, tuple(SCOPES), 30, ("/ip4/127.0.0.1/tcp/4001",))
    assert dagcbor.decode(req.raw)[1].keys() == {"h", CONSENT_REQUEST_TAG}
    assert request(addrs=None).addrs is None


def _payload(**over):
    p = {"iss": AGENT_DID, "aud": OWNER_DID, "scopes": [s.to_wire() for s in SCOPES], "purpose": "p",
         "description": "", "retention_days": 1, "exp": NOW + 10, "iat": NOW, "nonce": b"n" * 12}
    p.update(over)
    return {k: v for k, v in p.items() if v is not DROP}


DROP = object()
BAD_REQUESTS = [
    ("no-scopes", _payload(scopes=[]), ErrorCode.INVALID_CLAIM),
    ("17-scopes", _payload(scopes=[{"cmd": "/pds/read", "path": f"p{i}"} for i in range(17)]), ErrorCode.INVALID_CLAIM),
    ("dup-scope", _payload(scopes=[{"cmd": "/pds/read", "path": "a"}] * 2), ErrorCode.INVALID_CLAIM),
    ("scopes-map", _payload(scopes={"cmd": "/pds/read", "path": "a"}), ErrorCode.MALFORMED),
    ("scope-extra-key", _payload(scopes=[{"cmd": "/pds/read", "path": "a", "x": 1}]), ErrorCode.MALFORMED),
    ("scope-path-int", _payload(scopes=[{"cmd": "/pds/read", "path": 1}]), ErrorCode.MALFORMED),
    ("scope-cmd-admin", _payload(scopes=[{"cmd": "/pds/admin", "path": "a"}]), ErrorCode.INVALID_CLAIM),
    ("scope-cmd-root", _payload(scopes=[{"cmd": "/", "path": "a"}]), ErrorCode.INVALID_CLAIM),
    ("scope-path-upper", _payload(scopes=[{"cmd": "/pds/read", "path": "CV/"}]), ErrorCode.MALFORMED),
    ("scope-path-leading-slash", _payload(scopes=[{"cmd": "/pds/read", "path": "/cv"}]), ErrorCode.MALFORMED),
    ("scope-path-double-slash", _payload(scopes=[{"cmd": "/pds/read", "path": "cv//x"}]), ErrorCode.MALFORMED),
    ("scope-path-star", _payload(scopes=[{"cmd": "/pds/read", "path": "cv/*"}]), ErrorCode.MALFORMED),
    ("scope-path-dotdot", _payload(scopes=[{"cmd": "/pds/read", "path": "cv/../x"}]), ErrorCode.MALFORMED),
    ("list-on-record", _payload(scopes=[{"cmd": "/pds/list", "path": "cv/basics"}]), ErrorCode.INVALID_CLAIM),
    ("description-2001", _payload(description="x" * 2001), ErrorCode.INVALID_CLAIM),
    ("purpose-empty", _payload(purpose=" "), ErrorCode.INVALID_CLAIM),
    ("purpose-bytes", _payload(purpose=b"p"), ErrorCode.MALFORMED),
    ("nonce-11", _payload(nonce=b"n" * 11), ErrorCode.INVALID_CLAIM),
    ("nonce-33", _payload(nonce=b"n" * 33), ErrorCode.INVALID_CLAIM),
    ("nonce-text", _payload(nonce="n" * 12), ErrorCode.MALFORMED),
    ("retention-negative", _payload(retention_days=-1), ErrorCode.MALFORMED),
    ("retention-float", _payload(retention_days=1.0), ErrorCode.MALFORMED),
    ("retention-bool", _payload(retention_days=True), ErrorCode.MALFORMED),
    ("exp-before-iat", _payload(exp=NOW - 1), ErrorCode.INVALID_CLAIM),
    ("exp-missing", _payload(exp=DROP), ErrorCode.MALFORMED),
    ("iat-missing", _payload(iat=DROP), ErrorCode.MALFORMED),
    ("aud-not-did", _payload(aud="owner"), ErrorCode.INVALID_CLAIM),
    ("addrs-text", _payload(addrs="/ip4/1.2.3.4"), ErrorCode.MALFORMED),
    ("addrs-not-multiaddr", _payload(addrs=["1.2.3.4:80"]), ErrorCode.INVALID_CLAIM),
    ("addrs-17", _payload(addrs=["/ip4/1.2.3.4"] * 17), ErrorCode.INVALID_CLAIM),
    ("unknown-field", _payload(extra=True), ErrorCode.MALFORMED),
]


@pytest.mark.parametrize("payload,code", [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_are_refused(payload, code):
    with pytest.raises(ProtocolError) as err:
        parse_consent_request(seal_envelope(AGENT, CONSENT_REQUEST_TAG, payload))
    assert err.value.code is code


def test_request_limits_are_inclusive():
    ok = _payload(scopes=[{"cmd": "/pds/read", "path": f"p{i}"} for i in range(16)], description="x" * 2000,
                  nonce=b"n" * 32)
    assert len(parse_consent_request(seal_envelope(AGENT, CONSENT_REQUEST_TAG, ok)).scopes) == 16


def test_request_signature_and_tag_are_checked():
    good = seal_envelope(AGENT, CONSENT_REQUEST_TAG, _payload())
    env = dagcbor.decode(good)
    forged = dagcbor.encode([OTHER.sign(dagcbor.encode(env[1])).signature, env[1]])
    with pytest.raises(ProtocolError) as err:
        parse_consent_request(forged)
    assert err.value.code is ErrorCode.INVALID_SIGNATURE
    with pytest.raises(ProtocolError) as err:
        parse_consent_request(seal_envelope(AGENT, "ucan/dlg@1.0.0", _payload()))
    assert err.value.code is ErrorCode.MALFORMED
    with pytest.raises(ProtocolError) as err:
        parse_consent_request(good[:-3])
    assert err.value.code is ErrorCode.MALFORMED


def test_scope_policies():
    assert Scope("/pds/read", "cv/").policy() == [["like", ".path", "cv/*"]]
    assert Scope("/pds/read", "").policy() == [["like", ".path", "*"]]
    assert Scope("/pds/read", "cv/basics").policy() == [["==", ".path", "cv/basics"]]


def test_grant_is_one_delegation_per_approved_scope():
    req = request()
    grant = build_grant(OWNER, req, SCOPES[:2], exp=NOW + 3600)
    assert [(d.cmd, d.pol) for d in grant] == [(s.cmd, s.policy()) for s in SCOPES[:2]]
    for d in grant:
        assert isinstance(parse_token(d.raw), Delegation)
        assert (d.iss, d.sub, d.aud, d.exp) == (OWNER_DID, OWNER_DID, AGENT_DID, NOW + 3600)
        assert d.meta == {"purpose": req.purpose, "request": req.cid, "retention_days": 30,
                          "lawful_basis": "consent", "redelegate": False}
    assert build_grant(OWNER, req, SCOPES)[0].exp == req.exp
    assert build_grant(OWNER, req, SCOPES[:1], redelegate=True)[0].meta["redelegate"] is True


@pytest.mark.parametrize("key,scopes,exp,code", [
    (OTHER, SCOPES, None, ErrorCode.INVALID_AUDIENCE),  # not the request's owner
    (OWNER, [], None, ErrorCode.INVALID_CLAIM),
    (OWNER, [Scope("/pds/delete", "cv/")], None, ErrorCode.INVALID_CLAIM),  # not requested
    (OWNER, SCOPES[:1] * 2, None, ErrorCode.INVALID_CLAIM),
    (OWNER, SCOPES, NOW + 86401, ErrorCode.INVALID_CLAIM),  # outlasts the request
], ids=["wrong-owner", "none-approved", "unrequested", "twice", "too-long"])
def test_grant_refusals(key, scopes, exp, code):
    with pytest.raises(ProtocolError) as err:
        build_grant(key, request(), scopes, exp=exp)
    assert err.value.code is code


def _read(path: str, cmd: str = "/pds/read", grant=None):
    grant = grant or build_grant(OWNER, request(), SCOPES)
    d = next(d for d in grant if d.cmd == cmd)
    inv = sign_invocation(AGENT, sub=OWNER_DID, cmd=cmd, args={"path": path}, prf=[d.cid], exp=NOW + 60, aud=OWNER_DID)
    chain = validate_invocation(inv, grant, now=NOW)
    check_node_rules(chain, remote_did=AGENT_DID, node_did=OWNER_DID, now=NOW, is_revoked=lambda c: False)
    return chain


@pytest.mark.parametrize("path,cmd,ok", [
    ("cv/basics", "/pds/read", True), ("cv/work/acme-2021", "/pds/read", True), ("cvx/basics", "/pds/read", False),
    ("health/x", "/pds/read", False), ("cv/", "/pds/list", True), ("", "/pds/list", False),
    ("cv/certificates/acme", "/pds/write", True), ("cv/certificates/acme2", "/pds/write", False),
])
def test_grants_cover_exactly_their_scopes(path, cmd, ok):
    if ok:
        _read(path, cmd)
    else:
        with pytest.raises(ProtocolError) as err:
            _read(path, cmd)
        assert err.value.code is ErrorCode.MATCH_ERROR


def test_revocation_round_trip():
    d = build_grant(OWNER, request(), SCOPES[:1])[0]
    rev = build_revocation(OWNER, d)
    assert (rev.cmd, rev.args, rev.iss, rev.sub, rev.prf, rev.exp) == (
        REVOKE_COMMAND, {"revoke": d.cid}, OWNER_DID, OWNER_DID, (), d.exp)
    parsed = parse_revocation(rev.raw, issuer=d.iss)
    assert parsed.revoked == d.cid and parsed.issuer == OWNER_DID
    with pytest.raises(ProtocolError) as err:
        parse_revocation(rev.raw, issuer=AGENT_DID)
    assert err.value.code is ErrorCode.UNAUTHORIZED
    with pytest.raises(ProtocolError) as err:
        build_revocation(AGENT, d)
    assert err.value.code is ErrorCode.UNAUTHORIZED


@pytest.mark.parametrize("kw,code", [
    (dict(cmd="/pds/read"), ErrorCode.INVALID_CLAIM),
    (dict(args={"revoke": "bafy"}), ErrorCode.MALFORMED),
    (dict(args={"revoke": CID.of_dagcbor(b"\xa0"), "also": 1}), ErrorCode.MALFORMED),
    (dict(args={}), ErrorCode.MALFORMED),
    (dict(sub=AGENT_DID), ErrorCode.INVALID_CLAIM),
    (dict(prf=[CID.of_dagcbor(b"\xa0")]), ErrorCode.INVALID_CLAIM),
], ids=["wrong-cmd", "cid-as-text", "extra-arg", "no-arg", "other-subject", "with-proofs"])
def test_bad_revocations(kw, code):
    base = dict(sub=OWNER_DID, cmd=REVOKE_COMMAND, args={"revoke": CID.of_dagcbor(b"\xa0")}, prf=[], exp=None)
    base.update(kw)
    with pytest.raises(ProtocolError) as err:
        parse_revocation(sign_invocation(OWNER, **base).raw)
    assert err.value.code is code


def test_forged_revocation_is_invalid_signature():
    rev = build_revocation(OWNER, build_grant(OWNER, request(), SCOPES[:1])[0])
    env = dagcbor.decode(rev.raw)
    forged = dagcbor.encode([AGENT.sign(dagcbor.encode(env[1])).signature, env[1]])
    with pytest.raises(ProtocolError) as err:
        parse_revocation(forged)
    assert err.value.code is ErrorCode.INVALID_SIGNATURE
