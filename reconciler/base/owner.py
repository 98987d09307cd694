"""Which state directory a process or container belongs to: the mark both drivers put on what they start, and what
`reconciler logs` finds a workload's container by without loading a driver."""

from __future__ import annotations

import hashlib
from pathlib import Path


def owner_id(state_dir: Path) -> str:
    """Marks processes as this state directory's, so two reconcilers never touch each other's."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]
