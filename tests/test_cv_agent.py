"""cv_agent without the network: held copies in a real encrypted store (retention sweep with an injected clock,
deletion on revocation, recorded), the HTML rendering (escaping hostile strings, invalid JSON Resume with warnings,
signed certificates), and `mydata get` telling a verified certificate from a forged one."""

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import nacl.signing
import pytest

from consent.certificate import CERTIFICATE_TAG, ENTRY_FIELD, certificate_entry, sign_certificate
from consent.envelope import seal_envelope
from cv_agent.agent import describe_request
from cv_agent.holdings import DAY, AgentError, Holdings, candidate_key
from cv_agent.render import render_resume
from node.resume import export_resume, import_resume
from protocol.ids import did_from_public_key
from protocol.paths import validate_path

SAMPLE = json.loads((Path(__file__).parent / "data" / "resume.json").read_text())
PERSON = "did:key:z6MkeUV2o6c1UsQQcj7J8wjj4G1vx9kUhBizKvbz4vaGfjEr"
AGENT = nacl.signing.SigningKey(bytes(range(32)))


class Clock:
    def __init__(self, now=1_800_000_000):
        self.now = now

    def __call__(self):
        return self.now


def grant(days=10, delegations=("bafy-list", "bafy-read")):
    return {"requests": ["bafy-request"], "delegations": list(delegations), "retention_days": days}


def records_of(doc):
    return [{"path": p, "value": v, "version": 1} for p, v in import_resume(doc).items()]


@pytest.fixture
def holdings(store):
    return Holdings(store, Clock())


def test_candidate_keys_are_store_paths():
    key = candidate_key(PERSON)
    assert validate_path(f"candidates/{key}") and key == candidate_key(PERSON) and key != candidate_key(PERSON + "x")


def test_keep_and_read_back_the_copy(holdings):
    held = holdings.keep(PERSON, records_of(SAMPLE), grant(days=10))
    assert held["retention_until"] == held["fetched_at"] + 10 * DAY and held["records"] == len(import_resume(SAMPLE))
    assert export_resume(holdings.copy(PERSON)) == SAMPLE
    (person,) = holdings.candidates()
    assert person["did"] == PERSON and person["held"]["delegations"] == ["bafy-list", "bafy-read"]


def test_nothing_held_yet(holdings):
    with pytest.raises(AgentError, match="nothing is held"):
        holdings.copy(PERSON)
    with pytest.raises(AgentError, match="no consent was asked"):
        holdings.read_grant(PERSON)


def test_retention_sweep_with_an_injected_clock(holdings, store):
    holdings.keep(PERSON, records_of(SAMPLE), grant(days=2))
    other = "did:key:z6MkvpHBXb5KaBTbpQLqsuCqbL7SFhpz73RHpLTkWSbuRMkw"
    holdings.keep(other, records_of({"basics": {"name": "B"}}), grant(days=5))
    holdings.clock.now += 2 * DAY - 1
    assert holdings.sweep() == []
    holdings.clock.now += 1
    assert holdings.sweep() == [PERSON]
    assert store.list(f"copies/{candidate_key(PERSON)}/") == []  # every record of the copy is gone
    with pytest.raises(AgentError, match="deleted on .*retention period ended"):
        holdings.copy(PERSON)
    assert holdings.copy(other)["cv/basics"] == {"name": "B"}
    holdings.clock.now += 3 * DAY
    assert holdings.sweep() == [other] and holdings.sweep() == []
    deleted = {p["did"]: p["deleted"] for p in holdings.candidates()}
    assert deleted[PERSON]["reason"].startswith("retention period ended") and deleted[PERSON]["records"] > 0


def test_revocation_deletes_the_copy_held_under_it_and_records_it(holdings):
    holdings.keep(PERSON, records_of(SAMPLE), grant())
    assert holdings.on_revoked(PERSON, ["bafy-unrelated"]) is False
    assert holdings.on_revoked("did:key:other", ["bafy-read"]) is False
    assert holdings.copy(PERSON)
    assert holdings.on_revoked(PERSON, ["bafy-read"]) is True
    with pytest.raises(AgentError, match="deleted on .*consent revoked"):
        holdings.copy(PERSON)
    (person,) = holdings.candidates()
    assert person["held"] is None and person["deleted"]["delegations"] == ["bafy-list", "bafy-read"]
    # A new fetch under a new grant holds again; the history keeps both events.
    holdings.keep(PERSON, records_of(SAMPLE), grant(delegations=["bafy-new"]))
    assert holdings.copy(PERSON)
    record = holdings.store.get(f"candidates/{candidate_key(PERSON)}").value
    assert [e["event"] for e in record["history"]] == ["fetched", "deleted", "fetched"]


