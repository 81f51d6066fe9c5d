"""The owner's enforcement core over a real encrypted store and audit log: consent lifecycle, every refusal of an
invocation with its code, revocation, replay memory across restarts, standing policies, the outbox."""

from __future__ import annotations

import nacl.signing
import pytest

from consent.envelope import parse_token, sign_delegation, sign_invocation
from consent.request import Scope, sign_consent_request
from node.audit import AuditLog
from node.config import Config, Policy
from node.crypto import derive_key, random_key
from node.owner import Owner
from node.store import Store
from protocol.errors import ErrorCode, ProtocolError
from protocol.ids import did_from_public_key

T0 = 1_800_000_000
READ_CV = Scope("/pds/read", "cv/")
WRITE_CERTS = Scope("/pds/write", "cv/certificates/")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


class Principal:
    def __init__(self) -> None:
        self.key = nacl.signing.SigningKey.generate()
        self.did = did_from_public_key(bytes(self.key.verify_key))


@pytest.fixture
def world(tmp_path):
    key = random_key()
    store = Store.open(tmp_path / "node.db", key)
    audit = AuditLog.open(tmp_path / "node.db", derive_key(key, "audit"))
    clock = Clock()
    me, alice, mallory = Principal(), Principal(), Principal()

    class World:
        pass

    w = World()
    w.store, w.audit, w.clock, w.me, w.alice, w.mallory, w.key = store, audit, clock, me, alice, mallory, key
    w.config = Config()
    w.owner = lambda: Owner(signing_key=me.key, store=store, audit=audit, config=w.config, clock=clock)
    yield w
    audit.close()
    store.close()


def ask(w, who, scopes=(READ_CV, WRITE_CERTS), days=30, purpose="Job matching"):
    return sign_consent_request(who.key, aud=w.me.did, scopes=list(scopes), purpose=purpose, description="CV site",
                                retention_days=90, exp=w.clock.now + days * 86400, iat=w.clock.now)


def invoke(w, owner, who, cmd, args, proofs, *, sub=None, aud="owner", exp=60, remote=None):
    inv = sign_invocation(who.key, sub=sub or w.me.did, aud=w.me.did if aud == "owner" else aud, cmd=cmd, args=args,
                          prf=[p.cid for p in proofs], exp=w.clock.now + exp)
    return owner.invoke(inv.raw, [p.raw for p in proofs], remote or who.did)


def granted(w, owner, who=None, scopes=None):
    who = who or w.alice
    req = ask(w, who)
    owner.receive_request(req.raw, who.did)
    result = owner.approve(str(req.cid), scopes)
    return req, [parse_token(d) for d in result["delegations"]]


def code_of(fn, *args, **kwargs) -> str:
    with pytest.raises(ProtocolError) as info:
        fn(*args, **kwargs)
    return info.value.code.value


def test_request_then_partial_approval_then_reads_and_writes(world):
    w = world
    owner = w.owner()
    owner.put("cv/basics", {"name": "Ada Lovelace"})
    req = ask(w, w.alice)
    assert owner.receive_request(req.raw, w.alice.did)["status"] == "pending"
    assert [r["id"] for r in owner.list_requests("pending")] == [str(req.cid)]
    result = owner.approve(str(req.cid), [{"cmd": "/pds/read", "path": "cv/"}])
    assert result["status"] == "granted" and len(result["delegations"]) == 1
    (dlg,) = [parse_token(d) for d in result["delegations"]]
    assert dlg.meta["purpose"] == "Job matching" and dlg.meta["request"] == req.cid and dlg.aud == w.alice.did

    assert invoke(w, owner, w.alice, "/pds/read", {"path": "cv/basics"}, [dlg]) == {
        "value": {"name": "Ada Lovelace"}, "version": 1}
    # The write scope was not approved: writing is refused before anything is touched.
    assert code_of(invoke, w, owner, w.alice, "/pds/write", {"path": "cv/certificates/x", "value": 1}, [dlg]) == "MatchError"
    assert code_of(w.store.get, "cv/certificates/x") == "NotFound"
    assert owner.request_status(req.cid, w.alice.did)["status"] == "granted"
    assert owner.list_requests("pending") == []


