"""Faults around model artifacts: the daemon SIGKILLed in the middle of a download, and the cached file corrupted,
deleted or its whole cache folder removed while a workload serves it. The workload is a stand-in llama.cpp server
(`llamaCpp.executable`): a plain Python program that hashes the model file it was given, notes what it read, and
listens on its port; so every start says which bytes it got."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import Any

from reconciler.drive.artifacts import NET_CHUNK, ArtifactCache
from reconciler.record.evidence import verify_chain
from tests.artifact_server import ArtifactServer
from tests.conftest import PYTHON, Workspace, wait_for
from tests.faults.conftest import Ledger, Row, runs
from tests.test_engines import _ended, document, free_port
from tests.tiny_gguf import write_tiny_llama

# What a model server does first: read the model it is given. This one hashes it, appends what it read to
# $MODEL_STARTS, then listens on --port (a tcp health check) until it is stopped.
STAND_IN = """\
import hashlib, json, os, socket, sys, time
args = sys.argv[1:]
model, port = args[args.index("--model") + 1], int(args[args.index("--port") + 1])
try:
    with open(model, "rb") as handle:
        read = hashlib.file_digest(handle, "sha256").hexdigest()
except OSError as error:
    read = f"unreadable: {error}"
with open(os.environ["MODEL_STARTS"], "a") as starts:
    starts.write(json.dumps({"pid": os.getpid(), "model": model, "sha256": read}) + "\\n")
listener = socket.create_server(("127.0.0.1", port))
while True:
    time.sleep(1)
"""
# A download asks for a look at its Model every second; a fault injected later is found by what it causes alone
# (the next pass, the rehash schedule), as it would be at any other time.
SETTLE = 1.5
RATE = 256 << 10  # bytes per second of a download: slow enough to be cut in the middle, many times


@dataclass
class Sent:
    range: str | None
    bytes: int = 0


@dataclass
class Trickle:
    """Slows the artifact server's downloads (GETs with no Range or an open one, `bytes=N-`) to `rate` bytes a
    second and counts the body bytes each one sent; the GGUF header reads (`bytes=0-N`) go at full speed."""

    server: ArtifactServer
    rate: int = RATE
    sent: list[Sent] = field(default_factory=list)

    def __post_init__(self) -> None:
        trickle, base = self, self.server._server.RequestHandlerClass  # type: ignore[union-attr]

        class Throttled(base):  # type: ignore[misc, valid-type]
            def do_GET(self) -> None:
                asked = self.headers.get("Range")
                download = asked is None or re.fullmatch(r"bytes=\d+-", asked) is not None
                self.wfile = _Slow(self.wfile, trickle, trickle.opened(asked) if download else None)
                super().do_GET()

        self.server._server.RequestHandlerClass = Throttled  # type: ignore[union-attr]

    def opened(self, asked: str | None) -> Sent:
        self.sent.append(Sent(asked))
        return self.sent[-1]

    def downloads(self) -> list[Sent]:
        return list(self.sent)


class _Slow:
    """A handler's output: headers as they come, a download's body in steps at the trickle's rate. A client that
    hangs up (a killed daemon) ends the body quietly."""

    STEP = 16 << 10

    def __init__(self, out: Any, trickle: Trickle, counted: Sent | None) -> None:
        self.out, self.trickle, self.counted = out, trickle, counted

    def write(self, data: bytes) -> int:
        try:
            if self.counted is None or data.startswith(b"HTTP/"):
                self.out.write(data)
                return len(data)
            for start in range(0, len(data), self.STEP):
                step = data[start:start + self.STEP]
                self.out.write(step)
                self.counted.bytes += len(step)
                time.sleep(len(step) / self.trickle.rate)
        except OSError:
            pass
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.out, name)


@dataclass
class Served:
    """A Model pinned to a URL and a Workload serving it with the stand-in, in one spec file."""

    workspace: Workspace
    data: bytes
    url: str
    starts: Path
    port: int = field(default_factory=free_port)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def cached(self) -> Path:
        return self.workspace.state / "models" / "sha256" / self.digest

    def write(self, stand_in: Path) -> None:
        self.workspace.write("policy.yaml", document("Policy", "test-host", {"native": {
            "trustedEngines": ["llama.cpp"],
            "trustedExecutables": [{"executable": PYTHON}, {"executable": str(stand_in)}]},
            "models": {"internalNetworks": ["127.0.0.0/8"]}}))
        self.workspace.write("model.yaml", document("Model", "tiny", {
            "source": self.url, "sha256": self.digest, "size": len(self.data)}) + "---\n" + document("Workload", "chat", {
                "engine": "llama.cpp", "model": "tiny", "port": self.port, "llamaCpp": {"executable": str(stand_in)},
                "env": {"MODEL_STARTS": str(self.starts)}, "health": {"tcp": {}, "periodSeconds": 0.5},
                "restart": {"backoff": {"initialSeconds": 0.2}},
                # proven at once: a restart onto re-fetched bytes inside a soak would fail the rollout (see the report)
                "update": {"soakSeconds": 0}}))

    def started(self) -> list[dict[str, Any]]:
        """Every start of the workload, with the digest of the bytes it read."""
        return [json.loads(line) for line in self.starts.read_text().splitlines()] if self.starts.exists() else []

    def model(self) -> dict[str, Any]:
        return self.workspace.resource_status("model.yaml", "tiny") or {}

    def chat(self) -> dict[str, Any]:
        return self.workspace.resource_status("model.yaml", "chat") or {}

    def running(self) -> dict[str, Any] | None:
        """The workload's status once it runs, healthy, on a pid that has said what it read."""
        chat = self.chat()
        pids = {start["pid"] for start in self.started()}
        ready = self.workspace.condition("model.yaml", "chat") or {}
        return chat if chat.get("phase") == "Running" and chat.get("pid") in pids and ready.get("status") == "True" else None

    def cache_problems(self) -> list[str]:
        """What must never be in the cache: a verified entry with other bytes, a stray file, two partials of one digest."""
        problems = []
        root = self.workspace.state / "models"
        for entry in ArtifactCache(root).entries():
            if entry.verified_at is not None and hashlib.sha256(entry.path.read_bytes()).hexdigest() != entry.sha256:
                problems.append(f"{entry.path} is verified but holds other bytes")
        known = {f"sha256/{self.digest}", f"sha256/{self.digest}.verified", f"partial/{self.digest}.part"}
        for path in root.rglob("*") if root.exists() else ():
            if path.is_file() and str(path.relative_to(root)) not in known:
                problems.append(f"stray file {path}")
        return problems

    def bad_starts(self) -> list[dict[str, Any]]:
        return [start for start in self.started() if start["sha256"] != self.digest]


