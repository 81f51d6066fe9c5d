"""The benchmark harness computes ratios from interleaved pairs and formats them; numbers themselves are not tested."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "benchmarks"))

from harness import Stat, acompare, compare, format_table  # noqa: E402


def _spin(ops: int, cost: int) -> None:
    total = 0
    for i in range(ops * cost):
        total += i


def test_compare_reports_baseline_subject_and_ratio():
    rows = compare("slow", lambda n: _spin(n, 200), "fast", lambda n: _spin(n, 20), ops=50, repeat=3, target=0.5)
    baseline, subject = rows
    assert baseline.metric == "fast" and subject.baseline_metric == "fast"
    assert len(subject.ratio.samples) == 3
    assert subject.ratio.median < 1.0  # ten times the work cannot be faster than the baseline
    assert subject.meets_target is False
    assert "MISS" in format_table("t", rows)


async def test_acompare_runs_under_trio():
    async def work(n):
        _spin(n, 10)

    rows = await acompare("a", work, "b", work, ops=10, repeat=2)
    assert rows[1].ratio is not None and len(rows[1].ratio.samples) == 2


def test_stat_of_samples():
    s = Stat.of([3.0, 1.0, 2.0])
    assert (s.median, s.low, s.high) == (2.0, 1.0, 3.0)
