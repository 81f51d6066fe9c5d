"""The local control API: JSON over HTTP on 127.0.0.1, bearer-token guarded, served inside the node's trio loop.

FastAPI (on anyio, so trio-native) served by hypercorn's trio worker; `serve_api` runs it in the node's nursery.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Protocol

import trio
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from hypercorn.config import Config
from hypercorn.trio import serve
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from protocol.cid import CID
from protocol.errors import ErrorCode, ProtocolError

log = logging.getLogger(__name__)

API_FILE = "api.json"
MAX_BODY = 2 << 20  # a record value is at most 1 MiB encoded; JSON text of it may be larger
DRAIN_LIMIT = 64 << 20  # beyond this a refused body is not read; the connection is just closed

STATUS_OF = {
    ErrorCode.MALFORMED: 400,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNKNOWN_OP: 400,
    ErrorCode.UNAUTHORIZED: 403,
    ErrorCode.INVALID_CLAIM: 403,
    ErrorCode.UNAVAILABLE_PROOF: 403,
    ErrorCode.INVALID_SIGNATURE: 403,
    ErrorCode.EXPIRED: 403,
    ErrorCode.TOO_EARLY: 403,
    ErrorCode.REVOKED: 403,
    ErrorCode.INVALID_AUDIENCE: 403,
    ErrorCode.INVALID_SUBJECT: 403,
    ErrorCode.MATCH_ERROR: 400,
    ErrorCode.REPLAY: 409,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


class NodeControl(Protocol):
    """What the API asks of the running node. Errors are ProtocolError."""

    async def status(self) -> dict: ...
    async def put(self, path: str, value: Any, if_version: int | None) -> int: ...
    async def get(self, path: str) -> dict: ...
    async def list(self, prefix: str) -> list[dict]: ...
    async def delete(self, path: str) -> None: ...
    async def requests(self, status: str | None) -> list[dict]: ...
    async def approve(self, request_id: str, scopes: list[dict] | None, exp: int | None) -> dict: ...
    async def deny(self, request_id: str, reason: str) -> dict: ...
    async def grants(self) -> list[dict]: ...
    async def revoke(self, delegation: str | None, requester: str | None) -> dict: ...
    async def audit(self, since: int, limit: int | None) -> list[dict]: ...
    async def audit_verify(self) -> dict: ...
    async def peers(self) -> list[dict]: ...
    async def services(self, kind: str) -> list[dict]: ...
    async def find(self, peer: str) -> dict: ...   # a DID or PeerID -> {"did", "peer_id", "addrs"} from the DHT   # providers of /mydata/service/<kind>: peer_id, did, addrs
    async def share(self) -> dict: ...
    async def remote_request(
        self, link: str, scopes: list[dict], purpose: str, description: str, days: int, retention_days: int = 30
    ) -> dict: ...
    async def remote_status(self, link: str, request_id: str) -> dict: ...
    async def remote_invoke(self, link: str, cmd: str, args: dict) -> dict: ...


# -- JSON out: DAG-CBOR values may hold bytes and CIDs, which get their DAG-JSON forms


def to_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"/": {"bytes": base64.b64encode(bytes(obj)).decode().rstrip("=")}}
    if isinstance(obj, CID):
        return {"/": str(obj)}
    return obj


def _ok(obj: Any) -> JSONResponse:
    return JSONResponse(to_json(obj))


def _error(status: int, code: ErrorCode, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code.value, "message": message}}, status_code=status)


# -- request bodies: strict types, no unknown fields


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class Scope(_Body):
    cmd: str
    path: str


class PutBody(_Body):
    value: Any
    if_version: int | None = None


class ApproveBody(_Body):
    scopes: list[Scope] | None = None
    exp: int | None = None


class DenyBody(_Body):
    reason: str = ""


class RevokeBody(_Body):
    delegation: str | None = None
    requester: str | None = None


class RemoteRequestBody(_Body):
    link: str
    scopes: list[Scope]
    purpose: str
    description: str = ""
    days: int
    retention_days: int = 30


class RemoteStatusBody(_Body):
    link: str
    request_id: str


class RemoteInvokeBody(_Body):
    link: str
    cmd: str
    args: dict[str, Any]


def create_app(node: NodeControl, token: str) -> "TokenGuard":
    """The ASGI app: every route but /openapi.json needs `Authorization: Bearer <token>`."""
    # The guard enforces the token; this scheme only documents it in the OpenAPI document.
    bearer = HTTPBearer(auto_error=False, description="The token in the node's api.json.")
    app = FastAPI(
        title="mydata node control API",
        version="1",
        docs_url=None,  # the HTML docs pull scripts from a CDN; the JSON document is enough
        redoc_url=None,
        dependencies=[Depends(bearer)],
    )

    @app.exception_handler(ProtocolError)
    async def _protocol_error(request: Request, exc: ProtocolError) -> JSONResponse:
        return _error(STATUS_OF.get(exc.code, 500), exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        if err.get("type") == "json_invalid":
            return _error(400, ErrorCode.MALFORMED, "The request body is not valid JSON.")
        return _error(400, ErrorCode.MALFORMED, f"Bad request at {where}: {err.get('msg', 'invalid')}.")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _error(404, ErrorCode.NOT_FOUND, f"No such route: {request.method} {request.url.path}.")
        if exc.status_code == 405:
            return _error(405, ErrorCode.UNKNOWN_OP, f"{request.method} is not allowed on {request.url.path}.")
        return _error(exc.status_code, ErrorCode.MALFORMED, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("control API handler failed", exc_info=exc)
        return _error(500, ErrorCode.INTERNAL, "Internal error in the node; see its log.")

    @app.get("/v1/status", tags=["node"])
    async def status() -> JSONResponse:
        return _ok(await node.status())

    @app.get("/v1/records", tags=["records"])
    async def list_records(prefix: str = "") -> JSONResponse:
        return _ok({"records": await node.list(prefix)})

    @app.get("/v1/records/{path:path}", tags=["records"])
    async def get_record(path: str) -> JSONResponse:
        return _ok(await node.get(path))

    @app.put("/v1/records/{path:path}", tags=["records"])
    async def put_record(path: str, body: PutBody) -> JSONResponse:
        return _ok({"path": path, "version": await node.put(path, body.value, body.if_version)})

    @app.delete("/v1/records/{path:path}", tags=["records"])
    async def delete_record(path: str) -> JSONResponse:
        await node.delete(path)
        return _ok({})

    @app.get("/v1/requests", tags=["consent"])
    async def list_requests(status: str | None = None) -> JSONResponse:
        return _ok({"requests": await node.requests(status)})

    @app.post("/v1/requests/{request_id}/approve", tags=["consent"])
    async def approve(request_id: str, body: ApproveBody) -> JSONResponse:
        scopes = None if body.scopes is None else [s.model_dump() for s in body.scopes]
        return _ok(await node.approve(request_id, scopes, body.exp))

    @app.post("/v1/requests/{request_id}/deny", tags=["consent"])
    async def deny(request_id: str, body: DenyBody) -> JSONResponse:
        return _ok(await node.deny(request_id, body.reason))

    @app.get("/v1/grants", tags=["consent"])
    async def grants() -> JSONResponse:
        return _ok({"grants": await node.grants()})

    @app.post("/v1/revoke", tags=["consent"])
    async def revoke(body: RevokeBody) -> JSONResponse:
        if body.delegation is None and body.requester is None:
            raise ProtocolError(ErrorCode.MALFORMED, "Name a delegation or a requester to revoke.")
        return _ok(await node.revoke(body.delegation, body.requester))

    @app.get("/v1/audit", tags=["audit"])
    async def audit(since: int = Query(0, ge=0), limit: int | None = Query(None, ge=1)) -> JSONResponse:
        return _ok({"entries": await node.audit(since, limit)})

    @app.get("/v1/audit/verify", tags=["audit"])
    async def audit_verify() -> JSONResponse:
        return _ok(await node.audit_verify())

    @app.get("/v1/peers", tags=["network"])
    async def peers() -> JSONResponse:
        return _ok({"peers": await node.peers()})

    @app.get("/v1/services", tags=["network"])
    async def services(kind: str = Query("cv", min_length=1, max_length=64, pattern=r"^[a-z0-9._-]+$")) -> JSONResponse:
        return _ok({"services": await node.services(kind)})

    @app.get("/v1/find", tags=["network"])
    async def find(peer: str = Query(..., min_length=1, max_length=128)) -> JSONResponse:
        return _ok(await node.find(peer))

    @app.get("/v1/share", tags=["network"])
    async def share() -> JSONResponse:
        return _ok(await node.share())

    @app.post("/v1/remote/request", tags=["remote"])
    async def remote_request(body: RemoteRequestBody) -> JSONResponse:
        scopes = [s.model_dump() for s in body.scopes]
        return _ok(await node.remote_request(body.link, scopes, body.purpose, body.description, body.days,
                                             body.retention_days))

    @app.post("/v1/remote/status", tags=["remote"])
    async def remote_status(body: RemoteStatusBody) -> JSONResponse:
        return _ok(await node.remote_status(body.link, body.request_id))

    @app.post("/v1/remote/invoke", tags=["remote"])
    async def remote_invoke(body: RemoteInvokeBody) -> JSONResponse:
        return _ok(await node.remote_invoke(body.link, body.cmd, body.args))

    return TokenGuard(app, token)


class TokenGuard:
    """Outermost ASGI layer: checks the bearer token before anything reads the body, then caps the body size.

    The body is read here (at most MAX_BODY bytes, whether or not a content-length was sent) and replayed to the
    app, so an oversized body is refused with our error shape before any framework code sees it.
    """

    PUBLIC = frozenset({"/openapi.json"})

    def __init__(self, app: FastAPI, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if scope["path"] not in self.PUBLIC and not hmac.compare_digest(
            headers.get(b"authorization", b""), self._expected
        ):
            await _discard_body(receive)
            return await _send_error(send, 401, ErrorCode.UNAUTHORIZED, "A valid bearer token is required.")
        too_large = f"The request body is larger than {MAX_BODY} bytes."
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            return await _send_error(send, 400, ErrorCode.MALFORMED, "The content-length header is not a number.")
        if declared > MAX_BODY:
            await _discard_body(receive)
            return await _send_error(send, 413, ErrorCode.TOO_LARGE, too_large)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_BODY:
                if message.get("more_body", False):
                    await _discard_body(receive)
                return await _send_error(send, 413, ErrorCode.TOO_LARGE, too_large)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _discard_body(receive) -> None:
    """Read and drop a refused request's body (up to a bound), so the client is done sending and sees our answer.

    Answering while the client still writes makes the server close a socket with unread data, which resets
    the connection and loses the answer.
    """
    dropped = 0
    while dropped <= DRAIN_LIMIT:
        message = await receive()
        if message["type"] != "http.request":
            return
        dropped += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _send_error(send, status: int, code: ErrorCode, message: str) -> None:
    body = json.dumps({"error": {"code": code.value, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _write_private(path: Path, data: bytes) -> None:
    """Atomically replace `path` with a 0600 file holding `data`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


async def serve_api(
    node: NodeControl,
    home: str | os.PathLike,
    *,
    port: int = 0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control API on 127.0.0.1:`port` until cancelled.

    Once listening, writes `<home>/api.json` (0600: {"url", "token", "pid"}) and reports the URL via
    `task_status`; removes the file on the way out if it is still ours.
    """
    token = secrets.token_urlsafe(32)
    app = create_app(node, token)
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = log
    config.include_server_header = False
    api_file = Path(home) / API_FILE
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(lambda task_status: serve(app, config, task_status=task_status))
        url = binds[0]
        contents = json.dumps({"url": url, "token": token, "pid": os.getpid()}).encode()
        try:
            _write_private(api_file, contents)
            task_status.started(url)
            await trio.sleep_forever()
        finally:
            try:
                if api_file.read_bytes() == contents:
                    api_file.unlink()
            except OSError:
                pass
            nursery.cancel_scope.cancel()