def stand_in_server(folder: Path) -> Path:
    path = folder / "llama-server"
    path.write_text(f"#!{PYTHON}\n{STAND_IN}")
    path.chmod(0o755)
    return path


def starts_file(folder: Path) -> Path:
    """Where the stand-in reports its starts: a folder its user (one of its own, under a root reconciler) may write."""
    reports = folder / "reports"
    reports.mkdir()
    reports.chmod(0o1777)
    return reports / "starts.jsonl"


def padded_model(folder: Path, size: int) -> bytes:
    """A real GGUF (its header is read to fit it) followed by zeros up to `size` bytes: long enough to take time."""
    tiny = write_tiny_llama(folder / "tiny.gguf").read_bytes()
    return tiny + bytes(max(0, size - len(tiny)))


def chains_verify(workspace: Workspace) -> None:
    chains = sorted(workspace.desired.glob("*.evidence.jsonl"))
    assert chains and all(verify_chain(chain).ok for chain in chains), [str(verify_chain(c)) for c in chains]


# -- 1. the daemon SIGKILLed during a download ------------------------------------------------------------------


def test_a_download_cut_by_sigkills_resumes_verifies_and_starts_the_workload_once(
        workspace: Workspace, server: ArtifactServer, tmp_path: Path, ledger: Ledger) -> None:
    row = ledger.row("daemon SIGKILLed during a model download", "after each kill: no verified entry with other "
                     "bytes, one partial at most, no stray file, no start on a partial model; the next attempt resumes "
                     "at the partial's length")
    chance = random.Random(20261124)
    rounds = runs(3, 20)
    kills_after = [chance.uniform(0.2, 1.5) for _ in range(rounds)]  # seconds into each round's download
    # long enough that every kill lands inside the download, and a couple of seconds are left for the last start
    trickle = Trickle(server)
    data = padded_model(tmp_path, int(RATE * (sum(kills_after) + 0.2 * rounds + 2.5)))
    served = Served(workspace, data, server.add("tiny.gguf", data), starts_file(tmp_path))
    served.write(stand_in_server(tmp_path))
    partial = ArtifactCache(workspace.state / "models").partial_path(served.digest)
    resumed_from, asked_from = [], []

    for after in kills_after:
        have = partial.stat().st_size if partial.exists() else 0
        before = len(trickle.downloads())
        workspace.start_daemon("--resync", "3600")
        wait_for(lambda: len(trickle.downloads()) > before, timeout=30, what="the download to start")
        time.sleep(after)
        workspace.stop_daemon(signal.SIGKILL)
        asked = trickle.downloads()[before].range
        resumed_from.append(have)
        asked_from.append(int(asked.removeprefix("bytes=").rstrip("-")) if asked else 0)
        problems = served.cache_problems() + [f"started on {start}" for start in served.bad_starts()]
        problems += [f"runs with no model: {process.pid}" for process in workspace.owned_processes()]
        row.runs += 1
        row.passed += not problems and asked_from[-1] == have and not served.cached.exists()

    workspace.start_daemon("--resync", "3600")
    wait_for(served.running, timeout=60, what="the workload running on the fetched model")
    sent = sum(each.bytes for each in trickle.downloads())
    assert served.cached.read_bytes() == data and served.model()["artifact"]["sha256"] == served.digest
    assert served.model()["phase"] == "Available"
    assert asked_from == resumed_from, f"asked from {asked_from}, had {resumed_from}"
    assert any(resumed_from), "no kill left a partial to resume"
    # every byte comes once, but for what a kill cut inside one network read (or in the kernel's buffers)
    assert sent <= len(data) + rounds * 2 * NET_CHUNK, f"{sent} bytes sent for {len(data)}"
    assert [start["sha256"] for start in served.started()] == [served.digest], served.started()
    assert [process.pid for process in workspace.owned_processes()] == [served.chat()["pid"]]
    assert not partial.exists() and served.cache_problems() == []
    chains_verify(workspace)
    assert row.passed == row.runs, f"{row.runs - row.passed} of {row.runs} kills left a bad cache or a bad start"
    ledger.row("daemon SIGKILLed during a model download", f"{rounds} kills; then resumed, verified, started once "
               f"({sent} bytes sent for a {len(data)}-byte model)")


