"""The status JSON and its site: the minute under way, the verdicts, ``suggest --history`` sizing
from the history's peak load, bad queries; then real servers: the page behind the token, the
history a worker writes surviving the SIGKILL of that worker, and the history ``workermeter
serve`` writes, each equal to what ``/metrics`` counted over the same minutes."""

from __future__ import annotations

import base64
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from conftest import FakeClock, FakeWallClock
from servers import REQUEST_TIMEOUT, drive, gunicorn, scrape, warm
from test_cli_serve import Exporter
from workermeter import history as h
from workermeter import history_writer as hw
from workermeter.cli import main
from workermeter.history_candidate import LOCK, RETRY_EVERY
from workermeter.recorder import Recorder, status_index
from workermeter.status import QueryError, Site, Status, parse_query
from workermeter.store import Store

MIB = 1 << 20
BASE = "/metrics/status"


class World:
    """One worker of ``capacity`` slots and a history writer sampling fixed gauges, on clocks
    moved together from the wall time ``start``."""

    def __init__(self, tmp_path: Path, start: float, capacity: int = 1) -> None:
        self.store_dir = tmp_path / "store"
        self.mono, self.wall = FakeClock(), FakeWallClock(start)
        rec = Recorder(directory=self.store_dir, clock=self.mono, wall_clock=self.wall,
                       cpu_sample=0)  # fmt: skip
        self.active = rec.activate(multithread=capacity > 1, capacity=capacity)
        self.lane = self.active.lane()
        self.writer = hw.Writer(self.store(), self.store_dir, wall_clock=self.wall,
                                sample=self.gauges)  # fmt: skip
        self.writer.tick()

    def store(self) -> Store:
        return Store(self.store_dir, clock=self.mono)

    @staticmethod
    def gauges(_snap: object) -> hw.Gauges:
        return hw.Gauges(rss_max=100 * MIB, uss_max=40 * MIB, host_memory=8 << 30,
                         host_available_min=6 << 30, cores=2, process_cpu_ns=10**9)  # fmt: skip

    def advance(self, seconds: float) -> None:
        self.mono.advance(seconds)
        self.wall.now += seconds

    def serve(self, n: int, seconds: float, route: str = "/a") -> float:
        """``n`` requests one after the other, each ``seconds`` long; the time they took."""
        for _ in range(n):
            self.active.begin()
            self.advance(seconds)
            self.lane.request(route, "GET", status_index(200), round(seconds * 1e9))
            self.active.end()
        return n * seconds

    def minute(self, n: int = 0, seconds: float = 0.0, route: str = "/a") -> None:
        """A minute of ``n`` requests, then the writer's tick just after it ends."""
        used = self.serve(n, seconds, route)
        self.advance(60 - used)
        self.writer.sample()
        self.writer.tick()

    def status(self) -> Status:
        def processes(pids: list[int]) -> dict[int, tuple[int, int, float]]:
            return {p: (100 * MIB, 40 * MIB, 1.0) for p in pids}

        return Status(self.store, processes=processes, host=lambda: (8 << 30, 6 << 30, 2),
                      clock=self.wall)  # fmt: skip


def no_history(tmp_path: Path) -> Status:
    """The status of an empty store, at ``T0``."""
    return Status(lambda: Store(tmp_path / "store"), processes=lambda pids: {},
                  host=lambda: (0, 0, 0), clock=lambda: T0)  # fmt: skip


# ------------------------------------------------------------------------- the JSON, on fake clocks

T0 = 1_700_000_040.0  # a minute boundary


