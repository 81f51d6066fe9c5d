"""The CLI's node commands: `run`, `config`, `status`, the owner's consent commands, `audit`, `peers`, `share`,
and the requester's `remote ...` commands.

Owner commands go through the running node's control API when it runs, else straight to the unlocked store
(an approval made offline is delivered by the node's outbox once it runs). `remote` needs the running node,
whose host receives the owner's notifications.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import click
import trio

from consent.envelope import parse_token
from consent.request import parse_scope_text

from node.apiclient import ApiClient
from node.cli import UserError, dump_json, home_option, json_option, main, passphrase_option, read_json, unlock
from node.config import ConfigError, load_config
from node.home import Home
from node.owner import Owner
from node.vault import Vault
from node.state import open_state
from protocol.errors import ProtocolError
from protocol.links import Link

LOG_FILE = "node.log"


def to_json(obj: Any) -> Any:
    """The API's JSON shapes for offline answers: CIDs as text, bytes as DAG-JSON bytes."""
    from node.api import to_json as api_to_json

    return api_to_json(obj)


# ---------------------------------------------------------------- reaching the node


class OfflineControl:
    """The owner's commands over the unlocked store when no node runs; answers shaped like the API's."""

    def __init__(self, home: Home, identity) -> None:
        self.store, self.audit_log = open_state(home, identity)
        self.owner = Owner(signing_key=identity.signing_key, store=self.store, audit=self.audit_log,
                           config=load_config(home.path))

    def close(self) -> None:
        self.audit_log.close()
        self.store.close()

    def requests(self, status=None):
        return to_json(self.owner.list_requests(status))

    def approve(self, request_id, scopes=None, exp=None):
        r = self.owner.approve(request_id, scopes, exp)
        return to_json({"request": r["request"], "status": r["status"],
                        "delegations": [parse_token(d).cid for d in r["delegations"]]})

    def deny(self, request_id, reason=""):
        return to_json(self.owner.deny(request_id, reason or "declined by the owner"))

    def grants(self):
        return to_json(self.owner.list_grants())

    def revoke(self, delegation=None, requester=None):
        return to_json(self.owner.revoke(delegation, requester))

    def audit(self, since=0, limit=None):
        return to_json([{"seq": e.seq, "at": e.at, "kind": e.kind, "fields": e.fields, "hash": e.entry_hash.hex()}
                        for e in self.audit_log.entries(since_seq=since, limit=limit)])

    def audit_verify(self):
        r = self.audit_log.verify()
        return {"ok": r.ok, "count": r.count, "first_bad_seq": r.first_bad_seq, "reason": r.reason}


@contextmanager
def owner_control(home_dir, passphrase_file) -> Iterator[Any]:
    home = Home.resolve(home_dir).require()
    client = ApiClient.from_home(home.path)
    if client is not None:
        with client:
            yield client
        return
    _, _, identity = unlock(home_dir, passphrase_file)
    control = OfflineControl(home, identity)
    try:
        yield control
    finally:
        control.close()


@contextmanager
def running_node(home_dir) -> Iterator[ApiClient]:
    home = Home.resolve(home_dir).require()
    client = ApiClient.from_home(home.path)
    if client is None:
        raise UserError(f"no node is running with the home {home.path}; start it with `mydata run` first.")
    with client:
        yield client


