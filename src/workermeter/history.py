"""The history of a server instance: a row a minute for 8 days, a row an hour for 90 days.

One file, ``history.wm``, created at its full size (under 8 MiB, whatever the number of workers
and routes) and never grown::

    header           HEADER_WORDS words: magic, the sizes below, route names used
    minute rows      MINUTE_ROWS rows of ROW_WORDS words, a ring: minute m in row m % MINUTE_ROWS
    hour rows        HOUR_ROWS rows, the same by hour
    hour routes      TOP_ROUTES entries per hour row: the hour's busiest routes
    route names      ROUTE_NAMES names of NAME_BYTES bytes, "route\\0method", appended once each

A row's first word is the number of its period (minutes or hours since the epoch). A row whose
first word is another period holds nothing for the period asked for: that minute is a gap, not
zero. Only one process writes the file at a time (:mod:`workermeter.history_writer`); it makes a
row's period word 0, writes the row, then writes the period, so a reader that sees the same
period word before and after copying a row has all of it.

Every value is a 64-bit integer: counts, nanoseconds, bytes. :class:`Row` turns a row into the
figures people ask for.
"""

from __future__ import annotations

import functools
import heapq
import math
import mmap
import operator
import os
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .layout import open_nofollow
from .metrics import BUCKETS_NS

MAGIC = int.from_bytes(b"WMHIST01", "little")
MINUTE = 60_000_000_000  # ns
HOUR = 60 * MINUTE
MINUTE_ROWS = 8 * 24 * 60 + 60  # 8 days, and the hour being written
HOUR_ROWS = 90 * 24 + 24  # 90 days, and the day being written
TOP_ROUTES = 20
ROUTE_NAMES = 2048
NAME_BYTES = 64
HEADER_WORDS = 16
FILE_NAME = "history.wm"

# Header words.
(H_MAGIC, H_MINUTE_ROWS, H_HOUR_ROWS, H_ROW_WORDS, H_TOP_ROUTES, H_ROUTE_NAMES,
 H_NAMES_USED, H_WRITES) = range(8)  # fmt: skip

# The coarse buckets of queue wait and service time kept per row: bounds of the store's own
# buckets, so a row's counts are exact sums of the store's; enough to read p50 and p95 within a
# bucket, from 5 ms (no wait worth a look below it) to 30 s (a proxy's timeout).
COARSE = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
COARSE_NS = tuple(round(b * 1e9) for b in COARSE)
NCOARSE = len(COARSE) + 1  # +Inf last
# Each of the store's buckets (+Inf last) in the coarse bucket that holds it.
FINE_TO_COARSE = (
    *(next((i for i, c in enumerate(COARSE_NS) if b <= c), len(COARSE)) for b in BUCKETS_NS),
    len(COARSE),
)

# Row words.
PERIOD = 0  # minutes (or hours) since the epoch; 0: never written
COVERED_NS = 1  # wall time the counts cover: less than the period when the writer began in it
REQUESTS = 2  # 6 words: requests completed by status class, 1xx 2xx 3xx 4xx 5xx other
BUSY_NS = 8  # slot-ns requests were in flight
CAPACITY_NS = 9  # slot-ns of the workers that know their capacity
ALL_BUSY_NS = 10  # ns every slot of the instance was busy (a lower bound with several processes)
PEAK_BUSY = 11  # the most requests in flight at once (the workers' peaks added: an upper bound)
SLOTS = 12  # slots at the end of the period
WORKERS = 13  # live workers at the end of the period
QUEUE_COUNT = 14
QUEUE_SUM_NS = 15
QUEUE_MAX_NS = 16  # the upper bound of the store's highest bucket a wait reached
QUEUE_BUCKETS = 17  # NCOARSE words
SERVICE_SUM_NS = QUEUE_BUCKETS + NCOARSE
SERVICE_BUCKETS = SERVICE_SUM_NS + 1  # NCOARSE words
CPU_NS = SERVICE_BUCKETS + NCOARSE  # thread CPU time of the sampled requests
CPU_WALL_NS = CPU_NS + 1  # their service time
RSS_MAX = CPU_WALL_NS + 1  # the largest resident memory of one worker, bytes
USS_MAX = RSS_MAX + 1  # the largest unique memory of one worker
BACKLOG_MAX = USS_MAX + 1  # the most connections seen waiting in the listen backlog
LOOP_BUSY_NS = BACKLOG_MAX + 1  # async workers: loop-ns busy
LOOP_OBSERVED_NS = LOOP_BUSY_NS + 1  # and observed
PROCESS_CPU_NS = LOOP_OBSERVED_NS + 1  # CPU time of the worker processes
HOST_MEMORY = PROCESS_CPU_NS + 1  # the host's memory, bytes
HOST_AVAILABLE_MIN = HOST_MEMORY + 1  # the least memory available seen
CORES = HOST_AVAILABLE_MIN + 1
FROM_NS = CORES + 1  # wall ns the counts begin at: a writer's next part of a period follows it
FLAGS = FROM_NS + 1
ROW_WORDS = FLAGS + 1