def test_the_minute_under_way_counts_once(tmp_path: Path) -> None:
    w = World(tmp_path, T0 + 10)
    w.serve(5, 1.0)
    data = w.status().data("range=1h")
    assert data["range"]["step"] == 60 and len(data["rows"]) == 60
    last = data["rows"][-1]
    assert last["time"] == "2023-11-14T22:14:00Z" and last["requests"] == 5
    assert last["utilisation"] == pytest.approx(5 / 5)  # 5 s busy of the 5 s since the cursor
    assert all(r["gap"] for r in data["rows"][:-1])
    assert data["routes"] == [{"route": "/a", "method": "GET", "requests": 5, "busy_seconds": 5.0,
                               "service_time_mean": 1.0, "cpu_share": None}]  # fmt: skip
    # The minute written: now a row of the file, and the new minute under way holds nothing yet.
    w.advance(60 - 15 + 0.2)
    w.writer.tick()
    w.serve(2, 0.5)
    data = w.status().data("range=1h")
    assert [r["requests"] for r in data["rows"][-2:]] == [5, 2]
    assert sum(r["requests"] or 0 for r in data["rows"]) == 7
    assert data["routes"][0]["requests"] == 7
    (worker,) = data["workers"]
    assert worker["requests"] == 7 and worker["in_flight"] == 0 and worker["rss"] == 100 * MIB


def test_a_minute_that_ended_shows_until_it_is_written(tmp_path: Path) -> None:
    """Between a minute's end and the writer's tick, its requests stay on the page, in it;
    once the writer is further behind than that, the page shows only what the file holds."""
    w = World(tmp_path, T0 + 10)
    w.serve(5, 1.0)
    w.advance(60 - 15 + 0.5)  # into the next minute; the writer has not ticked
    w.serve(1, 0.5)
    data = w.status().data("range=1h")
    assert [r["requests"] for r in data["rows"][-2:]] == [6, None]
    assert data["rows"][-2]["time"] == "2023-11-14T22:14:00Z"
    assert [r["requests"] for r in data["busiest"]] == [6]
    w.writer.tick()  # as the writer writes it: the same minute, the same count
    data = w.status().data("range=1h")
    assert [r["requests"] for r in data["rows"][-2:]] == [6, 0]  # now the new one under way
    assert [r["requests"] for r in data["busiest"]] == [6]
    # A writer two minutes behind: nothing under way is shown.
    w.serve(3, 0.5)
    w.advance(120)
    data = w.status().data("range=1h")
    assert sum(r["requests"] or 0 for r in data["rows"]) == 6


def test_an_answer_is_kept_only_while_no_row_is_written(tmp_path: Path) -> None:
    """One status answering again and again, as the page asks every 30 s: what it took from the
    file is kept while the file is unchanged, and read anew once a row is written."""
    w = World(tmp_path, T0 + 10)
    status = w.status()
    w.serve(5, 1.0)
    first = status.data("range=24h")
    assert first["rows"][-1]["requests"] == 5 and first["suggestion"] == {
        "error": "the history has no request in 2023-11-13T22:15:00Z to 2023-11-14T22:15:00Z: "
        "pick a range when the app had traffic"
    }  # the minute under way is not sized from: only recorded minutes are
    assert status.data("range=24h")["rows"] == first["rows"]
    w.advance(60 - 15 + 0.2)
    w.writer.tick()  # the minute written: the file changed
    w.serve(2, 1.0)
    again = status.data("range=24h")
    assert [r["requests"] for r in again["rows"][-2:]] == [5, 2]
    assert "setting" in again["suggestion"]  # from the minute now recorded
    # The minute under way, 2 s busy of the 2.2 s since it began, is the busier.
    assert [r["requests"] for r in again["busiest"]] == [2, 5]


