"""The gateway's own folders in the state directory, and its spool of hosted requests.

The gateway runs as a user of its own (drive/privileges.py): it can write neither the daemon's records nor the
evidence chains in the desired state. What it tells the daemon goes into folders the daemon hands to that user when
it starts the gateway (mode 0700): the demand records (written by gateway/demand.py; where they are is said here,
so the daemon's readers import no asyncio), and per hosted workload hosted/NAME.jsonl, one JSON line per hosted
request, each with an id. The daemon folds those lines into the workload's evidence chain
(control/hosted_folding.py), which is where `describe` and `verify` read them.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from reconciler.base.atomic import open_regular

DEMAND_FOLDER = "gateway/demand"  # under the state directory, beside the routes file
HOSTED_FOLDER = "gateway/hosted"  # under the state directory, beside the demand records
SPOOL_SUFFIX = ".jsonl"
FOLDING_SUFFIX = ".folding"  # a spool the daemon renamed aside to fold it (hidden: .NAME.folding)


def demand_dir(state_dir: Path) -> Path:
    return state_dir / DEMAND_FOLDER


def demand_file(state_dir: Path, workload: str) -> Path:
    return demand_dir(state_dir) / f"{workload}.json"


def hosted_dir(state_dir: Path) -> Path:
    return state_dir / HOSTED_FOLDER


def spool_files(state_dir: Path, workload: str) -> tuple[Path, Path]:
    """A workload's spool, and the same renamed aside while the daemon folds it."""
    return hosted_dir(state_dir) / f"{workload}{SPOOL_SUFFIX}", hosted_dir(state_dir) / f".{workload}{FOLDING_SUFFIX}"


def gateway_folders(state_dir: Path) -> tuple[Path, ...]:
    """The folders a gateway writes: handed to its user at each start."""
    return demand_dir(state_dir), hosted_dir(state_dir)


def append_spooled(directory: Path, workload: str, line: dict[str, Any]) -> None:
    """Append one line to `workload`'s spool in `directory` (the gateway's own folder, reached without links), whole
    and under the file's lock. The daemon renames a spool aside, then takes its lock before reading it: a line
    waiting for the lock meanwhile goes to a new spool, never into one already read."""
    path = directory / f"{workload}{SPOOL_SUFFIX}"
    data = (json.dumps(line, sort_keys=True) + "\n").encode()
    while True:
        fd = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600, root=directory)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _still_named(fd, path):
                os.write(fd, data)
                return
        finally:
            os.close(fd)


def _still_named(fd: int, path: Path) -> bool:
    held = os.fstat(fd)
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)