def test_write_list_delete_with_versions(world):
    w = world
    owner = w.owner()
    _, dlgs = granted(w, owner, scopes=None)
    req2 = ask(w, w.alice, scopes=[Scope("/pds/list", "cv/"), Scope("/pds/delete", "cv/certificates/")])
    owner.receive_request(req2.raw, w.alice.did)
    more = [parse_token(d) for d in owner.approve(str(req2.cid))["delegations"]]
    write = next(d for d in dlgs if d.cmd == "/pds/write")
    lister = next(d for d in more if d.cmd == "/pds/list")
    deleter = next(d for d in more if d.cmd == "/pds/delete")
    path = "cv/certificates/acme"
    assert invoke(w, owner, w.alice, "/pds/write", {"path": path, "value": {"a": 1}, "version": 0}, [write]) == {"version": 1}
    assert code_of(invoke, w, owner, w.alice, "/pds/write", {"path": path, "value": 2, "version": 0}, [write]) == "Conflict"
    assert invoke(w, owner, w.alice, "/pds/list", {"path": "cv/"}, [lister]) == {"entries": [{"path": path, "version": 1}]}
    assert invoke(w, owner, w.alice, "/pds/delete", {"path": path}, [deleter]) == {}
    assert code_of(invoke, w, owner, w.alice, "/pds/delete", {"path": path}, [deleter]) == "NotFound"
    # A path outside the grant is refused as MatchError, never NotFound: authorization before existence.
    assert code_of(invoke, w, owner, w.alice, "/pds/delete", {"path": "cv/basics"}, [deleter]) == "MatchError"
    assert code_of(invoke, w, owner, w.alice, "/pds/list", {"path": ""}, [lister]) == "MatchError"


