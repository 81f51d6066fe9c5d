"""The `mydata` CLI through click's CliRunner: the many error paths, exit codes and one-sentence messages."""

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from node.cli import main
from node.home import Home

PASS = "correct horse battery staple"
SAMPLE = Path(__file__).parent / "data" / "resume.json"


@pytest.fixture
def run(home, monkeypatch):
    """Invoke `mydata ...` with this test's home and passphrase; returns click's Result."""
    monkeypatch.delenv("MYDATA_HOME", raising=False)
    monkeypatch.delenv("MYDATA_DEBUG", raising=False)
    monkeypatch.setenv("MYDATA_PASSPHRASE", PASS)

    def invoke(*args, input=None, env=None, home_arg=True):
        argv = [*args[:1], *(["--home", str(home)] if home_arg and args and not args[0].startswith("-") else []), *args[1:]]
        return CliRunner().invoke(main, argv, input=input, env=env)

    return invoke


@pytest.fixture
def node(run, home):
    r = run("init", "--kdf-profile", "interactive")
    assert r.exit_code == 0, r.output
    return home


def user_error(r, *words):
    assert r.exit_code == 1, r.output
    assert r.stdout == ""
    # prompts (on stderr) may come first; the error itself is one line, the last
    lines = [line for line in r.stderr.strip().splitlines() if not line.endswith(": ")]
    assert lines[-1].startswith("mydata: ") and sum(line.startswith("mydata") for line in lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[-1], lines[-1]
    return lines[-1]


# -- init, whoami, passwd --------------------------------------------------------------------------------


def test_init_creates_a_private_home_and_prints_identity(run, home):
    r = run("init", "--kdf-profile", "interactive", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["did"].startswith("did:key:z6Mk") and out["peer_id"].startswith("12D3KooW")
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE(Home(home).vault_path.stat().st_mode) == 0o600
    who = json.loads(run("whoami", "--json", env={"MYDATA_PASSPHRASE": None}).stdout)
    assert who == {"did": out["did"], "peer_id": out["peer_id"]}
    human = run("whoami").stdout
    assert out["did"] in human and out["peer_id"] in human


def test_init_refuses_an_existing_home_without_force(run, node):
    before = json.loads(run("whoami", "--json").stdout)
    user_error(run("init", "--kdf-profile", "interactive"), "already exists", "--force")
    assert run("put", "a", input="1").exit_code == 0
    r = run("init", "--force", "--kdf-profile", "interactive", "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["did"] != before["did"]
    user_error(run("get", "a"), "no record at a")


def test_init_prompts_twice_and_refuses_mismatch_or_empty(run, home):
    env = {"MYDATA_PASSPHRASE": None}
    r = run("init", "--kdf-profile", "interactive", input="one\ntwo\none\none\n", env=env)
    assert r.exit_code == 0, r.output
    assert "do not match" in r.output
    assert run("put", "x", input="1", env={"MYDATA_PASSPHRASE": "one"}).exit_code == 0
    r = run("init", "--force", "--kdf-profile", "interactive", input="\n\n", env=env)
    user_error(r, "must not be empty")


def test_passphrase_file_comes_first_and_uses_the_first_line(run, node, tmp_path):
    f = tmp_path / "pass"
    f.write_text(PASS + "\nignored second line\n")
    assert run("ls", "--passphrase-file", str(f), env={"MYDATA_PASSPHRASE": "wrong"}).exit_code == 0
    f.write_text("wrong\n")
    user_error(run("ls", "--passphrase-file", str(f)), "wrong passphrase")
    user_error(run("ls", "--passphrase-file", str(tmp_path / "missing")), "does not exist")
    f.write_text("")
    user_error(run("ls", "--passphrase-file", str(f)), "must not be empty")


def test_no_passphrase_argument_exists(run, node):
    r = run("ls", "--passphrase", PASS)
    assert r.exit_code == 2


def test_wrong_passphrase(run, node):
    user_error(run("get", "cv/basics", env={"MYDATA_PASSPHRASE": "not it"}), "wrong passphrase")


def test_passwd_rewraps_without_touching_data(run, node, tmp_path):
    assert run("put", "cv/basics", input='{"name": "Ada"}').exit_code == 0
    db = Home(node).db_path.read_bytes()
    r = run("passwd", env={"MYDATA_NEW_PASSPHRASE": "new secret"})
    assert r.exit_code == 0, r.output
    assert Home(node).db_path.read_bytes() == db
    user_error(run("get", "cv/basics"), "wrong passphrase")
    r = run("get", "cv/basics", env={"MYDATA_PASSPHRASE": "new secret"})
    assert json.loads(r.stdout) == {"name": "Ada"}
    assert stat.S_IMODE(Home(node).vault_path.stat().st_mode) == 0o600
    r = run("passwd", env={"MYDATA_PASSPHRASE": "new secret", "MYDATA_NEW_PASSPHRASE": None}, input="x\ny\n\n\n")
    user_error(r, "must not be empty")


def test_missing_home(run, home):
    user_error(run("whoami"), "no node home", "mydata init")
    user_error(run("ls"), "no node home")
    home.mkdir()
    user_error(run("get", "a"), "no vault")


def test_home_from_environment(run, node, monkeypatch):
    monkeypatch.setenv("MYDATA_HOME", str(node))
    r = CliRunner().invoke(main, ["whoami", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["did"].startswith("did:key:")


@pytest.mark.parametrize("cut", [0, 1, 40, -30, -2])
def test_truncated_vault_file(run, node, cut):
    vault = Home(node).vault_path
    data = vault.read_bytes()
    vault.write_bytes(data[:cut] if cut else b"")
    msg = user_error(run("ls"))
    assert "damaged" in msg or "wrong passphrase" in msg


def test_altered_vault_header_is_refused(run, node):
    vault = Home(node).vault_path
    doc = json.loads(vault.read_text())
    doc["kdf"]["opslimit"] = 3
    vault.write_text(json.dumps(doc))
    user_error(run("ls"), "wrong passphrase")
    doc["kdf"]["memlimit"] = 1 << 40
    vault.write_text(json.dumps(doc))
    user_error(run("ls"), "damaged", "out of range")


# -- data commands ---------------------------------------------------------------------------------------


def test_put_get_ls_rm(run, node, tmp_path):
    f = tmp_path / "basics.json"
    f.write_text(json.dumps({"name": "Ada Lovelace", "label": "Analyst"}))
    r = run("put", "cv/basics", str(f))
    assert r.exit_code == 0 and "version 1" in r.stdout
    r = run("put", "cv/work/acme-2021", "-", "--json", input='{"name": "Acme"}')
    assert json.loads(r.stdout) == {"path": "cv/work/acme-2021", "version": 1}
    assert json.loads(run("get", "cv/basics").stdout) == {"name": "Ada Lovelace", "label": "Analyst"}
    assert json.loads(run("get", "cv/basics", "--json").stdout)["version"] == 1
    assert run("ls", "cv/").stdout.split() == ["cv/basics", "v1", "cv/work/acme-2021", "v1"]
    assert json.loads(run("ls", "--json", "cv/work/").stdout) == [{"path": "cv/work/acme-2021", "version": 1}]
    assert run("rm", "cv/basics").exit_code == 0
    user_error(run("get", "cv/basics"), "no record at cv/basics")
    user_error(run("rm", "cv/basics"), "no record")


def test_if_version(run, node):
    assert run("put", "a", "--if-version", "0", input="1").exit_code == 0
    user_error(run("put", "a", "--if-version", "0", input="2"), "version 1, not 0")
    assert run("put", "a", "--if-version", "1", input="2").exit_code == 0
    assert run("put", "a", "--if-version", "-1", input="2").exit_code == 2
    assert run("put", "a", "--if-version", "x", input="2").exit_code == 2


@pytest.mark.parametrize("path", ["CV/basics", "cv/", "/cv", "cv//x", "cv/../x", "cv/wörk"])
def test_invalid_path(run, node, path):
    user_error(run("put", path, input="1"), "path")
    user_error(run("get", path), "path")
    user_error(run("rm", path), "path")


def test_invalid_prefix(run, node):
    user_error(run("ls", "cv"), "must be empty or end with '/'")


@pytest.mark.parametrize("text", ["", "{", "{'a': 1}", "NaN", "[1, Infinity]", "\xff\xfe", "1 2"])
def test_non_json_input(run, node, text):
    user_error(run("put", "a", input=text.encode("latin-1")), "JSON")


def test_missing_input_file(run, node, tmp_path):
    user_error(run("put", "a", str(tmp_path / "nope.json")), "does not exist")
    user_error(run("put", "a", str(tmp_path)), "directory")


def test_value_too_large(run, node):
    r = run("put", "big", input=json.dumps("x" * (1 << 20)))
    user_error(r, "at most 1048576")
    r = run("put", "big", input=b"[" + b"0," * (4 << 20) + b"0]")
    user_error(r, "larger than")


def test_usage_errors_exit_2(run, node):
    assert run("put").exit_code == 2
    assert run("nosuchcommand").exit_code == 2
    assert run("init", "--kdf-profile", "extreme").exit_code == 2


def test_tampered_store_is_reported_not_returned(run, node):
    import sqlite3

    assert run("put", "cv/basics", input='{"name": "Ada"}').exit_code == 0
    c = sqlite3.connect(Home(node).db_path, isolation_level=None)
    (blob,) = c.execute("SELECT vblob FROM store_records").fetchone()
    c.execute("UPDATE store_records SET vblob = ?", (blob[:-1] + bytes([blob[-1] ^ 1]),))
    c.close()
    r = run("get", "cv/basics")
    user_error(r, "integrity check failed", "cv/basics")
    assert "Ada" not in r.output


def test_internal_errors_are_one_line_unless_debug(run, node, tmp_path):
    from node.cli import main as group

    @group.command(name="boom-test")
    def boom():
        raise RuntimeError("kaboom")

    try:
        r = CliRunner().invoke(group, ["boom-test"])
        assert r.exit_code == 1 and "internal error (RuntimeError)" in r.stderr and "Traceback" not in r.stderr
        r = CliRunner().invoke(group, ["--debug", "boom-test"])
        assert r.exit_code == 1 and isinstance(r.exception, RuntimeError)
        r = CliRunner().invoke(group, ["boom-test"], env={"MYDATA_DEBUG": "1"})
        assert isinstance(r.exception, RuntimeError)
    finally:
        group.commands.pop("boom-test")


# -- JSON Resume ------------------------------------------------------------------------------------------


def test_import_and_export_resume_round_trip(run, node):
    r = run("import-resume", str(SAMPLE))
    assert r.exit_code == 0, r.output
    ls = run("ls", "cv/").stdout
    assert "cv/work/acme-logistics-2017" in ls and "cv/basics" in ls
    out = run("export", "--resume")
    assert out.exit_code == 0
    assert json.loads(out.stdout) == json.loads(SAMPLE.read_text())
    everything = json.loads(run("export").stdout)
    assert {"path": "cv/basics", "value": json.loads(SAMPLE.read_text())["basics"], "version": 1} in everything


def test_import_replace_removes_stale_entries(run, node):
    run("import-resume", str(SAMPLE))
    small = {"basics": {"name": "X"}, "work": [{"name": "Solo", "startDate": "2020"}]}
    r = run("import-resume", "-", "--replace", "--json", input=json.dumps(small))
    assert r.exit_code == 0, r.output
    assert "cv/work/acme-logistics-2017" in json.loads(r.stdout)["removed"]
    assert json.loads(run("export", "--resume").stdout) == small


@pytest.mark.parametrize("doc", ["[]", '{"work": {}}', '{"basics": "me"}', "not json"])
def test_import_resume_rejects_bad_documents(run, node, doc):
    user_error(run("import-resume", "-", input=doc))
    assert json.loads(run("ls", "--json").stdout) == []