# -- 2 to 4. the cached file corrupted, deleted, or its folder removed under a running workload ----------------


def within(predicate: Callable[[], Any], timeout: float) -> Any:
    """wait_for, but a timeout is a failed check of this run (counted), not the end of the test."""
    try:
        return wait_for(predicate, timeout=timeout)
    except AssertionError:
        return None


def recreates(served: Served) -> list[dict[str, Any]]:
    return [record for record in served.workspace.evidence("model.yaml") if record["event"] == "decision"
            and record["resource"] == "Workload/chat" and record["action"] == "recreate"]


def repaired(served: Served, daemon: Popen[str], fault: Callable[[Path], object], cause: str,
             keeps_running: bool) -> list[str]:
    """Inject `fault` under the running workload, then watch: the Model's and the workload's status name `cause`
    while the bytes are fetched again (the old process still up when `keeps_running`), the workload runs again on
    verified bytes, the evidence records why it was restarted, the daemon stays up. Returns what did not hold."""
    old, earlier = served.chat()["pid"], len(recreates(served))
    time.sleep(SETTLE)
    try:
        fault(served.cached)
    except OSError as error:  # only after an earlier run went wrong
        return [f"the cached file was not there to break: {error}"]
    shown: dict[str, bool] = {}

    def watch() -> dict[str, Any] | None:
        if cause in served.model().get("message", "") and "model" not in shown:
            shown["model"], shown["old pid up then"] = True, not _ended(old)
        if cause in served.chat().get("message", ""):
            shown["workload"] = True
        now = served.running()
        return now if now and now["pid"] != old else None

    again = within(watch, timeout=30)
    failed = [f"the {what}'s status never said {cause!r}" for what in ("model", "workload") if what not in shown]
    if keeps_running and not shown.get("old pid up then", True):
        failed.append("the running process was stopped while its model was missing")
    if again is None:
        return failed + [f"not running again on a new process: {served.chat()}, {served.model()}"]
    model = served.model()
    if (model.get("phase"), (model.get("artifact") or {}).get("sha256")) != ("Available", served.digest):
        failed.append(f"the Model is not Available with its digest: {model}")
    if served.bad_starts() or not served.cached.exists() or served.cached.read_bytes() != served.data:
        failed.append(f"started on other bytes: {served.bad_starts()}")
    if served.cache_problems() or ArtifactCache(served.workspace.state / "models").partial_size(served.digest):
        failed.append(f"cache left wrong: {served.cache_problems()}")
    why = [record["cause"] for record in recreates(served)[earlier:]]
    if why != ["the model (its Model or file) changed"]:
        failed.append(f"the evidence of the restart: {why}")
    if daemon.poll() is not None:
        failed.append(f"the daemon exited with {daemon.poll()}")
    return failed