@pytest.mark.parametrize(
    "case, expected",
    [
        ("replay", "Replay"),
        ("presented by another peer", "Unauthorized"),
        ("issued by another principal", "InvalidAudience"),  # UCAN: last aud != invoker
        ("self-signed for own subject", "InvalidSubject"),
        ("wrong audience", "InvalidAudience"),
        ("lifetime too long", "InvalidClaim"),
        ("expired", "Expired"),
        ("missing proof", "UnavailableProof"),
        ("forged signature", "InvalidSignature"),
        ("path escape", "Malformed"),
        ("widened by redelegation", "Unauthorized"),
        ("unknown command", "MatchError"),
        ("not a token", "Malformed"),
        ("delegation as invocation", "Malformed"),
    ],
)
def test_every_bad_invocation_is_refused_with_its_code_and_audited(world, case, expected):
    w = world
    owner = w.owner()
    owner.put("cv/basics", {"name": "Ada"})
    _, dlgs = granted(w, owner)
    read = next(d for d in dlgs if d.cmd == "/pds/read")
    args = {"path": "cv/basics"}
    before = w.audit.count()
    if case == "replay":
        inv = sign_invocation(w.alice.key, sub=w.me.did, aud=w.me.did, cmd="/pds/read", args=args, prf=[read.cid],
                              exp=w.clock.now + 60)
        owner.invoke(inv.raw, [read.raw], w.alice.did)
        before = w.audit.count()
        call = lambda: owner.invoke(inv.raw, [read.raw], w.alice.did)  # noqa: E731
    elif case == "presented by another peer":
        call = lambda: invoke(w, owner, w.alice, "/pds/read", args, [read], remote=w.mallory.did)  # noqa: E731
    elif case == "issued by another principal":
        call = lambda: invoke(w, owner, w.mallory, "/pds/read", args, [read])  # noqa: E731
    elif case == "self-signed for own subject":
        call = lambda: invoke(w, owner, w.mallory, "/pds/read", args, [], sub=w.mallory.did, aud=None)  # noqa: E731
    elif case == "wrong audience":
        call = lambda: invoke(w, owner, w.alice, "/pds/read", args, [read], aud=w.mallory.did)  # noqa: E731
    elif case == "lifetime too long":
        call = lambda: invoke(w, owner, w.alice, "/pds/read", args, [read], exp=3600)  # noqa: E731
    elif case == "expired":
        w.clock.now += 40 * 86400  # past the grant's end
        call = lambda: invoke(w, owner, w.alice, "/pds/read", args, [read])  # noqa: E731
    elif case == "missing proof":
        inv = sign_invocation(w.alice.key, sub=w.me.did, aud=w.me.did, cmd="/pds/read", args=args, prf=[read.cid],
                              exp=w.clock.now + 60)
        call = lambda: owner.invoke(inv.raw, [], w.alice.did)  # noqa: E731
    elif case == "forged signature":
        inv = sign_invocation(w.alice.key, sub=w.me.did, aud=w.me.did, cmd="/pds/read", args=args, prf=[read.cid],
                              exp=w.clock.now + 60)
        forged = bytearray(inv.raw)
        forged[5] ^= 0xFF  # inside the 64-byte signature
        call = lambda: owner.invoke(bytes(forged), [read.raw], w.alice.did)  # noqa: E731
    elif case == "path escape":
        call = lambda: invoke(w, owner, w.alice, "/pds/read", {"path": "cv/../secrets"}, [read])  # noqa: E731
    elif case == "widened by redelegation":
        # Alice (no redelegate right) hands her read grant to Mallory, widened to everything.
        sub = sign_delegation(w.alice.key, aud=w.mallory.did, sub=w.me.did, cmd="/pds", pol=[], exp=w.clock.now + 600)
        call = lambda: invoke(w, owner, w.mallory, "/pds/read", args, [read, sub])  # noqa: E731
    elif case == "unknown command":
        call = lambda: invoke(w, owner, w.alice, "/pds/admin", args, [read])  # noqa: E731
    elif case == "not a token":
        call = lambda: owner.invoke(b"\xa1\x61a\x01", [], w.alice.did)  # noqa: E731
    elif case == "delegation as invocation":
        call = lambda: owner.invoke(read.raw, [], w.alice.did)  # noqa: E731
    assert code_of(call) == expected
    entries = w.audit.entries(since_seq=before)
    assert [e.kind for e in entries] == ["invocation.refused"]
    assert entries[0].fields["code"] == expected and entries[0].fields["requester"] in (w.alice.did, w.mallory.did)
    assert w.store.get("cv/basics").version == 1  # nothing changed
    assert w.audit.verify().ok


def test_revocation_is_immediate_notified_and_survives_restart(world):
    w = world
    owner = w.owner()
    owner.put("cv/basics", {"name": "Ada"})
    req, dlgs = granted(w, owner)
    read = next(d for d in dlgs if d.cmd == "/pds/read")
    invoke(w, owner, w.alice, "/pds/read", {"path": "cv/basics"}, [read])
    assert owner.revoke(delegation=str(read.cid)) == {"revoked": [str(read.cid)]}
    assert code_of(invoke, w, owner, w.alice, "/pds/read", {"path": "cv/basics"}, [read]) == "Revoked"
    status = owner.request_status(req.cid, w.alice.did)
    assert status["status"] == "granted" and status["revoked"] == [read.cid]  # one of two scopes revoked
    ops = [o.op for o in owner.outbox()]
    assert ops == ["granted", "revoked"]
    # After a restart the revocation still holds, and the rest of the grant can be revoked by requester.
    owner = w.owner()
    assert code_of(invoke, w, owner, w.alice, "/pds/read", {"path": "cv/basics"}, [read]) == "Revoked"
    owner.revoke(requester=w.alice.did)
    assert owner.request_status(req.cid, w.alice.did)["status"] == "revoked"
    assert code_of(owner.revoke, requester=w.alice.did) == "NotFound"


def test_replay_memory_survives_restart(world):
    w = world
    owner = w.owner()
    owner.put("cv/basics", {"name": "Ada"})
    _, dlgs = granted(w, owner)
    read = next(d for d in dlgs if d.cmd == "/pds/read")
    inv = sign_invocation(w.alice.key, sub=w.me.did, aud=w.me.did, cmd="/pds/read", args={"path": "cv/basics"},
                          prf=[read.cid], exp=w.clock.now + 60)
    owner.invoke(inv.raw, [read.raw], w.alice.did)
    restarted = w.owner()
    assert code_of(restarted.invoke, inv.raw, [read.raw], w.alice.did) == "Replay"


