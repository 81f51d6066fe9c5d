"""The hostile peer against a real running node (run_node, real libp2p hosts on 127.0.0.1, real stores): every attack
is answered with its code (or a reset for framing attacks), an honest peer keeps being served during it, and the
store and audit log change only by the logged refusals. The honest peer's read latency p50 before and during each
attack is printed (run with -s), and appended as JSON lines to $MYDATA_ADVERSARIAL_OUT when that is set; it is
never asserted against a threshold."""

from __future__ import annotations

import json
import os
import random
import time
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
from libp2p.peer.id import ID
from nacl.signing import SigningKey

from consent.envelope import DLG_TAG, INV_TAG, Delegation, parse_token, seal_envelope, sign_invocation
from consent.request import Scope
from hostile import (
    DROPPED,
    Hostile,
    Latency,
    call,
    code_of,
    connection_flood,
    forge_signature,
    garbage,
    non_minimal_prefix,
    oversized_prefix,
    read_answer,
    request_frame,
    reset_quietly,
    seed_of,
    stream_ended,
    tcp_stall_flood,
)
from node.config import Config
from node.home import Home
from node.handlers import RateLimiter
from node.net import MAX_CONNECTIONS_PER_PEER, serve
from node.requester import CONSENT_PROTOCOL, NOTIFY_PROTOCOL, PDS_PROTOCOL
from node.runtime import Node, run_node
from node.vault import Vault
from protocol.cid import CID
from protocol.framing import encode_frame
from protocol.ids import peer_id_from_did, peer_id_from_public_key
from protocol.links import Link
from protocol.messages import encode_request

WAIT = 30  # deadlines against hangs on a busy machine, never performance claims
PROTOCOLS = (CONSENT_PROTOCOL, PDS_PROTOCOL, NOTIFY_PROTOCOL)
READ_CV = Scope("/pds/read", "cv/")
WRITE_CERTS = Scope("/pds/write", "cv/certificates/")
BASELINE_READS = 20


def now() -> int:
    return int(time.time())


# ---------------------------------------------------------------- a real node, an honest peer, and the measurements


async def _start(tmp_path, name: str, nursery) -> Node:
    home = Home.resolve(tmp_path / name)
    home.create()
    vault, identity = Vault.create("pass phrase", profile="interactive")
    vault.save(home.vault_path)

    async def run(task_status):
        await run_node(home, identity, Config(), listen=["/ip4/127.0.0.1/tcp/0"], api_port=0,
                       on_ready=lambda node, url: task_status.started(node), handle_signals=False)

    with trio.fail_after(WAIT):
        return await nursery.start(run)


@dataclass
class Arena:
    owner: Node
    honest: Node
    stack: AsyncExitStack
    delegations: list[Delegation]

    @property
    def link(self) -> Link:
        return Link(self.owner.identity.did, tuple(self.owner.listen_addrs()))

    @property
    def peer(self) -> ID:
        return ID.from_base58(self.owner.identity.peer_id)

    @property
    def addr(self) -> str:
        return f"{self.owner.listen_addrs()[0]}/p2p/{self.owner.identity.peer_id}"

    async def hostile(self, name: str, target: Node | None = None) -> Hostile:
        target = target or self.owner
        addr = f"{target.listen_addrs()[0]}/p2p/{target.identity.peer_id}"
        return await Hostile(name).start(self.stack, addr)

    async def honest_read(self) -> None:
        result = await self.honest.requester.invoke(self.link, "/pds/read", {"path": "cv/basics"})
        assert result["value"] == {"name": "Ada Lovelace"}

    def snapshot(self) -> tuple[dict, dict, int]:
        return dict(self.owner.store.list("")), dict(self.owner.store.list("", space="node")), \
            self.owner.audit_log.count()

    def assert_only_refusals_since(self, snap, refusers: set[str], *, node_space_may_grow: bool = False,
                                   other_kinds: set[str] = frozenset()) -> list:
        """The data store is untouched, and every new audit entry is an honest read or a refusal of `refusers`."""
        data, node_space, seq = snap
        assert dict(self.owner.store.list("")) == data
        after = dict(self.owner.store.list("", space="node"))
        if node_space_may_grow:
            assert all(after[p] == v for p, v in node_space.items())
        else:
            assert after == node_space
        refused = []
        for entry in self.owner.audit_log.entries(since_seq=seq):
            if entry.kind == "invocation.accepted":
                assert entry.fields["requester"] == self.honest.identity.did and entry.fields["cmd"] == "/pds/read"
            elif entry.kind == "invocation.refused":
                assert entry.fields["requester"] in refusers, entry.fields
                refused.append(entry.fields["code"])
            else:
                assert entry.kind in other_kinds, entry.kind
        assert self.owner.audit_log.verify().ok
        return refused

    async def under_attack(self, name: str, attack):
        """Run `attack()` while the honest peer reads in a loop; every honest read must succeed. Returns its result."""
        before, during = Latency(), Latency()
        await before.run(self.honest_read, count=BASELINE_READS)
        done = trio.Event()
        result = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: during.run(self.honest_read, until=done))
            try:
                with trio.fail_after(120):
                    result = await attack()
            finally:
                done.set()
        assert before.failures == [] and during.failures == []
        report(name, before, during)
        return result


