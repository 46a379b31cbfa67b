"""Real gunicorn and uvicorn on 127.0.0.1: one scrape shows every worker's requests, exactly.

Each test starts its own server (see ``servers.py``), sends a fixed number of requests carrying
``X-Request-Start`` and, once every response is in, reads ``/metrics`` until a scrape shows nothing
in flight (almost always the first: see ``scrape_idle``). Stores are given through
``WORKERMETER_DIR`` where a test needs a clean slate; the tests with ``store=None`` leave it unset,
so the workers must find their shared directory from the listening socket alone.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import psutil
import pytest
import requests

from servers import (
    REQUEST_TIMEOUT,
    Metrics,
    drive,
    gunicorn,
    parse,
    scrape,
    scrape_idle,
    stamp,
    uvicorn,
    wait_recycled,
    warm,
)
from workermeter import WSGIMiddleware
from workermeter.store import Store

N = 300
REJECT_REASONS = ("unparsable", "future", "too_old")


def mixed(n: int) -> list[str]:
    """Half short sleeps (route from ``route=``), half items (route from the environ/scope)."""
    return ["/sleep?ms=2" if i % 2 else f"/items/{i}" for i in range(n)]


def assert_exact(m: Metrics, total: int) -> None:
    """Every request counted once: in the request counter, the duration and the queue wait."""
    assert m.sum("workermeter_requests_total") == total
    assert m.sum("workermeter_requests_total", status="2xx") == total
    assert m.sum("workermeter_request_duration_seconds_count") == total
    assert m.sum("workermeter_queue_wait_seconds_count") == total
    assert m.by("workermeter_queue_wait_rejected_total", "reason") == dict.fromkeys(
        REJECT_REASONS, 0.0
    )
    assert m.sum("workermeter_in_flight_requests") == 0  # the scrape itself is not a request
    # With nothing in flight, busy slot-seconds are the service times added up, whatever the
    # overlap of the requests was; and per worker, the busy-slots distribution adds up to both.
    busy = m.by("workermeter_busy_seconds_total", "worker")
    assert sum(busy.values()) == pytest.approx(
        m.sum("workermeter_request_duration_seconds_sum"), abs=1e-6
    )
    for worker, seconds in busy.items():
        levels = m.by("workermeter_busy_slots_seconds_total", "busy", worker=worker)
        assert sum(int(k) * v for k, v in levels.items()) == pytest.approx(seconds, abs=1e-6)


@pytest.mark.parametrize(
    ("worker_class", "threads", "capacity"),
    [
        pytest.param("sync", None, 1, id="sync"),
        pytest.param("gthread", 4, 4, id="gthread-4"),
    ],
)
def test_gunicorn_three_workers_exact_total(
    tmp_path: Path, worker_class: str, threads: int | None, capacity: int
) -> None:
    with gunicorn(
        tmp_path, workers=3, worker_class=worker_class, threads=threads, store=tmp_path / "store"
    ) as server:
        statuses = drive(server.url, mixed(N))
        m = scrape_idle(server.url)

    assert statuses == [200] * N
    assert_exact(m, N)
    assert m.by("workermeter_requests_total", "route") == {"/sleep": N / 2, "/items/{id}": N / 2}
    assert m.sum("workermeter_workers") == 3
    workers = {"0", "1", "2"}
    assert set(m.by("workermeter_in_flight_requests", "worker")) == workers
    assert m.by("workermeter_capacity_threads", "worker") == dict.fromkeys(workers, capacity)
    assert m.by("workermeter_capacity_detected", "worker") == dict.fromkeys(workers, 1.0)


@pytest.mark.parametrize("automatic", [pytest.param(True, id="automatic"),
                                       pytest.param(False, id="WORKERMETER_DIR")])  # fmt: skip
def test_uvicorn_two_spawned_workers_exact_total(tmp_path: Path, automatic: bool) -> None:
    store = None if automatic else tmp_path / "store"
    with uvicorn(tmp_path, workers=2, store=store) as server:
        statuses = drive(server.url, mixed(N))
        m = scrape_idle(server.url)
        if automatic:
            # Spawned workers got the socket passed, not inherited by fork: same inode, same store.
            assert server.auto_store is not None and server.auto_store.is_dir()

    assert statuses == [200] * N
    assert_exact(m, N)
    assert m.by("workermeter_requests_total", "route") == {
        "/sleep": N / 2,
        "/items/{item_id}": N / 2,
    }
    assert m.sum("workermeter_workers") == 2
    assert set(m.by("workermeter_in_flight_requests", "worker")) == {"0", "1"}


@pytest.mark.parametrize(
    ("extra", "capacity"),
    [
        pytest.param(["--limit-concurrency", "24"], 24.0, id="limit-concurrency"),
        pytest.param([], None, id="no-limit"),
    ],
)
def test_uvicorn_capacity(tmp_path: Path, extra: list[str], capacity: float | None) -> None:
    with uvicorn(tmp_path, workers=1, store=tmp_path / "store", extra=extra) as server:
        assert set(drive(server.url, ["/sleep?ms=1"] * 4)) == {200}
        m = scrape_idle(server.url)
    if capacity is None:
        assert m.select("workermeter_capacity_threads") == []
        assert m.sum("workermeter_capacity_detected") == 0
        # No slot count: how busy the worker is, is its event loop's utilisation.
        assert len(m.select("workermeter_event_loop_observed_seconds_total")) == 1
    else:
        assert m.sum("workermeter_capacity_threads", worker="0") == capacity
        assert m.sum("workermeter_capacity_detected") == 1


def test_gunicorn_asgi_workers_exact_total(tmp_path: Path) -> None:
    from gunicorn.workers import SUPPORTED_WORKERS

    if "asgi" not in SUPPORTED_WORKERS:
        pytest.skip("this gunicorn has no asgi worker (gunicorn >= 25 has)")
    with gunicorn(
        tmp_path, workers=2, worker_class="asgi", app="apps.asgi_app:app", store=None,
        extra=["--worker-connections", "50"],
    ) as server:  # fmt: skip
        statuses = drive(server.url, mixed(N))
        m = scrape_idle(server.url)

    assert statuses == [200] * N
    assert_exact(m, N)
    assert m.sum("workermeter_workers") == 2
    # An async worker serves up to --worker-connections at once.
    assert set(m.by("workermeter_capacity_threads", "worker").values()) == {50.0}


def test_two_gunicorns_keep_their_automatic_stores_apart(tmp_path: Path) -> None:
    with (
        gunicorn(tmp_path, workers=2, store=None, name="gunicorn-a") as a,
        gunicorn(tmp_path, workers=2, store=None, name="gunicorn-b") as b,
    ):
        assert a.auto_store is not None and b.auto_store is not None
        assert a.auto_store != b.auto_store
        statuses_a = drive(a.url, mixed(30))
        statuses_b = drive(b.url, mixed(50))
        ma, mb = scrape_idle(a.url), scrape_idle(b.url)
        assert a.auto_store.is_dir() and b.auto_store.is_dir()

    assert statuses_a == [200] * 30
    assert statuses_b == [200] * 50
    assert_exact(ma, 30)
    assert_exact(mb, 50)
    # Each sees its own workers only (a shared store would show up to 4, and the same pids).
    assert 1 <= ma.sum("workermeter_workers") <= 2
    assert 1 <= mb.sum("workermeter_workers") <= 2
    assert not set(ma.pids().values()) & set(mb.pids().values())


def test_recycled_workers_keep_counts_and_slots(tmp_path: Path) -> None:
    # --max-requests 10: each worker exits after ten requests and is replaced, over and over.
    with gunicorn(
        tmp_path, workers=2, store=tmp_path / "store", extra=("--max-requests", "10")
    ) as server:
        statuses = drive(server.url, mixed(100), clients=4)
        server.wait_log("Booting worker with pid", count=2 + 100 // 10 - 1)
        # A worker exiting in the middle of the scrape is another matter: see
        # test_worker_exiting_during_a_scrape_is_still_counted.
        wait_recycled(server, 2)
        m = scrape_idle(server.url)

    assert statuses == [200] * 100
    assert_exact(m, 100)
    assert set(m.pids()) <= {"0", "1"}  # worker labels are reused slots, not pids
    assert set(m.by("workermeter_busy_seconds_total", "worker")) == {"0", "1"}


def _hang_up(port: int, path: str) -> bytes:
    """Send a request, read the start of the answer, then reset the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT) as conn:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Start: {stamp()}\r\n\r\n"
        conn.sendall(request.encode())
        head = conn.recv(64)
        # Linger 0: close() sends RST, so the server's next write fails at once.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return head


