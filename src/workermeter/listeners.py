"""The server's listening sockets and their accept queues (Linux).

Connections a worker has not accepted yet wait in the kernel's accept queue of the listening
socket: queueing that shows even when no proxy stamps ``X-Request-Start``.

The kernel is asked through ``NETLINK_SOCK_DIAG`` (what ``ss -l`` uses) for listening sockets
only, so the cost does not grow with the thousands of established and TIME_WAIT connections of a
busy host. For a listening socket the answer gives the accept queue's length and its limit (the
backlog passed to ``listen()``, capped by ``net.core.somaxconn``).

Where netlink is not available (not Linux, a sandbox that forbids it), the same sockets are read
from ``/proc``, which costs milliseconds per call on such a host: the kernel prints every TCP
socket of ``/proc/net/tcp{,6}`` to find the few listening ones. There a TCP socket in LISTEN state
gives the queue's length as ``rx_queue``, and each connection still waiting on a Unix socket is
listed in ``/proc/net/unix`` in the connecting state (02) under the listener's path. ``/proc``
does not show the limit.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp
_ACCEPTCON = 0x10000  # __SO_ACCEPTCON in /proc/net/unix flags
_CONNECTING = "02"  # SS_CONNECTING

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listener:
    """A listening socket: ``address`` is ``host:port``, a Unix socket path, or ``@name`` for an
    abstract Unix socket. ``queued`` connections wait in its accept queue; ``limit`` is the
    queue's capacity where the kernel says (netlink), else None.
    """

    inode: int
    address: str
    queued: int
    limit: int | None = None


def listening(proc: Path = PROC, pid: str = "self") -> dict[int, Listener]:
    """Every listening TCP and Unix socket visible from ``pid``'s network namespace, by inode."""
    # Netlink answers for this process's own namespace; another root or pid means /proc.
    if proc == PROC and pid == "self":
        try:
            return netlink_listening()
        except OSError as e:  # no sock_diag here: /proc gives the same sockets, only slower
            log.debug("sock_diag netlink unavailable, reading /proc instead: %s", e)
    return proc_listening(proc, pid)


def own_listening_inodes(proc: Path = PROC, pid: str = "self") -> list[int]:
    """Inodes of the listening sockets this process holds (inherited from a server), sorted."""
    mine = socket_inodes(proc, pid)
    if not mine:
        return []
    return sorted(mine & listening(proc, pid).keys())


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


# --- netlink sock_diag (linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h, linux/unix_diag.h)

_NETLINK_SOCK_DIAG = 4  # not in Python's socket module
_NLMSGHDR = struct.Struct("=IHHII")  # nlmsg_len, nlmsg_type, nlmsg_flags, nlmsg_seq, nlmsg_pid
_NLATTR = struct.Struct("=HH")  # nla_len, nla_type
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_SOCK_DIAG_BY_FAMILY = 20
_TCP_LISTEN = 10  # the socket state, the same for TCP and Unix sockets

# inet_diag_req_v2: sdiag_family, sdiag_protocol, idiag_ext, pad, idiag_states, then a zeroed
# inet_diag_sockid (48 bytes): no socket in particular.
_INET_DIAG_REQ_V2 = struct.Struct("=BBBxI48x")
# inet_diag_msg, keeping idiag_family, idiag_state, the big-endian source port and address,
# idiag_rqueue, idiag_wqueue and idiag_inode; skipping timer, retrans, dport, dst, if, cookie,
# expires and uid.
_INET_DIAG_MSG = struct.Struct("=BB2x2s2x16s16x4x8x4xII4xI")
# unix_diag_req: sdiag_family, sdiag_protocol, pad, udiag_states, udiag_ino, udiag_show, cookie.
_UNIX_DIAG_REQ = struct.Struct("=BBxxIII8x")
# unix_diag_msg: udiag_family, udiag_type, udiag_state, pad, udiag_ino, cookie.
_UNIX_DIAG_MSG = struct.Struct("=xxBxI8x")
_UDIAG_SHOW_NAME = 0x01
_UDIAG_SHOW_RQLEN = 0x10
_UNIX_DIAG_NAME = 0
_UNIX_DIAG_RQLEN = 4  # unix_diag_rqlen: udiag_rqueue, udiag_wqueue
_RQLEN = struct.Struct("=II")

# Larger than any part of a dump (the kernel caps them at 32 KiB), so none comes truncated.
_BUFSIZE = 1 << 16
# The kernel answers a dump while we send and receive; a peer that never does is no kernel.
_TIMEOUT = 1.0