def report(name: str, before: Latency, during: Latency) -> None:
    row = {"attack": name, "honest_p50_ms_before": round(before.p50_ms, 2),
           "honest_p50_ms_during": round(during.p50_ms, 2), "honest_reads_during": len(during.samples)}
    print(f"\nADVERSARIAL {json.dumps(row)}")
    out = os.environ.get("MYDATA_ADVERSARIAL_OUT")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")


async def grant(owner: Node, key_holder, send, scopes: list[Scope]) -> list[Delegation]:
    """Ask the owner for `scopes` through `send` (a consent call), approve all, and return the delegations."""
    request = key_holder.consent_request(owner.identity.did, scopes, now=now())
    asked = await send("request", request=request.raw)
    assert asked["status"] == "pending"
    await owner.approve(str(request.cid), None, None)
    status = await send("status", request=request.cid)
    return [parse_token(raw) for raw in status["delegations"]]


@asynccontextmanager
async def arena(tmp_path):
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        owner = await _start(tmp_path, "owner", nursery)
        honest = await _start(tmp_path, "honest", nursery)
        await owner.put("cv/basics", {"name": "Ada Lovelace"}, None)
        a = Arena(owner, honest, stack, [])
        asked = await honest.requester.request(a.link, [READ_CV, WRITE_CERTS], "Job matching")
        await owner.approve(asked["request"], None, None)
        assert (await honest.requester.status(a.link, asked["request"]))["status"] == "granted"
        with trio.fail_after(WAIT):
            await owner.wait_outbox_empty()  # the grant's notify is delivered before any snapshot
        a.delegations = [honest.requester.find_delegation(owner.identity.did, s.cmd, s.path + "x")
                         for s in (READ_CV, WRITE_CERTS)]
        try:
            yield a
        finally:
            await stack.aclose()
            nursery.cancel_scope.cancel()


def answer_code(answer) -> str:
    return answer if isinstance(answer, str) else ("ok" if answer["ok"] else answer["error"]["code"])


async def framing_attack(attacker: Hostile, peer: ID, data: bytes, *, end: bool = True) -> tuple[str, int]:
    """Send `data`; the node must answer once with an error (id 0) and then drop the stream."""
    stream = await attacker.open(peer, PDS_PROTOCOL)
    try:
        await stream.write(data)
        if end:
            await stream.close_write()
        answer = await read_answer(stream)
        assert answer != DROPPED, "the node dropped the stream without its error answer"
        assert answer["ok"] is False
        assert await stream_ended(stream)
        return answer["error"]["code"], answer["id"]
    finally:
        await reset_quietly(stream)


# ---------------------------------------------------------------- framing attacks


