"""The `cv-agent` command line: the CV service's own home and identity, its running node, and its work with
people's CVs (request, inbox, fetch, render, certify, list). Failures are one sentence on stderr and exit 1.

Commands that handle held data open the agent's store directly (the running agent holds it too; SQLite WAL
allows both) and first delete whatever is past its retention period.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import click

from cv_agent.agent import READ_SCOPES, WRITE_SCOPES, certify, describe_request, fetch
from cv_agent.holdings import AgentError, Holdings
from cv_agent.render import render_resume
from node.apiclient import ApiClient
from node.cli import MydataGroup, dump_json, json_option, passphrase_option, read_passphrase
from node.config import ConfigError, load_config
from node.home import Home
from node.nodecli import announce_ready
from node.resume import export_resume
from node.state import create_node
from node.store import Store
from node.vault import DEFAULT_PROFILE, KDF_PROFILES, Vault
from protocol.errors import ProtocolError
from protocol.links import parse_link

ENV_HOME = "CV_AGENT_HOME"
DEFAULT_HOME = "~/.local/share/cv-agent"
WAIT_POLL = 2.0
FINAL = ("granted", "denied", "expired", "revoked")


class AgentGroup(MydataGroup):
    program = "cv-agent"
    user_errors = (AgentError,)


def home_option(f):
    return click.option("--home", "home_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help=f"The agent's home (default: ${ENV_HOME}, else {DEFAULT_HOME}).")(f)


def resolve_home(home_dir: Path | None) -> Home:
    return Home.resolve(home_dir or os.environ.get(ENV_HOME) or Path(DEFAULT_HOME).expanduser())


def require_home(home_dir: Path | None) -> Home:
    home = resolve_home(home_dir)
    if not home.is_initialised():
        raise AgentError(f"no cv-agent home at {home.path}; run `cv-agent init` first (or pass --home)")
    return home


def unlock(home_dir, passphrase_file):
    home = require_home(home_dir)
    return home, Vault.load(home.vault_path).unlock(read_passphrase(passphrase_file))


@contextmanager
def holdings_of(home: Home, identity) -> Iterator[Holdings]:
    """The agent's store, after the retention sweep that starts every command."""
    store = Store.open(home.db_path, identity.store_key)
    try:
        holdings = Holdings(store)
        for did in holdings.sweep():
            click.echo(f"cv-agent: deleted the copy held from {did}: its retention period ended", err=True)
        yield holdings
    finally:
        store.close()


def agent_api(home: Home) -> ApiClient:
    client = ApiClient.from_home(home.path)
    if client is None:
        raise AgentError(f"the agent is not running with the home {home.path}; start it with `cv-agent run`")
    return client


def person_did(target: str) -> str:
    return parse_link(target).did


