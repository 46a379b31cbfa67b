"""Who writes the history, and how: one process of a server instance at a time, each minute the
difference of the store's totals since the last row.

Every process that can (the gunicorn hooks' arbiter, ``workermeter serve``, and every worker with
the middleware) runs a candidate (:mod:`workermeter.history_candidate`); the one that holds a
lock on the history is the writer, and calls :class:`Writer` here.

The writer changing never counts a minute twice, because the counts are the store's totals
(which never go backwards: the dead's are kept in its archive) and each row is the difference
from a *cursor*: the totals as of the end of the last row written, saved in
``history-cursor.json`` (replaced atomically) after the row. A new writer starts from the saved
cursor; if the old one died between writing a row and saving the cursor, the new one writes that
row again, from the same cursor, over it. A writer that stops saves a cursor inside the current
minute, and the next row of that minute adds to what is there.

When several minutes passed without a writer (none could run, or the server was stopped), the
counts of those minutes are shared out evenly over as many of them as the longest-lived worker
was alive for, and those rows are flagged ``SPREAD``; the earlier ones stay gaps. Totals that
went backwards (the store was made anew, after a reboot under ``/dev/shm``) start from zero.
"""

from __future__ import annotations

import array
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import buckets
from . import history as h
from . import record_values as rv
from .layout import L_BUSY, L_OBSERVED, PROCESS, ROUTE
from .metrics import BUCKETS_NS
from .snapshot import Snapshot
from .store import Store

log = logging.getLogger("workermeter")

CURSOR = "history-cursor.json"
FRESH_NS = 10 * h.MINUTE  # a store whose oldest worker is younger has its counts from the start
ENV_HISTORY = "WORKERMETER_HISTORY_DIR"


def history_directory(store_directory: Path) -> Path:
    """Where the history of the instance whose store is ``store_directory`` lives:
    ``$WORKERMETER_HISTORY_DIR`` when set (a directory that survives reboots), else the store."""
    env = os.environ.get(ENV_HISTORY)
    return Path(env) if env else Path(store_directory)


# ------------------------------------------------------------------------------------ totals


