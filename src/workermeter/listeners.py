"""The server's listening sockets and their accept queues, read from ``/proc`` (Linux).

Connections a worker has not accepted yet wait in the kernel's accept queue of the listening
socket: queueing that shows even when no proxy stamps ``X-Request-Start``. For a TCP socket in
LISTEN state, ``/proc/net/tcp{,6}`` gives the queue's length as ``rx_queue``. For a Unix socket,
each connection still waiting to be accepted is listed in ``/proc/net/unix`` in the connecting
state (02) under the listener's path.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp
_ACCEPTCON = 0x10000  # __SO_ACCEPTCON in /proc/net/unix flags
_CONNECTING = "02"  # SS_CONNECTING


@dataclass(frozen=True)
class Listener:
    """A listening socket: ``address`` is ``host:port`` or a Unix socket path."""

    inode: int
    address: str
    queued: int


def _table(path: Path) -> list[list[str]]:
    try:
        with open(path) as f:
            lines = f.read().splitlines()[1:]
    except OSError:  # absent on this kernel, or the IPv6 table when IPv6 is disabled
        return []
    return [line.split() for line in lines]


def _tcp_address(hex_addr: str) -> str:
    host, _, port = hex_addr.partition(":")
    raw = bytes.fromhex(host)
    # The kernel prints each 32-bit word of the address in host (little-endian) order.
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(packed)
    text = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"{text}:{int(port, 16)}"


def socket_inodes(proc: Path = PROC, pid: str = "self") -> set[int]:
    """Inodes of the sockets a process has open."""
    inodes: set[int] = set()
    fd_dir = proc / pid / "fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:  # no /proc (not Linux) or no permission
        return inodes
    for name in names:
        try:
            target = os.readlink(fd_dir / name)
        except OSError:  # the descriptor was closed while we listed them
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def listening(proc: Path = PROC, pid: str = "self") -> dict[int, Listener]:
    """Every listening TCP and Unix socket visible from ``pid``'s network namespace, by inode."""
    found: dict[int, Listener] = {}
    for table in ("tcp", "tcp6"):
        for f in _table(proc / pid / "net" / table):
            # sl local rem st tx_queue:rx_queue tr:when retrnsmt uid timeout inode
            if len(f) > 9 and f[3] == _LISTEN and f[9].isdigit():
                rx = f[4].partition(":")[2]
                try:
                    found[int(f[9])] = Listener(int(f[9]), _tcp_address(f[1]), int(rx, 16))
                except ValueError:  # a line this parser does not understand: skip it
                    continue
    connecting: dict[str, int] = {}
    listeners: list[tuple[int, str]] = []
    for f in _table(proc / pid / "net" / "unix"):
        # Num RefCount Protocol Flags Type St Inode [Path]
        if len(f) < 8 or not f[6].isdigit():
            continue
        try:
            flags = int(f[3], 16)
        except ValueError:  # not a flags field: skip the line
            continue
        if flags & _ACCEPTCON:
            listeners.append((int(f[6]), f[7]))
        elif f[5] == _CONNECTING:
            connecting[f[7]] = connecting.get(f[7], 0) + 1
    for inode, path in listeners:
        found[inode] = Listener(inode, path, connecting.get(path, 0))
    return found


def own_listening_inodes(proc: Path = PROC, pid: str = "self") -> list[int]:
    """Inodes of the listening sockets this process holds (inherited from a server), sorted."""
    mine = socket_inodes(proc, pid)
    if not mine:
        return []
    return sorted(mine & listening(proc, pid).keys())