@pytest.mark.parametrize("kind", ["gunicorn", "uvicorn"])
def test_streamed_body_and_client_disconnect(tmp_path: Path, kind: str) -> None:
    store = tmp_path / "store"
    with (
        gunicorn(tmp_path, workers=1, store=store)
        if kind == "gunicorn"
        else uvicorn(tmp_path, workers=1, store=store)
    ) as server:
        # Three chunks 100 ms apart: 200 ms of sending, all of it service time (for WSGI, after
        # the app has returned its iterable).
        headers = {"X-Request-Start": stamp()}
        url = server.url + "/stream?chunks=3&ms=100"
        with requests.get(url, headers=headers, timeout=REQUEST_TIMEOUT) as r:
            assert r.status_code == 200 and len(r.content) == 3 * 1025
        streamed = scrape_idle(server.url)

        assert _hang_up(server.port, "/stream?chunks=100&ms=20").startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 5
        while True:
            after = scrape(server.url)
            if after.sum("workermeter_requests_total") == 2:
                break
            assert time.monotonic() < deadline, "the hung-up request was never recorded"
            time.sleep(0.02)

    assert 0.2 <= streamed.sum("workermeter_request_duration_seconds_sum", route="/stream") < 0.4
    assert streamed.sum("workermeter_client_disconnects_total") == 0
    # The client left after the first chunk: recorded, counted as a disconnect, not in flight,
    # and not a server error. The remaining 99 chunks (2 s) were never sent.
    assert after.sum("workermeter_client_disconnects_total") == 1
    assert after.by("workermeter_requests_total", "status") == {"2xx": 2}
    assert after.sum("workermeter_in_flight_requests") == 0
    assert after.sum("workermeter_request_duration_seconds_sum", route="/stream") < 1.0
    assert_exact(after, 2)


