"""Turn a store into Prometheus metrics: one exposition that every way of serving them uses."""

from __future__ import annotations

import gzip
import itertools
from collections.abc import Callable, Collection, Iterable, Iterator
from operator import add
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from . import buckets as b
from . import metrics as m
from . import protobuf
from . import record_values as rv
from .access import allowed as allowed
from .access import private_client as private_client
from .layout import (
    L_BUSY,
    L_METHOD,
    L_OBSERVED,
    L_POOL_BUSY,
    L_POOL_WAIT,
    LOOP_METHODS,
    PROCESS,
    ROUTE,
)
from .listeners import Listener, listening
from .snapshot import Snapshot, WorkerState
from .store import Store
from .textformat import (
    KEEPS_NAMES,
    Families,
    Family,
    Native,
    encode_with_client,
    negotiate,
    render,
)
from .usage import ProcessUsage, host_usage

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric


def _names_of(metric: m.Metric) -> set[str]:
    """The names that select a metric in ``?name[]=``: its own and its samples'."""
    return {metric.name, *m.sample_names(metric)}


# Where each bound of ROUTE_BUCKETS, and +Inf, is among the classic buckets.
_ROUTE_AT = (*(m.BUCKETS.index(x) for x in m.ROUTE_BUCKETS), len(m.BUCKETS))


def _native(partition: b.Partition, cells: list[int]) -> Native:
    zero, buckets = partition.native(cells)
    return Native(partition.schema, b.ZERO_THRESHOLD, zero, buckets)


def _process(snap: Snapshot) -> list[int]:
    """The process records' values added up, padded to their length."""
    values = snap.records.get((PROCESS, ""), [])
    return values + [0] * (rv.PROCESS_VALUES - len(values))


