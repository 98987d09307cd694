"""The commands that read and change nothing: status, host, describe, logs."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from reconciler.cli import git as cli_git
from reconciler.cli.common import default_state_dir, key_of, located, name_of, open_reconciler, output_option, path_argument, \
    print_load_errors, state_option, watch_notes
from reconciler.cli.query_client import answer_from_daemon
from reconciler.cli.tables import dump

if TYPE_CHECKING:
    from reconciler.control.reconciler import Reconciler


@click.command()
@path_argument
@state_option
@output_option
@cli_git.git_options
def status(path: Path, state_dir: Path | None, output: str, git_url: str | None, branch: str, git_path: str) -> None:
    """What runs, where, and why not: one line per resource (with --git, first the revisions in force and tried)."""
    if git_url is None:
        answer_from_daemon(path, state_dir or default_state_dir(path))
    from reconciler.cli.tables import routes_table, status_rows, status_table, with_routes
    from reconciler.control.gateway_routes import gateway_routes, served_models
    from reconciler.observe import clock

    if git_url is not None:
        _, _, followed = cli_git.followed(git_url, branch, git_path, state_dir)
        for line in cli_git.summary(followed):
            click.echo(line, err=output != "table")
    root, state_dir = located(path, state_dir, git_url, branch, git_path)
    reconciler = open_reconciler(root, state_dir, readonly=True, offline=True)
    for line in watch_notes(reconciler, state_dir):
        click.echo(line, err=output != "table")
    now = clock.now()
    statuses = [status for key in reconciler.keys() if (status := reconciler.status(key)) is not None]
    rows = status_rows(statuses, reconciler.records, now)
    routes = gateway_routes(reconciler.desired, statuses, reconciler.records)
    if output != "table":
        click.echo(dump(with_routes(rows, routes, served_models(reconciler.desired)) if routes else rows, output))
    else:
        click.echo(status_table(rows))
        if routes is not None:
            click.echo(f"\nGateway routes:\n{routes_table(routes)}")
    print_load_errors(reconciler)


@click.command()
@path_argument
@state_option
@output_option
def host(path: Path, state_dir: Path | None, output: str) -> None:
    """What this host offers to run models: CPU and its flags, memory, disk, OS, container engine, GPUs, and
    whether its llama.cpp builds can offload to them."""
    from reconciler.cli.host_table import host_table
    from reconciler.observe.docker_engine import DockerEngine
    from reconciler.observe.engine_builds import EngineBuilds
    from reconciler.observe.host_profile import observe_host_profile

    state_dir = state_dir or default_state_dir(path)
    profile = observe_host_profile(state_dir, DockerEngine(timeout=3), EngineBuilds(state_dir, record=False))
    click.echo(host_table(profile) if output == "table" else dump(profile.model_dump(mode="json", by_alias=True), output))


@click.command()
@click.argument("name")
@path_argument
@state_option
@cli_git.git_options
def describe(name: str, path: Path, state_dir: Path | None, git_url: str | None, branch: str, git_path: str) -> None:
    """One resource in full: spec as run, conditions with times, limits, health, rollout, its last evidence as events."""
    if git_url is None:
        answer_from_daemon(path, state_dir or default_state_dir(path))
    from reconciler.api.kinds import KINDS
    from reconciler.cli import story
    from reconciler.drive.logs import tail

    path, state_dir = located(path, state_dir, git_url, branch, git_path)
    reconciler = open_reconciler(path, state_dir, readonly=True, offline=True)
    key = key_of(name)
    status = reconciler.status(key)
    record = reconciler.records.get(key)
    entry = reconciler.desired.resources.get(key)
    if status is None:
        raise click.ClickException(f"{key}: not found in {path} or in what the reconciler owns")
    source = entry.file if entry else record.source if record else "?"
    log_lines = tail(Path(status.log_file), 20) if status.log_file else []
    resource = entry.resource if entry else KINDS[record.kind].model_validate(record.resource) if record else None
    spec = story.spec_summary(resource) if resource is not None else None
    access = _model_access(reconciler, key.name) if key.kind == "Model" else []
    click.echo("\n".join([*watch_notes(reconciler, state_dir), "", story.describe(status, source, reconciler.root,
                                                                                  log_lines, spec), *access]))


def _model_access(reconciler: Reconciler, model: str) -> list[str]:
    from reconciler.cli import story
    from reconciler.control.gateway_routes import gateway_endpoints, gateway_routes, gateway_users, served_models

    statuses = [status for key in reconciler.keys() if (status := reconciler.status(key)) is not None]
    routes = gateway_routes(reconciler.desired, statuses, reconciler.records)
    return story.model_access(model, served_models(reconciler.desired), routes, gateway_endpoints(reconciler.desired, statuses),
                              gateway_users(reconciler.desired))


@click.command()
@click.argument("name")
@path_argument
@state_option
@click.option("--previous", is_flag=True, help="The log of the run before the current one (a crash's story).")
@click.option("-f", "--follow", "follow_", is_flag=True, help="Keep printing new output until interrupted.")
@click.option("--tail", "lines", type=int, default=0, help="Only the last N lines (0: all that is kept).")
@cli_git.git_options
def logs(name: str, path: Path, state_dir: Path | None, previous: bool, follow_: bool, lines: int, git_url: str | None,
         branch: str, git_path: str) -> None:
    """A workload's output: a running container's live from its engine, else from the bounded log store (kept
    after a crash)."""
    if follow_:
        gc.enable()  # it runs on: see ONE_SHOT in reconciler/cli/__init__.py
    if git_url is None and not follow_:
        answer_from_daemon(path, state_dir or default_state_dir(path))
    from reconciler.drive.logs import follow, tail

    _, state_dir = located(path, state_dir, git_url, branch, git_path)
    live = None if previous else _container_log(state_dir, name_of(name), lines, follow_)
    if live is not None:
        try:
            for chunk in live:
                click.echo(chunk.decode("utf-8", "replace"), nl=False)
        except KeyboardInterrupt:
            pass
        return
    log_dir = state_dir / "logs"
    log_file = log_dir / (f"{name_of(name)}.previous.log" if previous else f"{name_of(name)}.log")
    if not log_file.exists():
        raise click.ClickException(f"{log_file}: no log{' of a previous run' if previous else ''} for {name}")
    for line in tail(log_file, lines):
        click.echo(line)
    if follow_:
        try:
            for chunk in follow(log_file):
                click.echo(chunk, nl=False)
        except KeyboardInterrupt:
            pass


def _container_log(state_dir: Path, name: str, lines: int, follow: bool) -> Iterator[bytes] | None:
    """A container workload's output, asked of the engine by the labels this state directory's containers carry: no
    spec, model or driver is loaded (what the folder says now cannot change which output is this workload's)."""
    if (state_dir / "processes" / f"{name}.json").exists():
        return None  # a native workload: its log store file is the live log
    from reconciler.base.owner import owner_id
    from reconciler.observe.docker_engine import DockerEngine

    return DockerEngine().output(owner_id(state_dir), name, lines, follow)
