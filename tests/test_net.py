"""The libp2p shell with real hosts on 127.0.0.1: Noise-only hosts, serve() under broken and stalled input,
and PeerSession reuse and recovery."""

from __future__ import annotations

import hashlib
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamError
from libp2p.security.secio import transport as secio
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from multiaddr import Multiaddr
from nacl.signing import SigningKey

from node.net import (
    EchoBaselineSession,
    PeerSession,
    connect,
    make_host,
    running_host,
    serve,
    serve_echo_baseline,
)
from protocol import dagcbor
from protocol.errors import ErrorCode, ProtocolError
from protocol.framing import FrameDecoder, encode_frame, encode_varint
from protocol.ids import did_from_public_key
from protocol.messages import encode_request, parse_response

PROTO = "/mydata/test/1.0.0"
BIG = 1_000_000  # 8 unread answers (8 MB) outgrow the stream window py-libp2p grants (~4 MB measured)


def seed(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


async def handler(ctx, request):
    if request.op == "echo":
        return {"body": request.body, "did": ctx.remote_did, "protocol": ctx.protocol_id}
    if request.op == "fail":
        raise ProtocolError(ErrorCode.NOT_FOUND, "no such thing")
    if request.op == "crash":
        raise RuntimeError("a bug in the handler")
    if request.op == "not-a-map":
        return ["a", "list"]
    if request.op == "big":
        return {"blob": b"b" * BIG}
    raise ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {request.op!r}")


@asynccontextmanager
async def network(n_clients: int = 1, **serve_options):
    """A serving host and `n_clients` hosts connected to it; every host is closed on exit."""
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(running_host(make_host(seed("server"))))
        serve(server, PROTO, handler, **serve_options)
        clients = [
            await stack.enter_async_context(running_host(make_host(seed(f"client{i}")))) for i in range(n_clients)
        ]
        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(connect, client, server.get_addrs()[0])
        yield server, clients


async def raw_stream(client, server):
    return await client.new_stream(server.get_id(), [TProtocol(PROTO)])


async def read_answer(stream, decoder: FrameDecoder | None = None) -> dict | None:
    """One response frame, decoded; None if the stream ends (EOF or reset) before a whole frame."""
    decoder = decoder or FrameDecoder()
    with trio.fail_after(20):  # a safety net against hanging, not a timing assertion
        while (frame := decoder.next_frame()) is None:
            try:
                decoder.feed(await stream.read(65536))
            except StreamError:  # StreamEOF, StreamReset, StreamClosed
                return None
    return dagcbor.decode(frame)


async def assert_stream_dropped(stream):
    assert await read_answer(stream) is None


async def assert_server_healthy(server, clients):
    """Every client, including on a new stream, still gets answers."""
    for client in clients:
        async with PeerSession(client, server.get_id(), PROTO) as session:
            assert (await session.call("echo", n=1))["body"] == {"n": 1}


# ---------------------------------------------------------------- happy paths


async def test_round_trips_over_one_reused_stream_with_authenticated_did():
    async with network() as (server, [client]):
        async with PeerSession(client, server.get_id(), PROTO) as session:
            first = await session.call("echo", path="cv/basics", n=1)
            stream = session._framed.stream
            for i in range(20):
                result = await session.call("echo", i=i, blob=b"\x00" * i)
                assert result["body"] == {"i": i, "blob": b"\x00" * i}
            assert session._framed.stream is stream
    assert first["body"] == {"path": "cv/basics", "n": 1}
    assert first["protocol"] == PROTO
    assert first["did"] == did_from_public_key(bytes(SigningKey(seed("client0")).verify_key))


async def test_error_answers_keep_the_stream_usable():
    async with network() as (server, [client]):
        async with PeerSession(client, server.get_id(), PROTO) as session:
            await session.call("echo")
            stream = session._framed.stream
            for op, code in [
                ("fail", ErrorCode.NOT_FOUND),
                ("nope", ErrorCode.UNKNOWN_OP),
                ("crash", ErrorCode.INTERNAL),
                ("not-a-map", ErrorCode.INTERNAL),
            ]:
                with pytest.raises(ProtocolError) as exc:
                    await session.call(op)
                assert exc.value.code is code
                assert (await session.call("echo", after=op))["body"] == {"after": op}
            assert session._framed.stream is stream


async def test_unknown_op_on_a_raw_stream_keeps_it_open():
    async with network() as (server, [client]):
        stream = await raw_stream(client, server)
        await stream.write(encode_frame(encode_request("nope", 5)))
        error = {"code": "UnknownOp", "message": "unknown op 'nope'"}
        assert await read_answer(stream) == {"id": 5, "ok": False, "error": error}
        await stream.write(encode_frame(encode_request("echo", 6)))
        assert (await read_answer(stream))["ok"] is True
        await stream.close()


@pytest.mark.slow
async def test_fifty_concurrent_requesters():
    async with network(n_clients=50) as (server, clients):
        results = []

        async def requester(client, i):
            async with PeerSession(client, server.get_id(), PROTO) as session:
                for j in range(3):
                    results.append((await session.call("echo", i=i, j=j))["body"])

        async with trio.open_nursery() as nursery:
            for i, client in enumerate(clients):
                nursery.start_soon(requester, client, i)
    assert sorted((r["i"], r["j"]) for r in results) == [(i, j) for i in range(50) for j in range(3)]


# ---------------------------------------------------------------- broken input


def raw_map_frame(items: bytes, count: int) -> bytes:
    return encode_frame(bytes([0xA0 + count]) + items)


@pytest.mark.parametrize(
    "data, code, answer_id",
    [
        (encode_frame(dagcbor.encode([1, 2])), "Malformed", 0),  # not a map
        (encode_frame(dagcbor.encode("echo")), "Malformed", 0),
        (encode_frame(b"\xff\x00"), "Malformed", 0),  # not CBOR
        (raw_map_frame(b"\x62op\x64echo\x62id\x01", 2), "Malformed", 0),  # keys out of canonical order
        (encode_frame(dagcbor.encode({"op": "echo"})), "Malformed", 0),  # no id
        (encode_frame(dagcbor.encode({"id": 9})), "Malformed", 9),  # no op, readable id
        (encode_frame(dagcbor.encode({"id": 9, "op": 1})), "Malformed", 9),
        (b"\x80\x00", "Malformed", 0),  # non-minimal varint prefix
        (b"\xff" * 9 + b"\x01", "Malformed", 0),  # prefix over 9 bytes
        (encode_varint(2**62), "TooLarge", 0),  # huge length prefix, no payload follows
        (encode_varint((1 << 20) + 1) + b"x" * 100, "TooLarge", 0),
    ],
)
async def test_framing_errors_are_answered_then_the_stream_is_dropped(data, code, answer_id):
    async with network(n_clients=2) as (server, clients):
        async with PeerSession(clients[0], server.get_id(), PROTO) as session:
            await session.call("echo")
            other_stream = session._framed.stream
            stream = await raw_stream(clients[0], server)
            await stream.write(data)
            answer = await read_answer(stream)
            assert answer["ok"] is False and answer["id"] == answer_id and answer["error"]["code"] == code
            await assert_stream_dropped(stream)
            # The same peer's other stream, its connection, other peers and new streams are unaffected.
            assert (await session.call("echo", still=True))["body"] == {"still": True}
            assert session._framed.stream is other_stream
        await assert_server_healthy(server, clients)


async def test_truncated_frame_then_end_of_stream_is_malformed():
    async with network() as (server, [client]):
        stream = await raw_stream(client, server)
        await stream.write(encode_frame(encode_request("echo", 3, pad=b"x" * 100))[:50])
        await stream.close_write()
        answer = await read_answer(stream)
        assert answer["error"]["code"] == "Malformed" and answer["id"] == 0
        await assert_server_healthy(server, [client])


async def test_half_a_frame_then_silence_is_reset_after_the_frame_deadline():
    async with network(frame_deadline=0.3) as (server, [client]):
        stream = await raw_stream(client, server)
        await stream.write(encode_frame(encode_request("echo", 3, pad=b"x" * 100))[:50])
        await assert_stream_dropped(stream)  # no answer: the stream is reset
        await assert_server_healthy(server, [client])


async def test_a_stalled_prefix_is_reset_too():
    async with network(frame_deadline=0.3) as (server, [client]):
        stream = await raw_stream(client, server)
        await stream.write(b"\x80")
        await assert_stream_dropped(stream)


async def test_idle_stream_is_closed_and_the_session_reopens_once():
    async with network(idle_timeout=0.2) as (server, [client]):
        stream = await raw_stream(client, server)
        await assert_stream_dropped(stream)  # nothing sent: closed after the idle timeout

        async with PeerSession(client, server.get_id(), PROTO) as session:
            await session.call("echo")
            first = session._framed.stream
            await trio.sleep(0.6)  # let the server close it as idle
            assert (await session.call("echo", again=True))["body"] == {"again": True}
            assert session._framed.stream is not first


async def test_session_recovers_after_a_framing_error_answer():
    async with network(max_frame=64 * 1024) as (server, [client]):
        async with PeerSession(client, server.get_id(), PROTO) as session:
            with pytest.raises(ProtocolError) as exc:
                await session.call("echo", blob=b"x" * 70_000)
            assert exc.value.code is ErrorCode.TOO_LARGE
            assert (await session.call("echo", n=2))["body"] == {"n": 2}


async def test_session_refuses_an_oversized_request_locally():
    async with network() as (server, [client]):
        async with PeerSession(client, server.get_id(), PROTO, max_frame=1000) as session:
            with pytest.raises(ProtocolError) as exc:
                await session.call("echo", blob=b"x" * 2000)
            assert exc.value.code is ErrorCode.TOO_LARGE


async def test_a_client_that_never_reads_does_not_hold_the_server():
    async with network(n_clients=2, frame_deadline=0.5) as (server, clients):
        stream = await raw_stream(clients[0], server)
        for i in range(8):  # none is read
            await stream.write(encode_frame(encode_request("big", i)))
        await assert_server_healthy(server, clients)
        await trio.sleep(1)
        answers, decoder = 0, FrameDecoder()
        while await read_answer(stream, decoder) is not None:
            answers += 1
        assert answers < 8  # the server gave up on the stream instead of waiting for the reader


async def test_session_to_a_peer_without_the_protocol_is_unavailable():
    async with network() as (server, [client]):
        async with PeerSession(client, server.get_id(), "/mydata/none/1.0.0", timeout=5) as session:
            with pytest.raises(ProtocolError) as exc:
                await session.call("echo")
            assert exc.value.code is ErrorCode.UNAVAILABLE


async def test_session_rejects_a_garbage_answer():
    async with running_host(make_host(seed("server"))) as server, running_host(make_host(seed("c"))) as client:

        async def garbage(stream):
            await stream.read(65536)
            await stream.write(encode_frame(dagcbor.encode({"id": 99, "ok": True, "result": {}})))

        server.set_stream_handler(TProtocol(PROTO), garbage)
        await connect(client, server.get_addrs()[0])
        async with PeerSession(client, server.get_id(), PROTO) as session:
            with pytest.raises(ProtocolError) as exc:
                await session.call("echo")
            assert exc.value.code is ErrorCode.MALFORMED


# ---------------------------------------------------------------- hosts


async def test_host_identity_comes_from_the_seed():
    host = make_host(seed("fixed"))
    async with running_host(host):
        pk = host.get_id().extract_public_key().to_bytes()
        assert pk == bytes(SigningKey(seed("fixed")).verify_key)
        assert host.get_private_key().to_bytes() == seed("fixed")


@pytest.mark.parametrize("security", ["plaintext", "secio"])
async def test_unauthenticated_or_legacy_security_is_refused(security):
    key_pair = create_new_key_pair(seed(security))
    if security == "plaintext":
        sec_opt = {PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)}
    else:
        sec_opt = {TProtocol(secio.ID): secio.Transport(key_pair)}
    dialer = new_host(key_pair=key_pair, sec_opt=sec_opt)
    async with running_host(make_host(seed("server"))) as server, running_host(dialer):
        with pytest.raises(ProtocolError) as exc:
            await connect(dialer, server.get_addrs()[0])
        assert exc.value.code is ErrorCode.UNAVAILABLE
        assert server.get_connected_peers() == []


async def test_connect_to_a_dead_address_is_unavailable():
    async with running_host(make_host(seed("lonely"))) as host:
        other = make_host(seed("gone"))
        addr = f"/ip4/127.0.0.1/tcp/1/p2p/{other.get_id()}"
        with pytest.raises(ProtocolError) as exc:
            await connect(host, Multiaddr(addr))
        assert exc.value.code is ErrorCode.UNAVAILABLE


def test_make_host_needs_a_32_byte_seed():
    with pytest.raises(ValueError):
        make_host(b"short")


async def test_echo_baseline_round_trips_over_one_stream():
    async with running_host(make_host(seed("s"))) as server, running_host(make_host(seed("c"))) as client:
        serve_echo_baseline(server)
        await connect(client, server.get_addrs()[0])
        session = EchoBaselineSession(client, server.get_id())
        try:
            for size in (0, 100, 200_000):
                assert await session.echo(b"e" * size) == b"e" * size
        finally:
            await session.aclose()
