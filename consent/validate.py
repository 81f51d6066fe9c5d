"""Chain validation: UCAN 1.0's rules for an invocation and its proofs, then this protocol's extra node rules.

`validate_invocation` is UCAN 1.0 exactly (PROTOCOL.md §4, the conformance fixtures); `check_node_rules` adds
what a node demands of a remote invoker; `ReplayGuard` remembers invocation CIDs until they expire.
The check order is part of the contract: the fixtures expect, e.g., a bad signature to win over a bad claim.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable

from consent.envelope import Delegation, Invocation, verify_signature
from protocol.cid import CID
from protocol.errors import ErrorCode, ProtocolError

__all__ = [
    "Chain", "VerifiedCache", "ReplayGuard", "command_covers", "validate_invocation", "check_node_rules",
    "resolve_proofs",
]

DEFAULT_SKEW = 60


def command_covers(granted: str, invoked: str) -> bool:
    """True when `granted` is `invoked` or an ancestor of it by whole path segments (`/pds` covers `/pds/read`)."""
    return granted == "/" or invoked == granted or invoked.startswith(granted + "/")


class VerifiedCache:
    """A bounded LRU set of token CIDs whose signatures verified; a CID names the exact signed bytes."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._cids: OrderedDict[CID, None] = OrderedDict()

    def __contains__(self, cid: CID) -> bool:
        if cid in self._cids:
            self._cids.move_to_end(cid)
            return True
        return False

    def __len__(self) -> int:
        return len(self._cids)

    def discard(self, cid: CID) -> None:
        self._cids.pop(cid, None)

    def add(self, cid: CID) -> None:
        self._cids[cid] = None
        self._cids.move_to_end(cid)
        while len(self._cids) > self.max_entries:
            self._cids.popitem(last=False)


def _verify(token: Delegation | Invocation, cache: VerifiedCache | None) -> None:
    if cache is not None and token.cid in cache:
        return
    verify_signature(token)
    if cache is not None:
        cache.add(token.cid)


@dataclass(frozen=True)
class Chain:
    """A validated invocation with its delegations root-first and the subject they all speak for."""

    invocation: Invocation
    delegations: tuple[Delegation, ...]
    subject: str


def resolve_proofs(inv: Invocation, proofs: Iterable[Delegation]) -> tuple[Delegation, ...]:
    """Map `inv.prf` to delegations (root-first); extras are ignored; a missing one is UnavailableProof."""
    by_cid = {p.cid: p for p in proofs if isinstance(p, Delegation)}
    try:
        return tuple(by_cid[c] for c in inv.prf)
    except KeyError as missing:
        raise ProtocolError(ErrorCode.UNAVAILABLE_PROOF, f"no delegation was provided for proof {missing.args[0]}") from None


def _check_time(token: Delegation | Invocation, now: int, skew: int) -> None:
    if token.exp is not None and now > token.exp + skew:
        raise ProtocolError(ErrorCode.EXPIRED, f"the {token.kind} {token.cid} expired at {token.exp}")
    nbf = getattr(token, "nbf", None)
    if nbf is not None and now < nbf - skew:
        raise ProtocolError(ErrorCode.TOO_EARLY, f"the {token.kind} {token.cid} is not valid before {nbf}")


