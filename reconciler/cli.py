"""`reconciler` command line: validate, plan, apply, run, down, status, describe, logs, host, approve, deny, export,
verify, forget, schemas."""

from __future__ import annotations

import hashlib
import os
import pwd
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import click

from reconciler import cli_git, cli_models, inspect
from reconciler.api.approval import Answer, Approval
from reconciler.api.kinds import KINDS, Workload
from reconciler.api.meta import ResourceKey
from reconciler.api.schemas import crds, stale_schemas, write_schemas
from reconciler.control import logfmt
from reconciler.control.daemon import Daemon
from reconciler.control.gitops import GITOPS, request_sync
from reconciler.control.metrics import Metrics, loopback_address
from reconciler.drive.containers import ContainerDriver
from reconciler.drive.process import owner_id
from reconciler.export.kubernetes import kubernetes_manifests, render_yaml
from reconciler.observe.docker_engine import DockerEngine
from reconciler.control.lock import Busy, exclusive
from reconciler.control.reconciler import DesiredStateUnreadable, Reconciler
from reconciler.load.desired import DesiredEntry, load_desired
from reconciler.record.store import StateStore
from reconciler.record.status import FAILED_PHASES, SUCCEEDED_PHASES
from reconciler.observe.host_profile import observe_host_profile
from reconciler.record.approvals import ApprovalStore
from reconciler.record.bundle import write_bundle
from reconciler.record.evidence import verify_chain
from reconciler.record.verify import all_chains, verify_report
from reconciler.record.forget import FORGETTABLE_KINDS, Refused, forget as forget_resource
from reconciler.render_host import host_table
from reconciler.render import dump, plan_rows, plan_table, status_rows, status_table

EXIT_IN_SYNC, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2
APPLY_WORKERS = 4  # container starts wait on the engine: several at once, as Compose does


