"""The gate's judgement of memory: what running workloads commit must fit the host, less a reserve. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.api.policy import ResourcePolicy
from reconciler.base.sizes import gib
from reconciler.diff.resources import budget

RULE = "resources.memory"


@dataclass(frozen=True)
class MemoryUse:
    wanted: int  # bytes this start commits: its memory limit, else its model's footprint
    what: str  # how that was counted, for the reason ("memory limit 4.0 GiB")
    committed: int  # bytes the other workloads running now commit
    total: int  # the host's RAM


def fits_all_at_once(commitments: Iterable[int], total: int, rules: ResourcePolicy) -> bool:
    """Whether the workloads could all run at once without overcommitting: then no order of their starts can be
    refused for memory, and two admissions need not wait for each other."""
    return rules.overcommit or sum(commitments) <= budget(total, rules)


def memory_problem(use: MemoryUse, rules: ResourcePolicy, source: str) -> str | None:
    """Why this start would overcommit the host's memory, if it would."""
    if rules.overcommit or use.wanted == 0:
        return None
    limit = budget(use.total, rules)
    if use.committed + use.wanted <= limit:
        return None
    reserve = f"{rules.memory_reserve:.0%} of {gib(use.total)} RAM is kept for the system"
    if use.wanted > limit:
        return f"{use.what} does not fit this host at all: {gib(limit)} may be committed ({reserve})"
    return (f"{use.what} with {gib(use.committed)} committed by running workloads exceeds the {gib(limit)} that "
            f"may be committed ({reserve}); {source} does not overcommit: stop another workload first")
