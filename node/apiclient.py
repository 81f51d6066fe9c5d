"""The CLI's synchronous client for a running node's control API (found through `<home>/api.json`).

Every failure is a ProtocolError carrying the server's code and message, so the CLI reports it in one sentence.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from protocol.errors import ErrorCode, ProtocolError
from protocol.paths import validate_path

API_FILE = "api.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class ApiClient:
    def __init__(self, url: str, token: str, *, timeout: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout, trust_env=False
        )

    @classmethod
    def from_home(cls, home: str | os.PathLike) -> "ApiClient | None":
        """A client for the node running on `home`, or None when none is (no api.json, dead pid, refused)."""
        try:
            info = json.loads((Path(home) / API_FILE).read_text())
            url, token, pid = info["url"], info["token"], info["pid"]
            if not (isinstance(url, str) and isinstance(token, str) and isinstance(pid, int)):
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not _pid_alive(pid):
            return None
        parts = urlsplit(url)
        try:
            socket.create_connection((parts.hostname, parts.port), timeout=5).close()
        except (OSError, ValueError):
            return None
        return cls(url, token)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "ApiClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, route: str, *, body: Any = None, params: dict | None = None) -> Any:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            resp = self._http.request(method, route, json=body, params=params)
        except httpx.HTTPError as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, f"The node at {self.url} did not answer ({exc}).") from exc
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.is_success and data is not None:
            return data
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            try:
                code = ErrorCode(err.get("code"))
            except ValueError:
                code = ErrorCode.INTERNAL
            raise ProtocolError(code, str(err.get("message") or code.value))
        raise ProtocolError(ErrorCode.INTERNAL, f"The node answered HTTP {resp.status_code} without an error body.")

    # -- node

    def status(self) -> dict:
        return self._call("GET", "/v1/status")

    # -- records (the path is checked here too, so a dot segment is never normalised away by the URL layer)

    def put(self, path: str, value: Any, if_version: int | None = None) -> int:
        body = {"value": value, "if_version": if_version}
        return self._call("PUT", f"/v1/records/{quote(validate_path(path))}", body=body)["version"]

    def get(self, path: str) -> dict:
        return self._call("GET", f"/v1/records/{quote(validate_path(path))}")

    def list(self, prefix: str = "") -> list[dict]:
        return self._call("GET", "/v1/records", params={"prefix": prefix})["records"]

    def delete(self, path: str) -> None:
        self._call("DELETE", f"/v1/records/{quote(validate_path(path))}")

    # -- consent

    def requests(self, status: str | None = None) -> list[dict]:
        return self._call("GET", "/v1/requests", params={"status": status})["requests"]

    def approve(self, request_id: str, scopes: list[dict] | None = None, exp: int | None = None) -> dict:
        return self._call(
            "POST", f"/v1/requests/{quote(request_id, safe='')}/approve", body={"scopes": scopes, "exp": exp}
        )

    def deny(self, request_id: str, reason: str = "") -> dict:
        return self._call("POST", f"/v1/requests/{quote(request_id, safe='')}/deny", body={"reason": reason})

    def grants(self) -> list[dict]:
        return self._call("GET", "/v1/grants")["grants"]

    def revoke(self, delegation: str | None = None, requester: str | None = None) -> dict:
        return self._call("POST", "/v1/revoke", body={"delegation": delegation, "requester": requester})

    # -- audit

    def audit(self, since: int = 0, limit: int | None = None) -> list[dict]:
        return self._call("GET", "/v1/audit", params={"since": since, "limit": limit})["entries"]

    def audit_verify(self) -> dict:
        return self._call("GET", "/v1/audit/verify")

    # -- network

    def peers(self) -> list[dict]:
        return self._call("GET", "/v1/peers")["peers"]

    def services(self, kind: str = "cv") -> list[dict]:
        return self._call("GET", "/v1/services", params={"kind": kind})["services"]

    def find(self, peer: str) -> dict:
        return self._call("GET", "/v1/find", params={"peer": peer})

    def share(self) -> dict:
        return self._call("GET", "/v1/share")

    # -- acting as a requester towards another node

    def remote_request(
        self, link: str, scopes: list[dict], purpose: str, description: str = "", days: int = 30,
        retention_days: int = 30,
    ) -> dict:
        body = {"link": link, "scopes": scopes, "purpose": purpose, "description": description, "days": days,
                "retention_days": retention_days}
        return self._call("POST", "/v1/remote/request", body=body)

    def remote_status(self, link: str, request_id: str) -> dict:
        return self._call("POST", "/v1/remote/status", body={"link": link, "request_id": request_id})

    def remote_invoke(self, link: str, cmd: str, args: dict) -> dict:
        return self._call("POST", "/v1/remote/invoke", body={"link": link, "cmd": cmd, "args": args})
