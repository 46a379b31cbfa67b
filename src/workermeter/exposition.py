"""Turn a store into Prometheus metrics: one collector that every way of serving them uses."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

import psutil
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder, start_http_server
from prometheus_client.registry import Collector, CollectorRegistry

from . import metrics as m
from . import recorder as r
from .access import allowed as allowed
from .access import private_client as private_client
from .instance import default_directory
from .listeners import Listener, listening
from .store import PROCESS, ROUTE, Snapshot, Store, WorkerState

_LE = [*(repr(b) for b in m.BUCKETS), "+Inf"]


def _family(metric: m.Metric, labels: tuple[str, ...] | None = None) -> Any:
    names = list(metric.labels if labels is None else labels)
    unit = ""  # units are in the names already; OpenMetrics would append them again
    if metric.kind == "counter":
        return CounterMetricFamily(metric.name, metric.help, labels=names, unit=unit)
    if metric.kind == "histogram":
        return HistogramMetricFamily(metric.name, metric.help, labels=names, unit=unit)
    return GaugeMetricFamily(metric.name, metric.help, labels=names, unit=unit)


def _histogram(
    values: list[int] | memoryview, start: int, total_ns: int
) -> tuple[list[tuple[str, float]], float]:
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for le, count in zip(_LE, values[start : start + r.NBUCKETS], strict=True):
        cumulative += count
        buckets.append((le, cumulative))
    return buckets, total_ns / 1e9


class StoreCollector(Collector):
    """Collects every metric of a store directory at scrape time.

    ``processes`` reads a worker's memory and CPU by pid; ``host`` reads the machine's. Both are
    parameters so tests can give fixed values.
    """

    def __init__(
        self,
        store: Callable[[], Store],
        *,
        processes: Callable[[int], tuple[int, int, float] | None] | None = None,
        host: Callable[[], tuple[int, int, int]] | None = None,
        listeners: Callable[[], dict[int, Listener]] | None = None,
    ) -> None:
        self._store = store
        self._processes = processes or process_usage
        self._host = host or host_usage
        self._listeners = listeners or listening

    def collect(self) -> Iterator[Metric]:
        snap = self._store().collect()
        yield from self._requests(snap)
        yield from self._process_records(snap)
        yield from self._workers(snap)
        yield from self._usage(snap.workers)
        yield from self._backlog(snap.workers)

    def _backlog(self, workers: list[WorkerState]) -> Iterator[Metric]:
        backlog = _family(m.LISTEN_BACKLOG)
        limit = _family(m.LISTEN_BACKLOG_LIMIT)
        inodes = {inode for w in workers for inode in w.listeners}
        if inodes:
            for listener in sorted(self._listeners().values(), key=lambda x: x.address):
                if listener.inode in inodes:
                    backlog.add_metric([listener.address], listener.queued)
                    if listener.limit is not None:
                        limit.add_metric([listener.address], listener.limit)
        yield from (backlog, limit)

    def _requests(self, snap: Snapshot) -> Iterator[Metric]:
        requests = _family(m.REQUESTS)
        duration = _family(m.DURATION)
        cpu = _family(m.CPU)
        cpu_wall = _family(m.CPU_WALL)
        cpu_by_route: dict[str, list[int]] = {}
        for (kind, key), values in sorted(snap.records.items()):
            if kind != ROUTE:
                continue
            route, _, method = key.partition("\0")
            for status, count in zip(r.STATUS_CLASSES, values, strict=False):
                if count:
                    requests.add_metric([route, method, status], count)
            buckets, total = _histogram(values, r.R_DURATION, values[r.R_SUM])
            duration.add_metric([route, method], buckets, total)
            pair = cpu_by_route.setdefault(route, [0, 0])
            pair[0] += values[r.R_CPU]
            pair[1] += values[r.R_CPU_WALL]
        for route, (cpu_ns, wall_ns) in cpu_by_route.items():
            cpu.add_metric([route], cpu_ns / 1e9)
            cpu_wall.add_metric([route], wall_ns / 1e9)
        yield from (requests, duration, cpu, cpu_wall)

    def _process_records(self, snap: Snapshot) -> Iterator[Metric]:
        values = snap.records.get((PROCESS, ""), [])
        values = values + [0] * (r.PROCESS_VALUES - len(values))  # written by an older version
        wait = _family(m.QUEUE_WAIT)
        buckets, total = _histogram(values, r.P_QUEUE, values[r.P_QUEUE_SUM])
        wait.add_metric([], buckets, total)
        skew = _family(m.QUEUE_SKEW)
        skew.add_metric([], values[r.P_SKEW])
        rejected = _family(m.QUEUE_REJECTED)
        for i, reason in enumerate(r.REJECT_REASONS):
            rejected.add_metric([reason], values[r.P_REJECTED + i])
        disconnects = _family(m.DISCONNECTS)
        disconnects.add_metric([], values[r.P_DISCONNECTS])
        websockets = _family(m.WEBSOCKETS)
        websockets.add_metric([], values[r.P_WEBSOCKETS])
        uploads = _family(m.QUEUE_UPLOADS)
        uploads.add_metric([], values[r.P_UPLOADS])
        lag = _family(m.LOOP_LAG)
        buckets, total = _histogram(values, r.P_LAG, values[r.P_LAG_SUM])
        lag.add_metric([], buckets, total)
        yield from (wait, skew, rejected, uploads, disconnects, websockets, lag)

    def _workers(self, snap: Snapshot) -> Iterator[Metric]:
        live = {w.slot: w for w in snap.workers}
        busy = _family(m.BUSY)
        all_busy = _family(m.ALL_BUSY)
        busy_slots = _family(m.BUSY_SLOTS)
        for slot, above in sorted(snap.levels.items()):
            worker = str(slot)
            busy.add_metric([worker], sum(above[1:]) / 1e9)
            capacity = live[slot].capacity if slot in live else snap.capacities.get(slot, 0)
            if capacity:
                all_busy.add_metric([worker], above[min(capacity, len(above) - 1)] / 1e9)
            top = max((k for k, v in enumerate(above) if v), default=0)
            for k in range(max(top, capacity) + 1):
                exactly = above[k] - (above[k + 1] if k + 1 < len(above) else 0)
                busy_slots.add_metric([worker, str(k)], max(exactly, 0) / 1e9)
        yield from (busy, all_busy, busy_slots)

        capacity = _family(m.CAPACITY)
        known = _family(m.CAPACITY_KNOWN)
        in_flight = _family(m.IN_FLIGHT)
        open_ws = _family(m.OPEN_WEBSOCKETS)
        started = _family(m.WORKER_START)
        pid = _family(m.WORKER_PID)
        pool_size = _family(m.POOL_SIZE)
        pool_in_use = _family(m.POOL_IN_USE)
        for w in snap.workers:
            labels = [str(w.slot)]
            if w.capacity:
                capacity.add_metric(labels, w.capacity)
            known.add_metric(labels, 1 if w.capacity else 0)
            in_flight.add_metric(labels, max(w.level, 0))
            open_ws.add_metric(labels, max(w.websockets, 0))
            started.add_metric(labels, w.start_wall)
            pid.add_metric(labels, w.pid)
            if w.pool_size:
                pool_size.add_metric(labels, w.pool_size)
                pool_in_use.add_metric(labels, w.pool_in_use)
        workers = _family(m.WORKERS)
        workers.add_metric([], len(snap.workers))
        yield from (capacity, known, in_flight, open_ws, started, pid, workers, pool_size,
                    pool_in_use)  # fmt: skip

    def _usage(self, workers: list[WorkerState]) -> Iterator[Metric]:
        rss = _family(m.RSS)
        uss = _family(m.USS)
        cpu = _family(m.PROCESS_CPU)
        for w in workers:
            usage = self._processes(w.pid)
            if usage is None:
                continue
            worker = [str(w.slot)]
            rss.add_metric(worker, usage[0])
            uss.add_metric(worker, usage[1])
            cpu.add_metric(worker, usage[2])
        total, available, cpus = self._host()
        host_total = _family(m.HOST_MEMORY)
        host_total.add_metric([], total)
        host_available = _family(m.HOST_AVAILABLE)
        host_available.add_metric([], available)
        host_cpus = _family(m.HOST_CPUS)
        host_cpus.add_metric([], cpus)
        yield from (rss, uss, cpu, host_total, host_available, host_cpus)


def process_usage(pid: int) -> tuple[int, int, float] | None:
    """(RSS bytes, USS bytes, CPU seconds) of a process, or None if it is gone."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            try:
                mem = proc.memory_full_info()
                rss, uss = mem.rss, mem.uss
            except psutil.AccessDenied:  # USS needs /proc/PID/smaps, which may be closed to us
                rss = proc.memory_info().rss
                uss = 0
            times = proc.cpu_times()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):  # exited since the store was read
        return None
    return rss, uss, times.user + times.system