async def test_garbage_bytes_are_malformed_then_reset(tmp_path):
    rnd = random.Random(7)
    async with arena(tmp_path) as a:
        attacker = await a.hostile("garbage")
        snap = a.snapshot()

        async def attack():
            codes = {}
            for protocol in PROTOCOLS:
                for _ in range(15):
                    blob = garbage(rnd.randint(1, 300), rnd)
                    stream = await attacker.open(a.peer, protocol)
                    try:
                        await stream.write(blob)
                        await stream.close_write()
                        answer = await read_answer(stream)
                        code = answer_code(answer)
                        codes[code] = codes.get(code, 0) + 1
                        if answer != DROPPED:
                            assert answer["id"] == 0 or code not in ("Malformed", "TooLarge")
                            assert await stream_ended(stream)
                    finally:
                        await reset_quietly(stream)
            return codes

        codes = await a.under_attack("garbage bytes", attack)
        # Random bytes are a bad prefix, a frame cut short by the end of the stream, or not one DAG-CBOR map.
        assert set(codes) <= {"Malformed", "TooLarge"}, codes
        a.assert_only_refusals_since(snap, set())


@pytest.mark.parametrize(
    "data, code",
    [
        (oversized_prefix((1 << 20) + 1), "TooLarge"),
        (oversized_prefix(1 << 32), "TooLarge"),
        (oversized_prefix((1 << 63) - 1), "TooLarge"),  # the largest a 9-byte varint can say
        (oversized_prefix((1 << 20) + 1) + b"x" * 60_000, "TooLarge"),  # refused before its payload is awaited
        (b"\xff" * 9 + b"\x01", "Malformed"),  # a prefix longer than 9 bytes
        (non_minimal_prefix(0), "Malformed"),
        (non_minimal_prefix(13) + encode_request("invoke", 1)[:13], "Malformed"),
        (b"\x80" * 8 + b"\x00", "Malformed"),  # zero, padded to 9 bytes
    ],
    ids=["1MiB+1", "4GiB", "2^63-1", "1MiB+1-with-data", "10-byte-prefix", "zero-padded", "13-padded",
         "zero-9-bytes"],
)
async def test_bad_length_prefixes_are_answered_then_reset(tmp_path, data, code):
    async with arena(tmp_path) as a:
        attacker = await a.hostile("prefix")
        snap = a.snapshot()

        async def attack():
            # Without ending the stream: the prefix alone must be refused, not waited on.
            return [await framing_attack(attacker, a.peer, data, end=False) for _ in range(10)]

        answers = await a.under_attack(f"length prefix {data[:10].hex()}", attack)
        assert set(answers) == {(code, 0)}
        a.assert_only_refusals_since(snap, set())


async def test_half_frames_then_stall_are_reset_at_the_frame_deadline(tmp_path):
    async with arena(tmp_path) as a:
        # The real handlers, re-registered with a short frame deadline so the test does not wait 10 s.
        serve(a.owner.host, PDS_PROTOCOL, a.owner.handlers.pds, frame_deadline=1.0)
        serve(a.owner.host, CONSENT_PROTOCOL, a.owner.handlers.consent, frame_deadline=1.0)
        attacker = await a.hostile("staller")
        snap = a.snapshot()
        frame = request_frame("invoke", 1, invocation=b"i" * 400, proofs=[])

        async def attack():
            stalled = []
            for protocol in (PDS_PROTOCOL, CONSENT_PROTOCOL):
                stalled += await attacker.half_frames(a.peer, protocol, 25, frame, keep=200)
                stalled += await attacker.half_frames(a.peer, protocol, 5, frame, keep=1)  # only the prefix's start
            ended = [await stream_ended(s) for s in stalled]
            for s in stalled:
                await reset_quietly(s)
            return ended

        ended = await a.under_attack("60 half frames then stall", attack)
        assert all(ended) and len(ended) == 60  # reset without an answer, none left hanging
        a.assert_only_refusals_since(snap, set())


# ---------------------------------------------------------------- floods


async def test_stream_flood_from_one_peer(tmp_path):
    async with arena(tmp_path) as a:
        attacker = await a.hostile("streams")
        snap = a.snapshot()
        asking = request_frame("status", 1, request=CID.of_dagcbor(b"\xa0"))

        async def attack():
            idle = [await attacker.open(a.peer, CONSENT_PROTOCOL) for _ in range(100)]  # opened, never written to
            outcomes = await attacker.stream_flood(a.peer, CONSENT_PROTOCOL, 200, asking)
            for s in idle:
                await reset_quietly(s)
            return outcomes

        outcomes = await a.under_attack("300 streams (200 requests, 100 idle)", attack)
        # Each request is answered on its own (nobody else's request: NotFound), or the peer is slowed down.
        assert set(outcomes) <= {"NotFound", "RateLimited"} and sum(outcomes.values()) == 200, outcomes
        a.assert_only_refusals_since(snap, set())


