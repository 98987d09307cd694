"""Follow a branch of a git repository: each new commit is validated whole before it is put in force.

Flux's model: lastAppliedRevision is what the reconciler reads, lastAttemptedRevision what was last tried,
and a bad revision never replaces a good one. Argo's: a revision found invalid is not tried again until the
branch moves (or the path or allowed signers that judged it change), so a broken commit costs one check,
not one per poll. The reconciler reads `<state>/gitops/current/<path>`, a path through a symlink that
`switch` replaces with one rename, so every file path it derives stays the same across revisions.

On disk, the `current` link is the truth about what is in force; status.json is made to agree with it when
the follower starts, because a kill can fall between the swap and the status write.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import stat
import tarfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path, PurePosixPath

import psutil
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from reconciler.base.atomic import fsync_dir, write_atomic
from reconciler.load.desired import GENERATED_GLOBS, build_desired, read_folder
from reconciler.observe import git

GITOPS = "gitops"
KEEP_REVISIONS = 3  # the one in force, the one before it (rollback, files of running processes), one more
SYNC_REQUEST = "sync-request"
STATUS_FILE = "status.json"


class Outcome(str, Enum):
    VALID = "Valid"  # prepared; in force once switched
    INVALID = "Invalid"  # the commit itself is at fault: not tried again
    FAILED = "Failed"  # the host was (git, disk): tried again on the next poll


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class HistoryRewrite(_Camel):
    from_revision: str
    to_revision: str
    at: datetime


class FollowerStatus(_Camel):
    """`<state>/gitops/status.json`: what is in force, what was last tried and why it failed."""

    url: str  # credentials redacted
    branch: str
    path: str
    last_applied_revision: str | None = None
    last_applied_path: str | None = None
    last_applied_at: datetime | None = None
    last_attempted_revision: str | None = None
    last_attempted_path: str | None = None
    last_attempted_signers: str | None = None  # sha256 of the allowed signers file that judged it
    last_attempted_at: datetime | None = None
    last_attempt_outcome: Outcome | None = None
    last_attempt_errors: list[str] = []
    last_attempt_count: int = 0  # how many times in a row this revision, path and signers were tried
    last_fetch_error: str | None = None
    last_fetch_error_at: datetime | None = None
    last_history_rewrite: HistoryRewrite | None = None


@dataclass(frozen=True)
class Prepared:
    sha: str
    revision: str
    directory: Path  # the materialized commit, `<state>/gitops/revisions/<commit>`
    path: str  # the desired-state folder inside it, as validated
    rewritten_from: str | None = None  # the applied revision, when the branch no longer contains it


def should_attempt(status: FollowerStatus, head: str, path: str, signers: str | None) -> bool:
    """Whether the branch head needs preparing: not when in force, nor when already found invalid as judged now."""
    def commit_of(revision: str | None) -> str | None:
        return git.revision_commit(revision) if revision else None

    if (commit_of(status.last_applied_revision), status.last_applied_path) == (head, path):
        return False
    judged = (commit_of(status.last_attempted_revision), status.last_attempted_path, status.last_attempted_signers)
    return not (judged == (head, path, signers) and status.last_attempt_outcome is Outcome.INVALID)


def clean_path(path: str) -> str:
    """The folder inside the repository, normalised; one that could leave the repository is refused."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts:
        raise ValueError(f"path {path!r} must be relative to the repository and stay inside it")
    return str(pure)


def is_generated(name: str) -> bool:
    """Outputs are never hidden: a dot-name is a temp file (of write_atomic, say) and never carried."""
    return not name.startswith(".") and any(fnmatch.fnmatchcase(name, glob) for glob in GENERATED_GLOBS)


def carry_outputs(old: Path, new: Path) -> None:
    """Make `new`'s generated outputs exactly `old`'s, byte for byte.

    Replacing, not only filling gaps: a revision directory met again (a branch reset to a commit still
    kept) or a repository with committed outputs holds older copies, and an evidence log whose last line
    differs from the one the writer's cached hash continues would fork its chain. Each copy is atomic, so a
    kill mid-way leaves whole files and the next switch finishes the job.
    """
    carried = {path.relative_to(old) for path in _generated_files(old)}
    for path in [path for path in new.rglob("*") if path.is_symlink() or not path.is_dir()]:
        leftover = path.name.startswith(".") and path.name.endswith(".tmp") and is_generated(path.name[1:].rsplit(".", 2)[0])
        # a commit's link under an output's name is dropped from this copy: outputs are never written through one
        if leftover or (is_generated(path.name) and (path.is_symlink() or path.relative_to(new) not in carried)):
            path.unlink()
    for relative in carried:
        source = old / relative
        write_atomic(new / relative, source.read_bytes(), mode=stat.S_IMODE(source.stat().st_mode))


