"""`reconciler models`: what the model cache holds, which Models use it, and removing what none does."""

from __future__ import annotations

from pathlib import Path

import click

from reconciler.api.kinds import Model
from reconciler.api.quantity import format_bytes
from reconciler.drive.artifacts import ArtifactCache
from reconciler.load.desired import load_desired


def _users(path: Path) -> dict[str, list[str]]:
    """sha256 -> the Models (and variants) of the desired state that name it."""
    users: dict[str, list[str]] = {}
    for entry in load_desired(path).resources.values():
        if isinstance(entry.resource, Model):
            for variant in entry.resource.spec.options():
                if variant.sha256:
                    users.setdefault(variant.sha256, []).append(f"Model/{entry.resource.name} ({variant.name})")
    return users


def list_cache(path: Path, state_dir: Path) -> None:
    cache, users = ArtifactCache(state_dir / "models"), _users(path)
    entries = cache.entries()
    if not entries:
        click.echo(f"the model cache ({cache.root}) is empty")
    for entry in entries:
        used = ", ".join(users.get(entry.sha256, [])) or "unreferenced"
        click.echo(f"{entry.sha256[:12]}  {format_bytes(entry.size):>10}  {used}")


def collect_garbage(path: Path, state_dir: Path, remove: bool) -> None:
    cache, users = ArtifactCache(state_dir / "models"), _users(path)
    unreferenced = [entry for entry in cache.entries() if entry.sha256 not in users]
    for entry in unreferenced:
        if remove:
            cache.remove(entry.sha256)
        click.echo(f"{'removed' if remove else 'would remove'} {entry.sha256[:12]} ({format_bytes(entry.size)})")
    if unreferenced and not remove:
        click.echo("dry run: nothing removed; run `reconciler models gc --yes` to remove them")
