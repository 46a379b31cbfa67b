"""What the status page shows, as JSON: now, the history of a range, the busiest minutes and
routes, the live workers and the suggestion. The page (:mod:`workermeter.status_page`) and
``workermeter history --url`` both read it.

Served wherever ``/metrics`` is, at ``/metrics/status`` (the page) and ``/metrics/status.json``
(this), from the store's history file and the store itself: the minute under way is the
difference between the store's totals now and the history writer's cursor.
"""

from __future__ import annotations

import datetime
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from . import history as h
from . import history_writer as hw
from .capacity import RESERVE, Targets, suggest
from .history_source import measure_history
from .measurement import SourceError
from .options import status_paths
from .snapshot import Snapshot
from .store import Store

# name -> (seconds, seconds a row); 8 days of minutes are drawn as 10-minute rows
RANGES = {"1h": (3600, 60), "24h": (86400, 60), "8d": (8 * 86400, 600), "90d": (90 * 86400, 3600)}
DEFAULT_RANGE = "1h"
BUSIEST = 10
ROUTES = 20
MAX_ROWS = 20_000  # rows one answer may hold
# Verdict thresholds: the alert rules' (80 % of slots, 60 % of an event loop), a quarter of the
# time with every slot taken, the host's CPUs 90 % used, a tenth of its memory left.
SATURATED_ALL_BUSY = 0.25
CPU_BOUND = 0.9
MEMORY_LEFT = 0.1


class QueryError(ValueError):
    """A query string the JSON cannot answer: the message says what to pass."""


def parse_query(query: str, now: float) -> tuple[str | None, float, float, int]:
    """(range name or None, start, end, step) from ``range=24h`` or ``from=&to=[&step=]``
    (unix seconds)."""
    q = {k: v[-1] for k, v in parse_qs(query).items()}
    if "from" in q or "to" in q:
        try:
            start = float(q["from"])
            end = float(q.get("to", now))
        except (KeyError, ValueError):
            raise QueryError("from= and to= must be unix seconds, from= given") from None
        if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
            raise QueryError("to= must be after from=")
        step = _step(q.get("step"), end - start)
        if (end - start) / step > MAX_ROWS:
            raise QueryError(f"more than {MAX_ROWS} rows: pass a larger step=")
        return None, start, end, step
    name = q.get("range", DEFAULT_RANGE)
    if name not in RANGES:
        raise QueryError(f"range= must be one of {', '.join(RANGES)}, got {name!r}")
    seconds, step = RANGES[name]
    end = (math.floor(now / step) + 1) * step  # the row under way included
    return name, end - seconds, end, step


def _step(raw: str | None, span: float) -> int:
    if raw is None:
        return 60 if span <= 3 * 3600 else 3600
    try:
        step = int(raw)
    except ValueError:
        step = 0
    if step <= 0 or step % 60:
        raise QueryError(f"step= must be a positive multiple of 60 seconds, got {raw!r}")
    return step


def _iso(t: float) -> str:
    when = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    return when.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Recorded:
    """What an answer takes from the history file, without the minute under way."""

    key: tuple[int, float, float, int, int]  # rows written, the range, the minute
    rows: list[dict[str, Any]]
    busiest: list[h.Row]  # of the range's recorded minutes, one more than shown
    routes: dict[str, list[int]]  # of the range's hours that have ended
    suggestion: dict[str, Any]


