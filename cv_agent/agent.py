"""The agent's work: the consent it asks for, fetching a CV under a grant, writing a signed certificate, and the
running agent (a node whose revocation hook and retention sweep delete what it holds)."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import nacl.signing
import trio

from consent.certificate import certificate_entry, sign_certificate
from cv_agent.holdings import CERTIFICATES, CV, AgentError, Holdings
from node.resume import slugify
from protocol.errors import ErrorCode, ProtocolError

log = logging.getLogger("mydata.cv_agent")

SERVICE_KINDS = ("cv",)  # advertised as /mydata/service/cv on the DHT
SWEEP_SECONDS = 60
# The "read" part (listing is needed to find the records) and the "write" part, asked for in one request so that
# the person can approve one and not the other.
READ_SCOPES = ("list:cv/", "read:cv/")
WRITE_SCOPES = ("write:cv/certificates/",)

Invoke = Callable[[str, dict], dict]


def describe_request(purpose: str, retention_days: int, scopes: tuple[str, ...]) -> str:
    parts = []
    if any(s.startswith(("list:", "read:")) for s in scopes):
        parts.append(f"READ part (list:cv/ and read:cv/): this CV service reads your CV to {purpose.rstrip('.')}, "
                     f"keeps a copy for at most {retention_days} days, and deletes it at once if you revoke.")
    if any(s.startswith("write:") for s in scopes):
        parts.append("WRITE part (write:cv/certificates/): it may add signed work certificates to "
                     "cv/certificates/ and nowhere else.")
    if len(parts) == 2:
        parts.append("You may approve the read part and deny the write part.")
    return " ".join(parts)


def fetch(invoke: Invoke, holdings: Holdings, did: str) -> dict:
    """Read the person's whole cv/ under the live grant and keep it (replacing an earlier copy); returns what is held.

    A revocation found on the way (refused as Revoked, or pushed while reading) deletes what is held and keeps
    nothing read in this run.
    """
    grant = holdings.read_grant(did)
    records = []
    try:
        entries = invoke("/pds/list", {"path": CV})["entries"]
        for entry in entries:
            try:
                result = invoke("/pds/read", {"path": entry["path"]})
            except ProtocolError as err:
                if err.code is ErrorCode.NOT_FOUND:  # deleted between the listing and the read
                    continue
                raise
            records.append({"path": entry["path"], "value": result["value"], "version": result["version"]})
    except ProtocolError as err:
        if err.code is ErrorCode.REVOKED or holdings.check_revoked(did) or _revoked_now(holdings, grant):
            holdings.delete(did, "consent revoked by the person")
            raise AgentError(f"{did} revoked the grant while the CV was being read; nothing is kept") from None
        raise
    if _revoked_now(holdings, grant):
        holdings.delete(did, "consent revoked by the person")
        raise AgentError(f"{did} revoked the grant while the CV was being read; nothing is kept")
    held = holdings.keep(did, records, grant)
    # The revocation hook of the running agent may have fired between the check above and the write.
    if holdings.check_revoked(did):
        raise AgentError(f"{did} revoked the grant while the CV was being read; nothing is kept")
    return held


def _revoked_now(holdings: Holdings, grant: dict) -> bool:
    revoked = {c for r in holdings.consents() for c in r["revoked"]}
    return bool(revoked & set(grant["delegations"]))


def certify(invoke: Invoke, holdings: Holdings, signing_key: nacl.signing.SigningKey, did: str, *, employer: str,
            role: str, start: str, end: str, now: int | None = None) -> dict:
    """Sign a work certificate about `did` and write it into their cv/certificates/ as a JSON Resume entry."""
    cert = sign_certificate(signing_key, sub=did, employer=employer, role=role, start=start, end=end,
                            iat=int(time.time()) if now is None else now)
    slug = slugify(f"{employer} {role} {start[:4]}")[:40].rstrip("-")
    path = f"{CERTIFICATES}{slug + '-' if slug else ''}{str(cert.cid)[-8:]}"
    holdings.write_grant(did, path)
    try:
        result = invoke("/pds/write", {"path": path, "value": certificate_entry(cert)})
    except ProtocolError as err:
        if err.code is ErrorCode.REVOKED:
            holdings.check_revoked(did)
            raise AgentError(f"{did} revoked the grant to write certificates; nothing was written") from None
        raise
    return {"path": path, "version": result["version"], "certificate": str(cert.cid), "issuer": cert.iss,
            "subject": did}


async def run_agent(home, identity, config, *, listen: list[str] | None = None, api_port: int | None = None,
                    on_ready: Callable[[Any, str], None] | None = None, handle_signals: bool = True,
                    provides: tuple[str, ...] = SERVICE_KINDS, clock: Callable[[], int] = lambda: int(time.time()),
                    sweep_seconds: float = SWEEP_SECONDS) -> None:
    """The node runtime, plus: deletion of held copies when a grant is revoked, and a retention sweep."""
    from node.runtime import run_node

    held: list[Holdings] = []

    async def on_revoked(owner: str, delegations: list[str]) -> None:
        if held and held[0].on_revoked(owner, delegations):
            log.info("deleted the copy held from %s: consent revoked", owner)

    async with trio.open_nursery() as nursery:
        def ready(node, url: str) -> None:
            held.append(Holdings(node.store, clock))
            nursery.start_soon(_sweep_forever, held[0], sweep_seconds)
            if on_ready is not None:
                on_ready(node, url)

        await run_node(home, identity, config, listen=listen, api_port=api_port, on_ready=ready,
                       handle_signals=handle_signals, on_revoked=on_revoked, provides=provides)
        nursery.cancel_scope.cancel()


async def _sweep_forever(holdings: Holdings, every: float) -> None:
    while True:
        try:
            for did in holdings.sweep():
                log.info("deleted the copy held from %s: retention period ended", did)
        except ProtocolError as exc:
            log.warning("retention sweep failed: %s", exc.message)
        await trio.sleep(every)
