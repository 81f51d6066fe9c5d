"""`mydata token`: inspect a signed token and check an invocation chain offline, from files or stdin.

Tokens are read as raw envelope bytes or as base64 text of them (standard or URL-safe, padding optional).
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
import time
from typing import Any

import click

from consent.envelope import Delegation, Invocation, check_signature, parse_token
from consent.request import CONSENT_REQUEST_TAG, read_consent_request
from consent.validate import validate_invocation
from protocol import dagcbor
from protocol.cid import CID
from protocol.errors import ProtocolError


class _Unreadable(click.ClickException):
    """A bad input file: one sentence on stderr, exit 1, no traceback."""

    exit_code = 1

    def show(self, file=None) -> None:
        click.echo(f"mydata token: {self.message}", err=True)


def _read(source: str) -> bytes:
    try:
        if source == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(source, "rb") as f:
                data = f.read()
    except OSError as e:
        raise _Unreadable(f"cannot read {source}: {e.strerror or e}.") from None
    return _unwrap(data, source)


def _unwrap(data: bytes, source: str) -> bytes:
    # An envelope starts with 0x82 (a CBOR array of two), never ASCII, so ASCII input can only be base64 text.
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return data
    text = "".join(text.split())
    if not text:
        raise _Unreadable(f"{'stdin' if source == '-' else source} is empty.")
    try:
        return base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _Unreadable(f"{source} is neither a token's bytes nor base64 text of them.") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, CID):
        return str(value)
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _describe(raw: bytes, source: str) -> dict:
    try:
        envelope = dagcbor.decode(raw)
        tag = next((k for k in envelope[1] if k != "h"), None) if isinstance(envelope, list) and len(envelope) == 2 \
            and isinstance(envelope[1], dict) else None
        token = read_consent_request(raw) if tag == CONSENT_REQUEST_TAG else parse_token(raw)
    except ProtocolError as e:
        raise _Unreadable(f"{source} is not a valid token ({e.code.value}: {e.message})") from None
    kind = token.kind if isinstance(token, (Delegation, Invocation)) else "consent-request"
    out = {"kind": kind, "cid": str(token.cid), "tag": tag, "signature_valid": True}
    try:
        check_signature(token.iss, token.sig_payload_bytes, token.signature)
    except ProtocolError as e:
        out["signature_valid"] = False
        out["signature_error"] = e.message
    out["payload"] = _jsonable(envelope[1][tag])
    return out


@click.group("token")
def token() -> None:
    """Inspect UCAN tokens and check invocation chains offline."""


@token.command("inspect")
@click.argument("file", default="-")
def inspect_cmd(file: str) -> None:
    """Print a token's kind, CID, payload and whether its signature holds, as JSON (FILE or - for stdin)."""
    click.echo(json.dumps(_describe(_read(file), file), indent=2, sort_keys=True))


@token.command("check")
@click.option("--at", "at", type=int, default=None, metavar="UNIX_SECONDS",
              help="validate as of this moment (default: now)")
@click.argument("invocation")
@click.argument("proofs", nargs=-1)
def check_cmd(at: int | None, invocation: str, proofs: tuple[str, ...]) -> None:
    """Validate INVOCATION with its PROOF delegations; exit 0 when valid, else print the error name and exit 1."""
    raws = [_read(invocation)] + [_read(p) for p in proofs]
    now = int(time.time()) if at is None else at
    try:
        inv = parse_token(raws[0])
        if not isinstance(inv, Invocation):
            raise _Unreadable(f"{invocation} is a delegation, not an invocation.")
        chain = validate_invocation(inv, [parse_token(r) for r in raws[1:]], now=now)
    except ProtocolError as e:
        click.echo(e.code.value)
        click.echo(e.message, err=True)
        sys.exit(1)
    click.echo(f"valid: {inv.cmd} on {chain.subject} by {inv.iss} through {len(chain.delegations)} delegation(s)")