# FLAGS bits.
SPREAD = 1  # the counts of several minutes nobody wrote, shared out evenly (see history_writer)

# How a minute row folds into its hour: largest, smallest, or (every other word) summed.
MAXED = (PEAK_BUSY, SLOTS, WORKERS, QUEUE_MAX_NS, RSS_MAX, USS_MAX, BACKLOG_MAX, HOST_MEMORY, CORES)
MINNED = (HOST_AVAILABLE_MIN, FROM_NS)

# Hour routes: per entry, the route's name index + 1 (0: none), requests, service time, and the
# sampled requests' CPU time and service time.
RT_NAME, RT_REQUESTS, RT_SERVICE_NS, RT_CPU_NS, RT_CPU_WALL_NS = range(5)
ROUTE_WORDS = 5

_MINUTES_AT = HEADER_WORDS
_HOURS_AT = _MINUTES_AT + MINUTE_ROWS * ROW_WORDS
_ROUTES_AT = _HOURS_AT + HOUR_ROWS * ROW_WORDS
_NAMES_AT = _ROUTES_AT + HOUR_ROWS * TOP_ROUTES * ROUTE_WORDS  # in words; names are bytes
FILE_BYTES = _NAMES_AT * 8 + ROUTE_NAMES * NAME_BYTES


def fold(rows: Sequence[Sequence[int]], period: int) -> list[int]:
    """One row for ``period`` from several: sums, and the largest or smallest of the peaks."""
    if not rows:
        out = [0] * ROW_WORDS
        out[PERIOD] = period
        return out
    columns = list(zip(*rows, strict=True))
    out = [sum(column) for column in columns]
    out[PERIOD] = period
    for i in MAXED:
        out[i] = max(columns[i])
    for i in MINNED:
        out[i] = min([v for v in columns[i] if v], default=0)
    out[FLAGS] = functools.reduce(operator.or_, columns[FLAGS], 0)
    return out


