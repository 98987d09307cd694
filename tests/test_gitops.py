"""The GitOps follower against real repositories: a bare remote on disk, a clone that commits and pushes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from reconciler.control.gitops import (
    FollowerStatus, GitFollower, Outcome, Prepared, clean_path, request_sync, should_attempt,
)
from reconciler.load.desired import load_desired
from reconciler.observe.git import local_revision, redact, revision_commit, revision_string
from reconciler.record.evidence import EvidenceLog, verify_chain

POLICY = """\
apiVersion: localaistack.dev/v1alpha1
kind: Policy
metadata:
  name: home
spec:
  native:
    trustedExecutables:
      - executable: /usr/bin/python3
"""


def workload(port: int, extra: str = "") -> str:
    return f"""\
apiVersion: localaistack.dev/v1alpha1
kind: Workload
metadata:
  name: hello
spec:
  command: [/usr/bin/python3, -m, http.server]
  port: {port}
{extra}"""


BAD_FIELD = workload(8099, "  replicaz: 2\n")  # line 8, column 3


@pytest.fixture(autouse=True)
def isolated_git(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the tests' git nor the follower's may read this machine's git configuration."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Ada")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "ada@example.org")


def run(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


class Repo:
    """A working clone of a bare remote: each commit is pushed at once, as a user's would be."""

    def __init__(self, root: Path) -> None:
        self.remote = root / "remote.git"
        self.work = root / "work"
        run("init", "--quiet", "--bare", str(self.remote), cwd=root)
        run("init", "--quiet", "-b", "main", str(self.work), cwd=root)
        run("remote", "add", "origin", str(self.remote), cwd=self.work)

    def commit(self, files: dict[str, str | None], sign_with: Path | None = None, push: bool = True) -> str:
        for name, text in files.items():
            path = self.work / name
            if text is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        run("add", "--all", cwd=self.work)
        signing = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={sign_with}", "-c", "commit.gpgsign=true"] if sign_with else []
        run(*signing, "commit", "--quiet", "--allow-empty", "-m", "change", cwd=self.work)
        if push:
            self.push()
        return run("rev-parse", "HEAD", cwd=self.work)

    def push(self, force: bool = False) -> None:
        run("push", "--quiet", "origin", f"{'+' if force else ''}HEAD:main", cwd=self.work)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path)


def follower(tmp_path: Path, repo: Repo, **options: object) -> GitFollower:
    return GitFollower(tmp_path / "state", str(repo.remote), **options)  # type: ignore[arg-type]


def saved(tmp_path: Path) -> dict[str, object]:
    return json.loads((tmp_path / "state" / "gitops" / "status.json").read_text())


def apply(follow: GitFollower) -> Prepared:
    prepared = follow.poll()
    assert prepared is not None, follow.status.last_attempt_errors or follow.status.last_fetch_error
    follow.switch(prepared)
    return prepared


def test_first_poll_prepares_the_head_and_switch_puts_it_in_force(tmp_path: Path, repo: Repo) -> None:
    head = repo.commit({"policy.yaml": POLICY, "hello.yaml": workload(8099)})
    follow = follower(tmp_path, repo)

    prepared = apply(follow)

    assert (prepared.sha, prepared.revision) == (head, f"main@sha1:{head}")
    assert follow.desired_root == tmp_path / "state" / "gitops" / "current"
    assert os.readlink(follow.current) == f"revisions/{head}"
    assert not (follow.desired_root / ".git").exists()
    assert len(load_desired(follow.desired_root).resources) == 2
    status = saved(tmp_path)
    assert status["lastAppliedRevision"] == status["lastAttemptedRevision"] == f"main@sha1:{head}"
    assert status["lastAttemptOutcome"] == "Valid" and status["lastAttemptErrors"] == []
    assert follow.poll() is None  # nothing new


