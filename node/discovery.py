"""Peer discovery (PROTOCOL.md §2): py-libp2p's Kademlia DHT in server mode, bootstrap peers, optional mDNS,
finding a node by PeerID or DID, and service/market keys provided and looked up on the DHT.
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any, Awaitable, Callable, Sequence

import trio
from libp2p.abc import IHost, INetConn, INetStream, INotifee
from libp2p.discovery.mdns.broadcaster import PeerBroadcaster
from libp2p.discovery.mdns.listener import PeerListener
from libp2p.discovery.mdns.mdns import SERVICE_TYPE
from libp2p.kad_dht.common import PROTOCOL_ID as KAD_PROTOCOL_ID
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr
from multiaddr.protocols import P_P2P

from node.net import make_host, running_host
from protocol.cid import CID
from protocol.errors import ErrorCode, ProtocolError
from protocol.ids import did_from_peer_id, peer_id_from_did, public_key_from_peer_id

log = logging.getLogger(__name__)

SERVICE_KEY = "/mydata/service/{kind}"
MARKET_KEY = "/mydata/market/{topic}"

MAX_KEY_TEXT = 256  # a key text is a short path; anything longer is a caller bug or abuse
# Provider records live 48 h on the peers closest to the key (py-libp2p), and py-libp2p republishes only every
# 22 h. A small network churns (devnet nodes start and stop, a restarted node comes back on a new port), so a
# record placed before the network grew can sit on peers that are no longer the closest: re-provide hourly,
# one lookup and <= 20 small messages per key.
REPROVIDE_INTERVAL = 60 * 60
REJOIN_INTERVAL = 30.0
BOOTSTRAP_TIMEOUT = 20.0  # for dialling the bootstrap peers, then again for the first routing-table refresh
IDENTIFY_WAIT = 5.0  # how long a new connection's peer may take to answer identify before we stop waiting
IDENTIFY_POLL = 0.1
PROVIDER_QUERY_TIMEOUT = 10.0


def quiet_libp2p_discovery_logs() -> None:
    """Dialling a dead bootstrap or a departed peer is normal here; py-libp2p logs each failed attempt (and
    each unanswerable DHT query) at ERROR. Our own warnings say what matters."""
    logging.getLogger("libp2p.transport.tcp.tcp").setLevel(logging.CRITICAL)
    logging.getLogger("libp2p.kad_dht").setLevel(logging.CRITICAL)


def dht_key(text: str) -> str:
    """The DHT key of a key text: the CIDv1 raw (0x55) sha2-256 of its UTF-8 bytes, as text (PROTOCOL.md §2)."""
    if not isinstance(text, str):
        raise ProtocolError(ErrorCode.MALFORMED, f"a DHT key text must be a string, not {type(text).__name__}")
    data = text.encode("utf-8")
    if not data or len(data) > MAX_KEY_TEXT:
        raise ProtocolError(ErrorCode.MALFORMED, f"a DHT key text must be 1 to {MAX_KEY_TEXT} bytes")
    return str(CID.of_raw(data))


def parse_peer(peer: str) -> ID:
    """A PeerID from its base58 text or from the Ed25519 did:key of its owner; Malformed otherwise."""
    if not isinstance(peer, str):
        raise ProtocolError(ErrorCode.MALFORMED, f"a PeerID must be text, not {type(peer).__name__}")
    text = peer_id_from_did(peer) if peer.startswith("did:") else peer
    public_key_from_peer_id(text)  # an Ed25519 PeerID is the only kind a node of this protocol has
    return ID.from_base58(text)


class _ConnectionWatch(INotifee):
    """Forwards every new connection's peer to the discovery task (inbound ones never reach the routing table)."""

    def __init__(self, send: trio.MemorySendChannel) -> None:
        self.send = send

    async def connected(self, network: Any, conn: INetConn) -> None:
        try:
            self.send.send_nowait(conn.muxed_conn.peer_id)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # a burst over the buffer, or discovery has stopped: the DHT's own traffic still fills the table

    async def disconnected(self, network: Any, conn: INetConn) -> None:
        pass

    async def opened_stream(self, network: Any, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: Any, stream: INetStream) -> None:
        pass

    async def listen(self, network: Any, multiaddr: Multiaddr) -> None:
        pass

    async def listen_close(self, network: Any, multiaddr: Multiaddr) -> None:
        pass


