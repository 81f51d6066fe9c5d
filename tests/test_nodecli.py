"""The node commands' offline paths through the real CLI: share (and its QR code), config, owner commands with
no node running, and the one-sentence errors of commands that need a running node."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from node.cli import main

PASS = "cli passphrase"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MYDATA_PASSPHRASE", PASS)
    path = tmp_path / "home"
    result = CliRunner().invoke(main, ["init", "--home", str(path), "--kdf-profile", "interactive", "--json"])
    assert result.exit_code == 0, result.output
    return path, json.loads(result.output)["did"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_share_prints_the_link_and_a_qr_code_that_encodes_it(home):
    path, did = home
    result = run("share", "--home", path, "--qr")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == f"mydata://{did}"
    import io

    import qrcode

    expected = qrcode.QRCode(border=1)
    expected.add_data(f"mydata://{did}")
    rendered = io.StringIO()
    expected.print_ascii(out=rendered, invert=True)
    assert "\n".join(lines[1:]) == rendered.getvalue().rstrip("\n")  # the code printed encodes exactly the link
    info = json.loads(run("share", "--home", path, "--json").stdout)
    assert info["did"] == did and info["addrs"] == []


def test_config_shows_the_written_defaults(home):
    path, _ = home
    cfg = json.loads(run("config", "--home", path, "--json").stdout)
    assert cfg["listen"] == ["/ip4/0.0.0.0/tcp/4001"] and cfg["mdns"] is False and cfg["policies"] == []
    (path / "config.toml").write_text("listen = 7\n")
    bad = run("config", "--home", path)
    assert bad.exit_code == 1 and "'listen' must be a list" in bad.stderr and "Traceback" not in bad.output


def test_owner_commands_work_with_no_node_running(home):
    path, _ = home
    assert json.loads(run("requests", "--home", path, "--json").stdout) == []
    assert json.loads(run("grants", "--home", path, "--json").stdout) == []
    assert json.loads(run("audit", "--home", path, "--verify", "--json").stdout)["ok"] is True
    missing = run("approve", "--home", path, "bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy")
    assert missing.exit_code == 1 and "no consent request" in missing.stderr
    usage = run("revoke", "--home", path)
    assert usage.exit_code == 2


@pytest.mark.parametrize("command", [["status"], ["peers"], ["services"], ["find", "12D3KooWQbqV3sN7qUMShCaTW5bB5cmX52NJvAmi7ssMUd4AuAFN"],
                                     ["remote", "ls", "did:key:z6Mkh6eGXEeXTKq5t3eDBHtULsYTw3ZAxovMNj6mokifaLDz"]])
def test_commands_that_need_the_running_node_say_how_to_start_it(home, command):
    path, _ = home
    result = run(*command, "--home", path)
    assert result.exit_code == 1
    assert "mydata run" in result.stderr and result.stderr.count("\n") == 1


def test_bootstrap_only_refuses_a_damaged_key_file(tmp_path):
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "bootstrap.key").write_bytes(b"short")
    result = run("run", "--bootstrap-only", "--home", seed, "--listen", "/ip4/127.0.0.1/tcp/0")
    assert result.exit_code == 1 and "damaged" in result.stderr
