"""The reconciler's clock: one anchor per boot, shared through the state directory, and times taken from the
system clock moved onto it."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest

from reconciler.observe import clock
from reconciler.observe.host import boot_id


@pytest.fixture(autouse=True)
def own_anchor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clock, "_anchor", clock._anchor)  # each test's adopt() is undone after it


def test_the_first_reconciler_of_a_boot_takes_the_anchor_and_later_ones_share_it(tmp_path: Path) -> None:
    clock.adopt(tmp_path)
    kept = json.loads((tmp_path / clock.ANCHOR_FILE).read_text())
    assert kept["bootId"] == boot_id() and (tmp_path / clock.ANCHOR_FILE).stat().st_mode & 0o777 == 0o600
    (tmp_path / clock.ANCHOR_FILE).write_text(json.dumps({"bootId": boot_id(), "anchor": kept["anchor"] - 3600.0}))
    clock.adopt(tmp_path)  # as a daemon started after the system clock was stepped an hour forward would
    assert abs(clock.step() - 3600.0) < 1.0
    assert abs((clock.now() - clock.from_system(clock.now() + timedelta(hours=1))).total_seconds()) < 1.0


def test_another_boots_anchor_or_a_foreign_file_is_replaced(tmp_path: Path) -> None:
    for foreign in (json.dumps({"bootId": "another-boot", "anchor": 12.5}), "not json", "[1, 2]"):
        (tmp_path / clock.ANCHOR_FILE).write_text(foreign)
        clock.adopt(tmp_path)
        assert abs(clock.step()) < 1.0
        assert json.loads((tmp_path / clock.ANCHOR_FILE).read_text())["bootId"] == boot_id()


def test_a_readonly_command_writes_no_anchor(tmp_path: Path) -> None:
    clock.adopt(tmp_path, readonly=True)
    assert not (tmp_path / clock.ANCHOR_FILE).exists() and abs(clock.now().timestamp() - time.time()) < 1.0


def test_a_system_time_moves_onto_this_clock_the_same_on_every_call() -> None:
    """Docker's timestamps are converted on every pass: a conversion that varied with when it ran (the two clocks
    are read one after the other) rewrote the status for nothing (and, when exits were told by it, made one exit a
    new exit on each pass, its back-off doubled each time)."""
    moment = clock.now()
    converted = set()
    for _ in range(200):
        converted.add(clock.from_system(moment))
        time.sleep(0.005)
    assert len(converted) == 1, sorted(converted)
