"""Request and response payloads of every /mydata/... protocol (PROTOCOL.md §3), plus typed field readers.

Payloads here are frame contents (no length prefix); their encoding is canonical DAG-CBOR.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Any, TypeVar

from protocol import dagcbor
from protocol.errors import ErrorCode, ProtocolError

MAX_UINT = (1 << 64) - 1
T = TypeVar("T")


def _is_uint(value: Any) -> bool:
    # bool is an int subclass in Python, but CBOR true/false are not integers.
    return type(value) is int and 0 <= value <= MAX_UINT


class RequestError(ProtocolError):
    """A request that could not be read as one; `request_id` is its id when that was readable, else 0."""

    def __init__(self, code: ErrorCode | str, message: str, request_id: int = 0) -> None:
        super().__init__(code, message)
        self.request_id = request_id


@dataclass(frozen=True)
class Request:
    op: str
    id: int
    body: dict = dc_field(default_factory=dict)  # every field of the request but `op` and `id`


@dataclass(frozen=True)
class Response:
    id: int
    ok: bool
    result: dict | None = None
    error: ProtocolError | None = None

    def raise_for_error(self) -> dict:
        """The result of an ok answer; the carried ProtocolError otherwise."""
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def parse_request(payload: bytes, *, max_size: int = dagcbor.DEFAULT_MAX_SIZE) -> Request:
    try:
        obj = dagcbor.decode(payload, max_size=max_size)
    except ProtocolError as err:
        raise RequestError(err.code, err.message) from None
    if not isinstance(obj, dict):
        raise RequestError(ErrorCode.MALFORMED, "a request must be one DAG-CBOR map")
    request_id = obj.get("id")
    if not _is_uint(request_id):
        raise RequestError(ErrorCode.MALFORMED, "field 'id' must be an unsigned integer")
    op = obj.get("op")
    if not isinstance(op, str):
        raise RequestError(ErrorCode.MALFORMED, "field 'op' must be text", request_id)
    body = {k: v for k, v in obj.items() if k not in ("op", "id")}
    return Request(op, request_id, body)


def encode_request(op: str, id: int, **fields: Any) -> bytes:
    return dagcbor.encode({"op": op, "id": id, **fields})


def ok_response(id: int, result: dict) -> bytes:
    return dagcbor.encode({"id": id, "ok": True, "result": result})


def error_response(id: int, err: ProtocolError) -> bytes:
    return dagcbor.encode({"id": id, "ok": False, "error": err.to_wire()})


def parse_response(payload: bytes, *, max_size: int = dagcbor.DEFAULT_MAX_SIZE) -> Response:
    """A response payload; a payload that is not one raises ProtocolError(MALFORMED or TOO_LARGE)."""
    obj = dagcbor.decode(payload, max_size=max_size)
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.MALFORMED, "a response must be one DAG-CBOR map")
    response_id = obj.get("id")
    if not _is_uint(response_id):
        raise ProtocolError(ErrorCode.MALFORMED, "response field 'id' must be an unsigned integer")
    ok = obj.get("ok")
    if ok is True:
        result = obj.get("result")
        if not isinstance(result, dict):
            raise ProtocolError(ErrorCode.MALFORMED, "response field 'result' must be a map")
        return Response(response_id, True, result=result)
    if ok is False:
        return Response(response_id, False, error=_parse_error(obj.get("error")))
    raise ProtocolError(ErrorCode.MALFORMED, "response field 'ok' must be a boolean")


def _parse_error(error: Any) -> ProtocolError:
    if not isinstance(error, dict):
        raise ProtocolError(ErrorCode.MALFORMED, "response field 'error' must be a map")
    code, message = error.get("code"), error.get("message")
    if not isinstance(code, str) or not isinstance(message, str):
        raise ProtocolError(ErrorCode.MALFORMED, "an error answer needs text 'code' and 'message'")
    try:
        return ProtocolError(ErrorCode(code), message)
    except ValueError:
        raise ProtocolError(ErrorCode.MALFORMED, f"unknown error code {code!r}") from None


_TYPE_NAMES = {str: "text", bytes: "bytes", bool: "a boolean", int: "an integer", list: "a list", dict: "a map"}


def _check_type(name: str, value: Any, typ: type[T]) -> T:
    ok = type(value) is int if typ is int else isinstance(value, typ)
    if not ok:
        raise ProtocolError(ErrorCode.MALFORMED, f"field '{name}' must be {_TYPE_NAMES.get(typ, typ.__name__)}")
    return value


def field(body: dict, name: str, typ: type[T]) -> T:
    """The required field `name` of `body`, of type `typ` (int excludes booleans)."""
    if name not in body:
        raise ProtocolError(ErrorCode.MALFORMED, f"field '{name}' is required")
    return _check_type(name, body[name], typ)


def optional_field(body: dict, name: str, typ: type[T], default: T | None = None) -> T | None:
    if name not in body:
        return default
    return _check_type(name, body[name], typ)


def uint_field(body: dict, name: str) -> int:
    value = field(body, name, int)
    if not _is_uint(value):
        raise ProtocolError(ErrorCode.MALFORMED, f"field '{name}' must be an unsigned integer")
    return value


def optional_uint_field(body: dict, name: str, default: int | None = None) -> int | None:
    if name not in body:
        return default
    return uint_field(body, name)
