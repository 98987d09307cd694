"""The real `git` executable: a mirror of the followed branch, its commits as plain trees, signatures, local folders.

No git library: the executable reads the user's own config, credential helpers and ssh agent, so whatever a
`git fetch` by hand can reach, the follower can, and no credential ever passes through this code. Git runs in
its own session with no stdin, so neither git nor ssh can stop to ask a question on a terminal.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.base.atomic import fsync_dir
from reconciler.base.lock import FOLDER_LOCK
from reconciler.base.redact import redact
from reconciler.load.desired import GENERATED_GLOBS

GIT_TIMEOUT = 60.0
FETCH_TIMEOUT = 300.0  # a first fetch of a large history over a slow link

# Variables that would point git at another repository than the one named (set when run from a git hook).
_REPOSITORY_VARIABLES = (
    "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR", "GIT_NAMESPACE", "GIT_PREFIX", "GIT_CEILING_DIRECTORIES",
)

# What `%G?` says when a signature is not good; G is the only answer accepted.
_SIGNATURE_REASONS = {
    "N": "unsigned",
    "U": "signed by a key that is not trusted (not in the allowed signers)",
    "B": "bad signature: the commit was changed after it was signed",
    "E": "the signature cannot be checked (its key or the signing program is missing)",
    "X": "the signature has expired",
    "Y": "signed by a key that has expired",
    "R": "signed by a revoked key",
}


class GitError(Exception):
    """A git command failed; the message is git's own stderr, with URL credentials redacted."""

    def __init__(self, command: str, message: str) -> None:
        self.command = command
        self.stderr = redact(message.strip())
        super().__init__(f"git {command}: {self.stderr}")


def run_git(
    args: Sequence[str], *, git_dir: Path | None = None, cwd: Path | None = None, config: Sequence[str] = (),
    timeout: float = GIT_TIMEOUT, ok_codes: Sequence[int] = (0,),
) -> subprocess.CompletedProcess[str]:
    """Run `git [-c config]... args`; any exit status outside `ok_codes` raises GitError."""
    command = ["git"] + [part for item in config for part in ("-c", item)]
    if git_dir is not None:
        command += ["--git-dir", str(git_dir)]
    command += list(args)
    env = {name: value for name, value in os.environ.items() if name not in _REPOSITORY_VARIABLES}
    # No prompt for a password; no index refresh that could collide with the user's own git in their folder;
    # English messages, because "not a git repository" is told apart by its text.
    env.update(GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0", LC_ALL="C")
    try:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, errors="replace", start_new_session=True,
        )
    except OSError as error:
        raise GitError(args[0], f"cannot run git: {error.strerror or error}") from None
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the whole session: an ssh or credential helper too
        process.communicate()
        raise GitError(args[0], f"no answer within {timeout:g}s") from None
    if process.returncode not in ok_codes:
        raise GitError(args[0], stderr or f"exited {process.returncode}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def ensure_mirror(mirror: Path) -> None:
    if not (mirror / "HEAD").is_file():  # a crash inside `git init` leaves no HEAD: initialising again is safe
        mirror.parent.mkdir(parents=True, exist_ok=True)
        run_git(["init", "--quiet", "--bare", str(mirror)])


def fetch_branch(mirror: Path, url: str, branch: str, timeout: float = FETCH_TIMEOUT) -> str:
    """Make the mirror's branch exactly the remote's (a force-push included) and return its commit id."""
    ref = f"refs/heads/{branch}"
    if run_git(["check-ref-format", ref], ok_codes=(0, 1)).returncode:
        raise GitError("check-ref-format", f"{branch!r} is not a valid branch name")
    run_git(["fetch", "--quiet", "--prune", "--force", "--no-tags", "--end-of-options", url, f"+{ref}:{ref}"],
            git_dir=mirror, timeout=timeout)
    return run_git(["rev-parse", "--verify", f"{ref}^{{commit}}"], git_dir=mirror).stdout.strip()


def is_ancestor(mirror: Path, older: str, newer: str) -> bool:
    """Whether `newer` continues `older`'s history; a commit the mirror no longer holds cannot be in it."""
    if run_git(["cat-file", "-e", f"{older}^{{commit}}"], git_dir=mirror, ok_codes=(0, 1, 128)).returncode:
        return False
    return run_git(["merge-base", "--is-ancestor", older, newer], git_dir=mirror, ok_codes=(0, 1)).returncode == 0


def is_folder(mirror: Path, commit: str, path: str) -> bool:
    spec = f"{commit}^{{tree}}" if path == "." else f"{commit}:{path}"
    found = run_git(["rev-parse", "--quiet", "--verify", spec], git_dir=mirror, ok_codes=(0, 1))
    if found.returncode:
        return False
    return run_git(["cat-file", "-t", found.stdout.strip()], git_dir=mirror).stdout.strip() == "tree"


def materialize(mirror: Path, commit: str, target: Path) -> None:
    """Write `commit`'s tree to `target` (which must not exist) with no .git: nothing there to dirty or pull.

    Built in a `.tmp-*` sibling and renamed, so `target` is either whole or absent. Links that point outside
    the tree raise tarfile.FilterError: a commit cannot make the reconciler read files elsewhere on the host.
    """
    import tarfile  # only GitOps materializes: a one-shot command reads its folder's revision and nothing more

    work = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        archive, tree = work / "commit.tar", work / "tree"
        run_git(["archive", "--format=tar", f"--output={archive}", commit], git_dir=mirror)
        with tarfile.open(archive) as tar:
            tar.extractall(tree, filter="data")
        if not tree.exists():
            tree.mkdir()  # an empty commit archives to nothing
        _fsync_tree(tree)  # after a power cut the renamed tree must hold the specs, not empty files
        os.rename(tree, target)
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                descriptor = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)
        fsync_dir(Path(directory))