def test_a_pushed_commit_is_followed_through_the_same_paths(tmp_path: Path, repo: Repo) -> None:
    repo.commit({"policy.yaml": POLICY, "hello.yaml": workload(8099)})
    follow = follower(tmp_path, repo)
    apply(follow)
    spec = follow.desired_root / "hello.yaml"

    second = repo.commit({"hello.yaml": workload(8100)})
    prepared = follow.poll()

    assert prepared is not None and prepared.sha == second and prepared.rewritten_from is None
    assert "8099" in spec.read_text()  # prepared, not yet in force
    follow.switch(prepared)
    assert follow.desired_root / "hello.yaml" == spec and "8100" in spec.read_text()
    assert saved(tmp_path)["lastAppliedRevision"] == f"main@sha1:{second}"


def test_an_invalid_commit_is_recorded_once_and_the_last_good_stays(tmp_path: Path, repo: Repo) -> None:
    good = repo.commit({"policy.yaml": POLICY, "hello.yaml": workload(8099)})
    follow = follower(tmp_path, repo)
    apply(follow)

    bad = repo.commit({"hello.yaml": BAD_FIELD})
    assert follow.poll() is None

    status = saved(tmp_path)
    assert status["lastAppliedRevision"] == f"main@sha1:{good}"
    assert status["lastAttemptedRevision"] == f"main@sha1:{bad}"
    assert status["lastAttemptOutcome"] == "Invalid" and status["lastAttemptCount"] == 1
    assert status["lastAttemptErrors"] == ["hello.yaml:8:3 spec.replicaz: unknown field 'replicaz'"]
    assert not (follow.revisions / bad).exists()
    assert "8099" in (follow.desired_root / "hello.yaml").read_text()

    assert follow.poll() is None  # the same bad head: not tried again
    assert saved(tmp_path) == status

    fixed = repo.commit({"hello.yaml": workload(8101)})
    apply(follow)
    assert saved(tmp_path)["lastAppliedRevision"] == f"main@sha1:{fixed}"
    assert "8101" in (follow.desired_root / "hello.yaml").read_text()


def test_a_force_push_is_followed_and_reported(tmp_path: Path, repo: Repo) -> None:
    first = repo.commit({"policy.yaml": POLICY, "hello.yaml": workload(8099)})
    follow = follower(tmp_path, repo)
    apply(follow)
    dropped = repo.commit({"hello.yaml": workload(8100)})
    apply(follow)

    run("reset", "--quiet", "--hard", first, cwd=repo.work)
    rewritten = repo.commit({"hello.yaml": workload(8102)}, push=False)
    repo.push(force=True)
    prepared = follow.poll()

    assert prepared is not None and prepared.sha == rewritten
    assert prepared.rewritten_from == f"main@sha1:{dropped}"
    follow.switch(prepared)
    rewrite = saved(tmp_path)["lastHistoryRewrite"]
    assert isinstance(rewrite, dict)
    assert (rewrite["fromRevision"], rewrite["toRevision"]) == (f"main@sha1:{dropped}", f"main@sha1:{rewritten}")
    assert "8102" in (follow.desired_root / "hello.yaml").read_text()


def test_only_the_path_is_the_desired_state_and_errors_name_files_as_in_the_repository(tmp_path: Path, repo: Repo) -> None:
    repo.commit({"clusters/home/policy.yaml": POLICY, "clusters/home/hello.yaml": workload(8099),
                 "docs/example.yaml": BAD_FIELD})
    follow = follower(tmp_path, repo, path="clusters/home/")
    apply(follow)

    assert follow.desired_root == follow.current / "clusters" / "home"
    assert len(load_desired(follow.desired_root).resources) == 2

    repo.commit({"clusters/home/hello.yaml": BAD_FIELD})
    assert follow.poll() is None
    assert follow.status.last_attempt_errors == ["clusters/home/hello.yaml:8:3 spec.replicaz: unknown field 'replicaz'"]


def test_a_missing_path_makes_the_revision_invalid(tmp_path: Path, repo: Repo) -> None:
    head = repo.commit({"policy.yaml": POLICY})
    follow = follower(tmp_path, repo, path="clusters/home")

    assert follow.poll() is None
    assert follow.status.last_attempt_outcome is Outcome.INVALID
    assert follow.status.last_attempt_errors == [f"clusters/home: no such folder in commit {head}"]
    assert follow.status.last_applied_revision is None and not follow.current.exists()


