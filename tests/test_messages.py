"""Request/response payloads: round trips, every way a request or response can be broken, typed field readers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import dagcbor
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import (
    Request,
    RequestError,
    encode_request,
    error_response,
    field,
    ok_response,
    optional_field,
    optional_uint_field,
    parse_request,
    parse_response,
    uint_field,
)


def test_request_round_trip():
    payload = encode_request("read", 7, path="cv/basics", n=3)
    assert parse_request(payload) == Request("read", 7, {"path": "cv/basics", "n": 3})


def test_request_is_canonical_dagcbor():
    payload = encode_request("read", 1, path="x")
    assert dagcbor.encode(dagcbor.decode(payload)) == payload


def refused(payload: bytes) -> RequestError:
    with pytest.raises(RequestError) as exc:
        parse_request(payload)
    assert isinstance(exc.value, ProtocolError)
    return exc.value


@pytest.mark.parametrize(
    "obj",
    [
        [1, 2],
        "read",
        7,
        None,
        {"op": "read"},
        {"op": "read", "id": -1},
        {"op": "read", "id": "7"},
        {"op": "read", "id": True},
        {"op": "read", "id": 1.0},
        {"op": "read", "id": [1]},
    ],
)
def test_requests_without_a_readable_id_carry_id_zero(obj):
    err = refused(dagcbor.encode(obj))
    assert err.code is ErrorCode.MALFORMED and err.request_id == 0


@pytest.mark.parametrize("op", [None, 5, b"read", ["read"]])
def test_request_without_text_op_carries_its_id(op):
    obj = {"id": 42} if op is None else {"id": 42, "op": op}
    err = refused(dagcbor.encode(obj))
    assert err.code is ErrorCode.MALFORMED and err.request_id == 42
    assert "op" in err.message


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xa2",  # truncated map
        b"\xbf\x62id\x01\x62op\x61x\xff",  # indefinite-length map
        # keys out of DAG-CBOR order ("op" before "id" is fine length-wise, but bytewise "id" < "op")
        b"\xa2\x62op\x61x\x62id\x01",
        dagcbor.encode({"id": 1, "op": "x"}) + b"\x00",  # trailing bytes
        b"\xa2\x62id\x18\x01\x62op\x61x",  # non-minimal integer
        b"\xa2\x62id\x1b\x00\x00\x00\x00\x00\x00\x00\x01\x62op\x61x",
    ],
)
def test_non_canonical_or_broken_payloads_are_malformed(payload):
    err = refused(payload)
    assert err.code is ErrorCode.MALFORMED and err.request_id == 0


def test_oversized_payload_is_too_large():
    payload = encode_request("write", 1, value=b"x" * 2000)
    with pytest.raises(ProtocolError) as exc:
        parse_request(payload, max_size=1000)
    assert exc.value.code is ErrorCode.TOO_LARGE


@given(st.binary(max_size=200))
def test_random_payloads_only_raise_request_errors(data):
    try:
        request = parse_request(data)
    except RequestError as err:
        assert err.code in (ErrorCode.MALFORMED, ErrorCode.TOO_LARGE)
    else:
        assert isinstance(request.op, str) and request.id >= 0


def test_ok_and_error_responses_round_trip():
    ok = parse_response(ok_response(3, {"version": 2}))
    assert (ok.id, ok.ok, ok.result, ok.error) == (3, True, {"version": 2}, None)
    assert ok.raise_for_error() == {"version": 2}

    bad = parse_response(error_response(4, ProtocolError(ErrorCode.NOT_FOUND, "no such record")))
    assert (bad.id, bad.ok) == (4, False)
    with pytest.raises(ProtocolError) as exc:
        bad.raise_for_error()
    assert exc.value.code is ErrorCode.NOT_FOUND and exc.value.message == "no such record"


def test_error_response_wire_shape():
    assert dagcbor.decode(error_response(0, ProtocolError(ErrorCode.MALFORMED, "bad"))) == {
        "id": 0,
        "ok": False,
        "error": {"code": "Malformed", "message": "bad"},
    }


@pytest.mark.parametrize(
    "obj",
    [
        [],
        {"ok": True, "result": {}},
        {"id": -1, "ok": True, "result": {}},
        {"id": 1, "result": {}},
        {"id": 1, "ok": 1, "result": {}},
        {"id": 1, "ok": True},
        {"id": 1, "ok": True, "result": [1]},
        {"id": 1, "ok": False},
        {"id": 1, "ok": False, "error": "NotFound"},
        {"id": 1, "ok": False, "error": {"code": "NotFound"}},
        {"id": 1, "ok": False, "error": {"code": 5, "message": "x"}},
        {"id": 1, "ok": False, "error": {"code": "NoSuchCode", "message": "x"}},
    ],
)
def test_broken_responses_are_malformed(obj):
    with pytest.raises(ProtocolError) as exc:
        parse_response(dagcbor.encode(obj))
    assert exc.value.code is ErrorCode.MALFORMED


def test_field_readers():
    body = {"path": "cv/", "n": 3, "flag": True, "neg": -2, "blob": b"x", "items": [1], "map": {}}
    assert field(body, "path", str) == "cv/"
    assert field(body, "blob", bytes) == b"x"
    assert field(body, "items", list) == [1]
    assert field(body, "map", dict) == {}
    assert field(body, "flag", bool) is True
    assert field(body, "neg", int) == -2
    assert uint_field(body, "n") == 3
    assert optional_field(body, "missing", str) is None
    assert optional_field(body, "missing", str, "dflt") == "dflt"
    assert optional_field(body, "path", str) == "cv/"
    assert optional_uint_field(body, "missing") is None
    assert optional_uint_field(body, "n") == 3


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda b: field(b, "path", str), "field 'path' must be text"),
        (lambda b: field(b, "absent", str), "field 'absent' is required"),
        (lambda b: field(b, "flag", int), "field 'flag' must be an integer"),  # a boolean is not an integer
        (lambda b: uint_field(b, "neg"), "field 'neg' must be an unsigned integer"),
        (lambda b: uint_field(b, "text"), "field 'text' must be an integer"),
        (lambda b: optional_field(b, "nothing", bytes), "field 'nothing' must be bytes"),
        (lambda b: optional_uint_field(b, "neg"), "field 'neg' must be an unsigned integer"),
    ],
)
def test_field_readers_refuse_wrong_types(call, message):
    body = {"path": 5, "text": "5", "flag": True, "neg": -2, "nothing": None}
    with pytest.raises(ProtocolError) as exc:
        call(body)
    assert exc.value.code is ErrorCode.MALFORMED and exc.value.message == message
