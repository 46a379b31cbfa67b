"""The metric contract: every metric workermeter exposes, declared once.

The exposition, the documentation, the Grafana dashboard and the alert rules all use these names;
a test checks that nothing else uses a name that is not declared here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]

# Upper bounds in seconds, shared by queue wait and request duration: fine steps from 1 ms to
# 1 s, then on past nginx's default 60 s proxy timeout, so that histogram_quantile() stays
# meaningful in overload.
BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04,
    0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
    7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0,
)  # fmt: skip
BUCKETS_NS: tuple[int, ...] = tuple(round(b * 1e9) for b in BUCKETS)
# The per-route service-time histogram's bounds, a subset of BUCKETS. A route's series are the
# bulk of what a Prometheus stores, and the sizing answer needs of a route its rate, its busy time
# and a coarse shape: which routes are cheap (under 5-25 ms), typical web work (25 ms to 1 s),
# slow (1-5 s) or near a timeout (30 s, gunicorn's default worker timeout). Steps of 1-2.5-5 where
# most routes lie, 10 bounds in all. Where waits are judged (queue wait, the service time of all
# routes) the histograms keep every bound of BUCKETS.
ROUTE_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0)
assert set(ROUTE_BUCKETS) <= set(BUCKETS)


@dataclass(frozen=True)
class Metric:
    """One exposed metric family: its name (without ``_total``/``_bucket`` suffixes), type,
    labels, unit and meaning."""

    name: str
    kind: Kind
    labels: tuple[str, ...]
    unit: str
    help: str
    buckets: tuple[float, ...] = BUCKETS  # a histogram's upper bounds, +Inf left out


# Label sets.
_ROUTE = ("route", "method")
_WORKER = ("worker",)

REQUESTS = Metric(
    "workermeter_requests",
    "counter",
    ("route", "status"),
    "requests",
    "Requests completed, by route template and status class (2xx, 4xx, 5xx...); by method too "
    "with WORKERMETER_ROUTE_DETAIL=full.",
)
DURATION = Metric(
    "workermeter_request_duration_seconds",
    "histogram",
    ("route",),
    "seconds",
    "Service time of each route: from the app being called until the response body is fully "
    "sent. Coarse buckets; by method and in fine buckets with WORKERMETER_ROUTE_DETAIL=full.",
    ROUTE_BUCKETS,
)
SERVICE_TIME = Metric(
    "workermeter_service_time_seconds",
    "histogram",
    (),
    "seconds",
    "Service time of all requests, in fine buckets: the distribution waits are judged by.",
)
QUEUE_WAIT = Metric(
    "workermeter_queue_wait_seconds",
    "histogram",
    (),
    "seconds",
    "Time between the proxy stamping X-Request-Start and the app being called.",
)
QUEUE_SKEW = Metric(
    "workermeter_queue_wait_clock_skew",
    "counter",
    (),
    "requests",
    "Requests whose proxy timestamp was slightly in the future (clock skew), observed as 0.",
)
QUEUE_REJECTED = Metric(
    "workermeter_queue_wait_rejected",
    "counter",
    ("reason",),
    "requests",
    "Request-start headers not observed: unparsable, future or too_old. A steady rate means a "
    "misconfigured proxy.",
)
QUEUE_UPLOADS = Metric(
    "workermeter_queue_wait_uploads",
    "counter",
    (),
    "requests",
    "Requests whose queue wait was not observed because their body was larger than "
    "upload_bytes: a proxy that forwards before the body has arrived makes uploads look like "
    "queueing.",
)
CPU = Metric(
    "workermeter_sampled_cpu_seconds",
    "counter",
    ("route",),
    "seconds",
    "Thread CPU time of the sampled requests of a route.",
)
CPU_WALL = Metric(
    "workermeter_sampled_duration_seconds",
    "counter",
    ("route",),
    "seconds",
    "Service time of the same sampled requests; CPU share = rate(cpu) / rate(this).",
)
DISCONNECTS = Metric(
    "workermeter_client_disconnects",
    "counter",
    (),
    "requests",
    "Requests whose client went away before the response was complete.",
)
WEBSOCKETS = Metric(
    "workermeter_websocket_connections",
    "counter",
    (),
    "connections",
    "WebSocket connections accepted (not counted as requests).",
)
LOOP_LAG = Metric(
    "workermeter_event_loop_lag_seconds",
    "histogram",
    (),
    "seconds",
    "How late an ASGI worker's event loop ran a timer that was due: time the loop was blocked.",
)
LOOP_BUSY = Metric(
    "workermeter_event_loop_busy_seconds",
    "counter",
    ("worker", "method"),
    "seconds",
    "Seconds the worker's event loop was not waiting for I/O: running callbacks, CPU-bound code "
    "and blocking calls. rate() of it over rate() of the seconds observed is event-loop "
    "utilisation (ELU). `method`: asyncio (timed selector), uvloop (libuv idle time), gevent "
    "(hub prepare/check watchers), lag_estimate (share of late probes, where no hook exists).",
)
LOOP_OBSERVED = Metric(
    "workermeter_event_loop_observed_seconds",
    "counter",
    ("worker", "method"),
    "seconds",
    "Seconds the worker's event loop has been measured, from when the meter was installed: its "
    "rate() is below 1 for a worker not measured for the whole window.",
)
LOOP_HELD = Metric(
    "workermeter_sampled_event_loop_seconds",
    "counter",
    ("route",),
    "seconds",
    "Event-loop time the sampled requests of a route held the loop (their own steps, async "
    "workers only); with the sampled CPU seconds it tells a blocking call (held, not CPU) from "
    "CPU-bound code.",
)
POOL_BUSY = Metric(
    "workermeter_thread_pool_busy_seconds",
    "counter",
    _WORKER,
    "seconds",
    "Thread-seconds the pool that runs an async app's sync code had its threads taken: rate() "
    "of it over the pool size is the pool's utilisation.",
)
POOL_WAITING = Metric(
    "workermeter_thread_pool_waiting_tasks",
    "gauge",
    _WORKER,
    "tasks",
    "Tasks waiting for a thread of that pool right now.",
)
POOL_WAIT = Metric(
    "workermeter_thread_pool_wait_seconds",
    "counter",
    _WORKER,
    "seconds",
    "Task-seconds spent waiting for a thread of that pool: above 0, the pool, not the loop, "
    "is the limit.",
)
POOL_SIZE = Metric(
    "workermeter_thread_pool_size",
    "gauge",
    _WORKER,
    "threads",
    "Threads of the pool that runs an async app's sync code (anyio's default limiter).",
)
POOL_IN_USE = Metric(
    "workermeter_thread_pool_in_use",
    "gauge",
    _WORKER,
    "threads",
    "Threads of that pool in use right now: at the size, the pool is exhausted.",
)
CAPACITY = Metric(
    "workermeter_capacity_threads",
    "gauge",
    _WORKER,
    "slots",
    "Requests one worker process can serve at once (threads). Absent when unknown.",
)
CAPACITY_KNOWN = Metric(
    "workermeter_capacity_detected",
    "gauge",
    _WORKER,
    "",
    "1 when the worker's capacity is known (threads= option or detected), 0 when it is not.",
)
IN_FLIGHT = Metric(
    "workermeter_in_flight_requests",
    "gauge",
    _WORKER,
    "requests",
    "Requests being served right now.",
)
OPEN_WEBSOCKETS = Metric(
    "workermeter_open_websockets",
    "gauge",
    _WORKER,
    "connections",
    "WebSocket connections open right now.",
)
BUSY = Metric(
    "workermeter_busy_seconds",
    "counter",
    _WORKER,
    "seconds",
    "Slot-seconds spent serving requests, including the elapsed part of running ones. "
    "rate() of it over capacity is utilisation.",
)
ALL_BUSY = Metric(
    "workermeter_all_slots_busy_seconds",
    "counter",
    _WORKER,
    "seconds",
    "Seconds during which every slot of the worker was busy.",
)
BUSY_SLOTS = Metric(
    "workermeter_busy_slots_seconds",
    "counter",
    ("worker", "busy"),
    "seconds",
    "Seconds spent with exactly `busy` requests in flight: the time-weighted distribution of "
    "concurrency.",
)
WORKER_START = Metric(
    "workermeter_worker_start_time_seconds",
    "gauge",
    _WORKER,
    "seconds",
    "Unix time the worker process started recording.",
)
WORKER_PID = Metric(
    "workermeter_worker_pid",
    "gauge",
    _WORKER,
    "",
    "Process id of the live worker holding this slot.",
)
WORKER_INFO = Metric(
    "workermeter_worker_info",
    "gauge",
    ("worker", "path"),
    "",
    "Always 1; path says which hot path the live worker runs: compiled (the C extension) or "
    "python (the pure-Python reference, where the extension is not built or WORKERMETER_PURE "
    "is set).",
)
WORKERS = Metric(
    "workermeter_workers",
    "gauge",
    (),
    "processes",
    "Live worker processes writing to this store.",
)
RSS = Metric(
    "workermeter_process_resident_memory_bytes",
    "gauge",
    _WORKER,
    "bytes",
    "Resident set size of the worker process.",
)
USS = Metric(
    "workermeter_process_unique_memory_bytes",
    "gauge",
    _WORKER,
    "bytes",
    "Unique set size: memory freed if the worker process exited. Costly to read, so read again "
    "when 30 s old, for at most a quarter of the workers a scrape.",
)
PROCESS_CPU = Metric(
    "workermeter_process_cpu_seconds",
    "counter",
    _WORKER,
    "seconds",
    "User + system CPU time of the worker process (restarts with the process).",
)
LISTEN_BACKLOG = Metric(
    "workermeter_listen_backlog",
    "gauge",
    ("listener",),
    "connections",
    "Connections waiting in the kernel's accept queue of the server's listening socket "
    "(host:port or Unix socket path): queueing seen without any proxy header.",
)
LISTEN_BACKLOG_LIMIT = Metric(
    "workermeter_listen_backlog_limit",
    "gauge",
    ("listener",),
    "connections",
    "The limit of that accept queue (listen() backlog, capped by net.core.somaxconn): when the "
    "queue reaches it, new connections are refused or dropped.",
)
HOST_MEMORY = Metric(
    "workermeter_host_memory_total_bytes",
    "gauge",
    (),
    "bytes",
    "Physical memory of the host.",
)
HOST_AVAILABLE = Metric(
    "workermeter_host_memory_available_bytes",
    "gauge",
    (),
    "bytes",
    "Memory available for new processes without swapping.",
)
HOST_CPUS = Metric(
    "workermeter_host_cpu_count",
    "gauge",
    (),
    "cores",
    "Logical CPUs the host has.",
)

METRICS: tuple[Metric, ...] = (
    REQUESTS, DURATION, SERVICE_TIME, QUEUE_WAIT, QUEUE_SKEW, QUEUE_REJECTED, QUEUE_UPLOADS,
    CPU, CPU_WALL, DISCONNECTS, WEBSOCKETS, LOOP_LAG, LOOP_BUSY, LOOP_OBSERVED, LOOP_HELD,
    POOL_SIZE, POOL_IN_USE, POOL_BUSY, POOL_WAITING, POOL_WAIT, CAPACITY, CAPACITY_KNOWN,
    IN_FLIGHT, OPEN_WEBSOCKETS, BUSY, ALL_BUSY, BUSY_SLOTS, WORKER_START, WORKER_PID,
    WORKER_INFO, WORKERS, RSS, USS, PROCESS_CPU, LISTEN_BACKLOG, LISTEN_BACKLOG_LIMIT,
    HOST_MEMORY, HOST_AVAILABLE, HOST_CPUS,
)  # fmt: skip


# What the exposition shows of each route: "coarse" (route and status, ROUTE_BUCKETS), or "full"
# (method as well, and every bound of BUCKETS) for those who want it and pay for its series.
ENV_ROUTE_DETAIL = "WORKERMETER_ROUTE_DETAIL"
ROUTE_DETAILS = ("coarse", "full")


def route_detail(value: str | None = None) -> str:
    """The route detail asked for: ``value``, else ``$WORKERMETER_ROUTE_DETAIL``, else coarse.

    :raises ValueError: for another value, saying which there are.
    """
    given = value if value is not None else os.environ.get(ENV_ROUTE_DETAIL, "coarse")
    detail = given.strip().lower()
    if detail not in ROUTE_DETAILS:
        raise ValueError(
            f"{ENV_ROUTE_DETAIL} must be coarse (route and status, {len(ROUTE_BUCKETS)} buckets a "
            f"route) or full (method too, {len(BUCKETS)} buckets a route), got {given!r}"
        )
    return detail


def with_detail(metric: Metric, detail: str) -> Metric:
    """``metric`` as the exposition shows it at ``detail``: REQUESTS and DURATION gain the
    method label and DURATION every bound of BUCKETS at "full"."""
    if detail != "full" or metric not in (REQUESTS, DURATION):
        return metric
    labels = ("route", "method", "status") if metric is REQUESTS else _ROUTE
    return replace(metric, labels=labels, buckets=BUCKETS)


def sample_names(metric: Metric) -> tuple[str, ...]:
    """The series names a metric produces in the Prometheus text format."""
    if metric.kind == "counter":
        return (metric.name + "_total",)
    if metric.kind == "histogram":
        return tuple(metric.name + s for s in ("_bucket", "_sum", "_count"))
    return (metric.name,)


def series_names(metric: Metric) -> tuple[str, ...]:
    """Every series name a metric can have in a Prometheus: its text format's, and for a
    histogram the one native series a Prometheus that takes native histograms stores instead."""
    if metric.kind == "histogram":
        return (*sample_names(metric), metric.name)
    return sample_names(metric)


def markdown_table() -> str:
    """The contract as the Markdown table in docs/metrics.md (a test keeps the two equal)."""
    rows = ["| series | type | labels | unit | meaning |", "|---|---|---|---|---|"]
    for metric in METRICS:
        names = ", ".join(f"`{n}`" for n in sample_names(metric))
        labels = ", ".join(f"`{label}`" for label in metric.labels) or "—"
        rows.append(
            f"| {names} | {metric.kind} | {labels} | {metric.unit or '—'} | {metric.help} |"
        )
    return "\n".join(rows) + "\n"
