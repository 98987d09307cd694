"""The native `process` driver: start, observe, adopt and stop processes it owns. It decides nothing.

Ownership is proven by a record (pid + kernel start ticks + launch nonce) in the state directory.
The nonce is also written as an intent before the spawn and passed to the child in its
environment, so a start cut short by a crash (spawned, never recorded) is found and stopped
on the next start, while the workload's own children, which inherit a recorded nonce, are not.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import psutil

from reconciler.api.launch import LaunchSpec
from reconciler.api.status import ExitInfo
from reconciler.base.atomic import write_atomic
from reconciler.base.crash_points import crash_point
from reconciler.base.owner import owner_id
from reconciler.drive.cgroups import UNIFIED, Cgroups, Placement
from reconciler.drive.exits import ExitWatcher
from reconciler.drive.groups import start_ticks, start_ticks_and_state, terminate_group
from reconciler.drive.logs import LogStore
from reconciler.drive.ports import port_free
from reconciler.drive.privileges import (child_setup, describe_privileges, first_unsearchable, hand_folder, hand_over,
                                         make_passable)
from reconciler.drive.protocol import StartFailed
from reconciler.drive.users import DynamicUsers, UserUnavailable, own_user, resolve_identity
from reconciler.observe import clock
from reconciler.observe.processes import ProcessObservation, ProcessRecord, ProcessState, RunAs

OWNER_VARIABLE = "LOCALAISTACK_RECONCILER_OWNER"
NAME_VARIABLE = "LOCALAISTACK_WORKLOAD"
NONCE_VARIABLE = "LOCALAISTACK_LAUNCH"
PASSED_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME")


def child_path(launch_env: dict[str, str]) -> str:
    """The PATH a child will search: its own if the spec sets one, else the reconciler's."""
    return launch_env.get("PATH", os.environ.get("PATH", os.defpath))


def _check_reachable(working_dir: Path, state_dir: Path, identity: RunAs) -> None:
    """Refuse a start whose user could not pass the folders above its working folder or the state directory (the
    models it is given, the gateway's routes): it would fail in ways that name no folder, over and over."""
    for what, folder in (("its working folder", working_dir), ("the state directory", state_dir)):
        blocking = first_unsearchable(folder, identity)
        if blocking is not None:
            fix = ("open it to others (chmod o+x), or choose a --state-dir outside it (root's default is "
                   "/var/lib/localaistack-reconciler)" if folder == state_dir or working_dir.is_relative_to(state_dir)
                   else "open it to others (chmod o+x), or choose another spec.workingDir")
            raise StartFailed("PermissionDenied", f"{blocking} (mode {blocking.stat().st_mode & 0o7777:04o}) is not "
                                                  f"searchable by {identity.describe()}, so it cannot reach {what} "
                                                  f"{folder}: {fix}")


