"""Named instants where the fault suite kills the reconciler for real (SIGKILL, as a power cut or the OOM killer
would), to prove what a crash exactly there leaves behind. RECONCILER_CRASH_AT names the one to die at; unset
(everywhere but that suite) each point costs one lookup of the environment."""

from __future__ import annotations

import os
import signal

CRASH_VARIABLE = "RECONCILER_CRASH_AT"


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_VARIABLE) == name:
        os.kill(os.getpid(), signal.SIGKILL)
