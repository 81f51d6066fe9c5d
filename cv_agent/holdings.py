"""What the agent holds about each person, in its own encrypted store, tied to the grant it was read under; the
grants it holds (read from the requester's consent records); deletion on revocation and when retention ends.

Records ("data" space; a DID has capitals, which record paths cannot, so each person is keyed by a hash of it):
  candidates/<key>      did, held {request, delegations, fetched_at, retention_until, records} or None,
                        deleted {at, reason, request, delegations} or None, history of fetches and deletions
  copies/<key>/<n>      one record read from the person's node: {"path", "value", "version"}
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable

from consent.envelope import Delegation, parse_token
from node.store import Store
from protocol.errors import ErrorCode, ProtocolError
from protocol.links import Link

DAY = 86_400
CV = "cv/"
CERTIFICATES = "cv/certificates/"


class AgentError(Exception):
    """Something the agent's operator can act on; the message is one sentence."""


def candidate_key(did: str) -> str:
    return hashlib.blake2b(did.encode(), digest_size=16).hexdigest()


def _covers(dlg: Delegation, cmd: str, path: str) -> bool:
    op, _selector, value = dlg.pol[0]
    if dlg.cmd != cmd:
        return False
    if op == "like":  # a prefix scope, "cv/*"
        return path.startswith(value[:-1])
    return path == value


