"""`scripts/bench` entry point: pick benchmarks, run them, print tables, write JSON results.

Each benchmark is a module in this folder with `run(quick: bool) -> list[Row]` (async `run` is awaited under trio).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import format_table  # noqa: E402

BENCHMARKS = {
    "store": "encrypted store put/get vs plain SQLite with the same durability",
    "tokens": "UCAN chain validations vs bare Ed25519 verifies",
    "pds": "consent-verified /pds/read over a reused stream vs a bare libp2p exchange",
    "devnet": "multi-node network: bootstrap, find, consent round trip, memory",
    "load": "50 requesters with their own grants reading and writing one node process at once",
}


def _run_one(name: str, quick: bool):
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise SystemExit(f"scripts/bench: the '{name}' benchmark is not written yet.") from None
        raise
    if inspect.iscoroutinefunction(module.run):
        import trio

        return trio.run(module.run, quick)
    return module.run(quick)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description="Measure mydata-node against baselines.")
    parser.add_argument("which", choices=[*BENCHMARKS, "all"], help="benchmark to run")
    parser.add_argument("--quick", action="store_true", help="few repetitions: checks the harness, not the numbers")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--nodes", type=int, default=None, help="devnet: number of personal nodes")
    args = parser.parse_args(argv)
    if args.nodes is not None:
        os.environ["MYDATA_BENCH_NODES"] = str(args.nodes)

    names = list(BENCHMARKS) if args.which == "all" else [args.which]
    results = {
        "started": int(time.time()),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "quick": args.quick,
        "benchmarks": {},
    }
    for name in names:
        try:
            rows = _run_one(name, args.quick)
        except SystemExit as missing:
            if args.which != "all":
                raise
            print(f"{missing}\n")
            continue
        print(format_table(f"{name}: {BENCHMARKS[name]}", rows))
        print()
        results["benchmarks"][name] = [r.to_json() for r in rows]
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
        print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
