"""Scrape cost as workers and routes grow: python benchmarks/scrape_scale.py

Builds real stores: W forked worker processes each serve R distinct routes (a 200 and a 404 on
each) through ``WSGIMiddleware`` and stay alive, then the parent times reading the store, the
metric families and the whole text exposition, median of ``--repeat`` scrapes, with one
``Store`` kept across scrapes as every server keeps it. Then worker recycling: thousands
of children that each serve a few requests and exit, as ``max_requests`` recycles them, and the
scrape cost after them; the same recycling under prometheus_client's multiprocess mode (a
Histogram and a Gauge by route, ``MultiProcessCollector``) for comparison.

Targets (issue 6): <= 5 ms for 8 workers x 20 routes, <= 50 ms for 64 workers x 200 routes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from workermeter import WSGIMiddleware
from workermeter.exposition import Exposition, ProcessUsage, StoreCollector
from workermeter.integrations import KEY
from workermeter.store import Store

SIZES = [(1, 10), (8, 20), (8, 200), (16, 100), (32, 200), (64, 200), (64, 500)]
TARGETS = {(8, 20): 5.0, (64, 200): 50.0}


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    status = "404 Not Found" if environ["PATH_INFO"].endswith("/x") else "200 OK"
    start_response(status, [("Content-Type", "text/plain")])
    return [b"ok"]


def build(directory: str) -> WSGIMiddleware:
    return WSGIMiddleware(app, directory=directory, route_limit=1000, threads=1)


def serve(mw: Any, routes: int, requests_per_route: int = 2) -> None:
    for r in range(routes):
        for i in range(requests_per_route):
            environ = {
                "REQUEST_METHOD": "GET",
                "PATH_INFO": f"/r{r}/{'x' if i % 2 else 'y'}",
                "HTTP_X_REQUEST_START": f"t={time.time():.3f}",
                KEY: f"/r{r}/{{id}}",
            }
            body = mw(environ, lambda *a: None)
            for _ in body:
                pass
            body.close()  # type: ignore[attr-defined]


def fork_workers(directory: str, workers: int, routes: int) -> list[tuple[int, int]]:
    """Start live workers; each has recorded when this returns. Returns (pid, release fd)."""
    children = []
    for _ in range(workers):
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: record, say so, wait to be released
            code = 0
            try:
                os.close(ready_r)
                os.close(go_w)
                for _, other in children:  # else an earlier worker never sees its EOF
                    os.close(other)
                serve(build(directory), routes)
                os.write(ready_w, b"1")
                os.read(go_r, 1)
            except BaseException:
                code = 1
            os._exit(code)
        os.close(ready_w)
        os.close(go_r)
        os.read(ready_r, 1)
        os.close(ready_r)
        children.append((pid, go_w))
    return children


def release(children: list[tuple[int, int]]) -> None:
    for pid, go in children:
        os.close(go)  # EOF: the worker exits
        os.waitpid(pid, 0)


def time_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # first scrape: opens and maps every file
    samples = []
    for _ in range(repeat):
        t = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t) / 1e6)
    return statistics.median(samples)


def scale(repeat: int) -> list[dict[str, Any]]:
    rows = []
    print("collect: Store.collect() and the sums; families: + metric families (and each worker's")
    print("memory); scrape: + text, the whole scrape, with each worker's USS as last read (30 s);")
    print("reading USS: a scrape that reads 1 in 4 workers' USS again, as every scrape does at a")
    print("15 s scrape interval; first: the first scrape of a store (every record and USS is new)")
    print(f"{'workers':>7s} {'routes':>6s} {'collect':>10s} {'families':>10s} {'scrape':>10s}"
          f" {'reading USS':>11s} {'first':>10s} {'size':>9s} {'target':>8s}")  # fmt: skip
    for workers, routes in SIZES:
        with tempfile.TemporaryDirectory(prefix="wm-scrape-") as d:
            children = fork_workers(d, workers, routes)
            try:
                store = Store(Path(d))  # as a server keeps it: one per store directory
                first_exposition = Exposition(lambda s=store: s)
                t = time.perf_counter_ns()
                size = len(first_exposition.render(None)[0])
                first = (time.perf_counter_ns() - t) / 1e6
                collect = time_ms(lambda s=store: s.collect().records, repeat)
                collector = StoreCollector(lambda s=store: s)
                families = time_ms(collector.families, repeat)
                render = time_ms(lambda e=first_exposition: e.render(None), repeat)
                uss = Exposition(lambda s=store: s)
                every = ProcessUsage(uss_every=0)  # always stale: a quarter read each scrape
                uss.collector = StoreCollector(lambda s=store: s, processes=every)
                reading = time_ms(lambda e=uss: e.render(None), repeat)
            finally:
                release(children)
        target = TARGETS.get((workers, routes))
        verdict = (
            "" if target is None else f"≤{target:.0f} {'ok' if reading <= target else 'MISSED'}"
        )
        print(f"{workers:7d} {routes:6d} {collect:7.2f} ms {families:7.2f} ms {render:7.2f} ms"
              f" {reading:8.2f} ms {first:7.2f} ms {size / 1024:6.0f} KiB"
              f" {verdict:>8s}")  # fmt: skip
        rows.append({"workers": workers, "routes": routes, "collect_ms": collect,
                     "families_ms": families, "render_ms": render, "reading_uss_ms": reading,
                     "first_ms": first, "bytes": size})  # fmt: skip
    return rows


def recycle(directory: str, children: int, routes: int, build: Callable[[str], Any]) -> float:
    """Fork ``children`` short-lived workers two at a time; returns seconds taken."""
    start = time.perf_counter()
    running: list[int] = []
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                serve(build(directory), routes, 1)
            except BaseException:
                code = 1
            os._exit(code)
        running.append(pid)
        if len(running) >= 2:
            _, status = os.waitpid(running.pop(0), 0)
            if status:
                raise RuntimeError("a recycled worker failed")
    for pid in running:
        os.waitpid(pid, 0)
    return time.perf_counter() - start


def recycles(counts: list[int], routes: int, repeat: int) -> list[dict[str, Any]]:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    rows = []
    print(f"\nafter worker recycles ({routes} routes, 1 request each), 8 live workers")
    print(f"{'recycled':>8s} {'workermeter: first':>19s} {'next':>9s} {'files':>6s}"
          f" {'prometheus_client mp':>21s} {'files':>6s}")  # fmt: skip
    for count in counts:
        with tempfile.TemporaryDirectory(prefix="wm-recycle-") as d:
            recycle(d, count, routes, build)
            live = fork_workers(d, 8, routes)
            try:
                store = Store(Path(d))
                exposition = Exposition(lambda s=store: s)
                t = time.perf_counter_ns()
                exposition.render(None)  # folds the dead workers into the archive
                first = (time.perf_counter_ns() - t) / 1e6
                steady = time_ms(lambda e=exposition: e.render(None), repeat)
                files = sum(1 for _ in Path(d).rglob("*"))
            finally:
                release(live)
        with tempfile.TemporaryDirectory(prefix="prom-recycle-") as p:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = p
            try:
                recycle(p, count, routes, _prometheus_mp)
                registry = CollectorRegistry()
                MultiProcessCollector(registry, path=p)
                prom = time_ms(lambda r=registry: generate_latest(r), max(repeat // 5, 1))
                prom_files = len(os.listdir(p))
            finally:
                del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        print(
            f"{count:8d} {first:16.2f} ms {steady:6.2f} ms {files:6d} {prom:18.2f} ms"
            f" {prom_files:6d}"
        )
        rows.append({"recycled": count, "first_ms": first, "steady_ms": steady, "files": files,
                     "prometheus_mp_ms": prom, "prometheus_files": prom_files})  # fmt: skip
    return rows


def _prometheus_mp(directory: str) -> Any:
    """A child's hand-written prometheus_client middleware in multiprocess mode."""
    from prometheus_client import CollectorRegistry, Gauge, Histogram, values

    values.ValueClass = values.MultiProcessValue()  # the child has a new pid: new files
    registry = CollectorRegistry()
    duration = Histogram("duration_seconds", "d", ["route", "status"], registry=registry)
    in_flight = Gauge("in_flight", "i", registry=registry, multiprocess_mode="livesum")

    def mw(environ: dict[str, Any], start_response: Any) -> Any:
        t = time.perf_counter()
        in_flight.inc()
        body = app(environ, start_response)
        duration.labels(environ[KEY], "200").observe(time.perf_counter() - t)
        in_flight.dec()
        return _Closable(body)

    return mw


class _Closable(list[bytes]):
    def close(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="scrapes timed per size")
    parser.add_argument("--recycles", type=int, nargs="*", default=[100, 1000, 3000])
    parser.add_argument("--recycle-routes", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = {"scale": scale(args.repeat),
              "recycles": recycles(args.recycles, args.recycle_routes, args.repeat)}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
