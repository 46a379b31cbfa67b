"""Ask a Prometheus server, over its HTTP API, for the capacity model's inputs: the same
questions as a live ``/metrics`` sample, in PromQL over a longer window, with the peak rate taken
as the highest 5-minute rate in it, ending as the same :class:`~workermeter.observe.Measurement`.
For an async job (one with event-loop series) it also asks for the loops' demand at its peak, their
CPU share, the routes that hold them without the CPU and the thread pool's use.
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import metrics as m
from .capacity import LoopDemand, Workload
from .measurement import (
    Fetch,
    Measurement,
    SourceError,
    bucket_cv,
    bucket_quantile,
    clamp_share,
    cpu_notes,
    get,
    machine_of,
    ratio,
    rounded_rate,
)
from .observe_loops import blocking_routes, loop_notes

__all__ = ["RATE_RANGE", "measure_prometheus", "prometheus_get"]

#: Rate range of the Prometheus queries: the peak is the highest rate over this long in the window.
RATE_RANGE = 300.0


def prometheus_get(url: str, timeout: float = 30.0) -> str:
    """Like :func:`~workermeter.observe.http_get`, but returns the JSON body Prometheus sends
    with a refused query (HTTP 400 or 422) or one it could not run (503), so its reason can be
    shown."""
    return get(url, timeout, error_bodies=(400, 422, 503))


def _promql_duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _selector(selector: str) -> str:
    selector = selector.strip()
    if not selector:
        return ""
    if not selector.startswith("{"):
        selector = "{" + selector + "}"
    if not selector.endswith("}") or selector.count("{") != 1:
        raise SourceError(f"not a label selector: {selector!r}; write it like '{{job=\"app\"}}'")
    return selector


@dataclass(frozen=True)
class _Prometheus:
    url: str
    at: float
    fetch: Fetch

    def _data(self, promql: str) -> Any:
        """The ``data`` of Prometheus's answer to an instant query."""
        params = urllib.parse.urlencode({"query": promql, "time": f"{self.at:.3f}"})
        body = self.fetch(f"{self.url}/api/v1/query?{params}", 30.0)
        try:
            answer: Any = json.loads(body)
        except ValueError:
            raise SourceError(
                f"{self.url} is not a Prometheus server: /api/v1/query did not answer JSON"
            ) from None
        if not isinstance(answer, dict) or answer.get("status") != "success":
            error = answer.get("error", "no reason given") if isinstance(answer, dict) else ""
            raise SourceError(f"Prometheus refused the query {promql!r}: {error}")
        return answer.get("data", {})

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        data = self._data(promql)
        if data.get("resultType") == "scalar":
            return [({}, float(data["result"][1]))]
        out = []
        for item in data.get("result", []):
            if "value" not in item:  # a native histogram: see buckets()
                continue
            value = float(item["value"][1])
            if math.isfinite(value):
                out.append((dict(item.get("metric", {})), value))
        return out

    def buckets(self, promql: str) -> list[tuple[float, float]]:
        """The cumulative ``(upper bound, count)`` pairs of the one native histogram ``promql``
        gives, as classic buckets by ``le`` would have them, with a pair for each empty stretch
        between buckets; none without one."""
        data = self._data(promql)
        try:
            histogram = data["result"][0]["histogram"][1]
            found = [(float(lo), float(hi), float(n)) for _, lo, hi, n in histogram["buckets"]]
        except (ValueError, KeyError, IndexError, TypeError):
            return []
        pairs: list[tuple[float, float]] = []
        upto = 0.0
        for lower, upper, count in sorted(found, key=lambda b: b[1]):
            if lower > (pairs[-1][0] if pairs else 0.0):
                pairs.append((lower, upto))  # nothing from the last bucket (or 0) up to this one
            upto += count
            pairs.append((upper, upto))
        return pairs

    def scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        return result[0][1] if result else None


