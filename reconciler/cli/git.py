"""The command line's side of GitOps: `--git URL [--branch] [--path]` names a followed branch instead of a folder,
and its state directory; `reconciler sync` asks the running daemon to fetch now."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from reconciler.control.gitops import FollowerStatus, GitFollower

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def git_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--git, --branch, --path: where the desired state comes from when it is a git branch."""
    for option in reversed((
        click.option("--git", "git_url", metavar="URL", envvar="RECONCILER_GIT_URL",
                     help="Follow this git repository (any URL git understands) instead of the folder PATH."),
        click.option("--branch", default="main", show_default=True, help="With --git: the branch to follow."),
        click.option("--path", "git_path", default=".", show_default=True,
                     help="With --git: the desired-state folder inside the repository."),
    )):
        command = option(command)
    return command


def seconds(text: str) -> float:
    """`60`, `60s`, `5m`, `1h`: a duration as people write it."""
    match = _DURATION.match(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise click.BadParameter(f"{text!r}: expected a positive duration such as 30s, 5m or 1h")
    return float(match.group(1)) * _UNITS[match.group(2)]


SYSTEM_STATE_HOME = Path("/var/lib/localaistack-reconciler")  # the service's (deploy/reconciler.service)


def state_home() -> Path:
    """Root's state goes where the service keeps its own: under /root (mode 0700) the workloads, which run as users
    of their own, could not reach their working folders."""
    if not os.environ.get("XDG_STATE_HOME") and os.geteuid() == 0:
        return SYSTEM_STATE_HOME
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "localaistack-reconciler"


def git_state_dir(url: str, branch: str, path: str) -> Path:
    """One state directory per followed branch and folder, as a folder gets its own."""
    from reconciler.observe import git

    base = state_home()
    digest = hashlib.sha256(f"{url}\n{branch}\n{path}".encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", git.redact(url).rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"))
    return base / f"git-{name or 'repo'}-{digest}"


def follower(url: str, branch: str, path: str, state_dir: Path | None,
             allowed_signers: Path | None = None) -> GitFollower:
    from reconciler.control.gitops import GitFollower

    try:
        return GitFollower(state_dir or git_state_dir(url, branch, path), url, branch, path, allowed_signers)
    except ValueError as error:  # a path that would leave the repository, a branch name git refuses
        raise click.BadParameter(str(error)) from None


def followed(url: str, branch: str, path: str, state_dir: Path | None) -> tuple[Path, Path, FollowerStatus]:
    """(desired root, state dir, follower status) of a daemon following a branch, read without touching them:
    the daemon owns them."""
    from reconciler.control.gitops import GITOPS, STATUS_FILE, FollowerStatus
    from reconciler.observe import git

    state_dir = state_dir or git_state_dir(url, branch, path)
    home = state_dir / GITOPS
    try:
        status = FollowerStatus.model_validate_json((home / STATUS_FILE).read_bytes())
    except FileNotFoundError:
        raise click.ClickException(f"{home}: no daemon has followed {git.redact(url)} with this state directory") from None
    except ValueError as error:
        raise click.ClickException(f"{home / STATUS_FILE}: unreadable: {error}") from None
    return home / "current" / (status.last_applied_path or path), state_dir, status


def summary(status: FollowerStatus) -> list[str]:
    """What `status` says about the followed branch: in force, last tried and why not, fetch trouble."""
    lines = [f"source: {status.url} ({status.branch}, path {status.path})",
             f"lastAppliedRevision: {status.last_applied_revision or 'none yet'}"
             + (f" at {status.last_applied_at.isoformat(timespec='seconds')}" if status.last_applied_at else "")]
    if status.last_attempted_revision and status.last_attempted_revision != status.last_applied_revision:
        outcome = status.last_attempt_outcome.value if status.last_attempt_outcome else "?"
        lines.append(f"lastAttemptedRevision: {status.last_attempted_revision} ({outcome})")
        lines += [f"  {error}" for error in status.last_attempt_errors]
    if status.last_fetch_error:
        lines.append(f"lastFetchError: {status.last_fetch_error}")
    if status.last_history_rewrite:
        rewrite = status.last_history_rewrite
        lines.append(f"history rewritten: {rewrite.from_revision} -> {rewrite.to_revision}")
    return lines
