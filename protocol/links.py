"""`mydata://` links (PROTOCOL.md §2): a person's DID and, optionally, multiaddrs where their node listens.

`mydata://did:key:z6Mk...?addr=/ip4/127.0.0.1/tcp/4001&addr=...`. A bare DID or a PeerID text is accepted
wherever a link is, with no addresses.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlsplit

from protocol.errors import ErrorCode, ProtocolError
from protocol.ids import did_from_peer_id, is_did, peer_id_from_did

SCHEME = "mydata://"
MAX_LINK_CHARS = 4096
MAX_ADDRS = 16


@dataclass(frozen=True)
class Link:
    did: str
    addrs: tuple[str, ...] = ()

    @property
    def peer_id(self) -> str:
        return peer_id_from_did(self.did)

    def __str__(self) -> str:
        query = "&".join(f"addr={quote(a, safe='/:.')}" for a in self.addrs)
        return f"{SCHEME}{self.did}" + (f"?{query}" if query else "")


def _bad(text: str, why: str) -> ProtocolError:
    shown = text if len(text) <= 80 else text[:77] + "..."
    return ProtocolError(ErrorCode.MALFORMED, f"'{shown}' is not a mydata link: {why}")


def parse_link(text: str) -> Link:
    """A link, a did:key DID, or a PeerID -> Link. Addresses must be /ip4, /ip6 or /dns multiaddrs."""
    if not isinstance(text, str) or not text.strip():
        raise _bad(str(text), "it is empty")
    text = text.strip()
    if len(text) > MAX_LINK_CHARS:
        raise _bad(text, f"it is longer than {MAX_LINK_CHARS} characters")
    if not text.startswith(SCHEME):
        if is_did(text):
            return Link(text)
        try:
            return Link(did_from_peer_id(text))
        except ProtocolError:
            raise _bad(text, "expected mydata://<did>?addr=<multiaddr>, a did:key DID, or a PeerID") from None
    parts = urlsplit(text)
    did = text[len(SCHEME):].split("?", 1)[0]
    if not is_did(did):
        raise _bad(text, "it does not carry a did:key DID")
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    unknown = set(query) - {"addr"}
    if unknown:
        raise _bad(text, f"unknown parameter '{sorted(unknown)[0]}'")
    addrs = tuple(query.get("addr", []))
    if len(addrs) > MAX_ADDRS:
        raise _bad(text, f"more than {MAX_ADDRS} addresses")
    for addr in addrs:
        if not addr.startswith(("/ip4/", "/ip6/", "/dns/", "/dns4/", "/dns6/")):
            raise _bad(text, f"address '{addr}' is not a multiaddr")
    return Link(did, addrs)