class StoreCollector:
    """Collects every metric of a store directory at scrape time.

    It is a ``prometheus_client`` collector too: ``registry.register(StoreCollector(...))``
    exposes the store's metrics with a registry's others. ``processes`` reads the workers'
    memory and CPU by pid (a ``ProcessUsage``); ``host`` reads the machine's. Both are
    parameters so tests can give fixed values.
    """

    def __init__(
        self,
        store: Callable[[], Store],
        *,
        processes: Callable[[list[int]], dict[int, tuple[int, int, float]]] | None = None,
        host: Callable[[], tuple[int, int, int]] | None = None,
        listeners: Callable[[], dict[int, Listener]] | None = None,
        route_detail: str | None = None,
    ) -> None:
        self._store = store
        self._processes = processes or ProcessUsage()
        self._host = host or host_usage
        self._listeners = listeners or listening
        self.route_detail = m.route_detail(route_detail)

    def collect(self) -> Iterator[Metric]:
        """The metric families as ``prometheus_client`` ones."""
        return Families(self.families()).collect()

    def families(self, *, native: bool = False) -> list[Family]:
        """Every metric family, read from the store now; with ``native``, each histogram
        with its native buckets too."""
        snap = self._store().collect()
        process = _process(snap)
        return [
            *self._requests(snap, process, native),
            *self._process_records(process, native),
            *self._workers(snap),
            *self._usage(snap.workers),
            *self._backlog(snap.workers),
        ]

    def _backlog(self, workers: list[WorkerState]) -> list[Family]:
        backlog = Family(m.LISTEN_BACKLOG)
        limit = Family(m.LISTEN_BACKLOG_LIMIT)
        inodes = {inode for w in workers for inode in w.listeners}
        if inodes:
            for listener in sorted(self._listeners().values(), key=lambda x: x.address):
                if listener.inode in inodes:
                    backlog.add((listener.address,), listener.queued)
                    if listener.limit is not None:
                        limit.add((listener.address,), listener.limit)
        return [backlog, limit]

    def _requests(self, snap: Snapshot, process: list[int], native: bool) -> list[Family]:
        """The routes' families. At the coarse route detail a route's methods are added up and
        its histogram keeps the bounds of ``ROUTE_BUCKETS``; the service time of all routes
        keeps every bound, whatever the detail."""
        full = self.route_detail == "full"
        requests = Family(m.with_detail(m.REQUESTS, self.route_detail))
        duration = Family(m.with_detail(m.DURATION, self.route_detail))
        service = Family(m.SERVICE_TIME)
        cpu = Family(m.CPU)
        cpu_wall = Family(m.CPU_WALL)
        held = Family(m.LOOP_HELD)
        by_route: dict[str, list[int]] = {}  # route (and method, at full) -> summed values
        cpu_by_route: dict[str, list[int]] = {}
        for (kind, key), values in sorted(snap.records.items()):
            if kind != ROUTE:
                continue
            route = key.partition("\0")[0]
            shown = key if full else route
            have = by_route.get(shown)
            # A route's methods added up (values of an older layout are shorter: cut to them)
            by_route[shown] = list(values) if have is None else list(map(add, have, values))
            sums = cpu_by_route.setdefault(route, [0, 0, 0])
            sums[0] += values[rv.R_CPU]
            sums[1] += values[rv.R_CPU_WALL]
            if len(values) > rv.R_HELD:
                sums[2] += values[rv.R_HELD]
        for shown, values in by_route.items():
            labels = tuple(shown.partition("\0")[::2]) if full else (shown,)
            for status, count in zip(rv.STATUS_CLASSES, values, strict=False):
                if count:
                    requests.add((*labels, status), count)
            cells = values[rv.R_DURATION : rv.R_DURATION + rv.ROUTE_CELLS]
            cumulative = b.ROUTE.cumulative(cells)
            if not full:
                cumulative = [cumulative[i] for i in _ROUTE_AT]
            duration.add_histogram(
                labels,
                cumulative,
                values[rv.R_SUM] / 1e9,
                _native(b.ROUTE, cells) if native else None,
            )
        if by_route:  # in fine cells per lane; the sum is the routes'
            cells = process[rv.P_SERVICE : rv.P_SERVICE + rv.FINE_CELLS]
            service.add_histogram(
                (),
                b.FINE.cumulative(cells),
                sum(values[rv.R_SUM] for values in by_route.values()) / 1e9,
                _native(b.FINE, cells) if native else None,
            )
        for route, (cpu_ns, wall_ns, held_ns) in cpu_by_route.items():
            cpu.add((route,), cpu_ns / 1e9)
            cpu_wall.add((route,), wall_ns / 1e9)
            if held_ns:  # async requests only: no series for a sync app's routes
                held.add((route,), held_ns / 1e9)
        return [requests, duration, service, cpu, cpu_wall, held]

    def _process_records(self, values: list[int], native: bool) -> list[Family]:
        wait = Family(m.QUEUE_WAIT)
        cells = values[rv.P_QUEUE : rv.P_QUEUE + rv.FINE_CELLS]
        wait.add_histogram(
            (),
            b.FINE.cumulative(cells),
            values[rv.P_QUEUE_SUM] / 1e9,
            _native(b.FINE, cells) if native else None,
        )
        skew = Family(m.QUEUE_SKEW)
        skew.add((), values[rv.P_SKEW])
        rejected = Family(m.QUEUE_REJECTED)
        for i, reason in enumerate(rv.REJECT_REASONS):
            rejected.add((reason,), values[rv.P_REJECTED + i])
        disconnects = Family(m.DISCONNECTS)
        disconnects.add((), values[rv.P_DISCONNECTS])
        websockets = Family(m.WEBSOCKETS)
        websockets.add((), values[rv.P_WEBSOCKETS])
        uploads = Family(m.QUEUE_UPLOADS)
        uploads.add((), values[rv.P_UPLOADS])
        lag = Family(m.LOOP_LAG)
        cells = values[rv.P_LAG : rv.P_LAG + rv.FINE_CELLS]
        lag.add_histogram(
            (),
            b.FINE.cumulative(cells),
            values[rv.P_LAG_SUM] / 1e9,
            _native(b.FINE, cells) if native else None,
        )
        return [wait, skew, rejected, uploads, disconnects, websockets, lag]

    def _workers(self, snap: Snapshot) -> list[Family]:
        live = {w.slot: w for w in snap.workers}
        busy = Family(m.BUSY)
        all_busy = Family(m.ALL_BUSY)
        busy_slots = Family(m.BUSY_SLOTS)
        for slot, above in sorted(snap.levels.items()):
            worker = str(slot)
            busy.add((worker,), sum(above[1:]) / 1e9)
            capacity = live[slot].capacity if slot in live else snap.capacities.get(slot, 0)
            if capacity:
                all_busy.add((worker,), above[min(capacity, len(above) - 1)] / 1e9)
            top = max(itertools.compress(range(len(above)), above), default=0)
            for k in range(max(top, capacity) + 1):
                exactly = above[k] - (above[k + 1] if k + 1 < len(above) else 0)
                busy_slots.add((worker, str(k)), max(exactly, 0) / 1e9)

        capacity_ = Family(m.CAPACITY)
        known = Family(m.CAPACITY_KNOWN)
        in_flight = Family(m.IN_FLIGHT)
        open_ws = Family(m.OPEN_WEBSOCKETS)
        started = Family(m.WORKER_START)
        pid = Family(m.WORKER_PID)
        info = Family(m.WORKER_INFO)
        pool_size = Family(m.POOL_SIZE)
        pool_in_use = Family(m.POOL_IN_USE)
        for w in snap.workers:
            labels = (str(w.slot),)
            if w.capacity:
                capacity_.add(labels, w.capacity)
            known.add(labels, 1 if w.capacity else 0)
            in_flight.add(labels, max(w.level, 0))
            open_ws.add(labels, max(w.websockets, 0))
            started.add(labels, w.start_wall)
            pid.add(labels, w.pid)
            info.add((str(w.slot), w.hot_path), 1)
            if w.pool_size:
                pool_size.add(labels, w.pool_size)
                pool_in_use.add(labels, w.pool_in_use)
        workers = Family(m.WORKERS)
        workers.add((), len(snap.workers))
        return [busy, all_busy, busy_slots, capacity_, known, in_flight, open_ws, started, pid,
                info, workers, pool_size, pool_in_use, *self._loops(snap)]  # fmt: skip

    def _loops(self, snap: Snapshot) -> list[Family]:
        loop_busy = Family(m.LOOP_BUSY)
        observed = Family(m.LOOP_OBSERVED)
        pool_busy = Family(m.POOL_BUSY)
        pool_wait = Family(m.POOL_WAIT)
        waiting = Family(m.POOL_WAITING)
        pooled = {w.slot for w in snap.workers if w.pool_size}
        for slot, values in sorted(snap.loops.items()):
            worker = str(slot)
            code = values[L_METHOD]
            if 0 < code < len(LOOP_METHODS):
                labels = (worker, LOOP_METHODS[code])
                loop_busy.add(labels, values[L_BUSY] / 1e9)
                observed.add(labels, values[L_OBSERVED] / 1e9)
            if values[L_POOL_BUSY] or values[L_POOL_WAIT] or slot in pooled:
                pool_busy.add((worker,), values[L_POOL_BUSY] / 1e9)
                pool_wait.add((worker,), values[L_POOL_WAIT] / 1e9)
        for w in snap.workers:
            if w.pool_size:
                waiting.add((str(w.slot),), max(w.pool_waiting, 0))
        return [loop_busy, observed, pool_busy, pool_wait, waiting]

    def _usage(self, workers: list[WorkerState]) -> list[Family]:
        rss = Family(m.RSS)
        uss = Family(m.USS)
        cpu = Family(m.PROCESS_CPU)
        usages = self._processes([w.pid for w in workers])
        for w in workers:
            usage = usages.get(w.pid)
            if usage is None:
                continue
            worker = (str(w.slot),)
            rss.add(worker, usage[0])
            uss.add(worker, usage[1])
            cpu.add(worker, usage[2])
        total, available, cpus = self._host()
        host_total = Family(m.HOST_MEMORY)
        host_total.add((), total)
        host_available = Family(m.HOST_AVAILABLE)
        host_available.add((), available)
        host_cpus = Family(m.HOST_CPUS)
        host_cpus.add((), cpus)
        return [rss, uss, cpu, host_total, host_available, host_cpus]


