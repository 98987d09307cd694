"""The fault suite's ledger: each fault test says how many times it injected its fault, how many runs ended as
expected, and what it checked; the table is printed at the end of the session and, with RECONCILER_FAULTS_REPORT,
written as Markdown (docs/reliability.md shows the latest one).

RECONCILER_FAULTS=long runs the full counts (`make faults`); the default is a shorter run inside `make test`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

LONG = os.environ.get("RECONCILER_FAULTS") == "long"


def runs(short: int, long: int) -> int:
    return long if LONG else short


@dataclass
class Row:
    test: str
    runs: int = 0
    passed: int = 0
    checked: list[str] = field(default_factory=list)


class Ledger:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}

    def row(self, test: str, checked: str) -> Row:
        row = self.rows.setdefault(test, Row(test))
        if checked not in row.checked:
            row.checked.append(checked)
        return row

    def markdown(self) -> str:
        lines = ["| fault | runs | passed | what was checked |", "|---|---:|---:|---|"]
        lines += [f"| {row.test} | {row.runs} | {row.passed} | {'; '.join(row.checked)} |" for row in self.rows.values()]
        return "\n".join(lines)


_LEDGER = Ledger()


@pytest.fixture
def ledger() -> Ledger:
    return _LEDGER


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _LEDGER.rows:
        return
    terminalreporter.section(f"fault suite ({'long' if LONG else 'short'} run)")
    terminalreporter.write_line(_LEDGER.markdown())
    report = os.environ.get("RECONCILER_FAULTS_REPORT")
    if report:
        Path(report).write_text(f"Mode: {'long' if LONG else 'short'}\n\n{_LEDGER.markdown()}\n")
