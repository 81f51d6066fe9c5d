"""Hypothesis fuzzers for everything a remote peer's bytes reach: the frame path (framing + messages), the token
decoders, and the consent / pds / notify handlers called directly on random and mutated-valid requests. Only
ProtocolError may come out, and the store and audit log stay consistent. Bounded for CI; a longer run:
MYDATA_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest -q tests/test_fuzz.py"""

from __future__ import annotations

import os
import time

import nacl.signing
import pytest
import trio
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from consent.envelope import DLG_TAG, INV_TAG, parse_token, seal_envelope, sign_invocation
from consent.request import CONSENT_REQUEST_TAG, Scope, parse_consent_request, parse_revocation, sign_consent_request
from node.audit import AuditLog
from node.crypto import derive_key, random_key
from node.handlers import Handlers, RateLimiter
from node.net import RequestContext, make_host
from node.owner import Owner
from node.requester import Requester
from node.store import Store
from protocol import dagcbor
from protocol.cid import CID
from protocol.errors import ProtocolError
from protocol.framing import FrameDecoder, encode_frame
from protocol.ids import did_from_public_key
from protocol.messages import Request, parse_request, parse_response

EXAMPLES = int(os.environ.get("MYDATA_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="MYDATA_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
SOME_CIDS = [CID.of_dagcbor(dagcbor.encode(i)) for i in range(3)]


# ---------------------------------------------------------------- strategies


def cbor_values(max_leaves: int = 12):
    """Values DAG-CBOR can carry, with the edge cases a decoder meets: big ints, bools, links, nesting."""
    leaves = st.one_of(
        st.none(), st.booleans(), st.integers(min_value=-(2**64), max_value=2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20), st.binary(max_size=40),
        st.sampled_from(SOME_CIDS),
    )
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=max_leaves,
    )


def mutate(data: bytes, edits) -> bytes:
    """Apply (position, kind, byte) edits: flip, insert, delete, or truncate."""
    out = bytearray(data)
    for pos, kind, byte in edits:
        if not out:
            break
        i = pos % len(out)
        if kind == 0:
            out[i] ^= byte or 1
        elif kind == 1:
            out.insert(i, byte)
        elif kind == 2:
            del out[i]
        else:
            del out[i:]
    return bytes(out)


edits = st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 3), st.integers(0, 255)), min_size=1, max_size=4)


def only_protocol_errors(fn, *args, **kwargs):
    """Call fn; a ProtocolError is a fine answer, anything else fails the test with the input."""
    try:
        return fn(*args, **kwargs)
    except ProtocolError as err:
        return err


# ---------------------------------------------------------------- (3) the frame path


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=12), st.integers(1, 1 << 20))
def test_frame_decoder_takes_any_chunks(chunks, max_size):
    decoder = FrameDecoder(max_size)
    for chunk in chunks:
        if isinstance(only_protocol_errors(decoder.feed, chunk), ProtocolError):
            # Once broken the decoder keeps refusing, never hands out a frame.
            assert isinstance(only_protocol_errors(decoder.next_frame), ProtocolError)
            return
        while (frame := only_protocol_errors(decoder.next_frame)) is not None:
            if isinstance(frame, ProtocolError):
                return
            assert isinstance(frame, bytes) and len(frame) <= max_size
            # Whatever a frame holds, reading it as a request or a response only ever refuses.
            only_protocol_errors(parse_request, frame)
            only_protocol_errors(parse_response, frame)


@FUZZ
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5), st.lists(st.integers(1, 50), max_size=20))
def test_frames_split_anywhere_come_out_whole_and_in_order(payloads, cuts):
    stream = b"".join(encode_frame(p) for p in payloads)
    decoder, out, pos = FrameDecoder(), [], 0
    for size in cuts + [len(stream)]:
        decoder.feed(stream[pos:pos + size])
        pos += size
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
    assert out == payloads


@FUZZ
@given(cbor_values(), st.data())
def test_requests_of_any_shape_parse_or_refuse(value, data):
    body = data.draw(st.dictionaries(st.text(max_size=6), cbor_values(6), max_size=4))
    for obj in (value, {**body, "id": data.draw(cbor_values(1)), "op": data.draw(cbor_values(1))}):
        try:
            payload = dagcbor.encode(obj)
        except ProtocolError:
            continue
        parsed = only_protocol_errors(parse_request, payload)
        if isinstance(parsed, Request):
            assert type(parsed.id) is int and isinstance(parsed.op, str)
        only_protocol_errors(parse_response, payload)
        only_protocol_errors(parse_request, mutate(payload, data.draw(edits)))