class Exposition:
    """A store's metrics, rendered for a scrape's Accept header."""

    def __init__(self, store: Callable[[], Store], *, route_detail: str | None = None) -> None:
        """:raises ValueError: for a route detail other than coarse or full (default
        ``$WORKERMETER_ROUTE_DETAIL``)."""
        self.collector = StoreCollector(store, route_detail=route_detail)

    def render(self, accept: str | None, names: Collection[str] | None = None) -> tuple[bytes, str]:
        """The body and its content type: OpenMetrics, the Prometheus text format, or its
        protobuf format with native histograms. ``names`` keeps only the metrics with a sample
        of one of those names."""
        chosen = negotiate(accept)
        families = self.collector.families(native=chosen.protobuf)
        if names is not None:
            families = [f for f in families if not _names_of(f.metric).isdisjoint(names)]
        if chosen.protobuf:
            return protobuf.encode(families), chosen.content_type
        if chosen.escaping not in KEEPS_NAMES:  # rare: left to prometheus_client
            return encode_with_client(families, accept), chosen.content_type
        return render(families, openmetrics=chosen.openmetrics), chosen.content_type

    def respond(
        self,
        method: str | None,
        accept: str | None,
        accept_encoding: str | None = None,
        query: str = "",
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        """The whole answer to a scrape: status, headers and body (empty for HEAD). Compressed
        when the scraper accepts gzip, as Prometheus does; ``?name[]=NAME`` selects metrics."""
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Length", "0")], b""
        body, content_type = self.render(accept, parse_qs(query).get("name[]"))
        headers = [("Content-Type", content_type)]
        if accept_encoding and "gzip" in accept_encoding:
            # Level 1: a 64-worker exposition (~1 MB) in 2 ms, 9 would take 30 ms for 20% less.
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        return "200 OK", headers, b"" if method == "HEAD" else body

    def wsgi(
        self, environ: dict[str, Any], start_response: Callable[..., object]
    ) -> Iterable[bytes]:
        """Answer a scrape as a WSGI app, whatever its path."""
        status, headers, body = self.respond(
            environ.get("REQUEST_METHOD"),
            environ.get("HTTP_ACCEPT"),
            environ.get("HTTP_ACCEPT_ENCODING"),
            environ.get("QUERY_STRING", ""),
        )
        start_response(status, headers)
        return [body]