def _start_response(
    status: str, headers: list[tuple[str, str]], exc_info: object = None
) -> Callable[[bytes], object]:
    return lambda data: None


class _Worker:
    """A forked process that serves ``n`` requests through a middleware on ``store`` and then
    stays alive, holding its region, until :meth:`exit` is called (or the test's end closes
    the pipe)."""

    _parent_ends: ClassVar[set[int]] = set()  # write ends of every live worker's pipe

    def __init__(self, store: Path, n: int) -> None:
        r, self._w = os.pipe()
        self._parent_ends.add(self._w)
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                for end in self._parent_ends:  # or a sibling's copy would keep its pipe open
                    os.close(end)
                middleware = WSGIMiddleware(_ok, directory=store)
                for _ in range(n):
                    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}
                    environ["wsgi.multithread"] = False  # type: ignore[assignment]
                    body = middleware(environ, _start_response)
                    b"".join(body)
                    body.close()  # type: ignore[attr-defined]
                os.read(r, 1)  # until exit() writes or the parent's end is closed
                code = 0
            finally:
                os._exit(code)
        os.close(r)

    def exit(self) -> None:
        if self._w >= 0:
            os.close(self._w)
            self._parent_ends.discard(self._w)
            self._w = -1
            _, status = os.waitpid(self.pid, 0)
            assert status == 0, f"worker {self.pid} failed"


