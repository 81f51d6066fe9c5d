"""Discovery with real hosts on 127.0.0.1: a bootstrap node and hosts that know only it find each other by PeerID
or DID, re-resolve a restarted peer, find deduplicated service providers; broken inputs are refused."""

from __future__ import annotations

import base64
import hashlib
import secrets
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
from libp2p.peer.id import ID

from node.discovery import SERVICE_KEY, Discovery, dht_key, run_bootstrap_node
from node.net import PeerSession, make_host, running_host, serve
from protocol.errors import ErrorCode, ProtocolError
from protocol.ids import did_from_peer_id

ECHO = "/mydata/test-echo/1.0.0"
SAFETY = 60  # a guard against hanging, never a timing assertion


def seed(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


async def echo(ctx, request):
    return {"text": request.body["text"], "from": ctx.remote_did}


@asynccontextmanager
async def bootstrap_node(name: str = "boot"):
    """run_bootstrap_node in the background; yields its /p2p/ address."""
    ready = trio.Event()
    hosts = []

    def on_ready(host):
        hosts.append(host)
        ready.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_bootstrap_node(seed(name), ["/ip4/127.0.0.1/tcp/0"], on_ready=on_ready))
        with trio.fail_after(SAFETY):
            await ready.wait()
        host = hosts[0]
        yield f"{host.get_addrs()[0]}"
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def discovering(name: str, bootstrap=(), **options):
    """A host answering ECHO, with discovery running; closed (discovery first, then the host) on exit."""
    async with running_host(make_host(seed(name))) as host, trio.open_nursery() as nursery:
        serve(host, ECHO, echo)
        discovery = Discovery(host, bootstrap=bootstrap, **options)
        with trio.fail_after(SAFETY):
            await nursery.start(discovery.run)
        yield discovery
        nursery.cancel_scope.cancel()


def pid(d: Discovery) -> str:
    return str(d.host.get_id())


@asynccontextmanager
async def network(n: int = 6):
    """One bootstrap node and `n` hosts (a, b, c, ...) that know only the bootstrap's address."""
    async with AsyncExitStack() as stack:
        boot = await stack.enter_async_context(bootstrap_node())
        nodes = [await stack.enter_async_context(discovering(chr(ord("a") + i), [boot])) for i in range(n)]
        yield boot, nodes


async def forget(d: Discovery, other: Discovery) -> None:
    """Make `d` know nothing of `other`: in a small network the joining lookups connect almost everyone."""
    await d.host.disconnect(other.host.get_id())
    d.host.get_peerstore().clear_addrs(other.host.get_id())
    d.dht.routing_table.remove_peer(other.host.get_id())
    assert other.host.get_id() not in d.host.get_connected_peers()


async def call_echo(d: Discovery, target: Discovery | str, body: str) -> dict:
    peer = target.host.get_id() if isinstance(target, Discovery) else ID.from_base58(target)
    async with PeerSession(d.host, peer, ECHO) as s:
        return await s.call("echo", text=body)


# ---------------------------------------------------------------- keys


def test_dht_key_is_the_raw_cid_of_the_key_text():
    text = SERVICE_KEY.format(kind="cv")
    assert text == "/mydata/service/cv"
    key = dht_key(text)
    assert key.startswith("b")  # multibase base32 lower
    raw = base64.b32decode(key[1:].upper() + "=" * (-len(key[1:]) % 8))
    assert raw == b"\x01\x55\x12\x20" + hashlib.sha256(text.encode()).digest()
    assert dht_key("/mydata/market/jobs") != key


@pytest.mark.parametrize("bad", ["", "x" * 257, b"/mydata/service/cv", None, 7])
def test_dht_key_refuses_bad_key_texts(bad):
    with pytest.raises(ProtocolError) as err:
        dht_key(bad)
    assert err.value.code == ErrorCode.MALFORMED


@pytest.mark.parametrize("bad", ["", "not-an-address", "/ip4/127.0.0.1/tcp/4001", "/p2p/garbage"])
def test_a_malformed_bootstrap_address_is_refused_at_construction(bad):
    with pytest.raises(ValueError):
        Discovery(make_host(seed("x")), bootstrap=[bad])


# ---------------------------------------------------------------- a network


