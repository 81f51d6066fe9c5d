"""The consent flow between separate OS processes through the real `mydata` console script: an owner node and a
requester node, owner decisions through the CLI, an offline requester getting its grant by store-and-forward,
clean shutdown on SIGTERM, and `scripts/devnet` itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from procs import NodeProcess

ROOT = Path(__file__).resolve().parents[1]
MYDATA = str(Path(sys.executable).parent / "mydata")
PASS = "e2e passphrase"

pytestmark = pytest.mark.slow


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith("MYDATA_")}
    e["MYDATA_PASSPHRASE"] = PASS
    return e


def mydata(*args, check=True, stdin=None):
    result = subprocess.run([MYDATA, *args], capture_output=True, text=True, env=env(), input=stdin, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"mydata {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def mydata_json(*args, stdin=None):
    return json.loads(mydata(*args, "--json", stdin=stdin).stdout)


class Node(NodeProcess):
    """A `mydata run` process (tests/procs.py) whose shutdown is under test: SIGTERM must stop it in time."""

    def __init__(self, home: Path) -> None:
        super().__init__(home, passphrase=PASS)

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the node did not stop within {timeout:.0f} s of SIGTERM") from None

    @property
    def link(self) -> str:
        return self.info["link"]

    @property
    def listen(self) -> str:
        return self.info["listen"].split("/p2p/")[0]


@pytest.fixture
def nodes(tmp_path):
    made: list[Node] = []

    def make(name):
        node = Node(tmp_path / name).init()
        made.append(node)
        return node

    yield make
    for node in made:
        node.kill()


def test_consent_flow_between_processes(nodes, tmp_path):
    owner, service = nodes("owner"), nodes("service")
    mydata("import-resume", "--home", str(owner.home), str(ROOT / "tests" / "data" / "resume.json"))
    owner.start()
    service.start()
    h_owner, h_service = ["--home", str(owner.home)], ["--home", str(service.home)]

    asked = mydata_json("remote", "request", *h_service, owner.link, "--scope", "read:cv/", "--scope",
                        "write:cv/certificates/", "--purpose", "Job matching", "--days", "30", "--retention-days", "90")
    assert asked["status"] == "pending"
    (pending,) = mydata_json("requests", *h_owner)
    assert pending["id"] == asked["request"] and pending["purpose"] == "Job matching"
    assert pending["retention_days"] == 90  # travels CLI -> control API -> signed request -> owner
    assert {"cmd": "/pds/write", "path": "cv/certificates/"} in pending["scopes"]

    # The requester goes offline; the owner approves through the CLI; the answer waits in the outbox.
    assert service.stop() == 0
    mydata("approve", *h_owner, asked["request"], "--scope", "read:cv/", "--scope", "write:cv/certificates/")
    assert mydata_json("status", *h_owner)["outbox"] == 1
    # Back online on the same address, the requester can poll (and the outbox delivers on its next attempt).
    service.start(listen=service.listen)
    assert mydata_json("remote", "status", *h_service, owner.link, asked["request"])["status"] == "granted"

    basics = json.loads(mydata("remote", "read", *h_service, owner.link, "cv/basics").stdout)
    assert basics["value"]["name"] == "Linnéa Åkesson" and basics["version"] == 1
    wrote = mydata_json("remote", "write", *h_service, owner.link, "cv/certificates/acme",
                        stdin='{"name": "Work certificate", "issuer": "Acme"}')
    assert wrote["version"] == 1
    assert mydata_json("get", *h_owner, "cv/certificates/acme")["value"]["issuer"] == "Acme"
    outside = mydata("remote", "write", *h_service, owner.link, "cv/basics", stdin="{}", check=False)
    assert outside.returncode == 1 and "Traceback" not in outside.stderr

    mydata("revoke", *h_owner, "--requester", pending["requester"])
    refused = mydata("remote", "read", *h_service, owner.link, "cv/basics", check=False)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1  # one sentence, no traceback

    entries = mydata_json("audit", *h_owner)
    kinds = [e["kind"] for e in entries]
    assert kinds.count("invocation.accepted") == 2
    assert {"consent.requested", "consent.granted", "consent.revoked"} <= set(kinds)
    accepted = [e for e in entries if e["kind"] == "invocation.accepted"]
    assert {e["fields"]["path"] for e in accepted} == {"cv/basics", "cv/certificates/acme"}
    assert all(e["fields"]["requester"] == pending["requester"] for e in accepted)
    assert mydata("audit", *h_owner, "--verify").returncode == 0

    assert owner.stop() == 0 and service.stop() == 0
    assert not (owner.home / "api.json").exists()  # clean shutdown removes the API file
    # Stopped cleanly, the owner's store opens offline with everything in it.
    assert mydata_json("get", *h_owner, "cv/certificates/acme")["version"] == 1


def test_second_node_on_the_same_home_is_refused(nodes):
    owner = nodes("owner").start()
    second = subprocess.run([MYDATA, "run", "--home", str(owner.home), "--listen", "/ip4/127.0.0.1/tcp/0"],
                            capture_output=True, text=True, env=env(), timeout=60)
    assert second.returncode == 1 and "already running" in second.stderr and "Traceback" not in second.stderr
    assert owner.stop() == 0


def test_remote_commands_without_a_running_node_say_what_to_do(nodes):
    node = nodes("idle")
    result = mydata("remote", "read", "--home", str(node.home), "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
                    "cv/basics", check=False)
    assert result.returncode == 1 and "mydata run" in result.stderr


def test_devnet_story_passes(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "devnet.py"), "--nodes", "5", "--dir",
                             str(tmp_path / "devnet")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "steps passed" in result.stdout and "FAILED" not in result.stdout


def test_devnet_story_passes_with_each_node_in_its_own_network_namespace(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    from netns import NetnsUnavailable, check_available

    try:
        check_available()
    except NetnsUnavailable as exc:
        pytest.skip(str(exc))
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "devnet.py"), "--netns", "--nodes", "3", "--dir",
                             str(tmp_path / "devnet")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "network namespace on 10." in result.stdout and "FAILED" not in result.stdout
