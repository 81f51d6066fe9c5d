"""`mydata token inspect|check` through click's CliRunner: raw and base64 input, fixtures, broken files."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import nacl.signing
import pytest
from click.testing import CliRunner

from consent.envelope import sign_delegation, sign_invocation
from consent.request import Scope, sign_consent_request
from node.tokencli import token
from protocol.ids import did_from_public_key

FIXTURES = json.loads((Path(__file__).parent / "fixtures/ucan-1.0.0/invocation.json").read_text())
KEYS = [nacl.signing.SigningKey(bytes([i + 31]) * 32) for i in range(3)]
DIDS = [did_from_public_key(bytes(k.verify_key)) for k in KEYS]
NOW = 1_800_000_000


def _b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture
def chain(tmp_path):
    d = sign_delegation(KEYS[0], aud=DIDS[1], sub=DIDS[0], cmd="/pds/read", pol=[["like", ".path", "cv/*"]],
                        exp=NOW + 3600, meta={"purpose": "demo"})
    inv = sign_invocation(KEYS[1], sub=DIDS[0], cmd="/pds/read", args={"path": "cv/basics"}, prf=[d.cid],
                          exp=NOW + 60)
    (tmp_path / "d.bin").write_bytes(d.raw)
    (tmp_path / "i.b64").write_text(base64.b64encode(inv.raw).decode() + "\n")
    (tmp_path / "i.url").write_text(base64.urlsafe_b64encode(inv.raw).decode().rstrip("="))
    return tmp_path, d, inv


def run(*args, input=None):
    return CliRunner().invoke(token, list(args), input=input)


def test_inspect_delegation_raw_file(chain):
    tmp, d, _ = chain
    r = run("inspect", str(tmp / "d.bin"))
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["kind"] == "delegation" and out["cid"] == str(d.cid) and out["signature_valid"] is True
    assert out["payload"]["pol"] == [["like", ".path", "cv/*"]]
    assert base64.b64decode(out["payload"]["nonce"]) == d.nonce


@pytest.mark.parametrize("name", ["i.b64", "i.url"])
def test_inspect_invocation_base64(chain, name):
    tmp, d, inv = chain
    out = json.loads(run("inspect", str(tmp / name)).stdout)
    assert out["kind"] == "invocation" and out["cid"] == str(inv.cid)
    assert out["payload"]["prf"] == [str(d.cid)]


def test_inspect_stdin(chain):
    tmp, d, _ = chain
    out = json.loads(run("inspect", input=d.raw).stdout)
    assert out["cid"] == str(d.cid)
    out = json.loads(run("inspect", "-", input=base64.b64encode(d.raw)).stdout)
    assert out["cid"] == str(d.cid)


def test_inspect_consent_request(tmp_path):
    req = sign_consent_request(KEYS[1], aud=DIDS[0], scopes=[Scope("/pds/read", "cv/")], purpose="p",
                               description="", retention_days=1, exp=NOW + 10, iat=NOW)
    (tmp_path / "r").write_bytes(req.raw)
    out = json.loads(run("inspect", str(tmp_path / "r")).stdout)
    assert out["kind"] == "consent-request" and out["signature_valid"] is True
    assert out["payload"]["scopes"] == [{"cmd": "/pds/read", "path": "cv/"}]


def test_inspect_reports_a_bad_signature():
    case = next(c for c in FIXTURES["invalid"] if c["name"] == "invalid invocation signature")
    r = run("inspect", input=_b64(case["invocation"]["/"]["bytes"]))
    assert r.exit_code == 0
    out = json.loads(r.stdout)
    assert out["signature_valid"] is False and out["kind"] == "invocation"


def test_check_valid_chain(chain):
    tmp, _, _ = chain
    r = run("check", "--at", str(NOW), str(tmp / "i.b64"), str(tmp / "d.bin"))
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.stdout.startswith("valid")


@pytest.mark.parametrize("at,extra,name", [
    (NOW + 3600 + 61, True, "Expired"),
    (NOW, False, "UnavailableProof"),
])
def test_check_refusals_print_the_error_name(chain, at, extra, name):
    tmp, _, _ = chain
    args = ["check", "--at", str(at), str(tmp / "i.b64")] + ([str(tmp / "d.bin")] if extra else [])
    r = run(*args)
    assert r.exit_code == 1
    assert r.stdout.strip() == name


@pytest.mark.parametrize("case", FIXTURES["valid"] + FIXTURES["invalid"], ids=lambda c: c["name"])
def test_check_fixtures(tmp_path, case):
    files = []
    for i, link in enumerate([case["invocation"]] + case["proofs"]):
        (tmp_path / f"t{i}").write_text(link["/"]["bytes"])
        files.append(str(tmp_path / f"t{i}"))
    r = run("check", "--at", str(case["time"]), *files)
    if "error" in case:
        assert (r.exit_code, r.stdout.strip()) == (1, case["error"]["name"])
    else:
        assert r.exit_code == 0, r.stdout + r.stderr


@pytest.mark.parametrize("content", [b"", b"   \n", b"not base64 at all!", b"\x82\x01", b"aGVsbG8="])
def test_bad_files_give_one_sentence_and_exit_1(tmp_path, content):
    (tmp_path / "bad").write_bytes(content)
    r = run("inspect", str(tmp_path / "bad"))
    assert r.exit_code == 1
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.startswith("mydata token: ") and r.stderr.count("\n") == 1


def test_missing_file(tmp_path, chain):
    r = run("inspect", str(tmp_path / "nope"))
    assert r.exit_code == 1 and "cannot read" in r.stderr and "Traceback" not in r.stderr
    tmp, _, _ = chain
    r = run("check", "--at", "0", str(tmp / "i.b64"), str(tmp_path / "nope"))
    assert r.exit_code == 1 and "cannot read" in r.stderr


def test_check_wants_an_invocation_first(chain):
    tmp, _, _ = chain
    r = run("check", "--at", str(NOW), str(tmp / "d.bin"))
    assert r.exit_code == 1 and "not an invocation" in r.stderr
