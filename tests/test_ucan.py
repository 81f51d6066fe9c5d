"""UCAN 1.0 envelopes and chain validation: every conformance fixture, structural rejections, properties."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import nacl.signing
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import consent.validate as validate_mod
from consent.envelope import (
    DLG_TAG, INV_TAG, Delegation, Invocation, parse_token, seal_envelope, sign_delegation, sign_invocation,
    verify_signature,
)
from consent.validate import Chain, VerifiedCache, command_covers, validate_invocation
from protocol import dagcbor
from protocol.cid import CID
from protocol.errors import ErrorCode, ProtocolError
from protocol.ids import did_from_public_key

FIXTURES = Path(__file__).parent / "fixtures/ucan-1.0.0"
DLG = json.loads((FIXTURES / "delegation.json").read_text())
INV = json.loads((FIXTURES / "invocation.json").read_text())


def _b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _link(obj) -> bytes:
    return _b64(obj["/"]["bytes"])


def _principal(name: str) -> nacl.signing.SigningKey:
    raw = _b64(DLG["principals"][name])
    assert raw[:2] == b"\x80\x26"  # varint(0x1300), the ed25519-priv multicodec
    return nacl.signing.SigningKey(raw[2:])


# ---------------------------------------------------------------- conformance fixtures

@pytest.mark.parametrize("case", DLG["valid"], ids=lambda c: c["name"])
def test_delegation_fixture(case):
    raw = _b64(case["token"])
    token = parse_token(raw)
    assert isinstance(token, Delegation)
    verify_signature(token)
    assert str(token.cid) == case["cid"]
    p = case["envelope"]["payload"]
    assert (token.iss, token.aud, token.sub, token.cmd, token.pol, token.exp) == (
        p["iss"], p["aud"], p["sub"], p["cmd"], p["pol"], p["exp"])
    assert token.nonce == _b64(p["nonce"])
    assert token.signature == _b64(case["envelope"]["signature"])


def test_signing_reproduces_the_fixture_byte_for_byte():
    # Ed25519 is deterministic, so the same payload from the same key must give the same token and CID.
    case = DLG["valid"][0]
    p = case["envelope"]["payload"]
    bob = _principal("bob")
    assert did_from_public_key(bytes(bob.verify_key)) == p["iss"]
    token = sign_delegation(bob, aud=p["aud"], sub=p["sub"], cmd=p["cmd"], pol=p["pol"], exp=p["exp"],
                            nonce=_b64(p["nonce"]))
    assert token.raw == _b64(case["token"])
    assert str(token.cid) == case["cid"]


def _run_fixture(case) -> Chain:
    inv = parse_token(_link(case["invocation"]))
    assert isinstance(inv, Invocation)
    proofs = [parse_token(_link(p)) for p in case["proofs"]]
    return validate_invocation(inv, proofs, now=case["time"])


@pytest.mark.parametrize("case", INV["valid"], ids=lambda c: c["name"])
def test_invocation_fixture_valid(case):
    chain = _run_fixture(case)
    assert [d.cid for d in chain.delegations] == list(chain.invocation.prf)


@pytest.mark.parametrize("case", INV["invalid"], ids=lambda c: f'{c["name"]}-{c["error"]["name"]}')
def test_invocation_fixture_invalid(case):
    with pytest.raises(ProtocolError) as err:
        _run_fixture(case)
    assert err.value.code.value == case["error"]["name"]


def test_rc1_tags_are_read():
    alice = _principal("alice")
    did = did_from_public_key(bytes(alice.verify_key))
    for tag, payload in [
        (DLG_TAG + "-rc.1", {"iss": did, "aud": did, "sub": did, "cmd": "/", "pol": [], "nonce": b"n", "exp": None}),
        (INV_TAG + "-rc.1", {"iss": did, "sub": did, "cmd": "/x", "args": {}, "prf": [], "nonce": b"n", "exp": 5}),
    ]:
        token = parse_token(seal_envelope(alice, tag, payload))
        verify_signature(token)
        assert token.tag == tag


# ---------------------------------------------------------------- helpers: keys and chains

KEYS = [nacl.signing.SigningKey(bytes([i + 1]) * 32) for i in range(5)]
DIDS = [did_from_public_key(bytes(k.verify_key)) for k in KEYS]
NOW = 1_800_000_000


def build_chain(length: int, *, cmd: str = "/pds/read", pols=None, args=None, exp: int = NOW + 300,
                metas=None) -> tuple[Invocation, list[Delegation]]:
    """KEYS[0] owns the subject; KEYS[i] delegates to KEYS[i+1]; the last audience invokes."""
    pols = pols or [[] for _ in range(length)]
    metas = metas or [None] * length
    delegations = []
    for i in range(length):
        delegations.append(sign_delegation(KEYS[i], aud=DIDS[i + 1], sub=DIDS[0], cmd=cmd, pol=pols[i],
                                           exp=NOW + 3600, meta=metas[i]))
    inv = sign_invocation(KEYS[length], sub=DIDS[0], cmd=cmd, args={"path": "cv/basics"} if args is None else args,
                          prf=[d.cid for d in delegations], exp=exp)
    return inv, delegations


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_built_chains_validate(length):
    inv, dlgs = build_chain(length)
    chain = validate_invocation(inv, list(reversed(dlgs)) + dlgs[:1] * 2, now=NOW)  # order and extras do not matter
    assert chain.delegations == tuple(dlgs)
    assert chain.subject == DIDS[0]


def test_sign_and_parse_round_trip_every_optional_field():
    d = sign_delegation(KEYS[0], aud=DIDS[1], sub=None, cmd="/pds", pol=[["==", ".a", 1]], exp=None, nbf=5,
                        meta={"k": [1, "v"]}, nonce=b"123456789012")
    again = parse_token(d.raw)
    assert again == d and again.cid == d.cid and hash(again) == hash(d)
    assert (again.sub, again.nbf, again.meta, again.exp, again.nonce) == (None, 5, {"k": [1, "v"]}, None,
                                                                          b"123456789012")
    cause = d.cid
    i = sign_invocation(KEYS[1], sub=DIDS[0], cmd="/pds/read", args={"path": "x"}, prf=[d.cid], exp=9, aud=DIDS[2],
                        iat=3, meta={"m": True}, cause=cause)
    again = parse_token(i.raw)
    assert (again.aud, again.iat, again.meta, again.cause, again.prf) == (DIDS[2], 3, {"m": True}, cause, (d.cid,))
    assert dagcbor.decode(i.raw)[1]["h"] == bytes.fromhex("3401ed01ed011371")
    assert i.sig_payload_bytes == dagcbor.encode(dagcbor.decode(i.raw)[1])


@pytest.mark.parametrize("granted,invoked,ok", [
    ("/", "/pds/read", True), ("/pds", "/pds/read", True), ("/pds/read", "/pds/read", True),
    ("/pds/read", "/pds", False), ("/pds/re", "/pds/read", False), ("/pds/read", "/pds/reader", False),
    ("/pds/write", "/pds/read", False),
])
def test_command_coverage_by_whole_segments(granted, invoked, ok):
    assert command_covers(granted, invoked) is ok


def test_command_not_covered_is_match_error():
    d = sign_delegation(KEYS[0], aud=DIDS[1], sub=DIDS[0], cmd="/pds/re", pol=[], exp=None)
    inv = sign_invocation(KEYS[1], sub=DIDS[0], cmd="/pds/read", args={}, prf=[d.cid], exp=None)
    with pytest.raises(ProtocolError) as err:
        validate_invocation(inv, [d], now=NOW)
    assert err.value.code is ErrorCode.MATCH_ERROR


def test_every_policy_in_the_chain_applies():
    inv, dlgs = build_chain(3, pols=[[], [["like", ".path", "cv/*"]], [["==", ".path", "cv/work"]]])
    with pytest.raises(ProtocolError) as err:
        validate_invocation(inv, dlgs, now=NOW)
    assert err.value.code is ErrorCode.MATCH_ERROR


@pytest.mark.parametrize("now,code", [
    (NOW + 3600 + 61, ErrorCode.EXPIRED),  # the delegations' exp plus skew
    (NOW + 300 + 61, ErrorCode.EXPIRED),  # the invocation's exp plus skew
    (NOW + 300 + 60, None),  # exactly at the skew edge still passes
])
def test_time_bounds_with_skew(now, code):
    inv, dlgs = build_chain(2)
    if code is None:
        validate_invocation(inv, dlgs, now=now)
        return
    with pytest.raises(ProtocolError) as err:
        validate_invocation(inv, dlgs, now=now)
    assert err.value.code is code


def test_not_before_with_skew():
    d = sign_delegation(KEYS[0], aud=DIDS[1], sub=DIDS[0], cmd="/", pol=[], exp=None, nbf=NOW + 100)
    inv = sign_invocation(KEYS[1], sub=DIDS[0], cmd="/x", args={}, prf=[d.cid], exp=None)
    validate_invocation(inv, [d], now=NOW + 40)
    with pytest.raises(ProtocolError) as err:
        validate_invocation(inv, [d], now=NOW + 39)
    assert err.value.code is ErrorCode.TOO_EARLY


def test_root_must_be_issued_by_its_subject():
    d = sign_delegation(KEYS[1], aud=DIDS[2], sub=DIDS[0], cmd="/", pol=[], exp=None)
    inv = sign_invocation(KEYS[2], sub=DIDS[0], cmd="/x", args={}, prf=[d.cid], exp=None)
    with pytest.raises(ProtocolError) as err:
        validate_invocation(inv, [d], now=NOW)
    assert err.value.code is ErrorCode.INVALID_CLAIM


def test_a_forged_proof_under_a_known_cid_is_not_accepted():
    inv, dlgs = build_chain(1)
    forged = sign_delegation(KEYS[3], aud=DIDS[1], sub=DIDS[0], cmd="/", pol=[], exp=None)
    with pytest.raises(ProtocolError) as err:
        validate_invocation(inv, [forged], now=NOW)
    assert err.value.code is ErrorCode.UNAVAILABLE_PROOF


def test_an_invocation_is_not_a_proof():
    inv, dlgs = build_chain(1)
    other = sign_invocation(KEYS[0], sub=DIDS[0], cmd="/x", args={}, prf=[], exp=None)
    with pytest.raises(ProtocolError) as err:
        validate_invocation(inv, [other], now=NOW)
    assert err.value.code is ErrorCode.UNAVAILABLE_PROOF


def test_verified_cache_skips_signature_checks(monkeypatch):
    calls = []
    real = validate_mod.verify_signature

    def counting(token):
        calls.append(token.cid)
        real(token)

    monkeypatch.setattr(validate_mod, "verify_signature", counting)
    cache = VerifiedCache(max_entries=16)
    inv, dlgs = build_chain(3)
    validate_invocation(inv, dlgs, now=NOW, verified=cache)
    assert len(calls) == 4
    validate_invocation(inv, dlgs, now=NOW, verified=cache)
    assert len(calls) == 4
    inv2 = sign_invocation(KEYS[3], sub=DIDS[0], cmd="/pds/read", args={"path": "x"},
                           prf=[d.cid for d in dlgs], exp=NOW + 60)
    validate_invocation(inv2, dlgs, now=NOW, verified=cache)
    assert calls[4:] == [inv2.cid]  # only the new invocation's signature is checked
    validate_invocation(inv, dlgs, now=NOW)  # no cache: everything again
    assert len(calls) == 9


def test_verified_cache_is_bounded_and_never_caches_failures():
    cache = VerifiedCache(max_entries=2)
    cids = [CID.of_dagcbor(dagcbor.encode(i)) for i in range(3)]
    for c in cids:
        cache.add(c)
    assert len(cache) == 2 and cids[0] not in cache and cids[2] in cache
    bad = _link(next(c for c in INV["invalid"] if c["name"] == "invalid invocation signature")["invocation"])
    token = parse_token(bad)
    for _ in range(2):
        with pytest.raises(ProtocolError):
            validate_invocation(token, [], now=NOW, verified=cache)
    assert token.cid not in cache


# ---------------------------------------------------------------- structural rejection

def _payload_dlg(**over):
    p = {"iss": DIDS[0], "aud": DIDS[1], "sub": DIDS[0], "cmd": "/pds", "pol": [], "nonce": b"abc", "exp": None}
    p.update(over)
    return {k: v for k, v in p.items() if v is not _DROP}


def _payload_inv(**over):
    p = {"iss": DIDS[0], "sub": DIDS[0], "cmd": "/pds/read", "args": {}, "prf": [], "nonce": b"abc", "exp": None}
    p.update(over)
    return {k: v for k, v in p.items() if v is not _DROP}


_DROP = object()
_SOME_CID = CID.of_dagcbor(b"\xa0")

STRUCTURE = [
    # (id, tag, payload, code)
    ("dlg-missing-iss", DLG_TAG, _payload_dlg(iss=_DROP), ErrorCode.MALFORMED),
    ("dlg-missing-aud", DLG_TAG, _payload_dlg(aud=_DROP), ErrorCode.MALFORMED),
    ("dlg-missing-sub", DLG_TAG, _payload_dlg(sub=_DROP), ErrorCode.MALFORMED),
    ("dlg-missing-cmd", DLG_TAG, _payload_dlg(cmd=_DROP), ErrorCode.MALFORMED),
    ("dlg-missing-pol", DLG_TAG, _payload_dlg(pol=_DROP), ErrorCode.MALFORMED),
    ("dlg-missing-nonce", DLG_TAG, _payload_dlg(nonce=_DROP), ErrorCode.MALFORMED),
    ("dlg-missing-exp", DLG_TAG, _payload_dlg(exp=_DROP), ErrorCode.MALFORMED),
    ("dlg-unknown-field", DLG_TAG, _payload_dlg(extra=1), ErrorCode.MALFORMED),
    ("dlg-iss-not-text", DLG_TAG, _payload_dlg(iss=b"x"), ErrorCode.MALFORMED),
    ("dlg-iss-not-didkey", DLG_TAG, _payload_dlg(iss="did:web:example.com"), ErrorCode.INVALID_CLAIM),
    ("dlg-aud-not-did", DLG_TAG, _payload_dlg(aud="bob"), ErrorCode.INVALID_CLAIM),
    ("dlg-aud-null", DLG_TAG, _payload_dlg(aud=None), ErrorCode.MALFORMED),
    ("dlg-sub-int", DLG_TAG, _payload_dlg(sub=3), ErrorCode.MALFORMED),
    ("dlg-cmd-no-slash", DLG_TAG, _payload_dlg(cmd="pds"), ErrorCode.INVALID_CLAIM),
    ("dlg-cmd-trailing-slash", DLG_TAG, _payload_dlg(cmd="/pds/"), ErrorCode.INVALID_CLAIM),
    ("dlg-cmd-double-slash", DLG_TAG, _payload_dlg(cmd="/pds//read"), ErrorCode.INVALID_CLAIM),
    ("dlg-cmd-upper", DLG_TAG, _payload_dlg(cmd="/PDS"), ErrorCode.INVALID_CLAIM),
    ("dlg-cmd-empty", DLG_TAG, _payload_dlg(cmd=""), ErrorCode.INVALID_CLAIM),
    ("dlg-pol-bad", DLG_TAG, _payload_dlg(pol=[["~", ".a", 1]]), ErrorCode.INVALID_CLAIM),
    ("dlg-pol-map", DLG_TAG, _payload_dlg(pol={}), ErrorCode.INVALID_CLAIM),
    ("dlg-nonce-text", DLG_TAG, _payload_dlg(nonce="abc"), ErrorCode.MALFORMED),
    ("dlg-exp-text", DLG_TAG, _payload_dlg(exp="soon"), ErrorCode.MALFORMED),
    ("dlg-exp-float", DLG_TAG, _payload_dlg(exp=5.0), ErrorCode.MALFORMED),
    ("dlg-exp-bool", DLG_TAG, _payload_dlg(exp=True), ErrorCode.MALFORMED),
    ("dlg-exp-huge", DLG_TAG, _payload_dlg(exp=2**53), ErrorCode.INVALID_CLAIM),
    ("dlg-nbf-null", DLG_TAG, _payload_dlg(nbf=None), ErrorCode.MALFORMED),
    ("dlg-meta-list", DLG_TAG, _payload_dlg(meta=[]), ErrorCode.MALFORMED),
    ("inv-missing-args", INV_TAG, _payload_inv(args=_DROP), ErrorCode.MALFORMED),
    ("inv-missing-prf", INV_TAG, _payload_inv(prf=_DROP), ErrorCode.MALFORMED),
    ("inv-missing-exp", INV_TAG, _payload_inv(exp=_DROP), ErrorCode.MALFORMED),
    ("inv-sub-null", INV_TAG, _payload_inv(sub=None), ErrorCode.MALFORMED),
    ("inv-args-list", INV_TAG, _payload_inv(args=[]), ErrorCode.MALFORMED),
    ("inv-prf-text", INV_TAG, _payload_inv(prf=[str(_SOME_CID)]), ErrorCode.MALFORMED),
    ("inv-prf-not-list", INV_TAG, _payload_inv(prf=_SOME_CID), ErrorCode.MALFORMED),
    ("inv-cause-text", INV_TAG, _payload_inv(cause="x"), ErrorCode.MALFORMED),
    ("inv-iat-null", INV_TAG, _payload_inv(iat=None), ErrorCode.MALFORMED),
    ("inv-aud-not-did", INV_TAG, _payload_inv(aud="node"), ErrorCode.INVALID_CLAIM),
    ("inv-unknown-field", INV_TAG, _payload_inv(nbf=1), ErrorCode.MALFORMED),
    ("unknown-tag", "ucan/xyz@1.0.0", _payload_inv(), ErrorCode.MALFORMED),
    ("v0.9-tag", "ucan/dlg@0.9.0", _payload_dlg(), ErrorCode.MALFORMED),
    ("payload-not-map", DLG_TAG, [1, 2], ErrorCode.MALFORMED),
]


@pytest.mark.parametrize("tag,payload,code", [s[1:] for s in STRUCTURE], ids=[s[0] for s in STRUCTURE])
def test_structural_rejection(tag, payload, code):
    with pytest.raises(ProtocolError) as err:
        parse_token(seal_envelope(KEYS[0], tag, payload))
    assert err.value.code is code


def _envelope(obj) -> bytes:
    return dagcbor.encode(obj)


GOOD_SP = {"h": bytes.fromhex("3401ed01ed011371"), DLG_TAG: _payload_dlg()}
ENVELOPES = [
    ("not-cbor", b"\xff\x00"),
    ("empty", b""),
    ("not-array", _envelope({"a": 1})),
    ("one-element", _envelope([b"s"])),
    ("three-elements", _envelope([b"s", GOOD_SP, 1])),
    ("sig-text", _envelope(["sig", GOOD_SP])),
    ("sp-not-map", _envelope([b"s", [1]])),
    ("sp-no-header", _envelope([b"s", {DLG_TAG: _payload_dlg()}])),
    ("sp-two-payloads", _envelope([b"s", {**GOOD_SP, INV_TAG: _payload_inv()}])),
    ("header-es256", _envelope([b"s", {**GOOD_SP, "h": bytes.fromhex("3401ed01ed011271")}])),
    ("header-text", _envelope([b"s", {**GOOD_SP, "h": "3401ed01ed011371"}])),
    ("truncated", sign_delegation(KEYS[0], aud=DIDS[1], sub=None, cmd="/", pol=[], exp=None).raw[:-1]),
    ("trailing", sign_delegation(KEYS[0], aud=DIDS[1], sub=None, cmd="/", pol=[], exp=None).raw + b"\x00"),
    ("indefinite", b"\x9f" + _envelope([b"s", GOOD_SP])[1:] + b"\xff"),
    ("not-bytes", "a string"),
]


@pytest.mark.parametrize("raw", [e[1] for e in ENVELOPES], ids=[e[0] for e in ENVELOPES])
def test_bad_envelopes_are_malformed(raw):
    with pytest.raises(ProtocolError) as err:
        parse_token(raw)
    assert err.value.code is ErrorCode.MALFORMED


def test_oversized_token_is_refused():
    big = seal_envelope(KEYS[0], DLG_TAG, _payload_dlg(meta={"x": b"0" * 70_000}))
    for make in (lambda: parse_token(big),
                 lambda: sign_delegation(KEYS[0], aud=DIDS[1], sub=None, cmd="/", pol=[], exp=None,
                                         meta={"x": b"0" * 70_000})):
        with pytest.raises(ProtocolError) as err:
            make()
        assert err.value.code is ErrorCode.TOO_LARGE


@pytest.mark.parametrize("sig", [b"", b"\x01\x02\x03", b"\x00" * 63, b"\x00" * 65, b"\x00" * 64])
def test_bad_signatures_are_invalid_signature(sig):
    d = sign_delegation(KEYS[0], aud=DIDS[1], sub=DIDS[0], cmd="/", pol=[], exp=None)
    env = dagcbor.decode(d.raw)
    token = parse_token(dagcbor.encode([sig, env[1]]))
    with pytest.raises(ProtocolError) as err:
        verify_signature(token)
    assert err.value.code is ErrorCode.INVALID_SIGNATURE


def test_signature_by_another_key_is_invalid():
    d = sign_delegation(KEYS[0], aud=DIDS[1], sub=DIDS[0], cmd="/", pol=[], exp=None)
    env = dagcbor.decode(d.raw)
    forged = KEYS[1].sign(dagcbor.encode(env[1])).signature
    with pytest.raises(ProtocolError) as err:
        verify_signature(parse_token(dagcbor.encode([forged, env[1]])))
    assert err.value.code is ErrorCode.INVALID_SIGNATURE


# ---------------------------------------------------------------- properties

_SIGNED = [
    sign_delegation(KEYS[0], aud=DIDS[1], sub=DIDS[0], cmd="/pds", pol=[["like", ".path", "cv/*"]], exp=NOW,
                    meta={"purpose": "x"}).raw,
    sign_invocation(KEYS[1], sub=DIDS[0], cmd="/pds/read", args={"path": "cv/a"}, prf=[_SOME_CID], exp=NOW).raw,
]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_SIGNED), st.data())
def test_any_single_byte_change_is_refused(raw, data):
    pos = data.draw(st.integers(0, len(raw) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != raw[pos]))
    mutated = raw[:pos] + bytes([byte]) + raw[pos + 1:]
    with pytest.raises(ProtocolError):
        verify_signature(parse_token(mutated))


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.text(max_size=8) | st.binary(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(args=st.dictionaries(st.text(max_size=5), _json, max_size=4), meta=st.none() | st.dictionaries(
    st.text(max_size=5), _json, max_size=3), exp=st.none() | st.integers(0, 2**53 - 1),
    cmd=st.from_regex(r"/|(/[a-z0-9_]{1,5}){1,3}", fullmatch=True))
def test_signed_tokens_round_trip(args, meta, exp, cmd):
    inv = sign_invocation(KEYS[2], sub=DIDS[0], cmd=cmd, args=args, prf=[], exp=exp, meta=meta)
    again = parse_token(inv.raw)
    verify_signature(again)
    assert (again.args, again.meta, again.exp, again.cmd) == (args, meta, exp, cmd)
    assert again.cid == CID.of_dagcbor(inv.raw)


_paths = st.sampled_from(["cv/basics", "cv/work/acme", "cv/", "health/x", "", "cv/basicsx"])
_statements = st.sampled_from([
    ["like", ".path", "cv/*"], ["==", ".path", "cv/basics"], ["!=", ".path", "cv/basics"],
    ["like", ".path", "*acme"], ["==", ".n", 1], [">", ".n", 0], ["not", ["like", ".path", "health/*"]],
    ["or", [["==", ".n", 2], ["like", ".path", "cv/w*"]]],
])
_pols = st.lists(_statements, max_size=2)


@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow])
@given(parent=_pols, child=_pols, path=_paths, n=st.integers(-1, 3))
def test_attenuation_a_child_only_narrows_its_parent(parent, child, path, n):
    args = {"path": path, "n": n}
    inv, dlgs = build_chain(2, pols=[parent, child], args=args)
    try:
        validate_invocation(inv, dlgs, now=NOW)
        accepted = True
    except ProtocolError as e:
        assert e.code is ErrorCode.MATCH_ERROR
        accepted = False
    if accepted:
        assert dlgs[0].policy.matches(args)  # never accepts what the parent alone would refuse
    assert accepted == (dlgs[0].policy.matches(args) and dlgs[1].policy.matches(args))


def test_signing_makes_exactly_what_parsing_reads():
    import nacl.signing

    from consent.envelope import parse_token, sign_invocation
    from protocol.ids import did_from_public_key

    key = nacl.signing.SigningKey.generate()
    did = did_from_public_key(bytes(key.verify_key))
    args = {"path": "cv/x", "v": [1, 2]}
    inv = sign_invocation(key, sub=did, cmd="/pds/read", args=args, prf=[], exp=2_000_000_000)
    again = parse_token(inv.raw)
    assert again == inv and again.args == inv.args and again.cid == inv.cid
    assert again.sig_payload_bytes == inv.sig_payload_bytes and again.signature == inv.signature
    args["v"].append(3)
    assert inv.args["v"] == [1, 2]  # the token does not share the caller's maps