# ---------------------------------------------------------------- (2) the token decoders


class Keys:
    def __init__(self) -> None:
        self.owner = nacl.signing.SigningKey(b"o" * 32)
        self.alice = nacl.signing.SigningKey(b"a" * 32)
        self.owner_did = did_from_public_key(bytes(self.owner.verify_key))
        self.alice_did = did_from_public_key(bytes(self.alice.verify_key))


K = Keys()
NOW = int(time.time())
VALID_INV = sign_invocation(K.alice, sub=K.owner_did, aud=K.owner_did, cmd="/pds/read", args={"path": "cv/basics"},
                            prf=SOME_CIDS[:1], exp=NOW + 60).raw
VALID_REQ = sign_consent_request(K.alice, aud=K.owner_did, scopes=[Scope("/pds/read", "cv/")], purpose="p",
                                 description="", retention_days=1, exp=NOW + 86400, iat=NOW).raw
VALID_REV = sign_invocation(K.owner, sub=K.owner_did, cmd="/ucan/revoke", args={"revoke": SOME_CIDS[0]}, prf=[],
                            exp=NOW + 86400).raw
DECODERS = [parse_token, parse_consent_request, parse_revocation]


@FUZZ
@given(st.binary(max_size=400))
def test_token_decoders_refuse_random_bytes(raw):
    for decode in DECODERS:
        only_protocol_errors(decode, raw)


@FUZZ
@given(st.sampled_from([VALID_INV, VALID_REQ, VALID_REV]), edits)
def test_token_decoders_refuse_mutated_tokens(raw, how):
    mutated = mutate(raw, how)
    assume(mutated != raw)
    for decode in DECODERS:
        result = only_protocol_errors(decode, mutated)
        if decode is not parse_token:  # these verify the signature: a changed byte must not pass
            assert isinstance(result, ProtocolError)


@FUZZ
@given(st.sampled_from([(INV_TAG, VALID_INV), (CONSENT_REQUEST_TAG, VALID_REQ), (DLG_TAG, VALID_INV)]),
       st.dictionaries(st.sampled_from(["iss", "aud", "sub", "cmd", "args", "prf", "nonce", "exp", "nbf", "iat",
                                        "meta", "pol", "scopes", "purpose", "addrs", "retention_days", "x"]),
                       cbor_values(8), max_size=3),
       st.sets(st.sampled_from(["iss", "cmd", "exp", "nonce", "args", "scopes", "prf"]), max_size=2))
def test_token_decoders_on_resigned_payloads_with_wrong_fields(tagged, replace, drop):
    """Well-signed envelopes whose payload fields have the wrong types, values or presence."""
    tag, raw = tagged
    env = dagcbor.decode(raw)
    payload = {k: v for k, v in env[1][next(t for t in env[1] if t != "h")].items() if k not in drop} | replace
    try:
        resealed = seal_envelope(K.alice, tag, payload)
    except ProtocolError:
        return
    for decode in DECODERS:
        only_protocol_errors(decode, resealed)


# ---------------------------------------------------------------- (1) the handlers, called directly