async def test_request_flood_on_one_stream_is_rate_limited_per_peer(tmp_path):
    async with arena(tmp_path) as a:
        # The node's own limiter, resized so a flood trips it within a bounded test (the default bucket is 4000).
        a.owner.handlers.limiter = RateLimiter(rate=100, burst=200)
        attacker = await a.hostile("pipeliner")
        snap = a.snapshot()
        frames = [request_frame("nope", i + 1) for i in range(1500)]

        outcomes = await a.under_attack("1500 pipelined requests on one stream (bucket 200, 100/s)",
                                        lambda: attacker.pipeline(a.peer, CONSENT_PROTOCOL, frames))
        print(f"pipelined flood outcomes: {outcomes}")
        assert set(outcomes) == {"UnknownOp", "RateLimited"} and sum(outcomes.values()) == 1500, outcomes
        a.assert_only_refusals_since(snap, set())
        # Another peer has its own bucket: served at once.
        assert await (await a.hostile("bystander")).code_of(a.peer, CONSENT_PROTOCOL, "nope") == "UnknownOp"


async def test_connection_flood_from_one_peer(tmp_path):
    async with arena(tmp_path) as a:
        flooder = ID.from_base58(peer_id_from_public_key(bytes(SigningKey(seed_of("connections")).verify_key)))
        snap = a.snapshot()
        ip, port = a.owner.listen_addrs()[0].split("/")[2], int(a.owner.listen_addrs()[0].split("/")[4])

        async def attack():
            sockets = await tcp_stall_flood(ip, port, 40, b"\x13/multistream/1.0.0\n" + b"\xff" * 64)
            async def at_node():
                return len(a.owner.host.get_network().get_connections(flooder))

            connected, refused, held = await connection_flood(a.addr, "connections", 40, at_node)
            for sock in sockets:
                await sock.aclose()
            return connected, refused, held

        connected, refused, held = await a.under_attack("40 stalled TCP + 40 libp2p connections, one PeerID", attack)
        print(f"connection flood: {connected} dialers connected, refused: {refused}; the node held {held}")
        assert connected + len(refused) == 40
        assert held <= MAX_CONNECTIONS_PER_PEER  # the node trims one peer's extra connections
        a.assert_only_refusals_since(snap, set())
        # The flooding identity may come back afterwards like anyone else.
        assert await (await a.hostile("connections")).code_of(a.peer, CONSENT_PROTOCOL, "nope") == "UnknownOp"


async def test_consent_request_flood_is_capped_and_invalid_requests_refused(tmp_path):
    async with arena(tmp_path) as a:
        attacker = await a.hostile("asker")
        snap = a.snapshot()
        owner_did = a.owner.identity.did

        async def attack():
            codes = []
            for i in range(24):
                request = attacker.consent_request(owner_did, [READ_CV], now=now(), purpose=f"flood {i}")
                try:
                    codes.append((await attacker.call(a.peer, CONSENT_PROTOCOL, "request", request=request.raw))["status"])
                except Exception as exc:
                    codes.append(exc.code.value)
            valid = attacker.consent_request(owner_did, [READ_CV], now=now())
            stranger = Hostile("stranger-key")
            bad = {
                "forged": forge_signature(valid.raw),
                "garbage": b"\x82\x40\xa0",
                "someone else's": stranger.consent_request(owner_did, [READ_CV], now=now()).raw,
                "to another node": attacker.consent_request(stranger.did, [READ_CV], now=now()).raw,
                "not bytes": "text",
            }
            refused = {k: await attacker.code_of(a.peer, CONSENT_PROTOCOL, "request", request=v) for k, v in bad.items()}
            return codes, refused

        codes, refused = await a.under_attack("consent-request flood (24 valid + 5 invalid)", attack)
        assert codes == ["pending"] * 16 + ["RateLimited"] * 8
        assert refused == {"forged": "InvalidSignature", "garbage": "Malformed", "someone else's": "Unauthorized",
                           "to another node": "InvalidAudience", "not bytes": "Malformed"}
        a.assert_only_refusals_since(snap, set(), node_space_may_grow=True, other_kinds={"consent.requested"})
        assert len(await a.owner.requests("pending")) == 16
        # The honest peer can still ask for consent.
        asked = await a.honest.requester.request(a.link, [Scope("/pds/list", "cv/")], "More")
        assert asked["status"] == "pending"