def netlink_listening() -> dict[int, Listener]:
    """Every listening TCP and Unix socket of this network namespace, from ``NETLINK_SOCK_DIAG``.

    Raises :exc:`OSError` where that is not available.
    """
    if sys.platform != "linux":
        raise OSError(errno.EAFNOSUPPORT, "NETLINK_SOCK_DIAG is Linux only")
    found: dict[int, Listener] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(_TIMEOUT)
        for family in (socket.AF_INET, socket.AF_INET6):
            request = _INET_DIAG_REQ_V2.pack(family, socket.IPPROTO_TCP, 0, 1 << _TCP_LISTEN)
            for body in _dump(sock, request):
                _, state, port, addr, queued, limit, inode = _INET_DIAG_MSG.unpack_from(body)
                if state == _TCP_LISTEN:
                    found[inode] = Listener(inode, _inet_address(family, addr, port), queued, limit)
        show = _UDIAG_SHOW_NAME | _UDIAG_SHOW_RQLEN
        request = _UNIX_DIAG_REQ.pack(socket.AF_UNIX, 0, 1 << _TCP_LISTEN, 0, show)
        for body in _dump(sock, request):
            state, inode = _UNIX_DIAG_MSG.unpack_from(body)
            attrs = dict(_attributes(body, _UNIX_DIAG_MSG.size))
            # A listener is always bound, so it has a name; /proc skips one without, too.
            if state == _TCP_LISTEN and _UNIX_DIAG_NAME in attrs and _UNIX_DIAG_RQLEN in attrs:
                queued, limit = _RQLEN.unpack_from(attrs[_UNIX_DIAG_RQLEN])
                name = _unix_address(attrs[_UNIX_DIAG_NAME])
                found[inode] = Listener(inode, name, queued, limit)
    return found


def _dump(sock: socket.socket, request: bytes) -> Iterator[bytes]:
    """Send one ``SOCK_DIAG_BY_FAMILY`` dump request; yield each answer's payload.

    A dump comes in several datagrams of several messages each (``NLM_F_MULTI``) and ends with
    ``NLMSG_DONE``; ``NLMSG_ERROR`` or an error in ``NLMSG_DONE`` raises :exc:`OSError`.
    """
    flags = _NLM_F_REQUEST | _NLM_F_DUMP
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(request), _SOCK_DIAG_BY_FAMILY, flags, 1, 0)
    sock.sendto(header + request, (0, 0))
    while True:
        data, _, msg_flags, _ = sock.recvmsg(_BUFSIZE)
        if msg_flags & socket.MSG_TRUNC:
            raise OSError(errno.EMSGSIZE, "netlink answer truncated")
        if not data:
            raise OSError(errno.EBADMSG, "empty netlink answer")
        offset = 0
        while offset < len(data):
            if offset + _NLMSGHDR.size > len(data):
                raise OSError(errno.EBADMSG, "malformed netlink answer")
            length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size or offset + length > len(data):
                raise OSError(errno.EBADMSG, "malformed netlink answer")
            body = data[offset + _NLMSGHDR.size : offset + length]
            offset += _align(length)
            if kind in (_NLMSG_DONE, _NLMSG_ERROR):
                # Both carry an int: 0 at the end of a dump, else minus an errno.
                code = struct.unpack_from("=i", body)[0] if len(body) >= 4 else 0
                if code < 0:
                    raise OSError(-code, os.strerror(-code))
                return
            if kind == _SOCK_DIAG_BY_FAMILY:
                yield body


def _attributes(body: bytes, offset: int) -> Iterator[tuple[int, bytes]]:
    """The netlink attributes (type, payload) that follow a message's fixed part."""
    while offset + _NLATTR.size <= len(body):
        length, kind = _NLATTR.unpack_from(body, offset)
        if length < _NLATTR.size:
            return
        yield kind & 0x3FFF, body[offset + _NLATTR.size : offset + length]  # without flag bits
        offset += _align(length)


def _align(length: int) -> int:
    return (length + 3) & ~3  # NLMSG_ALIGN and NLA_ALIGN


def _inet_address(family: int, addr: bytes, port: bytes) -> str:
    if family == socket.AF_INET:
        return f"{ipaddress.IPv4Address(addr[:4])}:{int.from_bytes(port, 'big')}"
    return f"[{ipaddress.IPv6Address(addr)}]:{int.from_bytes(port, 'big')}"


def _unix_address(raw: bytes) -> str:
    # A path ends with a NUL; an abstract name starts with one and may hold more, which /proc
    # prints as "@" like the first.
    if raw[:1] == b"\0":
        return os.fsdecode(raw.replace(b"\0", b"@"))
    return os.fsdecode(raw.partition(b"\0")[0])


# --- /proc/net


def proc_listening(proc: Path = PROC, pid: str = "self") -> dict[int, Listener]:
    """Every listening TCP and Unix socket of ``pid``'s network namespace, from ``/proc/net``."""
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


def _table(path: Path) -> list[list[str]]:
    try:
        # Socket paths are bytes; decode them as os.fsdecode does rather than fail on one.
        with open(path, errors="surrogateescape") as f:
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
