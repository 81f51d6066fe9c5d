"""The `mydata` command line: vault commands (init, whoami, passwd) and data commands through a backend object.

Data commands call a `Backend` (put/get/list/delete); today that is `LocalBackend` over the unlocked store, later
the running node's control API. Expected failures become one sentence on stderr and exit 1, in one place
(`MydataGroup.invoke`); other commands added with `main.add_command` get the same treatment.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import click

from consent.certificate import check_entry
from node.apiclient import ApiClient
from node.audit import AuditLog
from node.crypto import IntegrityError
from node.home import Home, HomeError
from node.resume import ROOT as CV_ROOT
from node.resume import export_resume, import_resume
from node.store import MAX_VALUE_SIZE, Store
from node.state import create_node, open_state
from node.vault import DEFAULT_PROFILE, KDF_PROFILES, Vault, VaultError
from protocol.errors import ErrorCode, ProtocolError

ENV_PASSPHRASE = "MYDATA_PASSPHRASE"
ENV_NEW_PASSPHRASE = "MYDATA_NEW_PASSPHRASE"
ENV_DEBUG = "MYDATA_DEBUG"
# JSON text of a 1 MiB value can be several times longer (escapes); beyond this it cannot fit in a record.
MAX_JSON_INPUT = 8 * MAX_VALUE_SIZE


class UserError(Exception):
    """A mistake the user can fix; the message is the one sentence they see."""


# -- error handling, in one place ------------------------------------------------------------------------


def _describe(exc: BaseException) -> str | None:
    """The one sentence for an expected failure, or None for a bug."""
    if isinstance(exc, ProtocolError):
        return exc.message
    if isinstance(exc, IntegrityError):
        return f"integrity check failed: {exc}"
    if isinstance(exc, (UserError, VaultError, HomeError)):
        return str(exc)
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or exc}"
    return None


class MydataGroup(click.Group):
    """Turns every expected failure into one sentence on stderr and exit 1; a bug says so, and --debug (or
    MYDATA_DEBUG=1) shows its traceback. Other programs built on the node (cv-agent) subclass it."""

    program = "mydata"
    user_errors: tuple[type[Exception], ...] = ()  # further exception types whose text is the sentence

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            if ctx.params.get("debug") or os.environ.get(ENV_DEBUG) == "1":
                raise
            sentence = str(exc) if isinstance(exc, self.user_errors) else _describe(exc)
            if sentence is None:
                sentence = f"internal error ({type(exc).__name__}); run again with {ENV_DEBUG}=1 for details"
            click.echo(f"{self.program}: {sentence}", err=True)
            ctx.exit(1)


# -- shared options --------------------------------------------------------------------------------------


def home_option(f):
    return click.option(
        "--home",
        "home_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Node home directory (default: $MYDATA_HOME, else ~/.local/share/mydata).",
    )(f)


def passphrase_option(f):
    return click.option(
        "--passphrase-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=f"Read the passphrase from the first line of this file (else ${ENV_PASSPHRASE}, else a prompt).",
    )(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(f)


def read_passphrase(
    passphrase_file: Path | None, *, env: str = ENV_PASSPHRASE, confirm: bool = False, prompt: str = "Passphrase"
) -> str:
    """From --passphrase-file (first line), else the environment, else the terminal (asked twice when `confirm`)."""
    if passphrase_file is not None:
        try:
            text = passphrase_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"passphrase file {passphrase_file} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read passphrase file {passphrase_file}: {exc}") from None
        passphrase = text.splitlines()[0] if text else ""
    elif os.environ.get(env) is not None:
        passphrase = os.environ[env]
    else:
        # Prompts go to stderr so that stdout carries only the command's output (`mydata get x > file`).
        passphrase = click.prompt(
            prompt, hide_input=True, confirmation_prompt=confirm, default="", show_default=False, err=True
        )
    if not passphrase:
        raise UserError("the passphrase must not be empty")
    return passphrase


# -- backends --------------------------------------------------------------------------------------------


class Backend(Protocol):
    def put(self, path: str, value: Any, if_version: int | None = None) -> int: ...
    def get(self, path: str) -> dict: ...
    def list(self, prefix: str = "") -> list[dict]: ...
    def delete(self, path: str) -> None: ...
    def close(self) -> None: ...


class LocalBackend:
    """The data commands against the store file directly (no node running); the owner's changes are audited."""

    def __init__(self, store: Store, audit: AuditLog | None = None) -> None:
        self.store = store
        self.audit = audit

    def put(self, path: str, value: Any, if_version: int | None = None) -> int:
        version = self.store.put(path, value, if_version=if_version)
        if self.audit is not None:
            self.audit.append("owner.write", {"path": path, "version": version}, at=int(time.time()))
        return version

    def get(self, path: str) -> dict:
        rec = self.store.get(path)
        return {"path": rec.path, "value": rec.value, "version": rec.version}

    def list(self, prefix: str = "") -> list[dict]:
        return [{"path": p, "version": v} for p, v in self.store.list(prefix)]

    def delete(self, path: str) -> None:
        self.store.delete(path)
        if self.audit is not None:
            self.audit.append("owner.delete", {"path": path}, at=int(time.time()))

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()
        self.store.close()