# ---------------------------------------------------------------- capability attacks


async def test_replayed_invocations_are_refused(tmp_path):
    async with arena(tmp_path) as a:
        attacker = await a.hostile("replayer")
        write = next(d for d in a.delegations if d.cmd == "/pds/write")
        honest_key, owner_did = a.honest.identity.signing_key, a.owner.identity.did
        captured = sign_invocation(honest_key, sub=owner_did, aud=owner_did, cmd="/pds/write",
                                   args={"path": "cv/certificates/acme", "value": {"ok": 1}}, prf=[write.cid],
                                   exp=now() + 120)
        result = await call(a.honest.host, a.peer, PDS_PROTOCOL, "invoke", invocation=captured.raw, proofs=[write.raw])
        assert result == {"version": 1}
        snap = a.snapshot()

        async def attack():
            replays = [await attacker.code_of(a.peer, PDS_PROTOCOL, "invoke", invocation=captured.raw,
                                              proofs=[write.raw]) for _ in range(20)]
            replays.append(await code_of(a.honest.host, a.peer, PDS_PROTOCOL, "invoke", invocation=captured.raw,
                                                        proofs=[write.raw]))
            return replays

        replays = await a.under_attack("20 replays of a captured write", attack)
        assert replays == ["Replay"] * 21
        refused = a.assert_only_refusals_since(snap, {attacker.did, a.honest.identity.did})
        assert refused == ["Replay"] * 21
        assert a.owner.store.get("cv/certificates/acme").version == 1


async def test_another_peers_capability_is_refused(tmp_path):
    async with arena(tmp_path) as a:
        thief = await a.hostile("thief")
        read = next(d for d in a.delegations if d.cmd == "/pds/read")
        owner_did = a.owner.identity.did
        snap = a.snapshot()

        async def attack():
            # (1) The honest peer's delegation under the thief's own invocation.
            own = thief.invocation(owner_did, "/pds/read", {"path": "cv/basics"}, [read], now=now())
            # (2) An invocation signed by the honest peer (captured before it was sent) presented by the thief.
            lifted = sign_invocation(a.honest.identity.signing_key, sub=owner_did, aud=owner_did, cmd="/pds/read",
                                     args={"path": "cv/basics"}, prf=[read.cid], exp=now() + 120)
            # (3) The delegation alone as if it were an invocation.
            return [await thief.code_of(a.peer, PDS_PROTOCOL, "invoke", invocation=inv, proofs=[read.raw])
                    for inv in (own.raw, lifted.raw, read.raw)]

        codes = await a.under_attack("another peer's capability presented", attack)
        assert codes == ["InvalidAudience", "Unauthorized", "Malformed"]
        assert a.assert_only_refusals_since(snap, {thief.did}) == codes


def _forged_owner_delegation(attacker: Hostile, owner_did: str, cmd: str, pol: list) -> bytes:
    """A delegation that names the owner as issuer but is signed with the attacker's key."""
    payload = {"iss": owner_did, "aud": attacker.did, "sub": owner_did, "cmd": cmd, "pol": pol,
               "nonce": b"n" * 16, "exp": now() + 3600}
    return seal_envelope(attacker.key, DLG_TAG, payload)