def _generated_files(tree: Path) -> list[Path]:
    return [path for path in tree.rglob("*") if is_generated(path.name) and path.is_file() and not path.is_symlink()]


def request_sync(state_dir: Path) -> None:
    """Ask the follower in another process to poll now (`reconciler sync`): the file's existence is the request."""
    write_atomic(state_dir / GITOPS / SYNC_REQUEST, f"{_now().isoformat()}\n")


def applied_revision(root: Path, state_dir: Path) -> dict[str, str | None] | None:
    """The revision a folder of the state directory's followed branch holds, as the daemon applied it (None when
    `root` is no such folder). The commit is the tree's own, `revisions/<commit>`: status.json only names it."""
    revisions = (state_dir / GITOPS / "revisions").resolve()
    try:
        commit, *inside = root.resolve().relative_to(revisions).parts
    except ValueError:
        return None
    try:
        status: FollowerStatus | None = FollowerStatus.model_validate_json((state_dir / GITOPS / STATUS_FILE).read_bytes())
    except (OSError, ValidationError):
        status = None
    applied = status.last_applied_revision if status else None
    named = status is not None and applied is not None and git.revision_commit(applied) == commit
    return {
        "source": status.url if status else None,  # its credentials redacted
        "branch": status.branch if status else None,
        "commit": commit,
        "revision": applied if named else git.revision_string(status.branch if status else "HEAD", commit),
        "appliedAt": status.last_applied_at.isoformat() if named and status and status.last_applied_at else None,
        "folder": str(PurePosixPath(*inside)) if inside else ".",
    }