class Status:
    """The status of the server instance whose store ``store`` gives, read at each call.

    ``processes`` reads the workers' memory and CPU (a ``ProcessUsage``), ``clock`` the wall
    time: both parameters so that tests can fix them.
    """

    def __init__(
        self,
        store: Callable[[], Store],
        *,
        processes: Callable[[list[int]], dict[int, tuple[int, int, float]]] | None = None,
        host: Callable[[], tuple[int, int, int]] | None = None,
        clock: Callable[[], float] = time.time,
        targets: Targets | None = None,
    ) -> None:
        from .usage import ProcessUsage, host_usage

        self._store = store
        self._processes = processes or ProcessUsage()
        self._host = host or host_usage
        self.clock = clock
        self.targets = targets or Targets()
        self._file: h.HistoryFile | None = None
        self._kept: Recorded | None = None

    def directory(self) -> Path:
        return hw.history_directory(self._store().directory)

    def _history(self) -> h.HistoryFile | None:
        if self._file is None:
            try:
                self._file = h.HistoryFile(self.directory())
            except FileNotFoundError:
                return None
        return self._file

    def data(self, query: str = "") -> dict[str, Any]:
        """The whole answer to ``/metrics/status.json?<query>``.

        :raises QueryError: if the query asks for what cannot be answered.
        """
        now = self.clock()
        name, start, end, step = parse_query(query, now)
        snap = self._store().collect()
        usages = self._processes([w.pid for w in snap.workers])
        file = self._history()
        under_way = self._under_way(file, snap, now, usages)
        recent: list[h.Row] = []  # the last 15 minutes and the one under way
        if file is not None:
            recent = h.series(file, (math.floor(now / 60) - 15) * 60, now, 60)
        kept = self._recorded(file, start, end, step, now)
        rows, busiest = kept.rows, kept.busiest
        routes = {key: list(values) for key, values in kept.routes.items()}
        if under_way is not None:
            recent = _with(recent, under_way)
            i = round((under_way.start - math.floor(start / step) * step) / step)
            if step == 60 and 0 <= i < len(rows):  # its earlier part, if any, is in it
                rows = [*rows[:i], under_way.as_dict(), *rows[i + 1 :]]
            # The file's part of the minute under way is in it: not twice in the ranking.
            earlier = [row for row in busiest if row.start != under_way.start]
            busiest = h.busiest([*earlier, under_way], BUSIEST)
        busiest = busiest[:BUSIEST]
        if file is not None and end > now - 3600:
            self._routes_under_way(snap, routes)
        return {
            "version": 1,
            "generated": _iso(now),
            "range": {
                "name": name, "from": _iso(start), "to": _iso(end), "step": step,
                "ranges": list(RANGES),
            },
            "history": self._about(file),
            "now": self._now(snap, recent),
            "rows": rows,
            "busiest": [row.as_dict() for row in busiest],
            "routes": ranked_routes(routes),
            "workers": self._workers(snap, usages, now),
            "suggestion": kept.suggestion,
        }

    def _recorded(
        self, file: h.HistoryFile | None, start: float, end: float, step: int, now: float
    ) -> Recorded:
        """What the file holds for the range: kept while no row is written and the minute is
        the same, since working it out for 8 days of minutes takes a fifth of a second and the
        page asks again every 30 s. The minute under way is not in it (see :meth:`data`)."""
        minute = math.floor(now / 60)
        key = (-1 if file is None else file.writes, start, end, step, minute)
        if self._kept is not None and self._kept.key == key:
            return self._kept
        rows: list[h.Row] = []
        minutes: list[h.Row] = []  # the range's, within the last 8 days
        routes: dict[str, list[int]] = {}
        oldest = h.oldest_minute(now)
        if file is not None:
            minutes = h.series(file, max(start, oldest), max(end, oldest), 60)
            if start >= oldest and step > 60 and start % step == 0:
                rows = h.grouped(minutes, step)  # the same minutes, not read twice
            else:
                rows = h.series(file, start, end, step)
            routes = hour_routes(file, start, end)
        self._kept = Recorded(
            key=key,
            rows=[row.as_dict() for row in rows],
            busiest=h.busiest(minutes, BUSIEST + 1),  # one more, for the minute under way
            routes=routes,
            suggestion=self._suggestion(file, None if start < oldest else minutes, start, end),
        )
        return self._kept

    def json(self, query: str = "") -> bytes:
        return dumps(self.data(query))

    def _about(self, file: h.HistoryFile | None) -> dict[str, Any]:
        directory = self.directory()
        if file is None:
            message = "no history yet: its writer creates it within seconds of the server's start"
            return {"kept": False, "directory": str(directory), "message": message}
        return {"kept": True, "directory": str(directory), "message": None}

    def _under_way(
        self,
        file: h.HistoryFile | None,
        snap: Snapshot,
        now: float,
        usages: dict[int, tuple[int, int, float]],
    ) -> h.Row | None:
        """The minute under way, from the writer's cursor to now; None when the cursor is
        further back than the minute before (no writer, or one that has fallen behind).

        Just after a minute ends, before the writer has written it, the cursor is still in that
        minute: what was counted since goes in it, as the writer will write it (with the first
        moments of the next minute), rather than out of sight until then."""
        if file is None:
            return None
        try:
            cursor = json.loads((self.directory() / hw.CURSOR).read_text())
            before = hw.Totals.from_json(cursor["totals"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        minute = before.wall_ns // h.MINUTE
        if not 0 <= math.floor(now / 60) - minute <= 1:
            return None
        gauges = hw.Gauges()
        for rss, uss, _ in usages.values():
            gauges.rss_max, gauges.uss_max = max(gauges.rss_max, rss), max(gauges.uss_max, uss)
        gauges.host_memory, gauges.host_available_min, gauges.cores = self._host()
        current = hw.totals(snap, int(now * 1e9))
        if hw.went_back(current, before):
            return None  # a new store, which the writer has yet to count from
        values = hw.delta_row(current, before, snap, gauges)
        values[h.PERIOD] = minute
        values = hw.with_earlier_part(file.row(minute), values)  # as the writer will write it
        return h.Row(minute * 60.0, 60.0, tuple(values))

    def _now(self, snap: Snapshot, minutes: Sequence[h.Row]) -> dict[str, Any]:
        busy = sum(max(w.level, 0) for w in snap.workers)
        slots = sum(w.capacity for w in snap.workers)
        out: dict[str, Any] = {"busy": busy, "slots": slots, "workers": len(snap.workers)}
        for n in (1, 5, 15):
            window = _fold(minutes[-(n + 1) :])  # the last n minutes and the one under way
            out[f"utilisation_{n}m"] = window.utilisation if window is not None else None
        window = _fold(minutes[-6:])
        out["queue_wait_p95_5m"] = window.queue_wait(0.95) if window is not None else None
        out["verdict"], out["verdict_reason"] = self.verdict(window)
        return out

    def verdict(self, window: h.Row | None) -> tuple[str, str]:
        """One word for the last 5 minutes, and why: memory-bound, CPU-bound, saturated or ok
        (in that order: more workers do not help the first two)."""
        if window is None or window.gap:
            return "unknown", "nothing recorded in the last 5 minutes"
        memory, left = window.host_memory, window.host_available_min
        if memory and left and left < MEMORY_LEFT * memory:
            return "memory-bound", f"the host had {left / memory:.0%} of its memory left"
        cpu, cores = window.process_cpu, window.cores
        if cpu is not None and cores and cpu >= CPU_BOUND * cores:
            return "CPU-bound", f"the workers used {cpu:.1f} of the host's {cores} CPUs"
        loops = bool(window.values and window.values[h.LOOP_OBSERVED_NS])
        target = self.targets.loop_utilisation if loops else self.targets.utilisation
        used = window.utilisation
        if used is not None and used >= target:
            what = "event loops" if loops else "slots"
            return "saturated", f"the {what} were {used:.0%} busy (above {target:.0%})"
        share = window.all_busy_seconds / window.covered if window.covered else 0.0
        if not loops and share >= SATURATED_ALL_BUSY:
            return "saturated", f"every slot was busy {share:.0%} of the time"
        if used is None:
            return "ok", "no request in the last 5 minutes"
        return "ok", f"{used:.0%} busy"

    def _routes_under_way(self, snap: Snapshot, sums: dict[str, list[int]]) -> None:
        try:
            cursor = json.loads((self.directory() / hw.CURSOR).read_text())
            hour_routes = cursor["hour_routes"]
            if cursor["hour"] != math.floor(self.clock() / 3600):
                return
        except (OSError, ValueError, KeyError, TypeError):
            return
        for key, d in hw.top_routes(hw.totals(snap, 0), hour_routes, ROUTES):
            _add(sums, key, d)

    def _workers(
        self, snap: Snapshot, usages: dict[int, tuple[int, int, float]], now: float
    ) -> list[dict[str, Any]]:
        out = []
        for w in sorted(snap.workers, key=lambda w: w.slot):
            observed = w.above_ns[0] if w.above_ns else 0
            busy = sum(w.above_ns[1:])
            rss, uss, cpu = usages.get(w.pid, (0, 0, 0.0))
            out.append({
                "slot": w.slot, "pid": w.pid, "age_seconds": max(now - w.start_wall, 0.0),
                "requests": w.requests, "in_flight": max(w.level, 0), "slots": w.capacity,
                "busy_share": busy / observed / w.capacity if observed and w.capacity else None,
                "rss": rss or None, "uss": uss or None, "cpu_seconds": cpu,
            })  # fmt: skip
        return out

    def _suggestion(
        self, file: h.HistoryFile | None, minutes: list[h.Row] | None, start: float, end: float
    ) -> dict[str, Any]:
        """``workermeter suggest --history`` over the range: from its recorded ``minutes``
        when it is within the last 8 days, else from its hours (the minute under way, partly
        counted, is left out)."""
        from .cli.suggest import explain, setting

        if file is None:
            return {"error": "no history yet"}
        found = minutes if minutes else h.series(file, start, end, 3600)
        try:
            measured = measure_history(found, what=f"{_iso(start)} to {_iso(end)}")
            answer = suggest(measured.workload, measured.machine, self.targets)
        except (SourceError, ValueError) as e:
            return {"error": str(e)}
        machine = measured.machine
        workers = machine.processes or 1
        free = machine.memory_total - machine.reserve_system - machine.reserve_other
        return {
            "setting": setting(answer),
            "processes": answer.processes,
            "threads": answer.threads,
            "machines": answer.machines,
            "event_loops": answer.event_loops,
            "lower_bound": answer.lower_bound,
            "reasons": list(answer.reasons),
            "notes": list(measured.notes),
            "text": explain(measured, answer),
            "memory_ceiling_per_worker": max(free // workers, 0),
            "reserve": RESERVE,
        }


def _with(found: list[h.Row], under_way: h.Row) -> list[h.Row]:
    """``found`` with the minute under way in place of what the file holds of it (a gap, or
    the part a writer wrote before it stopped, which the minute under way includes)."""
    return [under_way if row.start == under_way.start else row for row in found]


def _fold(found: Sequence[h.Row]) -> h.Row | None:
    present = [row.values for row in found if row.values is not None]
    if not present:
        return None
    return h.Row(found[0].start, 60.0 * len(found), tuple(h.fold(present, 0)))


def hour_routes(file: h.HistoryFile, start: float, end: float) -> dict[str, list[int]]:
    """The routes of the hours in [start, end) that have ended (the file holds an hour's once
    it has), summed: "route\\0method" -> requests, service ns, sampled CPU ns and service ns."""
    sums: dict[str, list[int]] = {}
    names = file.names()
    for hour in range(math.floor(start / 3600), math.ceil(end / 3600)):
        for key, entry in file.routes(hour, names):
            _add(sums, key, entry[h.RT_REQUESTS :])
    return sums


def ranked_routes(sums: dict[str, list[int]]) -> list[dict[str, Any]]:
    """The busiest ``ROUTES`` of ``sums`` by busy time, as the JSON's ``routes`` holds them."""
    ranked = sorted(sums.items(), key=lambda kv: (-kv[1][1], kv[0]))[:ROUTES]
    out = []
    for key, (requests, service, cpu, cpu_wall) in ranked:
        route, _, method = key.partition("\0")
        out.append({
            "route": route, "method": method, "requests": requests,
            "busy_seconds": service / 1e9,
            "service_time_mean": service / requests / 1e9 if requests else None,
            "cpu_share": min(cpu / cpu_wall, 1.0) if cpu_wall else None,
        })  # fmt: skip
    return out


def _add(sums: dict[str, list[int]], key: str, values: Sequence[int]) -> None:
    have = sums.setdefault(key, [0, 0, 0, 0])
    for i in range(4):
        have[i] += values[i] if i < len(values) else 0


def dumps(data: dict[str, Any]) -> bytes:
    """``data`` as compact JSON, an infinite or NaN number as null (JSON has neither): looked
    for only when the fast encoder finds one."""
    try:
        text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(data), separators=(",", ":"))
    return text.encode()


def _finite(value: Any) -> Any:
    """JSON has no infinity nor NaN: they are null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# ------------------------------------------------------------------------------------ serving

# Strict: the page loads its script and style from its own paths, nothing else, and no frame.
HEADERS = [
    ("Cache-Control", "no-store"),
    ("Content-Security-Policy",
     "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]  # fmt: skip
UNAUTHORIZED = [("WWW-Authenticate", 'Basic realm="workermeter", charset="UTF-8"')]

Answer = tuple[str, list[tuple[str, str]], bytes]


class Site:
    """The status page's paths under ``path``: the page, ``.json``, ``.js`` and ``.css``; with
    ``root``, the page at ``/`` too (a port of the metrics' own)."""

    def __init__(self, status: Status, path: str, *, root: bool = False) -> None:
        self.status = status
        self.path = path
        self.paths = dict(zip(status_paths(path), ("page", "json", "js", "css"), strict=True))
        if root:
            self.paths["/"] = "page"

    def respond(self, path: str, method: str | None, query: str = "") -> Answer:
        """The answer to ``method path?query``, for a client already let in."""
        what = self.paths.get(path)
        if what is None:
            return _plain("404 Not Found", b"Not Found\n")
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Length", "0")], b""
        try:
            if what == "json":
                body, kind = self.status.json(query), "application/json"
                return "200 OK", self._headers(kind, body), b"" if method == "HEAD" else body
            from . import status_page  # the page's HTML, only where it is asked for

            if what == "js":
                body, kind = status_page.SCRIPT, "text/javascript; charset=utf-8"
            elif what == "css":
                body, kind = status_page.STYLE, "text/css; charset=utf-8"
            else:
                data = _finite(self.status.data(query))
                body = status_page.render(data, self.path).encode()
                kind = "text/html; charset=utf-8"
        except QueryError as e:
            return _plain("400 Bad Request", f"{e}\n".encode())
        return "200 OK", self._headers(kind, body), b"" if method == "HEAD" else body

    @staticmethod
    def _headers(kind: str, body: bytes) -> list[tuple[str, str]]:
        return [("Content-Type", kind), *HEADERS, ("Content-Length", str(len(body)))]


def refused(token: str | None) -> Answer:
    """The answer to a client not let in: 401 asking for the token where there is one (a
    browser then asks for it), else 404, as for ``/metrics``."""
    if token:
        return _plain("401 Unauthorized", b"Unauthorized\n", UNAUTHORIZED)
    return _plain("404 Not Found", b"Not Found\n")


def _plain(status: str, body: bytes, extra: Sequence[tuple[str, str]] = ()) -> Answer:
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store"),
               *extra, ("Content-Length", str(len(body)))]  # fmt: skip
    return status, headers, body