def measure_prometheus(
    url: str,
    *,
    selector: str = "",
    window: float = 86400.0,
    fetch: Fetch = prometheus_get,
    now: Callable[[], float] = time.time,
) -> Measurement:
    """Ask a Prometheus server for the capacity inputs over the last ``window`` seconds.

    All from instant queries (``/api/v1/query``) at one moment. The peak rate is
    ``max_over_time`` of the request rate as a subquery: the highest rate over ``RATE_RANGE``
    (5 minutes, or the whole window when it is shorter) in the window, evaluated every fifth of
    that range. The typical rate is the same curve's average; utilisation and the share of time
    all slots were busy are taken at their highest too (they only serve to say whether the
    workers were saturated). Service time, its variability, CPU share and queue wait are over
    the whole window; memory is the largest any worker had; cores, host memory, processes and
    threads are their last values. For an async job, the loops' demand and their ELU are taken
    at their highest like the rate, and so are the pool's use and waits; the CPU share and the
    blocking routes are over the whole window.

    ``selector`` (``{job="app"}``) must pick out one server: the model sizes one machine.

    :raises SourceError: if Prometheus cannot be reached or refuses a query, or has no
        workermeter data for the selector in the window.
    """
    base = url.rstrip("/")
    if "://" not in base:
        base = "http://" + base
    if urllib.parse.urlsplit(base).scheme not in ("http", "https"):
        raise SourceError(f"not an http(s) URL: {url!r}; give one like http://127.0.0.1:9090")
    if not window > 0:
        raise ValueError(f"window must be > 0 seconds, got {window!r}")
    sel = _selector(selector)
    prom = _Prometheus(base, now(), fetch)
    w, words = _promql_duration(window), _words(window)
    r = _promql_duration(min(RATE_RANGE, window))
    res = _promql_duration(max(1.0, min(RATE_RANGE, window) / 5))

    def series(metric: m.Metric, suffix: str = "") -> str:
        return f"{metric.name}{suffix}{sel}"

    def histogram_part(metric: m.Metric, part: str) -> str:
        """The increase of a histogram's sum or count over the window, from its classic series
        or else its native one."""
        classic = f"sum(increase({series(metric, '_' + part)}[{w}]))"
        return f"{classic} or sum(histogram_{part}(increase({series(metric)}[{w}])))"

    requests = series(m.REQUESTS, "_total")
    servers = prom.scalar(f"count(last_over_time({series(m.HOST_CPUS)}[{w}]))")
    if not servers:
        raise SourceError(
            f"Prometheus at {base} has no {series(m.HOST_CPUS)} in the last {words}: check that it "
            f"scrapes the app's /metrics and that --selector matches it"
        )
    if servers > 1:
        raise SourceError(
            f"{sel or 'no selector'} matches {servers:.0f} servers in Prometheus; the model sizes "
            f"one machine: narrow it with --selector, e.g. '{{instance=\"web1:8000\"}}'"
        )
    curve = f"sum(rate({requests}[{r}]))"
    peak = prom.scalar(f"max_over_time({curve}[{w}:{res}])")
    typical = prom.scalar(f"avg_over_time({curve}[{w}:{res}])")
    d_sum = prom.scalar(histogram_part(m.DURATION, "sum"))
    d_count = prom.scalar(histogram_part(m.DURATION, "count"))
    if not peak or not d_sum or not d_count:
        raise SourceError(
            f"Prometheus at {base} saw no requests completed for {sel or 'any job'} in the "
            f"last {words}: choose a window with traffic"
        )

    def increases_by_le(metric: m.Metric) -> list[tuple[float, float]]:
        rows = prom.query(f"sum by (le) (increase({series(metric, '_bucket')}[{w}]))")
        if rows:
            return sorted((float(labels["le"]), v) for labels, v in rows if "le" in labels)
        return prom.buckets(f"sum(increase({series(metric)}[{w}]))")  # a native histogram

    cpu = prom.scalar(f"sum(increase({series(m.CPU, '_total')}[{w}]))")
    cpu_wall = prom.scalar(f"sum(increase({series(m.CPU_WALL, '_total')}[{w}]))")
    cpu_share = ratio(cpu or 0.0, cpu_wall or 0.0)
    process_cpu_share = None
    if cpu_share is None:
        busy = prom.scalar(f"sum(increase({series(m.BUSY, '_total')}[{w}]))")
        process = prom.scalar(f"sum(increase({series(m.PROCESS_CPU, '_total')}[{w}]))")
        process_cpu_share = ratio(process or 0.0, busy or 0.0)
    utilisation = prom.scalar(
        f"max_over_time((sum(rate({series(m.BUSY, '_total')}[{r}])) / "
        f"sum({series(m.CAPACITY)}))[{w}:{res}])"
    )
    all_busy = prom.scalar(
        f"max_over_time(clamp_min(1 - sum(1 - rate({series(m.ALL_BUSY, '_total')}[{r}])), 0)"
        f"[{w}:{res}])"
    )
    loops, loop_elu, loop_notes_ = _loops(prom, series, window, r, res)
    if loops is not None:
        utilisation = loop_elu
    cv = bucket_cv(increases_by_le(m.SERVICE_TIME) or increases_by_le(m.DURATION))
    waits = increases_by_le(m.QUEUE_WAIT)

    def last(metric: m.Metric, how: str = "sum") -> float | None:
        return prom.scalar(f"{how}(last_over_time({series(metric)}[{w}]))")

    rss = prom.scalar(f"max(max_over_time({series(m.RSS)}[{w}]))")
    uss = prom.scalar(f"max(max_over_time({series(m.USS)}[{w}]))")
    cores, memory = last(m.HOST_CPUS), last(m.HOST_MEMORY)
    if not rss or not cores or not memory:
        raise SourceError(
            f"Prometheus at {base} has no worker memory or host figures for {sel or 'any job'} "
            f"in the last {words}"
        )
    notes = cpu_notes(cpu_share, process_cpu_share)
    if cv is None:
        notes.append("The service time's variability is unknown; cv 1 is assumed.")
    notes += loop_notes_
    share = cpu_share if cpu_share is not None else process_cpu_share
    peak = rounded_rate(peak)
    workload = Workload(
        peak_rate=peak,
        service_time=d_sum / d_count,
        cpu_share=clamp_share(share or 0.0),
        service_cv=1.0 if cv is None else cv,
        typical_rate=min(rounded_rate(typical), peak) if typical is not None else None,
        utilisation=None if utilisation is None else clamp_share(utilisation),
        all_busy_share=None if all_busy is None else clamp_share(all_busy),
        loops=loops,
    )
    machine = machine_of(
        cores=cores,
        memory_total=memory,
        rss=rss,
        uss=uss or 0.0,
        processes=last(m.WORKERS),
        threads=last(m.CAPACITY, "max"),
    )
    return Measurement(
        source=f"Prometheus at {base}, {sel or 'all series'}, over the last {words}",
        seconds=window,
        workload=workload,
        machine=machine,
        queue_wait_p50=bucket_quantile(0.5, waits),
        queue_wait_p95=bucket_quantile(0.95, waits),
        notes=tuple(notes),
    )


