"""Threads hammering one process: python benchmarks/threads.py [--rounds N]

One process, 1, 2, 4 and 8 threads serving requests at once through the same middleware with
``wsgi.multithread=True`` (as gunicorn's gthread worker does), each thread with its own request
stream. Under the GIL the threads take turns, so the cost per request is the wall time divided by
all requests served; the time workermeter adds over the bare app must not grow with the threads
(no lock contention, no shared counter cache lines fought over). The hand-written
prometheus_client middleware, which takes a lock on every update, is shown for comparison.
Rounds are interleaved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from cases import HandWritten, HandWrittenWSGI, drive_wsgi, wsgi_app

from workermeter import WSGIMiddleware

THREADS = (1, 2, 4, 8)


def apps() -> dict[str, Any]:
    return {
        "bare": wsgi_app,
        "workermeter": WSGIMiddleware(
            wsgi_app, directory=tempfile.mkdtemp(prefix="wm-threads-"), threads=8
        ),
        "prometheus_client by hand": HandWrittenWSGI(wsgi_app, HandWritten()),
    }


def per_request_ns(app: Any, threads: int, per_thread: int) -> float:
    cases = [drive_wsgi(app, multithread=True) for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def work(case: Any) -> None:
        barrier.wait()
        for _ in range(per_thread):
            case()

    workers = [threading.Thread(target=work, args=(c,)) for c in cases]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter_ns()
    for w in workers:
        w.join()
    return (time.perf_counter_ns() - start) / (threads * per_thread)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=40000, help="per round, all threads")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    meters = apps()
    for app in meters.values():
        for n in THREADS:
            per_request_ns(app, n, 1000)  # warm up: every thread gets its lane
    samples = {(m, n): [] for m in meters for n in THREADS}  # type: dict[tuple[str, int], list[float]]
    for _ in range(args.rounds):
        for n in THREADS:
            for m, app in meters.items():
                samples[m, n].append(per_request_ns(app, n, args.requests // n))
    print(f"median of {args.rounds} interleaved rounds, {args.requests} requests per round")
    print(
        f"{'threads':>7s} {'bare':>9s}"
        + "".join(f" {m + ' added':>34s}" for m in meters if m != "bare")
    )
    rows = []
    for n in THREADS:
        bare = statistics.median(samples["bare", n])
        row: dict[str, Any] = {"threads": n, "bare_us": bare / 1000}
        line = f"{n:7d} {bare / 1000:6.2f} µs"
        for m in meters:
            if m != "bare":
                added = [
                    (v - b) / 1000 for v, b in zip(samples[m, n], samples["bare", n], strict=True)
                ]
                q1, _, q3 = statistics.quantiles(added, n=4)
                row[m] = {"added_us": statistics.median(added), "q1_us": q1, "q3_us": q3}
                line += f" {statistics.median(added):14.2f} µs ({q1:5.2f} to {q3:5.2f})"
        print(line)
        rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