class _TrioPeerstore:
    """What py-libp2p's mDNS listener writes to, called on a zeroconf thread: hands each write to the trio loop
    (the peerstore is not thread-safe) and reports each discovered peer."""

    def __init__(self, host: IHost, token: trio.lowlevel.TrioToken, found: trio.MemorySendChannel) -> None:
        self.host, self.token, self.found = host, token, found

    def add_addrs(self, peer_id: ID, addrs: Sequence[Multiaddr], ttl: int) -> None:
        self._in_trio(self._add, peer_id, list(addrs), ttl)

    def clear_addrs(self, peer_id: ID) -> None:
        self._in_trio(self.host.get_peerstore().clear_addrs, peer_id)

    def _add(self, peer_id: ID, addrs: list[Multiaddr], ttl: int) -> None:
        if peer_id == self.host.get_id():
            return
        self.host.get_peerstore().add_addrs(peer_id, addrs, ttl)
        try:
            self.found.send_nowait(peer_id)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def _in_trio(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            trio.from_thread.run_sync(fn, *args, trio_token=self.token)
        except (trio.RunFinishedError, trio.Cancelled):
            pass


class _Mdns:
    """py-libp2p's mDNS broadcaster and listener on a zeroconf we create, so it can be bound to one interface
    (MDNSDiscovery always uses every interface). Every blocking zeroconf call runs in a worker thread: zeroconf
    start and registration block ~1.5 s (LIBP2P-NOTES)."""

    def __init__(self, host: IHost, interface: str | None, network: str | None) -> None:
        if network is not None and not re.fullmatch(r"[a-z0-9]{1,11}", network):
            # DNS-SD caps a service name at 15 bytes, "p2p-" included; zeroconf refuses longer ones.
            raise ValueError("an mDNS network name is 1 to 11 lowercase letters or digits")
        self.host, self.interface = host, interface
        self.service_type = f"_p2p-{network}._udp.local." if network else SERVICE_TYPE
        self.zeroconf: Any = None
        self.broadcaster: PeerBroadcaster | None = None
        self.listener: PeerListener | None = None

    async def start(self, found: trio.MemorySendChannel) -> None:
        token = trio.lowlevel.current_trio_token()
        peerstore = _TrioPeerstore(self.host, token, found)
        await trio.to_thread.run_sync(self._start_blocking, peerstore)

    def _start_blocking(self, peerstore: _TrioPeerstore) -> None:
        from zeroconf import InterfaceChoice, IPVersion, Zeroconf

        if self.interface:
            self.zeroconf = Zeroconf(interfaces=[self.interface], ip_version=IPVersion.V4Only)
        else:
            self.zeroconf = Zeroconf(interfaces=InterfaceChoice.All)
        service_name = f"{secrets.token_hex(16)}.{self.service_type}"
        self.broadcaster = PeerBroadcaster(
            zeroconf=self.zeroconf,
            service_type=self.service_type,
            service_name=service_name,
            peer_id=str(self.host.get_id()),
            port=0,
            host=self.host,
        )
        self.broadcaster.register()
        self.listener = PeerListener(
            peerstore=peerstore,  # type: ignore[arg-type]  # only add_addrs and clear_addrs are used
            zeroconf=self.zeroconf,
            service_type=self.service_type,
            service_name=service_name,
        )

    async def stop(self) -> None:
        # In a thread: stopping joins zeroconf threads that may be waiting on this trio loop (_TrioPeerstore).
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._stop_blocking)

    def _stop_blocking(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        if self.broadcaster is not None:
            self.broadcaster.unregister()
        if self.zeroconf is not None:
            self.zeroconf.close()


class Discovery:
    """Kademlia DHT (server mode) + optional mDNS for one host; run it inside the node's nursery."""

    def __init__(
        self,
        host: IHost,
        *,
        bootstrap: Sequence[str] = (),
        mdns: bool = False,
        mdns_interface: str | None = None,
        mdns_network: str | None = None,
        reprovide_interval: float = REPROVIDE_INTERVAL,
        rejoin_interval: float = REJOIN_INTERVAL,
    ) -> None:
        quiet_libp2p_discovery_logs()
        self.host = host
        self.bootstrap = [info for info in map(_bootstrap_peer, bootstrap) if info.peer_id != host.get_id()]
        self.mdns = _Mdns(host, mdns_interface, mdns_network) if mdns else None
        self.reprovide_interval = reprovide_interval
        self.rejoin_interval = rejoin_interval
        self.dht = KadDHT(host, DHTMode.SERVER)
        self._provided: set[str] = set()
        self._running = False

    # ------------------------------------------------------------ lifecycle

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Start the DHT, join through the bootstrap peers, then report started; run until cancelled."""
        send, receive = trio.open_memory_channel[ID](256)
        watch = _ConnectionWatch(send.clone())
        network = self.host.get_network()
        network.register_notifee(watch)
        try:
            async with background_trio_service(self.dht), trio.open_nursery() as nursery:
                nursery.start_soon(self._add_connected_peers, receive)
                for peer_id in self.host.get_connected_peers():  # connections made before we started
                    send.send_nowait(peer_id)
                await self._join()
                if self.mdns is not None:
                    await self._start_mdns(send.clone())
                self._running = True
                nursery.start_soon(self._reprovide_loop)
                if self.bootstrap:
                    nursery.start_soon(self._rejoin_loop)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._running = False
            network.remove_notifee(watch)
            send.close()
            watch.send.close()
            if self.mdns is not None:
                await self.mdns.stop()

    async def _start_mdns(self, found: trio.MemorySendChannel) -> None:
        assert self.mdns is not None
        try:
            await self.mdns.start(found)
        except Exception as exc:  # e.g. no multicast on the interface: the DHT still works without it
            log.warning("mDNS could not start (%r); continuing without it", exc)
            await self.mdns.stop()
            self.mdns = None

    async def _join(self) -> None:
        """Dial the bootstrap peers, then look ourselves up through them: that fills our routing table and puts
        us in theirs."""
        if not self.bootstrap:
            return
        dead: list[ID] = []
        with trio.move_on_after(BOOTSTRAP_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for info in self.bootstrap:
                    nursery.start_soon(self._connect_bootstrap, info, dead)
        with trio.move_on_after(BOOTSTRAP_TIMEOUT):
            await self.dht.refresh_routing_table()
        for peer_id in dead:
            # The refresh puts every peer it tried in the routing table, answered or not; and a dead address
            # left in the peerstore would be dialled again by every lookup.
            self.dht.routing_table.remove_peer(peer_id)
            self.host.get_peerstore().clear_addrs(peer_id)

    async def _connect_bootstrap(self, info: PeerInfo, dead: list[ID]) -> None:
        try:
            await self.host.connect(info)
        except Exception as exc:
            dead.append(info.peer_id)
            log.warning("bootstrap peer %s is unreachable (%s); continuing without it", info.peer_id, exc)
            return
        await self.dht.add_peer(info.peer_id, skip_server_mode_check=True)

    async def _rejoin_loop(self) -> None:
        """A node that started before its bootstrap peers (or outlived all its peers) tries them again."""
        while True:
            await trio.sleep(self.rejoin_interval)
            if self.dht.get_routing_table_size() == 0:
                for info in self.bootstrap:
                    self.host.get_network().unblock_peer(info.peer_id)
                await self._join()

    async def _add_connected_peers(self, receive: trio.MemoryReceiveChannel) -> None:
        """Add each newly connected peer that serves the DHT to the routing table, once identify tells us its
        listen addresses and protocols; mDNS finds are dialled first."""
        async with trio.open_nursery() as nursery:
            async for peer_id in receive:
                nursery.start_soon(self._add_when_identified, peer_id)

    async def _add_when_identified(self, peer_id: ID) -> None:
        if peer_id not in self.host.get_connected_peers():  # an mDNS find
            try:
                await self.host.connect(PeerInfo(peer_id, self._peerstore_addrs(peer_id)))
            except Exception as exc:
                log.debug("could not dial mDNS peer %s: %r", peer_id, exc)
                return
        peerstore = self.host.get_peerstore()
        with trio.move_on_after(IDENTIFY_WAIT):
            while not _protocols(peerstore, peer_id):
                await trio.sleep(IDENTIFY_POLL)
        if str(KAD_PROTOCOL_ID) in _protocols(peerstore, peer_id):
            await self.dht.add_peer(peer_id)

    async def _reprovide_loop(self) -> None:
        while True:
            await trio.sleep(self.reprovide_interval)
            for key_text in sorted(self._provided):
                try:
                    await self._provide_once(key_text)
                except Exception as exc:
                    log.warning("re-providing %s failed: %r", key_text, exc)

    # ------------------------------------------------------------ peers

    async def find_peer(self, peer_id: str, *, timeout: float = 20, fresh: bool = False) -> list[str]:
        """The multiaddrs of a node, given its PeerID or DID: from the peerstore, or (when absent, or `fresh`)
        from a DHT lookup. Unavailable if the network does not know it within `timeout`."""
        pid = parse_peer(peer_id)
        if pid == self.host.get_id():
            return _plain_addrs(self.host.get_addrs(), pid)
        self._check_running()
        if not fresh and (addrs := self._peerstore_addrs(pid)):
            return _plain_addrs(addrs, pid)
        peerstore = self.host.get_peerstore()
        if fresh:
            # Forget what we knew, so only what the network says now is dialled; and drop the dial-failure
            # block py-libp2p keeps for a minute, or the new addresses would not be tried.
            peerstore.clear_addrs(pid)
            self.dht.routing_table.remove_peer(pid)
            self.host.get_network().unblock_peer(pid)
        with trio.move_on_after(timeout):
            # The lookup of the PeerID's own key: the peers closest to it know it, and their answers carry its
            # signed peer record, which the library stores in the peerstore (newest record wins).
            await self.dht.peer_routing.find_closest_peers_network(pid.to_bytes())
        if addrs := self._peerstore_addrs(pid):
            return _plain_addrs(addrs, pid)
        raise ProtocolError(ErrorCode.UNAVAILABLE, f"the network does not know where {peer_id} is")

    async def ensure_connected(self, peer_id: str, addrs: Sequence[str] = (), *, timeout: float = 20) -> None:
        """Be connected to a node: by the given addresses or those in the peerstore, else (none, or stale) by
        addresses looked up again on the DHT."""
        pid = parse_peer(peer_id)
        if pid == self.host.get_id() or pid in self.host.get_connected_peers():
            return
        if isinstance(addrs, (str, bytes)):
            raise ProtocolError(ErrorCode.MALFORMED, "addrs must be a list of multiaddrs, not one string")
        given = [Multiaddr(a) for a in _plain_addrs(addrs, pid, strict=True)]
        known = list(dict.fromkeys(given + self._peerstore_addrs(pid)))
        with trio.move_on_after(timeout):
            if known and await self._try_connect(pid, known):
                return
            fresh = await self.find_peer(peer_id, timeout=timeout, fresh=True)
            if await self._try_connect(pid, [Multiaddr(a) for a in fresh]):
                return
        raise ProtocolError(ErrorCode.UNAVAILABLE, f"{peer_id} did not answer at any address the network knows")

    async def _try_connect(self, pid: ID, addrs: list[Multiaddr]) -> bool:
        try:
            await self.host.connect(PeerInfo(pid, addrs))
            return True
        except Exception as exc:
            log.debug("dialling %s at %s failed: %r", pid, addrs, exc)
            return False

    def _peerstore_addrs(self, pid: ID) -> list[Multiaddr]:
        try:
            return list(self.host.get_peerstore().addrs(pid))
        except Exception:  # PeerStoreError: unknown or expired
            return []

    # ------------------------------------------------------------ providers

    async def provide(self, key_text: str) -> None:
        """Announce this node as a provider of `key_text` (e.g. /mydata/service/cv), again every
        `reprovide_interval` while running."""
        dht_key(key_text)
        self._check_running()
        self._provided.add(key_text)
        await self._provide_once(key_text)

    async def _provide_once(self, key_text: str) -> None:
        if not await self.dht.provide(dht_key(key_text)):
            # Kept locally and in _provided: the next re-provide retries, and we answer for it ourselves.
            log.warning("no peer accepted our provider record for %s yet", key_text)

    async def find_providers(self, key_text: str, *, count: int = 20, timeout: float = 20) -> list[dict]:
        """Up to `count` providers of `key_text`, one entry per node: [{"peer_id", "did", "addrs"}].

        Asks the peers closest to the key directly rather than through KadDHT.find_providers: that one returns
        duplicates, and once it has found any provider it caches them and answers from the cache alone for
        48 h, so a provider that appeared later would never be seen.
        """
        key = CID.parse(dht_key(key_text)).multihash
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ProtocolError(ErrorCode.MALFORMED, "count must be a positive integer")
        self._check_running()
        store = self.dht.provider_store
        found: dict[ID, PeerInfo] = {}

        def take(infos: list[PeerInfo]) -> None:
            for info in infos:
                if info.peer_id in found or len(found) < count:
                    known = found.get(info.peer_id)
                    addrs = list(dict.fromkeys([*(known.addrs if known else []), *info.addrs]))
                    found[info.peer_id] = PeerInfo(info.peer_id, addrs)

        # What we hold ourselves: our own record, and records others stored with us as one of the closest.
        take(store.get_providers(key))

        async def ask(peer: ID) -> None:
            with trio.move_on_after(PROVIDER_QUERY_TIMEOUT):
                providers, _closer = await store._get_providers_from_peer_with_closers(peer, key)
                take(providers)

        with trio.move_on_after(timeout):
            closest = await self.dht.peer_routing.find_closest_peers_network(key)
            async with trio.open_nursery() as nursery:
                for peer in closest:
                    if peer != self.host.get_id():
                        nursery.start_soon(ask, peer)
        return [entry for info in found.values() if (entry := _provider_entry(info))]

    def _check_running(self) -> None:
        if not self._running:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "discovery is not running")


def _bootstrap_peer(addr: str) -> PeerInfo:
    """A configured bootstrap address, checked when the node starts rather than when it is dialled."""
    try:
        return info_from_p2p_addr(Multiaddr(addr))
    except Exception as exc:
        raise ValueError(f"the bootstrap address {addr!r} is not a multiaddr ending in /p2p/<PeerID>: {exc}") from None


def _provider_entry(info: PeerInfo) -> dict | None:
    try:
        did = did_from_peer_id(info.peer_id.to_bytes())
    except ProtocolError:
        log.debug("ignoring provider %s: its PeerID holds no Ed25519 key", info.peer_id)
        return None
    return {"peer_id": str(info.peer_id), "did": did, "addrs": _plain_addrs(info.addrs, info.peer_id)}


def _plain_addrs(addrs: Sequence[Multiaddr | str], pid: ID, *, strict: bool = False) -> list[str]:
    """Addresses as a link carries them (PROTOCOL.md §2): without the /p2p/<PeerID> that peer records append.

    With `strict`, an address that is not a multiaddr or names another peer is Malformed; otherwise skipped.
    """
    out: dict[str, None] = {}
    for addr in addrs:
        try:
            ma = Multiaddr(str(addr))
            named = ma.get_peer_id()
            if named is not None and named != str(pid):
                raise ValueError(f"it names the peer {named}")
            if named is not None:
                ma = ma.decapsulate_code(P_P2P)
        except Exception as exc:
            if strict:
                message = f"the address {addr!r} for {pid} is not usable: {exc}"
                raise ProtocolError(ErrorCode.MALFORMED, message) from None
            continue
        out[str(ma)] = None
    return list(out)


def _protocols(peerstore: Any, peer_id: ID) -> list[str]:
    try:
        return [str(p) for p in peerstore.get_protocols(peer_id) or []]
    except Exception:
        return []


async def run_bootstrap_node(
    seed: bytes, listen: Sequence[str], *, bootstrap: Sequence[str] = (),
    on_ready: Callable[[IHost], Awaitable[None] | None] | None = None,
) -> None:
    """A network's seed node: a host and a DHT server only (no vault, no store); runs until cancelled."""
    host = make_host(seed)
    async with running_host(host, listen), trio.open_nursery() as nursery:
        discovery = Discovery(host, bootstrap=bootstrap)
        await nursery.start(discovery.run)
        if on_ready is not None:
            result = on_ready(host)
            if result is not None:
                await result
        await trio.sleep_forever()
