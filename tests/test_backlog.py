"""The kernel's accept queue of a real gunicorn, filled with idle connections."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import requests

from servers import gunicorn, parse, warm
from workermeter.exposition import Exposition
from workermeter.store import Store


def test_listen_backlog_of_a_busy_gunicorn(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with gunicorn(tmp_path, workers=1, store=store) as server:
        warm(server, 1)
        slow = threading.Thread(
            target=requests.get, args=(server.url + "/sleep?ms=3000",), kwargs={"timeout": 10}
        )
        slow.start()
        try:
            time.sleep(0.3)  # the only worker is now inside the slow request
            exposition = Exposition(lambda: Store(store))
            listener = f"127.0.0.1:{server.port}"

            def backlog() -> float:
                text = exposition.render(None)[0].decode()
                return parse(text).sum("workermeter_listen_backlog", listener=listener)

            assert backlog() == 0
            # gunicorn listens with a backlog of 2048 (--backlog), within net.core.somaxconn
            somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
            text = exposition.render(None)[0].decode()
            limit = parse(text).sum("workermeter_listen_backlog_limit", listener=listener)
            assert limit == min(2048, somaxconn)
            with ExitStack() as stack:
                for _ in range(5):
                    conn = stack.enter_context(socket.socket())
                    conn.connect(("127.0.0.1", server.port))
                assert backlog() == 5
        finally:
            slow.join(10)