async def test_forged_signatures_are_refused(tmp_path):
    async with arena(tmp_path) as a:
        forger = await a.hostile("forger")
        owner_did = a.owner.identity.did
        read = next(d for d in a.delegations if d.cmd == "/pds/read")
        snap = a.snapshot()

        async def attack():
            codes = {}
            fake = parse_token(_forged_owner_delegation(forger, owner_did, "/pds", []))
            inv = forger.invocation(owner_did, "/pds/write", {"path": "cv/basics", "value": "pwned"}, [fake], now=now())
            codes["owner's delegation forged"] = await forger.code_of(
                a.peer, PDS_PROTOCOL, "invoke", invocation=inv.raw, proofs=[fake.raw])
            inv = forger.invocation(owner_did, "/pds/read", {"path": "cv/basics"}, [], now=now())
            codes["invocation signature flipped"] = await forger.code_of(
                a.peer, PDS_PROTOCOL, "invoke", invocation=forge_signature(inv.raw), proofs=[])
            # An invocation claiming the honest peer as issuer, signed by the forger.
            payload = {"iss": a.honest.identity.did, "sub": owner_did, "aud": owner_did, "cmd": "/pds/read",
                       "args": {"path": "cv/basics"}, "prf": [read.cid], "nonce": b"n" * 16, "exp": now() + 60}
            codes["honest issuer claimed"] = await forger.code_of(
                a.peer, PDS_PROTOCOL, "invoke", invocation=seal_envelope(forger.key, INV_TAG, payload),
                proofs=[read.raw])
            # The honest peer's real delegation with one signature bit flipped (its CID no longer matches prf).
            inv = forger.invocation(owner_did, "/pds/read", {"path": "cv/basics"}, [read], now=now())
            codes["proof signature flipped"] = await forger.code_of(
                a.peer, PDS_PROTOCOL, "invoke", invocation=inv.raw, proofs=[forge_signature(read.raw)])
            return codes

        codes = await a.under_attack("forged signatures", attack)
        assert codes == {"owner's delegation forged": "InvalidSignature", "invocation signature flipped":
                         "InvalidSignature", "honest issuer claimed": "InvalidSignature",
                         "proof signature flipped": "UnavailableProof"}
        assert sorted(a.assert_only_refusals_since(snap, {forger.did})) == sorted(codes.values())
        assert a.owner.store.get("cv/basics").value == {"name": "Ada Lovelace"}


async def test_widened_scope_through_redelegation_and_writes_outside_the_grant(tmp_path):
    async with arena(tmp_path) as a:
        holder, accomplice = await a.hostile("holder"), await a.hostile("accomplice")
        owner_did = a.owner.identity.did

        async def send(op, **fields):
            return await holder.call(a.peer, CONSENT_PROTOCOL, op, **fields)

        dlgs = await grant(a.owner, holder, send, [READ_CV, WRITE_CERTS])
        with trio.fail_after(WAIT):
            await a.owner.wait_outbox_empty()
        read = next(d for d in dlgs if d.cmd == "/pds/read")
        write = next(d for d in dlgs if d.cmd == "/pds/write")
        snap = a.snapshot()

        async def attack():
            codes = {}

            async def invoke(who, name, cmd, args, proofs):
                inv = who.invocation(owner_did, cmd, args, proofs, now=now())
                codes[name] = await who.code_of(a.peer, PDS_PROTOCOL, "invoke", invocation=inv.raw,
                                                proofs=[p.raw for p in proofs])

            wide = holder.redelegate(read, accomplice.did, now=now())
            await invoke(accomplice, "redelegated, widened to /pds", "/pds/write",
                         {"path": "cv/basics", "value": "pwned"}, [read, wide])
            same = holder.redelegate(read, accomplice.did, now=now(), cmd="/pds/read",
                                     pol=[["like", ".path", "cv/*"]])
            await invoke(accomplice, "redelegated, same scope", "/pds/read", {"path": "cv/basics"}, [read, same])
            await invoke(holder, "write outside the prefix", "/pds/write", {"path": "cv/basics", "value": 1}, [write])
            await invoke(holder, "write with a read grant", "/pds/write",
                         {"path": "cv/certificates/x", "value": 1}, [read])
            await invoke(holder, "dot-dot escape", "/pds/write",
                         {"path": "cv/certificates/../basics", "value": 1}, [write])
            await invoke(holder, "read of an absent path outside", "/pds/read", {"path": "secrets/none"}, [read])
            await invoke(holder, "list everything", "/pds/list", {"path": ""}, [read])
            await invoke(holder, "delete outside", "/pds/delete", {"path": "cv/basics"}, [write])
            return codes

        codes = await a.under_attack("widened redelegation and writes outside the grant", attack)
        assert codes == {
            "redelegated, widened to /pds": "Unauthorized",
            "redelegated, same scope": "Unauthorized",  # the grant's meta.redelegate is false
            "write outside the prefix": "MatchError",
            "write with a read grant": "MatchError",
            "dot-dot escape": "Malformed",
            "read of an absent path outside": "MatchError",  # authorization before existence: never NotFound
            "list everything": "MatchError",
            "delete outside": "MatchError",
        }
        refused = a.assert_only_refusals_since(snap, {holder.did, accomplice.did})
        assert sorted(refused) == sorted(codes.values())


