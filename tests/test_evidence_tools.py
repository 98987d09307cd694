"""`reconciler verify`, `export -o` and `forget` on real folders: the real CLI, real processes, a real git repo."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import subprocess
import tarfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from reconciler.api.approval import Answer, Approval
from reconciler.api.meta import ResourceKey
from reconciler.control.bundle import write_bundle
from reconciler.control.forget import Refused, forget
from reconciler.record.approvals import ApprovalStore
from reconciler.record.evidence import RECHAINED, EvidenceLog, chain_files, verify_chain
from tests.conftest import PYTHON, Workspace, wait_for, workload_yaml

LOG_MARK = "print('log-' + 'mark', flush=True)\nimport time\nwhile True: time.sleep(1)"  # the log says log-mark


def run(workspace: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    """verify / export / forget take PATH (after NAME for forget) and --state-dir like the other commands."""
    name = [args[1]] if args[0] == "forget" else []
    rest = args[2:] if args[0] == "forget" else args[1:]
    return workspace.cli(args[0], *name, str(workspace.desired), "--state-dir", str(workspace.state), *rest)


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def approve(workspace: Workspace, name: str) -> None:
    """An approval and a hosted consent, as `reconciler approve [--hosted]` keeps them."""
    for hosted in (False, True):
        ApprovalStore(workspace.state).put(Approval(name=name, spec_hash="f" * 64, answer=Answer.approve, by="approval-mark",
                                                    at=datetime.now(timezone.utc), hosted=hosted))


# -- verify ---------------------------------------------------------------------------------------------------------

def test_verify_passes_an_applied_folder_and_names_an_edited_or_deleted_line(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web"))
    assert workspace.cli("apply").returncode == 0
    log = workspace.desired / "web.evidence.jsonl"
    intact = log.read_text()
    assert len(lines_of(log)) == 3

    result = run(workspace, "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{log}: OK, 3 records verified" in result.stdout
    assert f"{workspace.desired / 'policy.evidence.jsonl'}: OK" in result.stdout

    lines = lines_of(log)  # a field of line 2 edited: its hash changes, so line 3 no longer links to it
    log.write_text(lines[0] + lines[1].replace('"result":"done"', '"result":"failed"') + lines[2])
    result = run(workspace, "verify")
    assert result.returncode == 1
    assert f"{log}: BROKEN at {log}:3: prev does not match the hash of the line before (2 records verified before it)" \
        in result.stdout

    record = json.loads(lines[1])  # the link itself edited: the line is named
    log.write_text(lines[0] + json.dumps({**record, "prev": "0" * 64}) + "\n" + lines[2])
    assert f"BROKEN at {log}:2: prev does not match" in run(workspace, "verify").stdout

    log.write_text(lines[0] + lines[2])  # line 2 deleted: the line now in its place is named
    result = run(workspace, "verify")
    assert (result.returncode, f"BROKEN at {log}:2:" in result.stdout) == (1, True)
    log.write_text(intact)
    assert run(workspace, "verify").returncode == 0


def test_rotation_keeps_one_chain_across_files_and_a_tampered_file_is_named(workspace: Workspace) -> None:
    path = workspace.desired / "rotating.evidence.jsonl"
    log = EvidenceLog(path, max_bytes=400, keep=3)
    for n in range(40):
        log.append({"event": "action", "resource": "Workload/r", "n": n})
        if n == 35:  # among the lines still kept at the end
            log = EvidenceLog(path, max_bytes=400, keep=3)  # a restarted writer continues the chain, too
    while len(lines_of(path)) < 3:  # so that a line of the live file can be deleted from its middle
        log.append({"event": "action", "resource": "Workload/r", "n": 0})
    files = chain_files(path)
    assert [file.name for file in files] == [f"{path.name}.3", f"{path.name}.2", f"{path.name}.1", path.name]
    for older, newer in zip(files, files[1:]):  # each file's first line links to the last line of the one before
        last = older.read_bytes().splitlines()[-1]
        assert json.loads(newer.read_bytes().splitlines()[0])["prev"] == hashlib.sha256(last).hexdigest()
    total = sum(len(lines_of(file)) for file in files)
    assert total < 40, "rotation dropped the oldest file"
    assert verify_chain(path).records == total

    result = run(workspace, "verify")
    assert result.returncode == 0 and f"{path}: OK, {total} records verified" in result.stdout

    second = files[1]  # the last line of a rotated file edited: the next file's first line is named
    original = second.read_text()
    lines = lines_of(second)
    second.write_text("".join(lines[:-1]) + lines[-1].replace('"n":', '"n":1'))
    assert f"BROKEN at {files[2]}:1: prev does not match" in run(workspace, "verify").stdout
    second.write_text(lines[0].replace('"n":', '"n":1') + "".join(lines[1:]))  # its first line: its second is named
    assert f"BROKEN at {second}:2:" in run(workspace, "verify").stdout
    second.write_text(original)

    live = lines_of(path)
    path.write_text(live[0] + "".join(live[2:]))
    result = run(workspace, "verify")
    assert result.returncode == 1 and f"BROKEN at {path}:2:" in result.stdout


# -- export ---------------------------------------------------------------------------------------------------------

def git(cwd: Path, *args: str) -> str:
    identity = ["-c", "user.name=Test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"]
    return subprocess.run(["git", *identity, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def members(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle) as tar:
        return {info.name: tar.extractfile(info).read() for info in tar.getmembers()}  # type: ignore[union-attr]


def test_export_writes_a_reproducible_bundle_without_logs_approvals_or_secrets(workspace: Workspace, tmp_path: Path) -> None:
    workspace.write("web.yaml", workload_yaml("web", code=LOG_MARK, env={"API_KEY": "sekrit-value", "db_Password": "pw-value",
                                                                        "MODE": "plain-value"}))
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "add", "desired")
    git(tmp_path, "commit", "-q", "-m", "desired state")
    assert workspace.cli("apply", "--wait").returncode == 0
    wait_for(lambda: b"log-mark" in (workspace.state / "logs" / "web.log").read_bytes(), what="the log line")
    approve(workspace, "web")

    first, second = tmp_path / "first.tar.gz", tmp_path / "out" / "second.tar.gz"
    result = run(workspace, "export", "-o", str(first))
    assert result.returncode == 0, result.stderr
    assert "2 secret-looking env values redacted" in result.stdout
    assert run(workspace, "export", "--output", str(second)).returncode == 0
    assert first.read_bytes() == second.read_bytes()
    assert first.stat().st_mode & 0o777 == 0o600
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]

    found = members(first)
    manifest = json.loads(found.pop("MANIFEST.json"))
    assert sorted(found) == ["desired/host-profile.status.yaml", "desired/policy.evidence.jsonl", "desired/policy.status.yaml",
                             "desired/policy.yaml", "desired/web.decisions.yaml", "desired/web.evidence.jsonl",
                             "desired/web.status.yaml", "desired/web.yaml"]
    assert {entry["path"]: entry["sha256"] for entry in manifest["files"]} == \
        {name: hashlib.sha256(data).hexdigest() for name, data in found.items()}
    everything = b"".join(found.values())
    for private in (b"log-mark", b"approval-mark", b"sekrit-value", b"pw-value"):
        assert private not in everything
    assert {entry["path"] for entry in manifest["leftOut"]} >= {"<state-dir>/logs/", "<state-dir>/approvals/", "<state-dir>/models/"}

    web = yaml.safe_load(found["desired/web.yaml"])
    assert web["spec"]["env"] == {"API_KEY": "<redacted>", "db_Password": "<redacted>", "MODE": "plain-value"}
    redacted = next(entry for entry in manifest["files"] if entry["path"] == "desired/web.yaml")["redacted"]
    assert redacted == ["Workload/web: spec.env.API_KEY", "Workload/web: spec.env.db_Password"]
    for name in ("policy.yaml", "web.evidence.jsonl", "web.status.yaml", "web.decisions.yaml"):
        assert found[f"desired/{name}"] == (workspace.desired / name).read_bytes()

    revision = manifest["revision"]  # what the reconciler writes beside the specs does not make the tree dirty
    assert revision == {"commit": git(tmp_path, "rev-parse", "HEAD"), "branch": "main", "folder": "desired/",
                        "dirty": False, "changed": []}
    with (workspace.desired / "policy.yaml").open("a") as policy:
        policy.write("# an edit not committed\n")
    assert run(workspace, "export", "-o", str(first)).returncode == 0
    revision = json.loads(members(first)["MANIFEST.json"])["revision"]
    assert (revision["dirty"], revision["changed"]) == (True, ["desired/policy.yaml"])


def test_a_spec_that_cannot_be_redacted_is_left_out(tmp_path: Path) -> None:
    folder = tmp_path / "desired"
    folder.mkdir()
    (folder / "broken.yaml").write_text("spec:\n  env: {API_TOKEN: hunter2\n")
    (folder / "listed.yaml").write_text("kind: Workload\nmetadata: {name: k}\nspec:\n  env:\n"
                                        "  - {name: GH_TOKEN, value: hunter3}\n  - {name: LEVEL, value: debug}\n")
    manifest = write_bundle(folder, tmp_path / "state", tmp_path / "b.tar.gz")
    found = members(tmp_path / "b.tar.gz")
    assert b"hunter" not in b"".join(found.values())
    assert {"path": "desired/broken.yaml", "why": "not valid YAML, so a secret in it could not be redacted"} in manifest["leftOut"]
    assert yaml.safe_load(found["desired/listed.yaml"])["spec"]["env"] == [
        {"name": "GH_TOKEN", "value": "<redacted>"}, {"name": "LEVEL", "value": "debug"}]
    assert manifest["revision"] == {"why": "the folder is not in a git work tree"}


def test_export_needs_a_target(workspace: Workspace, tmp_path: Path) -> None:
    assert "--kubernetes (to stdout) or -o FILE.tar.gz" in run(workspace, "export").stderr
    both = run(workspace, "export", "--kubernetes", "-o", str(tmp_path / "b.tar.gz"))
    assert both.returncode == 2 and not (tmp_path / "b.tar.gz").exists()


# -- forget ---------------------------------------------------------------------------------------------------------

def test_forget_is_refused_until_removed_then_deletes_everything_and_records_it(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web", code=LOG_MARK))
    assert workspace.cli("apply", "--wait").returncode == 0
    approve(workspace, "web")

    declared = run(workspace, "forget", "web")
    assert declared.returncode == 1
    assert f"Workload/web is still declared in {workspace.desired / 'web.yaml'}" in declared.stderr
    (workspace.desired / "web.yaml").unlink()
    running = run(workspace, "forget", "Workload/web")
    assert running.returncode == 1 and "Workload/web still runs (pid" in running.stderr
    assert (workspace.desired / "web.evidence.jsonl").exists()

    assert workspace.cli("apply").returncode == 0
    wait_for(lambda: not workspace.owned_processes("web"), what="web to be pruned")
    kept = sorted(path for path in workspace.state.rglob("*") if "web" in path.name)
    assert kept, "logs, approval and working folder outlive the process"
    dry = run(workspace, "forget", "web", "--dry-run")
    assert dry.returncode == 0 and f"would delete {workspace.desired / 'web.evidence.jsonl'}" in dry.stdout
    assert sorted(path for path in workspace.state.rglob("*") if "web" in path.name) == kept

    result = run(workspace, "forget", "web", "--kind", "Workload")
    assert result.returncode == 0, result.stderr
    assert f"delete {workspace.state / 'logs' / 'web.log'}" in result.stdout
    assert f"delete {workspace.state / 'approvals' / 'web.json'}" in result.stdout
    assert not [path for path in workspace.state.rglob("*") if "web" in path.name]
    assert not list(workspace.desired.glob("web.*"))

    host_log = workspace.state / "host.evidence.jsonl"
    [record] = [json.loads(line) for line in host_log.read_text().splitlines()]
    assert (record["event"], record["resource"]) == ("forget", "Workload/web")
    assert record["by"].startswith(pwd.getpwuid(os.getuid()).pw_name)  # with "(sudo from ...)" under sudo
    assert str(workspace.desired / "web.evidence.jsonl") in record["deleted"]
    assert record["counts"]["evidenceRecords"] == 5 and record["counts"]["filesDeleted"] == len(record["deleted"])
    verified = run(workspace, "verify")
    assert verified.returncode == 0 and f"{host_log}: OK, 1 records verified" in verified.stdout
    assert run(workspace, "forget", "web").stdout.strip() == "Workload/web: nothing kept about it"
    assert run(workspace, "export", "-o", str(workspace.state.parent / "b.tar.gz")).returncode == 0
    assert members(workspace.state.parent / "b.tar.gz")["state/host.evidence.jsonl"] == host_log.read_bytes()
    assert "is a Workload, not a Model" in run(workspace, "forget", "Workload/web", "--kind", "Model").stderr


def test_a_shared_spec_file_is_rechained_without_the_forgotten_resource(workspace: Workspace) -> None:
    pair = workload_yaml("a") + "---\n" + workload_yaml("b")
    workspace.write("pair.yaml", pair)
    workspace.start_daemon()
    wait_for(lambda: workspace.pid("pair.yaml", "a") and workspace.pid("pair.yaml", "b"), what="a and b to start")
    workspace.write("pair.yaml", workload_yaml("a"))
    wait_for(lambda: not workspace.owned_processes("b"), what="the daemon to prune b")
    log = workspace.desired / "pair.evidence.jsonl"
    wait_for(lambda: any(r["resource"] == "Workload/b" and r["event"] == "action" and r["action"] == "delete"
                         for r in workspace.evidence("pair.yaml")), what="b's deletion on record")

    busy = run(workspace, "forget", "b")  # the daemon appends to that chain: rewriting it under it would fork it
    assert busy.returncode == 1 and "is rewritten without its records" in busy.stderr and "is held by" in busy.stderr
    assert workspace.stop_daemon() == 0

    before = [r for r in workspace.evidence("pair.yaml") if r["resource"] == "Workload/a"]
    removed = len(workspace.evidence("pair.yaml")) - len(before)
    result = run(workspace, "forget", "b")
    assert result.returncode == 0, result.stderr
    assert f"rewrite {log} without its {removed} records" in result.stdout
    head, *rest = workspace.evidence("pair.yaml")
    assert (head["event"], head["removed"], head["removedRecords"]) == (RECHAINED, "Workload/b", removed)
    assert [{k: v for k, v in r.items() if k != "prev"} for r in rest] == [{k: v for k, v in r.items() if k != "prev"} for r in before]
    [record] = [json.loads(line) for line in (workspace.state / "host.evidence.jsonl").read_text().splitlines()]
    assert record["rewritten"][0]["replacedChainEnd"] == head["replacedChainEnd"]
    assert run(workspace, "verify").returncode == 0

    workspace.write("pair.yaml", workload_yaml("a", args=("v2",)))  # the reconciler carries on from the new chain
    assert workspace.cli("apply").returncode == 0
    assert workspace.actions("pair.yaml")[-1] == "recreate"
    assert run(workspace, "verify").returncode == 0


def test_a_rewrite_cut_short_still_verifies_and_a_rerun_finishes_it(tmp_path: Path) -> None:
    folder, state = tmp_path / "desired", tmp_path / "state"
    folder.mkdir()
    path = folder / "gone.evidence.jsonl"
    log = EvidenceLog(path, max_bytes=300, keep=5)
    for n in range(12):
        log.append({"event": "action", "resource": f"Workload/{'x' if n % 3 else 'y'}", "n": n})
    old = {file: file.read_bytes() for file in chain_files(path)[:-1]}
    assert len(old) >= 2

    forget(ResourceKey("Workload", "y"), folder, state, "tester")
    assert chain_files(path) == [path]
    for file, data in old.items():  # as if the crash came after the new file's rename, before the old files went
        file.write_bytes(data)
    assert verify_chain(path).ok

    again = forget(ResourceKey("Workload", "y"), folder, state, "tester")
    assert sorted(again.deleted) == sorted(old) and not again.rewritten
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["n"] for r in records[1:]] == [n for n in range(12) if n % 3]
    assert verify_chain(path).ok and verify_chain(state / "host.evidence.jsonl").ok


def test_forget_refuses_to_hide_a_broken_chain(tmp_path: Path) -> None:
    folder = tmp_path / "desired"
    folder.mkdir()
    path = folder / "w.evidence.jsonl"
    log = EvidenceLog(path)
    for n in range(3):
        log.append({"resource": "Workload/w", "n": n})
    lines = lines_of(path)
    path.write_text(lines[0] + lines[1].replace('"n":1', '"n":7') + lines[2])
    with pytest.raises(Refused, match=f"BROKEN at {path}:3"):
        forget(ResourceKey("Workload", "w"), folder, tmp_path / "state", "tester")
    assert path.exists()


def test_forget_takes_only_a_resource_name(tmp_path: Path) -> None:
    (tmp_path / "desired").mkdir()
    for name in ("../../etc", "web*", "web\n"):  # it becomes paths and glob patterns
        with pytest.raises(Refused, match="is not a resource name"):
            forget(ResourceKey("Workload", name), tmp_path / "desired", tmp_path / "state", "tester")


def test_what_forget_cannot_remove_is_listed_and_the_rest_still_goes(tmp_path: Path) -> None:
    """An older GitOps revision's copy that cannot be deleted (immutable here) is named, by the CLI and in the host
    log; the other copies go all the same."""
    state = tmp_path / "state"
    older, in_force = state / "gitops" / "revisions" / ("a" * 40), state / "gitops" / "revisions" / ("b" * 40)
    in_force.mkdir(parents=True)
    older.mkdir()
    (state / "gitops" / "current").symlink_to(f"revisions/{in_force.name}")
    chain, status = older / "gone.evidence.jsonl", older / "gone.status.yaml"
    EvidenceLog(chain).append({"event": "action", "resource": "Workload/gone"})
    status.write_text(yaml.safe_dump({"kind": "StatusReport", "resources": [{"kind": "Workload", "name": "gone"}]}))
    if subprocess.run(["chattr", "+i", str(chain)], capture_output=True).returncode:
        pytest.skip("needs chattr on this filesystem (root, ext4)")
    try:
        result = subprocess.run([PYTHON, "-m", "reconciler", "forget", "gone", str(state / "gitops" / "current"),
                                 "--state-dir", str(state)], capture_output=True, text=True, timeout=60)
    finally:
        subprocess.run(["chattr", "-i", str(chain)], check=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"could not remove {chain}: Operation not permitted" in result.stderr
    assert "1 not removed, listed above" in result.stdout and chain.exists() and not status.exists()
    [record] = [json.loads(line) for line in (state / "host.evidence.jsonl").read_text().splitlines()]
    assert record["notRemoved"] == [{"path": str(chain), "why": "Operation not permitted"}]
    assert record["deleted"] == [str(status)] and record["counts"]["copiesInOlderRevisions"] == 2


def test_a_line_appended_while_forget_rewrites_the_chain_is_kept(tmp_path: Path) -> None:
    """The gateway appends hosted-request lines to a workload's chain from its own process while `forget` rewrites
    that chain: each rewrite holds the chain's lock as an append does, so no appended line lands in the file being
    replaced, and the chain verifies after every rewrite."""
    folder, state, stop = tmp_path / "desired", tmp_path / "state", tmp_path / "stop"
    folder.mkdir()
    path = folder / "chat.evidence.jsonl"
    log = EvidenceLog(path)
    forgotten = [f"old-{n}" for n in range(15)]
    for name in forgotten:
        log.append({"event": "action", "resource": f"Workload/{name}"})
    appender = ("import sys\nfrom pathlib import Path\nfrom reconciler.record.evidence import EvidenceLog\n"
                "log, stop, n = EvidenceLog(Path(sys.argv[1])), Path(sys.argv[2]), 0\n"
                "while not stop.exists():\n"
                "    log.append({'event': 'hosted-request', 'resource': 'Workload/chat', 'n': n})\n    n += 1\n"
                "print(n)\n")
    gateway = subprocess.Popen([PYTHON, "-c", appender, str(path), str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: '"n":' in path.read_text(), timeout=30, what="the appender's first line")
        for name in forgotten:
            assert forget(ResourceKey("Workload", name), folder, state, "tester").rewritten == {path: 1}
            assert verify_chain(path).ok
    finally:
        stop.touch()
        appended = int(gateway.communicate(timeout=60)[0])
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["n"] for r in records if r["event"] == "hosted-request"] == list(range(appended))
    assert not [r for r in records if r.get("resource", "").startswith("Workload/old-")]
    assert verify_chain(path).ok