def test_a_link_out_of_the_tree_makes_the_revision_invalid(tmp_path: Path, repo: Repo) -> None:
    repo.commit({"policy.yaml": POLICY})
    (repo.work / "secret.yaml").symlink_to("/etc/passwd")
    head = repo.commit({})
    follow = follower(tmp_path, repo)

    assert follow.poll() is None
    [error] = follow.status.last_attempt_errors
    assert error.startswith(f"commit {head}: ") and "secret.yaml" in error
    assert [path.name for path in follow.revisions.iterdir()] == []


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen (openssh-client) is not installed")
    made = {}
    for name in ("trusted", "stranger"):
        key = tmp_path / "keys" / name
        key.parent.mkdir(exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
        made[name] = key
    public = (tmp_path / "keys" / "trusted.pub").read_text().split()
    signers = tmp_path / "keys" / "allowed_signers"
    signers.write_text(f'ada@example.org namespaces="git" {public[0]} {public[1]}\n')
    made["signers"] = signers
    return made


def test_only_commits_signed_by_an_allowed_key_are_applied(tmp_path: Path, repo: Repo, keys: dict[str, Path]) -> None:
    signed = repo.commit({"policy.yaml": POLICY, "hello.yaml": workload(8099)}, sign_with=keys["trusted"])
    follow = follower(tmp_path, repo, allowed_signers=keys["signers"])
    apply(follow)
    assert follow.status.last_applied_revision == f"main@sha1:{signed}"

    unsigned = repo.commit({"hello.yaml": workload(8100)})
    assert follow.poll() is None
    assert follow.status.last_attempt_errors == [f"commit {unsigned}: unsigned"]

    foreign = repo.commit({"hello.yaml": workload(8101)}, sign_with=keys["stranger"])
    assert follow.poll() is None
    [error] = follow.status.last_attempt_errors
    assert error.startswith(f"commit {foreign}: signed by a key that is not trusted") and "SHA256:" in error
    assert follow.status.last_applied_revision == f"main@sha1:{signed}"
    assert not (follow.revisions / foreign).exists()  # refused before its files were written anywhere

    # Trusting the stranger's key changes the judgement: the refused head is tried again.
    public = (tmp_path / "keys" / "stranger.pub").read_text().split()
    with keys["signers"].open("a") as signers:
        signers.write(f'ada@example.org namespaces="git" {public[0]} {public[1]}\n')
    apply(follow)
    assert follow.status.last_applied_revision == f"main@sha1:{foreign}"


def test_outputs_are_carried_byte_for_byte_and_the_evidence_chain_continues(tmp_path: Path, repo: Repo) -> None:
    repo.commit({"policy.yaml": POLICY, "hello.yaml": workload(8099), "team/other.yaml": workload(8200).replace("hello", "other")})
    follow = follower(tmp_path, repo)
    apply(follow)
    root = follow.desired_root
    log = EvidenceLog(root / "hello.evidence.jsonl", max_bytes=400)
    for n in range(6):
        log.append({"event": "decision", "n": n})  # rotates: hello.evidence.jsonl.1, .2 ...
    (root / "hello.status.yaml").write_text("resources: []\n")
    (root / "team" / "other.status.yaml").write_text("resources: [other]\n")
    (root / "gone.status.yaml").write_text("stale\n")
    old_tree = follow.revisions / os.readlink(follow.current).split("/")[-1]
    outputs = {path.relative_to(old_tree): path.read_bytes() for path in old_tree.rglob("*")
               if path.name.endswith((".status.yaml",)) or ".evidence.jsonl" in path.name}
    assert len(outputs) >= 5

    # A commit carrying an (older) copy of an output: the one in force wins, or the chain would fork.
    repo.commit({"hello.yaml": workload(8100), "hello.evidence.jsonl": '{"prev":"stale"}\n'})
    prepared = follow.poll()
    assert prepared is not None
    (old_tree / "gone.status.yaml").unlink()  # the recorder swept it before the switch
    del outputs[Path("gone.status.yaml")]
    (old_tree / ".hello.evidence.jsonl.k1ll3d.tmp").write_text("a temp file, never an output\n")
    (prepared.directory / ".hello.status.yaml.k1ll3d.tmp").write_text("left by a kill mid-carry\n")
    follow.switch(prepared)

    new_tree = prepared.directory
    assert {relative: (new_tree / relative).read_bytes() for relative in outputs} == outputs
    assert not (new_tree / "gone.status.yaml").exists()
    assert [path.name for path in new_tree.iterdir() if path.name.startswith(".")] == []
    log.append({"event": "after switch"})  # the same writer, its cached hash, through the stable path
    result = verify_chain(root / "hello.evidence.jsonl")
    assert result.ok, result
    assert (old_tree / "hello.evidence.jsonl").read_bytes() == outputs[Path("hello.evidence.jsonl")]


def test_revisions_beyond_the_last_three_are_pruned(tmp_path: Path, repo: Repo) -> None:
    repo.commit({"policy.yaml": POLICY, "hello.yaml": workload(8099)})
    follow = follower(tmp_path, repo)
    applied = [apply(follow).sha]
    for port in (8100, 8101, 8102):
        repo.commit({"hello.yaml": workload(port)})
        applied.append(apply(follow).sha)

    assert sorted(path.name for path in follow.revisions.iterdir()) == sorted(applied[-3:])


def test_a_revision_a_process_still_works_in_is_kept_until_it_moves_on(tmp_path: Path, repo: Repo) -> None:
    repo.commit({"policy.yaml": POLICY, "hello.yaml": workload(8099)})
    follow = follower(tmp_path, repo)
    first = apply(follow).sha
    worker = subprocess.Popen(["sleep", "60"], cwd=follow.revisions / first)  # a workload's cwd in that tree
    try:
        for port in (8100, 8101, 8102):
            repo.commit({"hello.yaml": workload(port)})
            apply(follow)
        assert (follow.revisions / first).is_dir(), "pruned under a running process"
    finally:
        worker.kill()
        worker.wait()
    repo.commit({"hello.yaml": workload(8103)})
    apply(follow)
    assert not (follow.revisions / first).exists() and len(list(follow.revisions.iterdir())) == 3


def test_a_kill_at_any_step_leaves_a_consistent_picture(tmp_path: Path, repo: Repo) -> None:
    first = repo.commit({"policy.yaml": POLICY, "hello.yaml": workload(8099)})
    follow = follower(tmp_path, repo)
    apply(follow)
    second = repo.commit({"hello.yaml": workload(8100)})
    assert follow.poll() is not None
    home = follow.home

    # Killed after the link was swapped, before status.json said so: the link is the truth.
    os.symlink(f"revisions/{second}", home / ".current.kill.tmp")
    os.replace(home / ".current.kill.tmp", home / "current")
    restarted = follower(tmp_path, repo)
    assert restarted.status.last_applied_revision == f"main@sha1:{second}"
    assert saved(tmp_path)["lastAppliedRevision"] == f"main@sha1:{second}"
    assert restarted.poll() is None

    # Killed mid-materialization, mid-link, mid-status write: the next poll sweeps the debris.
    (follow.revisions / f".tmp-{first}-abc" / "tree").mkdir(parents=True)
    os.symlink(f"revisions/{first}", home / ".current.dead.tmp")
    (home / ".status.json.x1y2.tmp").write_text("{")
    assert restarted.poll() is None
    assert sorted(path.name for path in home.iterdir() if path.name.startswith(".")) == []
    assert sorted(path.name for path in follow.revisions.iterdir()) == sorted([first, second])

    # Nothing in force any more (the link removed by hand): status.json does not pretend otherwise.
    (home / "current").unlink()
    again = follower(tmp_path, repo)
    assert again.status.last_applied_revision is None
    apply(again)
    assert os.readlink(again.current) == f"revisions/{second}"


def test_a_fetch_failure_is_recorded_and_the_last_good_stays(tmp_path: Path, repo: Repo) -> None:
    head = repo.commit({"policy.yaml": POLICY, "hello.yaml": workload(8099)})
    follow = follower(tmp_path, repo)
    apply(follow)

    shutil.rmtree(repo.remote)
    assert follow.poll() is None

    status = saved(tmp_path)
    assert "remote.git" in str(status["lastFetchError"]) and status["lastFetchErrorAt"]
    assert status["lastAppliedRevision"] == f"main@sha1:{head}"
    assert len(load_desired(follow.desired_root).resources) == 2


def test_credentials_in_the_url_are_never_recorded(tmp_path: Path) -> None:
    follow = GitFollower(tmp_path / "state", "http://ada:s3cret@127.0.0.1:1/desired.git")

    assert follow.poll() is None

    text = (tmp_path / "state" / "gitops" / "status.json").read_text()
    assert "s3cret" not in text and "http://***@127.0.0.1:1/desired.git" in text
    assert follow.status.last_fetch_error


def test_a_sync_request_is_taken_once(tmp_path: Path, repo: Repo) -> None:
    follow = follower(tmp_path, repo)
    assert not follow.take_sync_request()
    request_sync(tmp_path / "state")
    request_sync(tmp_path / "state")
    assert follow.take_sync_request()
    assert not follow.take_sync_request()


def test_local_revision_of_a_folder_ignores_the_reconcilers_own_files(tmp_path: Path, repo: Repo) -> None:
    assert local_revision(tmp_path) is None  # not in a repository
    head = repo.commit({"desired/policy.yaml": POLICY, "desired/hello.yaml": workload(8099)}, push=False)
    folder = repo.work / "desired"
    assert local_revision(folder) == f"main@sha1:{head}"

    for name in ("hello.status.yaml", "hello.evidence.jsonl", "hello.evidence.jsonl.1", ".reconciler.lock",
                 "sub/x.status.yaml"):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text("output\n")
    (repo.work / "notes.txt").write_text("outside the folder\n")
    assert local_revision(folder) == f"main@sha1:{head}"

    (folder / "hello.yaml").write_text(workload(8100))
    assert local_revision(folder) == f"main@sha1:{head}+dirty"
    run("checkout", "--quiet", "--detach", cwd=repo.work)
    assert local_revision(folder) == f"HEAD@sha1:{head}+dirty"


# -- pure rules -----------------------------------------------------------------------------------

def test_should_attempt_skips_what_is_applied_or_already_judged_invalid() -> None:
    a, b = "a" * 40, "b" * 40
    status = FollowerStatus(url="u", branch="main", path=".", last_applied_revision=revision_string("main", a),
                            last_applied_path=".", last_attempted_revision=revision_string("main", b),
                            last_attempted_path=".", last_attempt_outcome=Outcome.INVALID)
    assert not should_attempt(status, a, ".", None)
    assert should_attempt(status, a, "clusters", None)  # the same commit read at another path
    assert not should_attempt(status, b, ".", None)
    assert should_attempt(status, b, ".", "digest-of-new-signers")
    assert should_attempt(status.model_copy(update={"last_attempt_outcome": Outcome.FAILED}), b, ".", None)
    assert should_attempt(status, "c" * 40, ".", None)


def test_revision_strings_and_redaction() -> None:
    assert revision_string("main", "a" * 40) == f"main@sha1:{'a' * 40}"
    assert revision_string("main", "b" * 64, dirty=True) == f"main@sha256:{'b' * 64}+dirty"
    assert revision_commit(f"main@sha1:{'a' * 40}+dirty") == "a" * 40
    assert redact("fatal: https://tok3n@host/r.git and ssh://git@host/r") == "fatal: https://***@host/r.git and ssh://git@host/r"
    assert redact("https://ada:pw@host/r?token=t") == "https://***@host/r?token=***"
    assert redact("ssh://ada:pw@host/r") == "ssh://ada:***@host/r"


def test_a_path_must_stay_inside_the_repository(tmp_path: Path) -> None:
    assert clean_path("./clusters//home/") == "clusters/home"
    for bad in ("/etc", "../elsewhere", "a/../../b"):
        with pytest.raises(ValueError):
            GitFollower(tmp_path, "unused", path=bad)


def test_times_are_recorded_in_utc(tmp_path: Path, repo: Repo) -> None:
    repo.commit({"policy.yaml": POLICY})
    follow = follower(tmp_path, repo)
    apply(follow)
    at = follow.status.last_applied_at
    assert at is not None and at.tzinfo is not None
    assert abs((datetime.now(timezone.utc) - at).total_seconds()) < 60