def _when(ts: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def _scopes_text(scopes: list[dict]) -> str:
    return ", ".join(f"{s['cmd'].removeprefix('/pds/')}:{s['path']}" for s in scopes)


def _emit(as_json: bool, data: Any, human) -> None:
    if as_json:
        click.echo(dump_json(data))
    else:
        human(data)


# ---------------------------------------------------------------- run / config / status


def _setup_logging(home: Home, verbose: bool) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setLevel(logging.DEBUG if verbose else logging.WARNING)
    to_stderr.setFormatter(fmt)
    to_file = logging.FileHandler(Path(home.path) / LOG_FILE)
    to_file.setFormatter(fmt)
    root.addHandler(to_stderr)
    root.addHandler(to_file)
    logging.getLogger("mydata").setLevel(logging.INFO)


@main.command()
@home_option
@passphrase_option
@click.option("--listen", "listen", multiple=True, metavar="MULTIADDR",
              help="Listen address (repeatable); default from config.toml, e.g. /ip4/127.0.0.1/tcp/0.")
@click.option("--api-port", type=click.IntRange(0, 65535), default=None, help="Control API port on 127.0.0.1 (0: any).")
@click.option("--verbose", "-v", is_flag=True, help="Also log informational messages to stderr.")
@click.option("--bootstrap-only", is_flag=True,
              help="Run only a DHT seed node for a network (no vault, no store); its key lives in the home.")
def run(home_dir, passphrase_file, listen, api_port, verbose, bootstrap_only):
    """Unlock the vault and run the node in the foreground until Ctrl-C or SIGTERM."""
    # Imported here: libp2p and the HTTP server load slowly, and only `run` needs them.
    from node.runtime import NodeBusy, run_node

    if bootstrap_only:
        _run_bootstrap(home_dir, list(listen), verbose)
        return

    home, _, identity = unlock(home_dir, passphrase_file)
    try:
        config = load_config(home.path)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    _setup_logging(home, verbose)

    try:
        trio.run(lambda: run_node(home, identity, config, listen=list(listen) or None, api_port=api_port,
                                  on_ready=lambda node, url: announce_ready(identity, node, url)))
    except NodeBusy as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"the node could not start: {exc.strerror or exc}.") from None
    click.echo("node stopped")


def announce_ready(identity, node, url: str) -> None:
    """The lines a running node prints once it serves; scripts and tests read them (keys before the colon)."""
    link = Link(identity.did, tuple(node.listen_addrs()))
    click.echo(f"node running\n  did:     {identity.did}\n  peer id: {identity.peer_id}")
    for addr in node.listen_addrs():
        click.echo(f"  listen:  {addr}/p2p/{identity.peer_id}")
    click.echo(f"  api:     {url}\n  link:    {link}\nPress Ctrl-C to stop.")
    sys.stdout.flush()


BOOTSTRAP_KEY = "bootstrap.key"


def _run_bootstrap(home_dir, listen: list[str], verbose: bool) -> None:
    from node.discovery import run_bootstrap_node
    from node.home import write_private_atomically
    from node.runtime import NodeBusy, cancel_on_signal, run_lock

    home = Home.resolve(home_dir)
    home.create()
    key_file = Path(home.path) / BOOTSTRAP_KEY
    if not key_file.exists():
        write_private_atomically(key_file, os.urandom(32))
    seed = key_file.read_bytes()
    if len(seed) != 32:
        raise UserError(f"{key_file} is damaged (not 32 bytes); delete it to make a new seed identity.")
    try:
        config = load_config(home.path)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    _setup_logging(home, verbose)

    def ready(host) -> None:
        peer = host.get_id().to_base58()
        click.echo(f"bootstrap node running\n  peer id: {peer}")
        for addr in host.get_addrs():
            click.echo(f"  listen:  {str(addr).split('/p2p/')[0]}/p2p/{peer}")
        click.echo("Press Ctrl-C to stop.")
        sys.stdout.flush()

    async def main_task() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_on_signal, nursery.cancel_scope)
            await run_bootstrap_node(seed, listen or config.listen, bootstrap=config.bootstrap, on_ready=ready)

    try:
        with run_lock(home):
            trio.run(main_task)
    except NodeBusy as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"the bootstrap node could not start: {exc.strerror or exc}.") from None
    click.echo("node stopped")


@main.command()
@home_option
@json_option
@click.argument("kind", default="cv")
def services(home_dir, as_json, kind):
    """List the services of a kind (default: cv) that advertise themselves on the network."""
    with running_node(home_dir) as client:
        items = client.services(kind)

    def human(rows):
        if not rows:
            click.echo(f"no {kind} services found on the network")
        for r in rows:
            click.echo(f"{r['did']}\n  peer id {r['peer_id']}\n  addrs   {' '.join(r['addrs']) or '-'}")

    _emit(as_json, items, human)