def test_suggest_history_sizes_from_the_peak_load_not_the_most_requests(tmp_path: Path) -> None:
    """Ten minutes of many cheap requests, then five of few slow ones that keep a slot 90 % busy:
    the slow minutes are the peak the workers must carry."""
    start = (math.floor(time.time() / 60) - 30) * 60
    w = World(tmp_path, start + 10, capacity=2)
    for _ in range(10):
        w.minute(300, 0.01)  # 5/s, 3 s busy a minute
    for _ in range(5):
        w.minute(36, 1.5)  # 0.6/s, 54 s busy a minute
    for _ in range(5):
        w.minute()
    out = tmp_path / "suggest.json"
    with open(out, "w") as f, pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdout", f)
        assert main(["suggest", "--history", "1h", "--dir", str(w.store_dir), "--json"]) == 0
    answer = json.loads(out.read_text())
    workload = answer["measured"]["workload"]
    assert workload["peak_rate"] == pytest.approx(0.6)
    assert workload["service_time"] == pytest.approx(1.5)
    assert workload["utilisation"] == pytest.approx(54 / 120, abs=0.01)  # 2 slots
    # 0.9 slots busy at the peak, each at most 80 % busy: 2 slots. (The minutes of most requests,
    # at the window's mean service time, would have read 0.47 slots and answered 1.)
    assert answer["suggestion"]["slots"] == 2
    peak = time.strftime("%Y-%m-%d %H:%M", time.localtime(start + 10 * 60))
    assert f"The peak is the busiest 5 minutes of the history, from {peak}." in answer["notes"]


def window(**words: float) -> h.Row:
    """Five minutes of history with these words (``h.<NAME>`` in lower case) set."""
    values = [0] * h.ROW_WORDS
    values[h.COVERED_NS] = 300 * 10**9
    for name, v in words.items():
        values[getattr(h, name.upper())] = round(v)
    return h.Row(T0, 300.0, tuple(values))


S = 300 * 10**9  # the window's ns


@pytest.mark.parametrize(
    ("row", "verdict"),
    [
        (None, ("unknown", "nothing recorded in the last 5 minutes")),
        (window(), ("ok", "no request in the last 5 minutes")),
        (window(busy_ns=0.5 * S, capacity_ns=S), ("ok", "50% busy")),
        (window(busy_ns=0.85 * S, capacity_ns=S),
         ("saturated", "the slots were 85% busy (above 80%)")),
        (window(busy_ns=1.2 * S, capacity_ns=2 * S, all_busy_ns=0.3 * S),
         ("saturated", "every slot was busy 30% of the time")),
        (window(loop_busy_ns=0.7 * S, loop_observed_ns=S),
         ("saturated", "the event loops were 70% busy (above 60%)")),
        (window(busy_ns=0.5 * S, capacity_ns=S, process_cpu_ns=1.9 * S, cores=2),
         ("CPU-bound", "the workers used 1.9 of the host's 2 CPUs")),
        (window(busy_ns=0.9 * S, capacity_ns=S, host_memory=4 << 30,
                host_available_min=200 << 20, process_cpu_ns=1.9 * S, cores=2),
         ("memory-bound", "the host had 5% of its memory left")),
    ],
)  # fmt: skip
def test_the_verdict_of_the_last_five_minutes(
    tmp_path: Path, row: h.Row | None, verdict: tuple[str, str]
) -> None:
    assert no_history(tmp_path).verdict(row) == verdict


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("range=2h", "range= must be one of 1h, 24h, 8d, 90d, got '2h'"),
        ("from=abc", "from= and to= must be unix seconds, from= given"),
        ("to=100", "from= and to= must be unix seconds, from= given"),
        ("from=200&to=100", "to= must be after from="),
        ("from=0&to=6000&step=90", "step= must be a positive multiple of 60 seconds, got '90'"),
        ("from=0&to=86400000", "more than 20000 rows: pass a larger step="),
    ],
)
def test_a_query_it_cannot_answer_says_what_to_pass(
    tmp_path: Path, query: str, message: str
) -> None:
    with pytest.raises(QueryError) as e:
        parse_query(query, T0)
    assert str(e.value) == message
    site = Site(no_history(tmp_path), BASE)
    for path in (BASE, f"{BASE}.json"):
        status, _, body = site.respond(path, "GET", query)
        assert (status, body) == ("400 Bad Request", f"{message}\n".encode())