def _when(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


class Holdings:
    def __init__(self, store: Store, clock: Callable[[], int] = lambda: int(time.time())) -> None:
        self.store = store
        self.clock = clock

    # ---------------------------------------------------------------- grants (the requester's consent records)

    def consents(self, did: str | None = None) -> list[dict]:
        """The consent requests sent (to `did`), newest first, with their delegations parsed."""
        out = []
        for path, _ in self.store.list("consents/", space="node"):
            record = self.store.get(path, space="node").value
            if did is not None and record["owner"] != did:
                continue
            dlgs = [parse_token(raw) for raw in record["delegations"]]
            out.append(record | {"request": path.removeprefix("consents/"), "parsed": dlgs})
        return sorted(out, key=lambda r: r.get("sent_at", 0), reverse=True)

    def link(self, did: str) -> str:
        """How to reach a person: the addresses of the newest request to them (else the DHT finds them)."""
        for record in self.consents(did):
            return str(Link(did, tuple(record.get("addrs") or ())))
        return did

    def live(self, did: str, cmd: str, path: str) -> tuple[dict, Delegation] | None:
        now = self.clock()
        for record in self.consents(did):
            for dlg in record["parsed"]:
                if str(dlg.cid) not in record["revoked"] and dlg.exp > now and _covers(dlg, cmd, path):
                    return record, dlg
        return None

    def read_grant(self, did: str) -> dict:
        """The live grant to list and read `did`'s cv/; AgentError saying why there is none."""
        listing, reading = self.live(did, "/pds/list", CV), self.live(did, "/pds/read", CV + "basics")
        if listing and reading:
            dlgs = [listing[1], reading[1]]
            return {"requests": sorted({str(listing[0]["request"]), str(reading[0]["request"])}),
                    "delegations": [str(d.cid) for d in dlgs],
                    "retention_days": min(int((d.meta or {}).get("retention_days", 0)) for d in dlgs)}
        raise AgentError(self._why_not(did, "list and read cv/", ["/pds/list", "/pds/read"], CV + "basics"))

    def write_grant(self, did: str, path: str) -> dict:
        found = self.live(did, "/pds/write", path)
        if found is None:
            raise AgentError(self._why_not(did, "write certificates into cv/certificates/", ["/pds/write"], path,
                                           hint=f"; ask for it with `cv-agent request {did} --part write`"))
        return {"request": str(found[0]["request"]), "delegation": str(found[1].cid)}

    def _why_not(self, did: str, what: str, cmds: list[str], path: str, hint: str = "") -> str:
        records = self.consents(did)
        if not records:
            return f"no consent was asked of {did}; ask first with `cv-agent request`"
        missing = [c for c in cmds if self.live(did, c, path) is None]
        # Why each missing right is missing: granted and revoked, granted and expired, or never granted.
        held = [[(r, d) for r in records for d in r["parsed"] if _covers(d, c, path)] for c in missing]
        if any(str(d.cid) in r["revoked"] for pairs in held for r, d in pairs):
            return f"{did} revoked the grant to {what}"
        if all(pairs for pairs in held):
            return f"the grant from {did} to {what} has expired; ask again with `cv-agent request`"
        statuses = {r["status"] for r in records}
        if "pending" in statuses:
            return f"{did} has not answered yet; see `cv-agent inbox`"
        if statuses == {"sending"}:
            return f"the request never reached {did}; send it again with `cv-agent request` when the node is reachable"
        if statuses == {"denied"}:
            reason = records[0].get("reason") or "no reason given"
            return f"{did} denied the request ({reason})"
        return f"{did} did not grant the right to {what}{hint}"

    # ---------------------------------------------------------------- copies

    def _candidate(self, did: str) -> dict | None:
        try:
            return self.store.get(f"candidates/{candidate_key(did)}").value
        except ProtocolError as err:
            if err.code is ErrorCode.NOT_FOUND:
                return None
            raise

    def _save(self, record: dict) -> None:
        self.store.put(f"candidates/{candidate_key(record['did'])}", record)

    def keep(self, did: str, records: list[dict], grant: dict) -> dict:
        """Replace the copy held for `did` with `records` ({path, value, version}), tied to `grant`."""
        self._drop_copies(did)
        key = candidate_key(did)
        for n, rec in enumerate(records):
            self.store.put(f"copies/{key}/{n}", {"path": rec["path"], "value": rec["value"],
                                                 "version": rec["version"]})
        now = self.clock()
        held = {"requests": grant["requests"], "delegations": grant["delegations"], "fetched_at": now,
                "retention_until": now + grant["retention_days"] * DAY, "records": len(records)}
        record = self._candidate(did) or {"did": did, "history": []}
        record = record | {"held": held, "deleted": None,
                           "history": record["history"] + [{"event": "fetched", "at": now, **held}]}
        self._save(record)
        return held

    def copy(self, did: str) -> dict[str, Any]:
        """path -> value of the copy held for `did`; AgentError if none is held or it was deleted."""
        record = self._candidate(did)
        if record is not None and record["held"] is None and record["deleted"]:
            gone = record["deleted"]
            raise AgentError(f"the copy of {did}'s CV was deleted on {_when(gone['at'])} ({gone['reason']}); "
                             "it can be read again only under a new grant")
        if record is None or record["held"] is None:
            raise AgentError(f"nothing is held from {did}; fetch it first with `cv-agent fetch {did}`")
        key = candidate_key(did)
        out = {}
        for path, _ in self.store.list(f"copies/{key}/"):
            rec = self.store.get(path).value
            out[rec["path"]] = rec["value"]
        return out

    def delete(self, did: str, reason: str) -> bool:
        """Delete every copy held for `did` and record why; False if nothing was held."""
        record = self._candidate(did)
        dropped = self._drop_copies(did)
        if record is None or record["held"] is None:
            return dropped > 0
        now = self.clock()
        gone = {"at": now, "reason": reason, "requests": record["held"]["requests"],
                "delegations": record["held"]["delegations"], "records": dropped}
        self._save(record | {"held": None, "deleted": gone,
                             "history": record["history"] + [{"event": "deleted", **gone}]})
        return True

    def _drop_copies(self, did: str) -> int:
        paths = [p for p, _ in self.store.list(f"copies/{candidate_key(did)}/")]
        for path in paths:
            self.store.delete(path)
        return len(paths)

    def on_revoked(self, did: str, delegation_cids: list[str]) -> bool:
        """A grant was revoked: delete what is held under any of those delegations."""
        record = self._candidate(did)
        if record is None or record["held"] is None:
            return False
        if not set(record["held"]["delegations"]) & set(delegation_cids):
            return False
        return self.delete(did, "consent revoked by the person")

    def check_revoked(self, did: str) -> bool:
        """Delete the copy if any delegation it was read under is now known to be revoked (however we learnt it)."""
        record = self._candidate(did)
        if record is None or record["held"] is None:
            return False
        revoked = {c for r in self.consents(did) for c in r["revoked"]}
        return self.on_revoked(did, sorted(revoked))

    def sweep(self) -> list[str]:
        """Delete every copy held past its retention period; returns the DIDs whose copies went."""
        now, gone = self.clock(), []
        for path, _ in self.store.list("candidates/"):
            record = self.store.get(path).value
            held = record["held"]
            if held is not None and held["retention_until"] <= now:
                self.delete(record["did"], f"retention period ended on {_when(held['retention_until'])}")
                gone.append(record["did"])
        return gone

    def candidates(self) -> list[dict]:
        """Everyone asked or held: DID, each request's status and scopes, and what is held or was deleted."""
        people: dict[str, dict] = {}
        for r in self.consents():
            person = people.setdefault(r["owner"], {"did": r["owner"], "requests": [], "held": None, "deleted": None})
            scopes = [{"cmd": d.cmd, "path": d.pol[0][2].removesuffix("*"), "revoked": str(d.cid) in r["revoked"],
                       "expired": d.exp <= self.clock()} for d in r["parsed"]]
            person["requests"].append({"request": r["request"], "status": r["status"], "purpose": r.get("purpose"),
                                       "reason": r.get("reason"), "granted": scopes})
        for path, _ in self.store.list("candidates/"):
            record = self.store.get(path).value
            person = people.setdefault(record["did"], {"did": record["did"], "requests": []})
            person.update(held=record["held"], deleted=record["deleted"])
        return sorted(people.values(), key=lambda p: p["did"])