@main.command()
@home_option
@json_option
@click.argument("peer", metavar="DID|PEERID")
def find(home_dir, as_json, peer):
    """Find where a node is now, by its DID or PeerID alone (asks the network's DHT)."""
    with running_node(home_dir) as client:
        info = client.find(peer)

    def human(r):
        click.echo(f"{r['did']}\n  peer id {r['peer_id']}")
        for a in r["addrs"]:
            click.echo(f"  addr    {a}")
        click.echo(f"  link    mydata://{r['did']}?" + "&".join(f"addr={a}" for a in r["addrs"]))

    _emit(as_json, info, human)


@main.command()
@home_option
@json_option
def config(home_dir, as_json):
    """Show the effective configuration (config.toml in the home)."""
    home = Home.resolve(home_dir).require()
    try:
        cfg = load_config(home.path)
    except ConfigError as exc:
        raise UserError(str(exc)) from None

    def human(c):
        click.echo(f"# {Path(home.path) / 'config.toml'}")
        for key, value in c.items():
            click.echo(f"{key} = {json.dumps(value)}")

    _emit(as_json, cfg.to_json(), human)


@main.command()
@home_option
@json_option
def status(home_dir, as_json):
    """Show whether the node runs, its identity, addresses, peers, pending requests and grants."""
    with running_node(home_dir) as client:
        info = client.status()

    def human(s):
        click.echo(f"running   yes\ndid       {s['did']}\npeer id   {s['peer_id']}")
        for a in s["addrs"]:
            click.echo(f"listen    {a}")
        click.echo(f"peers     {s['peers']}\nrecords   {s['records']}\npending   {s['pending_requests']} "
                   f"consent request(s)\ngrants    {s['active_grants']} active\noutbox    {s['outbox']} "
                   "notification(s) waiting")

    _emit(as_json, info, human)


# ---------------------------------------------------------------- the owner's consent commands


@main.command()
@home_option
@passphrase_option
@json_option
@click.option("--status", "status_filter", type=click.Choice(["pending", "granted", "denied", "expired", "revoked", "all"]),
              default="pending", show_default=True)
def requests(home_dir, passphrase_file, as_json, status_filter):
    """List consent requests (pending ones by default): who asks, for what, why, for how long."""
    with owner_control(home_dir, passphrase_file) as control:
        items = control.requests(None if status_filter == "all" else status_filter)

    def human(rows):
        if not rows:
            click.echo(f"no {'' if status_filter == 'all' else status_filter + ' '}consent requests")
        for r in rows:
            click.echo(f"{r['id']}  [{r['status']}]\n  from      {r['requester']}\n  scopes    {_scopes_text(r['scopes'])}"
                       f"\n  purpose   {r['purpose']}\n  retention {r['retention_days']} days\n  until     "
                       f"{_when(r['exp'])}  (answer by {_when(r['answer_by'])})")
            if r.get("description"):
                click.echo(f"  about     {r['description']}")

    _emit(as_json, items, human)


@main.command()
@home_option
@passphrase_option
@json_option
@click.argument("request_id", metavar="REQUEST")
@click.option("--scope", "scopes", multiple=True, metavar="VERB:PATH",
              help="Approve only this scope (repeatable), e.g. read:cv/. Default: every requested scope.")
@click.option("--days", type=click.IntRange(min=1), default=None, help="End the grant after this many days (shorter only).")
def approve(home_dir, passphrase_file, as_json, request_id, scopes, days):
    """Approve a consent request, wholly or for some scopes."""
    chosen = None
    if scopes:
        chosen = []
        for text in scopes:
            try:
                s = parse_scope_text(text)
            except ProtocolError as exc:
                raise UserError(exc.message) from None
            chosen.append({"cmd": s.cmd, "path": s.path})
    exp = int(time.time()) + days * 86400 if days else None
    with owner_control(home_dir, passphrase_file) as control:
        result = control.approve(request_id, chosen, exp)
    _emit(as_json, result, lambda r: click.echo(
        f"granted {r['request']}: {len(r['delegations'])} delegation(s)\n" + "\n".join(f"  {d}" for d in r["delegations"])))


