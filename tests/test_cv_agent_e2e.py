"""The CV service story across separate OS processes, through the real `mydata` and `cv-agent` console scripts:
request, partial approval, fetch, render, a later write-only request, certify, `mydata get` verifying the
certificate, revocation and the agent's copy gone; and the bad inputs (agent not running, unreachable or unknown
node, denial, partial grant, expired grant, revocation in the middle of a fetch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cv_agent.agent import fetch
from cv_agent.holdings import AgentError, Holdings
from node.apiclient import ApiClient
from node.home import Home
from node.store import Store
from node.vault import Vault

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
MYDATA, CV_AGENT = str(BIN / "mydata"), str(BIN / "cv-agent")
SAMPLE = Path(__file__).parent / "data" / "resume.json"
PASS = "cv agent e2e"
READY = 60  # deadlines against hangs on a busy machine, never performance claims
SETTLE = 30
GRACE = 10


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("MYDATA_", "CV_AGENT_"))}
    e["MYDATA_PASSPHRASE"] = PASS
    return e


def run(tool: str, *args: str, ok: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([tool, *args], capture_output=True, text=True, env=env(), input=stdin, timeout=120)
    if ok:
        assert r.returncode == 0, f"{Path(tool).name} {' '.join(args)}: {r.stderr}"
    return r


def refused(tool: str, *args: str) -> str:
    """Run a command that must fail with exit 1 and one sentence on stderr; returns the sentence."""
    r = run(tool, *args, ok=False)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    return r.stderr.strip()


class Proc:
    """A `mydata run` or `cv-agent run` process on a home, started with a deadline and stopped SIGTERM-then-SIGKILL."""

    def __init__(self, tool: str, home: Path) -> None:
        self.tool, self.home, self.proc, self.info = tool, home, None, {}
        self.h = ["--home", str(home)]

    def start(self) -> "Proc":
        return self.launch().wait_ready()

    def launch(self) -> "Proc":
        self.out = self.home.parent / f"{self.home.name}.out"
        with open(self.out, "w") as f:
            self.proc = subprocess.Popen([self.tool, "run", *self.h, "--listen", "/ip4/127.0.0.1/tcp/0"], stdout=f,
                                         stderr=subprocess.STDOUT, env=env(), start_new_session=True)
        return self

    def wait_ready(self) -> "Proc":
        deadline = time.monotonic() + READY
        while time.monotonic() < deadline:
            text = self.out.read_text()
            if "Press Ctrl-C to stop." in text:
                for line in text.splitlines():
                    key, _, value = line.strip().partition(":")
                    self.info.setdefault(key, value.strip())
                return self
            assert self.proc.poll() is None, f"{self.tool} exited while starting: {text[-800:]}"
            time.sleep(0.05)
        raise AssertionError(f"{self.tool} did not start within {READY} s: {self.out.read_text()[-800:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(GRACE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def pair(tmp_path):
    """A person's node holding the sample CV and a CV agent, both running as their own processes."""
    person, agent = Proc(MYDATA, tmp_path / "person"), Proc(CV_AGENT, tmp_path / "agent")
    run(MYDATA, "init", *person.h, "--kdf-profile", "interactive")
    run(MYDATA, "import-resume", *person.h, str(SAMPLE))
    run(CV_AGENT, "init", *agent.h, "--kdf-profile", "interactive")
    try:
        person.launch(), agent.launch()  # the two start-ups overlap
        person.wait_ready(), agent.wait_ready()
        yield person, agent
    finally:
        agent.stop()
        person.stop()


def as_json(tool, *args):
    return json.loads(run(tool, *args, "--json").stdout)


def eventually(check, what: str):
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {SETTLE} s: {what}")


