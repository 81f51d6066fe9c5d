"""The libp2p I/O shell: Noise-only hosts, a framed request/response server loop, and a client session per peer.

Everything protocol-shaped (framing, messages, error codes) lives in protocol/; this module only moves frames
over py-libp2p streams with deadlines, and works around the traps measured in shared/LIBP2P-NOTES.md.
"""

from __future__ import annotations

import logging
import math
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import trio
from libp2p import NOISE_PROTOCOL_ID, NoiseTransport, create_yamux_muxer_option, new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.rcmgr import ResourceLimits, ResourceManager, new_resource_manager
from libp2p.rcmgr.connection_limits import ConnectionLimits
from multiaddr import Multiaddr

from protocol.errors import ErrorCode, ProtocolError
from protocol.framing import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame
from protocol.ids import did_from_peer_id
from protocol.messages import (
    Request,
    RequestError,
    encode_request,
    error_response,
    ok_response,
    parse_request,
    parse_response,
)

log = logging.getLogger(__name__)

DEFAULT_LISTEN_ADDRS = ("/ip4/127.0.0.1/tcp/0",)
DEFAULT_FRAME_DEADLINE = 10.0  # PROTOCOL.md §3: the rest of a started frame must arrive within this
DEFAULT_IDLE_TIMEOUT = 60.0  # PROTOCOL.md §3: a stream idle between requests may be closed after this
DEFAULT_CALL_TIMEOUT = 30.0
READ_CHUNK = 1 << 16  # a yamux read returns at most ~64 KiB anyway
SHUTDOWN_GRACE = 5.0

# Resource manager sizing, chosen on purpose rather than inherited (py-libp2p's defaults: 256 inbound and 256
# outbound connections, 64 pending each way, 8 per peer, 10 new connections/s per peer with a burst of 50 -- the
# last is kept: it only limits one peer redialling).
# A node serves many requesters at once (the load test runs 50+ in parallel; an aggregate query fans out wider),
# each normally on ONE connection with a reused stream per protocol, so inbound gets the larger share.
MAX_CONNECTIONS = 1024  # all directions; sockets and ~95 KiB per connection end are what a small machine spends
MAX_INBOUND_CONNECTIONS = 768
MAX_OUTBOUND_CONNECTIONS = 256  # notify deliveries and DHT lookups; a node rarely dials more at once
MAX_PENDING_INBOUND = 128  # handshakes in progress: a burst of 50+ requesters connecting together must pass
MAX_PENDING_OUTBOUND = 64
MAX_CONNECTIONS_PER_PEER = 8  # one is normal; simultaneous dials can briefly make a few
# Streams beyond this wait for a slot (the swarm holds a semaphore of this size). An honest peer keeps one or two
# open per connection (a protocol stream, identify, DHT); 8 per connection on average is ample headroom.
MAX_STREAMS = 8 * MAX_CONNECTIONS
MAX_MEMORY_MB = 512  # the manager's memory accounting cap; frames themselves are bounded by max_frame


def make_resource_manager() -> ResourceManager:
    return new_resource_manager(
        limits=ResourceLimits(max_connections=MAX_CONNECTIONS, max_memory_mb=MAX_MEMORY_MB, max_streams=MAX_STREAMS),
        connection_limits=ConnectionLimits(
            max_pending_inbound=MAX_PENDING_INBOUND,
            max_pending_outbound=MAX_PENDING_OUTBOUND,
            max_established_inbound=MAX_INBOUND_CONNECTIONS,
            max_established_outbound=MAX_OUTBOUND_CONNECTIONS,
            max_established_per_peer=MAX_CONNECTIONS_PER_PEER,
            max_established_total=MAX_CONNECTIONS,
        ),
    )


def tame_libp2p_logging() -> None:
    """Keep libp2p's per-event warnings (remote misbehaviour, normal DHT stream ends) off our logs."""
    logging.getLogger("libp2p").setLevel(logging.ERROR)
    logging.getLogger("libp2p.network.auto_connector").setLevel(logging.ERROR)  # sets itself to INFO
    # A failed security upgrade is logged at ERROR for every dial attempt; the dialer gets the exception anyway.
    logging.getLogger("libp2p.network.swarm").setLevel(logging.CRITICAL)
    logging.getLogger("libp2p.discovery.rendezvous").setLevel(logging.CRITICAL)


