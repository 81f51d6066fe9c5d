"""The load test in CI size (50 requesters, each with its own grant, against one node process; few operations):
zero errors and an audit log holding exactly the operations performed. Also the `scripts/bench --quick` smoke runs,
which check the harness works and writes its JSON, never the numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "benchmarks"))

import load  # noqa: E402

pytestmark = pytest.mark.slow


def test_fifty_requesters_with_their_own_grants_no_errors_and_an_exact_audit(tmp_path):
    result = load.run_load(tmp_path, requesters=50, workers=2, ops=4, deadline=240)
    assert result["errors"] == []
    assert result["requesters"] == 50
    assert result["ops"] == 50 * 4
    assert result["audit_ok"]
    assert result["audit_matches"], result["audit_diff"]


@pytest.mark.parametrize("which", ["pds", "store", "tokens"])
def test_bench_quick_writes_its_results(tmp_path, which):
    out = tmp_path / "results.json"
    r = subprocess.run([str(ROOT / "scripts" / "bench"), which, "--quick", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["quick"] is True and set(data["machine"]) >= {"python", "cpus", "platform"}
    rows = data["benchmarks"][which]
    assert rows and all(set(row) >= {"metric", "unit", "value", "ratio", "target"} for row in rows)
    assert all(row["value"]["low"] <= row["value"]["median"] <= row["value"]["high"] for row in rows)
    compared = [row for row in rows if row["ratio"] is not None]
    assert compared and all(row["baseline"] is not None and len(row["ratio"]["samples"]) >= 2 for row in compared)
