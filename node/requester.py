"""The requester's side of the protocol: ask a person's node for consent, keep the grants received (at once, by
notify, or by polling), invoke /pds commands with them, and act on denials and revocations.

Any node can be a requester (`mydata remote ...`); the CV agent is one. Held state lives in the requester's own
encrypted store, "node" space:
  consents/<request CID>   the request sent, the owner, its status, the delegations received, which are revoked
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable

import nacl.signing
import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from multiaddr import Multiaddr

from consent.envelope import Delegation, parse_token, sign_invocation, verify_signature
from consent.request import Scope, parse_revocation, scope_of, sign_consent_request
from node.net import PeerSession
from node.store import Store
from protocol.cid import CID
from protocol.errors import ErrorCode, ProtocolError
from protocol.ids import did_from_public_key, peer_id_from_did
from protocol.links import Link

CONSENT_PROTOCOL = "/mydata/consent/1.0.0"
NOTIFY_PROTOCOL = "/mydata/notify/1.0.0"
PDS_PROTOCOL = "/mydata/pds/1.0.0"
# An invocation lives this long: long enough for a slow link, short enough to bound the owner's replay memory.
INVOCATION_LIFETIME = 120
DAY = 86_400

RevokedHook = Callable[[str, list[str]], Awaitable[None]]


def _now() -> int:
    return int(time.time())


class Requester:
    def __init__(
        self,
        *,
        host: IHost,
        signing_key: nacl.signing.SigningKey,
        store: Store,
        listen_addrs: Callable[[], list[str]] = list,
        clock: Callable[[], int] = _now,
        on_revoked: RevokedHook | None = None,
        connect: Callable[[str, tuple[str, ...]], Awaitable[None]] | None = None,
    ) -> None:
        self.host = host
        self.signing_key = signing_key
        self.did = did_from_public_key(bytes(signing_key.verify_key))
        self.store = store
        self.listen_addrs = listen_addrs
        self.clock = clock
        self.on_revoked = on_revoked
        # How to reach an owner: the node passes its discovery (addresses, else the DHT); bare hosts dial directly.
        self.connect = connect or self._dial
        self._sessions: dict[tuple[str, str], PeerSession] = {}
        self._updated = trio.Event()
        self._held_cache: dict[str, list[tuple[Delegation, dict]]] | None = None

    async def wait_update(self) -> None:
        """Return at the next change to held consents (a notification, a poll answer, a revocation)."""
        await self._updated.wait()

    def _changed(self) -> None:
        self._updated.set()
        self._updated = trio.Event()

    # ---------------------------------------------------------------- consent

    async def request(
        self,
        link: Link,
        scopes: list[Scope],
        purpose: str,
        *,
        description: str = "",
        retention_days: int = 30,
        days: int = 30,
    ) -> dict:
        now = self.clock()
        request = sign_consent_request(
            self.signing_key, aud=link.did, scopes=scopes, purpose=purpose, description=description,
            retention_days=retention_days, exp=now + days * DAY, iat=now, addrs=self.listen_addrs() or None,
        )
        self._save(request.cid, {"owner": link.did, "addrs": list(link.addrs), "raw": request.raw,
                                 "status": "sending", "delegations": [], "revoked": [], "reason": None,
                                 "sent_at": now, "purpose": purpose, "retention_days": retention_days})
        result = await self._call(link, CONSENT_PROTOCOL, "request", request=request.raw)
        return self._absorb(request.cid, result, link.did)

    async def status(self, link: Link, request_id: str) -> dict:
        cid = _parse_cid(request_id)
        result = await self._call(link, CONSENT_PROTOCOL, "status", request=cid)
        return self._absorb(cid, result, link.did)

    def consents(self) -> list[dict]:
        out = []
        for path, _ in self.store.list("consents/", space="node"):
            record = self.store.get(path, space="node").value
            out.append({"request": path.removeprefix("consents/"), "owner": record["owner"],
                        "status": record["status"], "purpose": record.get("purpose"),
                        "delegations": [str(parse_token(d).cid) for d in record["delegations"]],
                        "scopes": [scope_of(parse_token(d)) for d in record["delegations"]],
                        "revoked": record["revoked"], "reason": record.get("reason")})
        return out

    # ---------------------------------------------------------------- data access

    async def invoke(self, link: Link, cmd: str, args: dict) -> dict:
        delegation = self.find_delegation(link.did, cmd, args.get("path", ""))
        if delegation is None:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, f"no live grant from {link.did} covers {cmd} on '{args.get('path')}'")
        now = self.clock()
        invocation = sign_invocation(self.signing_key, sub=link.did, aud=link.did, cmd=cmd, args=args,
                                     prf=[delegation.cid], exp=now + INVOCATION_LIFETIME, iat=now)
        try:
            return await self._call(link, PDS_PROTOCOL, "invoke", invocation=invocation.raw, proofs=[delegation.raw])
        except ProtocolError as err:
            if err.code is ErrorCode.REVOKED:
                await self._mark_revoked(link.did, [str(delegation.cid)])
            raise

    def find_delegation(self, owner: str, cmd: str, path: str) -> Delegation | None:
        """A held, unrevoked, unexpired delegation from `owner` whose scope covers `cmd` on `path`."""
        now = self.clock()
        for dlg, scope in self._held().get(owner, ()):
            if dlg.exp <= now or dlg.cmd != cmd:
                continue
            if path == scope["path"] or (scope["path"].endswith("/") and path.startswith(scope["path"])):
                return dlg
        return None

    def _held(self) -> dict[str, list[tuple[Delegation, dict]]]:
        """Unrevoked delegations by owner, parsed once and kept until this requester writes its consents again
        (only this process writes them), so an invoke costs no store scan."""
        if self._held_cache is None:
            held: dict[str, list[tuple[Delegation, dict]]] = {}
            for p, _ in self.store.list("consents/", space="node"):
                record = self.store.get(p, space="node").value
                for raw in record["delegations"]:
                    dlg = parse_token(raw)
                    if str(dlg.cid) not in record["revoked"]:
                        held.setdefault(record["owner"], []).append((dlg, scope_of(dlg)))
            self._held_cache = held
        return self._held_cache

    # ---------------------------------------------------------------- notifications (owner -> requester)

    async def handle_notify(self, op: str, body: dict, remote_did: str) -> dict:
        if op == "granted":
            cid = _field_cid(body, "request")
            delegations = body.get("delegations")
            if not isinstance(delegations, list):
                raise ProtocolError(ErrorCode.MALFORMED, "'delegations' must be a list of tokens")
            self._absorb(cid, {"status": "granted", "delegations": delegations}, remote_did)
        elif op == "denied":
            cid = _field_cid(body, "request")
            reason = body.get("reason", "")
            if not isinstance(reason, str):
                raise ProtocolError(ErrorCode.MALFORMED, "'reason' must be text")
            self._absorb(cid, {"status": "denied", "reason": reason}, remote_did)
        elif op == "revoked":
            revocations = body.get("revocations")
            if not isinstance(revocations, list) or not revocations:
                raise ProtocolError(ErrorCode.MALFORMED, "'revocations' must be a non-empty list of tokens")
            revoked = []
            for raw in revocations:
                if not isinstance(raw, bytes):
                    raise ProtocolError(ErrorCode.MALFORMED, "each revocation must be token bytes")
                revocation = parse_revocation(raw, issuer=remote_did)
                revoked.append(str(revocation.revoked))
            await self._mark_revoked(remote_did, revoked)
        else:
            raise ProtocolError(ErrorCode.UNKNOWN_OP, f"notify has no op '{op}'")
        return {}

    # ---------------------------------------------------------------- internals

    def _absorb(self, cid: CID, result: dict, owner: str) -> dict:
        """Check and keep what the owner answered; returns the result in CLI/JSON-friendly form."""
        record = self._load(cid)
        if record is None or record["owner"] != owner:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"this node sent no consent request {cid} to {owner}")
        status = result.get("status")
        if status not in ("pending", "granted", "denied", "expired", "revoked"):
            raise ProtocolError(ErrorCode.MALFORMED, f"the owner answered an unknown status {status!r}")
        record = record | {"status": status}
        if status == "granted" or "delegations" in result:
            held = []
            for raw in result.get("delegations") or []:
                if not isinstance(raw, bytes):
                    raise ProtocolError(ErrorCode.MALFORMED, "each delegation must be token bytes")
                dlg = parse_token(raw)
                if not isinstance(dlg, Delegation):
                    raise ProtocolError(ErrorCode.MALFORMED, "the grant holds a token that is not a delegation")
                verify_signature(dlg)
                if dlg.iss != owner or dlg.sub != owner or dlg.aud != self.did:
                    raise ProtocolError(ErrorCode.UNAUTHORIZED, "the grant was not issued by the owner to this node")
                if (dlg.meta or {}).get("request") != cid:
                    raise ProtocolError(ErrorCode.INVALID_CLAIM, "the grant names another consent request")
                held.append(raw)
            record["delegations"] = held
        if result.get("reason") is not None:
            record["reason"] = result["reason"]
        if result.get("revoked"):
            record["revoked"] = sorted(set(record["revoked"]) | {str(c) for c in result["revoked"]})
        self._save(cid, record)
        self._changed()
        return {"request": str(cid), "status": status, "owner": owner,
                "delegations": [str(parse_token(d).cid) for d in record["delegations"]],
                "scopes": [scope_of(parse_token(d)) for d in record["delegations"]],
                "revoked": record["revoked"], "reason": record.get("reason")}

    async def _mark_revoked(self, owner: str, cids: list[str]) -> None:
        touched = []
        for path, _ in self.store.list("consents/", space="node"):
            record = self.store.get(path, space="node").value
            held = {str(parse_token(d).cid) for d in record["delegations"]}
            mine = held & set(cids)
            if record["owner"] != owner or not mine:
                continue
            revoked = sorted(set(record["revoked"]) | mine)
            status = "revoked" if set(revoked) >= held else record["status"]
            self.store.put(path, record | {"revoked": revoked, "status": status}, space="node")
            self._held_cache = None
            touched.extend(mine)
        if touched:
            self._changed()
        if touched and self.on_revoked is not None:
            await self.on_revoked(owner, touched)

    async def _call(self, link: Link, protocol_id: str, op: str, **fields) -> dict:
        """One exchange over the cached session; a session that went dead is dropped with its connection."""
        session = await self._session(link, protocol_id)
        try:
            return await session.call(op, **fields)
        except ProtocolError as err:
            if err.code is ErrorCode.UNAVAILABLE:
                await self._forget(link.did)
            raise

    async def _forget(self, did: str) -> None:
        for key in [k for k in self._sessions if k[0] == did]:
            await self._sessions.pop(key).aclose()
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await self.host.disconnect(ID.from_base58(peer_id_from_did(did)))
            except Exception:
                pass

    async def _session(self, link: Link, protocol_id: str) -> PeerSession:
        key = (link.did, protocol_id)
        session = self._sessions.get(key)
        if session is None:
            peer_id = ID.from_base58(peer_id_from_did(link.did))
            try:
                await self.connect(link.did, link.addrs)
            except ProtocolError as exc:
                raise ProtocolError(ErrorCode.UNAVAILABLE, f"cannot reach {link.did}: {exc.message}") from None
            session = self._sessions[key] = PeerSession(self.host, peer_id, protocol_id)
        return session

    async def _dial(self, did: str, addrs: tuple[str, ...]) -> None:
        peer_id = ID.from_base58(peer_id_from_did(did))
        try:
            await self.host.connect(PeerInfo(peer_id, [Multiaddr(a) for a in addrs]))
        except Exception as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, f"no answer at {', '.join(addrs) or 'any known address'} "
                                                      f"({exc})") from None

    async def aclose(self) -> None:
        for session in self._sessions.values():
            await session.aclose()
        self._sessions.clear()

    def _load(self, cid: CID) -> dict | None:
        try:
            return self.store.get(f"consents/{cid}", space="node").value
        except ProtocolError as err:
            if err.code is ErrorCode.NOT_FOUND:
                return None
            raise

    def _save(self, cid: CID, record: dict) -> None:
        self.store.put(f"consents/{cid}", record, space="node")
        self._held_cache = None


def _parse_cid(text: str) -> CID:
    try:
        return CID.parse(text)
    except ValueError:
        raise ProtocolError(ErrorCode.MALFORMED, f"'{text}' is not a request id (a CID)") from None


def _field_cid(body: dict, name: str) -> CID:
    value = body.get(name)
    if not isinstance(value, CID):
        raise ProtocolError(ErrorCode.MALFORMED, f"'{name}' must be a CID link")
    return value
