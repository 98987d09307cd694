"""The commands of one pass over a desired-state folder: validate, plan, apply, down; and schemas."""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

from reconciler.cli.common import (EXIT_CHANGES, EXIT_ERROR, EXIT_IN_SYNC, default_state_dir, locked, open_reconciler,
                                   path_argument, print_load_errors, readable_folder, state_option)
from reconciler.cli.query_client import answer_from_daemon, apply_through_daemon
from reconciler.cli.tables import dump, plan_rows, plan_table

if TYPE_CHECKING:
    from collections.abc import Mapping

    from reconciler.api.meta import ResourceKey
    from reconciler.api.status import ResourceStatus
    from reconciler.control.loop import Loop
    from reconciler.control.reconciler import Reconciler

# container starts wait on the engine: many at once, as Compose's (up to 64) do. A cold converge of 20 containers
# took 7.6-8.6 s with 4, 7.0-7.8 s with 8 and 5.4-8.3 s with 20 (one run, alternating, one engine)
APPLY_WORKERS = 20
APPLY_RESYNC_SECONDS = 1.0  # --wait passes every key again this often: catches what no exit or due time reported


@click.command()
@path_argument
def validate(path: Path) -> None:
    """Check every spec file; errors name file:line:column, field and what was expected."""
    answer_from_daemon(path, default_state_dir(path))
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
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table")
@click.option("--allow-empty", is_flag=True, help="Plan pruning even when the desired state is empty.")
def plan(path: Path, state_dir: Path | None, output: str, allow_empty: bool) -> None:
    """Show every action a pass would take, with its cause, its operations and the resources it comes after. Exit
    0 in sync, 2 changes pending, 1 error."""
    from reconciler.diff.loopback import loopback_env_warnings
    from reconciler.observe import clock

    reconciler = open_reconciler(path, state_dir, readonly=True, allow_empty=allow_empty)
    now, keys = clock.now(), reconciler.keys()
    rows = plan_rows([reconciler.plan(key, now) for key in keys], reconciler.prerequisites(keys))
    click.echo(plan_table(rows) if output == "table" else dump(rows, output))
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
    """Run one reconcile pass (or, with --wait, until workloads are Ready or failed). A daemon watching PATH with this
    state directory runs the pass itself and this prints what it reports."""
    state_dir = state_dir or default_state_dir(path)
    apply_through_daemon(path, state_dir)
    from reconciler.api.meta import ResourceKey
    from reconciler.control.loop import Loop

    with locked(path, state_dir, "apply"):
        loop: Loop[ResourceKey] = Loop(lambda key: reconciler.reconcile(key), APPLY_WORKERS)
        reconciler = open_reconciler(path, state_dir, allow_empty=allow_empty,
                                     on_exit=lambda name: loop.add(ResourceKey("Workload", name), first=True),
                                     terminal=sys.stderr if sys.stderr.isatty() else None)
        # opened: what the imports and the first snapshot made is kept out of the collector's passes, which run again
        # for the rest (one pass may fetch models or pull images for long, with threads and retries)
        gc.freeze()
        gc.enable()
        reconciler.adopt()
        loop.start()
        try:
            code, lines = applied(reconciler, loop, reconciler.keys(fresh=False), wait, timeout, min_ready_seconds)
        finally:
            loop.stop()
    for line in lines:
        click.echo(line, err=True)
    sys.exit(code)


def applied(reconciler: Reconciler, loop: Loop[ResourceKey], keys: list[ResourceKey], wait: bool, timeout: float,
            min_ready_seconds: float) -> tuple[int, list[str]]:
    """Run `keys` as one round of `loop` (with `wait`, on until no workload is settling): apply's exit code and what it
    reports on stderr."""
    deadline = time.monotonic() + timeout
    loop.run_round(keys, reconciler.prerequisites(keys))
    return settled(reconciler, loop, keys, Waiting(wait, timeout, min_ready_seconds, deadline))


@dataclass(frozen=True)
class Waiting:
    """What apply waits for after its round. `rounds`: held for each round and each judgement of readiness (a loop
    runs one round at a time; the daemon's asked applies share its loop); `ended`: why to stop waiting, if it must."""
    wait: bool
    timeout: float
    min_ready_seconds: float
    deadline: float  # monotonic
    rounds: AbstractContextManager[object] = nullcontext()
    ended: Callable[[], str | None] = lambda: None