# ---------------------------------------------------------------- forged notifications to a requester


async def test_forged_notifications_from_a_stranger_change_nothing(tmp_path):
    async with arena(tmp_path) as a:
        stranger = await a.hostile("notifier", target=a.honest)
        honest_peer = ID.from_base58(a.honest.identity.peer_id)
        before = a.honest.requester.consents()
        (consent,) = before
        request_cid = CID.parse(consent["request"])
        held = [CID.parse(c) for c in consent["delegations"]]
        owner_did = a.owner.identity.did

        async def attack():
            codes = {}
            fake = parse_token(_forged_owner_delegation(stranger, owner_did, "/pds", []))
            codes["granted, someone else's request"] = await stranger.code_of(
                honest_peer, NOTIFY_PROTOCOL, "granted", request=request_cid, delegations=[fake.raw])
            codes["denied, someone else's request"] = await stranger.code_of(
                honest_peer, NOTIFY_PROTOCOL, "denied", request=request_cid, reason="forged")
            own = [sign_invocation(stranger.key, sub=stranger.did, cmd="/ucan/revoke", args={"revoke": c}, prf=[],
                                   exp=now() + 600).raw for c in held]
            codes["revoked, signed by the stranger"] = await stranger.code_of(
                honest_peer, NOTIFY_PROTOCOL, "revoked", revoked=held, revocations=own)
            as_owner = [seal_envelope(stranger.key, INV_TAG, {
                "iss": owner_did, "sub": owner_did, "cmd": "/ucan/revoke", "args": {"revoke": c}, "prf": [],
                "nonce": b"n" * 16, "exp": now() + 600}) for c in held]
            codes["revoked, forged as the owner"] = await stranger.code_of(
                honest_peer, NOTIFY_PROTOCOL, "revoked", revoked=held, revocations=as_owner)
            codes["revoked, empty"] = await stranger.code_of(honest_peer, NOTIFY_PROTOCOL, "revoked", revoked=[],
                                                             revocations=[])
            return codes

        codes = await a.under_attack("forged notify to a requester", attack)
        assert codes == {
            "granted, someone else's request": "NotFound",
            "denied, someone else's request": "NotFound",
            # A revocation the stranger may sign (of its own delegations) is acknowledged, and touches only what
            # the stranger granted: here nothing.
            "revoked, signed by the stranger": "ok",
            "revoked, forged as the owner": "InvalidSignature",
            "revoked, empty": "Malformed",
        }
        assert a.honest.requester.consents() == before
        await a.honest_read()


# ---------------------------------------------------------------- regressions: bugs this suite found


async def test_invocation_with_null_exp_is_invalid_claim_and_audited(tmp_path):
    async with arena(tmp_path) as a:
        attacker = await a.hostile("no-exp")
        owner_did = a.owner.identity.did
        snap = a.snapshot()
        inv = sign_invocation(attacker.key, sub=owner_did, aud=owner_did, cmd="/pds/read", args={"path": "cv/basics"},
                              prf=[], exp=None)
        code = await attacker.code_of(a.peer, PDS_PROTOCOL, "invoke", invocation=inv.raw, proofs=[])
        await a.honest_read()
        assert (code, a.assert_only_refusals_since(snap, {attacker.did})) == ("InvalidClaim", ["InvalidClaim"])