class GitFollower:
    """One branch followed into one state directory; single-threaded, one per state directory."""

    def __init__(self, state_dir: Path, url: str, branch: str = "main", path: str = ".",
                 allowed_signers: Path | None = None) -> None:
        self.home = state_dir / GITOPS
        self.mirror = self.home / "mirror.git"
        self.revisions = self.home / "revisions"
        self.current = self.home / "current"
        self.url, self.branch, self.path = url, branch, clean_path(path)
        self.allowed_signers = allowed_signers
        self.revisions.mkdir(parents=True, exist_ok=True)
        self.status = self._recover()
        self._save()

    @property
    def desired_root(self) -> Path:
        """Through the link, never resolved. The folder is the applied revision's: a changed path is in force
        only once a revision validated with it is."""
        return self.current / (self.status.last_applied_path or self.path)

    def poll(self) -> Prepared | None:
        """Fetch and prepare the branch head; None when there is nothing new and valid to switch to."""
        self._clean_leftovers()
        try:
            git.ensure_mirror(self.mirror)
            head = git.fetch_branch(self.mirror, self.url, self.branch)
        except git.GitError as error:
            self._save(last_fetch_error=str(error), last_fetch_error_at=_now())
            return None
        if self.status.last_fetch_error is not None:
            self._save(last_fetch_error=None, last_fetch_error_at=None)
        signers = None
        try:
            signers = self._signers_digest()
            if not should_attempt(self.status, head, self.path, signers):
                return None
            rewritten_from = self._rewritten_from(head)
            errors = self._prepare(head)
        except (git.GitError, OSError, tarfile.TarError) as error:
            self._record_attempt(head, signers, Outcome.FAILED, [str(error)])
            return None
        self._record_attempt(head, signers, Outcome.INVALID if errors else Outcome.VALID, errors)
        if errors:
            return None
        return Prepared(head, git.revision_string(self.branch, head), self.revisions / head, self.path, rewritten_from)

    def switch(self, prepared: Prepared) -> None:
        """Put a prepared revision in force. Call it between reconcile passes: an output written to the old
        tree after its outputs were carried would stay behind there."""
        if not prepared.directory.is_dir():
            raise FileNotFoundError(f"{prepared.directory}: the prepared revision is gone; poll again")
        old = self._in_force()
        if old is not None and old != prepared.directory:
            carry_outputs(old, prepared.directory)
        link = self.home / f".current.{uuid.uuid4().hex}.tmp"
        os.symlink(os.path.relpath(prepared.directory, self.home), link)
        os.replace(link, self.current)
        fsync_dir(self.home)
        os.utime(prepared.directory)  # pruning keeps the most recently applied
        self._save(last_applied_revision=prepared.revision, last_applied_path=prepared.path, last_applied_at=_now())
        self._prune()

    def take_sync_request(self) -> bool:
        try:
            (self.home / SYNC_REQUEST).unlink()
        except FileNotFoundError:
            return False
        return True

    def _prepare(self, head: str) -> list[str]:
        """Check, materialize and validate `head`; the commit's faults, or [] when it may be switched to."""
        if self.allowed_signers is not None:
            check = git.verify_signature(self.mirror, head, self.allowed_signers)
            if not check.ok:
                return [f"commit {check.commit}: {check.reason}"]
        if not git.is_folder(self.mirror, head, self.path):
            return [f"{self.path}: no such folder in commit {head}"]
        target = self.revisions / head
        fresh = not target.is_dir()  # else kept from before (a reset to an earlier commit, a kill before switch)
        if fresh:
            try:
                git.materialize(self.mirror, head, target)
            except tarfile.FilterError as error:
                return [f"commit {head}: {error}"]
        # Errors name files as in the repository (`clusters/home/chat.yaml:7:3`): the user opens them in a checkout.
        desired = build_desired(read_folder(target / self.path), display_root="" if self.path == "." else self.path)
        errors = [str(error) for file_errors in desired.errors.values() for error in file_errors]
        if errors and fresh:
            shutil.rmtree(target)  # the errors are in status.json; an invalid tree is never switched to
        return errors

    def _rewritten_from(self, head: str) -> str | None:
        applied = self.status.last_applied_revision
        if applied is None or git.is_ancestor(self.mirror, git.revision_commit(applied), head):
            return None
        rewrite = HistoryRewrite(from_revision=applied, to_revision=git.revision_string(self.branch, head), at=_now())
        self._save(last_history_rewrite=rewrite)
        return applied

    def _record_attempt(self, head: str, signers: str | None, outcome: Outcome, errors: list[str]) -> None:
        revision = git.revision_string(self.branch, head)
        last = self.status
        again = (last.last_attempted_revision, last.last_attempted_path, last.last_attempted_signers) == (revision, self.path, signers)
        self._save(
            last_attempted_revision=revision, last_attempted_path=self.path, last_attempted_signers=signers,
            last_attempted_at=_now(), last_attempt_outcome=outcome, last_attempt_errors=errors,
            last_attempt_count=last.last_attempt_count + 1 if again else 1,
        )

    def _signers_digest(self) -> str | None:
        if self.allowed_signers is None:
            return None
        return hashlib.sha256(self.allowed_signers.read_bytes()).hexdigest()

    def _in_force(self) -> Path | None:
        try:
            target = self.home / os.readlink(self.current)
        except FileNotFoundError:
            return None
        return target if target.is_dir() else None

    def _recover(self) -> FollowerStatus:
        """Read status.json and make it agree with the `current` link, which a kill may have swapped unrecorded."""
        settings = {"url": git.redact(self.url), "branch": self.branch, "path": self.path}
        try:
            status = FollowerStatus.model_validate_json((self.home / STATUS_FILE).read_bytes())
            status = status.model_copy(update=settings)
        except (FileNotFoundError, ValidationError):
            status = FollowerStatus(**settings)
        in_force, applied, attempted = self._in_force(), status.last_applied_revision, status.last_attempted_revision
        if in_force is None:
            return status.model_copy(update={"last_applied_revision": None, "last_applied_path": None, "last_applied_at": None})
        if applied is not None and git.revision_commit(applied) == in_force.name:
            return status
        if attempted is not None and git.revision_commit(attempted) == in_force.name:
            revision, path = attempted, status.last_attempted_path
        else:
            revision, path = git.revision_string(self.branch, in_force.name), self.path
        at = datetime.fromtimestamp(self.current.lstat().st_mtime, timezone.utc)
        return status.model_copy(update={"last_applied_revision": revision, "last_applied_path": path, "last_applied_at": at})

    def _save(self, **changes: object) -> None:
        self.status = self.status.model_copy(update=changes)
        write_atomic(self.home / STATUS_FILE, self.status.model_dump_json(by_alias=True, indent=2) + "\n")

    def _clean_leftovers(self) -> None:
        """What a kill left: a half-built tree, a link never renamed, a status never renamed."""
        for leftover in self.revisions.glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for pattern in (".current.*.tmp", ".status.json.*.tmp"):
            for leftover in self.home.glob(pattern):
                leftover.unlink(missing_ok=True)

    def _prune(self) -> None:
        """Beyond the newest few, revisions go, unless a process still works in one (a workload started with a
        working directory in its tree: its files must stay); those go on a later switch, once it has moved on."""
        in_force, in_use = self._in_force(), _working_in(self.revisions)
        kept = sorted((path for path in self.revisions.iterdir() if not path.name.startswith(".") and path != in_force),
                      key=lambda path: path.stat().st_mtime, reverse=True)
        for old in kept[KEEP_REVISIONS - 1:]:
            if old.name not in in_use:
                shutil.rmtree(old)


def _working_in(revisions: Path) -> set[str]:
    """The revisions that are some process's working directory (of those this account may see)."""
    root = os.path.realpath(revisions) + os.sep
    used = set()
    for process in psutil.process_iter(["cwd"]):
        cwd = process.info.get("cwd")
        if cwd and cwd.startswith(root):
            used.add(cwd[len(root):].split(os.sep, 1)[0])
    return used


def _now() -> datetime:
    return datetime.now(timezone.utc)