@dataclass
class Totals:
    """The store's cumulative counts at one moment, as far as the history needs them."""

    wall_ns: int
    requests: list[int] = field(default_factory=lambda: [0] * 6)
    service: list[int] = field(default_factory=lambda: [0] * rv.NBUCKETS)
    service_sum: int = 0
    queue: list[int] = field(default_factory=lambda: [0] * rv.NBUCKETS)
    queue_sum: int = 0
    cpu: int = 0
    cpu_wall: int = 0
    # slot -> ABOVE[0..top] (trailing zeros cut), its capacity, loop busy and observed ns
    slots: dict[str, list[int]] = field(default_factory=dict)
    capacities: dict[str, int] = field(default_factory=dict)
    loops: dict[str, list[int]] = field(default_factory=dict)
    # "route\0method" -> requests, service ns, sampled CPU ns, sampled service ns
    routes: dict[str, list[int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Totals:
        return cls(**data)


def totals(snap: Snapshot, wall_ns: int) -> Totals:
    t = Totals(wall_ns)
    found = []
    for (kind, key), values in snap.records.items():
        if kind != ROUTE:
            continue
        if len(values) < rv.ROUTE_VALUES:
            values = values + [0] * (rv.ROUTE_VALUES - len(values))
        found.append(values)
        t.routes[key] = [sum(values[:6]), values[rv.R_SUM], values[rv.R_CPU], values[rv.R_CPU_WALL]]
    if found:  # the routes added up column by column
        sums = [sum(column) for column in zip(*found, strict=False)]  # all padded to length
        t.requests = sums[:6]
        t.service = buckets.ROUTE.classic(sums[rv.R_DURATION : rv.R_DURATION + rv.ROUTE_CELLS])
        t.service_sum, t.cpu, t.cpu_wall = sums[rv.R_SUM], sums[rv.R_CPU], sums[rv.R_CPU_WALL]
    process = snap.records.get((PROCESS, ""), [])
    process = process + [0] * (rv.PROCESS_VALUES - len(process))
    t.queue = buckets.FINE.classic(process[rv.P_QUEUE : rv.P_QUEUE + rv.FINE_CELLS])
    t.queue_sum = process[rv.P_QUEUE_SUM]
    live = {w.slot: w.capacity for w in snap.workers}
    for slot, above in snap.levels.items():
        # Up to the highest level reached (zeros above it), found at C speed: of 1,025 levels
        # a worker of a few slots reaches a few.
        used = (len(array.array("q", above).tobytes().rstrip(b"\0")) + 7) // 8
        t.slots[str(slot)] = list(above[: max(used, 1)])
        t.capacities[str(slot)] = live.get(slot) or snap.capacities.get(slot, 0)
    for slot, values in snap.loops.items():
        t.loops[str(slot)] = [values[L_BUSY], values[L_OBSERVED]]
    return t


def _minus(a: list[int], b: list[int]) -> list[int]:
    return [max(x - (b[i] if i < len(b) else 0), 0) for i, x in enumerate(a)]


def went_back(now: Totals, before: Totals) -> bool:
    """Whether ``now`` cannot follow ``before``: the store was made anew."""
    if sum(now.requests) < sum(before.requests):
        return True
    return any(
        now.slots.get(slot, [0])[0] < above[0] for slot, above in before.slots.items() if above
    )


@dataclass
class Gauges:
    """What the writer read of the processes and the host during a minute."""

    rss_max: int = 0
    uss_max: int = 0
    backlog_max: int = 0
    process_cpu_ns: int = 0
    host_memory: int = 0
    host_available_min: int = 0
    cores: int = 0


def delta_row(now: Totals, before: Totals, snap: Snapshot, gauges: Gauges) -> list[int]:
    """The counts between two totals as a row (its period word left 0)."""
    row = [0] * h.ROW_WORDS
    covered = max(now.wall_ns - before.wall_ns, 0)
    row[h.COVERED_NS] = covered
    row[h.FROM_NS] = before.wall_ns
    for i, v in enumerate(_minus(now.requests, before.requests)):
        row[h.REQUESTS + i] = v
    for fine, v in enumerate(_minus(now.service, before.service)):
        row[h.SERVICE_BUCKETS + h.FINE_TO_COARSE[fine]] += v
    row[h.SERVICE_SUM_NS] = max(now.service_sum - before.service_sum, 0)
    queue = _minus(now.queue, before.queue)
    for fine, v in enumerate(queue):
        row[h.QUEUE_BUCKETS + h.FINE_TO_COARSE[fine]] += v
    row[h.QUEUE_COUNT] = sum(queue)
    row[h.QUEUE_SUM_NS] = max(now.queue_sum - before.queue_sum, 0)
    reached = max((i for i, v in enumerate(queue) if v), default=-1)
    if reached >= 0:
        row[h.QUEUE_MAX_NS] = BUCKETS_NS[min(reached, len(BUCKETS_NS) - 1)]
    row[h.CPU_NS] = max(now.cpu - before.cpu, 0)
    row[h.CPU_WALL_NS] = max(now.cpu_wall - before.cpu_wall, 0)

    free_share = 0.0  # sum over workers of the share of the time each had a slot free
    counted = False
    for slot, above in now.slots.items():
        d = _minus(above, before.slots.get(slot, []))
        if not d or d[0] <= 0:
            continue  # not alive in this period
        capacity = now.capacities.get(slot, 0)
        row[h.BUSY_NS] += sum(d[1:])
        row[h.PEAK_BUSY] += max((k for k, v in enumerate(d) if v and k), default=0)
        if capacity:
            row[h.CAPACITY_NS] += capacity * d[0]
            full = d[capacity] if capacity < len(d) else 0
            free_share += 1 - full / covered if covered else 1
            counted = True
    if counted and covered:
        row[h.ALL_BUSY_NS] = round(max(0.0, 1 - free_share) * covered)
    for slot, (busy, observed) in now.loops.items():
        b0, o0 = before.loops.get(slot, [0, 0])
        row[h.LOOP_BUSY_NS] += max(busy - b0, 0)
        row[h.LOOP_OBSERVED_NS] += max(observed - o0, 0)
    row[h.SLOTS] = sum(w.capacity for w in snap.workers)
    row[h.WORKERS] = len(snap.workers)
    row[h.RSS_MAX], row[h.USS_MAX] = gauges.rss_max, gauges.uss_max
    row[h.BACKLOG_MAX] = gauges.backlog_max
    row[h.PROCESS_CPU_NS] = gauges.process_cpu_ns
    row[h.HOST_MEMORY], row[h.HOST_AVAILABLE_MIN] = gauges.host_memory, gauges.host_available_min
    row[h.CORES] = gauges.cores
    return row


def _share(row: list[int], n: int) -> list[list[int]]:
    """``row`` shared out over ``n`` rows: amounts divided (the remainder to the last), peaks
    and gauges kept in each."""
    out = [list(row) for _ in range(n)]
    for i in range(1, h.ROW_WORDS):
        if i in h.MAXED or i in h.MINNED or i == h.FLAGS:
            continue
        part, rest = divmod(row[i], n)
        for k in range(n):
            out[k][i] = part + (rest if k == n - 1 else 0)
    start = row[h.FROM_NS]
    for each in out:
        each[h.FLAGS] |= h.SPREAD
        each[h.FROM_NS] = start
        start += each[h.COVERED_NS]
    return out


def with_earlier_part(old: list[int] | None, new: list[int]) -> list[int]:
    """``new``, a period's counts from its ``FROM_NS``, with ``old`` added when it is an earlier
    part of the same period: what a writer wrote before it stopped in the period, or a server
    before it restarted. An ``old`` that reaches past where ``new`` begins is the same part
    written before (its writer died before saving its cursor): ``new`` replaces it."""
    if old is None or old[h.PERIOD] != new[h.PERIOD]:
        return new
    if old[h.FROM_NS] + old[h.COVERED_NS] > new[h.FROM_NS]:
        return new
    return h.fold([old, new], old[h.PERIOD])


def top_routes(now: Totals, before: dict[str, list[int]], n: int) -> list[tuple[str, list[int]]]:
    """The ``n`` routes with the most service time between two route totals."""
    deltas = [(key, _minus(values, before.get(key, []))) for key, values in now.routes.items()]
    deltas = [(k, d) for k, d in deltas if d[0] or d[1]]
    deltas.sort(key=lambda kd: (-kd[1][1], kd[0]))
    return deltas[:n]


# ------------------------------------------------------------------------------------ writer


class Writer:
    """Writes the rows of the minutes (and hours) that have ended. Not thread-safe: only the
    candidate holding the lock calls it."""

    def __init__(
        self,
        store: Store,
        directory: Path,
        *,
        wall_clock: Callable[[], float] = time.time,
        sample: Callable[[Snapshot], Gauges | None] | None = None,
    ) -> None:
        self.store = store
        self.directory = Path(directory)
        self.file = h.HistoryFile(self.directory, writable=True)
        self.wall_clock = wall_clock
        self._sample = sample
        self._names: dict[str, int] = {}
        self.gauges = Gauges()
        self._cpu_by_pid: dict[int, float] = {}
        state = self._load()
        self.cursor: Totals | None = state[0]
        self.hour_routes: dict[str, list[int]] = state[1]
        self.hour: int | None = state[2]
        self._checked = False  # whether the store's totals follow on from the cursor

    # The cursor: the totals the last row counted up to, the routes' totals at the start of the
    # hour, and that hour.
    def _load(self) -> tuple[Totals | None, dict[str, list[int]], int | None]:
        try:
            data = json.loads((self.directory / CURSOR).read_text())
            return Totals.from_json(data["totals"]), data["hour_routes"], data["hour"]
        except FileNotFoundError:
            return None, {}, None
        except (ValueError, KeyError, TypeError) as e:
            log.warning("workermeter: history cursor unreadable (%s); starting a new one", e)
            return None, {}, None

    def _save(self) -> None:
        assert self.cursor is not None
        data = {"totals": self.cursor.to_json(), "hour_routes": self.hour_routes, "hour": self.hour}
        temp = self.directory / f".{CURSOR}.{os.getpid()}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, separators=(",", ":")))
        os.replace(temp, self.directory / CURSOR)

    def sample(self, snap: Snapshot | None = None) -> None:
        """Read the processes, the host and the backlog once: their peaks go in the next row."""
        if self._sample is None:
            return
        got = self._sample(snap if snap is not None else self.store.collect())
        if got is None:
            return
        g = self.gauges
        g.rss_max = max(g.rss_max, got.rss_max)
        g.uss_max = max(g.uss_max, got.uss_max)
        g.backlog_max = max(g.backlog_max, got.backlog_max)
        g.process_cpu_ns += got.process_cpu_ns
        g.host_memory = max(g.host_memory, got.host_memory)
        if got.host_available_min:
            g.host_available_min = min(g.host_available_min or got.host_available_min,
                                       got.host_available_min)  # fmt: skip
        g.cores = max(g.cores, got.cores)

    def due(self) -> bool:
        """Whether :meth:`tick` has work: a minute ended since the cursor, or the cursor is yet
        to be checked against the store (none yet, or one a writer before this one saved)."""
        minute_now = int(self.wall_clock() * 1e9) // h.MINUTE
        return not self._checked or self.cursor is None or (
            self.cursor.wall_ns // h.MINUTE < minute_now
        )  # fmt: skip

    def tick(self, *, final: bool = False, snap: Snapshot | None = None) -> int:
        """Write every minute that ended since the cursor (with ``final``, also the one under
        way, up to now), from ``snap`` if given, else from the store read now; returns the rows
        written."""
        if not final and not self.due():
            return 0  # nothing to read the store for
        now_ns = int(self.wall_clock() * 1e9)
        minute_now = now_ns // h.MINUTE
        snap = snap if snap is not None else self.store.collect()
        if self.cursor is None:
            if _alive_ns(snap) <= FRESH_NS:
                # A server that has just started: its first requests, made before any candidate
                # took the lock, count from when its oldest worker started.
                self.cursor = Totals(now_ns - _alive_ns(snap))
                self.hour_routes, self.hour = {}, self.cursor.wall_ns // h.HOUR
                self._save()
            else:
                # A store older than its history (history switched on, a new history
                # directory): what it counted before has no minute to go in.
                self.cursor = totals(snap, now_ns)
                self.hour_routes, self.hour = dict(self.cursor.routes), now_ns // h.HOUR
                self._save()
                return 0
        # Read a moment after the minute ended, the totals stand for its end (or, with final,
        # for now): a request of the first second of the next minute may count in this one.
        end_ns = now_ns if final else minute_now * h.MINUTE
        last = minute_now if final else minute_now - 1
        now_totals = totals(snap, end_ns)
        self._checked = True
        if went_back(now_totals, self.cursor):
            # A store made anew (the server restarted, its history kept in a directory of its
            # own): count from zero, as of when its oldest worker started.
            self.cursor = Totals(now_ns - _alive_ns(snap))
            self.hour_routes = {}
            self._save()  # the status page's minute under way counts from it
        cursor_minute = self.cursor.wall_ns // h.MINUTE
        if cursor_minute >= minute_now and not final:
            return 0
        self.sample(snap)
        row = delta_row(now_totals, self.cursor, snap, self.gauges)
        self.gauges = Gauges()
        span = last - cursor_minute + 1
        if span == 1:
            written = self._put(last, row)
        else:
            alive_minutes = -(-_longest(now_totals, self.cursor) // h.MINUTE)
            n = max(1, min(span, alive_minutes, h.MINUTE_ROWS))
            parts = _share(row, n)
            written = sum(self._put(last - n + 1 + k, part) for k, part in enumerate(parts))
        self._roll_hours(now_totals, minute_now - 1)  # hours whose every minute has ended
        self.cursor = now_totals
        self._save()
        return written

    def _put(self, minute: int, row: list[int]) -> int:
        row = list(row)
        row[h.PERIOD] = minute
        row = with_earlier_part(self.file.row(minute), row)
        self.file.write_row(minute, row)
        return 1

    def _roll_hours(self, now: Totals, last_minute: int) -> None:
        """Fold every hour that ended by ``last_minute`` into its hour row, with its busiest
        routes (over the first of several hours that ended at once: the later ones have none)."""
        next_hour = (last_minute + 1) // 60
        if self.hour is None:
            self.hour = next_hour
        while self.hour < next_hour:
            hour = self.hour
            minutes = [self.file.row(m) for m in range(hour * 60, hour * 60 + 60)]
            present = [m for m in minutes if m is not None]
            if present:
                entries = []
                for key, d in top_routes(now, self.hour_routes, h.TOP_ROUTES):
                    index = self.file.name_index(self._names, key)
                    if index:
                        entries.append([index, *d])
                self.file.write_routes(hour, entries)
                self.file.write_row(hour, h.fold(present, hour), hourly=True)
            self.hour_routes = dict(now.routes)
            self.hour = hour + 1


def _alive_ns(snap: Snapshot) -> int:
    return max((above[0] for above in snap.levels.values() if above), default=0)


def _longest(now: Totals, before: Totals) -> int:
    """The longest time one worker slot was observed between two totals, ns."""
    return max(
        (a[0] - (before.slots.get(s) or [0])[0] for s, a in now.slots.items() if a), default=0
    )