def default_state_dir(root: Path) -> Path:
    """One state directory per desired-state folder, so two folders never prune each other."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return cli_git.state_home() / f"{root.resolve().name}-{digest}"


path_argument = click.argument("path", type=click.Path(path_type=Path), default="desired-state")
state_option = click.option(
    "--state-dir", type=click.Path(path_type=Path), envvar="RECONCILER_STATE_DIR",
    help="Where the reconciler keeps process records and logs [default: ~/.local/state/localaistack-reconciler/<folder>].",
)
output_option = click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table")


def _reconciler(path: Path, state_dir: Path | None, **options: object) -> Reconciler:
    reconciler = Reconciler(path, state_dir or default_state_dir(path), **options)  # type: ignore[arg-type]
    try:
        reconciler.refresh()
    except DesiredStateUnreadable as error:
        raise click.ClickException(str(error)) from None
    return reconciler


def _print_load_errors(reconciler: Reconciler) -> bool:
    for errors in reconciler.desired.errors.values():
        for error in errors:
            click.echo(str(error), err=True)
    return bool(reconciler.desired.errors)


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
    if not path.is_dir():
        raise click.ClickException(f"{path}: not a readable folder")
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
    reconciler = _reconciler(path, state_dir, readonly=True, allow_empty=allow_empty)
    now = datetime.now(timezone.utc)
    rows = plan_rows([reconciler.plan(key, now) for key in reconciler.keys()])
    click.echo(dump(rows, "json") if output == "json" else plan_table(rows))
    if _print_load_errors(reconciler):
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
    with _locked(path, state_dir, "apply"):
        reconciler = _reconciler(path, state_dir, allow_empty=allow_empty, on_exit=lambda name: exited.set(),
                                 terminal=sys.stderr if sys.stderr.isatty() else None)
        reconciler.adopt()
        deadline = time.monotonic() + timeout
        while True:
            keys = reconciler.keys()
            with ThreadPoolExecutor(APPLY_WORKERS) as pool:  # as the daemon's workers: never one key twice at once
                # models first: a workload starts in this pass on the model fetched in it
                list(pool.map(reconciler.reconcile, [key for key in keys if key.kind != "Workload"]))
                list(pool.map(reconciler.reconcile, [key for key in keys if key.kind == "Workload"]))
            pending, failed = _readiness(reconciler, min_ready_seconds)
            if not wait or not pending:
                break
            if time.monotonic() >= deadline:
                click.echo(f"timed out after {timeout}s waiting for: {', '.join(pending)}", err=True)
                sys.exit(EXIT_ERROR)
            exited.wait(0.1)
            exited.clear()
    load_errors = _print_load_errors(reconciler)
    for line in failed:
        click.echo(line, err=True)
    sys.exit(EXIT_ERROR if (wait and failed) or load_errors else EXIT_IN_SYNC)


def _readiness(reconciler: Reconciler, min_ready_seconds: float) -> tuple[list[str], list[str]]:
    """Workloads still settling, and those that failed, by the phase their status shows now."""
    pending, failed = [], []
    now = datetime.now(timezone.utc)
    for key in reconciler.desired.resources:
        if key.kind != "Workload":
            continue
        status = reconciler.status(key)
        if status is None:
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
    with _locked(state_dir / GITOPS if git_url else path, state_dir, "run"):  # before the follower touches anything
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
    with _locked(path, state_dir, "down"):
        reconciler = Reconciler(path, state_dir)
        reconciler.adopt()
        kept = []
        for key in reconciler.keys():
            problem = reconciler.remove(key, cause="reconciler down")
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
        path, state_dir, followed = cli_git.followed(git_url, branch, git_path, state_dir)
        for line in cli_git.summary(followed):
            click.echo(line, err=output != "table")
    reconciler = _reconciler(path, state_dir, readonly=True)
    now = datetime.now(timezone.utc)
    statuses = [status for key in reconciler.keys() if (status := reconciler.status(key)) is not None]
    rows = status_rows(statuses, reconciler.records, now)
    click.echo(status_table(rows) if output == "table" else dump(rows, output))
    _print_load_errors(reconciler)


@main.command()
@path_argument
@state_option
@output_option
def host(path: Path, state_dir: Path | None, output: str) -> None:
    """What this host offers to run models: CPU and its flags, memory, disk, OS, container engine, GPUs."""
    profile = observe_host_profile(state_dir or default_state_dir(path), DockerEngine(timeout=3))
    click.echo(host_table(profile) if output == "table" else dump(profile.model_dump(mode="json", by_alias=True), output))


hosted_option = click.option("--hosted", is_flag=True,
                             help="Answer about sending it to its hosted fallback, not about a local start.")


@main.group(invoke_without_command=True)
@click.pass_context
def models(context: click.Context) -> None:
    """The model cache: `models [list PATH]` shows entries, sizes and the Models that use them; `models gc`."""
    if context.invoked_subcommand is None:
        path = Path("desired-state")
        cli_models.list_cache(path, default_state_dir(path))


@models.command(name="list")
@path_argument
@state_option
def list_models(path: Path, state_dir: Path | None) -> None:
    """Cache entries, their sizes, and the Models that name them."""
    cli_models.list_cache(path, state_dir or default_state_dir(path))


@models.command()
@path_argument
@state_option
@click.option("--yes", is_flag=True, help="Remove them; without it, only say what would be removed.")
def gc(path: Path, state_dir: Path | None, yes: bool) -> None:
    """Remove cache entries no Model of the desired state names (a dry run without --yes)."""
    cli_models.collect_garbage(path, state_dir or default_state_dir(path), remove=yes)


@main.command()
@click.argument("name")
@path_argument
@state_option
@click.option("--spec-hash", required=True, help="The hash `plan` showed (a prefix of 8 or more will do): refused "
                                                 "if the spec changed since, so only what you reviewed is approved.")
@hosted_option
def approve(name: str, path: Path, state_dir: Path | None, spec_hash: str, hosted: bool) -> None:
    """Approve a workload's change that waits for a person: its exact current spec, nothing later."""
    _answer(name, path, state_dir, spec_hash, Answer.approve, hosted)


@main.command()
@click.argument("name")
@path_argument
@state_option
@click.option("--spec-hash", help="The hash `plan` showed (a prefix will do): refused if the spec changed since.")
@hosted_option
def deny(name: str, path: Path, state_dir: Path | None, spec_hash: str | None, hosted: bool) -> None:
    """Refuse a workload's change: its exact current spec stays refused until the spec changes."""
    _answer(name, path, state_dir, spec_hash, Answer.deny, hosted)


def _answer(name: str, path: Path, state_dir: Path | None, spec_hash: str | None, answer: Answer, hosted: bool) -> None:
    key, entry = _desired_workload(name, path)
    if spec_hash is not None and (len(spec_hash) < 8 or not entry.spec_hash.startswith(spec_hash)):
        raise click.ClickException(f"{key}: its spec is now {entry.spec_hash[:12]}, not {spec_hash}: it changed since "
                                   "you looked; run `reconciler plan` and review it again")
    who = _who()
    ApprovalStore(state_dir or default_state_dir(path)).put(Approval(
        name=key.name, spec_hash=entry.spec_hash, answer=answer, by=who, at=datetime.now(timezone.utc), hosted=hosted))
    what = "hosting on its fallback" if hosted else "spec"
    click.echo(f"{key}: {what} {entry.spec_hash[:12]} {answer.past} by {who}; {ACTED_ON}")


ACTED_ON = "a running daemon acts on it now, otherwise the next `reconciler apply` does"