Series = Callable[[m.Metric, str], str]


def _loops(
    prom: _Prometheus, series: Series, window: float, r: str, res: str
) -> tuple[LoopDemand | None, float | None, list[str]]:
    """The loops' demand, their highest ELU and the notes about them; None for a sync job."""
    w = _promql_duration(window)
    busy, observed = series(m.LOOP_BUSY, "_total"), series(m.LOOP_OBSERVED, "_total")
    methods = prom.query(f"count by (worker, method) (last_over_time({busy}[{w}]))")
    if not methods:
        return None, None, []
    demand = prom.scalar(f"max_over_time(sum(rate({busy}[{r}]))[{w}:{res}])") or 0.0
    elu = prom.scalar(
        f"max_over_time((sum(rate({busy}[{r}])) / sum(rate({observed}[{r}])))[{w}:{res}])"
    )

    def increase(name: str) -> float:
        return prom.scalar(f"sum(increase({name}[{w}]))") or 0.0

    def by_route(name: str, native_part: str = "") -> dict[str, float]:
        query = f"sum by (route) (increase({name}[{w}]))"
        if native_part:  # or from the native histogram
            query += (
                f" or sum by (route) "
                f"(histogram_{native_part}(increase({series(m.DURATION, '')}[{w}])))"
            )
        rows = prom.query(query)
        return {labels.get("route", ""): v for labels, v in rows}

    loop_busy = increase(busy)
    process = increase(series(m.PROCESS_CPU, "_total"))
    cpu_known = bool(prom.query(f"last_over_time({series(m.PROCESS_CPU, '_total')}[{w}])"))
    share = clamp_share(process / loop_busy) if cpu_known and loop_busy > 0 else 1.0
    blocking = blocking_routes(
        held=by_route(series(m.LOOP_HELD, "_total")),
        cpu=by_route(series(m.CPU, "_total")),
        sampled=by_route(series(m.CPU_WALL, "_total")),
        busy=by_route(series(m.DURATION, "_sum"), "sum"),
        requests=by_route(series(m.DURATION, "_count"), "count"),
        loop_busy=loop_busy,
    )
    size = series(m.POOL_SIZE, "")
    threads = prom.scalar(f"max(last_over_time({size}[{w}]))")
    pool_utilisation = prom.scalar(
        f"max_over_time((sum(rate({series(m.POOL_BUSY, '_total')}[{r}])) / sum({size}))[{w}:{res}])"
    )
    pool_wait = prom.scalar(
        f"max_over_time(sum(rate({series(m.POOL_WAIT, '_total')}[{r}]))[{w}:{res}])"
    )
    measured = {
        labels.get("worker", ""): v / window
        for labels, v in prom.query(f"sum by (worker) (increase({observed}[{w}]))")
    }
    notes = loop_notes(
        measured,
        {labels.get("worker", ""): labels.get("method", "") for labels, _ in methods},
        cpu_known,
        f"the last {_words(window)}",
    )
    demand_ = LoopDemand(
        busy=demand,
        cpu_share=share,
        blocking=blocking,
        pool_threads=round(threads) if threads and threads >= 1 else None,
        pool_utilisation=None if pool_utilisation is None else clamp_share(pool_utilisation),
        pool_wait=max(0.0, pool_wait or 0.0),
    )
    return demand_, None if elu is None else clamp_share(elu), notes


def _words(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {unit}" if n == 1 else f"{n} {unit}s"
    return f"{seconds:g} s"
