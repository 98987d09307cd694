"""Observations of the host that the pure stages take as plain values."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path


def resolve_executable(name: str) -> str | None:
    """Where command[0] would be found, so the gate can judge the real file, not just its name."""
    found = shutil.which(name)
    return str(Path(found).resolve()) if found else None


@dataclass(frozen=True)
class ModelPresence:
    path: Path
    size: int | None  # None: not there

    @property
    def present(self) -> bool:
        return self.size is not None


def observe_model(path: Path) -> ModelPresence:
    try:
        return ModelPresence(path, path.stat().st_size)
    except OSError:
        return ModelPresence(path, None)
