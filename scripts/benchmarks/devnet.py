"""`scripts/bench devnet [--nodes N]`: a network of node processes on 127.0.0.1 measured as a whole.

Reports the time for N nodes to start and join through one seed node, the time to find a node by its PeerID alone
(a fresh DHT lookup), the consent round trip (request -> owner approves -> first verified read) and the peak memory
of each node process. The nodes are driven through their control APIs, so CLI start-up is not in the figures.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import Row, plain  # noqa: E402

# The devnet script's process handling, loaded by path: this module has the same name.
_spec = importlib.util.spec_from_file_location("devnet_script", Path(__file__).resolve().parents[1] / "devnet.py")
_devnet = sys.modules["devnet_script"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_devnet)
NodeProc, SeedProc = _devnet.NodeProc, _devnet.SeedProc

from node.apiclient import ApiClient  # noqa: E402
from protocol.errors import ProtocolError  # noqa: E402

GRANT_WAIT = 60.0


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _round_trip(service: ApiClient, owner: ApiClient, owner_did: str) -> float:
    start = time.perf_counter()
    asked = service.remote_request(owner_did, [{"cmd": "/pds/read", "path": "cv/"}], "Benchmark", "", 1)
    owner.approve(asked["request"])
    deadline = time.monotonic() + GRANT_WAIT
    while True:  # the grant arrives by notify; until then the service holds nothing to present
        try:
            service.remote_invoke(owner_did, "/pds/read", {"path": "cv/basics"})
            return time.perf_counter() - start
        except ProtocolError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def run(quick: bool) -> list[Row]:
    count = int(os.environ.get("MYDATA_BENCH_NODES", 3 if quick else 10))
    samples = min(count, 5 if quick else 20)
    base = Path(tempfile.mkdtemp(prefix="mydata-bench-devnet-"))
    seed = SeedProc("seed", base / "seed", base / "seed.log")
    people = [NodeProc(f"p{i}", base / f"p{i}", base / f"p{i}.log") for i in range(count)]
    service = NodeProc("service", base / "service", base / "service.log")
    nodes = [*people, service]
    try:
        seed.start()
        seed.wait_ready()
        for n in nodes:
            n.configure([seed.multiaddr])
            n.cli("init", "--kdf-profile", "interactive")
        people[0].cli("put", "cv/basics", stdin='{"name": "Bench"}')
        for p in people[1:]:
            p.cli("put", "cv/basics", stdin='{"name": "Bench"}')
        started = time.perf_counter()
        for n in nodes:  # staggered, as the devnet does: many Python start-ups at once starve two cores
            n.start()
            n.wait_ready()
        bootstrap_s = time.perf_counter() - started
        clients = {n.name: ApiClient(n.info["api"], _token(n)) for n in nodes}
        svc = clients["service"]
        rng = random.Random(1)
        find_s = []
        for p in rng.sample(people, samples):
            t = time.perf_counter()
            svc.find(p.info["peer id"])
            find_s.append(time.perf_counter() - t)
        rtt = [_round_trip(svc, clients[p.name], p.info["did"]) for p in rng.sample(people, samples)]
        memory = [n.peak_rss_mib() for n in [seed, *nodes]]
        return [
            plain(f"start {count + 1} nodes, staggered, joined (total)", [bootstrap_s], "s"),
            plain("start one node (mean of the above)", [bootstrap_s / (count + 1)], "s"),
            plain("find a node by PeerID (fresh DHT lookup)", find_s, "s"),
            plain("consent round trip p50 (request, approve, first read)", [statistics.median(rtt)], "s"),
            plain("consent round trip p95", [_percentile(rtt, 0.95)], "s"),
            plain("peak memory per node process", memory, "MiB"),
        ]
    finally:
        for n in [*nodes, seed]:
            n.stop()
        shutil.rmtree(base, ignore_errors=True)


def _token(node: NodeProc) -> str:
    return json.loads((node.home / "api.json").read_text())["token"]