def test_the_site_answers_get_and_head_with_a_strict_policy(tmp_path: Path) -> None:
    site = Site(no_history(tmp_path), BASE, root=True)
    kinds = {BASE: "text/html", "/": "text/html", f"{BASE}.json": "application/json",
             f"{BASE}.js": "text/javascript", f"{BASE}.css": "text/css"}  # fmt: skip
    for path, kind in kinds.items():
        status, headers, body = site.respond(path, "GET")
        got = dict(headers)
        assert status == "200 OK" and got["Content-Type"].startswith(kind), path
        assert got["Cache-Control"] == "no-store" and int(got["Content-Length"]) == len(body) > 0
        assert "script-src 'self'" in got["Content-Security-Policy"]
        assert "'unsafe-inline'" not in got["Content-Security-Policy"]
        head = site.respond(path, "HEAD")
        assert head[0] == "200 OK" and head[2] == b""
    assert site.respond(BASE, "POST")[:2] == (
        "405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Length", "0")])  # fmt: skip
    assert site.respond(f"{BASE}/x", "GET")[0] == "404 Not Found"
    assert site.respond(f"{BASE}.json", "GET")[2].startswith(b'{"version":1,')


# -------------------------------------------------------------------- where the page is served


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"the app's own 404\n"]


def wsgi_get(mw: Any, path: str) -> tuple[str, bytes]:
    from test_wsgi import get, make_environ

    call = get(mw, make_environ(path))
    return call.status, call.body


def counted(mw: Any, metrics_path: str = "/metrics") -> float:
    from promtext import parse

    status, body = wsgi_get(mw, metrics_path)
    assert status == "200 OK", body
    return sum(v for k, v in parse(body).items() if k[0] == "workermeter_requests_total")


@pytest.mark.parametrize(
    ("options", "env", "served", "not_served"),
    [
        ({}, None, "/metrics/status", "/ops/status"),
        ({"status_path": "/ops/status"}, None, "/ops/status", "/metrics/status"),
        ({"metrics_path": "/int/metrics"}, None, "/int/metrics/status", "/metrics/status"),
        ({}, "/ops/status", "/ops/status", "/metrics/status"),
        ({}, "off", None, "/metrics/status"),
        ({"status_path": None}, None, None, "/metrics/status"),
    ],
)  # fmt: skip
def test_where_the_middleware_serves_the_page(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    options: dict[str, Any],
    env: str | None,
    served: str | None,
    not_served: str,
) -> None:
    from workermeter import WSGIMiddleware

    if env is not None:
        monkeypatch.setenv("WORKERMETER_STATUS_PATH", env)
    mw = WSGIMiddleware(wsgi_app, directory=tmp_path / "store", threads=1, **options)
    assert wsgi_get(mw, not_served) == ("404 Not Found", b"the app's own 404\n")
    if served is not None:
        starts = {served: b"<!DOCTYPE html>", f"{served}.json": b'{"version":1,',
                  f"{served}.js": b"// workermeter", f"{served}.css": b"/* "}  # fmt: skip
        for path, kind in starts.items():
            status, body = wsgi_get(mw, path)
            assert status == "200 OK" and body.startswith(kind), path
    # Only the path that was not the page's reached the app, and only it is counted.
    assert counted(mw, options.get("metrics_path", "/metrics")) == 1


def test_a_status_path_it_cannot_use_says_what_to_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workermeter import WSGIMiddleware

    with pytest.raises(ValueError) as e:
        WSGIMiddleware(wsgi_app, directory=tmp_path, status_path="ops/status")
    assert str(e.value) == (
        "status_path must be a path starting with '/' (or None for no status page), "
        "got 'ops/status'"
    )
    monkeypatch.setenv("WORKERMETER_STATUS_PATH", "status")
    with pytest.raises(ValueError) as e:
        WSGIMiddleware(wsgi_app, directory=tmp_path)
    assert str(e.value) == (
        "WORKERMETER_STATUS_PATH='status' must be a path starting with '/', or off"
    )


