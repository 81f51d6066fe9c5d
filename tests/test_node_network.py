"""Two real nodes (libp2p hosts on 127.0.0.1, real stores) in one trio process: the whole consent flow over the
wire, with the owner's decisions made through the node object the control API uses."""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
import trio

from consent.request import Scope
from node.config import Config
from node.home import Home
from node.runtime import run_node
from node.vault import Vault
from protocol.errors import ProtocolError
from protocol.links import Link

WAIT = 30  # generous: a deadline against hangs, never a performance claim


def make_home(path) -> tuple[Home, object]:
    home = Home.resolve(path)
    if home.is_initialised():
        return home, Vault.load(home.vault_path).unlock("pass phrase")
    home.create()
    vault, identity = Vault.create("pass phrase", profile="interactive")
    vault.save(home.vault_path)
    return home, identity


@asynccontextmanager
async def running(tmp_path, name, config=None, listen=("/ip4/127.0.0.1/tcp/0",)):
    """A node in its own nursery: leaving the block stops it and waits until it has shut down."""
    home, identity = make_home(tmp_path / name)

    async def run(task_status):
        await run_node(home, identity, config or Config(), listen=list(listen), api_port=0,
                       on_ready=lambda node, url: task_status.started(node), handle_signals=False)

    async with trio.open_nursery() as nursery:
        with trio.fail_after(WAIT):
            node = await nursery.start(run)
        try:
            yield node
        finally:
            nursery.cancel_scope.cancel()
    

async def wait_for(requester, predicate):
    with trio.fail_after(WAIT):
        while not predicate():
            await requester.wait_update()


def link_to(node) -> Link:
    return Link(node.identity.did, tuple(node.listen_addrs()))


async def test_consent_flow_over_libp2p(tmp_path):
    async with running(tmp_path, "owner") as owner, running(tmp_path, "service") as service:
        await owner.put("cv/basics", {"name": "Ada Lovelace"}, None)
        await owner.put("cv/work/acme-2021", {"name": "Acme"}, None)
        link = link_to(owner)
        asked = await service.requester.request(
            link, [Scope("/pds/read", "cv/"), Scope("/pds/write", "cv/certificates/")], "Job matching",
            description="CV site", days=30)
        assert asked["status"] == "pending"
        (pending,) = await owner.requests("pending")
        assert pending["requester"] == service.identity.did and pending["purpose"] == "Job matching"

        # The owner approves reading only; the grant is pushed to the service by notify.
        await owner.approve(pending["id"], [{"cmd": "/pds/read", "path": "cv/"}], None)
        held = lambda: [c for c in service.requester.consents() if c["status"] == "granted"]  # noqa: E731
        await wait_for(service.requester, held)
        assert held()[0]["scopes"] == [{"cmd": "/pds/read", "path": "cv/"}]

        result = await service.requester.invoke(link, "/pds/read", {"path": "cv/basics"})
        assert result == {"value": {"name": "Ada Lovelace"}, "version": 1}
        with pytest.raises(ProtocolError) as refused:
            await service.requester.invoke(link, "/pds/write", {"path": "cv/certificates/x", "value": 1})
        assert refused.value.code.value == "Unauthorized"  # the service holds no write grant to present

        # Revocation: immediate at the owner, pushed to the service, which stops presenting the grant.
        (grant,) = await owner.grants()
        await owner.revoke(grant["cid"], None)
        await wait_for(service.requester, lambda: service.requester.consents()[0]["status"] == "revoked")
        with pytest.raises(ProtocolError):
            await service.requester.invoke(link, "/pds/read", {"path": "cv/basics"})

        kinds = [e["kind"] for e in await owner.audit(0, None)]
        assert kinds.count("invocation.accepted") == 1
        assert {"consent.requested", "consent.granted", "consent.revoked"} <= set(kinds)
        assert (await owner.audit_verify())["ok"]
        with trio.fail_after(WAIT):
            await owner.wait_outbox_empty()  # both notifications were acknowledged


async def test_offline_requester_gets_its_grant_by_store_and_forward(tmp_path):
    async with running(tmp_path, "owner") as owner:
        async with running(tmp_path, "service") as service:
            asked = await service.requester.request(link_to(owner), [Scope("/pds/read", "cv/")], "Research")
            service_addrs = service.listen_addrs()
        # The service is gone; the owner approves anyway and the notification waits in the outbox.
        await owner.approve(asked["request"], None, None)
        (item,) = owner.owner.outbox()
        # The service comes back with the same identity and address, and the outbox delivers.
        async with running(tmp_path, "service", listen=service_addrs) as back:
            owner.notify_changed()  # as the retry timer would; the backoff delay is not what is tested here
            await wait_for(back.requester, lambda: back.requester.consents()[0]["status"] == "granted")
            with trio.fail_after(WAIT):
                await owner.wait_outbox_empty()
            assert back.requester.find_delegation(owner.identity.did, "/pds/read", "cv/basics") is not None


async def test_owner_found_by_did_alone_through_a_bootstrap_node(tmp_path):
    """A link without addresses still works: the requester finds the owner on the DHT via a shared seed node."""
    from node.discovery import run_bootstrap_node

    async with trio.open_nursery() as nursery:
        seed_host = await nursery.start(_seed, run_bootstrap_node)
        boot = [str(a) for a in seed_host.get_addrs()]  # each ends in /p2p/<seed PeerID>
        config = Config(bootstrap=boot)
        async with running(tmp_path, "owner", config) as owner, running(tmp_path, "service", config) as service:
            asked = await service.requester.request(Link(owner.identity.did), [Scope("/pds/read", "cv/")], "DHT test")
            assert asked["status"] == "pending"
            (pending,) = await owner.requests("pending")
            assert pending["requester"] == service.identity.did
            found = await service.find(owner.identity.peer_id)
            assert found["did"] == owner.identity.did and set(found["addrs"]) & set(owner.listen_addrs())
            with pytest.raises(ProtocolError):
                await service.find("not-a-peer")
        nursery.cancel_scope.cancel()


async def _seed(run_bootstrap_node, task_status):
    await run_bootstrap_node(bytes(32), ["/ip4/127.0.0.1/tcp/0"], on_ready=task_status.started)
