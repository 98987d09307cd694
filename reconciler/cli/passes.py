"""The commands of one pass over a desired-state folder: validate, plan, apply, down; and schemas."""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

from reconciler.cli.common import (EXIT_CHANGES, EXIT_ERROR, EXIT_IN_SYNC, default_state_dir, locked, open_reconciler,
                                   path_argument, print_load_errors, readable_folder, state_option)
from reconciler.cli.tables import dump, plan_rows, plan_table

if TYPE_CHECKING:
    from reconciler.control.reconciler import Reconciler

# container starts wait on the engine: many at once, as Compose's (up to 64) do. A cold converge of 20 containers
# took 7.6-8.6 s with 4, 7.0-7.8 s with 8 and 5.4-8.3 s with 20 (one run, alternating, one engine)
APPLY_WORKERS = 20


@click.command()
@path_argument
def validate(path: Path) -> None:
    """Check every spec file; errors name file:line:column, field and what was expected."""
    from reconciler.load.desired import load_desired

    readable_folder(path)
    desired = load_desired(path)
    for errors in desired.errors.values():
        for error in errors:
            click.echo(str(error))
    if desired.errors:
        sys.exit(EXIT_ERROR)
    click.echo(f"{len(desired.resources)} resources in {len(desired.files)} files are valid")


@click.command()
@path_argument
@state_option
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.option("--allow-empty", is_flag=True, help="Plan pruning even when the desired state is empty.")
def plan(path: Path, state_dir: Path | None, output: str, allow_empty: bool) -> None:
    """Show every action a pass would take, with its cause. Exit 0 in sync, 2 changes pending, 1 error."""
    from reconciler.diff.loopback import loopback_env_warnings
    from reconciler.observe import clock

    reconciler = open_reconciler(path, state_dir, readonly=True, allow_empty=allow_empty)
    now = clock.now()
    rows = plan_rows([reconciler.plan(key, now) for key in reconciler.keys()])
    click.echo(dump(rows, "json") if output == "json" else plan_table(rows))
    for warning in loopback_env_warnings(reconciler.desired):
        click.echo(f"warning: {warning}", err=True)
    if print_load_errors(reconciler):
        sys.exit(EXIT_ERROR)
    sys.exit(EXIT_CHANGES if any(row["action"] != "none" for row in rows) else EXIT_IN_SYNC)


@click.command()
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
    from reconciler.observe import clock
    from reconciler.record.status import FAILED_PHASES, SUCCEEDED_PHASES

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


@click.command()
@path_argument
@state_option
def down(path: Path, state_dir: Path | None) -> None:
    """Stop and remove everything this desired-state folder owns."""
    from reconciler.control.reconciler import Reconciler

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


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default="crds", show_default=True)
@click.option("--docs", type=click.Path(path_type=Path), default=Path("docs/reference"), show_default=True,
              help="Where the generated kinds reference (kinds.md) goes.")
@click.option("--check", is_flag=True, help="Only report files that are stale; exit 1 if any.")
def schemas(out: Path, docs: Path, check: bool) -> None:
    """Regenerate the JSON Schemas and CRDs in crds/ and the kinds reference in docs/reference/ from the pydantic
    models."""
    from reconciler.api.reference import REFERENCE_FILE, render_reference
    from reconciler.api.schemas import SCHEMA_GLOBS, render_schemas, stale_generated, write_generated

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