def make_host(seed: bytes, *, resource_manager: ResourceManager | None = None) -> IHost:
    """A TCP + Noise + yamux host whose Ed25519 identity is the 32-byte `seed`.

    Noise is the ONLY security transport: py-libp2p's default set also accepts /plaintext (no authentication
    of the PeerID) and secio, which PROTOCOL.md §2 forbids.
    """
    if len(seed) != 32:
        raise ValueError("the host seed must be 32 bytes")
    tame_libp2p_logging()
    key_pair = create_new_key_pair(seed)
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    return new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt=create_yamux_muxer_option(),
        enable_tcp=True,
        resource_manager=resource_manager or make_resource_manager(),
    )


@asynccontextmanager
async def running_host(
    host: IHost, listen_addrs: Sequence[str | Multiaddr] = DEFAULT_LISTEN_ADDRS
) -> AsyncIterator[IHost]:
    """Run `host` listening on `listen_addrs`; on exit, disconnect every peer concurrently, then close it.

    Leaving host.run() alone leaks sockets and leaves remotes believing we are connected; closing peers one by
    one takes ~200 ms each (LIBP2P-NOTES).
    """
    async with host.run(listen_addrs=[Multiaddr(str(a)) for a in listen_addrs]):
        try:
            yield host
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_GRACE):
                async with trio.open_nursery() as nursery:
                    for peer_id in host.get_connected_peers():
                        nursery.start_soon(_disconnect_quietly, host, peer_id)
                await host.close()


async def _disconnect_quietly(host: IHost, peer_id: ID) -> None:
    try:
        await host.disconnect(peer_id)
    except Exception as exc:
        log.debug("disconnect from %s failed: %r", peer_id, exc)


async def connect(host: IHost, target: PeerInfo | Multiaddr | str) -> ID:
    """Dial `target` (a PeerInfo or a multiaddr ending in /p2p/<id>) unless already connected; its PeerID."""
    info = target if isinstance(target, PeerInfo) else info_from_p2p_addr(Multiaddr(str(target)))
    try:
        await host.connect(info)
    except Exception as exc:
        raise ProtocolError(ErrorCode.UNAVAILABLE, f"could not connect to {info.peer_id}: {exc}") from exc
    return info.peer_id


# ---------------------------------------------------------------- frames over a stream


class _StreamEnded(Exception):
    """The remote ended or reset the stream between frames."""


class _Idle(Exception):
    """No byte of a next frame arrived in time."""


class _FramedStream:
    """One libp2p stream read as frames, with our own read loop and size limit (never libp2p's read_exactly)."""

    def __init__(self, stream: INetStream, max_frame: int) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(max_frame)

    async def read_frame(self, first_byte_timeout: float, frame_deadline: float) -> bytes | None:
        """The next frame, or None when the stream ended cleanly between frames.

        Raises _Idle when no byte of a frame arrives within `first_byte_timeout`, trio.TooSlowError when a
        started frame is not complete within `frame_deadline`, and ProtocolError for a bad prefix, an oversized
        frame or a stream that ends inside a frame.
        """
        complete_by: float | None = None
        while (frame := self.decoder.next_frame()) is None:
            if self.decoder.pending():
                if complete_by is None:
                    complete_by = trio.current_time() + frame_deadline
                with trio.fail_at(complete_by):
                    data = await self._read_some()
            else:
                with trio.move_on_after(first_byte_timeout) as idle:
                    data = await self._read_some()
                if idle.cancelled_caught:
                    raise _Idle()
                complete_by = trio.current_time() + frame_deadline
            if data is None:
                if self.decoder.pending():
                    raise ProtocolError(ErrorCode.MALFORMED, "the stream ended inside a frame")
                return None
            self.decoder.feed(data)
        return frame

    async def _read_some(self) -> bytes | None:
        try:
            return await self.stream.read(READ_CHUNK)
        except StreamEOF:
            return None

    async def write_frame(self, payload: bytes, deadline: float) -> None:
        with trio.fail_after(deadline):
            await self.stream.write(encode_frame(payload))


async def _reset_quietly(stream: INetStream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_GRACE):
        try:
            await stream.reset()
        except Exception as exc:
            log.debug("stream reset failed: %r", exc)


# ---------------------------------------------------------------- server


