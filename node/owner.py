"""The owner's side of consent and access: the request inbox, grants, revocations, the notification outbox, and
enforcement of every /pds invocation against the whole UCAN chain, with everything written to the audit log.

Synchronous over the store and the audit log (each call is a few SQLite statements); the network shell
(node/handlers.py) and the control API call it from the trio loop. State lives in the store's "node" space:
  requests/<request CID>   a received consent request, its status, answer and delegation CIDs
  grants/<delegation CID>  a delegation this node issued, and whether and when it was revoked
  outbox/<id>              a notification to deliver to a requester (store-and-forward)
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import nacl.signing

from consent.envelope import Delegation, Invocation, parse_token, verify_signature
from consent.lifecycle import Event, State, next_state, wire_status
from consent.request import (
    ConsentRequest,
    Scope,
    build_grant,
    build_revocation,
    parse_consent_request,
    scope_of,
)
from consent.validate import ReplayGuard, VerifiedCache, check_node_rules, validate_invocation
from node.audit import AuditLog
from node.config import Config
from node.store import Store
from protocol.cid import CID
from protocol.errors import ErrorCode, ProtocolError
from protocol.ids import did_from_public_key
from protocol.paths import validate_path, validate_prefix

DAY = 86_400
# Notifications are retried until the consent's end; a denial's for 30 days (PROTOCOL.md §5).
DENIAL_NOTIFY_DAYS = 30
# A requester may keep this many requests waiting in the owner's inbox at once; more is RateLimited.
MAX_PENDING_PER_REQUESTER = 16
NOTIFY_BACKOFF_FIRST = 2
NOTIFY_BACKOFF_MAX = 300

# Invocations may live at most 600 s (+60 s skew); audit entries older than this cannot name a live one.
MAX_INVOCATION_LIFETIME = 600
CLOCK_SKEW = 60
INVOCATION_HORIZON = MAX_INVOCATION_LIFETIME + CLOCK_SKEW + 60
REPLAY_PAGE = 512
PROOF_CACHE_SIZE = 1024

PDS_COMMANDS = ("/pds/read", "/pds/list", "/pds/write", "/pds/delete")


def _now() -> int:
    return int(time.time())


@dataclass(frozen=True)
class Outgoing:
    """One notification waiting for delivery to a requester."""

    key: str
    to: str
    addrs: list[str]
    op: str
    fields: dict
    attempts: int
    next_at: int
    until: int


class Owner:
    def __init__(
        self,
        *,
        signing_key: nacl.signing.SigningKey,
        store: Store,
        audit: AuditLog,
        config: Config | None = None,
        clock: Callable[[], int] = _now,
    ) -> None:
        self.signing_key = signing_key
        self.did = did_from_public_key(bytes(signing_key.verify_key))
        self.store = store
        self.audit = audit
        self.config = config or Config()
        self.clock = clock
        self.verified = VerifiedCache()
        self._proofs: OrderedDict[bytes, Delegation] = OrderedDict()
        self.revoked: set[CID] = {
            CID.parse(g["cid"]) for g in self._grant_records() if g.get("revoked_at") is not None
        }
        self._outbox_seq = len(self.store.list("outbox/", space="node"))
        self.replay = ReplayGuard(entries=self._recent_invocations())

    # ---------------------------------------------------------------- consent protocol (requester -> owner)

    def receive_request(self, raw: bytes, remote_did: str) -> dict:
        """`request` op: validate, queue (or decide by standing policy), audit. Returns the wire result."""
        request = parse_consent_request(raw)
        if request.iss != remote_did:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "the request's issuer is not the peer that sent it")
        if request.aud != self.did:
            raise ProtocolError(ErrorCode.INVALID_AUDIENCE, "this request is addressed to another node")
        key = f"requests/{request.cid}"
        if self._exists(key):
            return self.request_status(request.cid, remote_did)
        now = self.clock()
        if request.exp <= now:
            raise ProtocolError(ErrorCode.EXPIRED, "the requested consent would already have ended")
        pending = [r for r in self._request_records() if r["requester"] == remote_did and r["status"] == "pending"]
        if len(pending) >= MAX_PENDING_PER_REQUESTER:
            raise ProtocolError(
                ErrorCode.RATE_LIMITED, f"{len(pending)} of your requests already wait for the owner's answer"
            )
        record = {
            "raw": raw,
            "requester": request.iss,
            "status": State.PENDING.value,
            "received_at": now,
            "answer_by": min(request.exp, now + self.config.answer_deadline_days * DAY),
            "delegations": [],
            "reason": None,
        }
        self.store.put(key, record, if_version=0, space="node")
        self._audit("consent.requested", request=str(request.cid), requester=request.iss,
                    scopes=[_scope_json(s) for s in request.scopes], purpose=request.purpose,
                    retention_days=request.retention_days, exp=request.exp)
        policy = self.config.decide(request.iss, request.purpose, [_scope_json(s) for s in request.scopes])
        if policy is not None and policy.action == "deny":
            return self._deny(request, record, "declined by the owner's standing policy", notify=False)
        if policy is not None and policy.action == "approve":
            return self._approve(request, record, list(request.scopes), None, notify=False)
        return {"request": request.cid, "status": "pending"}

    def request_status(self, request_cid: CID, remote_did: str | None) -> dict:
        """`status` op (remote_did = the asking peer), or the owner's own view (remote_did None)."""
        record = self._get(f"requests/{request_cid}")
        if record is None or (remote_did is not None and record["requester"] != remote_did):
            raise ProtocolError(ErrorCode.NOT_FOUND, "no such consent request from you")
        record = self._refresh(request_cid, record)
        return self._status_result(request_cid, record)

    # ---------------------------------------------------------------- the owner's decisions

    def list_requests(self, status: str | None = None) -> list[dict]:
        out = []
        for path, _ in self.store.list("requests/", space="node"):
            cid = CID.parse(path.removeprefix("requests/"))
            record = self._refresh(cid, self._get(path))
            if status is not None and record["status"] != status and wire_status(record["status"]) != status:
                continue
            request = parse_consent_request(record["raw"])
            out.append(
                {
                    "id": str(cid),
                    "status": record["status"],
                    "requester": request.iss,
                    "scopes": [_scope_json(s) for s in request.scopes],
                    "purpose": request.purpose,
                    "description": request.description,
                    "retention_days": request.retention_days,
                    "exp": request.exp,
                    "received_at": record["received_at"],
                    "answer_by": record["answer_by"],
                    "delegations": record["delegations"],
                    "reason": record["reason"],
                }
            )
        return sorted(out, key=lambda r: r["received_at"])

    def approve(self, request_id: str, scopes: list[dict] | None = None, exp: int | None = None) -> dict:
        request, record = self._pending(request_id)
        if scopes is None:
            approved = list(request.scopes)
        else:
            wanted = {(s["cmd"], s["path"]) for s in scopes}
            approved = [s for s in request.scopes if (s.cmd, s.path) in wanted]
            unknown = wanted - {(s.cmd, s.path) for s in request.scopes}
            if unknown:
                cmd, path = sorted(unknown)[0]
                raise ProtocolError(ErrorCode.MALFORMED, f"the request did not ask for {cmd} on '{path}'")
            if not approved:
                raise ProtocolError(ErrorCode.MALFORMED, "approve at least one scope, or deny the request")
        if exp is not None and exp <= self.clock():
            raise ProtocolError(ErrorCode.MALFORMED, "the grant's end must lie in the future")
        return self._approve(request, record, approved, exp, notify=True)

    def deny(self, request_id: str, reason: str = "declined by the owner") -> dict:
        request, record = self._pending(request_id)
        return self._deny(request, record, reason, notify=True)

    def list_grants(self) -> list[dict]:
        now = self.clock()
        out = []
        for g in self._grant_records():
            status = "revoked" if g.get("revoked_at") is not None else ("expired" if g["exp"] <= now else "active")
            out.append({k: g[k] for k in ("cid", "request", "requester", "cmd", "path", "purpose", "exp")}
                       | {"status": status, "revoked_at": g.get("revoked_at")})
        return sorted(out, key=lambda g: (g["requester"], g["path"], g["cmd"]))

    def revoke(self, delegation: str | None = None, requester: str | None = None) -> dict:
        """Revoke one delegation, or every live one held by a requester. Effective for the next invocation."""
        if (delegation is None) == (requester is None):
            raise ProtocolError(ErrorCode.MALFORMED, "name either one delegation CID or one requester DID")
        grants = [g for g in self._grant_records() if g.get("revoked_at") is None]
        if delegation is not None:
            try:
                CID.parse(delegation)
            except ValueError:
                raise ProtocolError(ErrorCode.MALFORMED, f"'{delegation}' is not a CID") from None
            targets = [g for g in grants if g["cid"] == delegation]
            if not targets:
                raise ProtocolError(ErrorCode.NOT_FOUND, f"no live delegation {delegation} was issued by this node")
        else:
            targets = [g for g in grants if g["requester"] == requester]
            if not targets:
                raise ProtocolError(ErrorCode.NOT_FOUND, f"{requester} holds no live delegation from this node")
        now = self.clock()
        by_requester: dict[str, list[tuple[dict, Invocation]]] = {}
        for g in targets:
            dlg = parse_token(g["raw"])
            revocation = build_revocation(self.signing_key, dlg)
            g = g | {"revoked_at": now, "revocation": revocation.raw}
            self.store.put(f"grants/{g['cid']}", g, space="node")
            self.revoked.add(dlg.cid)
            self._audit("consent.revoked", delegation=g["cid"], request=g["request"], requester=g["requester"])
            by_requester.setdefault(g["requester"], []).append((g, revocation))
        for who, items in by_requester.items():
            addrs = self._requester_addrs(items[0][0]["request"])
            self._enqueue(who, addrs, "revoked",
                          {"revoked": [CID.parse(g["cid"]) for g, _ in items],
                           "revocations": [r.raw for _, r in items]},
                          until=max(g["exp"] for g, _ in items))
            for request_cid in {g["request"] for g, _ in items}:
                self._refresh(CID.parse(request_cid), self._get(f"requests/{request_cid}"))
        return {"revoked": [g["cid"] for g in targets]}

    def expire_due(self) -> int:
        """Move unanswered requests past their deadline to expired. Returns how many changed."""
        changed = 0
        for path, _ in self.store.list("requests/", space="node"):
            record = self._get(path)
            if record["status"] == "pending" and self._refresh(CID.parse(path.removeprefix("requests/")), record)[
                "status"
            ] == "expired":
                changed += 1
        return changed

    # ---------------------------------------------------------------- /pds invocations

    def invoke(self, raw_invocation: bytes, raw_proofs: list[bytes], remote_did: str) -> dict:
        """Enforce the chain for one invocation, then run it against the store. Audited either way."""
        now = self.clock()
        invocation: Invocation | None = None
        try:
            token = parse_token(raw_invocation)
            if not isinstance(token, Invocation):
                raise ProtocolError(ErrorCode.MALFORMED, "'invocation' holds a delegation, not an invocation")
            invocation = token
            # The signature is checked before the CID enters the replay memory (PROTOCOL.md §4), so forged bytes
            # cannot poison it; validate_invocation then finds the CID cached and does not verify twice.
            verify_signature(invocation)
            self.verified.add(invocation.cid)
            # The lifetime bound is what bounds the replay memory (PROTOCOL.md §4): check it before remembering,
            # or anyone could pin entries for years with far-future (or absent) expiry times.
            if not _lifetime_ok(invocation.exp, now):
                raise ProtocolError(ErrorCode.INVALID_CLAIM,
                                    f"an invocation must expire within {MAX_INVOCATION_LIFETIME} s")
            self.replay.check_and_remember(invocation.cid, invocation.exp, now)
            if invocation.sub != self.did:
                # A chain can be internally valid yet speak for another subject, e.g. one self-signed by the
                # requester (iss == sub, no proofs). Only invocations about this node's owner reach its store.
                raise ProtocolError(ErrorCode.INVALID_SUBJECT, "the invocation is about another subject")
            proofs = [self._parse_proof(raw) for raw in raw_proofs]
            check_node_rules(invocation, proofs, remote_did=remote_did, node_did=self.did, now=now,
                             is_revoked=self.revoked.__contains__)
            try:
                validate_invocation(invocation, proofs, now=now, verified=self.verified)
            finally:
                self.verified.discard(invocation.cid)  # keep the cache for delegations, which recur
            if invocation.cmd not in PDS_COMMANDS:
                raise ProtocolError(ErrorCode.UNKNOWN_OP, f"this node serves no command {invocation.cmd}")
            result = self._run(invocation.cmd, invocation.args)
        except ProtocolError as err:
            self._audit_invocation("invocation.refused", invocation, raw_invocation, remote_did, err.code.value)
            raise
        self._audit_invocation("invocation.accepted", invocation, raw_invocation, remote_did, None)
        return result

    def _parse_proof(self, raw: bytes) -> Delegation:
        """Parse a presented delegation, remembering it by its exact bytes: a client presents the same proofs
        with every request. Safe because a token is a pure function of its bytes; signatures are still checked
        (through the verified-CID cache) on every validation."""
        proof = self._proofs.get(raw)
        if proof is None:
            proof = parse_token(raw)
            if not isinstance(proof, Delegation):
                raise ProtocolError(ErrorCode.MALFORMED, "'proofs' must hold delegations only")
            self._proofs[raw] = proof
            if len(self._proofs) > PROOF_CACHE_SIZE:
                self._proofs.popitem(last=False)
        else:
            self._proofs.move_to_end(raw)
        return proof

    def _run(self, cmd: str, args: dict) -> dict:
        path = args.get("path")
        if not isinstance(path, str):
            raise ProtocolError(ErrorCode.MALFORMED, "args.path must be text")
        if cmd == "/pds/read":
            record = self.store.get(validate_path(path))
            return {"value": record.value, "version": record.version}
        if cmd == "/pds/list":
            entries = self.store.list(validate_prefix(path))
            return {"entries": [{"path": p, "version": v} for p, v in entries]}
        if cmd == "/pds/write":
            if "value" not in args:
                raise ProtocolError(ErrorCode.MALFORMED, "args.value is missing")
            version = args.get("version")
            if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 0):
                raise ProtocolError(ErrorCode.MALFORMED, "args.version must be an unsigned integer")
            return {"version": self.store.put(validate_path(path), args["value"], if_version=version)}
        self.store.delete(validate_path(path))
        return {}

    # ---------------------------------------------------------------- the owner's own data (CLI, control API)

    def put(self, path: str, value: Any, if_version: int | None = None) -> int:
        version = self.store.put(path, value, if_version=if_version)
        self._audit("owner.write", path=path, version=version)
        return version

    def delete(self, path: str) -> None:
        self.store.delete(path)
        self._audit("owner.delete", path=path)

    # ---------------------------------------------------------------- notification outbox (store-and-forward)

    def outbox(self) -> list[Outgoing]:
        out = []
        for path, _ in self.store.list("outbox/", space="node"):
            v = self._get(path)
            out.append(Outgoing(path, v["to"], v["addrs"], v["op"], v["fields"], v["attempts"], v["next_at"], v["until"]))
        return sorted(out, key=lambda o: o.next_at)

    def delivered(self, item: Outgoing) -> None:
        self.store.delete(item.key, space="node")

    def delivery_failed(self, item: Outgoing) -> None:
        """Back off exponentially; give up (and drop it) after the consent's end."""
        now = self.clock()
        if now >= item.until:
            self.store.delete(item.key, space="node")
            return
        delay = min(NOTIFY_BACKOFF_MAX, NOTIFY_BACKOFF_FIRST * 2 ** min(item.attempts, 16))
        record = self._get(item.key) | {"attempts": item.attempts + 1, "next_at": now + delay}
        self.store.put(item.key, record, space="node")

    def learn_addrs(self, requester: str, addrs: list[str]) -> None:
        """Addresses seen on a requester's live connection help deliver its pending notifications."""
        for item in self.outbox():
            if item.to == requester and set(addrs) - set(item.addrs):
                record = self._get(item.key) | {"addrs": sorted(set(item.addrs) | set(addrs)), "next_at": 0}
                self.store.put(item.key, record, space="node")

    # ---------------------------------------------------------------- internals

    def _approve(self, request: ConsentRequest, record: dict, scopes: list[Scope], exp: int | None, *, notify: bool):
        event = Event.APPROVE_ALL if len(scopes) == len(request.scopes) else Event.APPROVE_SOME
        state = next_state(record["status"], event)
        delegations = build_grant(self.signing_key, request, scopes, exp=exp)
        for dlg in delegations:
            scope = scope_of(dlg)
            self.store.put(
                f"grants/{dlg.cid}",
                {"cid": str(dlg.cid), "raw": dlg.raw, "request": str(request.cid), "requester": request.iss,
                 "cmd": scope["cmd"], "path": scope["path"], "purpose": request.purpose, "exp": dlg.exp,
                 "revoked_at": None},
                if_version=0, space="node",
            )
        record = record | {"status": state.value, "decided_at": self.clock(),
                           "delegations": [str(d.cid) for d in delegations]}
        self.store.put(f"requests/{request.cid}", record, space="node")
        self._audit("consent.granted", request=str(request.cid), requester=request.iss,
                    delegations=[str(d.cid) for d in delegations], scopes=[scope_of(d) for d in delegations],
                    by="policy" if not notify else "owner")
        if notify:
            self._enqueue(request.iss, request.addrs or [], "granted",
                          {"request": request.cid, "delegations": [d.raw for d in delegations]},
                          until=max(d.exp for d in delegations))
        return {"request": request.cid, "status": "granted", "delegations": [d.raw for d in delegations]}

    def _deny(self, request: ConsentRequest, record: dict, reason: str, *, notify: bool) -> dict:
        state = next_state(record["status"], Event.DENY)
        record = record | {"status": state.value, "decided_at": self.clock(), "reason": reason}
        self.store.put(f"requests/{request.cid}", record, space="node")
        self._audit("consent.denied", request=str(request.cid), requester=request.iss, reason=reason,
                    by="policy" if not notify else "owner")
        if notify:
            self._enqueue(request.iss, request.addrs or [], "denied", {"request": request.cid, "reason": reason},
                          until=self.clock() + DENIAL_NOTIFY_DAYS * DAY)
        return {"request": request.cid, "status": "denied", "reason": reason}

    def _pending(self, request_id: str) -> tuple[ConsentRequest, dict]:
        try:
            cid = CID.parse(request_id)
        except ValueError:
            raise ProtocolError(ErrorCode.MALFORMED, f"'{request_id}' is not a request id (a CID)") from None
        record = self._get(f"requests/{cid}")
        if record is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no consent request {request_id}")
        record = self._refresh(cid, record)
        if record["status"] != "pending":
            raise ProtocolError(ErrorCode.CONFLICT, f"request {request_id} is already {record['status']}")
        return parse_consent_request(record["raw"]), record

    def _refresh(self, cid: CID, record: dict) -> dict:
        """Apply the transitions that time or revocations caused since the record was last written."""
        now = self.clock()
        status = record["status"]
        new = status
        if status == "pending" and now >= record["answer_by"]:
            new = next_state(status, Event.EXPIRE).value
        elif status in ("granted", "partly_granted"):
            grants = [self._get(f"grants/{c}") for c in record["delegations"]]
            if all(g.get("revoked_at") is not None for g in grants):
                new = next_state(status, Event.REVOKE_ALL).value
            elif all(g["exp"] <= now for g in grants if g.get("revoked_at") is None):
                new = next_state(status, Event.EXPIRE).value
        if new != status:
            record = record | {"status": new}
            self.store.put(f"requests/{cid}", record, space="node")
            if new == "expired":
                self._audit("consent.expired", request=str(cid), requester=record["requester"])
        return record

    def _status_result(self, cid: CID, record: dict) -> dict:
        result: dict[str, Any] = {"request": cid, "status": wire_status(record["status"])}
        grants = [self._get(f"grants/{c}") for c in record["delegations"]]
        if result["status"] == "granted":
            result["delegations"] = [g["raw"] for g in grants]
            revoked = [CID.parse(g["cid"]) for g in grants if g.get("revoked_at") is not None]
            if revoked:
                result["revoked"] = revoked
        elif result["status"] == "revoked":
            result["revoked"] = [CID.parse(g["cid"]) for g in grants]
        if record.get("reason") and result["status"] == "denied":
            result["reason"] = record["reason"]
        return result

    def _enqueue(self, to: str, addrs: list[str], op: str, fields: dict, *, until: int) -> None:
        self._outbox_seq += 1
        key = f"outbox/{self.clock():012d}-{self._outbox_seq:06d}"
        self.store.put(key, {"to": to, "addrs": list(addrs), "op": op, "fields": fields, "attempts": 0,
                             "next_at": 0, "until": until}, if_version=0, space="node")

    def _requester_addrs(self, request_cid: str) -> list[str]:
        record = self._get(f"requests/{request_cid}")
        return parse_consent_request(record["raw"]).addrs or [] if record else []

    def _grant_records(self) -> list[dict]:
        return [self._get(p) for p, _ in self.store.list("grants/", space="node")]

    def _request_records(self) -> list[dict]:
        return [self._get(p) for p, _ in self.store.list("requests/", space="node")]

    def _get(self, path: str) -> dict | None:
        try:
            return self.store.get(path, space="node").value
        except ProtocolError as err:
            if err.code is ErrorCode.NOT_FOUND:
                return None
            raise

    def _exists(self, path: str) -> bool:
        return self._get(path) is not None

    def _audit(self, kind: str, *, durable: bool = True, **fields) -> None:
        self.audit.append(kind, fields, at=self.clock(), durable=durable)

    def _audit_invocation(self, kind, invocation, raw, remote_did, code) -> None:
        fields: dict[str, Any] = {"requester": remote_did, "invocation": raw}
        if invocation is not None:
            fields |= {"cid": str(invocation.cid), "cmd": invocation.cmd, "exp": invocation.exp}
            if isinstance(invocation.args, dict) and isinstance(invocation.args.get("path"), str):
                fields["path"] = invocation.args["path"]
        if code is not None:
            fields["code"] = code
        # Records of changes are fsynced; records of reads and refusals survive a crash of this process and reach
        # the disk with the next durable commit (node/audit.py), which keeps an fsync off every read.
        changed = code is None and invocation is not None and invocation.cmd in ("/pds/write", "/pds/delete")
        self._audit(kind, durable=changed, **fields)

    def _recent_invocations(self) -> list[tuple[CID, int]]:
        """Invocations seen before a restart stay refused until their exp: the audit log is the replay memory.

        Reads the log from its end backwards in pages and stops at the first page older than the longest
        invocation lifetime, so a restart costs a few pages however long the log is.
        """
        horizon = self.clock() - INVOCATION_HORIZON
        found: list[tuple[CID, int]] = []
        end = self.audit.count()
        while end > 0:
            start = max(0, end - REPLAY_PAGE)
            page = self.audit.entries(since_seq=start, limit=end - start)
            for entry in page:
                cid, exp = entry.fields.get("cid"), entry.fields.get("exp")
                if (entry.kind.startswith("invocation.") and cid and isinstance(exp, int) and exp > horizon
                        and _lifetime_ok(exp, entry.at)):
                    found.append((CID.parse(cid), exp))
            if not page or page[0].at < horizon:
                break
            end = start
        return found


def _lifetime_ok(exp: int | None, now: int) -> bool:
    return isinstance(exp, int) and exp <= now + MAX_INVOCATION_LIFETIME + CLOCK_SKEW


def _scope_json(scope: Scope) -> dict:
    return {"cmd": scope.cmd, "path": scope.path}
