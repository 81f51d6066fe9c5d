"""A hostile-peer toolkit for the adversarial tests: raw bytes on /mydata streams, broken frames, stream and
connection floods, replayed, stolen, forged and widened capabilities, forged notifications; plus latency sampling."""

from __future__ import annotations

import hashlib
import random
import statistics
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import nacl.signing
import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID

from consent.envelope import Delegation, Invocation, sign_delegation, sign_invocation
from consent.request import ConsentRequest, Scope, sign_consent_request
from node.net import PeerSession, connect, make_host, running_host, serve
from node.requester import NOTIFY_PROTOCOL
from protocol import dagcbor
from protocol.errors import ProtocolError
from protocol.framing import FrameDecoder, encode_frame, encode_varint
from protocol.ids import did_from_public_key
from protocol.messages import encode_request

ANSWER_WAIT = 20.0  # a safety net against a hanging node, never a performance claim
DROPPED = "dropped"  # the outcome of a stream the node ended or reset without (another) answer


def seed_of(name: str) -> bytes:
    return hashlib.sha256(f"hostile:{name}".encode()).digest()


# ---------------------------------------------------------------- bytes a hostile peer writes


def garbage(n: int, rnd: random.Random) -> bytes:
    return bytes(rnd.getrandbits(8) for _ in range(n))


def oversized_prefix(length: int) -> bytes:
    """A well-formed varint announcing `length` payload bytes, with none of them following."""
    return encode_varint(length)


def non_minimal_prefix(length: int) -> bytes:
    """`length` as a varint padded with one redundant zero group (what PROTOCOL.md §3 forbids)."""
    minimal = bytearray(encode_varint(length))
    minimal[-1] |= 0x80
    return bytes(minimal) + b"\x00"


def request_frame(op: str, request_id: int, **fields) -> bytes:
    return encode_frame(encode_request(op, request_id, **fields))


def forge_signature(raw: bytes) -> bytes:
    """The same envelope with one bit of its 64-byte Ed25519 signature flipped (bytes 3..66 after the heads)."""
    out = bytearray(raw)
    out[10] ^= 0x01
    return bytes(out)


# ---------------------------------------------------------------- the hostile peer


@dataclass
class Hostile:
    """A bare libp2p host and the Ed25519 key behind its PeerID: everything a remote attacker really has."""

    name: str
    host: IHost = field(init=False)
    key: nacl.signing.SigningKey = field(init=False)

    def __post_init__(self) -> None:
        seed = seed_of(self.name)
        self.host = make_host(seed)
        self.key = nacl.signing.SigningKey(seed)

    @property
    def did(self) -> str:
        return did_from_public_key(bytes(self.key.verify_key))

    async def start(self, stack: AsyncExitStack, target_addr: str) -> "Hostile":
        await stack.enter_async_context(running_host(self.host))
        # Acknowledge notifications like any requester: an owner drops the connection of a peer it cannot notify.
        serve(self.host, NOTIFY_PROTOCOL, _acknowledge)
        await connect(self.host, target_addr)
        return self

    # -- raw streams

    async def open(self, peer: ID, protocol: str) -> INetStream:
        with trio.fail_after(ANSWER_WAIT):
            return await self.host.new_stream(peer, [TProtocol(protocol)])

    async def send_raw(self, peer: ID, protocol: str, data: bytes, *, end: bool = False) -> dict | str:
        """Write `data` on a fresh stream (optionally ending our side) and return the node's one answer or DROPPED."""
        stream = await self.open(peer, protocol)
        try:
            await stream.write(data)
            if end:
                await stream.close_write()
            return await read_answer(stream)
        finally:
            await reset_quietly(stream)

    async def call(self, peer: ID, protocol: str, op: str, **fields) -> dict:
        return await call(self.host, peer, protocol, op, **fields)

    async def code_of(self, peer: ID, protocol: str, op: str, **fields) -> str:
        return await code_of(self.host, peer, protocol, op, **fields)

    # -- floods

    async def half_frames(self, peer: ID, protocol: str, count: int, frame: bytes, keep: int) -> list[INetStream]:
        """`count` streams, each holding the first `keep` bytes of `frame` and then silence."""
        streams = []
        for _ in range(count):
            stream = await self.open(peer, protocol)
            await stream.write(frame[:keep])
            streams.append(stream)
        return streams

    async def stream_flood(self, peer: ID, protocol: str, count: int, frame: bytes) -> dict[str, int]:
        """`count` concurrent streams, each writing `frame` once; tallies the answers' codes ('ok', code, DROPPED)."""
        outcomes: dict[str, int] = {}

        async def one() -> None:
            try:
                answer = await self.send_raw(peer, protocol, frame)
                key = answer if isinstance(answer, str) else ("ok" if answer["ok"] else answer["error"]["code"])
            except (StreamError, trio.TooSlowError, Exception) as exc:  # refused or failed to open
                key = f"open failed: {type(exc).__name__}"
            outcomes[key] = outcomes.get(key, 0) + 1

        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
        return outcomes

    async def pipeline(self, peer: ID, protocol: str, frames: list[bytes]) -> dict[str, int]:
        """Write many request frames on ONE stream without waiting, and tally every answer read back."""
        stream = await self.open(peer, protocol)
        outcomes: dict[str, int] = {}
        try:
            async with trio.open_nursery() as nursery:
                async def writer() -> None:
                    for frame in frames:
                        await stream.write(frame)

                nursery.start_soon(writer)
                decoder = FrameDecoder()
                for _ in frames:
                    answer = await read_answer(stream, decoder)
                    key = answer if isinstance(answer, str) else ("ok" if answer["ok"] else answer["error"]["code"])
                    outcomes[key] = outcomes.get(key, 0) + 1
                    if answer == DROPPED:
                        nursery.cancel_scope.cancel()
                        break
        finally:
            await reset_quietly(stream)
        return outcomes

    # -- tokens

    def consent_request(self, owner_did: str, scopes: list[Scope], *, now: int, days: int = 30,
                        purpose: str = "Hostile research") -> ConsentRequest:
        return sign_consent_request(self.key, aud=owner_did, scopes=scopes, purpose=purpose, description="",
                                    retention_days=1, exp=now + days * 86400, iat=now)

    def invocation(self, owner_did: str, cmd: str, args: dict, proofs: list[Delegation], *, now: int,
                   lifetime: int = 120, **extra) -> Invocation:
        return sign_invocation(self.key, sub=owner_did, aud=owner_did, cmd=cmd, args=args,
                               prf=[p.cid for p in proofs], exp=now + lifetime, **extra)

    def redelegate(self, held: Delegation, to_did: str, *, now: int, cmd: str = "/pds", pol: list | None = None
                   ) -> Delegation:
        """Hand `held` on to `to_did`, widened (by default to every /pds command on every path)."""
        return sign_delegation(self.key, aud=to_did, sub=held.sub, cmd=cmd, pol=pol or [], exp=now + 600)


