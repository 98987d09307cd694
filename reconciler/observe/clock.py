"""The reconciler's clock: wall-clock time that a step of the system clock cannot move.

Back-off deadlines, health-check delays, probe periods and process start times are compared with each other
across passes and daemon restarts. Read from the system clock, a step (NTP correcting a wrong RTC after a
resume, `date -s`) would skip a back-off or kill a server still loading (forward), or stall restarts and
probes until the clock catches up (backward). So the time is this boot's anchor (the wall-clock time the first
reconciler of the boot saw, minus CLOCK_BOOTTIME then) plus CLOCK_BOOTTIME now: it advances through suspend,
as the wall clock does, and never jumps. The anchor is kept in the state directory so every daemon and
command of one boot shares it.

The trade-off: after the system clock is stepped, the times the reconciler writes differ from `date` by the
step, until the next boot takes a new anchor.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

from reconciler.base.atomic import write_atomic
from reconciler.observe.host import boot_id

ANCHOR_FILE = "clock.json"
STEP_RESOLUTION = 0.01  # a step of the system clock smaller than this is not followed: it is reading noise


def _since_boot() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


_anchor = time.time() - _since_boot()  # this process's own until a state directory's is adopted
_step = 0.0  # the system clock's offset from this clock, as last seen to move


def now() -> datetime:
    return datetime.fromtimestamp(_anchor + _since_boot(), timezone.utc)


def step() -> float:
    """Seconds the system clock is ahead of this clock (negative: behind): how far it was stepped since the anchor.

    Whole milliseconds, and the same until it moves by STEP_RESOLUTION: the two clocks are read one after the
    other, and that noise (microseconds, far more when the thread is preempted between the reads) would make one
    Docker timestamp a different time on each look, rewriting the status file for nothing. It still moves while
    the system clock is slewed (NTP: up to 0.5 ms a second), so a converted time identifies nothing: an exit is
    told from another by the runtime's own words (ExitInfo.run).
    """
    global _step
    measured = _measured_step()
    if abs(measured - _step) >= STEP_RESOLUTION:
        _step = round(measured, 3)
    return _step


def _measured_step() -> float:
    """The system clock against the middle of the two reads of CLOCK_BOOTTIME around it, the closest of a few."""
    readings = []
    for _ in range(5):
        before, wall, after = _since_boot(), time.time(), _since_boot()
        readings.append((after - before, wall - (_anchor + (before + after) / 2)))
    return min(readings)[1]


def system_now() -> datetime:
    """The system clock itself, as other programs here (the Docker engine) read it: to compare with their times."""
    return datetime.now(timezone.utc)


def from_system(moment: datetime) -> datetime:
    """A time another program took from the system clock (the Docker engine's), moved onto this clock: right for
    times taken since the last step, which is the best that can be known of them."""
    return datetime.fromtimestamp(moment.timestamp() - step(), timezone.utc)


def adopt(state_dir: Path, *, readonly: bool = False) -> None:
    """Use this boot's anchor kept in `state_dir`; the first reconciler of a boot takes it (unless readonly)."""
    global _anchor
    path, boot = state_dir / ANCHOR_FILE, boot_id()
    try:
        kept = json.loads(path.read_text())
        if kept.get("bootId") == boot and isinstance(kept.get("anchor"), float):
            _anchor = kept["anchor"]
            return
    except (OSError, ValueError, AttributeError):
        pass  # none yet, another boot's, or not ours: a new one is taken
    _anchor = time.time() - _since_boot()
    if not readonly and state_dir.is_dir():
        write_atomic(path, json.dumps({"bootId": boot, "anchor": _anchor}) + "\n", mode=0o600)
