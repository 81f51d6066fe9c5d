"""Varint framing: minimal prefixes, early TooLarge, and decoding that does not depend on how bytes are chunked."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ErrorCode, ProtocolError
from protocol.framing import FrameDecoder, encode_frame, encode_varint


@pytest.mark.parametrize(
    "n, encoded",
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (2**63 - 1, b"\xff" * 8 + b"\x7f"),
    ],
)
def test_varint_known_values(n, encoded):
    assert encode_varint(n) == encoded


@pytest.mark.parametrize("n", [-1, 2**63])
def test_varint_out_of_range(n):
    with pytest.raises(ValueError):
        encode_varint(n)


def decode_all(data: bytes, max_size: int = 1 << 20) -> list[bytes]:
    dec = FrameDecoder(max_size)
    dec.feed(data)
    frames = []
    while (frame := dec.next_frame()) is not None:
        frames.append(frame)
    return frames


def test_round_trip_and_empty_frame():
    assert decode_all(encode_frame(b"") + encode_frame(b"abc")) == [b"", b"abc"]


def test_incomplete_frame_is_pending():
    dec = FrameDecoder()
    assert not dec.pending()
    data = encode_frame(b"hello")
    dec.feed(data[:3])
    assert dec.pending() and dec.next_frame() is None
    dec.feed(data[3:])
    assert dec.next_frame() == b"hello"
    assert not dec.pending()


def test_prefix_split_over_feeds():
    data = encode_frame(b"x" * 300)
    dec = FrameDecoder()
    dec.feed(data[:1])
    assert dec.pending() and dec.next_frame() is None
    dec.feed(data[1:])
    assert dec.next_frame() == b"x" * 300


@pytest.mark.parametrize("prefix", [b"\x80\x00", b"\x81\x80\x00", b"\xff\x00"])
def test_non_minimal_varint_is_malformed(prefix):
    dec = FrameDecoder()
    with pytest.raises(ProtocolError) as exc:
        dec.feed(prefix)
    assert exc.value.code is ErrorCode.MALFORMED


def test_ten_byte_prefix_is_malformed_without_waiting_for_the_end():
    dec = FrameDecoder()
    with pytest.raises(ProtocolError) as exc:
        dec.feed(b"\xff" * 9)  # a 10th byte could never make it valid
    assert exc.value.code is ErrorCode.MALFORMED


def test_too_large_is_refused_on_the_prefix_alone():
    dec = FrameDecoder(max_size=1000)
    with pytest.raises(ProtocolError) as exc:
        dec.feed(encode_varint(1001))
    assert exc.value.code is ErrorCode.TOO_LARGE
    # The decoder stays refused: the stream position is lost.
    with pytest.raises(ProtocolError):
        dec.feed(b"\x01a")


def test_huge_prefix_is_too_large():
    with pytest.raises(ProtocolError) as exc:
        FrameDecoder().feed(encode_varint(2**63 - 1))
    assert exc.value.code is ErrorCode.TOO_LARGE


def test_exact_max_size_is_accepted():
    assert decode_all(encode_frame(b"y" * 1000), max_size=1000) == [b"y" * 1000]


@given(
    frames=st.lists(st.binary(max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=20),
)
def test_any_chunking_gives_the_same_frames(frames, cuts):
    data = b"".join(encode_frame(f) for f in frames)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    dec = FrameDecoder()
    out = []
    for start, end in zip(points, points[1:]):
        dec.feed(data[start:end])
        while (frame := dec.next_frame()) is not None:
            out.append(frame)
    assert out == frames
    assert not dec.pending()


@given(st.lists(st.binary(max_size=64), max_size=6))
def test_random_bytes_only_raise_protocol_errors(chunks):
    dec = FrameDecoder(max_size=4096)
    try:
        for chunk in chunks:
            dec.feed(chunk)
            while dec.next_frame() is not None:
                pass
    except ProtocolError as err:
        assert err.code in (ErrorCode.MALFORMED, ErrorCode.TOO_LARGE)
