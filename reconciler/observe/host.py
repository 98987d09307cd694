"""Observations of the host that the pure stages take as plain values."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path


def find_executable(command: str, path: str, working_dir: str) -> str | None:
    """The file `command` names for a child with this PATH and working directory, as exec would find it."""
    if "/" in command:
        candidate = os.path.normpath(os.path.join(working_dir, command))
        return candidate if os.path.isfile(candidate) and os.access(candidate, os.X_OK) else None
    found = shutil.which(command, path=path)
    return os.path.abspath(found) if found else None


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