async def test_find_a_node_by_peer_id_alone_then_talk_to_it():
    async with network(6) as (_boot, nodes):
        a, f = nodes[0], nodes[-1]
        with trio.fail_after(SAFETY):
            await forget(a, f)
            addrs = await a.find_peer(pid(f))
            assert addrs == [str(x) for x in f.host.get_transport_addrs()]
            await a.ensure_connected(pid(f), addrs)
            answer = await call_echo(a, f, "hello")
        assert answer == {"text": "hello", "from": did_from_peer_id(pid(a))}

        # By DID too, from another node, with no address given.
        b, e = nodes[1], nodes[4]
        with trio.fail_after(SAFETY):
            await forget(b, e)
            await b.ensure_connected(did_from_peer_id(pid(e)))
            assert (await call_echo(b, e, "by did"))["text"] == "by did"


async def test_inbound_peers_enter_the_routing_table():
    async with network(2) as (_boot, (a, b)):
        with trio.fail_after(SAFETY):
            await a.ensure_connected(pid(b), await a.find_peer(pid(b)))
            while not b.dht.routing_table.peer_in_table(a.host.get_id()):
                await trio.sleep(0.05)


async def test_an_unknown_peer_is_unavailable_within_the_timeout():
    stranger = str(make_host(seed("never started")).get_id())
    async with network(3) as (_boot, nodes):
        with trio.fail_after(SAFETY), pytest.raises(ProtocolError) as err:
            await nodes[0].find_peer(stranger, timeout=2)
        assert err.value.code == ErrorCode.UNAVAILABLE
        assert stranger in err.value.message
        with trio.fail_after(SAFETY), pytest.raises(ProtocolError) as err:
            await nodes[0].ensure_connected(stranger, timeout=2)
        assert err.value.code == ErrorCode.UNAVAILABLE


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not-a-peer-id",
        "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",  # a sha2-256 PeerID: not an Ed25519 node
        "did:key:z6Mkbroken",
        None,
        b"\x00\x24",
    ],
)
async def test_malformed_peer_ids_and_addresses_are_refused(bad):
    async with discovering("lonely") as d:
        with pytest.raises(ProtocolError) as err:
            await d.find_peer(bad)
        assert err.value.code == ErrorCode.MALFORMED
        with pytest.raises(ProtocolError) as err:
            await d.ensure_connected(bad)
        assert err.value.code == ErrorCode.MALFORMED
        other = str(make_host(seed("other")).get_id())
        me = pid(d)
        for addrs in (["/ip4/999.1.1.1/tcp/1"], [7], "/ip4/127.0.0.1/tcp/1", [f"/ip4/127.0.0.1/tcp/1/p2p/{me}"]):
            with pytest.raises(ProtocolError) as err:
                await d.ensure_connected(other, addrs)
            assert err.value.code == ErrorCode.MALFORMED


async def test_a_restarted_peer_on_a_new_port_is_found_again():
    async with AsyncExitStack() as stack:
        boot = await stack.enter_async_context(bootstrap_node())
        a = await stack.enter_async_context(discovering("a", [boot]))
        b = await stack.enter_async_context(discovering("b", [boot]))
        async with discovering("f", [boot]) as f_before:
            target = pid(f_before)
            with trio.fail_after(SAFETY):
                old_addrs = await a.find_peer(target)
                await a.ensure_connected(target, old_addrs)
                assert (await call_echo(a, target, "before"))["text"] == "before"
        with trio.fail_after(SAFETY):
            while f_before.host.get_id() in a.host.get_connected_peers():
                await trio.sleep(0.05)

        async with discovering("f", [boot]) as f_after:
            assert pid(f_after) == target
            assert not set(old_addrs) & {str(x) for x in f_after.host.get_transport_addrs()}
            with trio.fail_after(SAFETY):
                await a.ensure_connected(target, old_addrs)  # stale: dialling them fails, then re-resolves
                assert (await call_echo(a, target, "after"))["text"] == "after"
                assert set(await a.find_peer(target)).isdisjoint(old_addrs)
        assert b  # a third node keeps the network a network