class ProcessDriver:
    def __init__(
        self, state_dir: Path, on_exit: Callable[[str], None] | None = None, readonly: bool = False
    ) -> None:
        self._records = state_dir / "processes"
        self.work_root = state_dir / "work"
        self.logs = LogStore(state_dir / "logs")
        self._owner = owner_id(state_dir)
        self._on_exit = on_exit
        self._readonly = readonly  # `plan` and `status` observe without writing anything
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.RLock()
        self._watcher: ExitWatcher | None = None
        self._cgroups = Cgroups(self._owner)
        self._users = DynamicUsers(state_dir)

    # -- observe ----------------------------------------------------------------------------

    def default_working_dir(self, name: str) -> str:
        return str(self.work_root / name)

    def log_path(self, name: str) -> str:
        return str(self.logs.path(name))

    def trim_log(self, name: str) -> None:
        self.logs.trim(name)

    def owned(self, name: str) -> bool:
        return (self._records / f"{name}.json").exists()

    def owned_names(self) -> list[str]:
        return sorted(path.stem for path in self._records.glob("*.json")) if self._records.is_dir() else []

    def records_version(self) -> frozenset[tuple[str, int, int, int]]:
        """Each process record's name, modification time, inode and size: changes with every start, exit and adoption
        noted (each is an atomic replacement: a new inode, even where a coarse clock gives it the old mtime)."""
        found = set()
        for path in self._records.glob("*.json") if self._records.is_dir() else ():
            try:
                stat = path.stat()
                found.add((path.stem, stat.st_mtime_ns, stat.st_ino, stat.st_size))
            except FileNotFoundError:
                continue
        return frozenset(found)

    def listening_users(self) -> frozenset[int] | None:
        """Whose sockets can be its running processes': the users they run as (a user of its own has no capabilities
        and no-new-privileges: it creates sockets as itself alone). None, anyone's, when one runs as root, who may
        become any user. A reconciler that is not root cannot map another user's sockets to processes anyway."""
        users = set()
        for name in self.owned_names():
            record = self.observe(name).record
            if record is not None and record.exit is None:
                users.add(record.run_as.uid if record.run_as is not None else os.geteuid())
        return None if 0 in users else frozenset(users)

    def observe(self, name: str) -> ProcessObservation:
        with self._lock:
            record = self._read(name)
            if record is None:
                return ProcessObservation(ProcessState.absent)
            if record.exit is None and not self._alive(record):
                record = self._note_exit(record)
            return ProcessObservation(ProcessState.exited if record.exit else ProcessState.running, record)

    @staticmethod
    def as_workload(record: ProcessRecord) -> tuple[dict[str, str], Callable[[], None] | None]:
        """What a program run for a workload (its exec health check) needs to run as the workload's user does: the
        environment's user variables, and the preexec function that switches to it (None: as the reconciler)."""
        identity = record.run_as
        if identity is None:
            return {}, None
        return {"HOME": identity.home, "USER": identity.name, "LOGNAME": identity.name}, child_setup(identity, Placement())

    def markers(self, record: ProcessRecord) -> dict[str, str]:
        """What every process of this launch carries in its environment, even one that left its process group."""
        return {OWNER_VARIABLE: self._owner, NONCE_VARIABLE: record.nonce}

    def adopt(self) -> dict[str, int]:
        """After a (re)start: stop spawns a crash left unrecorded (returned: the pid stopped, by workload), and watch
        every recorded process."""
        interrupted = self._interrupted_starts()
        stopped = {}
        for process in psutil.process_iter() if interrupted else ():
            try:
                env = process.environ()
                if env.get(OWNER_VARIABLE) == self._owner and env.get(NONCE_VARIABLE) in interrupted \
                        and os.getsid(process.pid) == process.pid:
                    terminate_group(process.pid, 5.0)
                    stopped[interrupted[env[NONCE_VARIABLE]].name.removesuffix(".intent")] = process.pid
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue
        for intent in interrupted.values():
            intent.unlink(missing_ok=True)
        for name in self.owned_names():
            record = self._read(name)
            if record and record.exit is None and name not in self._children:
                self._exit_watcher().watch(name, record.pid)
        return stopped

    def _interrupted_starts(self) -> dict[str, Path]:
        """Intents (nonce -> file) that no record took over: spawns a crash may have cut short."""
        interrupted = {}
        for intent in sorted(self._records.glob("*.intent")) if self._records.is_dir() else ():
            nonce = intent.read_text().strip()
            record = self._read(intent.name.removesuffix(".intent"))
            if record is not None and record.nonce == nonce:
                intent.unlink(missing_ok=True)  # recorded: only the intent's removal was cut short
            else:
                interrupted[nonce] = intent
        return interrupted

    # -- act --------------------------------------------------------------------------------

    def check_room(self) -> None:
        """Raise OSError (ENOSPC, EROFS, ...) unless the state directory takes a new run's records: a page is
        written and removed, since a file system with a page left in a file's slack still takes short appends."""
        self._records.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = self._records / f".room-{secrets.token_hex(4)}"
        try:
            write_atomic(probe, b"\0" * 4096, mode=0o600)
        finally:
            probe.unlink(missing_ok=True)

    def start(self, name: str, launch: LaunchSpec, generation: int) -> ProcessObservation:
        if launch.executable is None:
            raise StartFailed("ExecutableNotFound", f"{launch.command[0]}: not found (PATH={child_path(launch.env)})")
        working_dir = Path(launch.working_dir)
        try:
            identity = resolve_identity(name, launch.user, launch.gpus, self._users, str(working_dir))
        except UserUnavailable as error:
            raise StartFailed("UserUnavailable", str(error)) from None
        except OSError as error:
            raise StartFailed("StateWriteFailed", f"cannot record its user in the state directory: {error.strerror}") from None
        if working_dir.is_relative_to(self.work_root):
            working_dir.mkdir(parents=True, exist_ok=True)  # the default: a private folder of ours
            try:
                if identity is not None:
                    hand_over(working_dir, self.work_root.parent, identity)
            except OSError as error:
                raise StartFailed("StateWriteFailed", f"cannot hand {working_dir} to its user: {error.strerror}") from None
        elif not working_dir.is_dir():
            raise StartFailed("WorkingDirNotFound", f"{working_dir}: no such directory: create it, or fix spec.workingDir")
        if identity is not None and identity.uid != 0:  # root passes any folder
            try:
                make_passable(self.work_root.parent)
            except OSError as error:
                raise StartFailed("StateWriteFailed", f"cannot open the state directory to its user: {error.strerror}") from None
            _check_reachable(working_dir, self.work_root.parent, identity)
        for folder in map(Path, launch.own_folders):
            try:
                hand_folder(folder, identity)
            except OSError as error:
                raise StartFailed("StateWriteFailed", f"cannot hand {folder} to its user: {error.strerror}") from None
        self.stop(name, grace_seconds=5.0)  # a finished run may have left group members behind
        nonce = secrets.token_hex(8)
        env = {key: os.environ[key] for key in PASSED_THROUGH if key in os.environ}
        if identity is not None:
            env |= {"HOME": identity.home, "USER": identity.name, "LOGNAME": identity.name}
        env |= launch.env | {OWNER_VARIABLE: self._owner, NAME_VARIABLE: name, NONCE_VARIABLE: nonce}
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, launch.gpus))  # exactly its GPUs: none unless requested
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # so CUDA numbers GPUs as NVML does, and index N is NVML's N
        if launch.listen is not None and not port_free(*launch.listen):
            raise StartFailed("PortInUse", f"{launch.listen[0]}:{launch.listen[1]} is already in use: "
                                           "choose another spec.port, or stop what listens there")
        with self._lock:
            try:
                self._records.mkdir(parents=True, exist_ok=True, mode=0o700)
                write_atomic(self._records / f"{name}.intent", nonce, mode=0o600)
                log = self.logs.open_for_new_run(name)
            except OSError as error:
                raise StartFailed("StateWriteFailed", f"cannot write the state directory: {error.strerror}") from None
            placement = self._cgroups.place(name, launch.memory_limit, launch.cpus)
            try:
                child = subprocess.Popen(
                    launch.argv, executable=launch.executable, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, cwd=launch.working_dir, env=env, start_new_session=True, close_fds=True,
                    preexec_fn=child_setup(identity, placement),
                )
            except OSError as error:
                reason = "PermissionDenied" if isinstance(error, PermissionError) else "StartFailed"
                who = (f" (as {identity.describe()}, who needs search permission on every folder above it and execute "
                       "permission on it)" if reason == "PermissionDenied" and identity is not None else "")
                raise StartFailed(reason, f"{launch.executable}: {error.strerror}{who}") from None
            except (ValueError, subprocess.SubprocessError) as error:  # an embedded NUL; a failed privilege drop
                raise StartFailed("StartFailed", f"{launch.executable}: {error}") from None
            finally:
                os.close(log)
                placement.close()
            crash_point("spawned")  # running, its intent on record, its own record not yet written
            try:
                enforcement = {**placement.enforced, "privileges": describe_privileges(identity)}
                record = ProcessRecord(
                    name=name, pid=child.pid, start_ticks=start_ticks(child.pid), nonce=nonce, launch=launch,
                    generation=generation, started_at=clock.now(), enforcement=enforcement,
                    cgroups=placement.cgroups, user=identity.describe() if identity else f"{own_user()} (the reconciler's own)",
                    run_as=identity,
                )
                self._write(record)
            except (OSError, psutil.Error) as error:
                terminate_group(child.pid, 0.0, child)  # unrecorded, it would be an orphan
                raise StartFailed("StateWriteFailed", f"started pid {child.pid} but could not record it, so stopped it: {error}") from None
            (self._records / f"{name}.intent").unlink(missing_ok=True)
            self._children[name] = child
        self._exit_watcher().watch(name, child.pid)
        return ProcessObservation(ProcessState.running, record)

    def stop(self, name: str, grace_seconds: float, forget: bool = True) -> ExitInfo | None:
        """SIGTERM everything the launch made, SIGKILL it after the grace period; `forget` drops the record,
        else it stays as an exited process (for the restart policy to judge)."""
        with self._lock:
            record = self._read(name)
        if record is None:
            return None
        leader_alive = record.exit is None and self._alive(record)
        tree = record.cgroups.get(UNIFIED)
        terminate_group(record.pid, grace_seconds, self._children.get(name), self.markers(record), leader_alive,
                        Path(tree) if tree else None)
        with self._lock:
            if self._watcher:
                self._watcher.unwatch(name)
            ended = self._read(name) or record  # the exit watcher may have noted the exit our signal caused
            if ended.exit is None:
                ended = self._note_exit(ended, stopped_by_reconciler=leader_alive)
            elif leader_alive and ended.pid == record.pid and not ended.exit.stopped_by_reconciler:
                ended = ended.model_copy(update={"exit": ended.exit.model_copy(update={"stopped_by_reconciler": True})})
                self._write(ended)
            self._children.pop(name, None)
            if forget:
                (self._records / f"{name}.json").unlink(missing_ok=True)
                self._cgroups.release(record.cgroups)
        return ended.exit

    # -- internals --------------------------------------------------------------------------

    def _exit_watcher(self) -> ExitWatcher:
        if self._readonly:
            raise RuntimeError("a read-only process driver cannot start or watch processes")
        if self._watcher is None:
            self._watcher = ExitWatcher(self._process_ended)
        return self._watcher

    def _process_ended(self, name: str, pid: int) -> None:
        with self._lock:
            record = self._read(name)
            if record is not None and record.pid == pid and record.exit is None:
                self._note_exit(record)
        if self._on_exit:
            self._on_exit(name)

    def _note_exit(self, record: ProcessRecord, stopped_by_reconciler: bool = False) -> ProcessRecord:
        child = self._children.get(record.name)
        code: int | None = None
        signal_number: int | None = None
        if child is not None and child.pid == record.pid:
            returncode = child.wait()
            code, signal_number = (returncode, None) if returncode >= 0 else (None, -returncode)
        now = clock.now()
        record = record.model_copy(update={"exit": ExitInfo(
            pid=record.pid, code=code, signal=signal_number, finished_at=now,
            # the kernel's tick, which no clock change moves; pid and tick may repeat in another boot, the nonce not
            run=f"pid {record.pid} started at tick {record.start_ticks}, launch {record.nonce}",
            ran_seconds=max(0.0, (now - record.started_at).total_seconds()),
            # only a leader SIGKILLed while its cgroup saw an OOM kill: a child's OOM must not hide the real exit
            oom_killed=(signal_number == 9 or code is None and signal_number is None)
            and self._cgroups.oom_killed(record.cgroups.get("memory")),
            stopped_by_reconciler=stopped_by_reconciler,
        )})
        if not self._readonly:
            self._write(record)
        return record

    def _alive(self, record: ProcessRecord) -> bool:
        child = self._children.get(record.name)
        if child is not None and child.pid == record.pid:
            return child.poll() is None
        try:  # one read of /proc/PID/stat: psutil read it three times (its identity, the ticks, the state)
            ticks, state = start_ticks_and_state(record.pid)
        except (OSError, ValueError, IndexError):
            return False
        return ticks == record.start_ticks and state != "Z"

    def _read(self, name: str) -> ProcessRecord | None:
        try:
            return ProcessRecord.model_validate_json((self._records / f"{name}.json").read_bytes())
        except FileNotFoundError:
            return None

    def _write(self, record: ProcessRecord) -> None:
        self._records.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self._records / f"{record.name}.json", record.model_dump_json(by_alias=True), mode=0o600)

