"""Whether the gateway can read a hosted workload's key file, judged from the owners and modes of the file and
the folders above it (ACLs are not read: a key readable only through one is refused). Pure.

The daemon runs as root and reads anything, but the gateway, which sends the key, runs as a user of its own: a
status that says Hosted when every request would fail to read the key is a false Ready.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from dataclasses import dataclass

from reconciler.observe.processes import RunAs


@dataclass(frozen=True)
class PathOwner:
    """One folder on the way to a file, or the file itself, as stat(2) saw it."""

    path: str
    uid: int
    gid: int
    mode: int


def stops_reader(way: Sequence[PathOwner], reader: RunAs) -> PathOwner | None:
    """The first of `way` (the folders from / down, then the file) that `reader` cannot pass: a folder it may not
    search, or the file it may not read; None when it reads the file."""
    if reader.uid == 0:
        return None
    groups = {reader.gid, *reader.groups}
    for index, step in enumerate(way):
        needed = stat.S_IROTH if index == len(way) - 1 else stat.S_IXOTH
        if step.uid == reader.uid:
            bits = step.mode >> 6
        elif step.gid in groups:
            bits = step.mode >> 3
        else:
            bits = step.mode
        if not bits & needed:
            return step
    return None


def key_unreadable(file: str, way: Sequence[PathOwner], gateways: Sequence[RunAs]) -> str | None:
    """Why a gateway cannot read the key `file`, None when every one of `gateways` can."""
    for reader in gateways:
        stop = stops_reader(way, reader)
        if stop is None:
            continue
        cannot = "read it" if stop.path == file else f"search {stop.path}"
        return (f"the gateway runs as uid {reader.uid} ({reader.describe()}) and cannot {cannot} (owner uid {stop.uid}, "
                f"gid {stop.gid}, mode {stat.S_IMODE(stop.mode):04o}); make {file} readable by it, e.g. chown "
                f"{reader.uid} {file} && chmod 0400 {file}, or run the gateway as a named user (spec.user, allowed "
                "by Policy native.users) that owns it")
    return None
