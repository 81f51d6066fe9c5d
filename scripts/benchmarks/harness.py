"""Measurement core shared by every benchmark: interleaved subject/baseline runs, per-pair ratios, tables.

Machines here are shared and noisy, so a figure is never a bare rate: each repetition runs the baseline and the
subject back to back (alternating which goes first), and the reported ratio is the median of the per-pair ratios,
with the lowest and highest as its spread. Drift in machine load then hits both sides of each pair alike.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Awaitable, Callable


@dataclass
class Stat:
    """Operations per second over repetitions."""

    median: float
    low: float
    high: float
    samples: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, samples: list[float]) -> "Stat":
        return cls(statistics.median(samples), min(samples), max(samples), list(samples))


@dataclass
class Row:
    """One line of a benchmark table. `ratio` is subject/baseline; `target` the minimum the project aims for."""

    metric: str
    unit: str
    value: Stat
    baseline_metric: str | None = None
    baseline: Stat | None = None
    ratio: Stat | None = None
    target: float | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def meets_target(self) -> bool | None:
        if self.target is None or self.ratio is None:
            return None
        return self.ratio.median >= self.target


def _rate(fn: Callable[[int], object], ops: int) -> float:
    start = time.perf_counter()
    fn(ops)
    return ops / (time.perf_counter() - start)


async def _arate(fn: Callable[[int], Awaitable[object]], ops: int) -> float:
    start = time.perf_counter()
    await fn(ops)
    return ops / (time.perf_counter() - start)


def _pairs_to_rows(metric, baseline_metric, unit, subject, baseline, target) -> list[Row]:
    ratios = [s / b for s, b in zip(subject, baseline)]
    return [
        Row(baseline_metric, unit, Stat.of(baseline)),
        Row(metric, unit, Stat.of(subject), baseline_metric, Stat.of(baseline), Stat.of(ratios), target),
    ]


def compare(
    metric: str,
    subject: Callable[[int], object],
    baseline_metric: str,
    baseline: Callable[[int], object],
    *,
    ops: int,
    repeat: int,
    unit: str = "ops/s",
    target: float | None = None,
    warmup: bool = True,
) -> list[Row]:
    """Run `subject(ops)` and `baseline(ops)` interleaved `repeat` times; rows for both and their ratio."""
    if warmup:
        subject(max(1, ops // 10))
        baseline(max(1, ops // 10))
    subj: list[float] = []
    base: list[float] = []
    for i in range(repeat):
        if i % 2 == 0:
            base.append(_rate(baseline, ops))
            subj.append(_rate(subject, ops))
        else:
            subj.append(_rate(subject, ops))
            base.append(_rate(baseline, ops))
    return _pairs_to_rows(metric, baseline_metric, unit, subj, base, target)


async def acompare(
    metric: str,
    subject: Callable[[int], Awaitable[object]],
    baseline_metric: str,
    baseline: Callable[[int], Awaitable[object]],
    *,
    ops: int,
    repeat: int,
    unit: str = "ops/s",
    target: float | None = None,
    warmup: bool = True,
) -> list[Row]:
    """The async twin of `compare`, for exchanges over trio and libp2p."""
    if warmup:
        await subject(max(1, ops // 10))
        await baseline(max(1, ops // 10))
    subj: list[float] = []
    base: list[float] = []
    for i in range(repeat):
        if i % 2 == 0:
            base.append(await _arate(baseline, ops))
            subj.append(await _arate(subject, ops))
        else:
            subj.append(await _arate(subject, ops))
            base.append(await _arate(baseline, ops))
    return _pairs_to_rows(metric, baseline_metric, unit, subj, base, target)


def plain(metric: str, samples: list[float], unit: str) -> Row:
    """A figure with no baseline (latencies, memory, counts)."""
    return Row(metric, unit, Stat.of(samples))


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def format_table(title: str, rows: list[Row]) -> str:
    lines = [title, "-" * len(title)]
    header = f"{'metric':<54} {'median':>12} {'spread':>21} {'ratio':>16} {'target':>8}"
    lines.append(header)
    for r in rows:
        spread = f"{_fmt(r.value.low)}–{_fmt(r.value.high)}"
        ratio = target = ""
        if r.ratio is not None:
            ratio = f"{r.ratio.median:.0%} ({r.ratio.low:.0%}–{r.ratio.high:.0%})"
        if r.target is not None:
            target = f">={r.target:.0%}" + (" ok" if r.meets_target else " MISS")
        lines.append(f"{r.metric:<54} {_fmt(r.value.median):>12} {spread:>21} {ratio:>16} {target:>8}  {r.unit}")
    return "\n".join(lines)
