"""Talking to systemd when `reconciler run` is its service (deploy/reconciler.service: Type=notify, WatchdogSec=).

The sd_notify protocol is one datagram of newline-separated KEY=VALUE lines to the socket named in
$NOTIFY_SOCKET; it is small enough to speak here rather than depend on libsystemd. Outside systemd the
variable is unset and every call is a no-op returning False, so the daemon calls these unconditionally.
Workloads never inherit $NOTIFY_SOCKET or $WATCHDOG_*: the process driver passes on only an allow-list of
variables, and the unit's NotifyAccess=main would ignore anything they sent.
"""

from __future__ import annotations

import os
import socket

SEND_TIMEOUT = 2.0  # a stuck systemd must not stall the daemon loop for longer than this


def notify(message: str) -> bool:
    """Send `message` to systemd. False when not under systemd or the send failed: a lost notification
    must never take down the daemon (systemd then times out or kills it, and that is the report)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]  # Linux abstract namespace
    elif not address.startswith("/"):
        return False  # unset, or a kind of address not spoken here (vsock:)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendto(message.encode(), address)
    except OSError:
        return False
    return True


def ready() -> bool:
    """Start-up is done (workloads adopted): systemd starts what is ordered after us and arms the watchdog."""
    return notify("READY=1")


def stopping() -> bool:
    """Shutting down: `systemctl status` shows "deactivating" rather than a hang while workers finish."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """One line for `systemctl status`. Newlines are flattened: they would start new assignments."""
    return notify("STATUS=" + " ".join(text.splitlines()))


def watchdog_interval() -> float | None:
    """Seconds within which systemd expects WATCHDOG=1 (WatchdogSec=), or None when no watchdog is armed
    for this process: $WATCHDOG_USEC unset or invalid, or $WATCHDOG_PID naming another process (the
    variables were inherited from a parent that is the one being watched)."""
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


class Watchdog:
    """Keep-alives from the daemon loop at half systemd's interval, so that a loop which stops turning
    (a pass stuck in a hung driver call) is killed by systemd and restarted (Restart=on-failure), while
    its workloads keep running (KillMode=process) and are re-adopted. Times are time.monotonic() values."""

    def __init__(self, interval: float | None) -> None:
        self.period = interval / 2 if interval else None
        self._next = float("-inf")

    @classmethod
    def from_environment(cls) -> Watchdog:
        return cls(watchdog_interval())

    def ping_if_due(self, now: float) -> bool:
        """Send WATCHDOG=1 if half the interval has passed since the last one. True when sent."""
        if self.period is None or now < self._next:
            return False
        return self.ping(now)

    def ping(self, now: float) -> bool:
        """Send WATCHDOG=1 now, e.g. before a long shutdown, so the interval starts afresh."""
        if self.period is None:
            return False
        self._next = now + self.period  # even when the send fails: no busy retry loop
        return notify("WATCHDOG=1")

    def due_in(self, now: float) -> float | None:
        """Seconds until the next keep-alive is due (0: now), or None without a watchdog: the longest the
        loop may sleep."""
        return None if self.period is None else max(0.0, self._next - now)