@main.command()
@click.argument("name")
@path_argument
@state_option
def rollback(name: str, path: Path, state_dir: Path | None) -> None:
    """Restore a workload's known-good version (the last that stayed healthy through its soak) instead of its
    current spec; that spec is not tried again until it changes."""
    key, entry = _desired_workload(name, path)
    state_dir = state_dir or default_state_dir(path)
    record = StateStore(state_dir).load_all().get(key)
    good = record.known_good if record else None
    if good is None:
        raise click.ClickException(f"{key}: no known-good version on record (none has stayed healthy through its soak)")
    if good.spec_hash == entry.spec_hash:
        raise click.ClickException(f"{key}: its spec is the known-good version (generation {good.generation}) already")
    if record is not None and record.rolled_back is not None and record.rolled_back.spec_hash == entry.spec_hash:
        raise click.ClickException(f"{key}: already rolled back to generation {good.generation}")
    who = _who()
    ApprovalStore(state_dir).request_rollback(Approval(
        name=key.name, spec_hash=entry.spec_hash, answer=Answer.approve, by=who, at=datetime.now(timezone.utc)))
    click.echo(f"{key}: spec {entry.spec_hash[:12]} is to be replaced by the known-good generation {good.generation} "
               f"({good.spec_hash[:12]}), asked by {who}; {ACTED_ON}")


def _desired_workload(name: str, path: Path) -> tuple[ResourceKey, DesiredEntry]:
    if not path.is_dir():
        raise click.ClickException(f"{path}: not a readable folder")
    desired = load_desired(path)
    key = _key(name)
    entry = desired.resources.get(key)
    if entry is None or not isinstance(entry.resource, Workload):
        problem = desired.rejected.get(key)
        raise click.ClickException(f"{key}: {'its spec does not load: ' + str(problem[0]) if problem else 'not in ' + str(path)}")
    return key, entry


def _who() -> str:
    """The account, not what the environment claims; sudo says who asked it."""
    who = pwd.getpwuid(os.getuid()).pw_name
    return who + (f" (sudo from {os.environ['SUDO_USER']})" if os.environ.get("SUDO_USER") else "")


def _key(name: str) -> ResourceKey:
    kind, _, plain = name.rpartition("/")
    return ResourceKey(kind or "Workload", plain)


@main.command()
@click.argument("name")
@path_argument
@state_option
def describe(name: str, path: Path, state_dir: Path | None) -> None:
    """One resource in full: spec as run, conditions with times, limits, health, its last evidence as events."""
    reconciler = _reconciler(path, state_dir, readonly=True)
    key = _key(name)
    status = reconciler.status(key)
    record = reconciler.records.get(key)
    entry = reconciler.desired.resources.get(key)
    if status is None:
        raise click.ClickException(f"{key}: not found in {path} or in what the reconciler owns")
    source = entry.file if entry else record.source if record else "?"
    log_lines = inspect.tail(Path(status.log_file), 20) if status.log_file else []
    resource = entry.resource if entry else KINDS[record.kind].model_validate(record.resource) if record else None
    spec = inspect.spec_summary(resource) if resource is not None else None
    click.echo(inspect.describe(status, source, reconciler.root, log_lines, spec))


@main.command()
@click.argument("name")
@path_argument
@state_option
@click.option("--previous", is_flag=True, help="The log of the run before the current one (a crash's story).")
@click.option("-f", "--follow", "follow_", is_flag=True, help="Keep printing new output until interrupted.")
@click.option("--tail", "lines", type=int, default=0, help="Only the last N lines (0: all that is kept).")
def logs(name: str, path: Path, state_dir: Path | None, previous: bool, follow_: bool, lines: int) -> None:
    """A workload's output: a running container's live from its engine, else from the bounded log store (kept
    after a crash)."""
    state_dir = state_dir or default_state_dir(path)
    live = None if previous else _container_log(state_dir, _key(name).name, lines, follow_)
    if live is not None:
        try:
            for chunk in live:
                click.echo(chunk.decode("utf-8", "replace"), nl=False)
        except KeyboardInterrupt:
            pass
        return
    log_dir = state_dir / "logs"
    log_file = log_dir / (f"{_key(name).name}.previous.log" if previous else f"{_key(name).name}.log")
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


@main.command()
@path_argument
@state_option
@click.option("--kubernetes", "to_kubernetes", is_flag=True, help="Kubernetes manifests, on stdout.")
@click.option("--namespace", help="Namespace of the exported objects (CRDs are cluster-wide).")
@click.option("-o", "--output", "bundle", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE.tar.gz",
              help="An evidence bundle for backup and audit: specs (secret-looking env values redacted), status files, "
                   "evidence logs, revision and a MANIFEST.json; no logs, approvals or model cache.")