def _when(ts: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


@click.group(cls=AgentGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """cv-agent: a CV service that asks people for consent, reads their CV, renders it, and writes back signed
    work certificates. It keeps copies only under a live grant and deletes them on revocation or when the
    retention period ends."""


@main.command()
@home_option
@passphrase_option
@json_option
@click.option("--force", is_flag=True, help="Replace an existing agent here (destroys its keys and data).")
@click.option("--kdf-profile", type=click.Choice(list(KDF_PROFILES)), default=DEFAULT_PROFILE, show_default=True)
def init(home_dir, passphrase_file, as_json, force, kdf_profile):
    """Create the agent: a new identity and store key, locked by a passphrase."""
    home = resolve_home(home_dir)
    if home.is_initialised() and not force:
        raise AgentError(f"an agent already exists at {home.path}; use --force to replace it (its data will be lost)")
    passphrase = read_passphrase(passphrase_file, confirm=True, prompt="New passphrase")
    vault = create_node(home, passphrase, profile=kdf_profile, force=force)
    info = {"home": str(home.path), "did": vault.did, "peer_id": vault.peer_id}
    if as_json:
        click.echo(dump_json(info))
    else:
        click.echo(f"Created a cv-agent in {home.path}\nDID:    {vault.did}\nPeerID: {vault.peer_id}")


@main.command()
@home_option
@json_option
def whoami(home_dir, as_json):
    """Print the agent's DID and PeerID (no passphrase needed)."""
    vault = Vault.load(require_home(home_dir).vault_path)
    if as_json:
        click.echo(dump_json({"did": vault.did, "peer_id": vault.peer_id}))
    else:
        click.echo(f"DID:    {vault.did}\nPeerID: {vault.peer_id}")


@main.command()
@home_option
@passphrase_option
@click.option("--listen", multiple=True, metavar="MULTIADDR", help="Listen address (repeatable); default from config.toml.")
@click.option("--api-port", type=click.IntRange(0, 65535), default=None, help="Control API port on 127.0.0.1 (0: any).")
@click.option("--verbose", "-v", is_flag=True, help="Also log informational messages to stderr.")
def run(home_dir, passphrase_file, listen, api_port, verbose):
    """Run the agent's node in the foreground until Ctrl-C or SIGTERM: it receives answers and revocations,
    deletes what a revocation covers, and sweeps out data past its retention period every minute."""
    import logging

    import trio

    from cv_agent.agent import run_agent
    from node.runtime import NodeBusy

    home, identity = unlock(home_dir, passphrase_file)
    try:
        config = load_config(home.path)
    except ConfigError as exc:
        raise AgentError(str(exc)) from None
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    file_log = logging.FileHandler(Path(home.path) / "agent.log")
    file_log.setLevel(logging.INFO)
    logging.getLogger().addHandler(file_log)
    logging.getLogger("mydata").setLevel(logging.INFO)

    try:
        trio.run(lambda: run_agent(home, identity, config, listen=list(listen) or None, api_port=api_port,
                                   on_ready=lambda node, url: announce_ready(identity, node, url)))
    except NodeBusy as exc:
        raise AgentError(str(exc)) from None
    except OSError as exc:
        raise AgentError(f"the agent could not start: {exc.strerror or exc}.") from None
    click.echo("node stopped")


# ---------------------------------------------------------------- consent


def _status_line(r: dict) -> str:
    granted = ", ".join(f"{s['cmd'].removeprefix('/pds/')}:{s['path']}" for s in r.get("scopes") or [])
    line = f"request {r['request']}: {r['status']}"
    if granted:
        line += f" (granted {granted})"
    if r.get("reason"):
        line += f" - {r['reason']}"
    return line


@main.command()
@home_option
@passphrase_option
@json_option
@click.argument("target", metavar="LINK|PEERID|DID")
@click.option("--purpose", required=True, help="Why the CV is needed, in words the person will read.")
@click.option("--days", type=click.IntRange(1, 3650), default=30, show_default=True, help="How long the consent lasts.")
@click.option("--retention-days", type=click.IntRange(0, 3650), default=30, show_default=True,
              help="How long the agent keeps a copy of what it reads.")
@click.option("--part", type=click.Choice(["both", "read", "write"]), default="both", show_default=True,
              help="Ask for the read part, the write part, or both.")
@click.option("--wait", is_flag=True, help="Show the status until the person answers (or --timeout passes).")
@click.option("--timeout", type=click.IntRange(1, 3600), default=300, show_default=True, help="Seconds --wait waits.")
def request(home_dir, passphrase_file, as_json, target, purpose, days, retention_days, part, wait, timeout):
    """Ask a person's node for consent: the READ part (list:cv/ and read:cv/, to read the CV) and the WRITE part
    (write:cv/certificates/, to add signed work certificates). The person may approve one part and not the
    other; a part denied can be asked for again later with --part."""
    scopes = {"both": READ_SCOPES + WRITE_SCOPES, "read": READ_SCOPES, "write": WRITE_SCOPES}[part]
    from consent.request import parse_scope_text

    wire = [{"cmd": s.cmd, "path": s.path} for s in map(parse_scope_text, scopes)]
    link = str(parse_link(target))
    home, identity = unlock(home_dir, passphrase_file)
    with holdings_of(home, identity), agent_api(home) as client:
        description = describe_request(purpose, retention_days, scopes)
        result = _send_request(client, link, wire, purpose, description, days, retention_days)
        if wait and result["status"] not in FINAL:
            result = _wait(client, link, result, timeout, live=not as_json and sys.stderr.isatty())
    if as_json:
        click.echo(dump_json(result))
    else:
        click.echo(_status_line(result))


def _send_request(client: ApiClient, link, scopes, purpose, description, days, retention_days) -> dict:
    return client.remote_request(link, scopes, purpose, description, days, retention_days)


def _wait(client: ApiClient, link: str, result: dict, timeout: int, live: bool) -> dict:
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    while result["status"] not in FINAL and time.monotonic() < deadline:
        waited = int(time.monotonic() - started)
        if live:
            click.echo(f"\r{_status_line(result)}  (waiting {waited} s)  ", err=True, nl=False)
        time.sleep(WAIT_POLL)
        result = client.remote_status(link, result["request"])
    if live:
        click.echo("", err=True)
    if result["status"] not in FINAL:
        click.echo(f"cv-agent: no answer within {timeout} s; see `cv-agent inbox` later", err=True)
    return result


@main.command()
@home_option
@passphrase_option
@json_option
def inbox(home_dir, passphrase_file, as_json):
    """Ask each person's node for the answer to every request still pending, then list all requests."""
    home, identity = unlock(home_dir, passphrase_file)
    problems = []
    with holdings_of(home, identity) as holdings:
        pending = [r for r in holdings.consents() if r["status"] in ("pending", "sending")]
        if pending:
            with agent_api(home) as client:
                for r in pending:
                    try:
                        client.remote_status(holdings.link(r["owner"]), r["request"])
                    except ProtocolError as err:
                        problems.append(f"{r['request']}: {err.message}")
        rows = []
        for r in holdings.consents():
            holdings.check_revoked(r["owner"])  # a revocation learnt by polling deletes too
            rows.append({"request": r["request"], "owner": r["owner"], "status": r["status"],
                         "purpose": r.get("purpose"), "reason": r.get("reason"), "sent_at": r.get("sent_at"),
                         "scopes": [{"cmd": d.cmd, "path": d.pol[0][2].removesuffix("*")} for d in r["parsed"]]})
    for p in problems:
        click.echo(f"cv-agent: could not ask about {p}", err=True)
    if as_json:
        click.echo(dump_json(rows))
        return
    if not rows:
        click.echo("no requests sent")
    for r in rows:
        click.echo(f"{_status_line(r)}\n  to      {r['owner']}\n  purpose {r['purpose']}\n  sent    {_when(r['sent_at'])}")


# ---------------------------------------------------------------- data


def _invoker(client: ApiClient, link: str):
    return lambda cmd, args: client.remote_invoke(link, cmd, args)


@main.command(name="fetch")
@home_option
@passphrase_option
@json_option
@click.argument("target", metavar="DID")
def fetch_cmd(home_dir, passphrase_file, as_json, target):
    """Read the person's CV under the grant held and keep a copy tied to that grant (replacing an older one)."""
    did = person_did(target)
    home, identity = unlock(home_dir, passphrase_file)
    with holdings_of(home, identity) as holdings:
        holdings.read_grant(did)  # no grant is the first thing to say, running agent or not
        with agent_api(home) as client:
            held = fetch(_invoker(client, holdings.link(did)), holdings, did)
    if as_json:
        click.echo(dump_json({"did": did} | held))
    else:
        click.echo(f"fetched {held['records']} records from {did}\n  kept until {_when(held['retention_until'])}"
                   f" (retention), under request {', '.join(held['requests'])}")


@main.command()
@home_option
@passphrase_option
@click.argument("target", metavar="DID")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the HTML résumé ('-' for standard output).")
def render(home_dir, passphrase_file, target, out):
    """Render the held copy of a person's CV as a clean, printable HTML résumé."""
    did = person_did(target)
    home, identity = unlock(home_dir, passphrase_file)
    with holdings_of(home, identity) as holdings:
        copy = holdings.copy(did)
        fetched = next((c["held"]["fetched_at"] for c in holdings.candidates() if c["did"] == did), None)
    html, warnings = render_resume(export_resume(copy), subject=did, fetched_at=_when(fetched))
    for w in warnings:
        click.echo(f"cv-agent: warning: the CV is not valid JSON Resume: {w}", err=True)
    if str(out) == "-":
        click.echo(html)
        return
    try:
        out.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise AgentError(f"cannot write {out}: {exc.strerror or exc}") from None
    click.echo(f"wrote {out}" + (f" ({len(warnings)} warning(s))" if warnings else ""))


@main.command(name="certify")
@home_option
@passphrase_option
@json_option
@click.argument("target", metavar="DID")
@click.option("--employer", required=True, help="Who employed the person.")
@click.option("--role", required=True, help="The role held.")
@click.option("--from", "start", required=True, metavar="DATE", help="Start date, e.g. 2021-03-01.")
@click.option("--to", "end", required=True, metavar="DATE", help="End date, e.g. 2024-06-30.")
def certify_cmd(home_dir, passphrase_file, as_json, target, employer, role, start, end):
    """Write a work certificate, signed by the agent's key, into the person's cv/certificates/ (needs the WRITE
    part of the consent)."""
    did = person_did(target)
    home, identity = unlock(home_dir, passphrase_file)
    with holdings_of(home, identity) as holdings, agent_api(home) as client:
        result = certify(_invoker(client, holdings.link(did)), holdings, identity.signing_key, did,
                         employer=employer, role=role, start=start, end=end)
    if as_json:
        click.echo(dump_json(result))
    else:
        click.echo(f"wrote {result['path']} (version {result['version']}) in {did}'s CV\n"
                   f"  certificate {result['certificate']}, signed by {result['issuer']}")


@main.command(name="list")
@home_option
@passphrase_option
@json_option
def list_cmd(home_dir, passphrase_file, as_json):
    """Candidates: each person asked, the status of each request and grant, and what is held or was deleted."""
    home, identity = unlock(home_dir, passphrase_file)
    with holdings_of(home, identity) as holdings:
        for person in holdings.candidates():
            holdings.check_revoked(person["did"])
        people = holdings.candidates()
    if as_json:
        click.echo(dump_json(people))
        return
    if not people:
        click.echo("no candidates")
    for p in people:
        click.echo(p["did"])
        for r in p["requests"]:
            parts = ", ".join(f"{s['cmd'].removeprefix('/pds/')}:{s['path']}"
                              + (" (revoked)" if s["revoked"] else " (expired)" if s["expired"] else "")
                              for s in r["granted"])
            click.echo(f"  request {r['request']}  [{r['status']}]" + (f"  granted {parts}" if parts else ""))
        if p.get("held"):
            h = p["held"]
            click.echo(f"  held    {h['records']} records, fetched {_when(h['fetched_at'])}, "
                       f"kept until {_when(h['retention_until'])}")
        elif p.get("deleted"):
            d = p["deleted"]
            click.echo(f"  held    nothing: deleted {_when(d['at'])} ({d['reason']})")
        else:
            click.echo("  held    nothing fetched")