def validate_invocation(inv: Invocation, proofs: Iterable[Delegation], *, now: int, skew: int = DEFAULT_SKEW,
                        verified: VerifiedCache | None = None) -> Chain:
    """Validate `inv` with its proofs as UCAN 1.0 demands; returns the Chain or raises ProtocolError."""
    _verify(inv, verified)
    chain = resolve_proofs(inv, proofs)
    if not chain and inv.iss != inv.sub:
        raise ProtocolError(ErrorCode.INVALID_CLAIM, "an invocation without proofs must be issued by its subject")
    for d in chain:
        _verify(d, verified)
    for token in (inv, *chain):
        _check_time(token, now, skew)

    expected_iss = None
    for d in chain:
        if expected_iss is not None and d.iss != expected_iss:
            raise ProtocolError(ErrorCode.INVALID_AUDIENCE,
                                f"delegation {d.cid} is issued by {d.iss}, not its proof's audience {expected_iss}")
        expected_iss = d.aud
    if chain and chain[-1].aud != inv.iss:
        raise ProtocolError(ErrorCode.INVALID_AUDIENCE, "the last delegation's audience is not the invoker")

    subject = inv.sub
    if chain:
        root = chain[0]
        if root.sub is None:
            raise ProtocolError(ErrorCode.INVALID_CLAIM, "the root delegation may not be a powerline (null subject)")
        if root.iss != root.sub:
            raise ProtocolError(ErrorCode.INVALID_CLAIM, "the root delegation must be issued by its subject")
        subject = root.sub
        for d in chain[1:]:
            # A powerline (null subject) takes the subject of the chain above it.
            if d.sub is not None and d.sub != subject:
                raise ProtocolError(ErrorCode.INVALID_SUBJECT, f"delegation {d.cid} is about {d.sub}, not {subject}")
        if inv.sub != subject:
            raise ProtocolError(ErrorCode.INVALID_SUBJECT, f"the invocation is about {inv.sub}, the chain about {subject}")

    for d in chain:
        if not command_covers(d.cmd, inv.cmd):
            raise ProtocolError(ErrorCode.MATCH_ERROR, f"delegation {d.cid} grants {d.cmd}, not {inv.cmd}")
        if not d.policy.matches(inv.args):
            raise ProtocolError(ErrorCode.MATCH_ERROR, f"the arguments do not satisfy the policy of delegation {d.cid}")
    return Chain(inv, chain, subject)


def check_node_rules(chain_or_inv: Chain | Invocation, proofs: Iterable[Delegation] = (), *, remote_did: str,
                     node_did: str, now: int, is_revoked: Callable[[CID], bool], max_lifetime: int = 600,
                     skew: int = DEFAULT_SKEW) -> None:
    """The rules PROTOCOL.md §4 adds for invocations sent to a node; cheap enough to run before validation."""
    if isinstance(chain_or_inv, Chain):
        inv, chain = chain_or_inv.invocation, chain_or_inv.delegations
    else:
        inv, chain = chain_or_inv, None
    if inv.iss != remote_did:
        raise ProtocolError(ErrorCode.UNAUTHORIZED, "the invocation's issuer is not the authenticated peer")
    if inv.aud is not None and inv.aud != node_did:
        raise ProtocolError(ErrorCode.INVALID_AUDIENCE, "the invocation is addressed to another node")
    if inv.exp is None or inv.exp > now + max_lifetime + skew:
        raise ProtocolError(ErrorCode.INVALID_CLAIM, f"an invocation must expire within {max_lifetime} s")
    if chain is None:
        chain = resolve_proofs(inv, proofs)
    for d in chain:
        if is_revoked(d.cid):
            raise ProtocolError(ErrorCode.REVOKED, f"delegation {d.cid} has been revoked")
    for d in chain[:-1]:
        if not (d.meta or {}).get("redelegate") is True:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, f"delegation {d.cid} does not allow redelegation")


class ReplayGuard:
    """Invocation CIDs seen recently, each kept until its `exp` (+ skew) passes; a second arrival is Replay.

    Bounded: when full of live entries it refuses new invocations (RateLimited) rather than forget one,
    since forgetting would let that one be replayed.
    """

    def __init__(self, max_entries: int = 100_000, *, skew: int = DEFAULT_SKEW,
                 entries: Iterable[tuple[CID, int]] = ()) -> None:
        self.max_entries, self.skew = max_entries, skew
        self._until: dict[CID, int] = {}
        self._heap: list[tuple[int, bytes, CID]] = []
        for cid, exp in entries:
            self._remember(cid, exp)

    def __len__(self) -> int:
        return len(self._until)

    def entries(self) -> list[tuple[CID, int]]:
        """Live (cid, exp) pairs, for the node to persist."""
        return [(cid, until - self.skew) for cid, until in self._until.items()]

    def _remember(self, cid: CID, exp: int) -> None:
        until = exp + self.skew
        self._until[cid] = until
        heapq.heappush(self._heap, (until, bytes(cid), cid))

    def evict(self, now: int) -> None:
        while self._heap and self._heap[0][0] < now:
            until, _, cid = heapq.heappop(self._heap)
            if self._until.get(cid) == until:
                del self._until[cid]

    def check_and_remember(self, cid: CID, exp: int, now: int) -> None:
        self.evict(now)
        if cid in self._until:
            raise ProtocolError(ErrorCode.REPLAY, f"invocation {cid} was already received")
        if len(self._until) >= self.max_entries:
            raise ProtocolError(ErrorCode.RATE_LIMITED, "too many recent invocations; try again shortly")
        self._remember(cid, exp)
