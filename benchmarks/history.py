"""What keeping the history costs: python benchmarks/history.py [--rounds N]

1. Per request. The history is written from the store's totals, never from the request path, so
   a request costs the same with it on or off. Measured in one process: rounds of requests through
   the middleware, interleaved, with this process's history writer off, and on (its thread
   sampling and writing as in a worker; here every 0.5 s rather than every 5 s, to make any effect
   ten times easier to see).
2. Per minute, for the writer: 64 live worker processes that served 200 routes each (forked, as
   in scrape_scale.py), and the time of the writer's work for one minute row: the sample of every
   worker's memory and CPU, the row itself, and the row that also ends an hour (folding its 60
   minutes and ranking its routes).
3. The status page's JSON for each range over a full history file: 8 days of minute rows and 90
   days of hour rows, each hour with its 20 busiest routes.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from cases import drive_wsgi, wsgi_app
from scrape_scale import fork_workers, release

from workermeter import WSGIMiddleware
from workermeter import history as h
from workermeter import history_candidate as hc
from workermeter import history_writer as hw
from workermeter.status import Status
from workermeter.store import Store


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4)
    return q[0], statistics.median(values), q[2]


# ------------------------------------------------------------------------------------ per request


def per_request(rounds: int, requests: int) -> dict[str, Any]:
    directory = tempfile.mkdtemp(prefix="wm-history-")
    mw = WSGIMiddleware(wsgi_app, directory=directory, threads=1)
    call = drive_wsgi(mw)
    for _ in range(requests):
        call()  # the store and its files made, the code warm
    every, hc.SAMPLE_EVERY = hc.SAMPLE_EVERY, 0.5
    off: list[float] = []
    on: list[float] = []
    for _ in range(rounds):
        for keeping, into in ((False, off), (True, on)):
            candidate = None
            if keeping:
                candidate = hc.Candidate(directory)
                candidate.start()
                while not candidate.writing:
                    time.sleep(0.01)
            start = time.perf_counter_ns()
            for _ in range(requests):
                call()
            into.append((time.perf_counter_ns() - start) / requests)
            if candidate is not None:
                candidate.stop()
    hc.SAMPLE_EVERY = every
    diffs = [b - a for a, b in zip(off, on, strict=True)]
    q = quartiles(diffs)
    print(f"per request ({rounds} interleaved rounds of {requests:,}), writer thread every 0.5 s")
    print(f"  history off  {statistics.median(off):8.0f} ns")
    print(f"  history on   {statistics.median(on):8.0f} ns")
    print(f"  on - off     {q[1]:+8.0f} ns   (interquartile {q[0]:+.0f} to {q[2]:+.0f})")
    return {"off_ns": off, "on_ns": on, "difference_ns": q}


# ------------------------------------------------------------------------------------- the writer


class Wall:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _merged(snap: Any) -> Any:
    assert snap.records is not None  # summed over the workers on first use
    return snap


def writer_cost(workers: int, routes: int, minutes: int) -> dict[str, Any]:
    """The writer's work for ``minutes`` consecutive minutes on a wall clock of its own, from an
    hour's start (the 60th row also ends the hour): reading the store, sampling the processes,
    and the row itself from what was read. A minute holds one read for its row, two more for
    the list of workers (every ``WORKERS_EVERY`` s), and a sample every ``SAMPLE_EVERY`` s."""
    parts: dict[str, list[float]] = {"read the store": [], "sample": [], "row": [],
                                      "row ending an hour": []}  # fmt: skip

    def timed(name: str, fn: Any) -> Any:
        t = time.perf_counter_ns()
        out = fn()
        parts[name].append((time.perf_counter_ns() - t) / 1e6)
        return out

    with tempfile.TemporaryDirectory(prefix="wm-writer-") as d:
        children = fork_workers(d, workers, routes)
        try:
            history = Path(d) / "history"
            history.mkdir(mode=0o700)
            wall = Wall((int(time.time()) // 3600 - 2) * 3600 + 1.0)
            store = Store(Path(d))
            sampler = hc.Sampler()
            writer = hw.Writer(store, history, wall_clock=wall, sample=lambda snap: None)
            writer.tick()
            for _ in range(minutes):
                # Merged as a scrape merges them: the records summed over the workers too.
                snap = timed("read the store", lambda: _merged(store.collect()))
                timed("sample", lambda snap=snap: sampler(snap))
                wall.now += 60.0
                ends_hour = int(wall.now) % 3600 < 60
                written = timed("row ending an hour" if ends_hour else "row",
                                lambda snap=snap: writer.tick(snap=snap))  # fmt: skip
                assert written == 1
        finally:
            release(children)
    out = {name: statistics.median(samples) for name, samples in parts.items()}
    reads = 60 / hc.WORKERS_EVERY + 1
    samples = 60 / hc.SAMPLE_EVERY
    out["per minute"] = reads * out["read the store"] + samples * out["sample"] + out["row"]
    print(f"\nthe writer, {workers} workers x {routes} routes, {minutes} minutes (median, max)")
    for name, found in parts.items():
        print(f"  {name:20s} {out[name]:7.2f} ms  {max(found):7.2f} ms")
    print(f"  a minute's work      {out['per minute']:7.1f} ms  ({reads:.0f} reads of the store, "
          f"{samples:.0f} samples, 1 row): {out['per minute'] / 600:.2f}% of a core")
    return out


# --------------------------------------------------------------------------------- the status JSON


def varied(row: list[int], minute: int) -> list[int]:
    """``row`` for ``minute``, its load following the time of day, give or take a little."""
    f = 0.6 + 0.5 * math.sin(minute * 2 * math.pi / 1440) + 0.1 * ((minute * 7919) % 13) / 13
    out = [minute, *row[1:]]
    for i in (h.BUSY_NS, h.ALL_BUSY_NS, h.QUEUE_SUM_NS, h.SERVICE_SUM_NS, *range(h.REQUESTS,
              h.REQUESTS + 6), *range(h.QUEUE_BUCKETS, h.QUEUE_BUCKETS + h.NCOARSE)):  # fmt: skip
        out[i] = round(row[i] * f)
    return out


def full_history(directory: Path, store: Store, now: float) -> None:
    """Every minute row of the last 8 days and every hour row of the last 90, from one real row."""
    wall = Wall(now - 120.0)
    writer = hw.Writer(store, directory, wall_clock=wall, sample=lambda snap: hw.Gauges(
        rss_max=200 << 20, uss_max=80 << 20, host_memory=8 << 30, host_available_min=4 << 30,
        cores=2, process_cpu_ns=10**10))  # fmt: skip
    writer.tick()
    wall.now += 60.0
    writer.tick()
    file = h.HistoryFile(directory, writable=True)
    last = int(now // 60) - 2
    row = file.row(last)
    assert row is not None
    for minute in range(int(now // 60) - h.MINUTE_ROWS + 1, int(now // 60)):
        file.write_row(minute, varied(row, minute))
    names: dict[str, int] = {}
    entries = [[file.name_index(names, f"/route/{i}\0GET"), 1000 - i, 10**10, 10**9, 10**10]
               for i in range(h.TOP_ROUTES)]  # fmt: skip
    hour_row = h.fold([row] * 60, 0)
    for hour in range(int(now // 3600) - h.HOUR_ROWS + 1, int(now // 3600)):
        file.write_routes(hour, entries)
        file.write_row(hour, [hour, *hour_row[1:]], hourly=True)
    file.close()


def status_json(repeat: int) -> dict[str, dict[str, float]]:
    """Each range's first answer (a status just made, as after a server's start) and its next
    ones (the page asks again every 30 s: what the file holds is kept while no row is
    written)."""
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="wm-status-") as d:
        children = fork_workers(d, 8, 20)
        try:
            store = Store(Path(d))
            now = time.time()
            full_history(Path(d), store, now)
            print(f"\nthe status JSON over a full history, 8 live workers, median of {repeat}")
            print(f"  {'range':6s} {'first answer':>14s} {'next answers':>14s} {'size':>9s}")
            for name in ("1h", "24h", "8d", "90d"):
                query = f"range={name}"
                first, again = [], []
                size = 0
                for _ in range(repeat):
                    status = Status(lambda: store)
                    t = time.perf_counter_ns()
                    size = len(status.json(query))
                    first.append((time.perf_counter_ns() - t) / 1e6)
                    t = time.perf_counter_ns()
                    status.json(query)
                    again.append((time.perf_counter_ns() - t) / 1e6)
                out[name] = {"first_ms": statistics.median(first),
                             "next_ms": statistics.median(again)}  # fmt: skip
                print(f"  {name:6s} {out[name]['first_ms']:11.1f} ms {out[name]['next_ms']:11.1f}"
                      f" ms {size / 1024:5.0f} KiB")  # fmt: skip
        finally:
            release(children)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--json", metavar="FILE", help="write the results there too")
    args = parser.parse_args()
    results = {
        "per_request": per_request(args.rounds, args.requests),
        "writer": writer_cost(64, 200, 61),
        "status_json_ms": status_json(10),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    threading.current_thread().name = "benchmark"
    main()