def _ok(environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_worker_exiting_during_a_scrape_is_still_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that exits while a scrape runs (gunicorn --max-requests, a deploy) must not
    vanish from that scrape: the total would drop and come back, a counter reset for Prometheus.

    A scrape that finds a dead worker folds it into the archive, then reads the store again.
    Here a live worker exits exactly between the fold and the second read, which real servers
    hit by chance (seen with gunicorn --max-requests under load).
    """
    store = tmp_path / "store"
    scraper = WSGIMiddleware(_ok, directory=store)

    def scrape_store() -> Metrics:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "REMOTE_ADDR": "127.0.0.1"}
        return parse(b"".join(scraper(environ, _start_response)).decode())

    dead, leaving = _Worker(store, 3), _Worker(store, 10)
    try:
        deadline = time.monotonic() + 10
        while scrape_store().sum("workermeter_requests_total") != 13:
            assert time.monotonic() < deadline, "the workers did not record their requests"
            time.sleep(0.01)
        dead.exit()  # to be folded by the next scrape
        fold = Store._fold_dead

        def fold_then_worker_exits(self: Store) -> None:
            fold(self)
            leaving.exit()

        monkeypatch.setattr(Store, "_fold_dead", fold_then_worker_exits)
        during = scrape_store()
        monkeypatch.undo()
        after = scrape_store()
    finally:
        dead.exit()
        leaving.exit()

    assert after.sum("workermeter_requests_total") == 13
    assert during.sum("workermeter_requests_total") == 13  # fails: 3, the leaver is missing


def _get(url: str) -> int:
    headers = {"X-Request-Start": stamp()}
    with requests.get(url, headers=headers, timeout=REQUEST_TIMEOUT) as r:
        return r.status_code


def test_busy_time_of_finished_and_running_requests(tmp_path: Path) -> None:
    with gunicorn(tmp_path, workers=2, store=tmp_path / "store") as server:
        statuses = drive(server.url, ["/sleep?ms=100"] * 20, clients=2)
        finished = scrape_idle(server.url)
        busy0 = finished.sum("workermeter_busy_seconds_total")

        with ThreadPoolExecutor(1) as pool:
            sent = time.monotonic()
            slow = pool.submit(_get, server.url + "/sleep?ms=3000")
            deadline = sent + 2.5
            while scrape(server.url).sum("workermeter_in_flight_requests") != 1:
                assert time.monotonic() < deadline, "the slow request never showed as in flight"
                time.sleep(0.02)
            time.sleep(1.0)  # the request has been running for at least this long
            running = scrape(server.url)
            scraped = time.monotonic()
            assert slow.result() == 200
        after = scrape_idle(server.url)

    assert statuses == [200] * 20
    # 20 requests of 100 ms: 2 s of busy time, plus the little the middleware cannot see past.
    assert 2.0 <= busy0 <= 2.2
    assert running.sum("workermeter_in_flight_requests") == 1
    assert 1.0 <= running.sum("workermeter_busy_seconds_total") - busy0 <= scraped - sent
    assert after.sum("workermeter_in_flight_requests") == 0
    assert 3.0 <= after.sum("workermeter_busy_seconds_total") - busy0 <= 3.2
    assert_exact(after, 21)


def test_memory_of_each_worker_and_host(tmp_path: Path) -> None:
    with gunicorn(tmp_path, workers=2, store=tmp_path / "store") as server:
        warm(server, 2)
        m = scrape_idle(server.url)
        pids = m.pids()
        rss_now = {w: psutil.Process(pid).memory_info().rss for w, pid in pids.items()}
        cmdlines = [psutil.Process(pid).cmdline() for pid in pids.values()]

    assert all(any("gunicorn" in part for part in cmd) for cmd in cmdlines)
    rss = m.by("workermeter_process_resident_memory_bytes", "worker")
    assert set(rss) == set(pids)
    for worker, value in rss.items():
        assert 10e6 < value < 1e9
        assert 0.5 < value / rss_now[worker] < 2
    uss = m.by("workermeter_process_unique_memory_bytes", "worker")
    assert set(uss) == set(pids)
    assert all(0 < uss[w] <= rss[w] for w in pids)
    assert set(m.by("workermeter_process_cpu_seconds_total", "worker")) == set(pids)
    total = m.sum("workermeter_host_memory_total_bytes")
    assert total == psutil.virtual_memory().total
    assert 0 < m.sum("workermeter_host_memory_available_bytes") <= total
    assert m.sum("workermeter_host_cpu_count") == psutil.cpu_count()


def test_killed_worker_keeps_its_counts_and_its_slot_is_reused(tmp_path: Path) -> None:
    with gunicorn(tmp_path, workers=3, store=tmp_path / "store", preload=True) as server:
        done = warm(server, 3)
        statuses = drive(server.url, mixed(60))
        done += len(statuses)
        before = scrape_idle(server.url)
        served_before = done
        worker, victim = sorted(before.pids().items())[1]
        victim_busy = before.by("workermeter_busy_seconds_total", "worker")[worker]

        os.kill(victim, signal.SIGKILL)
        server.wait_log("Booting worker with pid", count=4)  # the master replaced it
        done += warm(server, 3, gone=victim)
        more = drive(server.url, mixed(60))
        done += len(more)
        after = scrape_idle(server.url)

    assert statuses == [200] * 60
    assert more == [200] * 60
    assert_exact(before, served_before)
    assert victim_busy > 0  # the victim had served requests: they must survive it
    assert_exact(after, done)
    assert after.sum("workermeter_workers") == 3
    pids = after.pids()
    assert set(pids) == {"0", "1", "2"}  # the replacement took the dead worker's slot
    assert victim not in pids.values()
    assert after.by("workermeter_busy_seconds_total", "worker")[worker] >= victim_busy