def settled(reconciler: Reconciler, loop: Loop[ResourceKey], keys: list[ResourceKey],
            waiting: Waiting) -> tuple[int, list[str]]:
    """After `keys` ran as one round of `loop` (which may run on for others, the daemon's): with `waiting.wait`, on
    until no workload is settling; apply's exit code and what it reports on stderr."""
    failed = _settle(reconciler, loop, waiting)
    if isinstance(failed, str):
        return EXIT_ERROR, [failed]
    errors, asked = [str(error) for errors in reconciler.desired.errors.values() for error in errors], set(keys)
    failures = [f"{key}: reconcile failed: {type(error).__name__}: {error}"
                for key, error in dict(loop.failures).items() if key in asked]
    code = EXIT_ERROR if (waiting.wait and failed) or errors or failures else EXIT_IN_SYNC
    return code, [*errors, *failed, *failures]


def _settle(reconciler: Reconciler, loop: Loop[ResourceKey], waiting: Waiting) -> list[str] | str:
    """With `waiting.wait`, the loop runs on after the round (exits, back-offs and probes requeue their keys; a resync
    passes all) until no workload is settling, and a last round records what runs then. Returns the workloads that
    failed, or why it gave up waiting."""
    backoffs: dict[str, datetime] = {}  # the back-off each workload is waited out of: once
    min_ready_seconds, deadline, rounds = waiting.min_ready_seconds, waiting.deadline, waiting.rounds
    if not waiting.wait:  # what its pass recorded: nothing waits on a judgement made again
        return _readiness(reconciler, reconciler.parts.recorder.statuses(), min_ready_seconds, 0.0, backoffs)[1]
    resync_at = time.monotonic() + APPLY_RESYNC_SECONDS
    while True:
        ended = waiting.ended()
        if ended is not None:
            return ended
        # judged between reconciles: one in flight (a stop, then a start) is no state to judge
        with rounds, loop.paused():
            seen = loop.finished
            statuses = {key: reconciler.status(key) for key in reconciler.desired.resources if key.kind == "Workload"}
            pending, failed, recheck = _readiness(reconciler, statuses, min_ready_seconds,
                                                  deadline - time.monotonic(), backoffs)
        if not pending:  # judged from what runs now, which may have moved on since the pass: recorded too
            with rounds:
                keys = reconciler.keys(fresh=False)  # the last listing, and the engine's events since
                loop.run_round(keys, reconciler.prerequisites(keys))
            return failed
        now = time.monotonic()
        if now >= deadline:
            return f"timed out after {waiting.timeout}s waiting for: {', '.join(pending)}"
        if now >= resync_at:
            for key in reconciler.keys():
                loop.add(key)
            resync_at = now + APPLY_RESYNC_SECONDS
        loop.wait_for_progress(seen, max(0.0, min(deadline, resync_at, now + recheck) - now))


def _readiness(reconciler: Reconciler, statuses: Mapping[ResourceKey, ResourceStatus | None], min_ready_seconds: float,
               patience: float, backoffs: dict[str, datetime]) -> tuple[list[str], list[str], float]:
    """Workloads still settling, and those that failed, by the phase their status in `statuses` shows, and the seconds
    until a running one has run `min_ready_seconds` (inf: none). A workload's first back-off that ends within
    `patience` seconds is settling (a killed server is restarted); a back-off after that restart failed too is
    reported (a missing executable fails at once, not after a minute of retries). `backoffs`: the back-off each
    workload was first seen in, kept across calls."""
    from reconciler.observe import clock
    from reconciler.record.status import FAILED_PHASES, SUCCEEDED_PHASES

    pending, failed, recheck = [], [], float("inf")
    now = clock.now()
    waited_out = now + timedelta(seconds=patience)
    for key in reconciler.desired.resources:
        if key.kind != "Workload":
            continue
        status = statuses.get(key)
        if status is None:
            pending.append(str(key))
        elif status.phase == "BackOff" and status.next_retry_time is not None and status.next_retry_time <= waited_out \
                and backoffs.setdefault(str(key), status.next_retry_time) == status.next_retry_time:
            pending.append(str(key))
        elif status.phase in FAILED_PHASES:
            failed.append(f"{key}: {status.phase}: {status.message}")
        elif status.phase == "Running":
            ran = (now - status.started_at).total_seconds() if status.started_at is not None else 0.0
            if ran < min_ready_seconds:
                pending.append(str(key))
                recheck = min(recheck, min_ready_seconds - ran)
        elif status.phase not in SUCCEEDED_PHASES:
            pending.append(str(key))
    return pending, failed, recheck


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