@main.command()
@home_option
@passphrase_option
@json_option
@click.argument("request_id", metavar="REQUEST")
@click.option("--reason", default="", help="Told to the requester.")
def deny(home_dir, passphrase_file, as_json, request_id, reason):
    """Deny a consent request."""
    with owner_control(home_dir, passphrase_file) as control:
        result = control.deny(request_id, reason)
    _emit(as_json, result, lambda r: click.echo(f"denied {r['request']}"))


@main.command()
@home_option
@passphrase_option
@json_option
def grants(home_dir, passphrase_file, as_json):
    """List the delegations this node issued: to whom, for what, and whether they still hold."""
    with owner_control(home_dir, passphrase_file) as control:
        items = control.grants()

    def human(rows):
        if not rows:
            click.echo("no grants")
        for g in rows:
            click.echo(f"{g['cid']}  [{g['status']}]\n  to      {g['requester']}\n  scope   "
                       f"{_scopes_text([g])}\n  purpose {g['purpose']}\n  until   {_when(g['exp'])}")

    _emit(as_json, items, human)


@main.command()
@home_option
@passphrase_option
@json_option
@click.argument("delegation", required=False, metavar="[CID]")
@click.option("--requester", default=None, metavar="DID", help="Revoke every live grant held by this requester.")
def revoke(home_dir, passphrase_file, as_json, delegation, requester):
    """Revoke a delegation (by CID) or everything a requester holds. Effective for the very next request."""
    if (delegation is None) == (requester is None):
        raise click.UsageError("name one delegation CID, or --requester DID")
    with owner_control(home_dir, passphrase_file) as control:
        result = control.revoke(delegation, requester)
    _emit(as_json, result, lambda r: click.echo("revoked:\n" + "\n".join(f"  {c}" for c in r["revoked"])))


@main.command()
@home_option
@passphrase_option
@json_option
@click.option("--verify", "verify_only", is_flag=True, help="Check the hash chain; exit 1 if anything was altered.")
@click.option("--since", type=click.IntRange(min=0), default=0, help="Show entries after this sequence number.")
@click.option("--limit", type=click.IntRange(min=1), default=None)
def audit(home_dir, passphrase_file, as_json, verify_only, since, limit):
    """Show the audit log: every consent event and every access, accepted or refused."""
    with owner_control(home_dir, passphrase_file) as control:
        if verify_only:
            report = control.audit_verify()
            _emit(as_json, report, lambda r: click.echo(
                f"audit log intact: {r['count']} entries" if r["ok"]
                else f"audit log ALTERED at entry {r['first_bad_seq']}: {r['reason']}"))
            if not report["ok"]:
                raise SystemExit(1)
            return
        entries = control.audit(since, limit)

    def human(rows):
        for e in rows:
            f = e["fields"]
            detail = " ".join(f"{k}={f[k]}" for k in ("requester", "cmd", "path", "code", "request", "delegation",
                                                     "reason", "version") if f.get(k) is not None)
            click.echo(f"{e['seq']:>6}  {_when(e['at'])}  {e['kind']:<20} {detail}")

    _emit(as_json, entries, human)


@main.command()
@home_option
@json_option
def peers(home_dir, as_json):
    """List the peers the running node is connected to."""
    with running_node(home_dir) as client:
        items = client.peers()
    _emit(as_json, items, lambda rows: [click.echo(f"{p['peer_id']}  {' '.join(p['addrs'])}") for p in rows]
          or (not rows and click.echo("no connected peers")))