def unlock(home_dir: Path | None, passphrase_file: Path | None):
    home = Home.resolve(home_dir).require()
    vault = Vault.load(home.vault_path)
    return home, vault, vault.unlock(read_passphrase(passphrase_file))


def open_backend(home_dir: Path | None, passphrase_file: Path | None) -> Backend:
    """Through the running node's control API when one runs on this home (no passphrase needed), else direct."""
    client = ApiClient.from_home(Home.resolve(home_dir).require().path)
    if client is not None:
        return client
    home, _, identity = unlock(home_dir, passphrase_file)
    return LocalBackend(*open_state(home, identity))


# -- JSON in and out -------------------------------------------------------------------------------------


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def read_json(source: str) -> Any:
    """Parse JSON from a file name or '-' (stdin); refuse NaN/Infinity and anything too big to store."""
    try:
        if source == "-":
            data = sys.stdin.buffer.read(MAX_JSON_INPUT + 1)
        else:
            with open(source, "rb") as f:
                data = f.read(MAX_JSON_INPUT + 1)
    except FileNotFoundError:
        raise UserError(f"input file {source} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"input {source} is a directory, not a JSON file") from None
    if len(data) > MAX_JSON_INPUT:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"the input is larger than {MAX_JSON_INPUT} bytes; a record holds 1 MiB")
    where = "standard input" if source == "-" else source
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise UserError(f"{where} is not UTF-8 text, so it is not JSON") from None
    except ValueError as exc:
        raise UserError(f"{where} is not valid JSON ({exc})") from None


def _json_default(obj: Any) -> Any:
    # Records written over the network may hold bytes or CIDs; show them the DAG-JSON way.
    if isinstance(obj, (bytes, bytearray)):
        return {"/": {"bytes": base64.b64encode(obj).decode().rstrip("=")}}
    if type(obj).__name__ == "CID":
        return {"/": str(obj)}
    raise TypeError(f"{type(obj).__name__} cannot be shown as JSON")


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default)


# -- commands --------------------------------------------------------------------------------------------


@click.group(cls=MydataGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help=f"Show tracebacks for internal errors (or set {ENV_DEBUG}=1).")
def main(debug: bool) -> None:
    """mydata: your personal data node. Your data, encrypted, readable only with your passphrase."""


@main.command()
@home_option
@passphrase_option
@json_option
@click.option("--force", is_flag=True, help="Replace an existing node here (destroys its keys and data).")
@click.option(
    "--kdf-profile",
    type=click.Choice(list(KDF_PROFILES)),
    default=DEFAULT_PROFILE,
    show_default=True,
    help="Argon2id cost for unlocking.",
)
def init(home_dir, passphrase_file, as_json, force, kdf_profile):
    """Create a node: a new identity and store key, locked by a passphrase."""
    home = Home.resolve(home_dir)
    if home.is_initialised() and not force:
        raise UserError(f"a node already exists at {home.path}; use --force to replace it (its data will be lost)")
    passphrase = read_passphrase(passphrase_file, confirm=True, prompt="New passphrase")
    vault = create_node(home, passphrase, profile=kdf_profile, force=force)
    if as_json:
        click.echo(dump_json({"home": str(home.path), "did": vault.did, "peer_id": vault.peer_id}))
    else:
        click.echo(f"Created a node in {home.path}")
        click.echo(f"DID:    {vault.did}")
        click.echo(f"PeerID: {vault.peer_id}")


@main.command()
@home_option
@json_option
def whoami(home_dir, as_json):
    """Print this node's DID and PeerID (no passphrase needed)."""
    home = Home.resolve(home_dir).require()
    vault = Vault.load(home.vault_path)
    if as_json:
        click.echo(dump_json({"did": vault.did, "peer_id": vault.peer_id}))
    else:
        click.echo(f"DID:    {vault.did}")
        click.echo(f"PeerID: {vault.peer_id}")


