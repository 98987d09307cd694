"""A person's answers to the reconciler: `approve` and `deny` a workload's exact spec (or its hosted fallback),
`rollback` to its known-good version. Each is a file in the state directory that the daemon watches and acts on
at once; with --git, the spec is the one in force of the followed branch."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from reconciler.cli import git as cli_git
from reconciler.cli.common import key_of, located, path_argument, readable_folder, state_option, who

if TYPE_CHECKING:
    from reconciler.api.approval import Answer
    from reconciler.api.meta import ResourceKey
    from reconciler.load.desired import DesiredEntry

ACTED_ON = "a running daemon acts on it now, otherwise the next `reconciler apply` does"

def _answer_command(spec_hash: click.Option) -> Callable[[Callable[..., Any]], click.Command]:
    """What approve and deny both take: NAME, the folder (or --git), --spec-hash, --hosted."""
    hosted = click.option("--hosted", is_flag=True,
                          help="Answer about sending it to its hosted fallback, not about a local start.")

    def decorate(function: Callable[..., Any]) -> click.Command:
        for decorator in (cli_git.git_options, hosted, spec_hash, state_option, path_argument, click.argument("name")):
            function = decorator(function)
        return click.command()(function)
    return decorate


@_answer_command(click.option("--spec-hash", required=True, help="The hash `plan` showed (a prefix of 8 or more "
                              "will do): refused if the spec changed since, so only what you reviewed is approved."))
def approve(name: str, path: Path, state_dir: Path | None, spec_hash: str, hosted: bool, git_url: str | None,
            branch: str, git_path: str) -> None:
    """Approve a workload's change that waits for a person: its exact current spec, nothing later."""
    from reconciler.api.approval import Answer

    _answer(name, *located(path, state_dir, git_url, branch, git_path), spec_hash, Answer.approve, hosted)


@_answer_command(click.option("--spec-hash", help="The hash `plan` showed (a prefix will do): refused if the spec "
                              "changed since."))
def deny(name: str, path: Path, state_dir: Path | None, spec_hash: str | None, hosted: bool, git_url: str | None,
         branch: str, git_path: str) -> None:
    """Refuse a workload's change: its exact current spec stays refused until the spec changes."""
    from reconciler.api.approval import Answer

    _answer(name, *located(path, state_dir, git_url, branch, git_path), spec_hash, Answer.deny, hosted)


@click.command()
@click.argument("name")
@path_argument
@state_option
@cli_git.git_options
def rollback(name: str, path: Path, state_dir: Path | None, git_url: str | None, branch: str, git_path: str) -> None:
    """Restore a workload's known-good version (the last that stayed healthy through its soak) instead of its
    current spec; that spec is not tried again until it changes."""
    from reconciler.api.approval import Answer, Approval
    from reconciler.record.approvals import ApprovalStore
    from reconciler.record.store import StateStore

    path, state_dir = located(path, state_dir, git_url, branch, git_path)
    key, entry = _desired_workload(name, path)
    record = StateStore(state_dir).load_all().get(key)
    good = record.known_good if record else None
    if good is None:
        raise click.ClickException(f"{key}: no known-good version on record (none has stayed healthy through its soak)")
    if good.spec_hash == entry.spec_hash:
        raise click.ClickException(f"{key}: its spec is the known-good version (generation {good.generation}) already")
    if record is not None and record.rolled_back is not None and record.rolled_back.spec_hash == entry.spec_hash:
        raise click.ClickException(f"{key}: already rolled back to generation {good.generation}")
    person = who()
    ApprovalStore(state_dir).request_rollback(Approval(
        name=key.name, spec_hash=entry.spec_hash, answer=Answer.approve, by=person, at=datetime.now(timezone.utc)))
    click.echo(f"{key}: spec {entry.spec_hash[:12]} is to be replaced by the known-good generation {good.generation} "
               f"({good.spec_hash[:12]}), asked by {person}; {ACTED_ON}")


def _answer(name: str, path: Path, state_dir: Path, spec_hash: str | None, answer: Answer, hosted: bool) -> None:
    from reconciler.api.approval import Approval
    from reconciler.record.approvals import ApprovalStore

    key, entry = _desired_workload(name, path)
    if spec_hash is not None and (len(spec_hash) < 8 or not entry.spec_hash.startswith(spec_hash)):
        raise click.ClickException(f"{key}: its spec is now {entry.spec_hash[:12]}, not {spec_hash}: it changed since "
                                   "you looked; run `reconciler plan` and review it again")
    person = who()
    ApprovalStore(state_dir).put(Approval(
        name=key.name, spec_hash=entry.spec_hash, answer=answer, by=person, at=datetime.now(timezone.utc), hosted=hosted))
    what = "hosting on its fallback" if hosted else "spec"
    click.echo(f"{key}: {what} {entry.spec_hash[:12]} {answer.past} by {person}; {ACTED_ON}")


def _desired_workload(name: str, path: Path) -> tuple[ResourceKey, DesiredEntry]:
    from reconciler.api.kinds import Workload
    from reconciler.load.desired import load_desired

    readable_folder(path)
    desired = load_desired(path)
    key = key_of(name)
    entry = desired.resources.get(key)
    if entry is None or not isinstance(entry.resource, Workload):
        problem = desired.rejected.get(key)
        raise click.ClickException(f"{key}: {'its spec does not load: ' + str(problem[0]) if problem else 'not in ' + str(path)}")
    return key, entry
