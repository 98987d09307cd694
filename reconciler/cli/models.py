"""`reconciler models`: what the model cache holds, who uses it (the desired state's Models, the running
workloads, the known-good versions a rollback would restore), and removing what nothing does."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from reconciler.cli.common import default_state_dir, path_argument, state_option

if TYPE_CHECKING:
    from reconciler.drive.artifacts import ArtifactCache


def _users(path: Path, state_dir: Path, cache: ArtifactCache) -> dict[str, list[str]]:
    """sha256 -> who needs it: a Model (variant) of the desired state, a process serving it, a known-good version."""
    from reconciler.api.kinds import Model
    from reconciler.api.launch import LaunchSpec
    from reconciler.drive.process import ProcessDriver
    from reconciler.load.desired import load_desired
    from reconciler.record.store import StateStore

    users: dict[str, list[str]] = {}
    for entry in load_desired(path).resources.values():
        if isinstance(entry.resource, Model):
            for variant in entry.resource.spec.options():
                if variant.sha256:
                    users.setdefault(variant.sha256, []).append(f"Model/{entry.resource.name} ({variant.name})")
    for record in StateStore(state_dir).load_all().values():
        good = record.known_good
        if good is not None and good.pins.model_sha256:
            users.setdefault(good.pins.model_sha256, []).append(f"{record.key} (known-good generation {good.generation})")
    processes = ProcessDriver(state_dir, readonly=True)
    served = {name: launch.model for name in processes.owned_names()
              if (observed := processes.observe(name)).running_pid and observed.record
              and isinstance(launch := observed.record.launch, LaunchSpec) and launch.model}
    for entry in cache.entries():
        prefix = f"{cache.path(entry.sha256)}:"  # a launch names its model file as path:size:mtime
        for name, model in served.items():
            if model.startswith(prefix):
                users.setdefault(entry.sha256, []).append(f"Workload/{name} (running)")
    return users


def list_cache(path: Path, state_dir: Path) -> None:
    from reconciler.api.quantity import format_bytes
    from reconciler.drive.artifacts import ArtifactCache

    cache = ArtifactCache(state_dir / "models")
    users = _users(path, state_dir, cache)
    entries = cache.entries()
    if not entries:
        click.echo(f"the model cache ({cache.root}) is empty")
    for entry in entries:
        used = ", ".join(users.get(entry.sha256, [])) or "unreferenced"
        click.echo(f"{entry.sha256[:12]}  {format_bytes(entry.size):>10}  {used}")


def collect_garbage(path: Path, state_dir: Path, remove: bool) -> None:
    from reconciler.api.quantity import format_bytes
    from reconciler.drive.artifacts import ArtifactCache

    cache = ArtifactCache(state_dir / "models")
    users = _users(path, state_dir, cache)
    unreferenced = [entry for entry in cache.entries() if entry.sha256 not in users]
    for entry in unreferenced:
        if remove:
            cache.remove(entry.sha256)
        click.echo(f"{'removed' if remove else 'would remove'} {entry.sha256[:12]} ({format_bytes(entry.size)})")
    if unreferenced and not remove:
        click.echo("dry run: nothing removed; run `reconciler models gc --yes` to remove them")


@click.group(invoke_without_command=True)
@click.pass_context
def models(context: click.Context) -> None:
    """The model cache: `models [list PATH]` shows entries, sizes and who uses them; `models gc`."""
    if context.invoked_subcommand is None:
        path = Path("desired-state")
        list_cache(path, default_state_dir(path))


@models.command(name="list")
@path_argument
@state_option
def list_models(path: Path, state_dir: Path | None) -> None:
    """Cache entries, their sizes, and who uses them: Models, running workloads, known-good versions."""
    list_cache(path, state_dir or default_state_dir(path))


@models.command()
@path_argument
@state_option
@click.option("--yes", is_flag=True, help="Remove them; without it, only say what would be removed.")
def gc(path: Path, state_dir: Path | None, yes: bool) -> None:
    """Remove cache entries nothing uses: no Model of the desired state names them, no running workload serves
    them, no known-good version would be restored onto them (a dry run without --yes)."""
    collect_garbage(path, state_dir or default_state_dir(path), remove=yes)
