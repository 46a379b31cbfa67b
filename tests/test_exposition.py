"""Serving the metrics: who may read them, a port of their own, process and host usage."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from workermeter import serve_metrics
from workermeter.exposition import allowed, private_client
from workermeter.recorder import Recorder, status_index
from workermeter.usage import ProcessUsage, host_usage


@pytest.mark.parametrize(
    ("addr", "forwarded", "expected"),
    [
        pytest.param("127.0.0.1", False, True, id="loopback"),
        pytest.param("::1", False, True, id="loopback-v6"),
        pytest.param("::ffff:127.0.0.1", False, True, id="v4-mapped"),
        pytest.param("10.1.2.3", False, True, id="private-10"),
        pytest.param("192.168.0.9", False, True, id="private-192"),
        pytest.param("172.16.5.5", False, True, id="private-172"),
        pytest.param("fd00::1", False, True, id="ula-v6"),
        pytest.param("8.8.8.8", False, False, id="public"),
        pytest.param("127.0.0.1", True, False, id="through-a-proxy"),
        pytest.param("", False, False, id="empty"),
        pytest.param(None, False, False, id="none"),
        pytest.param("not-an-ip", False, False, id="garbage"),
    ],
)
def test_private_clients(addr: str | None, forwarded: bool, expected: bool) -> None:
    assert private_client(addr, forwarded) is expected


def test_token_opens_to_anyone_and_is_compared_exactly() -> None:
    assert allowed("s3cret", "8.8.8.8", True, "Bearer s3cret")
    assert allowed("s3cret", "8.8.8.8", False, "bearer s3cret")
    assert not allowed("s3cret", "8.8.8.8", False, "Bearer s3cre")
    assert not allowed("s3cret", "8.8.8.8", False, "Basic s3cret")
    assert not allowed(None, "8.8.8.8", False, "Bearer ")
    assert allowed("s3cret", "127.0.0.1", False, None)


def test_process_usage_reads_this_process() -> None:
    usage = ProcessUsage()([os.getpid()]).get(os.getpid())
    assert usage is not None
    rss, uss, cpu = usage
    me = psutil.Process()
    assert abs(rss - me.memory_info().rss) < 32 * 2**20
    assert 0 < uss <= rss
    assert cpu > 0


def test_process_usage_of_a_gone_process_is_none() -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0)
    os.waitpid(pid, 0)
    assert ProcessUsage()([pid]).get(pid) is None


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_uss_is_read_again_only_once_old() -> None:
    clock = _Clock()
    usage = ProcessUsage(uss_every=30, clock=clock)
    me = os.getpid()
    rss0, uss0, _ = usage([me])[me]
    grown = b"x" * (64 << 20)  # written, so resident and ours alone
    clock.now += 29
    rss1, uss1, _ = usage([me])[me]
    assert rss1 - rss0 > 60 << 20
    assert uss1 == uss0  # the reading of 29 s ago
    clock.now += 1
    _, uss2, _ = usage([me])[me]
    assert uss2 - uss0 > 60 << 20
    del grown


def test_a_scrape_reads_uss_again_for_a_quarter_of_the_workers_stalest_first() -> None:
    sleepers = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(7)
    ]
    try:
        pids = [p.pid for p in sleepers]
        clock = _Clock()
        usage = ProcessUsage(uss_every=30, clock=clock)
        assert set(usage(pids[:4])) == set(pids[:4])  # read at 1000
        clock.now += 10
        assert set(usage(pids)) == set(pids)  # the other 3 read at 1010
        clock.now += 30  # now all are stale: 2 of 7 are read again, the oldest
        usage(pids)
        read_at = {pid: at for (pid, _), (at, _) in usage._uss.items()}
        assert sorted(read_at.values()) == [1000, 1000, 1010, 1010, 1010, 1040, 1040]
        assert sum(read_at[p] == 1040 for p in pids[:4]) == 2
        sleepers[0].kill()
        sleepers[0].wait()
        assert set(usage(pids)) == set(pids[1:])  # the gone one is left out, and forgotten
        assert {pid for pid, _ in usage._uss} == set(pids[1:])
    finally:
        for p in sleepers:
            p.kill()
            p.wait()


def test_uss_every_is_checked() -> None:
    with pytest.raises(ValueError, match="uss_every must be a number of seconds >= 0"):
        ProcessUsage(uss_every=-1)


def test_host_usage() -> None:
    total, available, cpus = host_usage()
    assert total == psutil.virtual_memory().total
    assert 0 < available <= total
    assert cpus == psutil.cpu_count()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_metrics_on_a_port_of_their_own(tmp_path: Path) -> None:
    rec = Recorder(directory=tmp_path)
    active = rec.activate(multithread=False, capacity=1)
    lane = active.lane()
    for _ in range(4):
        active.begin()
        lane.request("/x", "GET", status_index(204), 1_000_000)
        active.end()
    port = _free_port()
    server, thread = serve_metrics(port, directory=tmp_path)
    try:
        reply = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert reply.status_code == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(reply.text)
        for s in family.samples
    }
    key = ("workermeter_requests_total", (("route", "/x"), ("status", "2xx")))
    assert samples[key] == 4
    assert samples[("workermeter_workers", ())] == 1
    assert samples[("workermeter_capacity_threads", (("worker", "0"),))] == 1


# ------------------------------------------------------------------------------ series budget

METHODS = ("GET", "POST", "PUT")
STATUSES = (200, 404, 500)


def series_of(directory: Path, routes: int, detail: str) -> dict[str, int]:
    """Series by family of one worker that served every route x method x status class once."""
    rec = Recorder(directory=directory / f"{routes}", cpu_sample=1)
    active = rec.activate(multithread=False, capacity=1)
    lane = active.lane()
    for i in range(routes):
        for method in METHODS:
            for status in STATUSES:
                active.begin()
                lane.request(f"/r{i}/{{id}}", method, status_index(status), 20_000_000, cpu=10**6)
                active.end()
    from workermeter.exposition import Exposition
    from workermeter.store import Store

    text = Exposition(lambda: Store(directory / f"{routes}"), route_detail=detail).render(None)[0]
    found: dict[str, int] = {}
    for family in text_string_to_metric_families(text.decode()):
        found[family.name] = len(family.samples)
    assert rec.active is not None
    return found


@pytest.mark.parametrize("routes", [20, 200])
def test_the_series_budget(tmp_path: Path, routes: int) -> None:
    """200 routes x 3 methods x 2xx/4xx/5xx: at most 4,000 series by default (the worst case of
    docs/metrics.md), each route's histogram 13 series; the full detail as before, 42 a route
    and method."""
    coarse = series_of(tmp_path / "coarse", routes, "coarse")
    assert coarse["workermeter_requests"] == routes * 3  # route x status class
    assert coarse["workermeter_request_duration_seconds"] == routes * 13  # 10 bounds, +Inf, 2
    assert coarse["workermeter_service_time_seconds"] == 42  # 39 bounds, +Inf, sum and count
    assert coarse["workermeter_sampled_cpu_seconds"] == routes
    others = sum(n for name, n in coarse.items() if name not in (
        "workermeter_requests", "workermeter_request_duration_seconds",
        "workermeter_sampled_cpu_seconds", "workermeter_sampled_duration_seconds",
    ))  # fmt: skip
    total = sum(coarse.values())
    assert total == routes * (3 + 13 + 2) + others
    if routes == 200:
        assert total <= 4000, total
    full = series_of(tmp_path / "full", routes, "full")
    assert full["workermeter_requests"] == routes * 9
    assert full["workermeter_request_duration_seconds"] == routes * 3 * 42
    assert full["workermeter_service_time_seconds"] == 42


def test_a_route_detail_it_does_not_know_is_refused_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workermeter import WSGIMiddleware

    monkeypatch.setenv("WORKERMETER_ROUTE_DETAIL", "fine")
    with pytest.raises(ValueError) as e:
        WSGIMiddleware(lambda environ, start_response: [], directory=tmp_path)
    assert str(e.value) == (
        "WORKERMETER_ROUTE_DETAIL must be coarse (route and status, 10 buckets a route) or full "
        "(method too, 39 buckets a route), got 'fine'"
    )
