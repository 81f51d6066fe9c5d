"""`scripts/bench load`: many requesters, each with its own grant, reading and writing one owner node (a separate
`mydata run` process) concurrently for a fixed number of operations; throughput, latency, errors, the owner's peak
memory, and whether the owner's audit log holds exactly the operations performed.

The requesters are libp2p hosts in a few worker processes (this file run as `load.py worker`), not one process
each: 50 Python start-ups would cost more CPU than the load on a two-core machine, and what is tested is the
owner's side (50 authenticated connections, 50 reused streams, 50 grants, interleaved fsynced writes). Two
workers rather than one so the requesters do not share one event loop with each other, which would serialise
them more than the owner does. Everything is bounded by an operation count and a wall-clock deadline, on
127.0.0.1 only.

Protocol between coordinator and worker, one JSON object per line on the worker's stdout:
  {"requested": [...request ids]}  ->  the coordinator approves each through the owner's control API
  {"ready": n}                     ->  every requester holds its grant; the worker waits for "go" on stdin
  {"done": {...}}                  <-  per requester: ops done by kind, latencies, errors, start/end times
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

REQUESTERS = 50
WORKERS = 2
READ, WRITE = "/pds/read", "/pds/write"


# ---------------------------------------------------------------- worker: a group of requester hosts


async def _worker(link_text: str, first: int, count: int, ops: int, base: Path, deadline: float) -> None:
    import trio

    from consent.request import Scope
    from node.crypto import random_key
    from node.handlers import Handlers
    from node.net import make_host, running_host, serve
    from node.requester import NOTIFY_PROTOCOL, Requester
    from node.store import Store
    from protocol.errors import ProtocolError
    from protocol.links import parse_link
    import nacl.signing

    link = parse_link(link_text)
    stores = [Store.open(base / f"requester-{first + i}.db", random_key()) for i in range(count)]
    hosts = [make_host(os.urandom(32)) for _ in range(count)]
    out = {"requesters": {}}

    def emit(obj: dict) -> None:
        print(json.dumps(obj), flush=True)

    async def one(i: int, requester: Requester, request_id: str, go: trio.Event, done) -> None:
        tag = f"r{first + i:03d}"
        # Hold the grant: pushed by notify, or fetched by polling if the push is late.
        while requester.find_delegation(link.did, WRITE, f"load/{tag}/x") is None:
            with trio.move_on_after(2):
                await requester.wait_update()
            if requester.find_delegation(link.did, WRITE, f"load/{tag}/x") is None:
                await requester.status(link, request_id)
        done()
        await go.wait()
        counts, latencies, errors = Counter(), [], []
        start = time.time()
        for j in range(ops):
            cmd = WRITE if j % 2 == 0 else READ
            path = f"load/{tag}/{(j // 2) % 4}"
            args = {"path": path, "value": {"by": tag, "op": j, "note": "load test " * 8}} if cmd == WRITE else {"path": path}
            t = time.perf_counter()
            try:
                await requester.invoke(link, cmd, args)
            except ProtocolError as err:
                errors.append(f"{cmd}: {err.code.value}: {err.message}")
                continue
            latencies.append(time.perf_counter() - t)
            counts[cmd] += 1
        out["requesters"][requester.did] = {"tag": tag, "counts": dict(counts), "latencies": latencies,
                                            "errors": errors, "start": start, "end": time.time()}

    try:
        with trio.fail_after(deadline):
            async with trio.open_nursery() as nursery:
                requesters = []
                for host, store in zip(hosts, stores):
                    await nursery.start(_run_host, host, running_host)
                    key = nacl.signing.SigningKey(host.get_private_key().to_bytes())
                    r = Requester(host=host, signing_key=key, store=store,
                                  listen_addrs=lambda h=host: [str(a).split("/p2p/")[0] for a in h.get_addrs()])
                    serve(host, NOTIFY_PROTOCOL, Handlers(None, r).notify)
                    requesters.append(r)

                async def ask(i: int, r: Requester, ids: list) -> None:
                    tag = f"r{first + i:03d}"
                    asked = await r.request(link, [Scope(READ, "load/"), Scope(WRITE, f"load/{tag}/")],
                                            "Load test", description=f"requester {tag}", days=1)
                    ids[i] = asked["request"]

                ids = [None] * count
                async with trio.open_nursery() as asking:
                    for i, r in enumerate(requesters):
                        asking.start_soon(ask, i, r, ids)
                emit({"requested": ids})

                go, ready = trio.Event(), [0]

                def done() -> None:
                    ready[0] += 1
                    if ready[0] == count:
                        emit({"ready": count})

                async def wait_go() -> None:
                    line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
                    if line.strip() == "go":
                        go.set()

                async with trio.open_nursery() as working:
                    working.start_soon(wait_go)
                    for i, r in enumerate(requesters):
                        working.start_soon(one, i, r, ids[i], go, done)
                for r in requesters:
                    await r.aclose()
                nursery.cancel_scope.cancel()
    finally:
        for s in stores:
            s.close()
    emit({"done": out})


async def _run_host(host, running_host, task_status) -> None:
    import trio

    async with running_host(host, ["/ip4/127.0.0.1/tcp/0"]):
        task_status.started()
        await trio.sleep_forever()


def worker_main(argv: list[str]) -> int:
    import trio

    p = argparse.ArgumentParser(prog="load.py worker")
    p.add_argument("--link", required=True)
    p.add_argument("--first", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--ops", type=int, required=True)
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--deadline", type=float, required=True)
    a = p.parse_args(argv)
    from node.net import tame_libp2p_logging

    tame_libp2p_logging()
    trio.run(_worker, a.link, a.first, a.count, a.ops, a.dir, a.deadline)
    return 0


# ---------------------------------------------------------------- coordinator


class _Worker:
    """A worker process whose stdout lines are read by a thread, so every wait has a deadline."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, __file__, "worker", *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, key: str, until: float):
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, until - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"a load worker did not report '{key}' in time") from None
            if line is None:
                raise RuntimeError(f"a load worker exited before '{key}': see {self.log.name}")
            msg = json.loads(line)
            if key in msg:
                return msg[key]

    def send(self, text: str) -> None:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(20)
        self.log.close()


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def run_load(base: Path, *, requesters: int = REQUESTERS, workers: int = WORKERS, ops: int = 20,
             deadline: float = 300.0) -> dict:
    """Run the load against a fresh owner node process under `base`; the figures and the audit comparison."""
    from procs import NodeProcess

    until = time.monotonic() + deadline
    owner = NodeProcess(base / "owner").init()
    group = [(w * requesters // workers, (w + 1) * requesters // workers) for w in range(workers)]
    procs: list[_Worker] = []
    try:
        owner.start()
        link = str(owner.link)
        for w, (lo, hi) in enumerate(group):
            procs.append(_Worker(["--link", link, "--first", str(lo), "--count", str(hi - lo), "--ops", str(ops),
                                  "--dir", str(base), "--deadline", str(deadline)], base / f"worker-{w}.log"))
        with owner.api() as api:
            for w in procs:
                for request_id in w.expect("requested", until):
                    api.approve(request_id)
            for w in procs:
                w.expect("ready", until)
            for w in procs:
                w.send("go")
            done = {}
            for w in procs:
                done |= w.expect("done", until)["requesters"]
            entries = api.audit(0, None)
            verified = api.audit_verify()
        rss = owner.peak_rss_mib()
    finally:
        for w in procs:
            w.close()
        owner.stop()

    performed = Counter()
    for did, r in done.items():
        for cmd, n in r["counts"].items():
            performed[(did, "invocation.accepted", cmd)] += n
    audited = Counter((e["fields"].get("requester"), e["kind"], e["fields"].get("cmd"))
                      for e in entries if e["kind"].startswith("invocation."))
    latencies = [x for r in done.values() for x in r["latencies"]]
    errors = [e for r in done.values() for e in r["errors"]]
    span = max(r["end"] for r in done.values()) - min(r["start"] for r in done.values())
    total = sum(performed.values())
    return {
        "requesters": len(done),
        "workers": workers,
        "ops": total,
        "errors": errors,
        "throughput": total / span if span > 0 else float("nan"),
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "owner_peak_rss_mib": rss,
        "audit_ok": verified["ok"],
        "audit_matches": audited == performed,
        "audit_diff": {f"{k}": (audited.get(k, 0), performed.get(k, 0))
                       for k in set(audited) | set(performed) if audited.get(k, 0) != performed.get(k, 0)},
    }


def run(quick: bool):
    from harness import plain

    ops = int(os.environ.get("MYDATA_BENCH_LOAD_OPS", 4 if quick else 40))
    base = Path(tempfile.mkdtemp(prefix="mydata-bench-load-"))
    try:
        r = run_load(base, ops=ops)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if r["errors"]:
        print(f"load: {len(r['errors'])} errors, first: {r['errors'][0]}")
    if not r["audit_matches"]:
        print(f"load: the audit log does not match the operations performed: {r['audit_diff']}")
    return [
        plain(f"{r['requesters']} requesters x {ops} ops ({r['workers']} worker processes): throughput",
              [r["throughput"]], "ops/s"),
        plain("latency p50", [r["p50_ms"]], "ms"),
        plain("latency p99", [r["p99_ms"]], "ms"),
        plain("errors (target 0)", [float(len(r["errors"]))], "count"),
        plain("owner node peak RSS", [r["owner_peak_rss_mib"]], "MiB"),
        plain("audit log == operations performed (1 = yes)", [float(r["audit_matches"] and r["audit_ok"])], "bool"),
    ]


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        raise SystemExit(worker_main(sys.argv[2:]))
    raise SystemExit("usage: scripts/bench load [--quick]  (this file runs directly only as a load worker)")