def export(path: Path, state_dir: Path | None, to_kubernetes: bool, namespace: str | None, bundle: Path | None) -> None:
    """The desired state for a cluster (--kubernetes): CRDs, the resources, and a Deployment (+ Service) per
    Workload, on stdout; what Kubernetes cannot express is said in each Deployment's localaistack.dev/export-note
    annotation. Or, with -o FILE.tar.gz, the folder and its evidence as one reproducible file (mode 0600)."""
    if to_kubernetes == (bundle is not None):
        raise click.UsageError("say what to export: --kubernetes (to stdout) or -o FILE.tar.gz (an evidence bundle)")
    if bundle is not None:
        if not path.is_dir():
            raise click.ClickException(f"{path}: not a readable folder")
        manifest = write_bundle(path, state_dir or default_state_dir(path), bundle)
        redacted = sum(len(entry.get("redacted", [])) for entry in manifest["files"])
        click.echo(f"wrote {bundle}: {len(manifest['files'])} files ({redacted} secret-looking env values redacted); "
                   "its MANIFEST.json lists them, and what was left out and why")
        return
    desired = load_desired(path)
    if desired.errors:  # exporting the valid rest would drop the broken ones without a word
        for errors in desired.errors.values():
            for error in errors:
                click.echo(str(error), err=True)
        sys.exit(EXIT_ERROR)
    manifests = kubernetes_manifests(desired, crds(), namespace, source_root=str(path.resolve()))
    click.echo(render_yaml(manifests), nl=False)


@main.command()
@path_argument
@state_option
def verify(path: Path, state_dir: Path | None) -> None:
    """Check every evidence chain under PATH (rotated files included) and the host log in the state directory:
    one line each. Exit 0 when all are intact, 1 when any is broken."""
    if not path.is_dir():
        raise click.ClickException(f"{path}: not a readable folder")
    chains = all_chains(path, state_dir or default_state_dir(path))
    results = [(chain, verify_chain(chain)) for chain in chains]
    for chain, result in results:
        click.echo(verify_report(chain, result))
    if not chains:
        click.echo(f"{path}: no evidence logs")
    sys.exit(EXIT_IN_SYNC if all(result.ok for _, result in results) else EXIT_ERROR)


@main.command()
@click.argument("name")
@path_argument
@state_option
@click.option("--kind", type=click.Choice(FORGETTABLE_KINDS), help="The kind of NAME [default: Workload, or KIND/NAME's].")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
def forget(name: str, path: Path, state_dir: Path | None, kind: str | None, dry_run: bool) -> None:
    """Delete a removed resource's evidence, logs, approvals and state, and record that in the host evidence log.
    Refused while PATH still declares it or anything of it still runs."""
    if not path.is_dir():
        raise click.ClickException(f"{path}: not a readable folder")
    key = _key(name) if "/" in name else ResourceKey(kind or "Workload", name)
    if kind is not None and key.kind != kind:
        raise click.UsageError(f"{name} is a {key.kind}, not a {kind}")
    try:
        plan = forget_resource(key, path, state_dir or default_state_dir(path), _who(), dry_run=dry_run)
    except Refused as refused:
        raise click.ClickException(str(refused)) from None
    if plan.empty:
        click.echo(f"{key}: nothing kept about it")
        return
    verb = "would " if dry_run else ""
    for chain, count in plan.rewritten.items():
        click.echo(f"{verb}rewrite {chain} without its {count} records")
    for removed in plan.deleted:
        click.echo(f"{verb}delete {removed}")
    if not dry_run:
        click.echo(f"{key}: forgotten ({plan.records} evidence records); recorded in the host evidence log")


def _container_log(state_dir: Path, name: str, lines: int, follow: bool) -> Iterator[bytes] | None:
    if (state_dir / "processes" / f"{name}.json").exists():
        return None  # a native workload: its log store file is the live log
    driver = ContainerDriver(state_dir, owner_id(state_dir), DockerEngine(), readonly=True)
    return driver.live_log(name, lines, follow)


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default="crds", show_default=True)
@click.option("--check", is_flag=True, help="Only report files that are stale; exit 1 if any.")
def schemas(out: Path, check: bool) -> None:
    """Regenerate the JSON Schemas and CRDs in crds/ from the pydantic models."""
    if check:
        stale = stale_schemas(out)
        for name in stale:
            click.echo(f"stale: {out / name}")
        sys.exit(EXIT_ERROR if stale else EXIT_IN_SYNC)
    for written in write_schemas(out):
        click.echo(f"wrote {written}")


@contextmanager
def _locked(path: Path, state_dir: Path, command: str) -> Iterator[None]:
    if not path.is_dir():
        raise click.ClickException(f"{path}: not a readable folder")
    try:
        with exclusive(path, state_dir, command):
            yield
    except Busy as error:
        raise click.ClickException(str(error)) from None