class World:
    """An owner with data and a grant to alice, and a requester (alice) holding it; real SQLite in a tmp dir."""

    def __init__(self, path) -> None:
        key = random_key()
        self.store = Store.open(path / "owner.db", key)
        self.audit = AuditLog.open(path / "owner.db", derive_key(key, "audit"))
        self.owner = Owner(signing_key=K.owner, store=self.store, audit=self.audit)
        self.owner.put("cv/basics", {"name": "Ada"})
        request = sign_consent_request(K.alice, aud=K.owner_did, scopes=[Scope("/pds/read", "cv/"),
                                       Scope("/pds/write", "cv/certificates/")], purpose="Jobs", description="",
                                       retention_days=1, exp=NOW + 86400, iat=NOW)
        self.owner.receive_request(request.raw, K.alice_did)
        self.delegations = [parse_token(d) for d in self.owner.approve(str(request.cid))["delegations"]]
        self.rstore = Store.open(path / "alice.db", random_key())
        self.requester = Requester(host=make_host(b"a" * 32), signing_key=K.alice, store=self.rstore)
        self.requester._save(request.cid, {"owner": K.owner_did, "addrs": [], "raw": request.raw, "status": "granted",
                                           "delegations": [d.raw for d in self.delegations], "revoked": [],
                                           "reason": None, "sent_at": NOW, "purpose": "Jobs", "retention_days": 1})
        self.request_cid = request.cid
        # An unlimited bucket: the limiter is not what these fuzzers are about.
        self.handlers = Handlers(self.owner, self.requester, RateLimiter(rate=1e9, burst=1e9))
        self.checks = 0

    def call(self, handler, op: str, body: dict, remote: str):
        ctx = RequestContext(None, remote, "fuzz")
        return trio.run(handler, ctx, Request(op, 1, body))

    def close(self) -> None:
        self.audit.close()
        self.store.close()
        self.rstore.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("fuzz"))
    yield w
    assert w.audit.verify().ok
    w.close()


def check_consistent(w: World, data_before: dict, audit_before: int, result, *, invocations: int) -> None:
    w.checks += 1
    if w.checks % 50 == 0:  # the whole chain; every example would make long runs quadratic
        assert w.audit.verify().ok
    assert w.audit.count() == audit_before + invocations  # every invocation is audited, accepted or refused
    if isinstance(result, ProtocolError):
        assert dict(w.store.list("")) == data_before  # a refusal changes nothing


principals = st.sampled_from([K.alice_did, K.owner_did, did_from_public_key(b"\x01" * 32)])


@FUZZ
@given(st.sampled_from(["invoke", "request", "status", "nope", ""]),
       st.dictionaries(st.sampled_from(["invocation", "proofs", "request", "x"]), cbor_values(6), max_size=3),
       principals)
def test_handlers_refuse_random_bodies(world, op, body, remote):
    w = world
    for handler in (w.handlers.pds, w.handlers.consent):
        data, count = dict(w.store.list("")), w.audit.count()
        result = only_protocol_errors(w.call, handler, op, body, remote)
        invoked = handler == w.handlers.pds and op == "invoke" and isinstance(body.get("invocation"), bytes) \
            and isinstance(body.get("proofs", []), list) and all(isinstance(p, bytes) for p in body.get("proofs", []))
        check_consistent(w, data, count, result, invocations=1 if invoked else 0)


exps = st.one_of(st.integers(-(2**53) + 1, 2**53 - 1), st.integers(NOW - 100, NOW + 800))


@FUZZ
@given(st.sampled_from(["/pds/read", "/pds/write", "/pds/list", "/pds/delete", "/pds", "/ucan/revoke"]),
       st.fixed_dictionaries({}, optional={"path": st.one_of(st.sampled_from(
           ["cv/basics", "cv/", "", "cv/certificates/x", "cv/certificates/", "../x", "cv//x", "CV/x"]),
           cbor_values(2)), "value": cbor_values(4), "version": cbor_values(1), "x": cbor_values(2)}),
       exps, st.sets(st.integers(0, 1), max_size=2), st.sampled_from([K.owner_did, None, K.alice_did]),
       st.sampled_from([K.alice_did, K.owner_did]))
def test_pds_handler_on_signed_invocations_with_fuzzed_fields(world, cmd, args, exp, proofs, aud, remote):
    """Correctly signed invocations whose command, arguments, lifetime, proofs and audience vary."""
    w = world
    chosen = [w.delegations[i] for i in sorted(proofs)]
    inv = sign_invocation(K.alice, sub=K.owner_did, aud=aud, cmd=cmd, args=args, prf=[d.cid for d in chosen], exp=exp)
    data, count = dict(w.store.list("")), w.audit.count()
    result = only_protocol_errors(w.call, w.handlers.pds, "invoke", {"invocation": inv.raw,
                                                                    "proofs": [d.raw for d in chosen]}, remote)
    check_consistent(w, data, count, result, invocations=1)
    if not isinstance(result, ProtocolError):
        assert cmd in ("/pds/read", "/pds/write", "/pds/list", "/pds/delete") and remote == K.alice_did
        assert args["path"].startswith("cv/")


