"""Listening sockets and their accept queues, read from /proc: real sockets and fixture trees."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from workermeter.listeners import listening, own_listening_inodes


def inode_of(sock: socket.socket) -> int:
    return int(Path(f"/proc/self/fd/{sock.fileno()}").readlink().name[8:-1])


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


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_tcp_accept_queue_is_counted(family: int) -> None:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family, socket.SOCK_STREAM) as server:
        server.bind((host, 0))
        server.listen(16)
        port = server.getsockname()[1]
        found = listening()[inode_of(server)]
        expected = f"{host}:{port}" if family == socket.AF_INET else f"[{host}]:{port}"
        assert (found.address, found.queued) == (expected, 0)
        with waiting_clients(family, (host, port), 5):
            assert listening()[inode_of(server)].queued == 5
            conn, _ = server.accept()
            conn.close()
            assert listening()[inode_of(server)].queued == 4
        assert inode_of(server) in own_listening_inodes()


def test_unix_accept_queue_is_counted(tmp_path: Path) -> None:
    path = str(tmp_path / "app.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(16)
        assert listening()[inode_of(server)].queued == 0
        with waiting_clients(socket.AF_UNIX, path, 3):
            assert listening()[inode_of(server)].queued == 3
            conn, _ = server.accept()
            conn.close()
            assert listening()[inode_of(server)].queued == 2
        assert inode_of(server) in own_listening_inodes()


def test_connected_sockets_are_not_listeners() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname()) as client:
            assert inode_of(client) not in listening()


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
0000000000000000: zz
"""


def test_fixture_proc_tree(tmp_path: Path) -> None:
    net = tmp_path / "self" / "net"
    net.mkdir(parents=True)
    (net / "tcp").write_text(TCP)
    (net / "tcp6").write_text(TCP6)
    (net / "unix").write_text(UNIX)
    found = {k: (v.address, v.queued) for k, v in listening(tmp_path).items()}
    assert found == {
        4242: ("127.0.0.1:8080", 7),
        5151: ("[::1]:8081", 2),
        7000: ("/run/app.sock", 2),
    }


def test_no_proc_gives_nothing(tmp_path: Path) -> None:
    assert listening(tmp_path) == {}
    assert own_listening_inodes(tmp_path) == []