def test_a_refetch_replaces_the_copy(holdings):
    holdings.keep(PERSON, records_of(SAMPLE), grant())
    holdings.keep(PERSON, records_of({"basics": {"name": "Shorter"}}), grant())
    assert export_resume(holdings.copy(PERSON)) == {"basics": {"name": "Shorter"}}


def test_request_description_names_both_parts():
    text = describe_request("match you with jobs", 14, ("list:cv/", "read:cv/", "write:cv/certificates/"))
    assert "list:cv/" in text and "read:cv/" in text and "write:cv/certificates/" in text and "14 days" in text
    assert "approve the read part and deny the write part" in text
    assert "write:" not in describe_request("x", 1, ("list:cv/", "read:cv/"))


# ---------------------------------------------------------------- rendering


def test_renders_the_sample_cleanly():
    html, warnings = render_resume(SAMPLE)
    assert warnings == []
    assert "<h1>Linnéa Åkesson</h1>" in html and "Nordlys Data AB" in html and "@media print" in html
    assert "Chalmers tekniska högskola" in html and "Certified Kubernetes Administrator" in html


HOSTILE = '<script>alert("x")</script>'
QUOTES = '" onmouseover="alert(1)" x="'


def test_hostile_strings_are_escaped():
    doc = {
        "basics": {"name": HOSTILE, "label": QUOTES, "url": 'javascript:alert(1)', "email": 'a@b" onclick="x',
                   "summary": "</p><img src=x onerror=alert(1)>",
                   "profiles": [{"network": HOSTILE, "username": QUOTES, "url": 'https://x"><script>y</script>'}]},
        "work": [{"name": HOSTILE, "position": QUOTES, "url": "JAVASCRIPT:alert(2)", "highlights": [HOSTILE]}],
        "skills": [{"name": "{{ 7*7 }}", "keywords": [QUOTES]}],
        "certificates": [{"name": HOSTILE, "issuer": QUOTES, "url": "data:text/html,<script>x</script>"}],
    }
    html, _ = render_resume(doc)
    assert "<script>" not in html.lower() and "<img" not in html
    assert 'onmouseover="' not in html and 'onclick="' not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert 'href="javascript' not in html.lower() and 'href="data:' not in html
    assert "{{ 7*7 }}" in html  # data is never evaluated as a template
    # Every attribute value stays closed: quotes inside data are entities.
    assert 'href="https://x&#34;&gt;&lt;script&gt;y&lt;/script&gt;"' in html


def test_invalid_json_resume_renders_as_far_as_possible_with_warnings():
    doc = {"basics": "just text", "work": [42, {"name": {"nested": True}, "position": "Engineer",
                                               "highlights": "not a list"}],
           "skills": {"name": "x"}, "education": [{"institution": "KTH", "courses": [1, None, {"a": 1}]}]}
    html, warnings = render_resume(doc)
    assert "Engineer" in html and "KTH" in html and "{&#34;nested&#34;: true}" in html
    assert any("basics is not an object" in w for w in warnings)
    assert any("work[1] is not an object" in w for w in warnings)
    assert any("skills is not a list" in w for w in warnings)
    assert any("work[2].highlights is not a list" in w for w in warnings)
    for doc in (None, [], "text", 5, {"work": None}, {}):
        html, warnings = render_resume(doc)
        assert html.startswith("<!DOCTYPE html>")


def test_certificates_show_their_verified_issuer_or_not():
    agent_did = did_from_public_key(bytes(AGENT.verify_key))
    cert = sign_certificate(AGENT, sub=PERSON, employer="Acme AB", role="Engineer", start="2021", end="2024",
                            iat=1_700_000_000)
    good = certificate_entry(cert)
    html, _ = render_resume({"certificates": [good]}, subject=PERSON)
    assert f"Signed by {agent_did} (verified)" in html
    forged = good | {"issuer": "Google"}
    html, _ = render_resume({"certificates": [forged]}, subject=PERSON)
    assert "NOT verified" in html and "(verified)" not in html


# ---------------------------------------------------------------- `mydata get` shows whether a certificate holds

MYDATA = Path(sys.executable).parent / "mydata"