@dataclass(frozen=True)
class RequestContext:
    remote_peer_id: ID  # authenticated by the Noise handshake
    remote_did: str
    protocol_id: str


Handler = Callable[[RequestContext, Request], Awaitable[dict]]


def serve(
    host: IHost,
    protocol_id: str,
    handler: Handler,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
    frame_deadline: float = DEFAULT_FRAME_DEADLINE,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
) -> None:
    """Answer `protocol_id` streams: each stream is a sequence of request frames, handled in order."""

    async def on_stream(stream: INetStream) -> None:
        await _serve_stream(stream, protocol_id, handler, max_frame, frame_deadline, idle_timeout)

    host.set_stream_handler(TProtocol(protocol_id), on_stream)


async def _serve_stream(
    stream: INetStream,
    protocol_id: str,
    handler: Handler,
    max_frame: int,
    frame_deadline: float,
    idle_timeout: float,
) -> None:
    framed = _FramedStream(stream, max_frame)
    try:
        peer_id = stream.muxed_conn.peer_id
        ctx = RequestContext(peer_id, did_from_peer_id(peer_id.to_bytes()), protocol_id)
        while True:
            try:
                payload = await framed.read_frame(idle_timeout, frame_deadline)
            except _Idle:
                payload = None
            except ProtocolError as err:
                await _refuse(framed, err, frame_deadline)
                return
            if payload is None:  # idle, or the client closed its side
                with trio.fail_after(frame_deadline):
                    await stream.close()
                return
            try:
                request = parse_request(payload, max_size=max_frame)
            except ProtocolError as err:
                await _refuse(framed, err, frame_deadline)
                return
            answer = await _answer(ctx, request, handler)
            # A deadline on the write too: a client that never reads must not hold this task.
            await framed.write_frame(answer, frame_deadline)
    except Exception as exc:  # a stalled frame or write (TooSlowError), a reset, a non-Ed25519 peer...
        log.debug("resetting a %s stream after %r", protocol_id, exc)
        await _reset_quietly(stream)


async def _answer(ctx: RequestContext, request: Request, handler: Handler) -> bytes:
    try:
        result = await handler(ctx, request)
        if not isinstance(result, dict):
            raise TypeError(f"the handler returned {type(result).__name__}, not a dict")
        return ok_response(request.id, result)
    except ProtocolError as err:
        return error_response(request.id, err)
    except Exception:
        log.exception("handler for %s op %r failed", ctx.protocol_id, request.op)
        return error_response(request.id, ProtocolError(ErrorCode.INTERNAL, "the node failed to handle the request"))


async def _refuse(framed: _FramedStream, err: ProtocolError, deadline: float) -> None:
    """Answer a framing error, then drop the stream: write, close, THEN reset, or the answer is lost."""
    request_id = err.request_id if isinstance(err, RequestError) else 0
    try:
        with trio.fail_after(deadline):
            await framed.stream.write(encode_frame(error_response(request_id, err)))
            await framed.stream.close()
    except Exception as exc:
        log.debug("could not deliver a framing error answer: %r", exc)
    await _reset_quietly(framed.stream)


# ---------------------------------------------------------------- client


