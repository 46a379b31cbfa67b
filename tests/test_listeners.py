"""Listening sockets and their accept queues, from netlink and /proc: real sockets, fixture /proc
trees and a fake kernel that fails."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import TracebackType

import pytest

from workermeter.listeners import (
    Listener,
    listening,
    netlink_listening,
    own_listening_inodes,
    proc_listening,
)

Source = Callable[[], dict[int, Listener]]
SOURCES = [
    pytest.param(netlink_listening, id="netlink"),
    pytest.param(proc_listening, id="proc"),
]
SOMAXCONN = int(Path("/proc/sys/net/core/somaxconn").read_text())


def inode_of(sock: socket.socket) -> int:
    return int(Path(f"/proc/self/fd/{sock.fileno()}").readlink().name[8:-1])


def limit(source: Source, backlog: int) -> int | None:
    """The limit ``source`` reports for ``listen(backlog)``: only netlink knows it."""
    return min(backlog, SOMAXCONN) if source is netlink_listening else None


def without_limit(found: dict[int, Listener], inodes: set[int]) -> dict[int, Listener]:
    return {i: dataclasses.replace(v, limit=None) for i, v in found.items() if i in inodes}


@contextmanager
def waiting_clients(
    family: int, address: tuple[str, int] | str, n: int
) -> Iterator[list[socket.socket]]:
    with ExitStack() as stack:
        clients = []
        for _ in range(n):
            c = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
            c.connect(address)
            clients.append(c)
        yield clients


def abstract_name(tag: str) -> str:
    return f"\0workermeter-test-{os.getpid()}-{tag}"


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_tcp_accept_queue_is_counted(family: int, source: Source) -> None:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family, socket.SOCK_STREAM) as server:
        server.bind((host, 0))
        server.listen(16)
        port = server.getsockname()[1]
        inode = inode_of(server)
        expected = f"{host}:{port}" if family == socket.AF_INET else f"[{host}]:{port}"
        assert source()[inode] == Listener(inode, expected, 0, limit(source, 16))
        with waiting_clients(family, (host, port), 5):
            assert source()[inode].queued == 5
            conn, _ = server.accept()
            conn.close()
            assert source()[inode].queued == 4
        assert inode in own_listening_inodes()


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_unix_accept_queue_is_counted(tmp_path: Path, abstract: bool, source: Source) -> None:
    path = abstract_name("queue") if abstract else str(tmp_path / "app.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(7)
        inode = inode_of(server)
        shown = "@" + path[1:] if abstract else path
        assert source()[inode] == Listener(inode, shown, 0, limit(source, 7))
        with waiting_clients(socket.AF_UNIX, path, 3):
            assert source()[inode].queued == 3
            conn, _ = server.accept()
            conn.close()
            assert source()[inode].queued == 2
        assert inode in own_listening_inodes()


def test_backlog_above_somaxconn_is_capped() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(SOMAXCONN + 1000)
        assert netlink_listening()[inode_of(server)].limit == SOMAXCONN


@pytest.mark.parametrize("source", SOURCES)
def test_connected_sockets_are_not_listeners(source: Source) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname()) as client:
            found = source()
            assert inode_of(client) not in found
            assert inode_of(server) in found


@contextmanager
def live_listeners(tmp_path: Path, n: int = 1) -> Iterator[set[int]]:
    """``n`` each of IPv4, IPv6, Unix path and abstract Unix listeners, 1 to 3 clients waiting."""
    with ExitStack() as stack:
        inodes: set[int] = set()
        for i in range(n):
            kinds: list[tuple[int, tuple[str, int] | str]] = [
                (socket.AF_INET, ("127.0.0.1", 0)),
                (socket.AF_INET6, ("::1", 0)),
                (socket.AF_UNIX, str(tmp_path / f"{i}.sock")),
                (socket.AF_UNIX, abstract_name(f"live-{i}")),
            ]
            for family, address in kinds:
                server = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
                server.bind(address)
                server.listen(8)
                stack.enter_context(waiting_clients(family, server.getsockname(), 1 + i % 3))
                inodes.add(inode_of(server))
        yield inodes


def test_netlink_and_proc_agree(tmp_path: Path) -> None:
    with live_listeners(tmp_path) as inodes:
        netlink = netlink_listening()
        assert inodes <= netlink.keys()
        assert all(netlink[i].limit == 8 for i in inodes)
        assert without_limit(netlink, inodes) == without_limit(proc_listening(), inodes)


def test_a_dump_in_many_parts(tmp_path: Path) -> None:
    # Hundreds of listeners need several datagrams of several messages each.
    with live_listeners(tmp_path, n=150) as inodes:
        netlink = netlink_listening()
        assert inodes <= netlink.keys()
        assert without_limit(netlink, inodes) == without_limit(proc_listening(), inodes)


def test_no_netlink_falls_back_to_proc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = socket.socket

    def no_netlink(family: int = -1, *args: int) -> socket.socket:
        if family == socket.AF_NETLINK:
            raise PermissionError(errno.EACCES, "netlink forbidden in this sandbox")
        return real(family, *args)

    with live_listeners(tmp_path) as inodes:
        expected = without_limit(netlink_listening(), inodes)
        monkeypatch.setattr(socket, "socket", no_netlink)
        with caplog.at_level(logging.DEBUG, logger="workermeter.listeners"):
            found = listening()
        assert {i: found[i] for i in inodes} == expected
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


def message(kind: int, body: bytes, flags: int = 0x2) -> bytes:
    """One netlink message, NLM_F_MULTI unless told."""
    return struct.pack("=IHHII", 16 + len(body), kind, flags, 1, 0) + body


class FakeKernel:
    """A netlink socket whose every answer is ``reply``: (data, msg_flags) or an exception."""

    def __init__(self, reply: tuple[bytes, int] | OSError) -> None:
        self.reply = reply

    def __enter__(self) -> FakeKernel:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        pass

    def settimeout(self, timeout: float) -> None:
        pass

    def sendto(self, data: bytes, address: tuple[int, int]) -> int:
        return len(data)

    def recvmsg(self, bufsize: int) -> tuple[bytes, list[object], int, object]:
        if isinstance(self.reply, OSError):
            raise self.reply
        return self.reply[0], [], self.reply[1], (0, 0)


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        pytest.param((message(2, struct.pack("=i", -errno.EPERM)), 0), errno.EPERM, id="error"),
        pytest.param((message(3, struct.pack("=i", -errno.EBUSY)), 0), errno.EBUSY, id="done-err"),
        pytest.param((message(20, b"x" * 72), socket.MSG_TRUNC), errno.EMSGSIZE, id="truncated"),
        pytest.param((message(20, b"x" * 72)[:40], 0), errno.EBADMSG, id="cut-short"),
        pytest.param((b"", 0), errno.EBADMSG, id="empty"),
        pytest.param(TimeoutError("timed out"), None, id="silent"),
    ],
)
def test_netlink_errors_fall_back_to_proc(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reply: tuple[bytes, int] | OSError,
    error: int | None,
) -> None:
    real = socket.socket

    def fake(family: int = -1, *args: int) -> socket.socket | FakeKernel:
        return FakeKernel(reply) if family == socket.AF_NETLINK else real(family, *args)

    with live_listeners(tmp_path) as inodes:
        expected = without_limit(netlink_listening(), inodes)
        monkeypatch.setattr(socket, "socket", fake)
        with pytest.raises(OSError) as raised:
            netlink_listening()
        assert raised.value.errno == error
        found = listening()
        assert {i: found[i] for i in inodes} == expected


TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000007 00:00000000 00000000  1000        0 4242 1 0
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 4243 1 0
   2: garbage line
"""  # noqa: E501
TCP6 = """  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000002 00:00000000 00000000  1000        0 5151 1 0
"""  # noqa: E501
UNIX = """Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 7000 /run/app.sock
0000000000000000: 00000003 00000000 00000000 0001 02 7001 /run/app.sock
0000000000000000: 00000003 00000000 00000000 0001 02 7002 /run/app.sock
0000000000000000: 00000003 00000000 00000000 0001 03 7003 /run/app.sock
0000000000000000: 00000003 00000000 00000000 0001 03 7004
0000000000000000: 00000002 00000000 00010000 0001 01 7005 @abstract
0000000000000000: 00000003 00000000 00000000 0001 02 7006 @abstract
0000000000000000: zz
"""


def test_fixture_proc_tree(tmp_path: Path) -> None:
    net = tmp_path / "self" / "net"
    net.mkdir(parents=True)
    (net / "tcp").write_text(TCP)
    (net / "tcp6").write_text(TCP6)
    (net / "unix").write_text(UNIX)
    found = {k: (v.address, v.queued, v.limit) for k, v in listening(tmp_path).items()}
    assert found == {
        4242: ("127.0.0.1:8080", 7, None),
        5151: ("[::1]:8081", 2, None),
        7000: ("/run/app.sock", 2, None),
        7005: ("@abstract", 1, None),
    }


def test_no_proc_gives_nothing(tmp_path: Path) -> None:
    assert listening(tmp_path) == {}
    assert own_listening_inodes(tmp_path) == []