def test_status_and_decisions_are_guarded(world):
    w = world
    owner = w.owner()
    req = ask(w, w.alice)
    owner.receive_request(req.raw, w.alice.did)
    # Only the issuer may ask about its request; others learn nothing.
    assert code_of(owner.request_status, req.cid, w.mallory.did) == "NotFound"
    # The request must come from its issuer, to this node.
    other = ask(w, w.alice)
    assert code_of(owner.receive_request, other.raw, w.mallory.did) == "Unauthorized"
    foreign = sign_consent_request(w.alice.key, aud=w.mallory.did, scopes=[READ_CV], purpose="x", description="",
                                   retention_days=1, exp=w.clock.now + 99, iat=w.clock.now)
    assert code_of(owner.receive_request, foreign.raw, w.alice.did) == "InvalidAudience"
    assert code_of(owner.receive_request, b"garbage", w.alice.did) == "Malformed"
    # The same envelope again returns its current status rather than a second request.
    assert owner.receive_request(req.raw, w.alice.did)["status"] == "pending"
    assert len(owner.list_requests()) == 1
    assert code_of(owner.approve, str(req.cid), [{"cmd": "/pds/delete", "path": "cv/"}]) == "Malformed"
    assert code_of(owner.approve, "not-a-cid") == "Malformed"
    owner.deny(str(req.cid), "no thanks")
    assert code_of(owner.approve, str(req.cid)) == "Conflict"
    assert owner.request_status(req.cid, w.alice.did) == {"request": req.cid, "status": "denied", "reason": "no thanks"}


def test_unanswered_requests_expire(world):
    w = world
    owner = w.owner()
    req = ask(w, w.alice, days=3)
    owner.receive_request(req.raw, w.alice.did)
    w.clock.now += 3 * 86400
    assert owner.expire_due() == 1
    assert owner.request_status(req.cid, w.alice.did)["status"] == "expired"
    assert code_of(owner.approve, str(req.cid)) == "Conflict"
    assert "consent.expired" in [e.kind for e in w.audit.entries()]


def test_flood_of_pending_requests_is_rate_limited(world):
    w = world
    owner = w.owner()
    for _ in range(16):
        owner.receive_request(ask(w, w.mallory).raw, w.mallory.did)
    assert code_of(owner.receive_request, ask(w, w.mallory).raw, w.mallory.did) == "RateLimited"
    assert owner.receive_request(ask(w, w.alice).raw, w.alice.did)["status"] == "pending"  # others unaffected


def test_standing_policies_decide_at_once_without_notify(world):
    w = world
    w.config = Config(policies=[Policy("deny", w.mallory.did), Policy("approve", w.alice.did, "cv/", "Job matching")])
    owner = w.owner()
    denied = owner.receive_request(ask(w, w.mallory, scopes=[READ_CV]).raw, w.mallory.did)
    assert denied["status"] == "denied"
    approved = owner.receive_request(ask(w, w.alice, scopes=[READ_CV]).raw, w.alice.did)
    assert approved["status"] == "granted" and len(approved["delegations"]) == 1
    # Asking to write is beyond the standing approval: it waits for the owner.
    assert owner.receive_request(ask(w, w.alice).raw, w.alice.did)["status"] == "pending"
    assert owner.outbox() == []


def test_outbox_backs_off_then_gives_up_at_the_consents_end(world):
    w = world
    owner = w.owner()
    req = ask(w, w.alice, days=1)
    owner.receive_request(req.raw, w.alice.did)
    owner.approve(str(req.cid))
    (item,) = owner.outbox()
    owner.delivery_failed(item)
    (item,) = owner.outbox()
    assert item.attempts == 1 and item.next_at > w.clock.now
    w.clock.now += 2 * 86400
    owner.delivery_failed(item)
    assert owner.outbox() == []