@main.command()
@home_option
@json_option
@click.option("--qr", is_flag=True, help="Also show the link as a QR code in the terminal.")
def share(home_dir, as_json, qr):
    """Print a mydata:// link others can use to reach this node (with its addresses while it runs)."""
    home = Home.resolve(home_dir).require()
    client = ApiClient.from_home(home.path)
    if client is not None:
        with client:
            info = client.share()
    else:
        did = Vault.load(home.vault_path).did
        info = {"link": str(Link(did)), "did": did, "addrs": [], "note": "the node is not running: no addresses"}
    if as_json:
        click.echo(dump_json(info))
        return
    click.echo(info["link"])
    if not info["addrs"]:
        click.echo("(the node is not running, so the link carries no addresses; peers must find it by DHT)", err=True)
    if qr:
        import qrcode

        code = qrcode.QRCode(border=1)
        code.add_data(info["link"])
        code.print_ascii(invert=True)


# ---------------------------------------------------------------- the requester's commands


@main.group()
def remote():
    """Ask another person's node for consent, and use what it grants."""


@remote.command(name="request")
@home_option
@json_option
@click.argument("link")
@click.option("--scope", "scopes", multiple=True, required=True, metavar="VERB:PATH",
              help="What to ask for (repeatable): read:cv/, list:cv/, write:cv/certificates/, delete:PATH.")
@click.option("--purpose", required=True, help="Why you ask, in words the person will read.")
@click.option("--description", default="", help="More detail (up to 2000 characters).")
@click.option("--days", type=click.IntRange(1, 3650), default=30, show_default=True, help="How long the consent lasts.")
@click.option("--retention-days", type=click.IntRange(0, 3650), default=30, show_default=True,
              help="How long you keep what you read.")
def remote_request(home_dir, as_json, link, scopes, purpose, description, days, retention_days):
    """Send a consent request to a person's node (LINK: mydata://..., a DID or a PeerID)."""
    try:
        chosen = [parse_scope_text(s) for s in scopes]
    except ProtocolError as exc:
        raise UserError(exc.message) from None
    with running_node(home_dir) as client:
        result = client.remote_request(link, [{"cmd": s.cmd, "path": s.path} for s in chosen], purpose,
                                       description, days, retention_days)
    _emit(as_json, result, _print_consent)


def _print_consent(r: dict) -> None:
    click.echo(f"request {r['request']}: {r['status']}")
    if r.get("scopes"):
        click.echo(f"  granted {_scopes_text(r['scopes'])}")
    if r.get("reason"):
        click.echo(f"  reason  {r['reason']}")


@remote.command(name="status")
@home_option
@json_option
@click.argument("link")
@click.argument("request_id", metavar="REQUEST")
def remote_status(home_dir, as_json, link, request_id):
    """Ask the owner's node for the current answer to a request you sent."""
    with running_node(home_dir) as client:
        result = client.remote_status(link, request_id)
    _emit(as_json, result, _print_consent)


def _invoke(home_dir, link: str, cmd: str, args: dict) -> dict:
    with running_node(home_dir) as client:
        return client.remote_invoke(link, cmd, args)


@remote.command(name="read")
@home_option
@click.argument("link")
@click.argument("path")
def remote_read(home_dir, link, path):
    """Read one record from a person's node with a grant you hold (JSON to stdout)."""
    click.echo(dump_json(_invoke(home_dir, link, "/pds/read", {"path": path})))


@remote.command(name="ls")
@home_option
@json_option
@click.argument("link")
@click.argument("prefix", default="")
def remote_ls(home_dir, as_json, link, prefix):
    """List records under a prefix on a person's node."""
    result = _invoke(home_dir, link, "/pds/list", {"path": prefix})
    _emit(as_json, result, lambda r: [click.echo(f"{e['path']}  v{e['version']}") for e in r["entries"]])


@remote.command(name="write")
@home_option
@json_option
@click.argument("link")
@click.argument("path")
@click.argument("source", default="-", metavar="[FILE|-]")
@click.option("--if-version", type=click.IntRange(min=0), default=None)
def remote_write(home_dir, as_json, link, path, source, if_version):
    """Write one record (JSON) into a person's node with a grant you hold."""
    args: dict[str, Any] = {"path": path, "value": read_json(source)}
    if if_version is not None:
        args["version"] = if_version
    result = _invoke(home_dir, link, "/pds/write", args)
    _emit(as_json, result, lambda r: click.echo(f"wrote {path} (version {r['version']})"))
