"""Resource limits for a workload's whole process tree: a cgroup per workload where this host lets us create one
(cgroup v2 inside the delegated subtree, else cgroup v1 memory and cpu controllers), else the nearest per-process
equivalent. Everything is prepared before the spawn and joined by the child before it runs code of its own.

What applied is returned as plain words for the status ("cgroup v2 memory.max ...", "rlimit RLIMIT_DATA ...",
"none: ..."), because a limit the user believes in but that is not enforced is worse than none.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.drive import cgroup2

CGROUP_ROOT = Path("/sys/fs/cgroup")
ROOT_VARIABLE = "RECONCILER_CGROUP_ROOT"  # another mount of the hierarchy (tests mount a cgroup2 file system)
CPU_PERIOD_US = 100_000
PIDS_MAX = 8192  # a fork bomb's ceiling, well above what model servers' threads and workers need
UNIFIED = "unified"  # the key of a run's cgroup v2 in its record: what is killed and watched as a whole


def cgroup_root() -> Path:
    return Path(os.environ.get(ROOT_VARIABLE) or CGROUP_ROOT)


@dataclass
class Placement:
    """What one start joins and what it is limited by: the child writes itself into each `procs` descriptor and sets
    the per-process fallbacks, before its own code runs."""

    enforced: dict[str, str] = field(default_factory=dict)  # resource -> how, in words
    cgroups: dict[str, str] = field(default_factory=dict)  # controller (or UNIFIED) -> the cgroup made for this run
    procs: list[int] = field(default_factory=list)
    data_limit: int | None = None  # RLIMIT_DATA, where no cgroup limits memory
    affinity: list[int] | None = None  # CPUs, where no cgroup limits CPU time

    def close(self) -> None:
        for descriptor in self.procs:
            os.close(descriptor)
        self.procs = []


class Cgroups:
    def __init__(self, owner: str, root: Path | None = None) -> None:
        root = root if root is not None else cgroup_root()
        self._prefix = f"localaistack-{owner}"
        self._bases: dict[str, Path] = {}
        self.unavailable: dict[str, str] = {}
        self.tree = cgroup2.UnifiedTree(root, owner) if cgroup2.is_unified(root) else None
        self._unified_problem: str | None = None  # why this start's cgroup v2 could not be made
        offered = self.tree.available() if self.tree else frozenset()
        for controller in ("memory", "cpu"):
            base, why = _v1_base(root, controller)
            if base is not None:
                self._bases[controller] = base / self._prefix
            elif self.tree is not None and (self.tree.problem or self.tree.controllers_withheld) is not None:
                self.unavailable[controller] = self.tree.problem or self.tree.controllers_withheld  # type: ignore[assignment]
            elif self.tree is not None and controller not in offered:
                self.unavailable[controller] = (f"cgroup v2 under {self.tree.base} offers no {controller} controller (the "
                                                f"kernel binds it to cgroup v1, or it is disabled), and {why}")
            else:
                self.unavailable[controller] = why

    def place(self, name: str, memory_limit: int | None, cpus: float | None) -> Placement:
        """Make this run's cgroups and open what the child joins; say per resource what will enforce its limit."""
        placement = Placement()
        self._unified_problem = None
        unified = self._unified(name, placement)
        for resource_name, limit in (("memory", memory_limit), ("cpu", cpus)):
            if limit is None:
                continue
            try:
                if unified is not None and resource_name in self.tree.enabled:  # type: ignore[union-attr]
                    placement.enforced[resource_name] = _limit_v2(unified, resource_name, limit)
                    placement.cgroups[resource_name] = str(unified)
                else:
                    placement.enforced[resource_name] = self._v1_or_fallback(name, resource_name, limit, placement)
            except OSError as error:
                placement.enforced[resource_name] = f"none: {error}"
        return placement

    def _unified(self, name: str, placement: Placement) -> Path | None:
        tree = self.tree
        if tree is None:
            return None  # cgroup v1: no pids ceiling of ours, as none was asked for
        if tree.problem is not None:
            placement.enforced["pids"] = f"none: {tree.problem}"
            return None
        try:
            cgroup = tree.fresh(name)
            placement.procs.append(os.open(cgroup / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
        except OSError as error:
            self._unified_problem = f"cgroup v2 under {tree.base}: {error.strerror}"
            placement.enforced["pids"] = f"none: {self._unified_problem}"
            return None
        placement.cgroups[UNIFIED] = str(cgroup)
        kill = "stopped as a whole with cgroup.kill" if (cgroup / "cgroup.kill").exists() else "stopped member by member"
        placement.enforced["tree"] = f"cgroup v2 {cgroup}: every descendant stays in it, {kill}"
        if "pids" in tree.enabled:
            (cgroup / "pids.max").write_text(str(PIDS_MAX))
            placement.enforced["pids"] = f"cgroup v2 pids.max {PIDS_MAX}"
        else:
            placement.enforced["pids"] = f"none: {tree.controllers_withheld or f'the cgroup v2 pids controller is not available under {tree.base}'}"
        return cgroup

    def _v1_or_fallback(self, name: str, resource_name: str, limit: float, placement: Placement) -> str:
        if resource_name == "memory":
            memory = int(limit)
            # memory + swap too, where accounted: the limit must not be escaped by swapping
            settings = {"memory.limit_in_bytes": str(memory), "memory.memsw.limit_in_bytes?": str(memory)}
            cgroup, why = self._place_v1("memory", name, settings, placement)
            if cgroup is not None:
                return f"cgroup v1 memory ({cgroup})"
            placement.data_limit = memory  # RLIMIT_DATA, not RLIMIT_AS: CUDA reserves vast address space it never touches
            return f"rlimit RLIMIT_DATA on the main process only ({why})"
        quota = max(1000, int(limit * CPU_PERIOD_US))
        cgroup, why = self._place_v1("cpu", name, {"cpu.cfs_period_us": str(CPU_PERIOD_US), "cpu.cfs_quota_us": str(quota)},
                                     placement)
        if cgroup is not None:
            return f"cgroup v1 cpu quota {limit:g} CPUs ({cgroup})"
        placement.affinity = sorted(os.sched_getaffinity(0))[: max(1, math.ceil(limit))]
        return f"cpu affinity {placement.affinity} ({why})"

    @staticmethod
    def oom_killed(memory_cgroup: str | None) -> bool:
        """Whether the kernel killed a process of this cgroup for exceeding its limit (v1 memory.oom_control,
        v2 memory.events)."""
        if memory_cgroup is None:
            return False
        for counters in ("memory.oom_control", "memory.events"):
            try:
                fields = dict(line.split() for line in (Path(memory_cgroup) / counters).read_text().splitlines())
            except (OSError, ValueError):
                continue
            return int(fields.get("oom_kill", "0")) > 0
        return False

    @staticmethod
    def release(cgroups: dict[str, str]) -> None:
        for cgroup in map(Path, dict.fromkeys(cgroups.values())):
            for directory in (cgroup, cgroup.parent):  # our shared parent goes with its last child
                try:
                    directory.rmdir()
                except OSError:
                    pass  # absent, still in use, or a straggler inside: a later release tries again

    def _place_v1(self, controller: str, name: str, settings: dict[str, str], placement: Placement) -> tuple[Path | None, str]:
        """A fresh cgroup with `settings` (a name ending in '?' only where the kernel has it), opened for the child."""
        if controller not in self._bases:
            return None, self._unified_problem or self.unavailable[controller]
        cgroup = self._bases[controller] / name
        try:
            if cgroup.exists():  # a new cgroup per start, so counters such as oom_kill describe this run only
                cgroup.rmdir()
            cgroup.mkdir(parents=True)
            for file, value in settings.items():
                target = cgroup / file.rstrip("?")
                if not file.endswith("?") or target.exists():
                    target.write_text(value)
            placement.procs.append(os.open(cgroup / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
        except OSError as error:
            return None, f"cgroup {cgroup}: {error.strerror}"
        placement.cgroups[controller] = str(cgroup)
        return cgroup, ""


def _limit_v2(cgroup: Path, resource_name: str, limit: float) -> str:
    if resource_name == "memory":
        (cgroup / "memory.max").write_text(str(int(limit)))
        swap = cgroup / "memory.swap.max"
        if swap.exists():  # the limit must not be escaped by swapping
            swap.write_text("0")
        return f"cgroup v2 memory.max {int(limit)} bytes, memory.swap.max 0 ({cgroup})"
    quota = max(1000, int(limit * CPU_PERIOD_US))
    (cgroup / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
    return f"cgroup v2 cpu.max {limit:g} CPUs ({cgroup})"


def _v1_base(root: Path, controller: str) -> tuple[Path | None, str]:
    """Our own cgroup for a v1 controller, if that hierarchy is mounted and writable."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError as error:
        return None, f"cannot read /proc/self/cgroup: {error.strerror}"
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            base = root / controllers / path.lstrip("/")
            if not base.is_dir() or not os.access(base, os.W_OK):
                return None, f"{base} is not writable by the reconciler"
            return base, ""
    return None, f"no cgroup v1 {controller} controller, and no cgroup v2 {controller} controller delegated"
