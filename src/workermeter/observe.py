"""Turn what a running server exposes into the capacity model's inputs.

Two sources, one result. A live ``/metrics`` endpoint is scraped two or more times over a window
and the counters' differences give rates: arrival rate, mean service time and its variability,
CPU share, utilisation, queue wait percentiles (for async workers, the event loops' figures come
from :mod:`workermeter.observe_loops`, and utilisation is their event-loop utilisation). A
Prometheus server is asked the same questions in PromQL over a longer window, with the peak rate
taken as the highest 5-minute rate in it (that source is :mod:`workermeter.prometheus_source`,
re-exported here). Both end as a :class:`Measurement`: a :class:`~workermeter.capacity.Workload`
and a :class:`~workermeter.capacity.Machine`, plus what was seen, for people to check.

Counters restart from zero when the server restarts (its store is new). A series whose value went
down between two scrapes is taken to have restarted, and its whole new value is counted as the
increase, as Prometheus's ``rate()`` does. The buckets, sum and count of one histogram series
restart together.

No threads, no global state: the HTTP client, the clocks and ``sleep`` are parameters.
"""

from __future__ import annotations

import itertools
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

from . import metrics as m
from .capacity import Machine, Workload
from .measurement import (
    Counts,
    Fetch,
    Key,
    Measurement,
    SourceError,
    bucket_cv,
    bucket_quantile,
    clamp_share,
    cpu_notes,
    http_get,
    machine_of,
    ratio,
    rounded_rate,
)
from .observe_loops import Loops, loop_notes, loops

__all__ = [
    "Fetch",
    "Measurement",
    "Observation",
    "RouteStats",
    "Scrape",
    "SourceError",
    "bucket_cv",
    "bucket_quantile",
    "http_get",
    "measure_metrics",
    "measure_prometheus",
    "metrics_url",
    "observe",
    "parse_duration",
    "parse_scrape",
    "prometheus_get",
    "sample",
    "scrape",
]

#: Mean queue wait in the second half of a window above ``GROWTH`` x the first half's, and more
#: than ``GROWTH_FLOOR`` seconds above it, counts as "queue wait kept growing".
GROWTH = 1.5
GROWTH_FLOOR = 0.005


# --------------------------------------------------------------------------------- small parsers

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)?")


def parse_duration(text: str) -> float:
    """Seconds in ``"90"``, ``"500ms"``, ``"60s"``, ``"5m"``, ``"1h30m"``, ``"1d"`` or ``"1w"``.

    :raises ValueError: unless it is a positive duration in that form.
    """
    text = text.strip()
    seconds, pos = 0.0, 0
    while pos < len(text):
        match = _DURATION.match(text, pos)
        if match is None:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2) or "s"]
        pos = match.end()
    if not text or pos != len(text) or not seconds > 0:
        raise ValueError(
            f"not a duration: {text!r}; write it like 60s, 5m, 1h or 1d (a bare number is seconds)"
        )
    return seconds


def metrics_url(url: str) -> str:
    """``url`` with ``http://`` added when there is no scheme and ``/metrics`` when there is no
    path: ``127.0.0.1:8000`` is ``http://127.0.0.1:8000/metrics``.

    :raises SourceError: if it is not an http(s) URL with a host.
    """
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SourceError(f"not an http(s) URL: {url!r}; give one like http://127.0.0.1:8000")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        raise SourceError(f"not a valid port in {url!r}") from None
    if parts.path in ("", "/"):
        parts = parts._replace(path="/metrics")
    return urllib.parse.urlunsplit(parts)


# ------------------------------------------------------------------------------------- scrapes

_HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")
#: Sample names that only grow, by the metric contract: counted as counters even when a scrape's
#: TYPE lines are missing or name the family differently (OpenMetrics drops ``_total``).
_COUNTING = frozenset(
    name
    for metric in m.METRICS
    if metric.kind in ("counter", "histogram")
    for name in m.sample_names(metric)
)