@FUZZ
@given(st.sampled_from([VALID_INV]), edits, principals)
def test_pds_handler_on_mutated_invocations(world, raw, how, remote):
    w = world
    read = w.delegations[0]
    data, count = dict(w.store.list("")), w.audit.count()
    result = only_protocol_errors(w.call, w.handlers.pds, "invoke",
                                  {"invocation": mutate(raw, how), "proofs": [mutate(read.raw, how)]}, remote)
    check_consistent(w, data, count, result, invocations=1)
    assert isinstance(result, ProtocolError)


@FUZZ
@given(st.lists(st.sampled_from([Scope("/pds/read", "cv/"), Scope("/pds/list", ""), Scope("/pds/write", "x/y")]),
                min_size=1, max_size=3, unique=True),
       st.text(max_size=30), st.integers(0, 2**53), exps, st.sampled_from([K.owner_did, K.alice_did]), principals,
       st.none() | st.lists(st.text(max_size=20), max_size=3))
def test_consent_handler_on_signed_requests_with_fuzzed_fields(world, scopes, purpose, retention, exp, aud, remote,
                                                               addrs):
    w = world
    try:
        request = sign_consent_request(K.alice, aud=aud, scopes=scopes, purpose=purpose, description="",
                                       retention_days=retention, exp=exp, iat=NOW, addrs=addrs)
    except ProtocolError:
        return  # the sender's own checks refuse it; the raw-payload fuzzer covers such envelopes
    data = dict(w.store.list(""))
    result = only_protocol_errors(w.call, w.handlers.consent, "request", {"request": request.raw}, remote)
    if not isinstance(result, ProtocolError):
        assert remote == K.alice_did and aud == K.owner_did and result["status"] == "pending"
        status = w.call(w.handlers.consent, "status", {"request": request.cid}, remote)
        assert status["status"] in ("pending", "expired")
        w.owner.deny(str(request.cid), "fuzz")  # keep the inbox under its per-requester cap
    assert dict(w.store.list("")) == data


@FUZZ
@given(st.sampled_from(["granted", "denied", "revoked", "other"]),
       st.fixed_dictionaries({}, optional={
           "request": st.sampled_from(SOME_CIDS) | cbor_values(1),
           "delegations": st.lists(st.binary(max_size=40) | st.sampled_from([VALID_INV, VALID_REV]), max_size=2)
           | cbor_values(2),
           "reason": cbor_values(1),
           "revoked": st.lists(st.sampled_from(SOME_CIDS), max_size=2),
           "revocations": st.lists(st.sampled_from([VALID_REV, VALID_INV]) | st.binary(max_size=40), max_size=2)
           | cbor_values(2)}),
       principals)
def test_notify_handler_refuses_random_bodies(world, op, body, remote):
    w = world
    before = w.requester.consents()
    result = only_protocol_errors(w.call, w.handlers.notify, op, body, remote)
    if remote != K.owner_did or isinstance(result, ProtocolError):
        assert w.requester.consents() == before  # only the owner, speaking correctly, changes what alice holds


@FUZZ
@given(st.sampled_from(["granted", "denied", "revoked"]), edits)
def test_notify_handler_on_mutated_owner_messages(world, op, how):
    w = world
    before = w.requester.consents()
    body = {"granted": {"request": w.request_cid, "delegations": [mutate(d.raw, how) for d in w.delegations]},
            "denied": {"request": w.request_cid, "reason": mutate(b"no", how).decode("latin-1")},
            "revoked": {"revoked": [SOME_CIDS[0]], "revocations": [mutate(VALID_REV, how)]}}[op]
    result = only_protocol_errors(w.call, w.handlers.notify, op, body, K.alice_did)  # alice is not the owner
    assert isinstance(result, ProtocolError)
    assert w.requester.consents() == before


# ---------------------------------------------------------------- crashes found, as named regressions


def test_regression_invocation_with_null_exp(world):
    w = world
    inv = sign_invocation(K.alice, sub=K.owner_did, aud=K.owner_did, cmd="/pds/read", args={"path": "cv/basics"},
                          prf=[w.delegations[0].cid], exp=None)
    count = w.audit.count()
    result = only_protocol_errors(w.call, w.handlers.pds, "invoke",
                                  {"invocation": inv.raw, "proofs": [w.delegations[0].raw]}, K.alice_did)
    assert isinstance(result, ProtocolError) and result.code.value == "InvalidClaim"
    assert w.audit.count() == count + 1