async def test_service_providers_are_found_once_each():
    key = SERVICE_KEY.format(kind="cv")
    async with network(6) as (_boot, nodes):
        agent, other_agent, person = nodes[2], nodes[5], nodes[0]
        with trio.fail_after(SAFETY):
            assert await person.find_providers(key) == []
            await agent.provide(key)
            found = await person.find_providers(key)
        assert found == [{"peer_id": pid(agent), "did": did_from_peer_id(pid(agent)),
                          "addrs": found[0]["addrs"]}]
        assert found[0]["addrs"]

        # A provider that appears later is seen too (no stale cache), and nobody is listed twice.
        with trio.fail_after(SAFETY):
            await other_agent.provide(key)
            for asker in (person, agent, nodes[3]):
                found = await asker.find_providers(key)
                assert sorted(p["peer_id"] for p in found) == sorted([pid(agent), pid(other_agent)])
                assert len(found) == 2
            assert len(await person.find_providers(key, count=1)) == 1
            assert await person.find_providers(SERVICE_KEY.format(kind="other")) == []

            # The provider can be reached from what find_providers returned.
            entry = next(p for p in found if p["peer_id"] == pid(agent))
            assert entry["addrs"] == [str(x) for x in agent.host.get_transport_addrs()]
            await forget(person, agent)
            await person.ensure_connected(entry["peer_id"], entry["addrs"])
            assert (await call_echo(person, agent, "hi"))["text"] == "hi"


@pytest.mark.parametrize("count", [0, -1, 1.5, "3", True])
async def test_find_providers_refuses_a_bad_count(count):
    async with discovering("lonely") as d:
        with pytest.raises(ProtocolError) as err:
            await d.find_providers("/mydata/service/cv", count=count)
        assert err.value.code == ErrorCode.MALFORMED


async def test_a_dead_bootstrap_address_does_not_stop_startup():
    dead_id = make_host(seed("dead")).get_id()
    async with bootstrap_node() as boot:
        dead = f"/ip4/127.0.0.1/tcp/1/p2p/{dead_id}"
        async with discovering("a", [dead, boot]) as a, discovering("b", [boot, dead]) as b:
            with trio.fail_after(SAFETY):
                await a.ensure_connected(pid(b), await a.find_peer(pid(b)))
                assert (await call_echo(a, b, "ok"))["text"] == "ok"
        async with discovering("c", [dead]) as alone:  # only dead bootstraps: still starts, knows nobody
            assert alone.dht.get_routing_table_size() == 0


async def test_calls_before_run_are_unavailable():
    async with running_host(make_host(seed("idle"))) as host:
        d = Discovery(host)
        for call in (d.find_peer(str(make_host(seed("x")).get_id())), d.provide("/mydata/service/cv"),
                     d.find_providers("/mydata/service/cv")):
            with pytest.raises(ProtocolError) as err:
                await call
            assert err.value.code == ErrorCode.UNAVAILABLE


# ---------------------------------------------------------------- mDNS


async def test_two_hosts_find_each_other_by_mdns_on_loopback():
    # A private service name per run, so parallel test runs on this machine do not see each other.
    options = dict(mdns=True, mdns_interface="127.0.0.1", mdns_network=secrets.token_hex(5))
    async with discovering("m1", **options) as m1, discovering("m2", **options) as m2:
        with trio.fail_after(SAFETY):
            while not (m1.dht.routing_table.peer_in_table(m2.host.get_id())
                       and m2.dht.routing_table.peer_in_table(m1.host.get_id())):
                await trio.sleep(0.05)
            assert (await call_echo(m1, m2, "lan"))["text"] == "lan"


@pytest.mark.parametrize("bad", ["", "UPPER", "twelve-chars", "a" * 12, "dot.ted"])
def test_an_mdns_network_name_zeroconf_would_refuse_is_refused_at_construction(bad):
    with pytest.raises(ValueError):
        Discovery(make_host(seed("x")), mdns=True, mdns_network=bad)


async def test_mdns_that_cannot_start_leaves_the_dht_running():
    async with bootstrap_node() as boot, discovering("a", [boot]) as a, \
            discovering("b", [boot], mdns=True, mdns_interface="192.0.2.254", mdns_network="nowhere") as b:
        assert b.mdns is None
        with trio.fail_after(SAFETY):
            assert await b.find_peer(pid(a))
