"""What the command line's modules share: where the desired state and the state directory are (a folder, or
the branch a daemon follows with --git), the options that say so, exit codes, who is asking.

The command line's modules import at their top only what declaring a command needs: `--help` lists every command,
and each command imports the pipeline it runs (the models, the engine client, the watchers) when it runs."""

from __future__ import annotations

import hashlib
import os
import pwd
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from reconciler.cli import git as cli_git

if TYPE_CHECKING:
    from reconciler.api.meta import ResourceKey
    from reconciler.control.reconciler import Reconciler

EXIT_IN_SYNC, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2

path_argument = click.argument("path", type=click.Path(path_type=Path), default="desired-state")
state_option = click.option(
    "--state-dir", type=click.Path(path_type=Path), envvar="RECONCILER_STATE_DIR",
    help="Where the reconciler keeps process records and logs [default: ~/.local/state/localaistack-reconciler/<folder>; for root /var/lib/localaistack-reconciler/<folder>].",
)
output_option = click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table")


def default_state_dir(root: Path) -> Path:
    """One state directory per desired-state folder, so two folders never prune each other."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return cli_git.state_home() / f"{root.resolve().name}-{digest}"


def located(path: Path, state_dir: Path | None, git_url: str | None, branch: str, git_path: str) -> tuple[Path, Path]:
    """(desired-state folder, state directory): PATH's, or with --git the revision in force of the daemon that
    follows that branch (read only: the daemon owns it)."""
    if git_url is None:
        return path, state_dir or default_state_dir(path)
    root, state, _ = cli_git.followed(git_url, branch, git_path, state_dir)
    return root, state


def open_reconciler(path: Path, state_dir: Path | None, **options: object) -> Reconciler:
    from reconciler.control.reconciler import DesiredStateUnreadable, Reconciler

    reconciler = Reconciler(path, state_dir or default_state_dir(path), **options)  # type: ignore[arg-type]
    try:
        reconciler.refresh()
    except DesiredStateUnreadable as error:
        raise click.ClickException(str(error)) from None
    return reconciler


def watch_notes(reconciler: Reconciler, state_dir: Path) -> list[str]:
    """What `status` and `describe` say first: whether a daemon keeps this state true, and whether this state
    directory is the one that holds the folder's records."""
    from reconciler.base.lock import FOLDER_LOCK, STATE_LOCK, holder

    try:
        daemon, elsewhere = holder(state_dir / STATE_LOCK), holder(reconciler.root / FOLDER_LOCK)
    except OSError as error:
        return [f"Cannot tell whether a daemon keeps this up to date: {error}"]
    if daemon is not None and daemon.command == "run":
        notes = [f"Daemon: pid {daemon.pid} keeps this up to date, since {daemon.since:%Y-%m-%d %H:%M:%S %Z}"]
    elif elsewhere is not None and elsewhere.command == "run" and elsewhere.state_dir.resolve() != state_dir.resolve():
        return [f"Warning: this reads state directory {state_dir}, but the daemon watching this folder (pid "
                f"{elsewhere.pid}) keeps its records in {elsewhere.state_dir}: add --state-dir {elsewhere.state_dir}"]
    else:
        notes = ["No daemon watches this folder: what follows is as last recorded; no restart, retry or back-off "
                 "happens until `reconciler run` (or `apply`)"]
    if not reconciler.records and reconciler.desired.resources:
        notes.append(f"Warning: state directory {state_dir} holds no records of this folder (another --state-dir?)")
    return notes


def print_load_errors(reconciler: Reconciler) -> bool:
    for errors in reconciler.desired.errors.values():
        for error in errors:
            click.echo(str(error), err=True)
    return bool(reconciler.desired.errors)


def key_of(name: str) -> ResourceKey:
    """NAME is a Workload's; KIND/NAME names any kind (model/tiny as Model/tiny)."""
    from reconciler.api.kinds import KINDS
    from reconciler.api.meta import ResourceKey

    kind = name.rpartition("/")[0]
    return ResourceKey(next((known for known in KINDS if known.lower() == kind.lower()), kind or "Workload"), name_of(name))


def name_of(name: str) -> str:
    """The NAME of NAME or KIND/NAME, without the models that tell the kinds apart (what `logs` needs)."""
    return name.rpartition("/")[2]


def who() -> str:
    """The account, not what the environment claims; sudo says who asked it."""
    account = pwd.getpwuid(os.getuid()).pw_name
    return account + (f" (sudo from {os.environ['SUDO_USER']})" if os.environ.get("SUDO_USER") else "")


def readable_folder(path: Path) -> None:
    if not path.is_dir():
        raise click.ClickException(f"{path}: not a readable folder")


@contextmanager
def locked(path: Path, state_dir: Path, command: str) -> Iterator[None]:
    from reconciler.base.lock import Busy, exclusive

    readable_folder(path)
    try:
        with exclusive(path, state_dir, command):
            yield
    except Busy as error:
        raise click.ClickException(str(error)) from None
