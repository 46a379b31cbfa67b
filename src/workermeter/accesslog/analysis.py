"""Analyse access logs: read them, rebuild concurrency and queue waits, and sum up rates,
service times, routes and warnings in a :class:`LogAnalysis` whose ``workload`` is ready for
the capacity model.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from ..capacity import Workload
from .formats import BUILTIN, TIMING, LineFormat, line_format
from .in_flight import Concurrency, Minute, concurrency, fcfs_waits
from .reading import BadLine, FileSummary, Progress, Reader
from .routes import OTHER

#: Logs do not show CPU time: the share assumed for the suggestion unless one is given.
DEFAULT_CPU_SHARE = 0.5
#: Distinct ``METHOD /template`` routes kept; further ones are counted as ``<other>``.
MAX_ROUTES = 200


class LogError(ValueError):
    """The logs hold nothing to analyse: no line of any file could be parsed."""


@dataclass(frozen=True)
class RouteStats:
    """One route (``METHOD /template``): how much worker time it took, and its service time.

    :param requests: its requests.
    :param busy_seconds: the sum of their service times: the worker time they took.
    :param busy_share: its share of all requests' worker time.
    :param mean: mean service time in seconds (the logged time less any rebuilt queue wait);
        ``p50``, ``p95`` its percentiles.
    """

    route: str
    requests: int
    busy_seconds: float
    busy_share: float
    mean: float
    p50: float
    p95: float


@dataclass(frozen=True)
class LogAnalysis:
    """What the logs say about the workers.

    Counts: ``lines`` (non-blank), ``requests``, ``malformed`` (with up to five examples in
    ``bad_lines``), ``skipped`` (not passed to the app); per file in ``files``.

    Time: ``first`` (earliest start) and ``last`` (latest end) in Unix seconds; ``utc_offset``
    is the logs' own time zone in seconds (0 if they state none), for showing clock times;
    ``whole_second`` is True when timestamps had one-second resolution, which makes the
    concurrency an estimate.

    Concurrency: see :class:`Concurrency`; ``capacity`` is the slots given, if any.

    Rates: ``peak_minute`` has the most arrivals; ``peak_rate`` is its arrivals / 60;
    ``typical_rate`` is the median minute's, counting every minute from first to last.

    Service time: each request's logged time, less its queue wait when the waits were rebuilt
    (``waits_rebuilt``: a proxy's log and a capacity, see :func:`fcfs_waits`); ``service_time``
    is the mean, ``service_cv`` its coefficient of variation, ``service_p50``/``service_p95``
    percentiles. With rebuilt waits: ``waited`` requests waited at all, ``wait_mean`` and
    ``wait_p95`` over all requests, and ``wait_capped`` would have waited longer than they took
    (the capacity is too small). ``routes`` are sorted by busy time, most first.

    ``includes_queueing``: the durations were measured by a proxy, so they include the wait for
    a free worker. ``cpu_share`` is the given share, or :data:`DEFAULT_CPU_SHARE` with
    ``cpu_share_assumed``. ``workload`` is ready for :func:`workermeter.capacity.suggest`, or None
    when every duration was 0. ``warnings`` are sentences to show the reader.
    """

    files: tuple[FileSummary, ...]
    format: str
    lines: int
    requests: int
    malformed: int
    skipped: int
    bad_lines: tuple[BadLine, ...]
    first: float
    last: float
    utc_offset: int
    whole_second: bool
    includes_queueing: bool
    capacity: int | None
    concurrency: Concurrency
    peak_minute: Minute
    peak_rate: float
    typical_rate: float
    service_time: float
    service_cv: float
    service_p50: float
    service_p95: float
    waits_rebuilt: bool
    waited: int
    wait_mean: float | None
    wait_p95: float | None
    wait_capped: int
    routes: tuple[RouteStats, ...]
    cpu_share: float
    cpu_share_assumed: bool
    workload: Workload | None
    warnings: tuple[str, ...] = field(default=())

    @property
    def span(self) -> float:
        """Seconds from the first start to the last end."""
        return self.last - self.first

    @property
    def minutes(self) -> tuple[Minute, ...]:
        return self.concurrency.minutes

    @property
    def minutes_at_capacity(self) -> tuple[Minute, ...]:
        """The minutes in which every slot was busy for some time, in order."""
        return tuple(m for m in self.concurrency.minutes if m.seconds_at_capacity > 0)

    def busiest_minutes(self, k: int) -> tuple[Minute, ...]:
        """The ``k`` minutes with the most arrivals, busiest first (earlier first on ties)."""
        ranked = sorted(self.concurrency.minutes, key=lambda m: (-m.arrivals, m.start))
        return tuple(ranked[:k])


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _median_minute(minutes: Sequence[Minute]) -> float:
    """Median arrivals per minute over every minute from the first to the last, idle or not."""
    if not minutes:
        return 0.0
    total = minutes[-1].start // 60 - minutes[0].start // 60 + 1
    counts = sorted(m.arrivals for m in minutes)
    zeros = total - len(counts)

    def at(index: int) -> int:
        return 0 if index < zeros else counts[index - zeros]

    middle = (total - 1) / 2
    return (at(math.floor(middle)) + at(math.ceil(middle))) / 2


def _route_stats(
    names: Sequence[str], routes: Sequence[int], service: Sequence[float]
) -> tuple[RouteStats, ...]:
    busy: list[float] = [0.0] * len(names)
    times: list[list[float]] = [[] for _ in names]
    for route, served in zip(routes, service, strict=True):
        busy[route] += served
        times[route].append(served)
    busy_total = math.fsum(busy) or 1.0
    stats = []
    for name, seconds, route_times in zip(names, busy, times, strict=True):
        route_times.sort()
        stats.append(
            RouteStats(
                route=name,
                requests=len(route_times),
                busy_seconds=seconds,
                busy_share=seconds / busy_total,
                mean=math.fsum(route_times) / len(route_times),
                p50=_quantile(route_times, 0.5),
                p95=_quantile(route_times, 0.95),
            )
        )
    stats.sort(key=lambda r: (-r.busy_seconds, -r.requests, r.route))
    return tuple(stats)


def _real_share(value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"cpu_share must be a share from 0 to 1, got {value!r}")
    return float(value)


def analyse(
    paths: Iterable[str | os.PathLike[str]],
    *,
    fmt: str = "auto",
    pattern: str | None = None,
    capacity: int | None = None,
    cpu_share: float | None = None,
    max_routes: int = MAX_ROUTES,
    progress: Progress | None = None,
) -> LogAnalysis:
    """Read access logs (plain or gzip) and rebuild rates, concurrency and service times.

    Example::

        logs = analyse(["/var/log/nginx/access.log", "/var/log/nginx/access.log.1.gz"],
                       capacity=8)
        logs.peak_rate, logs.minutes_at_capacity, suggest(logs.workload, machine)

    :param paths: log files; gzip is recognised by its first bytes, not its name.
    :param fmt: ``"auto"`` (chosen per file from its first lines), one of :data:`FORMATS`, or
        ``"custom"`` with ``pattern``.
    :param pattern: a custom line pattern, see :func:`line_format`; implies ``fmt="custom"``.
    :param capacity: the slots serving these requests (processes x threads, on all the
        machines whose requests the logs hold). Enables the minutes at capacity and, for a
        proxy's log, rebuilds each request's queue wait and takes it off its service time.
    :param cpu_share: the share of service time spent on the CPU, if known (logs cannot tell);
        :data:`DEFAULT_CPU_SHARE` otherwise.
    :param max_routes: distinct routes kept; further ones are counted as ``<other>``.
    :param progress: called with bytes read, for a progress bar.
    :raises ValueError: for a bad option or pattern.
    :raises OSError: if a file cannot be opened or read.
    :raises LogError: if no line of any file is a request.
    """
    line_fmt = None if fmt == "auto" and pattern is None else line_format(fmt, pattern)
    if capacity is not None and (
        isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1
    ):
        raise ValueError(f"capacity must be an integer >= 1 (slots), got {capacity!r}")
    share = _real_share(cpu_share)
    if isinstance(max_routes, bool) or not isinstance(max_routes, int) or max_routes < 1:
        raise ValueError(f"max_routes must be an integer >= 1, got {max_routes!r}")
    names = [os.fspath(p) for p in paths]
    if not names:
        raise ValueError("no log files given")

    reader = Reader(max_routes, progress)
    for name in names:
        reader.read(name, line_fmt)
    files = tuple(reader.files)
    requests = len(reader.starts)
    if requests == 0:
        raise LogError(
            _nothing(files, reader.examples, None if line_fmt is None else line_fmt.name)
        )

    formats = sorted({f.format for f in files if f.requests})
    queueing = any(_queueing(f, line_fmt) for f in files if f.requests)
    ends = [s + d for s, d in zip(reader.starts, reader.durations, strict=True)]
    conc = concurrency(reader.starts, ends, capacity=capacity)

    warnings: list[str] = []
    service: Sequence[float] = reader.durations
    waits: list[float] | None = None
    capped = 0
    if capacity is not None and queueing:
        waits = fcfs_waits(reader.starts, ends, capacity)
        service = [d - w for d, w in zip(reader.durations, waits, strict=True)]
        capped = sum(1 for d, w in zip(reader.durations, waits, strict=True) if d > 0 and w >= d)
        if capped > requests // 100:
            warnings.append(
                f"{capped:,} requests would have waited for a slot longer than they took: more "
                f"than {capacity} were served at once, so the capacity given is too small (or "
                f"the server does not serve in arrival order); the service time is understated."
            )
    times = sorted(service)
    mean = math.fsum(times) / len(times)
    cv = statistics.pstdev(times, mean) / mean if mean > 0 else 0.0
    routes = _route_stats(reader.route_names, reader.routes, service)
    wait_times = None if waits is None else sorted(waits)

    minutes = conc.minutes
    peak = max(minutes, key=lambda m: (m.arrivals, -m.start))
    typical = _median_minute(minutes) / 60.0
    utilisation = all_busy = None
    if capacity is not None:
        utilisation = min(1.0, max(m.busy_slots for m in minutes) / capacity)
        all_busy = min(1.0, max(m.share_at_capacity for m in minutes))
    workload = None
    if mean > 0:
        workload = Workload(
            peak_rate=peak.rate,
            service_time=mean,
            cpu_share=DEFAULT_CPU_SHARE if share is None else share,
            service_cv=cv,
            typical_rate=min(typical, peak.rate),
            utilisation=utilisation,
            all_busy_share=all_busy,
        )

    analysis = LogAnalysis(
        files=files,
        format=formats[0] if len(formats) == 1 else "mixed",
        lines=sum(f.lines for f in files),
        requests=requests,
        malformed=sum(f.malformed for f in files),
        skipped=sum(f.skipped for f in files),
        bad_lines=tuple(reader.examples),
        first=min(reader.starts),
        last=max(ends),
        utc_offset=reader.utc_offset or 0,
        whole_second=reader.whole_second,
        includes_queueing=queueing,
        capacity=capacity,
        concurrency=conc,
        peak_minute=peak,
        peak_rate=peak.rate,
        typical_rate=typical,
        service_time=mean,
        service_cv=cv,
        service_p50=_quantile(times, 0.5),
        service_p95=_quantile(times, 0.95),
        waits_rebuilt=wait_times is not None,
        waited=0 if waits is None else sum(1 for w in waits if w > 0),
        wait_mean=None if wait_times is None else math.fsum(wait_times) / len(wait_times),
        wait_p95=None if wait_times is None else _quantile(wait_times, 0.95),
        wait_capped=capped,
        routes=routes,
        cpu_share=DEFAULT_CPU_SHARE if share is None else share,
        cpu_share_assumed=share is None,
        workload=workload,
    )
    notes = _warnings(analysis, line_fmt, reader.ambiguous, reader.overflowed)
    return replace(analysis, warnings=(*notes, *warnings))


def _queueing(summary: FileSummary, fmt: LineFormat | None) -> bool:
    if fmt is not None:
        return fmt.includes_queueing
    return BUILTIN[summary.format].includes_queueing if summary.format in BUILTIN else True


def _nothing(files: Sequence[FileSummary], examples: Sequence[BadLine], fmt: str | None) -> str:
    names = ", ".join(f.path for f in files)
    if not any(f.lines for f in files):
        return f"no log lines in {names}"
    if all(f.malformed == 0 for f in files):
        return f"no request in {names} was passed to the app (every $upstream_response_time is -)"
    example = ""
    if examples:
        example = f"; first bad line ({examples[0].reason}): {examples[0].text[:120]!r}"
    if fmt is None:
        hint = "a known format: pass --format nginx|gunicorn|apache or a --pattern"
    else:
        hint = f"the {fmt} format: check the format, or pass a --pattern"
    return f"no line of {names} is a request in {hint} (see docs/logs.md){example}"


def _warnings(
    a: LogAnalysis, fmt: LineFormat | None, ambiguous: Sequence[str], overflowed: bool
) -> list[str]:
    out: list[str] = []
    timing = sorted(
        {fmt.timing}
        if fmt is not None
        else {TIMING.get(f.format, TIMING["custom"]) for f in a.files if f.requests}
    )
    said = "; ".join(timing)
    if a.includes_queueing:
        if a.waits_rebuilt:
            tail = (
                f"so each request's wait was rebuilt from the order of arrivals and departures "
                f"(one first-come-first-served queue for the {a.capacity} slots) and taken off "
                f"its time: {a.waited:,} of {a.requests:,} requests waited."
            )
        else:
            tail = (
                "so whenever the workers were saturated the logged times are inflated by the "
                "wait; pass --capacity (processes x threads) to rebuild each request's wait and "
                "take it off."
            )
        out.append(f"Logged times include queueing: {said}, {tail}")
    else:
        out.append(
            f"Logged times exclude queueing: {said}. Good for service time, but when every worker "
            f"was busy, requests waited unseen and started later than they arrived, so the rate "
            f"at those times is what the workers managed, not the demand."
        )
    if a.whole_second:
        out.append(
            "Timestamps have one-second resolution: the lines of each second are spread evenly "
            "across it, so concurrency and the minutes at capacity are estimates (rates and "
            "service times are not affected). Log $msec (nginx) or a millisecond time (Apache) "
            "for exact ones."
        )
    for path in ambiguous:
        out.append(
            f"{path} was read as a gunicorn log (%(t)s is when a request ended); an Apache "
            f"log with %D looks the same but its %t is when the request began: if that is what "
            f"it is, pass --format apache."
        )
    if a.malformed:
        out.append(
            f"{a.malformed:,} of {a.lines:,} lines were malformed and left out (examples below)."
        )
    if len({f.format for f in a.files if f.requests}) > 1:
        out.append(
            "The files are in different formats: if a proxy and the app server logged the same "
            "requests, each is counted twice. Analyse one of them."
        )
    if any(f.truncated for f in a.files):
        cut = ", ".join(f.path for f in a.files if f.truncated)
        out.append(
            f"{cut} ended early (a gzip file cut short or corrupt); the lines before were read."
        )
    if overflowed:
        out.append(
            f"More distinct routes than {len(a.routes) - 1}: the rest are counted together as "
            f"{OTHER}."
        )
    if (
        a.capacity is not None
        and not a.includes_queueing
        and a.concurrency.max_in_flight > a.capacity
    ):
        out.append(
            f"Up to {a.concurrency.max_in_flight} requests were in flight at once, more than the "
            f"{a.capacity} slots given: do the logs come from more than one server, or is the "
            f"capacity larger?"
            + (
                " (With one-second timestamps this can also be the estimate.)"
                if a.whole_second
                else ""
            )
        )
    if a.workload is None:
        out.append("Every logged duration is 0 (below the log's resolution): no suggestion.")
    if a.cpu_share_assumed:
        out.append(
            f"Logs do not show CPU time: the suggestion assumes requests spend "
            f"{DEFAULT_CPU_SHARE:.0%} of their time on the CPU. Pass --cpu-share (from "
            f"workermeter's metrics: sampled CPU seconds / sampled duration) for a better "
            f"split of processes and threads."
        )
    return out
