"""`mydata run`: one running node. Owns the libp2p host, the protocol handlers, the control API, the notification
delivery loop and the expiry sweep, all in one nursery; SIGINT/SIGTERM cancel it and everything closes in order.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import trio
from libp2p.peer.id import ID

from consent.envelope import parse_token
from consent.request import Scope
from node.api import serve_api
from node.audit import AuditLog
from node.config import Config
from node.discovery import SERVICE_KEY, Discovery, parse_peer
from node.handlers import Handlers
from node.home import Home
from node.net import PeerSession, make_host, running_host, serve
from node.owner import Outgoing, Owner
from node.requester import CONSENT_PROTOCOL, NOTIFY_PROTOCOL, PDS_PROTOCOL, Requester, RevokedHook
from node.state import open_state
from node.store import Store
from node.vault import Identity
from protocol.errors import ProtocolError
from protocol.ids import did_from_peer_id, peer_id_from_did
from protocol.links import Link, parse_link

log = logging.getLogger("mydata.node")

LOCK_FILE = "node.lock"
EXPIRY_SWEEP_SECONDS = 60
DELIVERY_TIMEOUT = 15
DELIVERY_IDLE_WAKE = 30  # re-check the outbox at least this often
REACH_TIMEOUT = 20
PROVIDE_ATTEMPTS = 8


class NodeBusy(Exception):
    """Another process runs a node on this home."""


@contextmanager
def run_lock(home: Home):
    """One running node per home: an exclusive flock, released by the kernel even after SIGKILL."""
    path = Path(home.path) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NodeBusy(f"a node is already running with the home {home.path}; stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)


class Node:
    """The running node: what the control API (NodeControl) and the handlers reach."""

    def __init__(self, home: Home, identity: Identity, config: Config, store: Store, audit: AuditLog, host,
                 clock: Callable[[], int] = lambda: int(time.time()), on_revoked: RevokedHook | None = None) -> None:
        self.home = home
        self.identity = identity
        self.config = config
        self.store = store
        self.audit_log = audit
        self.host = host
        self.clock = clock
        self.owner = Owner(signing_key=identity.signing_key, store=store, audit=audit, config=config, clock=clock)
        self.discovery = Discovery(host, bootstrap=config.bootstrap, mdns=config.mdns,
                                   mdns_interface=config.mdns_interface or None)
        self.requester = Requester(host=host, signing_key=identity.signing_key, store=store,
                                   listen_addrs=self.listen_addrs, clock=clock, on_revoked=on_revoked,
                                   connect=self.reach)
        self.handlers = Handlers(self.owner, self.requester)
        self.started = clock()
        self._wake_delivery = trio.Event()
        self._delivery_progress = trio.Event()

    # ---------------------------------------------------------------- network

    def listen_addrs(self) -> list[str]:
        """Addresses others can dial; a wildcard listen address is advertised as loopback."""
        out = []
        for addr in self.host.get_addrs():
            text = str(addr).split("/p2p/")[0]
            out.append(text.replace("/ip4/0.0.0.0/", "/ip4/127.0.0.1/"))
        return sorted(set(out))

    def serve_protocols(self) -> None:
        serve(self.host, CONSENT_PROTOCOL, self.handlers.consent)
        serve(self.host, PDS_PROTOCOL, self.handlers.pds)
        serve(self.host, NOTIFY_PROTOCOL, self.handlers.notify)

    async def reach(self, did: str, addrs: list[str] | tuple[str, ...] = ()) -> None:
        """Be connected to a peer: at the given or known addresses, else wherever the DHT says it is now."""
        await self.discovery.ensure_connected(did, list(addrs), timeout=REACH_TIMEOUT)

    async def provide_services(self, kinds: list[str]) -> None:
        """Advertise this node as a provider of each service kind; retried while the network is still empty."""
        for kind in kinds:
            for attempt in range(PROVIDE_ATTEMPTS):
                try:
                    await self.discovery.provide(SERVICE_KEY.format(kind=kind))
                    log.info("providing /mydata/service/%s", kind)
                    break
                except Exception as exc:
                    log.info("could not provide %s yet (%s)", kind, exc)
                    await trio.sleep(min(30, 2 ** attempt))

    def notify_changed(self) -> None:
        self._wake_delivery.set()

    async def deliver_notifications(self) -> None:
        """Store-and-forward: deliver outbox items with backoff until acknowledged or the consent ends."""
        while True:
            now = self.clock()
            items = self.owner.outbox()
            for item in items:
                if item.next_at <= now:
                    await self._deliver_one(item)
            items = self.owner.outbox()
            wait = min([max(0, i.next_at - self.clock()) for i in items] + [DELIVERY_IDLE_WAKE])
            self._wake_delivery = trio.Event()
            with trio.move_on_after(max(wait, 0.05)):
                await self._wake_delivery.wait()

    async def _deliver_one(self, item: Outgoing) -> None:
        peer = ID.from_base58(peer_id_from_did(item.to))
        session = None
        try:
            with trio.fail_after(DELIVERY_TIMEOUT):
                await self.reach(item.to, item.addrs)
                session = PeerSession(self.host, peer, NOTIFY_PROTOCOL, timeout=DELIVERY_TIMEOUT)
                await session.call(item.op, **item.fields)
        except (Exception, trio.TooSlowError) as exc:
            log.info("notify %s to %s not delivered yet (%s); will retry", item.op, item.to, exc)
            self.owner.delivery_failed(item)
            # The connection may be stale (the peer restarted): the next attempt must dial afresh.
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await self.host.disconnect(peer)
                except Exception:
                    pass
        else:
            log.info("notified %s: %s", item.to, item.op)
            self.owner.delivered(item)
        finally:
            if session is not None:
                with trio.CancelScope(shield=True):
                    await session.aclose()
            self._delivery_progress.set()
            self._delivery_progress = trio.Event()

    async def wait_outbox_empty(self) -> None:
        """Return once every queued notification was acknowledged (or given up)."""
        while self.owner.outbox():
            await self._delivery_progress.wait()

    async def sweep_expired(self) -> None:
        while True:
            try:
                self.owner.expire_due()
            except ProtocolError as exc:
                log.warning("expiry sweep failed: %s", exc)
            await trio.sleep(EXPIRY_SWEEP_SECONDS)

    # ---------------------------------------------------------------- NodeControl (the control API)

    async def status(self) -> dict:
        pending = [r for r in self.owner.list_requests("pending")]
        grants = [g for g in self.owner.list_grants() if g["status"] == "active"]
        return {
            "did": self.identity.did,
            "peer_id": self.identity.peer_id,
            "addrs": self.listen_addrs(),
            "peers": len(self.host.get_connected_peers()),
            "pending_requests": len(pending),
            "active_grants": len(grants),
            "records": len(self.store.list("")),
            "outbox": len(self.owner.outbox()),
            "started": self.started,
            "locked": False,
        }

    async def put(self, path: str, value: Any, if_version: int | None) -> int:
        return self.owner.put(path, value, if_version)

    async def get(self, path: str) -> dict:
        record = self.store.get(path)
        return {"path": record.path, "value": record.value, "version": record.version}

    async def list(self, prefix: str) -> list[dict]:
        return [{"path": p, "version": v} for p, v in self.store.list(prefix)]

    async def delete(self, path: str) -> None:
        self.owner.delete(path)

    async def requests(self, status: str | None) -> list[dict]:
        return self.owner.list_requests(status)

    async def approve(self, request_id: str, scopes: list[dict] | None, exp: int | None) -> dict:
        result = self.owner.approve(request_id, scopes, exp)
        self.notify_changed()
        return {"request": str(result["request"]), "status": result["status"],
                "delegations": [str(_cid_of(d)) for d in result["delegations"]]}

    async def deny(self, request_id: str, reason: str) -> dict:
        result = self.owner.deny(request_id, reason or "declined by the owner")
        self.notify_changed()
        return {"request": str(result["request"]), "status": result["status"], "reason": result["reason"]}

    async def grants(self) -> list[dict]:
        return self.owner.list_grants()

    async def revoke(self, delegation: str | None, requester: str | None) -> dict:
        result = self.owner.revoke(delegation, requester)
        self.notify_changed()
        return result

    async def audit(self, since: int, limit: int | None) -> list[dict]:
        return [
            {"seq": e.seq, "at": e.at, "kind": e.kind, "fields": e.fields, "hash": e.entry_hash.hex()}
            for e in self.audit_log.entries(since_seq=since, limit=limit)
        ]

    async def audit_verify(self) -> dict:
        report = self.audit_log.verify()
        return {"ok": report.ok, "count": report.count, "first_bad_seq": report.first_bad_seq, "reason": report.reason}

    async def services(self, kind: str) -> list[dict]:
        return await self.discovery.find_providers(SERVICE_KEY.format(kind=kind))

    async def find(self, peer: str) -> dict:
        """Where a node is now, by its DID or PeerID alone (a fresh DHT lookup)."""
        pid = parse_peer(peer)
        addrs = await self.discovery.find_peer(pid.to_base58(), timeout=REACH_TIMEOUT, fresh=True)
        return {"peer_id": pid.to_base58(), "did": did_from_peer_id(pid.to_base58()), "addrs": addrs}

    async def peers(self) -> list[dict]:
        store = self.host.get_peerstore()
        return [
            {"peer_id": str(p), "addrs": [str(a) for a in store.addrs(p)]} for p in self.host.get_connected_peers()
        ]

    async def share(self) -> dict:
        link = Link(self.identity.did, tuple(self.listen_addrs()))
        return {"link": str(link), "did": self.identity.did, "peer_id": self.identity.peer_id,
                "addrs": list(link.addrs)}

    async def remote_request(self, link: str, scopes: list[dict], purpose: str, description: str, days: int,
                             retention_days: int = 30) -> dict:
        result = await self.requester.request(parse_link(link), [Scope(s["cmd"], s["path"]) for s in scopes],
                                              purpose, description=description, days=days,
                                              retention_days=retention_days)
        return result

    async def remote_status(self, link: str, request_id: str) -> dict:
        return await self.requester.status(parse_link(link), request_id)

    async def remote_invoke(self, link: str, cmd: str, args: dict) -> dict:
        return await self.requester.invoke(parse_link(link), cmd, args)


def _cid_of(raw: bytes):
    return parse_token(raw).cid


async def run_node(
    home: Home,
    identity: Identity,
    config: Config,
    *,
    listen: list[str] | None = None,
    api_port: int | None = None,
    on_ready: Callable[[Node, str], None] | None = None,
    handle_signals: bool = True,
    on_revoked: RevokedHook | None = None,
    provides: tuple[str, ...] = (),
) -> None:
    """Run until cancelled or signalled. Acknowledged writes are on disk; the host is closed explicitly.

    `on_revoked(owner_did, delegation_cids)` runs when an owner revokes grants this node holds (a service
    deletes what it keeps under them). `provides` names service kinds to advertise on the DHT.
    """
    with run_lock(home):
        store, audit = open_state(home, identity)
        try:
            host = make_host(identity.seed)
            listen_addrs = listen or config.listen
            async with running_host(host, listen_addrs):
                node = Node(home, identity, config, store, audit, host, on_revoked=on_revoked)
                node.serve_protocols()
                async with trio.open_nursery() as nursery:
                    if handle_signals:
                        nursery.start_soon(cancel_on_signal, nursery.cancel_scope)
                    await nursery.start(node.discovery.run)
                    url = await nursery.start(
                        lambda task_status: serve_api(
                            node, home.path, port=config.api_port if api_port is None else api_port,
                            task_status=task_status,
                        )
                    )
                    if provides:
                        nursery.start_soon(node.provide_services, list(provides))
                    nursery.start_soon(node.deliver_notifications)
                    nursery.start_soon(node.sweep_expired)
                    if on_ready is not None:
                        on_ready(node, url)
                await node.requester.aclose()
        finally:
            audit.close()
            store.close()


async def cancel_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            scope.cancel()
            return