def test_the_cv_service_story(pair, tmp_path):
    person, agent = pair
    did = person.info["did"]
    agent_did = agent.info["did"]

    asked = as_json(CV_AGENT, "request", *agent.h, person.info["link"], "--purpose", "match you with jobs",
                    "--days", "30")
    assert asked["status"] == "pending"
    (pending,) = as_json(MYDATA, "requests", *person.h)
    assert pending["requester"] == agent_did and pending["purpose"] == "match you with jobs"
    assert {(s["cmd"], s["path"]) for s in pending["scopes"]} == {
        ("/pds/list", "cv/"), ("/pds/read", "cv/"), ("/pds/write", "cv/certificates/")}
    assert "approve the read part and deny the write part" in pending["description"]

    # The person approves the read part only (not approving the write scope is denying it).
    run(MYDATA, "approve", *person.h, asked["request"], "--scope", "list:cv/", "--scope", "read:cv/")
    inbox = as_json(CV_AGENT, "inbox", *agent.h)
    assert inbox[0]["status"] == "granted" and {s["cmd"] for s in inbox[0]["scopes"]} == {"/pds/list", "/pds/read"}

    no_write = refused(CV_AGENT, "certify", *agent.h, did, "--employer", "Acme AB", "--role", "Engineer",
                       "--from", "2021-03-01", "--to", "2024-06-30")
    assert "did not grant the right to write certificates" in no_write and "--part write" in no_write

    fetched = as_json(CV_AGENT, "fetch", *agent.h, did)
    assert fetched["records"] == 22 and fetched["requests"] == [asked["request"]]
    assert fetched["retention_until"] - fetched["fetched_at"] == 30 * 86_400
    out = tmp_path / "cv.html"
    rendered = run(CV_AGENT, "render", *agent.h, did, "--out", str(out))
    assert rendered.stderr == "" and "<h1>Linnéa Åkesson</h1>" in out.read_text()

    # Later, a write-only request, waited for while the person approves it.
    waiting = subprocess.Popen([CV_AGENT, "request", *agent.h, did, "--part", "write", "--purpose",
                                "add signed work certificates", "--wait", "--timeout", "60", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        eventually(lambda: as_json(MYDATA, "requests", *person.h), "the write request reaches the person")
        (write_req,) = as_json(MYDATA, "requests", *person.h)
        assert write_req["scopes"] == [{"cmd": "/pds/write", "path": "cv/certificates/"}]
        run(MYDATA, "approve", *person.h, write_req["id"])
        stdout, stderr = waiting.communicate(timeout=90)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, stderr
    assert json.loads(stdout)["status"] == "granted"

    cert = as_json(CV_AGENT, "certify", *agent.h, did, "--employer", "Acme AB", "--role", "Engineer",
                   "--from", "2021-03-01", "--to", "2024-06-30")
    assert cert["path"].startswith("cv/certificates/acme-ab-engineer-2021-") and cert["issuer"] == agent_did
    shown = run(MYDATA, "get", *person.h, cert["path"])
    assert shown.stderr.strip() == f"certificate signed by {agent_did} (verified)"
    assert json.loads(shown.stdout)["issuer"] == "Acme AB"
    assert as_json(MYDATA, "get", *person.h, cert["path"])["certificate"]["verified"] is True
    resume = json.loads(run(MYDATA, "export", *person.h, "--resume").stdout)
    assert any(c.get("issuer") == "Acme AB" and "mydata:certificate" in c for c in resume["certificates"])

    # The person revokes everything; the pushed revocation makes the agent delete its copy.
    run(MYDATA, "revoke", *person.h, "--requester", agent_did)

    def deleted():
        (p,) = as_json(CV_AGENT, "list", *agent.h)
        return p["held"] is None and p["deleted"] is not None

    eventually(deleted, "the agent deletes its copy after the revocation")
    (listed,) = as_json(CV_AGENT, "list", *agent.h)
    assert listed["deleted"]["reason"] == "consent revoked by the person"
    assert {r["status"] for r in listed["requests"]} == {"revoked"}
    gone = refused(CV_AGENT, "render", *agent.h, did, "--out", str(tmp_path / "again.html"))
    assert "was deleted" in gone and "revoked" in gone
    assert "revoked the grant" in refused(CV_AGENT, "fetch", *agent.h, did)
    human = run(CV_AGENT, "list", *agent.h).stdout
    assert "deleted" in human and did in human


def test_agent_not_running_and_unreachable_or_unknown_nodes(tmp_path):
    agent = Proc(CV_AGENT, tmp_path / "agent")
    assert "run `cv-agent init` first" in refused(CV_AGENT, "whoami", *agent.h)
    run(CV_AGENT, "init", *agent.h, "--kdf-profile", "interactive")
    person_did = "did:key:z6MkeUV2o6c1UsQQcj7J8wjj4G1vx9kUhBizKvbz4vaGfjEr"
    assert "start it with `cv-agent run`" in refused(CV_AGENT, "request", *agent.h, person_did, "--purpose", "x")
    assert "not a mydata link" in refused(CV_AGENT, "request", *agent.h, "https://example.org", "--purpose", "x")
    assert "no consent was asked" in refused(CV_AGENT, "fetch", *agent.h, person_did)
    assert "nothing is held" in refused(CV_AGENT, "render", *agent.h, person_did, "--out", str(tmp_path / "x"))
    agent.start()
    try:
        dead = f"mydata://{person_did}?addr=/ip4/127.0.0.1/tcp/1"
        assert "cannot reach" in refused(CV_AGENT, "request", *agent.h, dead, "--purpose", "x")
        # A non-default retention period is accepted by the API; the request fails only on the dead address.
        other = refused(CV_AGENT, "request", *agent.h, dead, "--purpose", "x", "--retention-days", "7")
        assert "cannot reach" in other
        unknown = "did:key:z6MkrJVnaZkeFzdQyMZu1cgJg7sSBxGt6ZkGw6W3Fhw9a6ZG"
        assert "cannot reach" in refused(CV_AGENT, "request", *agent.h, unknown, "--purpose", "x")
        assert "never reached" in refused(CV_AGENT, "fetch", *agent.h, unknown)
    finally:
        agent.stop()


def test_denied_partial_expired_and_revoked_mid_fetch(pair, tmp_path):
    person, agent = pair
    did = person.info["did"]

    # Denied.
    denied = as_json(CV_AGENT, "request", *agent.h, person.info["link"], "--purpose", "x")
    run(MYDATA, "deny", *person.h, denied["request"], "--reason", "not looking for a job")
    eventually(lambda: as_json(CV_AGENT, "inbox", *agent.h)[0]["status"] == "denied", "the denial arrives")
    assert "denied the request (not looking for a job)" in refused(CV_AGENT, "fetch", *agent.h, did)

    # Partly approved: listing without reading is not enough to fetch.
    partial = as_json(CV_AGENT, "request", *agent.h, did, "--purpose", "y")
    run(MYDATA, "approve", *person.h, partial["request"], "--scope", "list:cv/")
    eventually(lambda: any(r["status"] == "granted" for r in as_json(CV_AGENT, "inbox", *agent.h)), "grant")
    assert "did not grant the right to list and read cv/" in refused(CV_AGENT, "fetch", *agent.h, did)

    # Expired: a grant the person ended a few seconds after approving it.
    short = as_json(CV_AGENT, "request", *agent.h, did, "--part", "read", "--purpose", "z")
    with ApiClient.from_home(person.home) as owner:
        ends = int(time.time()) + 3
        owner.approve(short["request"], None, ends)
    eventually(lambda: len([r for r in as_json(CV_AGENT, "inbox", *agent.h) if r["status"] == "granted"]) == 2,
               "the short grant arrives")
    while time.time() < ends + 1:
        time.sleep(0.2)
    assert "has expired" in refused(CV_AGENT, "fetch", *agent.h, did)

    # Revoked in the middle of a fetch: the person revokes after the agent read the first record.
    mid = as_json(CV_AGENT, "request", *agent.h, did, "--part", "read", "--purpose", "w")
    run(MYDATA, "approve", *person.h, mid["request"])
    eventually(lambda: any(r["request"] == mid["request"] and r["status"] == "granted"
                           for r in as_json(CV_AGENT, "inbox", *agent.h)), "the grant arrives")
    identity = Vault.load(Home(agent.home).vault_path).unlock(PASS)
    store = Store.open(Home(agent.home).db_path, identity.store_key)
    calls = []
    try:
        holdings = Holdings(store)
        with ApiClient.from_home(agent.home) as api, ApiClient.from_home(person.home) as owner:
            def invoke(cmd, args):
                calls.append(cmd)
                if len(calls) == 3:
                    owner.revoke(None, agent.info["did"])
                return api.remote_invoke(holdings.link(did), cmd, args)

            with pytest.raises(AgentError, match="revoked the grant while the CV was being read; nothing is kept"):
                fetch(invoke, holdings, did)
            assert calls[:2] == ["/pds/list", "/pds/read"] and len(calls) < 23
            with pytest.raises(AgentError, match="deleted|nothing is held"):
                holdings.copy(did)
    finally:
        store.close()
    assert "revoked the grant" in refused(CV_AGENT, "fetch", *agent.h, did)
