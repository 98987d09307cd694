"""The benchmark harness: each scenario's reconciler run and peer run alternate, several repetitions each,
and are reported as median, p99 and the ratio ours/peer (absolute times on shared machines are noisy).

A scenario module exposes `scenarios() -> list[Scenario]`; `bench/run.py` runs them all and writes
`bench/results.json` and `bench/results.md`. Nothing here asserts: benchmarks report, tests check.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Scenario:
    name: str
    unit: str  # "ms", "s", "%", "MB"
    ours: Callable[[], float]  # one repetition of the reconciler, returns the measured value
    peer: Callable[[], float] | None = None  # one repetition of the alternative; None: reference numbers only
    peer_name: str = ""
    target: str = ""  # as the issue states it, e.g. "p99 <= 300 ms" or "ratio <= 1"
    repetitions: int = 10
    setup: Callable[[], None] | None = None  # once, before the first repetition
    teardown: Callable[[], None] | None = None  # once, after the last
    reference: str = ""  # numbers the peer is known for, when it is not run here
    calls: Callable[[], dict[str, int]] | None = None  # the engine API calls of the run just measured, by endpoint


@dataclass
class Result:
    name: str
    unit: str
    peer_name: str
    target: str
    reference: str
    ours: list[float] = field(default_factory=list)
    peer: list[float] = field(default_factory=list)
    ours_calls: list[dict[str, int]] = field(default_factory=list)  # per repetition, by endpoint
    peer_calls: list[dict[str, int]] = field(default_factory=list)

    @property
    def summary(self) -> dict[str, float | None]:
        ours_median, peer_median = _median(self.ours), _median(self.peer)
        return {
            "ours_median": ours_median, "ours_p99": _p99(self.ours),
            "peer_median": peer_median, "peer_p99": _p99(self.peer),
            "ratio": ours_median / peer_median if ours_median is not None and peer_median else None,
            "ours_calls_median": _median([sum(calls.values()) for calls in self.ours_calls]),
            "peer_calls_median": _median([sum(calls.values()) for calls in self.peer_calls]),
        }


def run(scenario: Scenario, log: Callable[[str], None] = print) -> Result:
    result = Result(scenario.name, scenario.unit, scenario.peer_name, scenario.target, scenario.reference)
    if scenario.setup:
        scenario.setup()
    try:
        for repetition in range(scenario.repetitions):  # alternate, so drift on the machine hits both alike
            result.ours.append(scenario.ours())
            if scenario.calls:
                result.ours_calls.append(scenario.calls())
            if scenario.peer is not None:
                result.peer.append(scenario.peer())
                if scenario.calls:
                    result.peer_calls.append(scenario.calls())
            log(f"  {scenario.name} #{repetition + 1}: ours {result.ours[-1]:.4g}"
                + (f", {scenario.peer_name} {result.peer[-1]:.4g}" if scenario.peer else "") + f" {scenario.unit}"
                + "".join(f"; {who} {sum(calls[-1].values())} engine calls {dict(sorted(calls[-1].items()))}"
                          for who, calls in (("ours", result.ours_calls), ("peer", result.peer_calls)) if calls))
    finally:
        if scenario.teardown:
            scenario.teardown()
    return result


def write(results: list[Result], directory: Path) -> str:
    """results.json (every sample) and results.md (docs/performance.md's table); returns the table."""
    rows = [{**asdict(result), **result.summary} for result in results]
    (directory / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| scenario | reconciler median / p99 | peer | peer median / p99 | ratio | engine calls (ours / peer) | target |",
             "|---|---|---|---|---|---|---|"]
    for result in results:
        summary = result.summary
        peer = f"{_fmt(summary['peer_median'])} / {_fmt(summary['peer_p99'])} {result.unit}" if result.peer else result.reference or "-"
        ratio = f"{summary['ratio']:.2f}" if summary["ratio"] is not None else "-"
        calls = f"{_fmt(summary['ours_calls_median'])} / {_fmt(summary['peer_calls_median'])}" if result.ours_calls else "-"
        lines.append(f"| {result.name} | {_fmt(summary['ours_median'])} / {_fmt(summary['ours_p99'])} {result.unit} | "
                     f"{result.peer_name or '-'} | {peer} | {ratio} | {calls} | {result.target} |")
    table = "\n".join(lines) + "\n"
    (directory / "results.md").write_text(table)
    return table


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _p99(values: list[float]) -> float | None:
    """Nearest-rank p99: with fewer than 100 samples, the largest one."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.99 * len(ordered) + 0.5) - 1))]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
