"""The host's listening sockets: TCP listeners asked of the kernel's sock_diag netlink interface (see sock_diag(7)),
UDP sockets without a peer read from /proc/net
(and the TCP listeners too where sock_diag is refused).

/proc/net/tcp lists the listeners too, but the kernel makes that text by walking every slot of its connection table
as well, however few sockets there are: 3.5 ms of CPU per table on a 2-core, 24 GB machine, and the daemon's listen
watch reads both tables every 3 s. A dump filtered to the listening state walks only the listeners. The UDP tables
are small: read as text.
"""

from __future__ import annotations

import itertools
import socket
import struct
import sys
from pathlib import Path
from typing import NamedTuple

NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY = 4, 20  # linux/sock_diag.h
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_DUMP_INTR = 0x10  # the table changed while the dump walked it: the answer may be inconsistent
TCPF_LISTEN = 1 << 10  # TCP_LISTEN is 10 (include/net/tcp_states.h)
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_REQUEST = struct.Struct("=BBBxI48x")  # inet_diag_req_v2: family, protocol, extensions, states, a socket id of zeros
_MESSAGE = struct.Struct("=BBBB2s2x16s16s4x8xIIIII")  # inet_diag_msg: family ... sport, dport, src, dst ... uid, inode
_PAYLOAD = {NLMSG_ERROR: 4, SOCK_DIAG_BY_FAMILY: _MESSAGE.size}  # the least each kind of message carries
_sequence = itertools.count(1)


class DiagUnavailable(OSError):
    """The kernel answered with an error, or not as sock_diag does."""


class Listener(NamedTuple):
    table: str  # as /proc/net names it: tcp, tcp6, udp, udp6
    address: bytes  # 4 or 16 bytes, network order
    port: int
    uid: int  # who created it
    inode: int

    @property
    def local(self) -> str:
        """The local address as /proc/net prints it: each 32-bit word as the host stores it, then the port."""
        words = "".join(f"{int.from_bytes(self.address[n:n + 4], sys.byteorder):08X}" for n in range(0, len(self.address), 4))
        return f"{words}:{self.port:04X}"


def listeners() -> list[Listener]:
    """Every listening TCP socket and every UDP socket without a peer (it takes datagrams from anyone), IPv4 and
    IPv6. Where sock_diag is refused (gVisor, seccomp, RestrictAddressFamilies=, no tcp_diag module) or answers
    unlike itself, the TCP listeners are read from /proc/net as the UDP ones are: slower, never blind. Raises OSError
    when neither can be read."""
    try:
        found = _diag_listeners()
    except OSError:
        found = [*_proc_net("tcp"), *_proc_net("tcp6")]
    return [*found, *_proc_net("udp"), *_proc_net("udp6")]


def _proc_net(table: str) -> list[Listener]:
    """The listeners /proc/net/`table` lists: TCP sockets in the listening state (0A), UDP sockets without a peer."""
    found = []
    path = Path("/proc/net", table)
    if table.endswith("6") and not path.exists():
        return found  # a kernel without IPv6 (ipv6.disable=1) lists no IPv6 table: there are no such sockets
    with open(path, encoding="ascii") as lines:
        next(lines, None)  # the column names
        for fields in map(str.split, lines):
            if fields[3] == "0A" if table.startswith("tcp") else set(fields[2].split(":")[0]) == {"0"}:
                words, port = fields[1].split(":")
                address = b"".join(int(words[n:n + 8], 16).to_bytes(4, sys.byteorder) for n in range(0, len(words), 8))
                found.append(Listener(table, address, int(port, 16), int(fields[7]), int(fields[9])))
    return found


def _diag_listeners() -> list[Listener]:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG) as diag:
        for _ in range(2):  # a dump the kernel marks interrupted (the table changed under it) is asked once more
            found, interrupted = [], False
            for family, table in ((socket.AF_INET, "tcp"), (socket.AF_INET6, "tcp6")):
                answers, cut = _dump(diag, family)
                found.extend(Listener(table, *answer) for answer in answers)
                interrupted = interrupted or cut
            if not interrupted:
                return found
    raise DiagUnavailable("sock_diag: the dump was interrupted twice")


def _dump(diag: socket.socket, family: int) -> tuple[list[tuple[bytes, int, int, int]], bool]:
    """The listeners of `family`, and whether the kernel marked the dump interrupted."""
    sequence = next(_sequence)
    request = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, TCPF_LISTEN)
    diag.sendto(_HEADER.pack(_HEADER.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, sequence,
                             0) + request, (0, 0))
    found, interrupted = [], False
    while True:
        data, offset = diag.recv(65536), 0
        while offset + _HEADER.size <= len(data):
            length, kind, flags, answered, _ = _HEADER.unpack_from(data, offset)
            if not _HEADER.size <= length <= len(data) - offset:
                raise DiagUnavailable(f"sock_diag: a message of {length} bytes where {len(data) - offset} remain")
            interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
            if answered == sequence:
                if kind == NLMSG_DONE:
                    return found, interrupted
                if length < _HEADER.size + _PAYLOAD.get(kind, 0):
                    raise DiagUnavailable(f"sock_diag: a message of type {kind} cut to {length} bytes")
                if kind == NLMSG_ERROR:
                    error = -struct.unpack_from("=i", data, offset + _HEADER.size)[0]
                    raise DiagUnavailable(error, f"sock_diag: the dump of address family {family} was refused")
                if kind == SOCK_DIAG_BY_FAMILY:
                    _, _, _, _, port, source, _, _, _, _, uid, inode = _MESSAGE.unpack_from(data, offset + _HEADER.size)
                    found.append((source[:4] if family == socket.AF_INET else source, int.from_bytes(port, "big"),
                                  uid, inode))
            offset += (length + 3) & ~3  # each message is aligned to 4 bytes
        if not data:
            raise DiagUnavailable("sock_diag: the dump ended without its last message")