@dataclass(frozen=True)
class SignatureCheck:
    commit: str
    ok: bool
    reason: str
    key: str | None = None  # the signing key's fingerprint, when git could read one
    signer: str | None = None  # the allowed signer (ssh principal or GPG user id) that matched


def verify_signature(mirror: Path, commit: str, allowed_signers: Path) -> SignatureCheck:
    """Judge `commit`'s signature: SSH ones against `allowed_signers`, GPG ones against the user's keyring."""
    shown = run_git(
        ["log", "-1", "--no-show-signature", "--format=%G?%n%GK%n%GS", commit, "--"],
        git_dir=mirror, config=[f"gpg.ssh.allowedSignersFile={allowed_signers}"],
    ).stdout.split("\n")
    verdict, key, signer = (shown + ["", "", ""])[:3]
    if verdict == "G":
        return SignatureCheck(commit, True, f"good signature by {signer} ({key})", key or None, signer or None)
    reason = _SIGNATURE_REASONS.get(verdict, f"signature not accepted ({verdict})")
    return SignatureCheck(commit, False, reason + (f" ({key})" if key else ""), key or None, signer or None)


@dataclass(frozen=True)
class WorkTree:
    top: Path
    commit: str | None  # None before the first commit
    branch: str | None  # None on a detached HEAD
    dirty: bool  # changes in the folder described, the reconciler's own outputs not counted


def describe_worktree(root: Path, ignored: Sequence[str] = ()) -> WorkTree | None:
    """The repository a plain desired-state folder lives in, or None when it lives in none.

    Only `root` is judged for changes, and files matching the `ignored` globs (in any folder) are not: edits
    elsewhere do not change this desired state, and outputs need no .gitignore to leave the folder clean.
    A repository git refuses to read (another user's, see `safe.directory`) raises GitError rather than
    passing for no repository.
    """
    inside = run_git(["rev-parse", "--is-inside-work-tree"], cwd=root, ok_codes=(0, 128))
    if inside.returncode == 128 and "not a git repository" in inside.stderr:
        return None
    if inside.returncode:
        raise GitError("rev-parse", inside.stderr)
    if inside.stdout.strip() != "true":
        return None
    top = Path(run_git(["rev-parse", "--show-toplevel"], cwd=root).stdout.strip())
    head = run_git(["rev-parse", "--quiet", "--verify", "HEAD^{commit}"], cwd=root, ok_codes=(0, 1))
    branch = run_git(["symbolic-ref", "--quiet", "--short", "HEAD"], cwd=root, ok_codes=(0, 1))
    excluded = [f":(exclude,glob)**/{glob}" for glob in ignored]
    changes = run_git(["status", "--porcelain", "--", ".", *excluded], cwd=root)
    return WorkTree(top, head.stdout.strip() or None, branch.stdout.strip() or None, bool(changes.stdout.strip()))


def revision_string(branch: str, commit: str, dirty: bool = False) -> str:
    """Flux's form, `main@sha1:<id>`; `+dirty` when the files differ from the commit."""
    algorithm = "sha256" if len(commit) == 64 else "sha1"
    return f"{branch}@{algorithm}:{commit}" + ("+dirty" if dirty else "")


def revision_commit(revision: str) -> str:
    return revision.rsplit(":", 1)[-1].removesuffix("+dirty")


def local_revision(root: Path) -> str | None:
    """The revision of a plain desired-state folder: its repository's HEAD, `+dirty` when its specs differ."""
    if shutil.which("git") is None:
        return None
    tree = describe_worktree(root, ignored=GENERATED_GLOBS + (FOLDER_LOCK,))
    if tree is None or tree.commit is None:
        return None
    return revision_string(tree.branch or "HEAD", tree.commit, tree.dirty)
