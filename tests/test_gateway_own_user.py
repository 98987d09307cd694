"""The gateway run by a root daemon as a user of its own: what it must write (demand records, hosted-request lines)
goes into folders handed to that user, which the daemon reads as anyone else's; and a hosted key it cannot read is
a refusal the status shows, not a Ready route whose every request fails."""

from __future__ import annotations

import json
import fcntl
import os
import subprocess
from pathlib import Path

import pytest

from reconciler.api.meta import ResourceKey
from reconciler.control.forget import plan_forget
from reconciler.control.hosted_folding import HostedFolding, hosted_line
from reconciler.gate.key_access import PathOwner, key_unreadable, stops_reader
from reconciler.gateway.spool import append_spooled, demand_file, spool_files
from reconciler.observe.processes import RunAs
from reconciler.record.evidence import read_records, verify_chain
from reconciler.record.recorder import Recorder
from tests.conftest import PYTHON, Workspace, wait_for
from tests.test_engines import document, engine_env, free_port
from tests.test_gateway import POLICY, TCP_CHECK, call, completion
from tests.tiny_gguf import write_tiny_llama

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="a user of its own needs a root daemon")
GATEWAY = RunAs(uid=61184, gid=61184, name="localaistack-gateway", home="/", dynamic=True)


def gateway_uid(space: Workspace) -> int:
    return json.loads((space.state / "users.json").read_text())["gateway"]


@as_root
def test_a_request_starts_an_on_demand_model_through_a_gateway_running_as_its_own_user(tmp_path: Path) -> None:
    space = Workspace(tmp_path)
    space.write("policy.yaml", POLICY)
    write_tiny_llama(space.desired / "models" / "alpha.gguf", name="alpha")
    space.write("alpha.yaml", document("Model", "alpha", {"source": "models/alpha.gguf"}) + "---\n" + document(
        "Workload", "alpha-server", {"engine": "llama.cpp", "model": "alpha", "port": free_port(),
                                     "llamaCpp": {"contextSize": 256}, "health": {**TCP_CHECK, "periodSeconds": 0.2},
                                     "activation": {"mode": "OnDemand", "idleSeconds": 60}}))
    port = free_port()
    space.write("gateway.yaml", document("Workload", "gateway", {
        "engine": "gateway", "port": port, "args": ["--wait-seconds", "60"],
        "health": {"http": {"path": "/health"}, "periodSeconds": 0.2}}))
    try:
        space.start_daemon(env=engine_env(None, tmp_path))
        gateway = wait_for(lambda: (s := space.resource_status("gateway.yaml", "gateway")) and s["phase"] == "Running"
                           and s, timeout=60, what="the gateway")
        assert gateway["user"].startswith("dynamic user localaistack-gateway"), gateway["user"]
        wait_for(lambda: (s := space.resource_status("alpha.yaml", "alpha-server")) and s["phase"] == "Idle",
                 timeout=60, what="alpha-server to be idle")
        demand = space.state / "gateway" / "demand"
        folder = demand.stat()
        assert (folder.st_uid, folder.st_mode & 0o777) == (gateway_uid(space), 0o700), "the gateway's own folder"
        status, _, answer = call(f"http://127.0.0.1:{port}/v1/completions", completion("alpha"))
        log = space.state / "logs" / "gateway.log"
        assert status == 200, (answer, log.read_text()[-2000:] if log.exists() else "no gateway log")
        assert (demand / "alpha-server.json").stat().st_uid == gateway_uid(space)
    finally:
        space.cleanup()


def test_forget_removes_the_gateways_demand_record_and_hosted_spool(tmp_path: Path) -> None:
    """A namesake declared later must not inherit the forgotten one's idle clock or its requests' lines."""
    root, state = tmp_path / "desired", tmp_path / "state"
    root.mkdir()
    left = [demand_file(state, "alpha-server"), *spool_files(state, "alpha-server")]
    for path in [*left, demand_file(state, "other")]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n")
    plan = plan_forget(ResourceKey("Workload", "alpha-server"), root, state)
    assert set(left) <= set(plan.deleted) and demand_file(state, "other") not in plan.deleted


