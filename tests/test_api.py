"""The control API over real HTTP on 127.0.0.1: the sync client end to end, and raw requests sent broken."""

from __future__ import annotations

import functools
import json
import os
import socket
import stat
import subprocess
import sys

import httpx
import pytest
import trio

from node.api import API_FILE, MAX_BODY, STATUS_OF, serve_api
from node.apiclient import ApiClient
from protocol.cid import CID
from protocol.errors import ErrorCode, ProtocolError


class FakeNode:
    """An in-memory NodeControl: enough behaviour to exercise every route."""

    def __init__(self) -> None:
        self.records: dict[str, tuple[object, int]] = {}
        self.calls: list[tuple] = []
        self.fail_with: Exception | None = None

    def _maybe_fail(self) -> None:
        if self.fail_with is not None:
            exc, self.fail_with = self.fail_with, None
            raise exc

    async def status(self):
        self._maybe_fail()
        return {"did": "did:key:z6Mktest", "peer_id": "12D3KooWtest", "addrs": [], "peers": 0, "locked": False}

    async def put(self, path, value, if_version):
        self._maybe_fail()
        current = self.records.get(path, (None, 0))[1]
        if if_version is not None and if_version != current:
            raise ProtocolError(ErrorCode.CONFLICT, f"{path} is at version {current}, not {if_version}.")
        self.records[path] = (value, current + 1)
        return current + 1

    async def get(self, path):
        self._maybe_fail()
        if path not in self.records:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"No record at {path}.")
        value, version = self.records[path]
        return {"path": path, "value": value, "version": version}

    async def list(self, prefix):
        return [{"path": p, "version": v} for p, (_, v) in sorted(self.records.items()) if p.startswith(prefix)]

    async def delete(self, path):
        if path not in self.records:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"No record at {path}.")
        del self.records[path]

    async def requests(self, status):
        self.calls.append(("requests", status))
        return [{"request": "bafyreq", "status": status or "pending"}]

    async def approve(self, request_id, scopes, exp):
        self.calls.append(("approve", request_id, scopes, exp))
        return {"request": request_id, "status": "granted"}

    async def deny(self, request_id, reason):
        self.calls.append(("deny", request_id, reason))
        return {"request": request_id, "status": "denied", "reason": reason}

    async def grants(self):
        return [{"delegation": "bafydel", "aud": "did:key:z6Mkreq"}]

    async def revoke(self, delegation, requester):
        self.calls.append(("revoke", delegation, requester))
        return {"revoked": [delegation or "bafyall"]}

    async def audit(self, since, limit):
        self.calls.append(("audit", since, limit))
        fields = {"invocation": b"\x00\xffsig", "proof": CID.of_dagcbor(b"\xa0")}
        return [{"seq": 1, "kind": "invocation.accepted", "fields": fields}]

    async def audit_verify(self):
        return {"ok": True, "count": 1, "first_bad_seq": None, "reason": ""}

    async def peers(self):
        return [{"peer_id": "12D3KooWpeer", "addrs": ["/ip4/127.0.0.1/tcp/4001"]}]

    async def share(self):
        return {"link": "mydata://did:key:z6Mktest"}

    async def find(self, peer):
        return {"peer_id": "12D3KooWx", "did": "did:key:z6Mkx", "addrs": []}

    async def services(self, kind):
        self.calls.append(("services", kind))
        return [{"peer_id": "12D3KooWsvc", "did": "did:key:z6Mksvc", "addrs": ["/ip4/127.0.0.1/tcp/4002"]}]

    async def remote_request(self, link, scopes, purpose, description, days, retention_days=30):
        self.calls.append(("remote_request", link, scopes, purpose, description, days, retention_days))
        return {"request": "bafyreq", "status": "pending"}

    async def remote_status(self, link, request_id):
        self.calls.append(("remote_status", link, request_id))
        return {"request": request_id, "status": "granted"}

    async def remote_invoke(self, link, cmd, args):
        self.calls.append(("remote_invoke", link, cmd, args))
        return {"result": {"echo": args}}


async def in_thread(fn, *args, **kwargs):
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


@pytest.fixture
def node():
    return FakeNode()


@pytest.fixture
async def server(nursery, node, tmp_path):
    url = await nursery.start(serve_api, node, tmp_path)
    token = json.loads((tmp_path / API_FILE).read_text())["token"]
    return url, token


@pytest.fixture
async def client(server, tmp_path):
    c = await in_thread(ApiClient.from_home, tmp_path)
    assert c is not None
    yield c
    c.close()


@pytest.fixture
async def raw(server):
    url, token = server
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as h:
        yield h