async def _acknowledge(ctx, request) -> dict:
    return {}


async def call(host: IHost, peer: ID, protocol: str, op: str, **fields) -> dict:
    """One well-framed request over a fresh session; the result, or the node's ProtocolError raised."""
    async with PeerSession(host, peer, protocol, timeout=ANSWER_WAIT) as session:
        return await session.call(op, **fields)


async def code_of(host: IHost, peer: ID, protocol: str, op: str, **fields) -> str:
    """The error code the node answers (or 'ok')."""
    try:
        await call(host, peer, protocol, op, **fields)
    except ProtocolError as err:
        return err.code.value
    return "ok"


async def connection_flood(target_addr: str, name: str, count: int,
                           observe: Callable[[], Awaitable[object]] | None = None) -> tuple[int, list[str], object]:
    """`count` hosts sharing ONE identity (one PeerID) dial the node at once and stay connected while it serves.

    Returns (connections established, reasons of the refused ones, what `observe()` returned while every host
    was still up) and leaves every host closed.
    """
    connected, refused = 0, []

    async def dial(host: IHost) -> None:
        nonlocal connected
        try:
            with trio.fail_after(ANSWER_WAIT):
                await connect(host, target_addr)
            connected += 1
        except (ProtocolError, trio.TooSlowError) as exc:
            refused.append(type(exc).__name__)

    async with AsyncExitStack() as stack:
        hosts = [await stack.enter_async_context(running_host(make_host(seed_of(name)))) for _ in range(count)]
        async with trio.open_nursery() as nursery:
            for host in hosts:
                nursery.start_soon(dial, host)
        seen = await observe() if observe is not None else None
    return connected, refused, seen


async def tcp_stall_flood(ip: str, port: int, count: int, first_bytes: bytes) -> list[trio.SocketStream]:
    """`count` raw TCP connections that write `first_bytes` (e.g. a broken handshake) and then say nothing."""
    sockets = []
    for _ in range(count):
        sock = await trio.open_tcp_stream(ip, port)
        try:
            await sock.send_all(first_bytes)
        except trio.BrokenResourceError:
            pass
        sockets.append(sock)
    return sockets


# ---------------------------------------------------------------- reading answers


async def read_answer(stream: INetStream, decoder: FrameDecoder | None = None) -> dict | str:
    """One answer frame decoded, or DROPPED if the stream ends or is reset before a whole frame."""
    decoder = decoder or FrameDecoder()
    with trio.fail_after(ANSWER_WAIT):
        while (frame := decoder.next_frame()) is None:
            try:
                decoder.feed(await stream.read(65536))
            except StreamError:
                return DROPPED
    return dagcbor.decode(frame)


async def stream_ended(stream: INetStream) -> bool:
    """True once the node has ended or reset `stream` (within ANSWER_WAIT)."""
    return await read_answer(stream) == DROPPED


async def reset_quietly(stream: INetStream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(2):
        try:
            await stream.reset()
        except Exception:
            pass


# ---------------------------------------------------------------- the honest peer's latency


@dataclass
class Latency:
    """Wall-clock seconds of each honest request; reported, never asserted against a threshold."""

    samples: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    async def run(self, request: Callable[[], Awaitable[object]], *, count: int | None = None,
                  until: trio.Event | None = None, minimum: int = 5) -> None:
        """Time `request` `count` times, or until `until` is set (and at least `minimum` times)."""
        done = 0
        while (count is not None and done < count) or (until is not None and (not until.is_set() or done < minimum)):
            start = time.perf_counter()
            try:
                await request()
            except Exception as exc:  # recorded: the test asserts there is none
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self.samples.append(time.perf_counter() - start)
            done += 1

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.samples) * 1000 if self.samples else float("nan")