def host_usage() -> tuple[int, int, int]:
    """(total memory, available memory, logical CPUs) of this host."""
    vm = psutil.virtual_memory()
    return vm.total, vm.available, psutil.cpu_count() or os.cpu_count() or 1


class Exposition:
    """A registry holding the store collector, rendered for a scrape's Accept header."""

    def __init__(self, store: Callable[[], Store]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StoreCollector(store))

    def render(self, accept: str | None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def serve_metrics(
    port: int,
    addr: str = "127.0.0.1",
    *,
    directory: str | os.PathLike[str] | None = None,
) -> tuple[WSGIServer, threading.Thread]:
    """Serve the store's metrics over HTTP on their own port, from a background thread.

    Call it where a thread may be started: not from a request, and in a pre-fork server not in
    the master before forking (threads do not survive ``fork``). Returns the server and thread;
    ``server.shutdown()`` then ``server.server_close()`` stops it.
    """
    path = Path(directory) if directory is not None else None
    store_ = _lazy_store(path)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store_))
    return start_http_server(port, addr=addr, registry=registry)


def _lazy_store(directory: Path | None) -> Callable[[], Store]:
    cache: list[Store] = []

    def get() -> Store:
        if not cache:
            cache.append(Store(directory if directory is not None else default_directory()))
        return cache[0]

    return get
