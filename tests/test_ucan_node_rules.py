"""The rules a node adds to UCAN validation (PROTOCOL.md §4 "This protocol adds") and the replay memory."""

from __future__ import annotations

import nacl.signing
import pytest

from consent.envelope import sign_delegation, sign_invocation
from consent.validate import ReplayGuard, check_node_rules, validate_invocation
from protocol import dagcbor
from protocol.cid import CID
from protocol.errors import ErrorCode, ProtocolError
from protocol.ids import did_from_public_key

KEYS = [nacl.signing.SigningKey(bytes([i + 11]) * 32) for i in range(4)]
DIDS = [did_from_public_key(bytes(k.verify_key)) for k in KEYS]
OWNER, OWNER_DID = KEYS[0], DIDS[0]
NOW = 1_800_000_000
NEVER = lambda cid: False  # noqa: E731


def chain(length: int = 1, *, redelegate=(True, True, True), exp: int | None = NOW + 300, aud=None):
    dlgs = []
    for i in range(length):
        dlgs.append(sign_delegation(KEYS[i], aud=DIDS[i + 1], sub=OWNER_DID, cmd="/pds/read",
                                    pol=[["like", ".path", "cv/*"]], exp=NOW + 3600,
                                    meta={"redelegate": redelegate[i]}))
    inv = sign_invocation(KEYS[length], sub=OWNER_DID, cmd="/pds/read", args={"path": "cv/basics"},
                          prf=[d.cid for d in dlgs], exp=exp, aud=aud)
    return inv, dlgs


def rules(inv, dlgs, **over):
    kw = dict(remote_did=inv.iss, node_did=OWNER_DID, now=NOW, is_revoked=NEVER)
    kw.update(over)
    check_node_rules(inv, dlgs, **kw)
    check_node_rules(validate_invocation(inv, dlgs, now=NOW), **kw)  # same answer from a validated Chain


def refused(code, inv, dlgs, **over):
    with pytest.raises(ProtocolError) as err:
        rules(inv, dlgs, **over)
    assert err.value.code is code


def test_a_plain_grant_passes():
    inv, dlgs = chain(1, redelegate=(False,))
    rules(inv, dlgs)
    inv, dlgs = chain(1, aud=OWNER_DID)
    rules(inv, dlgs)


def test_issuer_must_be_the_authenticated_peer():
    inv, dlgs = chain(1)
    with pytest.raises(ProtocolError) as err:
        check_node_rules(inv, dlgs, remote_did=DIDS[3], node_did=OWNER_DID, now=NOW, is_revoked=NEVER)
    assert err.value.code is ErrorCode.UNAUTHORIZED


def test_audience_when_present_is_this_node():
    inv, dlgs = chain(1, aud=DIDS[3])
    refused(ErrorCode.INVALID_AUDIENCE, inv, dlgs)


@pytest.mark.parametrize("exp,ok", [(None, False), (NOW + 660, True), (NOW + 661, False), (NOW + 600, True)])
def test_lifetime_is_bounded(exp, ok):
    inv, dlgs = chain(1, exp=exp)
    if ok:
        rules(inv, dlgs)
    else:
        with pytest.raises(ProtocolError) as err:
            check_node_rules(inv, dlgs, remote_did=inv.iss, node_did=OWNER_DID, now=NOW, is_revoked=NEVER)
        assert err.value.code is ErrorCode.INVALID_CLAIM


def test_missing_proof_is_unavailable():
    inv, dlgs = chain(2)
    with pytest.raises(ProtocolError) as err:
        check_node_rules(inv, dlgs[:1], remote_did=inv.iss, node_did=OWNER_DID, now=NOW, is_revoked=NEVER)
    assert err.value.code is ErrorCode.UNAVAILABLE_PROOF


@pytest.mark.parametrize("which", [0, 1])
def test_any_revoked_delegation_in_the_chain_is_revoked(which):
    inv, dlgs = chain(2)
    refused(ErrorCode.REVOKED, inv, dlgs, is_revoked=lambda cid: cid == dlgs[which].cid)


def test_only_redelegable_links_may_be_followed_by_another():
    inv, dlgs = chain(2, redelegate=(True, False))
    rules(inv, dlgs)  # the last link need not allow redelegation
    inv, dlgs = chain(2, redelegate=(False, True))
    refused(ErrorCode.UNAUTHORIZED, inv, dlgs)
    inv, dlgs = chain(3, redelegate=(True, "yes", True))  # only the boolean true counts
    refused(ErrorCode.UNAUTHORIZED, inv, dlgs)


def _cid(i: int) -> CID:
    return CID.of_dagcbor(dagcbor.encode(i))


def test_replay_guard_refuses_a_second_arrival_until_expiry():
    guard = ReplayGuard(skew=60)
    guard.check_and_remember(_cid(1), exp=NOW + 100, now=NOW)
    with pytest.raises(ProtocolError) as err:
        guard.check_and_remember(_cid(1), exp=NOW + 100, now=NOW + 160)
    assert err.value.code is ErrorCode.REPLAY
    guard.check_and_remember(_cid(2), exp=NOW + 100, now=NOW + 1)
    # After exp + skew the invocation would be refused as Expired anyway, so it is forgotten.
    guard.check_and_remember(_cid(1), exp=NOW + 100, now=NOW + 161)
    assert len(guard) == 1


def test_replay_guard_is_bounded_without_forgetting_live_entries():
    guard = ReplayGuard(max_entries=3, skew=0)
    for i in range(3):
        guard.check_and_remember(_cid(i), exp=NOW + 10 + i, now=NOW)
    with pytest.raises(ProtocolError) as err:
        guard.check_and_remember(_cid(9), exp=NOW + 50, now=NOW)
    assert err.value.code is ErrorCode.RATE_LIMITED
    with pytest.raises(ProtocolError) as err:
        guard.check_and_remember(_cid(0), exp=NOW + 10, now=NOW + 5)
    assert err.value.code is ErrorCode.REPLAY
    guard.check_and_remember(_cid(9), exp=NOW + 50, now=NOW + 11)  # the first entry expired, making room
    assert len(guard) == 3


def test_replay_guard_round_trips_through_its_entries():
    guard = ReplayGuard(skew=60)
    for i in range(5):
        guard.check_and_remember(_cid(i), exp=NOW + i, now=NOW)
    restored = ReplayGuard(skew=60, entries=guard.entries())
    assert sorted(map(str, (c for c, _ in restored.entries()))) == sorted(str(_cid(i)) for i in range(5))
    with pytest.raises(ProtocolError) as err:
        restored.check_and_remember(_cid(3), exp=NOW + 3, now=NOW)
    assert err.value.code is ErrorCode.REPLAY