async def test_far_future_invocations_do_not_pin_the_replay_memory(tmp_path):
    async with arena(tmp_path) as a:
        stranger = await a.hostile("pinner")
        owner_did = a.owner.identity.did
        codes = []
        for i in range(5):
            inv = stranger.invocation(owner_did, "/pds/read", {"path": "cv/basics"}, [], now=now(),
                                      lifetime=10 * 365 * 86400)
            codes.append(await stranger.code_of(a.peer, PDS_PROTOCOL, "invoke", invocation=inv.raw, proofs=[]))
        assert codes == ["InvalidClaim"] * 5
        longest = max((exp for _, exp in a.owner.owner.replay.entries()), default=0)
        assert longest <= now() + 600 + 60, "a refused invocation holds replay memory beyond the lifetime bound"
        # Nor do they come back from the audit log when a restarted node rebuilds its replay memory.
        from node.owner import Owner

        rebuilt = Owner(signing_key=a.owner.identity.signing_key, store=a.owner.store, audit=a.owner.audit_log)
        assert max((exp for _, exp in rebuilt.replay.entries()), default=0) <= now() + 600 + 60


# ---------------------------------------------------------------- the node as its own `mydata run` process


@pytest.mark.slow
async def test_node_process_stays_responsive_under_combined_attack(tmp_path):
    """The figures that matter for "stays responsive": the node in its own process (not sharing the test's CPU
    loop), an honest requester reading while one hostile peer floods streams, garbage and connections."""
    from test_e2e_processes import Node as ProcessNode
    from test_e2e_processes import mydata, mydata_json

    from node.crypto import random_key
    from node.handlers import Handlers
    from node.net import make_host, running_host, serve as serve_protocol
    from node.requester import Requester
    from node.store import Store
    from protocol.links import parse_link

    node = ProcessNode(tmp_path / "owner").init()
    mydata("put", "--home", str(node.home), "cv/basics", stdin='{"name": "Ada Lovelace"}')
    store = Store.open(tmp_path / "honest.db", random_key())
    try:
        node.start()
        link = parse_link(node.link)
        async with running_host(make_host(seed_of("honest-process"))) as host, AsyncExitStack() as stack:
            requester = Requester(host=host, signing_key=SigningKey(seed_of("honest-process")), store=store)
            serve_protocol(host, NOTIFY_PROTOCOL, Handlers(None, requester).notify)
            asked = await requester.request(link, [READ_CV], "Responsiveness")
            await trio.to_thread.run_sync(lambda: mydata("approve", "--home", str(node.home), asked["request"]))
            assert (await requester.status(link, asked["request"]))["status"] == "granted"

            async def read():
                assert (await requester.invoke(link, "/pds/read", {"path": "cv/basics"}))["version"] == 1

            target = f"{link.addrs[0]}/p2p/{ID.from_base58(peer_id_from_did(link.did))}"
            attacker = await Hostile("process-attacker").start(stack, target)
            owner_peer = ID.from_base58(peer_id_from_did(link.did))
            rnd = random.Random(3)

            async def attack():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(attacker.stream_flood, owner_peer, PDS_PROTOCOL, 300,
                                       request_frame("invoke", 1, invocation=garbage(200, rnd), proofs=[]))
                    nursery.start_soon(connection_flood, target, "process-connections", 40)
                    for _ in range(30):
                        await attacker.send_raw(owner_peer, CONSENT_PROTOCOL, garbage(100, rnd), end=True)

            before, during = Latency(), Latency()
            await before.run(read, count=BASELINE_READS)
            done = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: during.run(read, until=done))
                try:
                    with trio.fail_after(120):
                        await attack()
                finally:
                    done.set()
            assert before.failures == [] and during.failures == []
            report("node process: 300 streams + 40 connections + 30 garbage streams", before, during)
            await requester.aclose()
        entries = await trio.to_thread.run_sync(lambda: mydata_json("audit", "--home", str(node.home)))
        refused = [e for e in entries if e["kind"] == "invocation.refused"]
        assert len(refused) == 300 and {e["fields"]["code"] for e in refused} == {"Malformed"}
        accepted = [e for e in entries if e["kind"] == "invocation.accepted"]
        assert len(accepted) == len(before.samples) + len(during.samples)
        assert mydata("audit", "--home", str(node.home), "--verify").returncode == 0
        assert mydata_json("get", "--home", str(node.home), "cv/basics")["version"] == 1
        assert node.stop() == 0
    finally:
        node.kill()
        store.close()