def test_the_asgi_middleware_serves_the_page_under_its_mount(tmp_path: Path) -> None:
    from test_asgi import http_scope, ok_app, run
    from workermeter import ASGIMiddleware

    mw = ASGIMiddleware(ok_app, directory=tmp_path / "store", threads=1)
    page = run(mw, http_scope("/metrics/status"))
    assert page.status == 200 and page.body.startswith(b"<!DOCTYPE html>")
    mounted = {**http_scope("/app/metrics/status.json"), "root_path": "/app"}
    answer = run(mw, mounted)
    assert answer.status == 200 and json.loads(answer.body)["version"] == 1
    assert run(mw, http_scope("/metrics/statusx")).body == b"ok"  # the app's


# ---------------------------------------------------------------------------------- real servers

TOKEN = "s3cret-token"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_the_page_behind_the_token_and_not_counted(tmp_path: Path) -> None:
    with gunicorn(tmp_path, workers=1, store=tmp_path / "store",
                  extra=("-e", f"WORKERMETER_TOKEN={TOKEN}")) as server:  # fmt: skip
        assert set(drive(server.url, ["/sleep?ms=1"] * 10, clients=2)) == {200}

        def get(path: str, **headers: str) -> requests.Response:
            """As a client beyond a proxy: loopback and private clients need no token."""
            headers = {"X-Forwarded-For": "203.0.113.7", **headers}
            return requests.get(server.url + path, headers=headers, timeout=REQUEST_TIMEOUT)

        direct = requests.get(server.url + BASE, timeout=REQUEST_TIMEOUT)
        assert direct.status_code == 200

        # /metrics hides itself from a stranger, as before; the page asks a browser for the token.
        assert get("/metrics").status_code == 404
        assert get("/metrics", Authorization=basic("", TOKEN)).status_code == 200
        for path in (BASE, f"{BASE}.json", f"{BASE}.js", f"{BASE}?token={TOKEN}"):
            r = get(path)
            assert r.status_code == 401 and TOKEN not in r.text, path
            assert r.headers["WWW-Authenticate"] == 'Basic realm="workermeter", charset="UTF-8"'
        for wrong in (basic("", TOKEN + "x"), basic(TOKEN, ""), "Bearer " + TOKEN[:-1], "Basic %%"):
            assert get(BASE, Authorization=wrong).status_code == 401, wrong
        page = get(BASE, Authorization=basic("anyone", TOKEN))
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        assert "<h1>workermeter status</h1>" in page.text
        data = get(f"{BASE}.json", Authorization=f"Bearer {TOKEN}").json()
        assert data["now"]["workers"] == 1 and data["history"]["directory"] == str(
            tmp_path / "store"
        )
        for suffix in (".js", ".css"):
            assert get(BASE + suffix, Authorization=f"Bearer {TOKEN}").status_code == 200
        m = scrape(server.url)
        # Ten app requests; the pages, the JSON and the scrapes are not the app's traffic.
        assert m.sum("workermeter_requests_total") == 10
        assert m.by("workermeter_requests_total", "route").keys() == {"/sleep"}


def lock_holder(directory: Path) -> int | None:
    """The pid holding the POSIX lock on ``directory``'s history lock, from ``/proc/locks``."""
    try:
        inode = os.stat(directory / LOCK).st_ino
    except FileNotFoundError:
        return None
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "POSIX" in fields and int(fields[-3].rsplit(":", 1)[1]) == inode:
            return int(fields[-4])
    return None


