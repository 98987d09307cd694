"""Native-process benchmarks: the real daemon (`python -m reconciler run`) and, where the issue names one, supervisord.

Every workload is `/bin/sleep MARKER`, MARKER a number unique to this run: it starts in about a millisecond (no
interpreter start-up is measured) and the bench finds it by scanning /proc/*/cmdline for that argument. The same
scan, polled every POLL seconds from this process, times the reconciler and supervisord alike; its resolution
(POLL plus one scan, about 1 ms here) is included in every latency below. Each scenario starts its own managers on a
temp folder and stops them afterwards: `reconciler down` and `supervisorctl shutdown`, then SIGKILL of leftovers.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import psutil

from bench.harness import Scenario
from reconciler.control.reconciler import Reconciler
from reconciler.drive.process import OWNER_VARIABLE, owner_id
from tests.wakeups import wake_ups

SLEEP = "/bin/sleep"
POLL = 0.002  # seconds between /proc scans: tight enough for ms latencies, light enough for a 2-core machine
API = "localaistack.dev/v1alpha1"
REPO = Path(__file__).resolve().parent.parent
_markers = itertools.count(random.randrange(10**8, 9 * 10**8, 10**6))  # sleep arguments, unique per process


def _marker() -> str:
    return str(next(_markers))


def pids(marker: str) -> set[int]:
    """Live processes whose last argument is `marker` (a zombie's cmdline is empty, so it is not counted)."""
    needle, found = b"\0" + marker.encode() + b"\0", set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry.name}/cmdline", "rb") as file:
                if file.read().endswith(needle):
                    found.add(int(entry.name))
    return found


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = POLL) -> float:
    """Poll until `predicate()` is truthy; returns time.perf_counter() of the scan that saw it."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
    return time.perf_counter()


def _workload(name: str, marker: str, fast_restart: bool = False) -> dict[str, object]:
    spec: dict[str, object] = {"command": [SLEEP, marker]}
    if fast_restart:  # the smallest back-off the validator allows (initialSeconds > 0): restarts are not delayed
        spec["restart"] = {"policy": "Always", "backoff": {"initialSeconds": 0.001, "maxSeconds": 0.001}}
    return {"apiVersion": API, "kind": "Workload", "metadata": {"name": name}, "spec": spec}


def _documents(*resources: dict[str, object]) -> str:
    return "---\n".join(json.dumps(resource) + "\n" for resource in resources)  # JSON is YAML


POLICY = _documents({"apiVersion": API, "kind": "Policy", "metadata": {"name": "bench"}, "spec": {"native": {
    "trustedExecutables": [{"executable": SLEEP}, {"executable": os.path.realpath(SLEEP)}]}}})


class Daemon:
    """`reconciler run` (default resync, INFO log to a file) on a temp folder holding the Policy and `files`."""

    def __init__(self, files: dict[str, str] | None = None) -> None:
        self.files = {"policy.yaml": POLICY, **(files or {})}
        self.tmp: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def desired(self) -> Path:
        assert self.tmp is not None, "not started"
        return self.tmp / "desired"

    def start(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-native-"))
        self.tmp.chmod(0o755)  # as root, each workload runs as a user of its own, who must reach its state folder
        self.desired.mkdir()
        for name, text in self.files.items():
            (self.desired / name).write_text(text)
        with open(self.tmp / "daemon.log", "ab") as log:
            self.process = subprocess.Popen(self._command("run"), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        wait_for(lambda: (self.desired / "policy.status.yaml").exists(), 60, "the daemon's first pass", 0.05)

    def _command(self, verb: str) -> list[str]:
        return [sys.executable, "-m", "reconciler", verb, str(self.desired), "--state-dir", str(self.desired.parent / "state")]

    def save(self, name: str, text: str) -> float:
        """Save a spec as careful editors do (temp file, then rename); returns perf_counter() just before the rename."""
        temp = self.desired / f".{name}.swp"
        temp.write_text(text)
        started = time.perf_counter()
        os.replace(temp, self.desired / name)
        return started

    def stop(self) -> None:
        """SIGTERM the daemon (workloads keep running), `reconciler down` stops them, SIGKILL for any it missed."""
        if self.tmp is None:
            return
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.terminate()
                _reap(self.process)
            subprocess.run(self._command("down"), cwd=REPO, capture_output=True, timeout=120)
        finally:
            owner = owner_id(self.tmp / "state")
            for process in psutil.process_iter():
                with contextlib.suppress(psutil.Error):
                    if process.environ().get(OWNER_VARIABLE) == owner:
                        process.kill()
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = self.process = None


class Supervisord:
    """supervisord in the foreground with one program per marker: `/bin/sleep MARKER`, autorestart, startsecs=0."""

    def __init__(self, markers: list[str]) -> None:
        self.markers = markers
        self.tmp: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-supd-"))
        (self.tmp / "supervisord.conf").write_text(
            f"[supervisord]\nlogfile={self.tmp}/supervisord.log\npidfile={self.tmp}/supervisord.pid\n"
            f"childlogdir={self.tmp}\n[unix_http_server]\nfile={self.tmp}/sock\n[supervisorctl]\n"
            f"serverurl=unix://{self.tmp}/sock\n[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n" + "".join(
                f"[program:p{n}]\ncommand={SLEEP} {marker}\nautorestart=true\nstartsecs=0\nstartretries=1000000\n"
                for n, marker in enumerate(self.markers)))
        self.process = subprocess.Popen(self._command("supervisord", "-n"), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: all(pids(marker) for marker in self.markers), 120, "supervisord's programs", 0.05)

    def _command(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", f"supervisor.{module}", "-c", f"{self.tmp}/supervisord.conf", *args]

    def stop(self) -> None:
        """`supervisorctl shutdown` stops the programs, then supervisord; SIGKILL for anything left."""
        if self.tmp is None:
            return
        try:
            if self.process is not None and self.process.poll() is None:
                subprocess.run(self._command("supervisorctl", "shutdown"), capture_output=True, timeout=60)
                _reap(self.process)
        finally:
            for pid in (pid for marker in self.markers for pid in pids(marker)):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = self.process = None


def _reap(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _lifecycle(*managers: Daemon | Supervisord) -> tuple[Callable[[], None], Callable[[], None]]:
    """(setup, teardown) for the harness: start in order; stop all, each even if another fails, also when the setup
    fails half-way (the harness calls teardown only after a setup that returned)."""
    def teardown() -> None:
        with contextlib.ExitStack() as stack:
            for manager in managers:
                stack.callback(manager.stop)

    def setup() -> None:
        try:
            for manager in managers:
                manager.start()
        except BaseException:
            teardown()
            raise
    return setup, teardown


# -- 1. spec saved -> the driver's spawn -------------------------------------------------------------------

def _spec_saved(repetitions: int) -> Scenario:
    """From just before the rename that completes an editor-style save to the moment the new process exists
    (exec'd: its cmdline is /bin/sleep MARKER). That is the first thing the driver does for a new spec; it
    includes inotify delivery, the 30 ms save debounce, the load of the folder, plan, gate and the evidence
    fsync. Each repetition adds one new spec, then deletes it and waits for the prune, so every save meets the
    same folder (the Policy alone)."""
    daemon = Daemon()

    def once() -> float:
        marker = _marker()
        saved = daemon.save(f"w{marker}.yaml", _documents(_workload(f"w{marker}", marker)))
        spawned = wait_for(lambda: pids(marker), 30, "the spawn")
        (daemon.desired / f"w{marker}.yaml").unlink()
        wait_for(lambda: not pids(marker), 30, "the prune", 0.01)
        return (spawned - saved) * 1000

    setup, teardown = _lifecycle(daemon)
    return Scenario("spec saved -> driver spawned its process (inotify path)", "ms", once,
                    target="p50 <= 100 ms, p99 <= 300 ms", repetitions=repetitions, setup=setup, teardown=teardown,
                    reference="kubelet-style relist 20 s; Compose watch debounce 500 ms")


# -- 2. killed -> restarted ---------------------------------------------------------------------------------

def _kill(marker: str) -> tuple[float, float]:
    """SIGKILL the one process with `marker`; returns (ms until a new one exists, wall-clock time of the kill).

    A random pause before every kill, for both managers, keeps the kills out of step with any periodic loop."""
    time.sleep(random.uniform(0.0, 1.0))
    wait_for(lambda: len(pids(marker)) == 1, 30, f"exactly one process {marker}")
    (old,) = pids(marker)
    killed_at, started = time.time(), time.perf_counter()
    os.kill(old, signal.SIGKILL)
    restarted = wait_for(lambda: pids(marker) - {old}, 30, "the restart")
    return (restarted - started) * 1000, killed_at


def _restart_scenarios(repetitions: int) -> list[Scenario]:
    """SIGKILL of `/bin/sleep` -> a new `/bin/sleep` with the same argument exists, for both managers, polled by the
    same loop; the reconciler's back-off is the smallest allowed (1 ms). Both managers stay up during both
    measurements, so each runs beside the other's idle. supervisord (4.3) reaps the child in one turn of its main
    loop and spawns the replacement in the next, whose poll() waits up to its 1 s timeout: expect about 1 s.

    The detection row kills, waits for the restart, then reads the evidence: the `create` decision's time is taken
    when the reconcile that restarts the workload begins (exit seen through its pidfd, queued, picked by a worker,
    the 1 ms back-off passed), and is written before the spawn. Wall clocks of the same machine."""
    ours, theirs, watched = _marker(), _marker(), _marker()
    both = (Daemon({"victim.yaml": _documents(_workload("victim", ours, fast_restart=True))}), Supervisord([theirs]))
    alone = Daemon({"victim.yaml": _documents(_workload("victim", watched, fast_restart=True))})

    def detection() -> float:
        _, killed_at = _kill(watched)
        records = map(json.loads, (alone.desired / "victim.evidence.jsonl").read_text().splitlines())
        last = [record for record in records if record["event"] == "decision" and record["action"] == "create"][-1]
        return (datetime.fromisoformat(last["time"]).timestamp() - killed_at) * 1000

    return [
        Scenario("native workload killed -> restarted (new process exists)", "ms", lambda: _kill(ours)[0],
                 lambda: _kill(theirs)[0], "supervisord", "ratio <= 1", repetitions, *_lifecycle(*both)),
        Scenario("native workload killed -> restart decided (evidence decision time: detection)", "ms", detection,
                 None, "", "p99 <= 50 ms", repetitions, *_lifecycle(alone)),
    ]


# -- 3. a pass over N specs, in process ---------------------------------------------------------------------

def _pass_over(count: int, repetitions: int) -> Scenario:
    """`refresh()` (read and validate every file, look at the host) plus `plan(key, now)` (observe, render, diff,
    gate) for every key, on a read-only Reconciler: what a daemon pass does before any driver writes. Nothing runs,
    so every workload plans a `create` (a dry run, like `reconciler plan`); a pass where all run would observe each
    process instead. Specs: 10 Workload documents per file. The Reconciler is built once, as the daemon's is."""
    box: dict[str, Path | Reconciler] = {}

    def setup() -> None:
        tmp = box["tmp"] = Path(tempfile.mkdtemp(prefix="bench-pass-"))
        (tmp / "desired").mkdir()
        (tmp / "desired" / "policy.yaml").write_text(POLICY)
        for start in range(0, count, 10):
            workloads = [_workload(f"w{n}", str(1000 + n)) for n in range(start, min(count, start + 10))]
            (tmp / "desired" / f"specs-{start // 10:04d}.yaml").write_text(_documents(*workloads))
        box["reconciler"] = Reconciler(tmp / "desired", tmp / "state", readonly=True)

    def once() -> float:
        reconciler = box["reconciler"]
        assert isinstance(reconciler, Reconciler)
        started = time.perf_counter()
        reconciler.refresh()
        now, keys = datetime.now(timezone.utc), reconciler.keys()
        for key in keys:
            reconciler.plan(key, now)
        elapsed = time.perf_counter() - started
        assert len(keys) == count + 1, f"{len(keys)} keys for {count} specs and a policy"
        return elapsed * 1000

    def teardown() -> None:
        box.pop("reconciler", None)
        tmp = box.pop("tmp", None)
        if isinstance(tmp, Path):
            shutil.rmtree(tmp, ignore_errors=True)

    return Scenario(f"no-op pass over {count} specs (dry run: load + diff + gate, in process)", "ms", once,
                    target="1,000 specs <= 1 s, linear", repetitions=repetitions, setup=setup, teardown=teardown)


# -- 4. idle with 100 workloads -----------------------------------------------------------------------------

class _Idle:
    """The daemon with 100 native specs (10 files) beside supervisord with the same 100 programs, all started and
    settled. Each window measures the manager's own process, not its children: user + system CPU time over the
    window / the window, and RSS at its end. The window is a multiple of the daemon's default 30 s resync period, so
    each holds the same number of resync passes (what an idle daemon does); a shorter one may hold none and read 0 %.
    Windows begin once every workload is proven (its soak over), as an idle daemon's are. The RSS and wake-up rows
    reuse the CPU row's windows when that row ran first. Wake-ups are the voluntary context switches of all the
    manager's threads, per minute: a count, steadier than CPU time on a shared machine."""

    def __init__(self, seconds: float) -> None:
        ours, theirs = [_marker() for _ in range(100)], [_marker() for _ in range(100)]
        self.seconds, self.ours = seconds, ours
        self.managers: dict[str, Daemon | Supervisord] = {"ours": Daemon({f"idle-{f}.yaml": _documents(
            *(_workload(f"idle-{n}", ours[n]) for n in range(f * 10, f * 10 + 10))) for f in range(10)}),
            "theirs": Supervisord(theirs)}
        self.rss: dict[str, list[float]] = {"ours": [], "theirs": []}
        self.wakes: dict[str, list[float]] = {"ours": [], "theirs": []}
        self.down = _lifecycle(*self.managers.values())[1]

    def up(self) -> None:
        if self.managers["ours"].process is not None:
            return
        try:
            self.managers["ours"].start()
            wait_for(lambda: all(pids(marker) for marker in self.ours), 180, "the daemon's 100 workloads", 0.1)
            self.managers["theirs"].start()
        except BaseException:
            self.down()
            raise
        # idle means proven: while the workloads soak (30 s by default) each pass rewrites their status files
        daemon = self.managers["ours"]
        assert isinstance(daemon, Daemon)
        wait_for(lambda: not any("state: Soaking" in status.read_text() for status in daemon.desired.glob("*.status.yaml")),
                 180, "the 100 workloads proven", 0.5)
        time.sleep(3.0)  # the start-up's status writes and log trims settle

    def window(self, which: str) -> tuple[float, float, float]:
        self.up()
        manager = self.managers[which].process
        assert manager is not None
        process = psutil.Process(manager.pid)
        before, woken, started = process.cpu_times(), wake_ups(manager.pid), time.monotonic()
        time.sleep(self.seconds)
        after, elapsed = process.cpu_times(), time.monotonic() - started
        wakes = (wake_ups(manager.pid) - woken) * 60 / elapsed
        cpu = (after.user + after.system - before.user - before.system) / elapsed * 100
        return round(max(0.0, cpu), 4), process.memory_info().rss / 2**20, wakes

    def cpu(self, which: str) -> float:
        cpu, rss, wakes = self.window(which)
        self.rss[which].append(rss)
        self.wakes[which].append(wakes)
        return cpu

    def memory(self, which: str) -> float:
        return self.rss[which].pop(0) if self.rss[which] else self.window(which)[1]

    def wake_ups(self, which: str) -> float:
        return self.wakes[which].pop(0) if self.wakes[which] else self.window(which)[2]


def _idle_scenarios(seconds: float, repetitions: int) -> list[Scenario]:
    idle = _Idle(seconds)
    name = f"idle daemon, 100 native specs, {seconds:.0f} s window"
    return [
        Scenario(f"{name}: CPU of the manager process", "%", lambda: idle.cpu("ours"), lambda: idle.cpu("theirs"),
                 "supervisord", "p99 < 0.5 %", repetitions, idle.up, idle.down),
        Scenario(f"{name}: RSS of the manager process", "MB", lambda: idle.memory("ours"), lambda: idle.memory("theirs"),
                 "supervisord", "< 80 MB", repetitions),
        Scenario(f"{name}: wake-ups of the manager process", "/min", lambda: idle.wake_ups("ours"),
                 lambda: idle.wake_ups("theirs"), "supervisord", "-", repetitions, teardown=idle.down),
    ]


def scenarios(quick: bool = False) -> list[Scenario]:
    return [
        _spec_saved(8 if quick else 30),
        *_restart_scenarios(8 if quick else 30),
        # under the 2,000 files and documents one pass takes (reconciler/load/budget.py): 5,000 is refused by design
        *(_pass_over(count, reps) for count, reps in zip((100, 1000, 1500), (3, 3, 2) if quick else (10, 5, 3))),
        *_idle_scenarios(30.0 if quick else 60.0, 1 if quick else 3),
    ]