class HistoryFile:
    """``history.wm`` in ``directory``: created at full size if missing, mapped for reading, and
    for writing with ``writable``."""

    def __init__(self, directory: Path, *, writable: bool = False) -> None:
        self.path = Path(directory) / FILE_NAME
        flags = os.O_RDWR if writable else os.O_RDONLY
        if writable:
            self._create()
        fd = open_nofollow(self.path, flags)
        try:
            if os.fstat(fd).st_size != FILE_BYTES:
                raise ValueError(
                    f"{self.path} is not a workermeter history file of this version "
                    f"({os.fstat(fd).st_size} bytes, not {FILE_BYTES}); move it away"
                )
            access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
            self._mm = mmap.mmap(fd, FILE_BYTES, access=access)
        finally:
            os.close(fd)
        self.words = memoryview(self._mm).cast("q")
        if self.words[H_MAGIC] != MAGIC or self.words[H_ROW_WORDS] != ROW_WORDS:
            self.close()
            raise ValueError(f"{self.path} is not a workermeter history file; move it away")

    def _create(self) -> None:
        if self.path.exists():
            return
        temp = self.path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
        fd = open_nofollow(temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        try:
            # Allocated now, not when a row is first written: a full disk shows at once.
            os.posix_fallocate(fd, 0, FILE_BYTES)
            head = [0] * HEADER_WORDS
            head[H_MAGIC], head[H_MINUTE_ROWS], head[H_HOUR_ROWS] = MAGIC, MINUTE_ROWS, HOUR_ROWS
            head[H_ROW_WORDS], head[H_TOP_ROUTES], head[H_ROUTE_NAMES] = (
                ROW_WORDS, TOP_ROUTES, ROUTE_NAMES,
            )  # fmt: skip
            os.pwrite(fd, struct.pack(f"<{HEADER_WORDS}q", *head), 0)
        finally:
            os.close(fd)
        try:
            os.link(temp, self.path)  # never over a file another process created meanwhile
        except FileExistsError:
            pass
        finally:
            os.unlink(temp)

    def close(self) -> None:
        self.words.release()
        self._mm.close()

    # ------------------------------------------------------------------------------- reading

    def _at(self, hourly: bool, period: int) -> int:
        if hourly:
            return _HOURS_AT + (period % HOUR_ROWS) * ROW_WORDS
        return _MINUTES_AT + (period % MINUTE_ROWS) * ROW_WORDS

    def row(self, period: int, *, hourly: bool = False) -> list[int] | None:
        """The row of ``period``, or None for a gap."""
        at = self._at(hourly, period)
        for _ in range(100):
            if self.words[at + PERIOD] != period:
                return None
            values = self.words[at : at + ROW_WORDS].tolist()
            if self.words[at + PERIOD] == period == values[PERIOD]:
                return values
        return None  # rewritten all the while: read it as a gap

    def many(self, first: int, last: int, *, hourly: bool = False) -> list[tuple[int, ...] | None]:
        """The rows of periods ``first`` to ``last - 1`` (None for a gap), read in bulk: each
        part of the ring they span in one read, then every row whose period word changed
        meanwhile read again by :meth:`row`."""
        size = HOUR_ROWS if hourly else MINUTE_ROWS
        base = _HOURS_AT if hourly else _MINUTES_AT
        out: list[tuple[int, ...] | None] = []
        period = first
        while period < last:
            slot = period % size
            n = min(last - period, size - slot)  # up to the end of the ring
            at = base + slot * ROW_WORDS
            block = self.words[at : at + n * ROW_WORDS].tolist()
            again = self.words[at + PERIOD : at + n * ROW_WORDS : ROW_WORDS].tolist()
            # One tuple a row, cut at C speed: the same iterator, ROW_WORDS times over.
            cut = zip(*[iter(block)] * ROW_WORDS, strict=True)
            for i, (row, check) in enumerate(zip(cut, again, strict=True)):
                p = period + i
                if row[PERIOD] == p == check:
                    out.append(row)
                elif p in (row[PERIOD], check):  # being written: read it on its own
                    alone = self.row(p, hourly=hourly)
                    out.append(None if alone is None else tuple(alone))
                else:
                    out.append(None)
            period += n
        return out

    def names(self) -> list[str]:
        used = min(self.words[H_NAMES_USED], ROUTE_NAMES)
        start = _NAMES_AT * 8
        raw = self._mm[start : start + used * NAME_BYTES]
        return [
            raw[i * NAME_BYTES : (i + 1) * NAME_BYTES].rstrip(b"\0").decode("utf-8", "replace")
            for i in range(used)
        ]

    def routes(self, hour: int, names: Sequence[str] | None = None) -> list[tuple[str, list[int]]]:
        """The busiest routes of ``hour`` ("route\\0method", values by RT_*), busiest first;
        ``names`` as :meth:`names` gives them, read once for many hours."""
        if self.row(hour, hourly=True) is None:
            return []
        names = self.names() if names is None else names
        at = _ROUTES_AT + (hour % HOUR_ROWS) * TOP_ROUTES * ROUTE_WORDS
        words = self.words[at : at + TOP_ROUTES * ROUTE_WORDS].tolist()
        found = []
        for i in range(0, TOP_ROUTES * ROUTE_WORDS, ROUTE_WORDS):
            entry = words[i : i + ROUTE_WORDS]
            if 0 < entry[RT_NAME] <= len(names):
                found.append((names[entry[RT_NAME] - 1], entry))
        return found

    # ------------------------------------------------------------------------------- writing

    def write_row(self, period: int, values: Sequence[int], *, hourly: bool = False) -> None:
        at = self._at(hourly, period)
        w = self.words
        w[at + PERIOD] = 0
        for i in range(1, ROW_WORDS):
            w[at + i] = values[i]
        w[at + PERIOD] = period
        w[H_WRITES] += 1

    @property
    def writes(self) -> int:
        """Rows written so far: what a reader keeps its readings by (see Status)."""
        return int(self.words[H_WRITES])

    def write_routes(self, hour: int, entries: Sequence[Sequence[int]]) -> None:
        """The hour's routes; written before the hour's row, which publishes them."""
        at = _ROUTES_AT + (hour % HOUR_ROWS) * TOP_ROUTES * ROUTE_WORDS
        for i in range(TOP_ROUTES):
            entry = entries[i] if i < len(entries) else (0,) * ROUTE_WORDS
            for j in range(ROUTE_WORDS):
                self.words[at + i * ROUTE_WORDS + j] = entry[j]

    def name_index(self, known: dict[str, int], key: str) -> int:
        """The index + 1 of a route name, appended if new; 0 when the table is full."""
        index = known.get(key)
        if index is not None:
            return index
        if not known:
            known.update((name, i + 1) for i, name in enumerate(self.names()))
            if key in known:
                return known[key]
        used = self.words[H_NAMES_USED]
        if used >= ROUTE_NAMES:
            return 0
        raw = key.encode()[: NAME_BYTES - 1]
        start = _NAMES_AT * 8 + used * NAME_BYTES
        self._mm[start : start + NAME_BYTES] = raw.ljust(NAME_BYTES, b"\0")
        self.words[H_NAMES_USED] = used + 1
        known[key] = used + 1
        return used + 1


# ----------------------------------------------------------------------------------- figures


def quantile(buckets: Sequence[int], q: float) -> float | None:
    """The q-quantile in seconds from coarse bucket counts, interpolated within its bucket as
    Prometheus's histogram_quantile does; None without observations."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(buckets):
        if count and seen + count >= rank:
            if i >= len(COARSE):
                return COARSE[-1]  # above the last bound: at least that
            low = COARSE[i - 1] if i else 0.0
            return low + (COARSE[i] - low) * (rank - seen) / count
        seen += count
    return COARSE[-1]


@dataclass(frozen=True)
class Row:
    """One minute (or hour) of a server instance, in the units people read."""

    start: float  # unix seconds
    seconds: float  # length of the period
    values: tuple[int, ...] | None  # the raw words; None for a gap

    @property
    def gap(self) -> bool:
        return self.values is None

    def _v(self, i: int) -> int:
        return 0 if self.values is None else self.values[i]

    @property
    def covered(self) -> float:
        return self._v(COVERED_NS) / 1e9

    @property
    def requests(self) -> int:
        return 0 if self.values is None else sum(self.values[REQUESTS : REQUESTS + 6])

    @property
    def errors(self) -> int:
        return self._v(REQUESTS + 4)

    def by_status(self) -> dict[str, int]:
        names = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")
        return {name: self._v(REQUESTS + i) for i, name in enumerate(names)}

    @property
    def rate(self) -> float | None:
        return self.requests / self.covered if self.covered else None

    @property
    def utilisation(self) -> float | None:
        """Event-loop utilisation for async workers, else busy slot-time over capacity. (Read
        from the words directly: the busiest of 8 days of minutes ranks 11,520 rows by it.)"""
        v = self.values
        if v is None:
            return None
        if v[LOOP_OBSERVED_NS]:
            return v[LOOP_BUSY_NS] / v[LOOP_OBSERVED_NS]
        return v[BUSY_NS] / v[CAPACITY_NS] if v[CAPACITY_NS] else None

    @property
    def busy_slots(self) -> float | None:
        """Mean slots busy (requests in flight) over the time covered."""
        return self._v(BUSY_NS) / self._v(COVERED_NS) if self._v(COVERED_NS) else None

    @property
    def all_busy_seconds(self) -> float:
        return self._v(ALL_BUSY_NS) / 1e9

    @property
    def peak_busy(self) -> int:
        return self._v(PEAK_BUSY)

    @property
    def slots(self) -> int:
        return self._v(SLOTS)

    @property
    def workers(self) -> int:
        return self._v(WORKERS)

    def _buckets(self, at: int) -> Sequence[int]:
        return (0,) * NCOARSE if self.values is None else self.values[at : at + NCOARSE]

    def queue_wait(self, q: float) -> float | None:
        return quantile(self._buckets(QUEUE_BUCKETS), q)

    @property
    def queue_wait_max(self) -> float | None:
        return self._v(QUEUE_MAX_NS) / 1e9 if self._v(QUEUE_COUNT) else None

    @property
    def queue_wait_mean(self) -> float | None:
        count = self._v(QUEUE_COUNT)
        return self._v(QUEUE_SUM_NS) / count / 1e9 if count else None

    def service_time(self, q: float) -> float | None:
        return quantile(self._buckets(SERVICE_BUCKETS), q)

    @property
    def service_mean(self) -> float | None:
        n = self.requests
        return self._v(SERVICE_SUM_NS) / n / 1e9 if n else None

    @property
    def cpu_share(self) -> float | None:
        wall = self._v(CPU_WALL_NS)
        return min(self._v(CPU_NS) / wall, 1.0) if wall else None

    @property
    def rss_max(self) -> int:
        return self._v(RSS_MAX)

    @property
    def uss_max(self) -> int:
        return self._v(USS_MAX)

    @property
    def backlog_max(self) -> int:
        return self._v(BACKLOG_MAX)

    @property
    def process_cpu(self) -> float | None:
        """CPU-seconds per second of the worker processes."""
        return self._v(PROCESS_CPU_NS) / self._v(COVERED_NS) if self._v(COVERED_NS) else None

    @property
    def cores(self) -> int:
        return self._v(CORES)

    @property
    def host_memory(self) -> int:
        return self._v(HOST_MEMORY)

    @property
    def host_available_min(self) -> int:
        return self._v(HOST_AVAILABLE_MIN)

    @property
    def spread(self) -> bool:
        return bool(self._v(FLAGS) & SPREAD)

    def as_dict(self) -> dict[str, object]:
        """The row as JSON: ``time`` in ISO 8601 UTC, amounts per row, None where unknown.

        Read from the words directly, not through the properties: the status page's JSON for 8
        days makes a thousand of these."""
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.start))
        v = self.values
        if v is None:
            return {**_GAP, "time": when, "seconds": self.seconds}
        covered = v[COVERED_NS]
        requests = sum(v[REQUESTS : REQUESTS + 6])
        queue = v[QUEUE_BUCKETS : QUEUE_BUCKETS + NCOARSE]
        service = v[SERVICE_BUCKETS : SERVICE_BUCKETS + NCOARSE]
        return {
            "time": when,
            "seconds": self.seconds,
            "gap": False,
            "covered_seconds": covered / 1e9,
            "requests": requests,
            "requests_per_second": requests / covered * 1e9 if covered else None,
            "errors": v[REQUESTS + 4],
            "utilisation": self.utilisation,
            "busy_slots": v[BUSY_NS] / covered if covered else None,
            "all_busy_seconds": v[ALL_BUSY_NS] / 1e9,
            "peak_busy": v[PEAK_BUSY],
            "slots": v[SLOTS],
            "workers": v[WORKERS],
            "queue_wait_p50": quantile(queue, 0.5),
            "queue_wait_p95": quantile(queue, 0.95),
            "queue_wait_max": v[QUEUE_MAX_NS] / 1e9 if v[QUEUE_COUNT] else None,
            "service_time_p50": quantile(service, 0.5),
            "service_time_p95": quantile(service, 0.95),
            "service_time_mean": v[SERVICE_SUM_NS] / requests / 1e9 if requests else None,
            "cpu_share": self.cpu_share,
            "process_cpu": v[PROCESS_CPU_NS] / covered if covered else None,
            "rss_max": v[RSS_MAX],
            "uss_max": v[USS_MAX],
            "backlog_max": v[BACKLOG_MAX],
            "host_memory": v[HOST_MEMORY],
            "host_available_min": v[HOST_AVAILABLE_MIN],
            "cores": v[CORES],
            "spread": bool(v[FLAGS] & SPREAD),
        }


_GAP: dict[str, object] = {
    key: None
    for key in Row(0.0, 60.0, (0,) * ROW_WORDS).as_dict()
    if key not in ("time", "seconds")
}
_GAP["gap"] = True  # a row nobody recorded: every figure unknown, none of them zero


def oldest_minute(now: float) -> int:
    """The start (unix seconds) of the oldest minute row the ring still holds at ``now``."""
    return (math.floor(now / 60) - MINUTE_ROWS + 1) * 60


def rows(file: HistoryFile, start: float, end: float, *, hourly: bool = False) -> Iterator[Row]:
    """Every minute (or hour) that begins in [start, end), unix seconds, gaps included."""
    step = 3600 if hourly else 60
    first, last = math.floor(start / step), math.ceil(end / step)
    for period, values in zip(range(first, last), file.many(first, last, hourly=hourly),
                              strict=True):  # fmt: skip
        yield Row(period * step, float(step), values)


def series(file: HistoryFile, start: float, end: float, step: int) -> list[Row]:
    """Rows of ``step`` seconds (a multiple of 60) that begin in [start, end), gaps included.

    A row of several minutes is their minute rows folded; an hour that no minute row holds any
    more (older than 8 days) is its hour row. A period with nothing recorded is a gap.
    """
    if step <= 0 or step % 60:
        raise ValueError(f"step must be a positive number of minutes in seconds, got {step!r}")
    if step == 60:
        return list(rows(file, start, end))
    minutes = step // 60
    oldest = math.ceil(end / 60) - MINUTE_ROWS + 1  # older minute rows have been overwritten
    kept = -(-oldest // minutes)  # the first period whose every minute is still kept
    first, last = math.floor(start / step), math.ceil(end / step)
    out = []
    for period in range(first, min(kept, last)):
        values = file.row(period, hourly=True) if step == 3600 else None
        out.append(Row(period * step, float(step), None if values is None else tuple(values)))
    if max(first, kept) < last:
        out += grouped(list(rows(file, max(first, kept) * step, last * step)), step)
    return out


def grouped(found: Sequence[Row], step: int) -> list[Row]:
    """Consecutive minute rows, the first at the start of a period of ``step`` seconds, folded
    into one row per period (a gap where all its minutes are)."""
    n = step // 60
    out = []
    for i in range(0, len(found), n):
        part = found[i : i + n]
        period = round(part[0].start) // step
        present = [row.values for row in part if row.values is not None]
        values = tuple(fold(present, period)) if present else None
        out.append(Row(period * step, float(step), values))
    return out


def busiest(found: Sequence[Row], n: int = 10) -> list[Row]:
    """The ``n`` busiest rows: by utilisation, then seconds with every slot busy, then queue
    wait; gaps and rows without requests or capacity left out."""

    def cheap(row: Row) -> tuple[float, float]:
        return (row.utilisation or 0.0, row.all_busy_seconds)

    def key(row: Row) -> tuple[float, float, float]:
        return (*cheap(row), row.queue_wait(0.95) or 0.0)

    ranked = [row for row in found if not row.gap and (row.requests or row.utilisation)]
    if len(ranked) > n:
        # The queue wait only orders rows tied on the rest: it is worked out for those alone.
        keys = [cheap(row) for row in ranked]
        bar = heapq.nlargest(n, keys)[-1]
        ranked = [row for row, k in zip(ranked, keys, strict=True) if k >= bar]
    ranked.sort(key=key, reverse=True)
    return ranked[:n]
