"""The native `process` driver: start, observe, adopt and stop processes it owns. It decides nothing.

Ownership is proven three ways, so a restarted reconciler re-adopts rather than duplicates:
a record (pid + start time + launch digest) in the state directory, the kernel's start time
of that pid, and marker variables in the process environment that find an orphan whose record
was never written (the reconciler killed between spawn and record).
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

import psutil
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from reconciler.api.status import ExitInfo
from reconciler.drive.exits import ExitWatcher
from reconciler.drive.launch import LaunchSpec
from reconciler.drive.logs import LogStore
from reconciler.record.atomic import write_atomic

OWNER_VARIABLE = "LOCALAISTACK_RECONCILER_OWNER"
NAME_VARIABLE = "LOCALAISTACK_WORKLOAD"
_PASSED_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME")


def owner_id(state_dir: Path) -> str:
    """Marks processes as this state directory's, so two reconcilers never touch each other's."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]


class ProcessRecord(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    name: str
    pid: int
    create_time: float
    launch: LaunchSpec
    generation: int
    started_at: datetime
    exit: ExitInfo | None = None


class ProcessState(str, Enum):
    running = "running"
    exited = "exited"
    absent = "absent"


@dataclass(frozen=True)
class ProcessObservation:
    state: ProcessState
    record: ProcessRecord | None = None

    @property
    def exit(self) -> ExitInfo | None:
        return self.record.exit if self.record else None


class StartFailed(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class ProcessDriver:
    def __init__(
        self, state_dir: Path, on_exit: Callable[[str], None] | None = None, readonly: bool = False
    ) -> None:
        self._records = state_dir / "processes"
        self._work = state_dir / "work"
        self.logs = LogStore(state_dir / "logs")
        self._owner = owner_id(state_dir)
        self._on_exit = on_exit
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.RLock()
        self._readonly = readonly  # `plan` and `status` observe without writing anything
        self._watcher = None if readonly else ExitWatcher(self._process_ended)

    # -- observe ----------------------------------------------------------------------------

    def owned_names(self) -> list[str]:
        return sorted(path.stem for path in self._records.glob("*.json")) if self._records.is_dir() else []

    def observe(self, name: str) -> ProcessObservation:
        with self._lock:
            record = self._read(name)
            if record is None:
                return ProcessObservation(ProcessState.absent)
            if record.exit is None and not self._alive(record):
                record = self._note_exit(record)
            state = ProcessState.exited if record.exit else ProcessState.running
            return ProcessObservation(state, record)

    def watch(self, name: str) -> None:
        """Wake the owner as soon as an adopted process ends (children are watched from start)."""
        record = self._read(name)
        if self._watcher and record and record.exit is None and name not in self._children:
            self._watcher.watch(name, record.pid)

    def stray_processes(self) -> list[psutil.Process]:
        """Session leaders carrying our marker that no record accounts for: starts cut short by a crash."""
        recorded = {(r.pid, r.create_time) for r in map(self._read, self.owned_names()) if r}
        strays = []
        for process in psutil.process_iter(["pid", "create_time"]):
            try:
                if os.getsid(process.pid) != process.pid or (process.pid, process.info["create_time"]) in recorded:
                    continue
                if process.environ().get(OWNER_VARIABLE) == self._owner:
                    strays.append(process)
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue
        return strays

    # -- act --------------------------------------------------------------------------------

    def start(self, name: str, launch: LaunchSpec, generation: int) -> ProcessObservation:
        work_dir = self._work / name
        work_dir.mkdir(parents=True, exist_ok=True)
        env = {key: os.environ[key] for key in _PASSED_THROUGH if key in os.environ}
        env |= launch.env | {OWNER_VARIABLE: self._owner, NAME_VARIABLE: name}
        with self._lock:
            log = self.logs.open_for_new_run(name)
            try:
                child = subprocess.Popen(
                    launch.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=launch.working_dir or work_dir, env=env, start_new_session=True, close_fds=True,
                )
            except FileNotFoundError as error:
                missing = error.filename or launch.argv[0]
                reason = "WorkingDirNotFound" if missing == launch.working_dir else "ExecutableNotFound"
                raise StartFailed(reason, f"{missing}: not found") from None
            except PermissionError as error:
                raise StartFailed("PermissionDenied", f"{error.filename or launch.argv[0]}: permission denied") from None
            except OSError as error:
                raise StartFailed("StartFailed", f"{launch.argv[0]}: {error.strerror}") from None
            finally:
                os.close(log)
            process = psutil.Process(child.pid)
            if launch.memory_limit is not None:
                process.rlimit(resource.RLIMIT_AS, (launch.memory_limit, launch.memory_limit))
            record = ProcessRecord(
                name=name, pid=child.pid, create_time=process.create_time(), launch=launch,
                generation=generation, started_at=datetime.now(timezone.utc),
            )
            self._write(record)
            self._children[name] = child
        self._require_watcher().watch(name, child.pid)
        return ProcessObservation(ProcessState.running, record)

    def stop(self, name: str, grace_seconds: float) -> ExitInfo | None:
        """SIGTERM the whole process group, SIGKILL what is left after the grace period, forget it."""
        with self._lock:
            record = self._read(name)
        if record is None:
            return None
        if record.exit is None and self._alive(record):
            terminate_group(record.pid, grace_seconds, self._children.get(name))
        with self._lock:
            self._require_watcher().unwatch(name)
            ended = self._note_exit(record) if record.exit is None else record
            self._children.pop(name, None)
            (self._records / f"{name}.json").unlink(missing_ok=True)
        return ended.exit

    # -- internals --------------------------------------------------------------------------

    def _process_ended(self, name: str, pid: int) -> None:
        with self._lock:
            record = self._read(name)
            if record is not None and record.pid == pid and record.exit is None:
                self._note_exit(record)
        if self._on_exit:
            self._on_exit(name)

    def _note_exit(self, record: ProcessRecord) -> ProcessRecord:
        child = self._children.get(record.name)
        code: int | None = None
        signal_number: int | None = None
        if child is not None and child.pid == record.pid:
            returncode = child.wait()
            code, signal_number = (returncode, None) if returncode >= 0 else (None, -returncode)
        now = datetime.now(timezone.utc)
        record = record.model_copy(update={"exit": ExitInfo(
            pid=record.pid, code=code, signal=signal_number, finished_at=now,
            ran_seconds=max(0.0, (now - record.started_at).total_seconds()),
        )})
        if not self._readonly:
            self._write(record)
        return record

    def _require_watcher(self) -> ExitWatcher:
        if self._watcher is None:
            raise RuntimeError("a read-only process driver cannot start or stop processes")
        return self._watcher

    def _alive(self, record: ProcessRecord) -> bool:
        child = self._children.get(record.name)
        if child is not None and child.pid == record.pid:
            return child.poll() is None
        try:
            process = psutil.Process(record.pid)
            return abs(process.create_time() - record.create_time) < 0.05 and _running(process)
        except psutil.Error:
            return False

    def _read(self, name: str) -> ProcessRecord | None:
        path = self._records / f"{name}.json"
        try:
            return ProcessRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None

    def _write(self, record: ProcessRecord) -> None:
        self._records.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self._records / f"{record.name}.json", record.model_dump_json(by_alias=True), mode=0o600)


def terminate_group(pid: int, grace_seconds: float, child: subprocess.Popen[bytes] | None = None) -> None:
    """Stop a process, its group and every descendant: TERM, wait out the grace period, then KILL."""
    try:
        leader = psutil.Process(pid)
        members = [leader, *leader.children(recursive=True)]
    except psutil.Error:
        members = []
    _signal_all(pid, members, signal.SIGTERM)
    alive = _wait_gone(members, grace_seconds, child)
    if alive or _group_exists(pid):
        _signal_all(pid, alive, signal.SIGKILL)
        _wait_gone(alive, 5.0, child)


def _wait_gone(members: list[psutil.Process], timeout: float, child: subprocess.Popen[bytes] | None) -> list[psutil.Process]:
    """Wait until every member has ended. A zombie has ended: its parent, not us, may be the one to reap it."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        if child is not None:
            child.poll()
        alive = [member for member in members if _running(member)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 0.1)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal_all(group: int, members: list[psutil.Process], number: int) -> None:
    try:
        os.killpg(group, number)
    except (ProcessLookupError, PermissionError):
        pass
    for member in members:
        try:
            member.send_signal(number)
        except psutil.Error:
            pass


def _group_exists(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False