def assert_error(resp, status, code):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert "Traceback" not in resp.text
    return body["error"]["message"]


# -- through the real client


async def test_records_through_the_client(client):
    assert (await in_thread(client.status))["did"] == "did:key:z6Mktest"
    assert await in_thread(client.put, "cv/basics", {"name": "Ada", "n": [1, 2.5, None, True]}) == 1
    assert await in_thread(client.put, "cv/basics", {"name": "Ada L."}, 1) == 2
    assert await in_thread(client.get, "cv/basics") == {"path": "cv/basics", "value": {"name": "Ada L."}, "version": 2}
    await in_thread(client.put, "cv/work/acme-2021", "text")
    await in_thread(client.put, "notes/x", None)
    assert [r["path"] for r in await in_thread(client.list, "cv/")] == ["cv/basics", "cv/work/acme-2021"]
    assert len(await in_thread(client.list)) == 3
    assert (await in_thread(client.get, "notes/x"))["value"] is None

    with pytest.raises(ProtocolError) as e:
        await in_thread(client.put, "cv/basics", {}, 1)
    assert e.value.code is ErrorCode.CONFLICT and "version 2" in e.value.message
    await in_thread(client.delete, "cv/basics")
    with pytest.raises(ProtocolError) as e:
        await in_thread(client.get, "cv/basics")
    assert e.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(ProtocolError) as e:
        await in_thread(client.delete, "cv/basics")
    assert e.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(ProtocolError) as e:  # refused before it reaches the URL layer
        await in_thread(client.get, "cv/../secret")
    assert e.value.code is ErrorCode.MALFORMED


async def test_consent_audit_network_and_remote_through_the_client(client, node):
    assert (await in_thread(client.requests))[0]["status"] == "pending"
    await in_thread(client.requests, "granted")
    scopes = [{"cmd": "/pds/read", "path": "cv/"}]
    assert (await in_thread(client.approve, "bafyreq", scopes, 2000000000))["status"] == "granted"
    await in_thread(client.approve, "bafyreq")
    assert (await in_thread(client.deny, "bafyreq", "not now"))["reason"] == "not now"
    assert (await in_thread(client.grants))[0]["delegation"] == "bafydel"
    assert (await in_thread(client.revoke, delegation="bafydel"))["revoked"] == ["bafydel"]
    await in_thread(client.revoke, requester="did:key:z6Mkreq")
    entries = await in_thread(client.audit, 5, 10)
    # raw invocation bytes come back in their DAG-JSON form
    assert entries[0]["fields"]["invocation"] == {"/": {"bytes": "AP9zaWc"}}
    assert entries[0]["fields"]["proof"] == {"/": str(CID.of_dagcbor(b"\xa0"))}
    assert (await in_thread(client.audit_verify))["ok"] is True
    assert (await in_thread(client.peers))[0]["peer_id"] == "12D3KooWpeer"
    assert (await in_thread(client.share))["link"].startswith("mydata://")
    link = "mydata://did:key:z6Mkother"
    assert (await in_thread(client.remote_request, link, scopes, "hiring", "a CV check", 30))["status"] == "pending"
    assert (await in_thread(client.remote_status, link, "bafyreq"))["status"] == "granted"
    assert (await in_thread(client.remote_invoke, link, "/pds/read", {"path": "cv/basics"}))["result"] == {
        "echo": {"path": "cv/basics"}
    }
    assert node.calls == [
        ("requests", None),
        ("requests", "granted"),
        ("approve", "bafyreq", scopes, 2000000000),
        ("approve", "bafyreq", None, None),
        ("deny", "bafyreq", "not now"),
        ("revoke", "bafydel", None),
        ("revoke", None, "did:key:z6Mkreq"),
        ("audit", 5, 10),
        ("remote_request", link, scopes, "hiring", "a CV check", 30, 30),
        ("remote_status", link, "bafyreq"),
        ("remote_invoke", link, "/pds/read", {"path": "cv/basics"}),
    ]


@pytest.mark.parametrize("code", list(ErrorCode))
async def test_every_error_code_reaches_the_client_unchanged(client, raw, node, code):
    node.fail_with = ProtocolError(code, f"because {code.value}")
    resp = await raw.get("/v1/status")
    assert assert_error(resp, STATUS_OF[code], code.value) == f"because {code.value}"
    node.fail_with = ProtocolError(code, f"because {code.value}")
    with pytest.raises(ProtocolError) as e:
        await in_thread(client.status)
    assert (e.value.code, e.value.message) == (code, f"because {code.value}")


