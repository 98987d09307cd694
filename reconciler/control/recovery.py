"""After a restart, the outcome of an action a crash cut short: its decision is the workload's last evidence line
(written before acting), its outcome line never came (the kill fell between the driver's call and that line).
The driver adopts what runs either way; without this, the chain would not say whether the action happened."""

from __future__ import annotations

import logging
from datetime import datetime

from reconciler.api.meta import ResourceKey
from reconciler.control.assembly import Parts
from reconciler.control.evidence import acted_on, cut_short_outcome
from reconciler.control.logfmt import about
from reconciler.control.planning import maybe_container, plan
from reconciler.control.recording import describe
from reconciler.load.desired import DesiredState
from reconciler.observe.processes import ProcessState

log = logging.getLogger("reconciler")


def close_cut_short(parts: Parts, desired: DesiredState, now: datetime, stopped_spawns: dict[str, int]) -> list[ResourceKey]:
    """For each workload the state directory says a decision was being carried out for (read from there, not from
    a listing of what runs), whose last decision or outcome line is that decision: its outcome as observed now,
    in the evidence (naming the decision line by hash) and on its record, which its status shows while it holds.
    `stopped_spawns`: the pid adopt() stopped for a workload, spawned by its start and never recorded. Returns the
    workloads closed."""
    closed = []
    for key in parts.remembered.store.acting_on():
        if key.kind != "Workload":  # only a workload's decisions are carried out by drivers: none is left open
            parts.remembered.store.settled(key)
            continue
        entry, record = desired.resources.get(key), parts.remembered.get(key)
        source = entry.file if entry is not None else record.source if record is not None else None
        vouched = parts.remembered.store.vouched(key)
        last = None if vouched is None or source is None else parts.recorder.last_evidence(
            source, lambda line: line.get("resource") == str(key) and line.get("event") in ("decision", "action"),
            mentions=f'"resource":"{key}"'.encode())  # as the log writes it: compact, keys sorted
        if last is None or vouched != last[1] or not acted_on(last[0]):
            parts.remembered.store.settled(key)  # a line came after it (its outcome, whose settling a crash undid)
            if last is None or vouched == last[1]:  # or there is nothing to close it against
                log.warning("%s: the decision named in %s is no open action in %s's evidence: nothing to close",
                            key, parts.remembered.store.acting, source or "its spec file", **about(key))
            continue
        observed = parts.drivers.observe(key.name, maybe_container(entry, record))
        if observed.state is ProcessState.unknown:
            continue  # the engine is away: what happened is not known yet, and the next start looks again
        line, note = cut_short_outcome(*last, observed, now, stopped_spawns.get(key.name))
        parts.recorder.evidence(source, line)
        parts.remembered.store.settled(key)
        log.warning("%s: %s: %s", key, line["result"], note.cause, **about(key))
        if record is None:  # a first start cut short: the record it would have left, as this host is seen now
            described = describe(parts, plan(parts, desired, key, now), desired, now)
            record = described[0] if described else None
        if record is not None:
            parts.remembered.remember(record.model_copy(update={"recovered": note}))
        closed.append(key)
    return closed