@main.command()
@home_option
@passphrase_option
@click.option(
    "--new-passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Read the new passphrase from this file (else ${ENV_NEW_PASSPHRASE}, else a prompt).",
)
def passwd(home_dir, passphrase_file, new_passphrase_file):
    """Change the passphrase (the keys are rewrapped; no data is re-encrypted)."""
    home, vault, identity = unlock(home_dir, passphrase_file)
    new = read_passphrase(new_passphrase_file, env=ENV_NEW_PASSPHRASE, confirm=True, prompt="New passphrase")
    vault.rewrap(identity, new).save(home.vault_path)
    click.echo("Passphrase changed.")


@main.command()
@home_option
@passphrase_option
@json_option
@click.argument("path")
@click.argument("source", default="-", metavar="[FILE|-]")
@click.option("--if-version", type=click.IntRange(min=0), default=None, help="Write only if the record is at this version (0: only if absent).")
def put(home_dir, passphrase_file, as_json, path, source, if_version):
    """Store the JSON value read from FILE (or stdin) at PATH."""
    value = read_json(source)
    backend = open_backend(home_dir, passphrase_file)
    try:
        version = backend.put(path, value, if_version)
    finally:
        backend.close()
    if as_json:
        click.echo(dump_json({"path": path, "version": version}))
    else:
        click.echo(f"{path}: version {version}")


@main.command()
@home_option
@passphrase_option
@json_option
@click.argument("path")
def get(home_dir, passphrase_file, as_json, path):
    """Print the value at PATH as JSON (with --json: path, value and version)."""
    backend = open_backend(home_dir, passphrase_file)
    try:
        rec = backend.get(path)
    finally:
        backend.close()
    # A work certificate in the value is checked: signed by its issuer, about this node's owner, unaltered.
    cert = check_entry(rec["value"], subject=Vault.load(Home.resolve(home_dir).require().vault_path).did)
    if cert is not None and as_json:
        rec = rec | {"certificate": cert}
    elif cert is not None:
        click.echo(f"certificate signed by {cert['issuer']} (verified)" if cert["verified"] else
                   f"certificate claiming issuer {cert['issuer'] or 'unknown'} NOT verified: {cert['reason']}", err=True)
    click.echo(dump_json(rec if as_json else rec["value"]))


@main.command(name="ls")
@home_option
@passphrase_option
@json_option
@click.argument("prefix", default="")
def ls(home_dir, passphrase_file, as_json, prefix):
    """List records under PREFIX (e.g. cv/), with their versions."""
    backend = open_backend(home_dir, passphrase_file)
    try:
        entries = backend.list(prefix)
    finally:
        backend.close()
    if as_json:
        click.echo(dump_json(entries))
        return
    width = max((len(e["path"]) for e in entries), default=0)
    for e in entries:
        click.echo(f"{e['path']:<{width}}  v{e['version']}")


@main.command()
@home_option
@passphrase_option
@click.argument("path")
def rm(home_dir, passphrase_file, path):
    """Delete the record at PATH."""
    backend = open_backend(home_dir, passphrase_file)
    try:
        backend.delete(path)
    finally:
        backend.close()
    click.echo(f"Deleted {path}")


@main.command(name="import-resume")
@home_option
@passphrase_option
@json_option
@click.argument("source", metavar="FILE|-")
@click.option("--replace", is_flag=True, help="Also delete records under cv/ that the document does not contain.")
def import_resume_cmd(home_dir, passphrase_file, as_json, source, replace):
    """Import a JSON Resume document (jsonresume.org) into cv/ records."""
    records = import_resume(read_json(source))
    backend = open_backend(home_dir, passphrase_file)
    removed = []
    try:
        for path, value in records.items():
            backend.put(path, value)
        if replace:
            for entry in backend.list(CV_ROOT):
                if entry["path"] not in records:
                    backend.delete(entry["path"])
                    removed.append(entry["path"])
    finally:
        backend.close()
    if as_json:
        click.echo(dump_json({"imported": list(records), "removed": removed}))
    else:
        click.echo(f"Imported {len(records)} records under {CV_ROOT}" + (f", removed {len(removed)}" if removed else ""))


@main.command()
@home_option
@passphrase_option
@json_option
@click.option("--resume", is_flag=True, help="Rebuild a JSON Resume document from the cv/ records.")
def export(home_dir, passphrase_file, as_json, resume):
    """Print all records as JSON, or (--resume) the JSON Resume document."""
    backend = open_backend(home_dir, passphrase_file)
    try:
        prefix = CV_ROOT if resume else ""
        records = [backend.get(e["path"]) for e in backend.list(prefix)]
    finally:
        backend.close()
    if resume:
        click.echo(dump_json(export_resume({r["path"]: r["value"] for r in records})))
    else:
        click.echo(dump_json(records))


# The token and node commands live in their own modules; importing them registers them on `main`.
from node import nodecli  # noqa: E402,F401
from node.tokencli import token  # noqa: E402

main.add_command(token)
