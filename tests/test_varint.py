"""The one varint rule shared by frame prefixes and CIDs: minimal, at most 9 bytes, incomplete vs invalid."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import varint


@given(st.integers(min_value=0, max_value=(1 << 63) - 1))
def test_round_trip_is_minimal(n):
    data = varint.encode(n)
    assert varint.decode(data) == (n, len(data))
    assert varint.decode(data[:-1]) is None  # every proper prefix is incomplete, never a wrong value
    assert varint.decode(b"\xff" + data, 1) == (n, len(data) + 1)


@pytest.mark.parametrize("data", [b"\x80\x00", b"\xff\x80\x00", b"\x81\x80\x80\x00"])
def test_non_minimal_is_refused(data):
    with pytest.raises(varint.VarintError, match="minimal"):
        varint.decode(data)


def test_ten_bytes_is_refused_and_out_of_range_cannot_be_encoded():
    with pytest.raises(varint.VarintError, match="longer than 9"):
        varint.decode(b"\x80" * 9 + b"\x01")
    for n in (-1, 1 << 63):
        with pytest.raises(ValueError):
            varint.encode(n)
