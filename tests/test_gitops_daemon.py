"""The daemon following a real git remote: a pushed commit is applied, `reconciler sync` applies it at once, an
invalid commit leaves the last good one serving, a rewrite is followed, status and evidence name the revision."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import tarfile
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from reconciler.record.evidence import verify_chain
from tests.conftest import PYTHON, SLEEPER, POLICY_YAML, wait_for, workload_yaml
from tests.test_gitops import Repo, isolated_git, run  # noqa: F401 - the fixture isolates git from this machine

BAD = workload_yaml("app", SLEEPER, ("v-bad",)).replace("  args:", "  replicaz: 2\n  args:")


class Daemon:
    def __init__(self, tmp_path: Path, repo: Repo) -> None:
        self.state = tmp_path / "state"
        self.repo = repo
        self.log = tmp_path / "daemon.log"
        self.process: subprocess.Popen[str] | None = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, "-m", "reconciler", *args, "--state-dir", str(self.state)],
                              capture_output=True, text=True, timeout=60)

    def start(self) -> None:
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [PYTHON, "-m", "reconciler", "--log-level", "DEBUG", "run", "--git", str(self.repo.remote),
                 "--path", "hosts/box", "--interval", "1h", "--resync", "3600", "--state-dir", str(self.state)],
                stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)
            self.process = None

    @property
    def root(self) -> Path:
        return self.state / "gitops" / "current" / "hosts" / "box"

    def report(self) -> dict[str, Any]:
        try:
            return yaml.safe_load((self.root / "app.status.yaml").read_text()) or {}
        except FileNotFoundError:
            return {}

    def app(self) -> dict[str, Any]:
        return next((r for r in self.report().get("resources", []) if r["name"] == "app"), {})

    def version(self) -> str | None:
        pid = self.app().get("pid")
        try:
            return psutil.Process(pid).cmdline()[-1] if pid else None
        except psutil.NoSuchProcess:
            return None

    def follower_status(self) -> dict[str, Any]:
        return json.loads((self.state / "gitops" / "status.json").read_text())


@pytest.fixture
def daemon(tmp_path: Path) -> Any:
    repo = Repo(tmp_path)
    running = Daemon(tmp_path, repo)
    yield running
    running.stop()
    running.cli("down", str(running.root))


def commit(repo: Repo, version: str | None, bad: bool = False, push: bool = True) -> str:
    text = BAD if bad else workload_yaml("app", SLEEPER, (version or "",))
    return repo.commit({"hosts/box/policy.yaml": POLICY_YAML, "hosts/box/app.yaml": text}, push=push)


def test_the_daemon_follows_the_branch_and_never_applies_a_bad_revision(daemon: Daemon) -> None:
    first = commit(daemon.repo, "v1")
    daemon.start()
    wait_for(lambda: daemon.version() == "v1", timeout=20, what="v1 from the first revision")
    assert daemon.report()["revision"] == f"main@sha1:{first}"
    assert all(line["revision"] == f"main@sha1:{first}" for line in _evidence(daemon))
    pid = daemon.app()["pid"]

    second = commit(daemon.repo, "v2")
    assert daemon.cli("sync").returncode == 0
    wait_for(lambda: daemon.version() == "v2", timeout=10, what="v2 applied on `reconciler sync` (interval is 1h)")
    assert daemon.report()["revision"] == f"main@sha1:{second}"
    assert daemon.follower_status()["lastAppliedRevision"] == f"main@sha1:{second}"
    assert verify_chain(daemon.root / "app.evidence.jsonl").ok, "the chain continues across revisions"
    assert pid != daemon.app()["pid"]

    bad = commit(daemon.repo, None, bad=True)
    daemon.cli("sync")
    wait_for(lambda: daemon.follower_status().get("lastAttemptedRevision") == f"main@sha1:{bad}", timeout=10,
             what="the bad revision attempted")
    shown = daemon.cli("status", "--git", str(daemon.repo.remote), "--path", "hosts/box")
    assert shown.returncode == 0, shown.stderr
    assert f"lastAppliedRevision: main@sha1:{second}" in shown.stdout
    assert f"lastAttemptedRevision: main@sha1:{bad} (Invalid)" in shown.stdout
    assert "  hosts/box/app.yaml:14:3 spec.replicaz: unknown field 'replicaz'" in shown.stdout, shown.stdout
    git = ("--git", str(daemon.repo.remote), "--path", "hosts/box")  # the per-resource commands take it too
    described = daemon.cli("describe", "app", *git)
    assert described.returncode == 0 and "Pid:" in described.stdout and "v2" in described.stdout, described.stderr
    refused = daemon.cli("rollback", "app", *git)  # reads the spec in force: v2, never proven (no soak declared)
    assert refused.returncode == 1 and "Workload/app: no known-good version on record" in refused.stderr, refused.stderr
    serving = daemon.app()["pid"]
    daemon.cli("sync")  # the same bad head again: not tried again
    wait_for(lambda: not (daemon.state / "gitops" / "sync-request").exists(), timeout=10, what="the sync taken")
    assert daemon.follower_status()["lastAttemptCount"] == 1
    assert daemon.version() == "v2" and daemon.app()["pid"] == serving

    run("reset", "--quiet", "--hard", first, cwd=daemon.repo.work)  # rewrite history: the applied commit goes too
    rewritten = commit(daemon.repo, "v3", push=False)
    daemon.repo.push(force=True)
    daemon.cli("sync")
    wait_for(lambda: daemon.version() == "v3", timeout=10, what="the rewritten branch followed")
    assert daemon.report()["revision"] == f"main@sha1:{rewritten}"
    assert daemon.follower_status()["lastHistoryRewrite"]["fromRevision"] == f"main@sha1:{second}"
    assert f"history rewritten: main@sha1:{second} is no longer on the branch" in daemon.log.read_text()

    daemon.stop(signal.SIGKILL)  # killed at any instant: the restart re-adopts, never duplicates
    daemon.start()
    wait_for(lambda: daemon.log.read_text().count("INFO watching ") == 2, timeout=20, what="the daemon back")
    wait_for(lambda: daemon.app().get("pid") is not None, timeout=10, what="its status")
    assert daemon.version() == "v3"
    assert len([p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [])[-1:] == ["v3"]]) == 1


def test_a_folder_in_a_git_repository_records_its_head_and_whether_it_is_dirty(tmp_path: Path) -> None:
    folder, state = committed_folder(tmp_path), tmp_path / "state"
    head = run("rev-parse", "HEAD", cwd=folder)

    def apply() -> str:
        subprocess.run([PYTHON, "-m", "reconciler", "apply", str(folder), "--state-dir", str(state)], check=True,
                       capture_output=True, timeout=60)
        return yaml.safe_load((folder / "app.status.yaml").read_text())["revision"]

    try:
        assert apply() == f"main@sha1:{head}"
        assert run("status", "--porcelain", cwd=folder) != "", "the generated files are untracked here (no .gitignore)"
        (folder / "app.yaml").write_text(workload_yaml("app", SLEEPER, ("v2",)))
        assert apply() == f"main@sha1:{head}+dirty"
    finally:
        subprocess.run([PYTHON, "-m", "reconciler", "down", str(folder), "--state-dir", str(state)], capture_output=True, timeout=60)


def committed_folder(tmp_path: Path) -> Path:
    """A desired-state folder that is its own git repository, everything committed."""
    folder = tmp_path / "desired"
    folder.mkdir()
    (folder / "policy.yaml").write_text(POLICY_YAML)
    (folder / "app.yaml").write_text(workload_yaml("app", SLEEPER, ("v1",)))
    run("init", "--quiet", "-b", "main", str(folder), cwd=tmp_path)
    run("add", "--all", cwd=folder)
    run("commit", "--quiet", "-m", "first", cwd=folder)
    return folder


def _evidence(daemon: Daemon) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (daemon.root / "app.evidence.jsonl").read_text().splitlines()]


def test_a_repository_git_refuses_to_read_leaves_the_revision_unknown_and_the_rest_working(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root: git's ownership check trips when root reads another user's repository")
    folder, state = committed_folder(tmp_path), tmp_path / "state"
    nobody = pwd.getpwnam("nobody")
    for path in [folder, *folder.rglob("*")]:
        os.lchown(path, nobody.pw_uid, nobody.pw_gid)
    (folder / "app.yaml").chmod(0o644)
    try:
        applied = subprocess.run([PYTHON, "-m", "reconciler", "apply", str(folder), "--state-dir", str(state)],
                                 capture_output=True, text=True, timeout=60)
        assert applied.returncode == 0, applied.stderr
        assert "the desired state's revision is unknown" in applied.stderr and "dubious ownership" in applied.stderr
        report = yaml.safe_load((folder / "app.status.yaml").read_text())
        assert "revision" not in report and report["resources"][0]["phase"] == "Running"
    finally:
        subprocess.run([PYTHON, "-m", "reconciler", "down", str(folder), "--state-dir", str(state)], capture_output=True, timeout=60)


def test_forget_verify_and_export_take_git_and_forget_reaches_the_older_revisions(daemon: Daemon, tmp_path: Path) -> None:
    """forget removes the copies kept in older revisions too; verify, export and forget find the branch by --git."""
    both = workload_yaml("gone", SLEEPER, ("v1",)) + "---\n" + workload_yaml("kept", SLEEPER, ("v1",))
    first = daemon.repo.commit({"hosts/box/policy.yaml": POLICY_YAML, "hosts/box/pair.yaml": both})
    daemon.start()
    pair = daemon.root / "pair.status.yaml"

    def running() -> set[str]:
        report = yaml.safe_load(pair.read_text()) if pair.exists() else None
        return {r["name"] for r in (report or {}).get("resources", []) if r.get("pid")}

    wait_for(lambda: running() == {"gone", "kept"}, timeout=20, what="both running from the first revision")
    second = daemon.repo.commit({"hosts/box/pair.yaml": workload_yaml("kept", SLEEPER, ("v1",))})
    assert daemon.cli("sync").returncode == 0
    wait_for(lambda: daemon.follower_status()["lastAppliedRevision"] == f"main@sha1:{second}" and running() == {"kept"},
             timeout=20, what="gone pruned by the second revision")
    older = daemon.state / "gitops" / "revisions" / first / "hosts" / "box"
    assert "Workload/gone" in (older / "pair.evidence.jsonl").read_text() and "gone" in (older / "pair.status.yaml").read_text()

    git = ("--git", str(daemon.repo.remote), "--path", "hosts/box")
    busy = daemon.cli("forget", "gone", *git)  # the daemon appends to the shared chain and may switch revisions
    assert busy.returncode == 1 and "is held by" in busy.stderr, busy.stderr
    daemon.stop()
    dry = daemon.cli("forget", "gone", *git, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would rewrite {older / 'pair.status.yaml'} without its status" in dry.stdout, dry.stdout
    forgotten = daemon.cli("forget", "gone", *git)
    assert forgotten.returncode == 0, forgotten.stderr

    copies = [path for path in (daemon.state / "gitops" / "revisions").rglob("*") if path.is_file()]
    for chain in [path for path in copies if path.name.endswith(".evidence.jsonl")]:
        records = [json.loads(line) for line in chain.read_text().splitlines()]
        assert not [r for r in records if r.get("resource") == "Workload/gone"], chain
        assert verify_chain(chain).ok, chain
    for status in [path for path in copies if path.name.endswith((".status.yaml", ".decisions.yaml"))]:
        assert "gone" not in {r["name"] for r in (yaml.safe_load(status.read_text()) or {}).get("resources", [])}, status
    assert {r["name"] for r in yaml.safe_load((older / "pair.status.yaml").read_text())["resources"]} == {"kept"}
    [record] = [json.loads(line) for line in (daemon.state / "host.evidence.jsonl").read_text().splitlines()]
    assert str(older.resolve() / "pair.status.yaml") in record["statusRewritten"]
    assert str(older.resolve() / "pair.evidence.jsonl") in [chain["path"] for chain in record["rewritten"]]
    assert str(older.resolve() / "pair.decisions.yaml") in record["statusRewritten"]  # its decision record too
    assert record["counts"]["copiesInOlderRevisions"] == 3 and record["notRemoved"] == []

    verified = daemon.cli("verify", *git)
    assert verified.returncode == 0 and f"{daemon.root / 'pair.evidence.jsonl'}: OK" in verified.stdout, verified.stdout
    bundle = tmp_path / "box.tar.gz"
    assert daemon.cli("export", *git, "-o", str(bundle)).returncode == 0
    with tarfile.open(bundle) as tar:
        manifest = json.loads(tar.extractfile("MANIFEST.json").read())  # type: ignore[union-attr]
    revision = manifest["revision"]
    applied_at = datetime.fromisoformat(daemon.follower_status()["lastAppliedAt"])
    assert datetime.fromisoformat(revision.pop("appliedAt")) == applied_at
    assert revision == {"source": str(daemon.repo.remote), "branch": "main", "commit": second,
                        "revision": f"main@sha1:{second}", "folder": "hosts/box"}
