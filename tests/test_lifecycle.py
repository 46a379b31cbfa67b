"""Workers that exit, are recycled or are killed lose nothing: real gunicorn with the hooks.

Counters and histograms of a dead worker stay in the totals and never go backwards, its gauges
and its request in flight disappear, its replacement takes its slot index, and the store keeps a
few files however many workers have come and gone. Every scrape here is of the arbiter's port,
so it is answered whatever the workers are doing.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from servers import Metrics, drive, gunicorn, scrape, scrape_idle, wait_recycled, warm
from test_gunicorn_hooks import assert_exact, get, hooked, wait_scrape
from workermeter.store import Store

MAX_REQUESTS = 20
N = 2000


Key = tuple[str, frozenset[tuple[str, str]]]
# Counters of time spent, which scrapes derive from the levels of live workers; the others count
# completed requests.
TIME_COUNTERS = (
    "workermeter_busy_seconds_total",
    "workermeter_all_slots_busy_seconds_total",
    "workermeter_busy_slots_seconds_total",
)


def counters(m: Metrics, *, skip: tuple[str, ...] = ()) -> dict[Key, float]:
    """Every sample of a counter or histogram, but those named in ``skip``: values that must
    never go down."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for s in m.samples
        if s.name.endswith(("_total", "_count", "_sum", "_bucket"))
        and s.name != "workermeter_process_cpu_seconds_total"  # per process: restarts with it
        and s.name not in skip
    }


def assert_never_backwards(series: list[Metrics], *, skip: tuple[str, ...] = ()) -> None:
    """No counter in a scrape is below its value in any earlier scrape: Prometheus would see a
    reset. (A series missing from a scrape is a gap, not a reset; see
    test_counters_of_a_dead_worker_stay_exposed.)"""
    highest: dict[Key, tuple[float, int]] = {}
    for i, m in enumerate(series):
        for key, value in counters(m, skip=skip).items():
            before, where = highest.get(key, (0.0, i))
            assert value >= before, f"scrape {i}: {key} is {value}, was {before} in scrape {where}"
            highest[key] = (value, i)


class Watcher:
    """Scrapes the arbiter's port every ``every`` seconds from a thread, keeping every scrape."""

    def __init__(self, url: str, every: float = 0.05) -> None:
        self.url = url
        self.every = every
        self.series: list[Metrics] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(1)

    def __enter__(self) -> Watcher:
        self._done = self._pool.submit(self._run)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._pool.shutdown()
        self._done.result()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.series.append(scrape(self.url))
            self._stop.wait(self.every)


def test_max_requests_recycling_keeps_every_count(tmp_path: Path) -> None:
    store = tmp_path / "store"
    extra = ("--max-requests", str(MAX_REQUESTS), "--max-requests-jitter", "0")
    with hooked(tmp_path, workers=2, store=store, extra=extra) as h:
        paths = [f"/items/{i}" for i in range(N)]
        with Watcher(h.metrics) as watcher:
            statuses = drive(h.server.url, paths, clients=4)
        wait_recycled(h.server, 2)
        # A worker joins the store with its first request: warm the replacements up.
        served = statuses.count(200) + warm(h.server, 2)
        final = scrape_idle(h.metrics)
        files = sorted(os.listdir(store))
        scrape_times = []
        for _ in range(3):
            started = time.perf_counter()
            scrape(h.metrics)
            scrape_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        Store(store).collect()
        collect_time = time.perf_counter() - started
        booted = h.server.log_text().count("Booting worker with pid")

    assert statuses == [200] * N
    assert booted >= 2 + N // MAX_REQUESTS - 2  # about a hundred workers came and went
    assert_exact(final, served)
    assert final.sum("workermeter_workers") == 2
    series = [*watcher.series, final]
    assert len(series) > 20
    # Time counters read under load: test_busy_time_never_goes_backwards_under_load.
    assert_never_backwards(series, skip=TIME_COUNTERS)
    # Slots, not pids: the labels of a hundred workers are 0 and 1.
    for m in series:
        assert set(m.pids()) <= {"0", "1"}
    assert set(final.by("workermeter_busy_seconds_total", "worker")) == {"0", "1"}
    # Dead workers are folded: two workers' files, their slot locks, the archive, the dir lock.
    assert len(files) <= 10, files
    assert min(scrape_times) < 0.1
    assert collect_time < 0.1


