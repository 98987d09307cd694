"""Every evidence chain of a desired-state folder and its state directory: what `reconciler verify` checks, and
what `export` and `forget` walk."""

from __future__ import annotations

from pathlib import Path

from reconciler.record.evidence import EVIDENCE_SUFFIX, HOST_EVIDENCE_FILE, VerifyResult, chain_files, chain_of


def find_chains(root: Path) -> list[Path]:
    """Every chain beside the specs under ``root``, named by its live file (which may be gone, its rotations not)."""
    chains = set()
    for file in root.rglob(f"*{EVIDENCE_SUFFIX}*"):
        hidden = any(part.startswith(".") for part in file.relative_to(root).parts)  # as the specs' folders are
        chain = chain_of(file)
        if chain is not None and not hidden:
            chains.add(chain)
    return sorted(chains)


def all_chains(root: Path, state_dir: Path) -> list[Path]:
    """The chains beside the specs under ``root``, then the state directory's host log when there is one."""
    host_log = state_dir / HOST_EVIDENCE_FILE
    return [*find_chains(root), *([host_log] if chain_files(host_log) else [])]


def verify_report(chain: Path, result: VerifyResult) -> str:
    """One line a person reads: which chain, how much of it holds, and where it first does not."""
    if result.ok:
        return f"{chain}: OK, {result.records} records verified"
    return (f"{chain}: BROKEN at {result.broken_file}:{result.broken_line}: {result.reason} "
            f"({result.records} records verified before it)")
