"""A personal node killed mid-run (SIGKILL) and restarted on a new port: the network finds it again through the DHT,
and its data, grants and audit log are intact."""

from __future__ import annotations

import importlib.util
import json
import signal
import sys
import time
from pathlib import Path

import pytest

from node.apiclient import ApiClient
from protocol.errors import ProtocolError

pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location("devnet_script", Path(__file__).resolve().parents[1] / "scripts" / "devnet.py")
devnet = sys.modules.setdefault("devnet_script", importlib.util.module_from_spec(_spec))
if not hasattr(devnet, "NodeProc"):
    _spec.loader.exec_module(devnet)

WAIT = 60  # a deadline against hangs, never a performance claim


def client(node) -> ApiClient:
    return ApiClient(node.info["api"], json.loads((node.home / "api.json").read_text())["token"])


def eventually(fn, what: str):
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return fn()
        except ProtocolError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen within {WAIT} s") from None
            time.sleep(0.2)


def test_killed_node_restarts_and_the_network_recovers(tmp_path):
    seed = devnet.SeedProc("seed", tmp_path / "seed", tmp_path / "seed.log")
    person = devnet.NodeProc("person", tmp_path / "person", tmp_path / "person.log")
    other = devnet.NodeProc("other", tmp_path / "other", tmp_path / "other.log")
    service = devnet.NodeProc("service", tmp_path / "service", tmp_path / "service.log")
    everyone = [person, other, service, seed]
    try:
        seed.start()
        seed.wait_ready()
        for n in (person, other, service):
            n.configure([seed.multiaddr])
            n.cli("init", "--kdf-profile", "interactive")
            n.start()
            n.wait_ready()
        person_did = person.info["did"]
        owner, svc = client(person), client(service)
        owner.put("cv/basics", {"name": "Ada"})
        asked = svc.remote_request(person_did, [{"cmd": "/pds/read", "path": "cv/"}], "Recovery test", "", 30)
        owner.approve(asked["request"])
        first = eventually(lambda: svc.remote_invoke(person_did, "/pds/read", {"path": "cv/basics"}), "first read")
        assert first["value"] == {"name": "Ada"}
        old_port = person.info["listen"].split("/tcp/")[1].split("/")[0]

        # SIGKILL: no clean shutdown, no goodbye to peers. Restart on a new port (listen is /tcp/0).
        person.proc.send_signal(signal.SIGKILL)
        person.proc.wait()
        person.info.clear()
        person.start()
        person.wait_ready()
        assert person.info["listen"].split("/tcp/")[1].split("/")[0] != old_port
        owner = client(person)
        # Data, grants and the audit chain survived the kill.
        assert owner.get("cv/basics")["value"] == {"name": "Ada"}
        assert [g["status"] for g in owner.grants()] == ["active"]
        assert owner.audit_verify()["ok"]
        # The service only knows the old address; it finds the node again by its DID through the DHT.
        again = eventually(lambda: svc.remote_invoke(person_did, "/pds/read", {"path": "cv/basics"}),
                           "a read after the restart")
        assert again == first
        assert client(other).find(person.info["peer id"])["addrs"]
        kinds = [e["kind"] for e in owner.audit()]
        assert kinds.count("invocation.accepted") == 2
    finally:
        for n in everyone:
            n.stop()