@dataclass(frozen=True)
class Scrape:
    """One scrape of ``/metrics``: counter and histogram samples (which only grow, until a restart)
    apart from gauges (which are read as they are), taken at ``at`` seconds on a monotonic clock.
    """

    at: float
    counters: Mapping[Key, float]
    gauges: Mapping[Key, float]

    def gauge(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        """Every series of the gauge ``name``, by its labels."""
        return {labels: v for (n, labels), v in self.gauges.items() if n == name}

    def gauge_by(self, name: str, label: str) -> dict[str, float]:
        """The gauge ``name`` summed by the value of one label."""
        out: dict[str, float] = {}
        for labels, value in self.gauge(name).items():
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + value
        return out

    def has(self, name: str) -> bool:
        """Whether any series of this sample name is in the scrape."""
        return any(n == name for n, _ in self.gauges) or any(n == name for n, _ in self.counters)


def parse_scrape(text: str, at: float) -> Scrape:
    """Parse a Prometheus text exposition taken at ``at`` (monotonic seconds).

    :raises SourceError: if it is not Prometheus text, or holds no workermeter metrics.
    """
    counters: dict[Key, float] = {}
    gauges: dict[Key, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            counting = family.type in ("counter", "histogram")
            for s in family.samples:
                if s.name.endswith("_created"):  # OpenMetrics creation times are not counts
                    continue
                into = counters if counting or s.name in _COUNTING else gauges
                into[(s.name, frozenset(s.labels.items()))] = s.value
    except ValueError:  # the parser's only complaint about text that is not the format
        first = text.strip().splitlines()[0][:60]
        raise SourceError(f"not Prometheus metrics: the response starts {first!r}") from None
    if not any(name.startswith("workermeter_") for name, _ in [*counters, *gauges]):
        raise SourceError("no workermeter_ metrics in the response: not a workermeter endpoint")
    return Scrape(at, counters, gauges)


def scrape(
    url: str,
    *,
    fetch: Fetch = http_get,
    clock: Callable[[], float] = time.monotonic,
    timeout: float = 10.0,
) -> Scrape:
    """Fetch ``url`` once and parse it.

    The scrape is dated halfway between sending the request and reading the answer: the server
    computed its values somewhere in between, and a busy sync worker can take a while to answer.

    :raises SourceError: if it cannot be read or is not a workermeter endpoint.
    """
    before = clock()
    text = fetch(url, timeout)
    after = clock()
    try:
        return parse_scrape(text, (before + after) / 2)
    except SourceError as e:
        raise SourceError(f"{url}: {e}") from None


def sample(
    url: str,
    seconds: float,
    *,
    interval: float | None = None,
    fetch: Fetch = http_get,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Scrape]:
    """Scrape ``url`` at the start, every ``interval`` seconds, and at the end of ``seconds``.

    ``interval`` defaults to a quarter of the window, between 1 and 5 seconds: the scrapes in
    between catch a restart (which would lose the counts before it) and show whether queue wait
    grew during the window.
    """
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds!r}")
    step = interval if interval is not None else max(1.0, min(5.0, seconds / 4))
    start = clock()
    scrapes = [scrape(url, fetch=fetch, clock=clock)]
    k = 1
    while True:
        due = min(start + k * step, start + seconds)
        pause = due - clock()
        if pause > 0:
            sleep(pause)
        scrapes.append(scrape(url, fetch=fetch, clock=clock))
        if due >= start + seconds:
            return scrapes
        k += 1


# ------------------------------------------------------------------------------------- deltas


def _group(key: Key) -> Key:
    """Series that restart together: a histogram's buckets, sum and count (labels but ``le``)."""
    name, labels = key
    base = _HISTOGRAM_SUFFIX.sub("", name)
    return base, frozenset(kv for kv in labels if kv[0] != "le")


def _increase(before: Mapping[Key, float], after: Mapping[Key, float]) -> dict[Key, float]:
    """How much each counter grew from one scrape to the next, counting restarts from 0.

    A series new in ``after`` grew from 0: the store shows a series once it has counted
    something, so all of it was counted after ``before``.
    """
    restarted = {_group(k) for k, v in after.items() if v < before.get(k, 0.0)}
    return {
        k: v if _group(k) in restarted else v - before.get(k, 0.0)
        for k, v in after.items()
    }  # fmt: skip


def _increases(scrapes: Sequence[Scrape]) -> list[dict[Key, float]]:
    return [_increase(a.counters, b.counters) for a, b in itertools.pairwise(scrapes)]


def _total(increases: Iterable[Mapping[Key, float]]) -> dict[Key, float]:
    out: dict[Key, float] = {}
    for inc in increases:
        for k, v in inc.items():
            out[k] = out.get(k, 0.0) + v
    return out


# --------------------------------------------------------------------------------- observation


@dataclass(frozen=True)
class RouteStats:
    """One route over the window: ``busy`` is its service time summed (slot-seconds),
    ``cpu_share`` its sampled CPU time over sampled service time (None when none was sampled),
    and ``held_share`` its sampled event-loop time over the same (async workers only): held but
    not CPU is a blocking call."""

    route: str
    requests: float
    rate: float
    busy: float
    service_time: float | None
    cpu_share: float | None
    held_share: float | None = None


@dataclass(frozen=True)
class Observation:
    """What a server did between the first and the last of two or more scrapes.

    Rates and shares are over the window; worker gauges (capacity, in flight, memory) are as
    the last scrape saw them, keyed by the ``worker`` label. ``None`` means the scrapes could not
    tell (no request finished, no header with a start time, no request sampled for CPU).

    :param seconds: the window's length.
    :param requests: requests completed in the window.
    :param rate: requests completed per second.
    :param service_time: mean seconds from calling the app to the response being sent.
    :param service_cv: the service time's coefficient of variation, from the duration buckets.
    :param cpu_share: sampled CPU time / sampled service time.
    :param process_cpu_share: the workers' CPU time / their busy time: the fallback when no
        request was sampled (it also counts work outside requests, such as answering scrapes).
    :param utilisation: busy slot-seconds / (seconds x slots), slots from the last scrape; for
        an async job (``loops``), the loops' event-loop utilisation instead.
    :param worker_utilisation: busy slot-seconds / (seconds x slots) for each worker process.
    :param worker_all_busy: share of time each worker process had every slot busy.
    :param all_busy_share: share of time every slot of every worker was busy, at least: exact for
        one worker, a lower bound for more (1 - the sum of the shares each was not full).
    :param busy_distribution: share of worker-time spent with exactly k requests in flight.
    :param queue_waits: requests whose queue wait was measured in the window.
    :param queue_wait_mean: their mean wait.
    :param queue_wait_p50: median queue wait, from the buckets.
    :param queue_wait_p95: 95th percentile queue wait, from the buckets.
    :param wait_growing: the mean queue wait of the window's second half was more than 1.5
        times, and 5 ms more than, the first half's (needs three scrapes or more).
    :param in_flight: requests in flight per worker.
    :param capacity: slots (threads) per worker, where known.
    :param pids: process id per worker.
    :param rss: resident memory per worker, bytes.
    :param uss: unique memory per worker, bytes (absent where it could not be read).
    :param processes: live worker processes (``workermeter_workers``).
    :param threads: threads per process: the most any worker has.
    :param cores: the host's logical CPUs.
    :param memory_total: the host's memory, bytes.
    :param backlog: connections waiting in the listen queue, if the server exposes it.
    :param routes: per route, busiest first.
    :param loops: the event loops and thread pools of an async job; None for a sync one.
    """

    seconds: float
    requests: float
    rate: float
    service_time: float | None
    service_cv: float | None
    cpu_share: float | None
    process_cpu_share: float | None
    utilisation: float | None
    worker_utilisation: Mapping[str, float]
    worker_all_busy: Mapping[str, float]
    all_busy_share: float | None
    busy_distribution: Mapping[int, float]
    queue_waits: float
    queue_wait_mean: float | None
    queue_wait_p50: float | None
    queue_wait_p95: float | None
    wait_growing: bool
    in_flight: Mapping[str, int]
    capacity: Mapping[str, int]
    pids: Mapping[str, int]
    rss: Mapping[str, int]
    uss: Mapping[str, int]
    processes: int | None
    threads: int | None
    cores: float | None
    memory_total: int | None
    backlog: float | None
    routes: tuple[RouteStats, ...] = field(default=())
    loops: Loops | None = None

    def workload(self) -> Workload:
        """The capacity model's workload at the observed rate (the window is taken as the peak).

        The CPU share is the sampled one, else the workers' CPU over busy time, else 0. An
        async job's workload carries its loops' demand.

        :raises SourceError: if no request completed in the window.
        """
        if self.requests <= 0 or not self.service_time:
            raise SourceError(
                f"no request completed in the {self.seconds:.0f} s window: sample while the app "
                f"has traffic, or for longer"
            )
        share = self.cpu_share if self.cpu_share is not None else self.process_cpu_share
        return Workload(
            peak_rate=rounded_rate(self.rate),
            service_time=self.service_time,
            cpu_share=clamp_share(share or 0.0),
            service_cv=1.0 if self.service_cv is None else self.service_cv,
            utilisation=None if self.utilisation is None else clamp_share(self.utilisation),
            all_busy_share=self.all_busy_share,
            wait_growing=self.wait_growing,
            loops=None if self.loops is None else self.loops.demand(),
        )

    def machine(self) -> Machine:
        """The machine as the last scrape saw it: the host's cores and memory, the largest
        worker's RSS and USS, the live workers and their threads.

        :raises SourceError: if the scrape has no host or worker memory.
        """
        if not self.rss or not self.memory_total or not self.cores:
            raise SourceError(
                "the scrape has no worker or host memory yet: a worker appears with its first "
                "request, so sample while the app has traffic"
            )
        return machine_of(
            cores=self.cores,
            memory_total=self.memory_total,
            rss=max(self.rss.values()),
            uss=max(self.uss.values(), default=0),
            processes=self.processes,
            threads=self.threads,
        )


def observe(scrapes: Sequence[Scrape]) -> Observation:
    """What happened between the first and the last of ``scrapes`` (in time order).

    Counters' increases are summed over each pair of consecutive scrapes, so a restart loses at
    most the counts between two scrapes.

    :raises ValueError: with fewer than two scrapes or none later than the first.
    """
    if len(scrapes) < 2:
        raise ValueError("observe() needs two scrapes or more")
    seconds = scrapes[-1].at - scrapes[0].at
    if not seconds > 0:
        raise ValueError("the scrapes must be in time order, at different times")
    steps = _increases(scrapes)
    d = Counts(_total(steps))
    last = scrapes[-1]

    requests = d.sum(m.REQUESTS.name + "_total")
    duration_sum = d.sum(m.DURATION.name + "_sum")
    duration_count = d.sum(m.DURATION.name + "_count")
    cpu = d.sum(m.CPU.name + "_total")
    cpu_wall = d.sum(m.CPU_WALL.name + "_total")
    busy_by = {w: v for (w,), v in d.by(m.BUSY.name + "_total", "worker").items()}
    busy = sum(busy_by.values())
    process_cpu = d.sum(m.PROCESS_CPU.name + "_total")
    event_loops = loops(d, seconds, last.gauge_by(m.POOL_SIZE.name, "worker"))

    capacity = {w: round(v) for w, v in last.gauge_by(m.CAPACITY.name, "worker").items() if v}
    slots = sum(capacity.values())
    worker_utilisation = {
        w: busy_by.get(w, 0.0) / (seconds * c) for w, c in sorted(capacity.items())
    }
    all_busy_by = {w: v for (w,), v in d.by(m.ALL_BUSY.name + "_total", "worker").items()}
    worker_all_busy = {w: all_busy_by.get(w, 0.0) / seconds for w in sorted(capacity)}
    all_busy_share = None
    if worker_all_busy:
        all_busy_share = clamp_share(
            1.0 - sum(1.0 - clamp_share(s) for s in worker_all_busy.values())
        )

    levels: dict[int, float] = {}
    for (_, k), v in d.by(m.BUSY_SLOTS.name + "_total", "worker", "busy").items():
        if k.isdigit():
            levels[int(k)] = levels.get(int(k), 0.0) + v
    level_total = sum(levels.values())
    distribution = {k: v / level_total for k, v in sorted(levels.items())} if level_total else {}

    wait_buckets = d.buckets(m.QUEUE_WAIT.name)
    waits = d.sum(m.QUEUE_WAIT.name + "_count")

    rss = {w: round(v) for w, v in last.gauge_by(m.RSS.name, "worker").items()}
    uss = {w: round(v) for w, v in last.gauge_by(m.USS.name, "worker").items() if v > 0}
    workers = last.gauge_by(m.WORKERS.name, "")
    cores = last.gauge_by(m.HOST_CPUS.name, "")
    memory = last.gauge_by(m.HOST_MEMORY.name, "")
    # Only servers whose listening sockets workermeter can read expose a backlog.
    backlog_name = m.LISTEN_BACKLOG.name
    backlog = sum(last.gauge_by(backlog_name, "").values()) if last.has(backlog_name) else None

    return Observation(
        seconds=seconds,
        requests=requests,
        rate=requests / seconds,
        service_time=ratio(duration_sum, duration_count),
        # Every bound, all routes; from the routes' histograms where an older exporter has no
        # unlabelled one.
        service_cv=bucket_cv(d.buckets(m.SERVICE_TIME.name) or d.buckets(m.DURATION.name)),
        cpu_share=ratio(cpu, cpu_wall),
        process_cpu_share=ratio(process_cpu, busy),
        utilisation=(
            ratio(busy, seconds * slots) if event_loops is None else event_loops.utilisation
        ),
        worker_utilisation=worker_utilisation,
        worker_all_busy=worker_all_busy,
        all_busy_share=all_busy_share,
        busy_distribution=distribution,
        queue_waits=waits,
        queue_wait_mean=ratio(d.sum(m.QUEUE_WAIT.name + "_sum"), waits),
        queue_wait_p50=bucket_quantile(0.5, wait_buckets),
        queue_wait_p95=bucket_quantile(0.95, wait_buckets),
        wait_growing=_wait_growing(steps),
        in_flight={
            w: round(v) for w, v in sorted(last.gauge_by(m.IN_FLIGHT.name, "worker").items())
        },
        capacity=dict(sorted(capacity.items())),
        pids={w: round(v) for w, v in sorted(last.gauge_by(m.WORKER_PID.name, "worker").items())},
        rss=dict(sorted(rss.items())),
        uss=dict(sorted(uss.items())),
        processes=round(sum(workers.values())) if workers else None,
        threads=max(capacity.values()) if capacity else None,
        cores=sum(cores.values()) if cores else None,
        memory_total=round(sum(memory.values())) if memory else None,
        backlog=backlog,
        routes=_routes(d, seconds),
        loops=event_loops,
    )


def _wait_growing(steps: Sequence[Mapping[Key, float]]) -> bool:
    if len(steps) < 2:
        return False
    half = len(steps) // 2
    means = []
    for part in (steps[:half], steps[half:]):
        counts = Counts(_total(part))
        means.append(
            ratio(counts.sum(m.QUEUE_WAIT.name + "_sum"), counts.sum(m.QUEUE_WAIT.name + "_count"))
        )
    first, second = means
    if first is None or second is None:
        return False
    return second > GROWTH * first and second - first > GROWTH_FLOOR


def _routes(d: Counts, seconds: float) -> tuple[RouteStats, ...]:
    requests = d.by(m.REQUESTS.name + "_total", "route")
    sums = d.by(m.DURATION.name + "_sum", "route")
    counts = d.by(m.DURATION.name + "_count", "route")
    cpu = d.by(m.CPU.name + "_total", "route")
    wall = d.by(m.CPU_WALL.name + "_total", "route")
    held = d.by(m.LOOP_HELD.name + "_total", "route")
    routes = []
    for (route,), n in requests.items():
        if n <= 0:
            continue
        key = (route,)
        routes.append(
            RouteStats(
                route=route,
                requests=n,
                rate=n / seconds,
                busy=sums.get(key, 0.0),
                service_time=ratio(sums.get(key, 0.0), counts.get(key, 0.0)),
                cpu_share=ratio(cpu.get(key, 0.0), wall.get(key, 0.0)),
                held_share=ratio(held[key], wall.get(key, 0.0)) if key in held else None,
            )
        )
    return tuple(sorted(routes, key=lambda r: (-r.busy, r.route)))


def measure_metrics(
    url: str,
    seconds: float,
    *,
    interval: float | None = None,
    fetch: Fetch = http_get,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Measurement:
    """Sample a live ``/metrics`` endpoint for ``seconds`` and measure the capacity inputs.

    The window is taken as the peak: run it while the app is at its busiest.

    :raises SourceError: if the URL cannot be read, is not a workermeter endpoint, or no
        request completed while it was sampled.
    """
    url = metrics_url(url)
    scrapes = sample(url, seconds, interval=interval, fetch=fetch, clock=clock, sleep=sleep)
    obs = observe(scrapes)
    notes = cpu_notes(obs.cpu_share, obs.process_cpu_share)
    if obs.service_cv is None:
        notes.append("The service time's variability is unknown; cv 1 is assumed.")
    if obs.loops is not None:
        window = f"the {obs.seconds:.0f} s sampled"
        notes += loop_notes(
            obs.loops.measured, obs.loops.methods, obs.loops.cpu_share is not None, window
        )
    return Measurement(
        source=f"{url}, sampled for {obs.seconds:.0f} s",
        seconds=obs.seconds,
        workload=obs.workload(),
        machine=obs.machine(),
        queue_wait_p50=obs.queue_wait_p50,
        queue_wait_p95=obs.queue_wait_p95,
        notes=tuple(notes),
    )


# The Prometheus source builds on this module, so importing it here would be circular: its names
# are imported when first asked for (PEP 562); type checkers see them as plain imports.
if TYPE_CHECKING:
    from .prometheus_source import measure_prometheus, prometheus_get
else:

    def __getattr__(name: str) -> object:
        if name in ("measure_prometheus", "prometheus_get"):
            from . import prometheus_source

            return getattr(prometheus_source, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
