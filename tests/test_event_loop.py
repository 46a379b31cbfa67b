"""Event-loop utilisation measured in real servers under known loads, on every Python here.

Each scenario sends requests one at a time on a fixed schedule to a route that holds the loop
for a known time (CPU-bound code, or a blocking ``time.sleep`` inside ``async def``) or awaits it
(the loop is free), and compares the ELU the workers report over exactly that window (counter
deltas between two scrapes) with what was sent: the sum of the routes' times over the seconds the
loops were observed.

The servers run on the interpreter of the test run and on the oldest and newest Python the
machine has (pyenv's 3.10 and 3.13), from the virtual environments ``scripts/test.sh`` prepares in
``.venvs/``: asyncio's internals differ between versions.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from servers import (
    REQUEST_TIMEOUT,
    ROOT,
    TESTS,
    Metrics,
    Server,
    _gunicorn_flags,
    _running,
    launch,
    scrape,
    scrape_idle,
    server_env,
)

VENVS = ROOT / ".venvs"
PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
OTHER_PYTHONS = ("3.10", "3.13")  # the oldest and newest the machines have


def _pythons() -> list[pytest.param]:  # type: ignore[valid-type]
    found = [pytest.param(sys.executable, id=f"py{sys.version_info[0]}.{sys.version_info[1]}")]
    for version in OTHER_PYTHONS:
        python = VENVS / f"py{version}" / "bin" / "python"
        if python.exists():
            found.append(pytest.param(str(python), id=f"py{version}"))
    return found


PYTHONS = _pythons()
BUSY = "workermeter_event_loop_busy_seconds_total"
OBSERVED = "workermeter_event_loop_observed_seconds_total"
TOLERANCE = 0.05  # absolute, in ELU: what the issue asks; the request handling adds ~0.01


def test_the_oldest_and_newest_pythons_are_prepared() -> None:
    """Where pyenv has 3.10 and 3.13, scripts/test.sh has made their environments: the event
    loop tests must not quietly run on one Python only."""
    for version in OTHER_PYTHONS:
        if any(PYENV.glob(f"{version}.*/bin/python")):
            assert (VENVS / f"py{version}" / "bin" / "python").exists(), (
                f"run scripts/test.sh to prepare .venvs/py{version}"
            )


def _env(store: Path, **extra: str) -> dict[str, str]:
    # The servers of other Pythons import this checkout's workermeter from src/.
    path = os.pathsep.join([str(ROOT / "src"), str(TESTS)])
    return server_env(store, PYTHONPATH=path, LOOP_APP_CPU_SAMPLE="1", **extra)


@contextlib.contextmanager
def _uvicorn(
    tmp_path: Path, python: str, loop: str, workers: int = 2, **env: str
) -> Iterator[Server]:
    def argv(port: int) -> list[str]:
        return [
            python, "-m", "uvicorn", "apps.loop_app:app",
            "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--loop", loop,
            "--no-access-log", "--timeout-graceful-shutdown", "3",
        ]  # fmt: skip

    server = launch(
        f"uvicorn-{loop}", argv, log=tmp_path / f"uvicorn-{loop}.log",
        env=_env(tmp_path / "store", **env),
        ready_log=("Application startup complete.", workers),
    )  # fmt: skip
    with _running(server, auto_store=False) as running:
        yield running


@contextlib.contextmanager
def _gunicorn(
    tmp_path: Path, python: str, worker_class: str, app: str, workers: int = 2
) -> Iterator[Server]:
    def argv(port: int) -> list[str]:
        return [
            python, "-m", "gunicorn", app,
            "-b", f"127.0.0.1:{port}", "-w", str(workers), "-k", worker_class,
            "--chdir", str(TESTS), "--graceful-timeout", "3", *_gunicorn_flags(),
        ]  # fmt: skip

    name = f"gunicorn-{worker_class.rsplit('.', 1)[-1]}"
    server = launch(
        name, argv, log=tmp_path / f"{name}.log", env=_env(tmp_path / "store"),
        ready_log=("Booting worker with pid", workers),
    )  # fmt: skip
    with _running(server, auto_store=False) as running:
        yield running


def _paced(url: str, path: str, count: int, period: float) -> None:
    """``count`` requests one at a time, one every ``period`` seconds, each on a new connection
    so that the kernel spreads them over the workers."""
    start = time.monotonic()
    for i in range(count):
        with requests.get(url + path, headers={"Connection": "close"},
                          timeout=REQUEST_TIMEOUT) as r:  # fmt: skip
            assert r.status_code == 200, r.text
        pause = start + (i + 1) * period - time.monotonic()
        if pause > 0:
            time.sleep(pause)


def _loops(m: Metrics) -> tuple[dict[str, float], dict[str, float]]:
    return m.by(BUSY, "worker"), m.by(OBSERVED, "worker")


def _elu_over(server: Server, path: str, count: int, period: float) -> tuple[float, float]:
    """(ELU of all loops over the window, seconds observed), from counter deltas."""
    busy0, seen0 = _loops(scrape(server.url))
    _paced(server.url, path, count, period)
    busy1, seen1 = _loops(scrape_idle(server.url))
    assert busy1.keys() == seen1.keys() == busy0.keys(), "a worker came or went"
    busy = sum(busy1[w] - busy0[w] for w in busy1)
    seen = sum(seen1[w] - seen0[w] for w in seen1)
    return busy / seen, seen


# (route, milliseconds each request holds the loop): spin and block hold it, await does not.
LOADS: Sequence[tuple[str, float]] = (("spin", 40.0), ("block", 40.0), ("await", 0.0))
COUNT, PERIOD, MS = 30, 0.1, 40


def _ready(server: Server, workers: int, timeout: float = 15.0) -> Metrics:
    """The first scrape with every worker's loop measured: each is counted once it is ready to
    serve, before any request (the server logs a worker's boot before it has loaded the app)."""
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(server.url)
        if len(m.select(OBSERVED)) >= workers or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


def _check_loads(server: Server, method: str, workers: int) -> None:
    m = _ready(server, workers)
    methods = {s.labels["method"] for s in m.select(OBSERVED)}
    assert methods == {method}
    assert len(m.select(OBSERVED)) == workers  # every worker measured, before any request
    for route, held in LOADS:
        elu, seen = _elu_over(server, f"/{route}?ms={MS}", COUNT, PERIOD)
        sent = COUNT * held / 1000 / seen
        assert abs(elu - sent) <= TOLERANCE, (route, elu, sent)


@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_uvicorn_workers_report_the_elu_that_was_sent(
    tmp_path: Path, python: str, loop: str
) -> None:
    with _uvicorn(tmp_path, python, loop) as server:
        _check_loads(server, loop, workers=2)
        # Each route's own steps: the blocking route holds the loop without CPU, the CPU-bound
        # one with it, the awaiting one hardly at all.
        m = scrape(server.url)
        held = m.by("workermeter_sampled_event_loop_seconds_total", "route")
        cpu = m.by("workermeter_sampled_cpu_seconds_total", "route")
        wall = m.by("workermeter_sampled_duration_seconds_total", "route")
        assert held["/block"] / wall["/block"] > 0.9
        assert cpu["/block"] / wall["/block"] < 0.2
        assert held["/spin"] / wall["/spin"] > 0.9
        # Spinning, it runs whenever it gets a CPU: at least half of one on two shared cores.
        assert cpu["/spin"] / wall["/spin"] > 0.5
        assert held["/await"] / wall["/await"] < 0.2


@pytest.mark.parametrize("python", PYTHONS)
def test_gunicorn_uvicorn_worker_reports_the_elu_that_was_sent(tmp_path: Path, python: str) -> None:
    with _gunicorn(tmp_path, python, "uvicorn.workers.UvicornWorker", "apps.loop_app:app") as s:
        _check_loads(s, "uvloop", workers=2)


@pytest.mark.parametrize("python", PYTHONS)
def test_gunicorn_gevent_reports_the_hub_elu_that_was_sent(tmp_path: Path, python: str) -> None:
    with _gunicorn(tmp_path, python, "gevent", "apps.gevent_app:application") as server:
        _check_loads(server, "gevent", workers=2)


def test_the_thread_pool_is_counted_exactly(tmp_path: Path) -> None:
    """Sync endpoints run in anyio's pool: the thread-seconds taken are what the endpoints slept,
    and with more concurrent requests than threads, the tasks' waiting is counted too."""
    threads, count, ms, clients = 2, 16, 100, 8
    with _uvicorn(tmp_path, sys.executable, "asyncio", workers=1,
                  LOOP_APP_THREADS=str(threads)) as server:  # fmt: skip
        before = scrape(server.url)

        def one(_: int) -> int:
            with requests.get(f"{server.url}/sync?ms={ms}", timeout=REQUEST_TIMEOUT) as r:
                return r.status_code

        started = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            assert set(pool.map(one, range(count))) == {200}
        elapsed = time.monotonic() - started
        after = scrape_idle(server.url)

    def delta(name: str) -> float:
        return after.sum(name) - before.sum(name)

    taken = delta("workermeter_thread_pool_busy_seconds_total")
    # Each token is held while its thread sleeps, and a little while it is handed over.
    assert count * ms / 1000 <= taken <= count * ms / 1000 * 1.15
    assert taken <= threads * elapsed  # never more threads taken than the pool has
    # 8 clients on 2 threads: at any moment up to 6 tasks wait. Served in rounds of 2, the
    # waits add up to about (0+0+1+1+...+7+7) x 0.1 s = 5.6 s; the clients' own start-up
    # staggers them a little.
    waited = delta("workermeter_thread_pool_wait_seconds_total")
    assert 0.5 * 5.6 <= waited <= 5.6 * 1.2, waited
    assert after.sum("workermeter_thread_pool_size") == threads
    assert after.sum("workermeter_thread_pool_in_use") == 0
    assert after.sum("workermeter_thread_pool_waiting_tasks") == 0