class PeerSession:
    """Sequential calls to one peer's protocol over ONE lazily opened, reused stream."""

    def __init__(
        self,
        host: IHost,
        peer_id: ID,
        protocol_id: str,
        *,
        timeout: float = DEFAULT_CALL_TIMEOUT,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self.host = host
        self.peer_id = peer_id
        self.protocol_id = protocol_id
        self.timeout = timeout
        self.max_frame = max_frame
        self._framed: _FramedStream | None = None
        self._next_id = 1  # 0 is the id of answers to unreadable requests
        self._lock = trio.Lock()

    async def call(self, op: str, **fields: Any) -> dict:
        """Send one request and return its result; an error answer raises its ProtocolError."""
        async with self._lock:
            request_id = self._next_id
            self._next_id += 1
            payload = encode_request(op, request_id, **fields)
            if len(payload) > self.max_frame:
                raise ProtocolError(ErrorCode.TOO_LARGE, f"the request is {len(payload)} bytes, over {self.max_frame}")
            for attempt in range(2):
                reused = self._framed is not None
                framed = await self._stream()
                try:
                    response = parse_response(await self._exchange(framed, payload), max_size=self.max_frame)
                except _StreamEnded:
                    await self._drop()
                    # Only a reused stream may have been closed while idle; a fresh one failing is the peer's answer.
                    if reused and attempt == 0:
                        continue
                    raise ProtocolError(ErrorCode.UNAVAILABLE, f"{self.peer_id} ended the stream") from None
                except BaseException:
                    await self._drop()
                    raise
                if response.id == 0 and not response.ok:
                    await self._drop()  # an id-0 error answers a framing error: the server resets the stream
                elif response.id != request_id:
                    await self._drop()
                    raise ProtocolError(ErrorCode.MALFORMED, f"answer id {response.id} for request {request_id}")
                return response.raise_for_error()
            raise AssertionError("unreachable")

    async def _stream(self) -> _FramedStream:
        if self._framed is None:
            try:
                with trio.fail_after(self.timeout):
                    stream = await self.host.new_stream(self.peer_id, [TProtocol(self.protocol_id)])
            except Exception as exc:
                message = f"could not open {self.protocol_id} to {self.peer_id}"
                raise ProtocolError(ErrorCode.UNAVAILABLE, message) from exc
            self._framed = _FramedStream(stream, self.max_frame)
        return self._framed

    async def _exchange(self, framed: _FramedStream, payload: bytes) -> bytes:
        try:
            with trio.fail_after(self.timeout):
                await framed.stream.write(encode_frame(payload))
                answer = await framed.read_frame(math.inf, math.inf)
        except trio.TooSlowError:
            raise ProtocolError(ErrorCode.UNAVAILABLE, f"{self.peer_id} did not answer in time") from None
        except ProtocolError:
            raise
        except Exception as exc:  # StreamReset / StreamClosed / muxer errors
            raise _StreamEnded() from exc
        if answer is None:
            raise _StreamEnded()
        return answer

    async def _drop(self) -> None:
        if self._framed is not None:
            framed, self._framed = self._framed, None
            await _reset_quietly(framed.stream)

    async def aclose(self) -> None:
        if self._framed is not None:
            framed, self._framed = self._framed, None
            with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_GRACE):
                try:
                    await framed.stream.close()
                except Exception:
                    await _reset_quietly(framed.stream)

    async def __aenter__(self) -> PeerSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


# ---------------------------------------------------------------- bare baseline for benchmarks

BASELINE_PROTOCOL_ID = "/mydata/bench-echo/1.0.0"


def serve_echo_baseline(
    host: IHost, protocol_id: str = BASELINE_PROTOCOL_ID, *, max_frame: int = DEFAULT_MAX_FRAME
) -> None:
    """Echo every frame back, with the same framing as serve() but no DAG-CBOR, checks or handler: the floor
    that scripts/benchmarks/pds.py compares a real exchange against."""

    async def on_stream(stream: INetStream) -> None:
        framed = _FramedStream(stream, max_frame)
        try:
            while (frame := await framed.read_frame(DEFAULT_IDLE_TIMEOUT, DEFAULT_FRAME_DEADLINE)) is not None:
                await framed.write_frame(frame, DEFAULT_FRAME_DEADLINE)
            await stream.close()
        except Exception:
            await _reset_quietly(stream)

    host.set_stream_handler(TProtocol(protocol_id), on_stream)


class EchoBaselineSession:
    """Client of serve_echo_baseline over one reused stream: `await echo(payload)` returns the echoed frame."""

    def __init__(self, host: IHost, peer_id: ID, protocol_id: str = BASELINE_PROTOCOL_ID, *, timeout: float = 30.0):
        self.host, self.peer_id, self.protocol_id, self.timeout = host, peer_id, protocol_id, timeout
        self._framed: _FramedStream | None = None

    async def echo(self, payload: bytes) -> bytes:
        if self._framed is None:
            stream = await self.host.new_stream(self.peer_id, [TProtocol(self.protocol_id)])
            self._framed = _FramedStream(stream, DEFAULT_MAX_FRAME)
        await self._framed.write_frame(payload, self.timeout)
        answer = await self._framed.read_frame(self.timeout, self.timeout)
        if answer is None:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "the echo stream ended")
        return answer

    async def aclose(self) -> None:
        if self._framed is not None:
            framed, self._framed = self._framed, None
            await _reset_quietly(framed.stream)