def test_the_key_is_readable_only_where_every_folder_lets_the_gateway_through() -> None:
    key = "/etc/keys/acme"
    way = [PathOwner("/", 0, 0, 0o40755), PathOwner("/etc", 0, 0, 0o40755), PathOwner("/etc/keys", 0, 0, 0o40711)]
    assert stops_reader([*way, PathOwner(key, 61184, 0, 0o100400)], GATEWAY) is None, "its owner may read it"
    assert stops_reader([*way, PathOwner(key, 0, 61184, 0o100440)], GATEWAY) is None, "so may its group"
    root_only = PathOwner(key, 0, 0, 0o100600)
    assert stops_reader([*way, root_only], GATEWAY) == root_only
    assert stops_reader([*way, root_only], GATEWAY.model_copy(update={"uid": 0})) is None, "root reads anything"
    closed = PathOwner("/etc/keys", 0, 0, 0o40700)
    assert stops_reader([*way[:2], closed, PathOwner(key, 61184, 0, 0o100400)], GATEWAY) == closed
    why = key_unreadable(key, [*way, root_only], [GATEWAY])
    assert why is not None and "uid 61184" in why and f"chown 61184 {key} && chmod 0400 {key}" in why
    assert "spec.user" in why and "cannot read it (owner uid 0, gid 0, mode 0600)" in why


def test_only_a_hosted_request_line_of_its_workload_is_folded() -> None:
    line = {"id": "a1", "event": "hosted-request", "resource": "Workload/remote", "status": 200}
    assert hosted_line(json.dumps(line).encode(), "remote") == line
    assert hosted_line(json.dumps(line | {"hash": "forged", "note": "x"}).encode(), "remote") == line, "own fields only"
    assert hosted_line(json.dumps(line).encode(), "other") is None, "another workload's chain is not its to write"
    assert hosted_line(json.dumps(line | {"event": "action"}).encode(), "remote") is None
    assert hosted_line(json.dumps({**line, "id": ""}).encode(), "remote") is None
    assert hosted_line(b"not json", "remote") is None


def test_a_fold_cut_short_adds_no_line_twice_and_lines_spooled_meanwhile_wait_for_the_next(tmp_path: Path) -> None:
    root, state = tmp_path / "desired", tmp_path / "state"
    root.mkdir()
    recorder = Recorder(root, state / "host.evidence.jsonl")
    folding = HostedFolding(state, recorder, lambda name: "remote.yaml" if name == "remote" else None)
    live, aside = spool_files(state, "remote")
    live.parent.mkdir(parents=True)
    lines = [{"id": f"r{n}", "event": "hosted-request", "resource": "Workload/remote", "status": 200} for n in range(4)]
    recorder.evidence("remote.yaml", lines[0])  # folded before a crash that left the aside spool in place
    aside.write_text("".join(json.dumps(line) + "\n" for line in lines[:2]))
    for line in lines[2:]:
        append_spooled(live.parent, "remote", line)
    append_spooled(live.parent, "other", lines[0])  # not declared: its spool waits
    folding.fold_all()
    chain = root / "remote.evidence.jsonl"
    assert [record["id"] for record in read_records([chain]) if record] == ["r0", "r1", "r2", "r3"]
    assert verify_chain(chain).ok and not live.exists() and not aside.exists()
    assert spool_files(state, "other")[0].exists()


def test_a_spool_the_gateway_holds_locked_is_left_for_later_and_the_daemon_goes_on(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root, state = tmp_path / "desired", tmp_path / "state"
    root.mkdir()
    monkeypatch.setattr("reconciler.control.hosted_folding.LOCK_WAIT_SECONDS", 0.2)
    folding = HostedFolding(state, Recorder(root, state / "host.evidence.jsonl"), lambda name: "remote.yaml")
    live, aside = spool_files(state, "remote")
    live.parent.mkdir(parents=True)
    append_spooled(live.parent, "remote", {"id": "r0", "event": "hosted-request", "resource": "Workload/remote"})
    held = os.open(live, os.O_RDONLY)  # a lock of its own open file: the fold's open conflicts with it
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        folding.fold("remote")
        assert aside.exists() and not (root / "remote.evidence.jsonl").exists(), "nothing folded while it is held"
    finally:
        os.close(held)
    folding.fold("remote")
    assert not aside.exists() and [r["id"] for r in read_records([root / "remote.evidence.jsonl"]) if r] == ["r0"]


@as_root
def test_the_gateway_names_the_uid_that_cannot_read_the_key(tmp_path: Path) -> None:
    """Between the gateway's first start and the pass that judges the key for its user, a request says why."""
    key = tmp_path / "key"
    key.write_text("sk-only-root-reads-this\n")
    key.chmod(0o600)
    code = ("from reconciler.api.fallback import SecretRef\nfrom reconciler.gateway.hosted import KeyUnavailable, read_key\n"
            f"try:\n    read_key(SecretRef(file={str(key)!r}))\nexcept KeyUnavailable as problem:\n    print(problem)")
    shown = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60, preexec_fn=lambda: os.setuid(61999),
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert f"apiKey file {key}: Permission denied for uid 61999" in shown.stdout, shown.stderr
    assert "sk-only" not in shown.stdout + shown.stderr
