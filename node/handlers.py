"""Protocol handlers: parse each op's fields, call the owner or requester core, and shape the wire result.

One table of ops per protocol; a per-peer token bucket answers floods with RateLimited before any work is done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from node.net import RequestContext
from node.owner import Owner
from node.requester import CONSENT_PROTOCOL, NOTIFY_PROTOCOL, PDS_PROTOCOL, Requester
from protocol.cid import CID
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import Request

# Each peer may spend a burst of RATE_BURST requests, refilled at RATE_PER_SECOND. Sized so one honest client
# doing sequential reads over a reused stream is never limited, while a flood from one peer is cut off early.
RATE_PER_SECOND = 2000.0
RATE_BURST = 4000.0
MAX_TRACKED_PEERS = 10_000


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class RateLimiter:
    rate: float = RATE_PER_SECOND
    burst: float = RATE_BURST
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def check(self, peer: str) -> None:
        now = time.monotonic()
        bucket = self._buckets.get(peer)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_PEERS:
                self._buckets.clear()  # forgetting is safe: every peer just gets a fresh burst
            bucket = self._buckets[peer] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens < 1:
            raise ProtocolError(ErrorCode.RATE_LIMITED, "too many requests from your peer; slow down and retry")
        bucket.tokens -= 1


def _bytes_field(body: dict, name: str) -> bytes:
    value = body.get(name)
    if not isinstance(value, bytes):
        raise ProtocolError(ErrorCode.MALFORMED, f"'{name}' must be bytes")
    return value


def _cid_field(body: dict, name: str) -> CID:
    value = body.get(name)
    if not isinstance(value, CID):
        raise ProtocolError(ErrorCode.MALFORMED, f"'{name}' must be a CID link")
    return value


class Handlers:
    def __init__(self, owner: Owner | None, requester: Requester | None, limiter: RateLimiter | None = None) -> None:
        self.owner = owner
        self.requester = requester
        self.limiter = limiter or RateLimiter()

    def _owner(self) -> Owner:
        if self.owner is None:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "this node holds no personal data store")
        return self.owner

    async def consent(self, ctx: RequestContext, req: Request) -> dict:
        self.limiter.check(ctx.remote_did)
        owner = self._owner()
        if req.op == "request":
            return owner.receive_request(_bytes_field(req.body, "request"), ctx.remote_did)
        if req.op == "status":
            return owner.request_status(_cid_field(req.body, "request"), ctx.remote_did)
        raise ProtocolError(ErrorCode.UNKNOWN_OP, f"{CONSENT_PROTOCOL} has no op '{req.op}'")

    async def pds(self, ctx: RequestContext, req: Request) -> dict:
        self.limiter.check(ctx.remote_did)
        owner = self._owner()
        if req.op != "invoke":
            raise ProtocolError(ErrorCode.UNKNOWN_OP, f"{PDS_PROTOCOL} has no op '{req.op}'")
        proofs = req.body.get("proofs", [])
        if not isinstance(proofs, list) or not all(isinstance(p, bytes) for p in proofs):
            raise ProtocolError(ErrorCode.MALFORMED, "'proofs' must be a list of token bytes")
        # The command's result is the response frame's `result` (PROTOCOL.md §5 and the table of §4).
        return owner.invoke(_bytes_field(req.body, "invocation"), proofs, ctx.remote_did)

    async def notify(self, ctx: RequestContext, req: Request) -> dict:
        self.limiter.check(ctx.remote_did)
        if self.requester is None:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "this node does not take notifications")
        if req.op not in ("granted", "denied", "revoked"):
            raise ProtocolError(ErrorCode.UNKNOWN_OP, f"{NOTIFY_PROTOCOL} has no op '{req.op}'")
        return await self.requester.handle_notify(req.op, req.body, ctx.remote_did)