def fault_row(workspace: Workspace, server: ArtifactServer, tmp_path: Path, row: Row,
              faults: list[tuple[tuple[str, ...], Callable[[Path], object]]], cause: str, keeps_running: bool) -> None:
    """Each of `faults` is (the daemon's flags, the fault): the daemon is restarted when its flags change (SIGTERM
    leaves the workload running)."""
    Trickle(server)  # the fetch again takes about a second: long enough to be seen
    data = padded_model(tmp_path, 0)
    served = Served(workspace, data, server.add("tiny.gguf", data), starts_file(tmp_path))
    served.write(stand_in_server(tmp_path))
    failures: list[str] = []
    flags, daemon = None, None
    for wanted, fault in faults:
        if daemon is None or wanted != flags:
            workspace.stop_daemon()
            daemon, flags = workspace.start_daemon(*wanted), wanted
            wait_for(served.running, timeout=60, what="the workload running on its model")
        failed = repaired(served, daemon, fault, cause, keeps_running)
        failures += failed
        row.runs += 1
        row.passed += not failed
    chains_verify(workspace)
    assert not failures, failures


def overwrite(path: Path, keep_mtime: bool = False) -> None:
    """Other bytes of the same length, written in place (same inode); the mtime put back when asked."""
    before = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(before.st_size // 2)
        handle.write(b"\xa5" * 64)
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_model_bytes_corrupted_under_a_running_workload_are_discarded_and_fetched_again(
        workspace: Workspace, server: ArtifactServer, tmp_path: Path, ledger: Ledger) -> None:
    row = ledger.row("model file corrupted under a running workload", "bytes overwritten in place (same size; mtime "
                     "moved: found by the next pass; mtime put back: by the scheduled rehash): the Model's and the "
                     "workload's status say the bytes no longer match; fetched again, verified; the workload "
                     "restarted onto them, never on the bad bytes; the restart's cause in the evidence; daemon up")
    count = runs(1, 5)
    found_by_pass, found_by_rehash = ("--resync", "3600"), ("--resync", "3600", "--model-rehash-hours", "0.001")
    fault_row(workspace, server, tmp_path, row,
              [(found_by_pass, overwrite)] * count + [(found_by_rehash, lambda p: overwrite(p, True))] * count,
              "its bytes no longer match sha256", keeps_running=False)


def test_a_model_file_deleted_under_a_running_workload_is_fetched_again(
        workspace: Workspace, server: ArtifactServer, tmp_path: Path, ledger: Ledger) -> None:
    row = ledger.row("model file deleted under a running workload", "the running process kept until verified bytes "
                     "are back; the Model's and the workload's status say the file is gone; fetched again, verified; "
                     "the workload restarted onto them; the restart's cause in the evidence; daemon up")
    fault_row(workspace, server, tmp_path, row, [(("--resync", "3600"), Path.unlink)] * runs(1, 5),
              "the cached file is gone", keeps_running=True)


def test_the_model_cache_folder_removed_under_a_running_workload_is_rebuilt(
        workspace: Workspace, server: ArtifactServer, tmp_path: Path, ledger: Ledger) -> None:
    row = ledger.row("model cache folder removed under a running workload", "as for a deleted file, with the whole "
                     "models/ folder (entries, sidecars, partials) gone")
    models = workspace.state / "models"
    fault_row(workspace, server, tmp_path, row, [(("--resync", "3600"), lambda _: shutil.rmtree(models))] * runs(1, 5),
              "the cached file is gone", keeps_running=True)