@pytest.mark.slow
def test_mydata_get_verifies_certificates(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYDATA_")}
    env |= {"MYDATA_PASSPHRASE": "pw", "MYDATA_HOME": str(tmp_path / "home")}

    def mydata(*args, stdin=None):
        r = subprocess.run([str(MYDATA), *args], input=stdin, capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        return r

    owner = json.loads(mydata("init", "--kdf-profile", "interactive", "--json").stdout)["did"]
    agent_did = did_from_public_key(bytes(AGENT.verify_key))
    good = certificate_entry(sign_certificate(AGENT, sub=owner, employer="Acme AB", role="Engineer",
                                              start="2021-03-01", end="2024-06-30", iat=1_700_000_000))
    mallory = nacl.signing.SigningKey(bytes(range(5, 37)))
    cases = {
        "good": good,
        "edited": good | {"issuer": "Google"},
        "other-signer": certificate_entry(sign_certificate(mallory, sub=owner, employer="Acme AB", role="CEO",
                                                           start="2021", end="2024", iat=1)),
        "not-about-me": certificate_entry(sign_certificate(AGENT, sub=agent_did, employer="Acme AB", role="x",
                                                           start="2021", end="2024", iat=1)),
        "garbage": good | {ENTRY_FIELD: "bm90IGEgY2VydGlmaWNhdGU"},
    }
    # A forgery proper: Mallory's envelope with the agent's DID as issuer.
    raw = seal_envelope(mallory, CERTIFICATE_TAG, {"iss": agent_did, "sub": owner, "employer": "Acme AB",
                                                   "role": "Engineer", "from": "2021-03-01", "to": "2024-06-30",
                                                   "iat": 1, "nonce": bytes(16)})
    cases["forged"] = good | {ENTRY_FIELD: base64.urlsafe_b64encode(raw).decode().rstrip("=")}
    for name, value in cases.items():
        mydata("put", f"cv/certificates/{name}", stdin=json.dumps(value))

    r = mydata("get", "cv/certificates/good")
    assert r.stderr.strip() == f"certificate signed by {agent_did} (verified)" and json.loads(r.stdout) == good
    assert json.loads(mydata("get", "cv/certificates/good", "--json").stdout)["certificate"]["verified"] is True
    # Someone else's genuine signature verifies, and names that someone, not the agent.
    other = json.loads(mydata("get", "cv/certificates/other-signer", "--json").stdout)["certificate"]
    assert other["verified"] is True and other["issuer"] == did_from_public_key(bytes(mallory.verify_key))
    for name in ("edited", "not-about-me", "garbage", "forged"):
        r = mydata("get", f"cv/certificates/{name}")
        assert "NOT verified" in r.stderr and "(verified)" not in r.stderr, name
        cert = json.loads(mydata("get", f"cv/certificates/{name}", "--json").stdout)["certificate"]
        assert cert["verified"] is False and cert["reason"], name
    forged = json.loads(mydata("get", "cv/certificates/forged", "--json").stdout)["certificate"]
    assert forged["issuer"] == agent_did  # what it claims, shown as not verified
    mydata("put", "cv/basics", stdin='{"name": "Ada"}')
    r = mydata("get", "cv/basics", "--json")
    assert "certificate" not in json.loads(r.stdout) and r.stderr == ""


# ---------------------------------------------------------------- the running agent sweeps on its own


async def test_running_agent_sweeps_out_data_past_retention(tmp_path):
    import trio

    from cv_agent.agent import run_agent
    from node.config import Config
    from node.home import Home
    from node.vault import Vault

    home = Home.resolve(tmp_path / "agent")
    home.create()
    vault, identity = Vault.create("pw", profile="interactive")
    vault.save(home.vault_path)
    clock = Clock()
    async with trio.open_nursery() as nursery:
        async def start(task_status):
            await run_agent(home, identity, Config(), listen=["/ip4/127.0.0.1/tcp/0"], api_port=0, provides=(),
                            handle_signals=False, clock=clock, sweep_seconds=0.05,
                            on_ready=lambda node, url: task_status.started(node))

        with trio.fail_after(30):
            node = await nursery.start(start)
        holdings = Holdings(node.store, clock)
        holdings.keep(PERSON, records_of(SAMPLE), grant(days=1))
        await trio.sleep(0.2)
        assert holdings.copy(PERSON)  # not due yet: the sweep runs but keeps it
        clock.now += DAY
        with trio.fail_after(30):
            while holdings.candidates()[0]["held"] is not None:
                await trio.sleep(0.05)
        assert holdings.candidates()[0]["deleted"]["reason"].startswith("retention period ended")
        nursery.cancel_scope.cancel()