async def test_an_unexpected_exception_is_a_500_without_traceback(raw, node):
    node.fail_with = RuntimeError("secret internals")
    resp = await raw.get("/v1/status")
    msg = assert_error(resp, 500, "Internal")
    assert "secret internals" not in msg
    assert (await raw.get("/v1/status")).status_code == 200  # still serving


# -- the api.json file and finding the node


async def test_api_file_is_private_and_removed_on_shutdown(node, tmp_path):
    async with trio.open_nursery() as n:
        url = await n.start(serve_api, node, tmp_path)
        f = tmp_path / API_FILE
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        info = json.loads(f.read_text())
        assert info["url"] == url and url.startswith("http://127.0.0.1:")
        assert info["pid"] == os.getpid() and len(info["token"]) >= 32
        n.cancel_scope.cancel()
    assert not f.exists()
    assert ApiClient.from_home(tmp_path) is None


async def test_a_fixed_port_is_honoured_and_bound_to_loopback_only(node, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with trio.open_nursery() as n:
        url = await n.start(functools.partial(serve_api, node, tmp_path, port=port))
        assert url == f"http://127.0.0.1:{port}"
        n.cancel_scope.cancel()


def test_from_home_is_none_when_no_node_runs(tmp_path):
    assert ApiClient.from_home(tmp_path) is None  # no file
    f = tmp_path / API_FILE
    for garbage in ["", "{", "[]", '{"url": 1, "token": "t", "pid": 1}', '{"url": "http://127.0.0.1:1"}']:
        f.write_text(garbage)
        assert ApiClient.from_home(tmp_path) is None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    f.write_text(json.dumps({"url": "http://127.0.0.1:9", "token": "t", "pid": dead.pid}))
    assert ApiClient.from_home(tmp_path) is None  # dead pid
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        f.write_text(json.dumps({"url": f"http://127.0.0.1:{port}", "token": "t", "pid": os.getpid()}))
        assert ApiClient.from_home(tmp_path) is None


async def test_a_vanished_node_is_unavailable(node, tmp_path):
    async with trio.open_nursery() as n:
        await n.start(serve_api, node, tmp_path)
        c = await in_thread(ApiClient.from_home, tmp_path)
        n.cancel_scope.cancel()
    with pytest.raises(ProtocolError) as e:
        await in_thread(c.status)
    assert e.value.code is ErrorCode.UNAVAILABLE
    c.close()


# -- raw HTTP, sent broken


async def test_missing_or_wrong_token_is_401(server):
    url, token = server
    async with httpx.AsyncClient(base_url=url) as h:
        assert_error(await h.get("/v1/status"), 401, "Unauthorized")
        assert_error(await h.get("/v1/status", headers={"Authorization": "Bearer nope"}), 401, "Unauthorized")
        assert_error(await h.get("/v1/status", headers={"Authorization": token}), 401, "Unauthorized")
        assert_error(await h.get("/v1/status", headers={"Authorization": f"Basic {token}"}), 401, "Unauthorized")
        assert_error(await h.get("/v1/nowhere"), 401, "Unauthorized")  # no route discovery without a token
        big = b"{" + b" " * (MAX_BODY + 10) + b"}"
        assert_error(await h.put("/v1/records/a", content=big), 401, "Unauthorized")  # refused before the body
        assert (await h.get("/v1/status", headers={"Authorization": f"Bearer {token}"})).status_code == 200


async def test_unknown_route_and_method(raw):
    assert_error(await raw.get("/v1/nowhere"), 404, "NotFound")
    assert_error(await raw.get("/"), 404, "NotFound")
    assert_error(await raw.post("/v1/status", json={}), 405, "UnknownOp")
    assert_error(await raw.get("/docs"), 404, "NotFound")


async def test_non_json_bodies(raw):
    assert_error(await raw.put("/v1/records/a", content=b"not json", headers={"content-type": "application/json"}), 400, "Malformed")
    assert_error(await raw.put("/v1/records/a", content=b'{"value": 1', headers={"content-type": "application/json"}), 400, "Malformed")
    assert_error(await raw.put("/v1/records/a", content=b"\xff\xfe", headers={"content-type": "application/json"}), 400, "Malformed")
    assert_error(await raw.put("/v1/records/a", content=b'{"value": 1}', headers={"content-type": "text/plain"}), 400, "Malformed")
    assert_error(await raw.put("/v1/records/a"), 400, "Malformed")  # no body at all
    deep = b'{"value": ' + b"[" * 100000 + b"]" * 100000 + b"}"
    assert_error(await raw.put("/v1/records/a", content=deep, headers={"content-type": "application/json"}), 400, "Malformed")


@pytest.mark.parametrize(
    "method, route, body",
    [
        ("PUT", "/v1/records/a", {}),  # value missing
        ("PUT", "/v1/records/a", {"value": 1, "if_version": "3"}),
        ("PUT", "/v1/records/a", {"value": 1, "if_version": True}),
        ("PUT", "/v1/records/a", {"value": 1, "if_version": 1.5}),
        ("PUT", "/v1/records/a", {"value": 1, "extra": 1}),
        ("PUT", "/v1/records/a", [1]),
        ("POST", "/v1/requests/bafyreq/approve", {"scopes": "cv/"}),
        ("POST", "/v1/requests/bafyreq/approve", {"scopes": [{"cmd": "/pds/read"}]}),
        ("POST", "/v1/requests/bafyreq/approve", {"scopes": [{"cmd": 1, "path": "cv/"}]}),
        ("POST", "/v1/requests/bafyreq/approve", {"exp": "tomorrow"}),
        ("POST", "/v1/requests/bafyreq/deny", {"reason": 5}),
        ("POST", "/v1/revoke", {}),
        ("POST", "/v1/revoke", {"delegation": ["x"]}),
        ("POST", "/v1/remote/request", {"link": "l", "scopes": [], "purpose": "p"}),  # days missing
        ("POST", "/v1/remote/request", {"link": "l", "scopes": [], "purpose": "p", "days": "30"}),
        ("POST", "/v1/remote/status", {"link": "l"}),
        ("POST", "/v1/remote/invoke", {"link": "l", "cmd": "/pds/read", "args": []}),
        ("GET", "/v1/audit?since=-1", None),
        ("GET", "/v1/audit?since=abc", None),
        ("GET", "/v1/audit?limit=0", None),
    ],
)
async def test_wrong_types_are_400(raw, node, method, route, body):
    resp = await raw.request(method, route, json=body)
    assert_error(resp, 400, "Malformed")
    assert node.calls == [] and node.records == {}


async def test_oversized_bodies_are_413(raw, node):
    big = json.dumps({"value": "x" * (MAX_BODY + 1)}).encode()
    assert_error(await raw.put("/v1/records/a", content=big, headers={"content-type": "application/json"}), 413, "TooLarge")

    async def chunks():  # no content-length: the limit holds on the streamed bytes too
        yield b'{"value": "'
        for _ in range(40):
            yield b"x" * (64 << 10)
        yield b'"}'

    resp = await raw.put("/v1/records/a", content=chunks(), headers={"content-type": "application/json"})
    assert_error(resp, 413, "TooLarge")
    assert node.records == {}
    ok = json.dumps({"value": "x" * (MAX_BODY - 100)}).encode()
    resp = await raw.put("/v1/records/a", content=ok, headers={"content-type": "application/json"})
    assert resp.status_code == 200 and resp.json()["version"] == 1


async def test_openapi_document_lists_every_route_and_each_needs_the_token(server):
    url, token = server
    async with httpx.AsyncClient(base_url=url) as h:
        doc = (await h.get("/openapi.json")).json()
        assert doc["openapi"].startswith("3.")
        expected = {
            ("get", "/v1/status"),
            ("get", "/v1/records"),
            ("get", "/v1/records/{path}"),
            ("put", "/v1/records/{path}"),
            ("delete", "/v1/records/{path}"),
            ("get", "/v1/requests"),
            ("post", "/v1/requests/{request_id}/approve"),
            ("post", "/v1/requests/{request_id}/deny"),
            ("get", "/v1/grants"),
            ("post", "/v1/revoke"),
            ("get", "/v1/services"),
            ("get", "/v1/find"),
            ("get", "/v1/audit"),
            ("get", "/v1/audit/verify"),
            ("get", "/v1/peers"),
            ("get", "/v1/share"),
            ("post", "/v1/remote/request"),
            ("post", "/v1/remote/status"),
            ("post", "/v1/remote/invoke"),
        }
        listed = {(m, p) for p, ops in doc["paths"].items() for m in ops}
        assert listed == expected
        assert any(s.get("scheme") == "bearer" for s in doc["components"]["securitySchemes"].values())
        for method, path in sorted(listed):
            resp = await h.request(method, path.replace("{path}", "cv/basics").replace("{request_id}", "bafyreq"))
            assert_error(resp, 401, "Unauthorized")


async def test_services_route_lists_providers_and_refuses_a_bad_kind(client, node):
    (svc,) = await in_thread(client.services, "cv")
    assert svc["did"] == "did:key:z6Mksvc" and ("services", "cv") in node.calls
    with pytest.raises(ProtocolError) as err:
        await in_thread(client.services, "CV/../x")
    assert err.value.code is ErrorCode.MALFORMED
