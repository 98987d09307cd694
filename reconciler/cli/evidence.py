"""Evidence you can trust and take away: `verify` every chain, `export` the desired state (for Kubernetes, or as
an evidence bundle), `forget` a removed resource and leave only a deletion record."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from reconciler.cli import git as cli_git
from reconciler.cli.common import (EXIT_ERROR, EXIT_IN_SYNC, key_of, located, path_argument, readable_folder, state_option,
                                   who)


@click.command()
@path_argument
@state_option
@click.option("--kubernetes", "to_kubernetes", is_flag=True, help="Kubernetes manifests, on stdout.")
@click.option("--namespace", help="Namespace of the exported objects (CRDs are cluster-wide).")
@click.option("-o", "--output", "bundle", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE.tar.gz",
              help="An evidence bundle for backup and audit: specs (secret-looking env values redacted), status files, "
                   "evidence logs, revision and a MANIFEST.json; no logs, approvals or model cache.")
@cli_git.git_options
def export(path: Path, state_dir: Path | None, to_kubernetes: bool, namespace: str | None, bundle: Path | None,
           git_url: str | None, branch: str, git_path: str) -> None:
    """The desired state for a cluster (--kubernetes): CRDs, the resources, and a Deployment (+ Service) per
    Workload, on stdout; what Kubernetes cannot express is said in each Deployment's localaistack.dev/export-note
    annotation. Or, with -o FILE.tar.gz, the folder and its evidence as one reproducible file (mode 0600)."""
    from reconciler.api.schemas import crds
    from reconciler.control.bundle import write_bundle
    from reconciler.export.kubernetes import kubernetes_manifests, render_yaml
    from reconciler.load.desired import load_desired

    if to_kubernetes == (bundle is not None):
        raise click.UsageError("say what to export: --kubernetes (to stdout) or -o FILE.tar.gz (an evidence bundle)")
    path, state = located(path, state_dir, git_url, branch, git_path)
    if bundle is not None:
        readable_folder(path)
        manifest = write_bundle(path, state, bundle)
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


@click.command()
@path_argument
@state_option
@cli_git.git_options
def verify(path: Path, state_dir: Path | None, git_url: str | None, branch: str, git_path: str) -> None:
    """Check every evidence chain under PATH (rotated files included) and the host log in the state directory:
    one line each. Exit 0 when all are intact, 1 when any is broken."""
    from reconciler.record.evidence import verify_chain
    from reconciler.record.verify import all_chains, verify_report

    path, state = located(path, state_dir, git_url, branch, git_path)
    readable_folder(path)
    chains = all_chains(path, state)
    results = [(chain, verify_chain(chain)) for chain in chains]
    for chain, result in results:
        click.echo(verify_report(chain, result))
    if not chains:
        click.echo(f"{path}: no evidence logs")
    sys.exit(EXIT_IN_SYNC if all(result.ok for _, result in results) else EXIT_ERROR)


@click.command()
@click.argument("name")
@path_argument
@state_option
@click.option("--kind", help="The kind of NAME [default: Workload, or KIND/NAME's]; forget says which kinds it takes.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@cli_git.git_options
def forget(name: str, path: Path, state_dir: Path | None, kind: str | None, dry_run: bool, git_url: str | None,
           branch: str, git_path: str) -> None:
    """Delete a removed resource's evidence, logs, approvals and state, and record that in the host evidence log.
    Refused while PATH still declares it or anything of it still runs."""
    from reconciler.api.meta import ResourceKey
    from reconciler.control.forget import Refused, forget as forget_resource

    path, state = located(path, state_dir, git_url, branch, git_path)
    readable_folder(path)
    key = key_of(name) if "/" in name else ResourceKey(kind or "Workload", name)
    if kind is not None and key.kind != kind:
        raise click.UsageError(f"{name} is a {key.kind}, not a {kind}")
    try:
        plan = forget_resource(key, path, state, who(), dry_run=dry_run)
    except Refused as refused:
        raise click.ClickException(str(refused)) from None
    if plan.empty:
        click.echo(f"{key}: nothing kept about it")
        return
    verb = "would " if dry_run else ""
    for chain, count in plan.rewritten.items():
        click.echo(f"{verb}rewrite {chain} without its {count} records")
    for status in plan.trimmed:
        click.echo(f"{verb}rewrite {status} without its status")
    for removed in plan.deleted:
        click.echo(f"{verb}delete {removed}")
    if plan.uid is not None:
        click.echo(f"{verb}release its dynamic user's uid {plan.uid}")
    for kept, why in plan.failed.items():
        click.echo(f"could not remove {kept}: {why}", err=True)
    if not dry_run:
        left = f"; {len(plan.failed)} not removed, listed above" if plan.failed else ""
        click.echo(f"{key}: forgotten ({plan.records} evidence records{left}); recorded in the host evidence log")
    if plan.failed:
        sys.exit(EXIT_ERROR)
