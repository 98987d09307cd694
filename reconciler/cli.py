"""`reconciler` command line: validate, plan, apply, run, sync, down, status, describe, logs, host, schemas; the
answers of a person (approve, deny, rollback), evidence (export, verify, forget) and `models` have their own modules."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click

from reconciler import cli_answers, cli_evidence, cli_git, cli_models, inspect
from reconciler.api.kinds import KINDS
from reconciler.api.reference import REFERENCE_FILE, render_reference
from reconciler.api.schemas import SCHEMA_GLOBS, render_schemas, stale_generated, write_generated
from reconciler.cli_common import (EXIT_CHANGES, EXIT_ERROR, EXIT_IN_SYNC, default_state_dir, key_of, located, locked,
                                   open_reconciler, output_option, path_argument, print_load_errors, readable_folder,
                                   state_option, watch_notes)
from reconciler.control import logfmt
from reconciler.control.daemon import Daemon
from reconciler.control.gateway_routes import gateway_routes
from reconciler.control.gitops import GITOPS, request_sync
from reconciler.control.metrics import Metrics, loopback_address
from reconciler.control.reconciler import Reconciler
from reconciler.diff.loopback import loopback_env_warnings
from reconciler.drive.containers import ContainerDriver
from reconciler.drive.process import owner_id
from reconciler.load.desired import load_desired
from reconciler.observe import clock
from reconciler.observe.docker_engine import DockerEngine
from reconciler.observe.host_profile import observe_host_profile
from reconciler.record.status import FAILED_PHASES, SUCCEEDED_PHASES
from reconciler.render import dump, plan_rows, plan_table, routes_table, status_rows, status_table
from reconciler.render_host import host_table

APPLY_WORKERS = 4  # container starts wait on the engine: several at once, as Compose does


@click.group()
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.option("--log-format", default="text", type=click.Choice(["text", "json"]), envvar="RECONCILER_LOG_FORMAT",
              help="json: one object per line (time, level, logger, message, resource).")
def main(log_level: str, log_format: str) -> None:
    """Keep what runs on this workstation equal to the desired state in PATH."""
    logfmt.configure(log_level, log_format)


@main.command()
@path_argument
def validate(path: Path) -> None:
    """Check every spec file; errors name file:line:column, field and what was expected."""
    readable_folder(path)
    desired = load_desired(path)
    for errors in desired.errors.values():
        for error in errors:
            click.echo(str(error))
    if desired.errors:
        sys.exit(EXIT_ERROR)
    click.echo(f"{len(desired.resources)} resources in {len(desired.files)} files are valid")


@main.command()
@path_argument
@state_option
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.option("--allow-empty", is_flag=True, help="Plan pruning even when the desired state is empty.")
def plan(path: Path, state_dir: Path | None, output: str, allow_empty: bool) -> None:
    """Show every action a pass would take, with its cause. Exit 0 in sync, 2 changes pending, 1 error."""
    reconciler = open_reconciler(path, state_dir, readonly=True, allow_empty=allow_empty)
    now = clock.now()
    rows = plan_rows([reconciler.plan(key, now) for key in reconciler.keys()])
    click.echo(dump(rows, "json") if output == "json" else plan_table(rows))
    for warning in loopback_env_warnings(reconciler.desired):
        click.echo(f"warning: {warning}", err=True)
    if print_load_errors(reconciler):
        sys.exit(EXIT_ERROR)
    sys.exit(EXIT_CHANGES if any(row["action"] != "none" for row in rows) else EXIT_IN_SYNC)


@main.command()
@path_argument
@state_option
@click.option("--wait", is_flag=True, help="Block until every workload is Ready or has failed.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds --wait waits at most.")
@click.option("--min-ready-seconds", default=1.0, show_default=True, help="How long a process must stay up to count as Ready for --wait.")
@click.option("--allow-empty", is_flag=True, help="Prune everything even when the desired state is empty.")
def apply(path: Path, state_dir: Path | None, wait: bool, timeout: float, min_ready_seconds: float, allow_empty: bool) -> None:
    """Run one reconcile pass (or, with --wait, until workloads are Ready or failed)."""
    exited = threading.Event()
    state_dir = state_dir or default_state_dir(path)
    with locked(path, state_dir, "apply"):
        reconciler = open_reconciler(path, state_dir, allow_empty=allow_empty, on_exit=lambda name: exited.set(),
                                 terminal=sys.stderr if sys.stderr.isatty() else None)
        reconciler.adopt()
        deadline = time.monotonic() + timeout
        backoffs: dict[str, datetime] = {}  # the back-off each workload is waited out of: once
        while True:
            _pass(reconciler)
            pending, failed = _readiness(reconciler, min_ready_seconds, deadline - time.monotonic() if wait else 0.0,
                                         backoffs)
            if not wait:
                break
            if not pending:  # judged from what runs now, which may have moved on since the pass: recorded too
                _pass(reconciler)
                break
            if time.monotonic() >= deadline:
                click.echo(f"timed out after {timeout}s waiting for: {', '.join(pending)}", err=True)
                sys.exit(EXIT_ERROR)
            exited.wait(0.1)
            exited.clear()
    load_errors = print_load_errors(reconciler)
    for line in failed:
        click.echo(line, err=True)
    sys.exit(EXIT_ERROR if (wait and failed) or load_errors else EXIT_IN_SYNC)


def _pass(reconciler: Reconciler) -> None:
    keys = reconciler.keys()
    with ThreadPoolExecutor(APPLY_WORKERS) as pool:  # as the daemon's workers: never one key twice at once
        # models first: a workload starts in this pass on the model fetched in it
        list(pool.map(reconciler.reconcile, [key for key in keys if key.kind != "Workload"]))
        list(pool.map(reconciler.reconcile, [key for key in keys if key.kind == "Workload"]))


def _readiness(reconciler: Reconciler, min_ready_seconds: float, patience: float,
               backoffs: dict[str, datetime]) -> tuple[list[str], list[str]]:
    """Workloads still settling, and those that failed, by the phase their status shows now. A workload's first
    back-off that ends within `patience` seconds is settling (a killed server is restarted); a back-off after
    that restart failed too is reported (a missing executable fails at once, not after a minute of retries).
    `backoffs`: the back-off each workload was first seen in, kept across calls."""
    pending, failed = [], []
    now = clock.now()
    waited_out = now + timedelta(seconds=patience)
    for key in reconciler.desired.resources:
        if key.kind != "Workload":
            continue
        status = reconciler.status(key)
        if status is None:
            pending.append(str(key))
        elif status.phase == "BackOff" and status.next_retry_time is not None and status.next_retry_time <= waited_out \
                and backoffs.setdefault(str(key), status.next_retry_time) == status.next_retry_time:
            pending.append(str(key))
        elif status.phase in FAILED_PHASES:
            failed.append(f"{key}: {status.phase}: {status.message}")
        elif status.phase == "Running":
            if status.started_at is None or (now - status.started_at).total_seconds() < min_ready_seconds:
                pending.append(str(key))
        elif status.phase not in SUCCEEDED_PHASES:
            pending.append(str(key))
    return pending, failed


@main.command()
@path_argument
@state_option
@click.option("--resync", default=30.0, show_default=True, help="Seconds between full passes when nothing happens.")
@click.option("--allow-empty", is_flag=True, help="Prune everything even when the desired state becomes empty.")
@click.option("--metrics-address", metavar="HOST:PORT", envvar="RECONCILER_METRICS_ADDRESS",
              help="Serve Prometheus metrics there (loopback only), e.g. 127.0.0.1:9464. Off by default.")
@click.option("--model-rehash-hours", default=24.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Hash each cached model in full at least this often (it is also hashed before every start).")
@cli_git.git_options
@click.option("--interval", default="60s", show_default=True, help="With --git: how often to fetch (30s, 5m, 1h).")
@click.option("--verify-signatures", "allowed_signers", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              metavar="ALLOWED_SIGNERS", help="With --git: apply only commits signed by a key in this file "
                                              "(git's gpg.ssh.allowedSignersFile format).")
def run(path: Path, state_dir: Path | None, resync: float, allow_empty: bool, metrics_address: str | None,
        model_rehash_hours: float, git_url: str | None, branch: str, git_path: str, interval: str,
        allowed_signers: Path | None) -> None:
    """The daemon: watch PATH (or follow --git) and converge on every change, exit and resync. SIGTERM leaves
    workloads running."""
    if git_url is not None:
        git_interval = cli_git.seconds(interval)
        state_dir = state_dir or cli_git.git_state_dir(git_url, branch, git_path)
        (state_dir / GITOPS).mkdir(parents=True, exist_ok=True, mode=0o700)
    state_dir = state_dir or default_state_dir(path)
    metrics = None
    if metrics_address:
        try:
            host, port = loopback_address(metrics_address)
        except ValueError as error:
            raise click.BadParameter(str(error)) from None
        metrics = Metrics()
        try:
            metrics.serve(host, port)
        except OSError as error:
            raise click.ClickException(f"--metrics-address {metrics_address}: {error.strerror or error}") from None
    with locked(state_dir / GITOPS if git_url else path, state_dir, "run"):  # before the follower touches anything
        follower = None
        if git_url is not None:
            follower = cli_git.follower(git_url, branch, git_path, state_dir, allowed_signers)
            prepared = follower.poll()
            if prepared is not None:
                follower.switch(prepared)
            if follower.status.last_applied_revision is None:
                raise click.ClickException("\n".join(["no valid revision to apply yet", *cli_git.summary(follower.status)]))
            path = follower.desired_root
        daemon_box: list[Daemon] = []
        source = {} if follower is None else {
            "revision": lambda: follower.status.last_applied_revision,
            "channel": f"git {follower.status.url} (branch {branch}, path {follower.path})"}
        reconciler = Reconciler(path, state_dir, allow_empty=allow_empty, metrics=metrics,
                                on_exit=lambda name: daemon_box[0].process_exited(name) if daemon_box else None,
                                on_engine_back=lambda: daemon_box[0].resync_now() if daemon_box else None,
                                on_model_fetched=lambda: daemon_box[0].resync_now() if daemon_box else None,
                                **source)  # type: ignore[arg-type]
        daemon = Daemon(reconciler, resync_seconds=resync, model_rehash_seconds=model_rehash_hours * 3600,
                        follower=follower, git_interval=git_interval if follower else 60.0)
        daemon_box.append(daemon)
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda *_: daemon.stop())
        daemon.run()


@main.command()
@state_option
@cli_git.git_options
def sync(state_dir: Path | None, git_url: str | None, branch: str, git_path: str) -> None:
    """Make the daemon following --git fetch now, instead of at its next interval."""
    if git_url is None and state_dir is None:
        raise click.UsageError("say which daemon: --git URL [--branch] [--path], or --state-dir")
    home = (state_dir or cli_git.git_state_dir(git_url or "", branch, git_path)) / GITOPS
    if not home.is_dir():
        raise click.ClickException(f"{home}: no daemon follows a git branch with this state directory")
    request_sync(home.parent)
    click.echo("asked the daemon to fetch now; `reconciler status --git ...` shows the revision in force")


@main.command()
@path_argument
@state_option
def down(path: Path, state_dir: Path | None) -> None:
    """Stop and remove everything this desired-state folder owns."""
    state_dir = state_dir or default_state_dir(path)
    with locked(path, state_dir, "down"):
        reconciler = Reconciler(path, state_dir)
        reconciler.adopt()
        kept = []
        for key in reconciler.keys():
            try:
                problem = reconciler.remove(key, cause="reconciler down")
            except Exception as error:  # noqa: BLE001 - one resource that cannot be removed must not keep the rest up
                problem = f"{type(error).__name__}: {error}"
            click.echo(f"{key}: {'not removed: ' + problem if problem else 'removed'}")
            kept += [key] if problem else []
        if kept:
            raise click.ClickException(f"{len(kept)} resource(s) still run; run `reconciler down` again once they can be reached")


@main.command()
@path_argument
@state_option
@output_option
@cli_git.git_options
def status(path: Path, state_dir: Path | None, output: str, git_url: str | None, branch: str, git_path: str) -> None:
    """What runs, where, and why not: one line per resource (with --git, first the revisions in force and tried)."""
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
    click.echo(status_table(rows) if output == "table" else dump(rows, output))
    routes = gateway_routes(reconciler.desired, statuses)
    if output == "table" and routes is not None:
        click.echo(f"\nGateway routes:\n{routes_table(routes)}")
    print_load_errors(reconciler)


@main.command()
@path_argument
@state_option
@output_option
def host(path: Path, state_dir: Path | None, output: str) -> None:
    """What this host offers to run models: CPU and its flags, memory, disk, OS, container engine, GPUs."""
    profile = observe_host_profile(state_dir or default_state_dir(path), DockerEngine(timeout=3))
    click.echo(host_table(profile) if output == "table" else dump(profile.model_dump(mode="json", by_alias=True), output))


@main.command()
@click.argument("name")
@path_argument
@state_option
@cli_git.git_options
def describe(name: str, path: Path, state_dir: Path | None, git_url: str | None, branch: str, git_path: str) -> None:
    """One resource in full: spec as run, conditions with times, limits, health, rollout, its last evidence as events."""
    path, state_dir = located(path, state_dir, git_url, branch, git_path)
    reconciler = open_reconciler(path, state_dir, readonly=True, offline=True)
    key = key_of(name)
    status = reconciler.status(key)
    record = reconciler.records.get(key)
    entry = reconciler.desired.resources.get(key)
    if status is None:
        raise click.ClickException(f"{key}: not found in {path} or in what the reconciler owns")
    source = entry.file if entry else record.source if record else "?"
    log_lines = inspect.tail(Path(status.log_file), 20) if status.log_file else []
    resource = entry.resource if entry else KINDS[record.kind].model_validate(record.resource) if record else None
    spec = inspect.spec_summary(resource) if resource is not None else None
    click.echo("\n".join([*watch_notes(reconciler, state_dir), "", inspect.describe(status, source, reconciler.root,
                                                                                  log_lines, spec)]))


@main.command()
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
    _, state_dir = located(path, state_dir, git_url, branch, git_path)
    live = None if previous else _container_log(state_dir, key_of(name).name, lines, follow_)
    if live is not None:
        try:
            for chunk in live:
                click.echo(chunk.decode("utf-8", "replace"), nl=False)
        except KeyboardInterrupt:
            pass
        return
    log_dir = state_dir / "logs"
    log_file = log_dir / (f"{key_of(name).name}.previous.log" if previous else f"{key_of(name).name}.log")
    if not log_file.exists():
        raise click.ClickException(f"{log_file}: no log{' of a previous run' if previous else ''} for {name}")
    for line in inspect.tail(log_file, lines):
        click.echo(line)
    if follow_:
        try:
            for chunk in inspect.follow(log_file):
                click.echo(chunk, nl=False)
        except KeyboardInterrupt:
            pass


def _container_log(state_dir: Path, name: str, lines: int, follow: bool) -> Iterator[bytes] | None:
    if (state_dir / "processes" / f"{name}.json").exists():
        return None  # a native workload: its log store file is the live log
    driver = ContainerDriver(state_dir, owner_id(state_dir), DockerEngine(), readonly=True)
    return driver.live_log(name, lines, follow)


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default="crds", show_default=True)
@click.option("--docs", type=click.Path(path_type=Path), default=Path("docs/reference"), show_default=True,
              help="Where the generated kinds reference (kinds.md) goes.")
@click.option("--check", is_flag=True, help="Only report files that are stale; exit 1 if any.")
def schemas(out: Path, docs: Path, check: bool) -> None:
    """Regenerate the JSON Schemas and CRDs in crds/ and the kinds reference in docs/reference/ from the pydantic
    models."""
    generated = ((out, render_schemas(), SCHEMA_GLOBS), (docs, render_reference(), (REFERENCE_FILE,)))
    if check:
        stale = [folder / name for folder, rendered, globs in generated
                 for name in stale_generated(folder, rendered, globs)]
        for path in stale:
            click.echo(f"stale: {path}")
        sys.exit(EXIT_ERROR if stale else EXIT_IN_SYNC)
    for folder, rendered, globs in generated:
        for written in write_generated(folder, rendered, globs):
            click.echo(f"wrote {written}")


for command in (cli_answers.approve, cli_answers.deny, cli_answers.rollback, cli_evidence.export, cli_evidence.verify,
                cli_evidence.forget, cli_models.models):
    main.add_command(command)