def test_worker_killed_mid_request_loses_nothing(tmp_path: Path) -> None:
    with hooked(tmp_path, workers=2, store=tmp_path / "store") as h:
        done = warm(h.server, 2)
        series = [scrape_idle(h.metrics)]
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(get, h.server.url + "/sleep?ms=5000")
            busy = wait_scrape(h.metrics, lambda m: m.sum("workermeter_in_flight_requests") == 1)
            (worker,) = [w for w, n in busy.by("workermeter_in_flight_requests", "worker").items()
                         if n == 1]  # fmt: skip
            victim = busy.pids()[worker]
            time.sleep(0.3)  # let it run a while: its elapsed time is busy time
            series.append(scrape(h.metrics))
            os.kill(victim, signal.SIGKILL)
            outcome = slow.result()
        gone = wait_scrape(h.metrics, lambda m: victim not in m.pids().values())
        series.append(gone)
        h.server.wait_log("Booting worker with pid", count=3)
        done += warm(h.server, 2, gone=victim)
        more = drive(h.server.url, [f"/items/{i}" for i in range(200)], clients=4)
        done += more.count(200)
        series.append(scrape_idle(h.metrics))
        assert re.search(rf"Worker \(pid:{victim}\) was sent SIGKILL", h.server.log_text())

    after = series[-1]
    assert outcome is None  # the client lost its connection: not a completed request
    assert more == [200] * 200
    # The killed request is not left in flight, and not counted as done.
    assert gone.sum("workermeter_in_flight_requests") == 0
    assert_exact(after, done, started=done + 1)
    # The time per level of a slot whose replacement just joined:
    # test_counters_of_a_dead_worker_stay_exposed.
    assert_never_backwards(series, skip=("workermeter_busy_slots_seconds_total",))
    # The replacement took the victim's slot; the slot's busy time kept the victim's, including
    # the 0.3 s and more its last request ran.
    pids = after.pids()
    assert set(pids) == {"0", "1"}
    assert victim not in pids.values()
    busy_before = series[1].by("workermeter_busy_seconds_total", "worker")[worker]
    busy_start = series[0].by("workermeter_busy_seconds_total", "worker")[worker]
    assert busy_before - busy_start >= 0.3
    assert after.by("workermeter_busy_seconds_total", "worker")[worker] >= busy_before


def slot_times(store: Store) -> dict[tuple[int, str], int]:
    """What one scrape derives from the levels, in ns: per slot, the busy slot-time and the
    time spent at each number of requests in flight."""
    out: dict[tuple[int, str], int] = {}
    for slot, above in store.collect().levels.items():
        out[(slot, "busy")] = sum(above[1:])
        for k, ns in enumerate(above):
            out[(slot, f"at {k}")] = ns - (above[k + 1] if k + 1 < len(above) else 0)
    return out


class PausingClock:
    """The monotonic clock of a scraper that, every other time it reads the clock, is then
    preempted for 20 ms, as happens now and then on a loaded machine."""

    def __init__(self) -> None:
        self.reads = 0

    def __call__(self) -> int:
        now = time.perf_counter_ns()
        self.reads += 1
        if self.reads % 2 == 0:
            time.sleep(0.02)
        return now


def test_busy_time_never_goes_backwards_under_load(tmp_path: Path) -> None:
    """Scrapes read the levels of workers while they change: busy time, and the time spent at
    each level, must only grow from one scrape to the next. The store is read directly, about a
    hundred times, while two workers serve short requests."""
    store = tmp_path / "store"
    with gunicorn(tmp_path, workers=2, store=store) as server:
        warm(server, 2)
        reader = Store(store, clock=PausingClock())
        reads: list[dict[tuple[int, str], int]] = []
        with ThreadPoolExecutor(1) as pool:
            load = pool.submit(drive, server.url, [f"/items/{i}" for i in range(1500)], clients=4)
            while not load.done():
                reads.append(slot_times(reader))
            statuses = load.result()

    assert statuses == [200] * 1500
    assert len(reads) > 20
    backwards = []
    for i, (earlier, later) in enumerate(itertools.pairwise(reads)):
        backwards += [
            f"read {i + 1}: slot {slot} {what} {(later.get((slot, what), 0) - ns) / 1e6:+.3f} ms"
            for (slot, what), ns in earlier.items()
            if later.get((slot, what), 0) < ns
        ]
    assert not backwards, f"{len(backwards)} of {len(reads)} reads went back: {backwards[:5]}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_counters_of_a_dead_worker_stay_exposed(tmp_path: Path, sig: signal.Signals) -> None:
    """Between a worker's death and its replacement's first request, every counter series of its
    slot is still in the scrape: a series that vanishes makes ``sum()`` over workers drop. And
    when the replacement joins the slot, no time counter of the slot goes down."""
    with hooked(tmp_path, workers=2, store=tmp_path / "store") as h:
        served = warm(h.server, 2)
        before = scrape_idle(h.metrics)
        worker, victim = sorted(before.pids().items())[1]
        os.kill(victim, sig)
        gone = wait_scrape(h.metrics, lambda m: victim not in m.pids().values())
        done = served + warm(h.server, 2, gone=victim)
        after = scrape_idle(h.metrics)

    assert_exact(before, served)
    assert_exact(gone, served)
    assert_never_backwards([before, gone, after])
    assert_exact(after, done)
    assert set(after.pids()) == {"0", "1"} and after.pids()[worker] != victim
    missing = sorted(name for name, labels in set(counters(before)) - set(counters(gone))
                     if ("worker", worker) in labels)  # fmt: skip
    assert not missing, f"counters of dead worker {worker} no longer exposed: {missing}"