def wait_holder(directory: Path, among: set[int], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (pid := lock_holder(directory)) not in among:
        assert time.monotonic() < deadline, f"no writer among {among}: {pid}"
        time.sleep(0.1)
    assert pid is not None
    return pid


def history_total(url: str, headers: dict[str, str] | None = None) -> tuple[int, list[Any]]:
    with requests.get(f"{url}{BASE}.json?range=1h", headers=headers,
                      timeout=REQUEST_TIMEOUT) as r:  # fmt: skip
        r.raise_for_status()
        rows = r.json()["rows"]
    return sum(row["requests"] or 0 for row in rows), rows


def wait_equal(url: str, counted: float, timeout: float) -> list[Any]:
    """The history's rows once their requests add up to ``counted`` (the writer catches up
    within a tick), failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        total, rows = history_total(url)
        if total == counted:
            return rows
        assert time.monotonic() < deadline, (total, counted, rows[-5:])
        time.sleep(0.2)


def test_a_worker_writes_the_history_and_another_goes_on_when_it_is_killed(
    tmp_path: Path,
) -> None:
    """The middleware alone: one worker takes the lock; SIGKILLed, it is replaced by another
    within a retry, and the history still holds every request ``/metrics`` counted."""
    store = tmp_path / "store"
    with gunicorn(tmp_path, workers=2, store=store) as server:
        warm(server, 2)
        pids = set(scrape(server.url).pids().values())
        writer = wait_holder(store, pids, timeout=3 * RETRY_EVERY)
        assert set(drive(server.url, ["/sleep?ms=5"] * 40, clients=4)) == {200}
        os.kill(writer, signal.SIGKILL)
        assert set(drive(server.url, ["/sleep?ms=5"] * 40, clients=4)) == {200}
        m = scrape(server.url)
        after = set(m.pids().values()) - {writer}
        assert wait_holder(store, after, timeout=3 * RETRY_EVERY) != writer
        counted = m.sum("workermeter_requests_total")
        assert counted >= 80
        rows = wait_equal(server.url, counted, timeout=2 * RETRY_EVERY)
        assert not any(row["spread"] for row in rows if not row["gap"])


def test_serve_writes_the_history(tmp_path: Path, exporters: list[Exporter]) -> None:
    """``workermeter serve`` beside a gunicorn without hooks: it takes the lock before any worker
    tries, and its history equals its ``/metrics``."""
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    with gunicorn(tmp_path, workers=2, store=store) as server:
        exporter = Exporter(tmp_path, "--dir", str(store), "--port", "0")
        exporters.append(exporter)
        url = exporter.url()
        (serve,) = [p.pid for p in psutil.Process(exporter.proc.pid).children()]
        assert wait_holder(store, {serve}, timeout=5) == serve
        assert set(drive(server.url, ["/sleep?ms=5"] * 30, clients=3)) == {200}
        counted = scrape(url).sum("workermeter_requests_total")
        assert counted == 30
        wait_equal(url, counted, timeout=2 * RETRY_EVERY)
        assert lock_holder(store) == serve


def test_the_history_survives_a_restart_in_a_directory_of_its_own(tmp_path: Path) -> None:
    """``WORKERMETER_HISTORY_DIR`` kept across a deploy: the second server's store is new (its
    socket's, under /dev/shm), its history goes on in the same file, and holds both runs."""
    history = tmp_path / "history"
    served = 0
    for run, n in enumerate((30, 20)):
        extra = ("-e", f"WORKERMETER_HISTORY_DIR={history}")
        with gunicorn(tmp_path / f"run{run}", workers=1, store=None, extra=extra) as server:
            assert set(drive(server.url, ["/sleep?ms=5"] * n, clients=2)) == {200}
            served += n
            rows = wait_equal(server.url, served, timeout=3 * RETRY_EVERY)
            with requests.get(f"{server.url}{BASE}.json?range=1h", timeout=REQUEST_TIMEOUT) as r:
                answer = r.json()
                times = [row["time"] for row in answer["busiest"]]
            # A minute of both runs ranked once. (Seen empty once in CI: what the page held then
            # is in the message.)
            assert len(times) == len(set(times)) > 0, (run, answer["rows"][-3:], answer["now"])
        # The first run's minutes are still there, and the row of its last minute is whole.
        assert sum(row["requests"] or 0 for row in rows) == served
    assert (history / h.FILE_NAME).stat().st_size == h.FILE_BYTES
