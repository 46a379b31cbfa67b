"""The per-request writes, in pure Python: the reference implementation of the hot path.

``LaneCore`` and ``ActiveCore`` hold what a request touches (a lane's records, the process's
concurrency level) and the calls that write it: ``ActiveCore.begin`` and ``ActiveCore.finish``
once each per request, ``LaneCore``'s for the rest. ``_hotpath.pyx`` is the same compiled; which
of the two a process runs is chosen in ``speedups.py``. Both write the same values to the same
places: the tests run against each, and a property test holds them to identical stores.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import buckets, layout
from .record_values import (
    FINE_CELLS,
    P_LAG,
    P_LAG_SUM,
    P_QUEUE,
    P_QUEUE_SUM,
    P_REJECTED,
    P_SKEW,
    R_CPU,
    R_CPU_WALL,
    R_DURATION,
    R_HELD,
    R_SUM,
    REJECT_REASONS,
)
from .request_start import EPOCH_2000, SKEW, queue_wait_one, seconds_of

if TYPE_CHECKING:
    from .recorder import Active

# A value's FINE cell, as the hot paths find it: see buckets.py.
_START = buckets.FINE_START
_SHIFT = buckets.FINE_SHIFT
_BOUNDS = buckets.FINE_BOUNDS
_ROUTE_CELL = buckets.ROUTE_CELL
_EPOCH_S = EPOCH_2000
_EPOCH_MS = EPOCH_2000 * 1e3
fine_cell = buckets.FINE.cell
_MAX_LEVEL = layout.MAX_LEVEL
_ENTER = layout.ENTER
_ABOVE = layout.ABOVE
_H_LEVEL = layout.H_LEVEL
_LEVEL_BITS = layout.LEVEL_BITS
_LEVEL_MASK = (1 << _LEVEL_BITS) - 1
_SEQ = 1 << _LEVEL_BITS  # one step of the level word's update count
_RISE = _SEQ + 1  # from an update under way to its end, one level up
_FALL = _SEQ - 1  # the same, one level down
_sleep = time.sleep

Slot = tuple[memoryview, memoryview]
"""A lane's route record, as a view of its values, and the view of the lane's service-time
cells, which every request of the route counts in too."""

UNMATCHED = "<unmatched>"  # the route of a request no framework matched
# The environ keys of the request-start headers; a middleware whose keys are these very ones
# (not mod_wsgi's added) looks for X-Request-Start alone unless X-Queue-Start is there too.
START_KEYS: tuple[str, ...] = ("HTTP_X_REQUEST_START", "HTTP_X_QUEUE_START")

# Index into STATUS_CLASSES of each HTTP status code; any other is "other" (5).
STATUS_INDEX = {code: code // 100 - 1 for code in range(100, 600)}


def status_index(status: int) -> int:
    """Index into STATUS_CLASSES for an HTTP status code."""
    return STATUS_INDEX.get(status, 5)


def content_longer(length: str | bytes, limit: int) -> bool:
    """Whether a Content-Length value says more than ``limit`` bytes (False if malformed)."""
    try:
        return int(length) > limit
    except ValueError:  # a malformed length is the server's to refuse, not ours
        return False


# Index into STATUS_CLASSES by the first character of a WSGI status line.
STATUS_BY_DIGIT = {"1": 0, "2": 1, "3": 2, "4": 3, "5": 4}


__all__ = [
    "FINE_CELLS",
    "START_KEYS",
    "STATUS_BY_DIGIT",
    "STATUS_INDEX",
    "UNMATCHED",
    "ActiveCore",
    "LaneCore",
    "Slot",
    "content_longer",
    "fine_cell",
    "status_index",
]


def _word(word: int, level: int) -> int:
    """``word``'s update count with ``level`` in the level bits, held within them."""
    return (word & ~_LEVEL_MASK) | min(max(level, 0), _LEVEL_MASK)


class LaneCore:
    """What a request writes in one thread's records (see ``recorder.Lane``).

    ``proc`` is a view of the lane's process record, ``service`` of its service-time cells, and
    ``routes`` maps route -> method -> Slot: two lookups of strings whose hashes are cached,
    cheaper than building and hashing a (route, method) key per request. Only the thread that
    owns the lane writes to it.
    """

    __slots__ = ("active", "countdown", "index", "proc", "routes", "service")

    active: Active
    index: int
    routes: dict[str, dict[str, Slot]]
    countdown: int  # requests until the next one whose CPU time is measured
    proc: memoryview
    service: memoryview

    def queue_wait(self, wait: float | None, problem: str | None) -> None:
        """Record the outcome of parsing the request-start headers."""
        w = self.proc
        if wait is not None:
            ns = int(wait * 1e9)
            w[P_QUEUE + fine_cell(ns)] += 1
            w[P_QUEUE_SUM] += ns
            if problem is SKEW:
                w[P_SKEW] += 1
        elif problem is not None:
            w[P_REJECTED + REJECT_REASONS.index(problem)] += 1

    def request(
        self, route: str, method: str, status: int, duration: int, cpu: int | None = None
    ) -> None:
        """Record a finished request of ``duration`` ns. ``status`` is an index into
        STATUS_CLASSES; ``cpu`` is the request's thread CPU time when it was sampled. The
        middleware records through :meth:`ActiveCore.finish`, which writes the same values."""
        methods = self.routes.get(route)
        slot = methods.get(method) if methods is not None else None
        if slot is None:
            slot = self.active.route_record(self, route, method)
        w, service = slot
        w[status] += 1
        cell = fine_cell(duration)
        w[R_DURATION + _ROUTE_CELL[cell]] += 1
        w[R_SUM] += duration
        service[cell] += 1
        if cpu is not None:
            w[R_CPU] += cpu
            w[R_CPU_WALL] += duration

    def sampled(self, route: str, method: str, cpu: int, held: int, duration: int) -> None:
        """Record what a sampled async request took in its own steps: ``cpu`` ns of thread CPU
        time and ``held`` ns of the event loop, over ``duration`` ns of service time. Called
        after :meth:`ActiveCore.finish` recorded the request without a CPU sample."""
        methods = self.routes.get(route)
        slot = methods.get(method) if methods is not None else None
        if slot is None:
            slot = self.active.route_record(self, route, method)
        w = slot[0]
        w[R_CPU] += cpu
        w[R_CPU_WALL] += duration
        w[R_HELD] += held

    def loop_lag(self, seconds: float) -> None:
        """Record how late the event loop ran a callback that was due."""
        ns = int(seconds * 1e9)
        w = self.proc
        w[P_LAG + fine_cell(ns)] += 1
        w[P_LAG_SUM] += ns

    def count(self, offset: int) -> None:
        self.proc[offset] += 1


class ActiveCore:
    """What a request changes in its process: the concurrency level (see ``recorder.Active``).

    ``header`` is a view of the region's header; ``enter_words`` and ``above_words`` of its
    ENTER and ABOVE words, each level at its own index. ``single`` is the process's one lane
    when requests never overlap (an event loop, a sync worker), else None and each thread has
    its own in ``local``. With threads the level is updated under ``_level_lock``.
    """

    __slots__ = (
        "_above",
        "_clock",
        "_cpu_clock",
        "_enter",
        "_level_lock",
        "_wall_clock",
        "above_words",
        "cpu_sample",
        "enter_words",
        "header",
        "level",
        "local",
        "single",
        "word",
    )

    header: memoryview
    enter_words: memoryview
    above_words: memoryview
    single: LaneCore | None
    local: threading.local
    cpu_sample: int
    _level_lock: threading.Lock | None
    _clock: Callable[[], int]
    _cpu_clock: Callable[[], int]
    _wall_clock: Callable[[], float]

    def __init__(self) -> None:
        self.level = 0
        self.word = 0  # the level word as last committed: see begin
        self._enter = [0] * (_MAX_LEVEL + 1)
        self._above = [0] * (_MAX_LEVEL + 1)

    if TYPE_CHECKING:  # recorder.Active's

        def new_lane(self) -> LaneCore: ...

        def route_record(self, lane: LaneCore, route: str, method: str) -> Slot: ...

    # The level word holds an update count above the level (store.LEVEL_BITS): odd while an
    # update is under way, so a scrape can tell a consistent state from a torn one. The time of
    # the change is read after the word turns odd: any scrape that saw the state before took
    # its own time earlier, so a counter it reported is never more than what is committed.
    # The word is kept whole in ``self.word`` and moved by adding constants: no shift, mask or
    # min() per update. Only a level past MAX_LEVEL (not recorded per level) takes _word().
    #
    # With threads, the clock call inside an update lets the interpreter switch threads while
    # the lock is held. A thread that finds it taken hands the GIL back (sleep(0)) instead of
    # sleeping on the lock, so the holder finishes at once rather than after a queue of woken
    # threads. The lock is taken in the same function, not in a wrapper: one call per update.

    def begin(
        self,
        lane: LaneCore | None = None,
        start: str | None = None,
        max_skew: float = 2.0,
        max_age: float = 600.0,
    ) -> int:
        """A request starts: the queue wait told by ``start``, its one request-start value, is
        recorded in ``lane`` (or why it was not observed), and the level rises by one. Returns
        the time of the change, for :meth:`finish`.

        One call for both, written out: this runs on every request.
        """
        if start is not None and lane is not None:
            wall = self._wall_clock()
            # request_start.parse_timestamp's fast path, written out: one number, a bare one or
            # after "t=". Anything else (several values, a server token, garbage) fails in
            # float() or int() and takes the general path below, which parses it again.
            text = start.removeprefix("t=")
            try:
                number = float(text) if "." in text or len(text) > 40 else float(int(text))
            except ValueError:
                at: float | None = None
            else:  # in seconds (nginx), or else ms (Heroku), us or ns
                at = number if _EPOCH_S < number <= _EPOCH_MS else seconds_of(number)
            if at is not None and 0.0 <= wall - at <= max_age:  # the common case, no detour
                ns = ((wall - at) * 1e9).__trunc__()  # int() of a float, without the type call
                bl = ns.bit_length()
                i = _START[bl][ns >> _SHIFT[bl]]
                while ns > _BOUNDS[i]:
                    i += 1
                w = lane.proc
                w[i] += 1  # P_QUEUE is 0
                w[P_QUEUE_SUM] += ns
            else:
                lane.queue_wait(*queue_wait_one(start, wall, max_skew=max_skew, max_age=max_age))
        lock = self._level_lock
        if lock is not None:
            while not lock.acquire(False):
                _sleep(0)
        try:
            h = self.header
            word = self.word + _SEQ  # odd: under way
            h[_H_LEVEL] = word
            now = self._clock()
            level = self.level + 1
            self.level = level
            if level <= _MAX_LEVEL:
                self._enter[level] = now
                self.enter_words[level] = now
                word += _RISE
            else:
                word = _word(word + _SEQ, level)
            self.word = word
            h[_H_LEVEL] = word
            return now
        finally:
            if lock is not None:
                lock.release()

    def end(self) -> int:
        """The level falls by one; returns the time of the change. Records no request: the
        middleware ends a request with :meth:`finish`."""
        return self.finish(None, "", "", 0, 0, None)

    def finish(
        self,
        lane: LaneCore | None,
        route: str,
        method: str,
        status: int,
        t0: int,
        cpu0: int | None,
    ) -> int:
        """A request ends: time spent at the top level is banked, the level falls by one, and
        the request is recorded in ``lane`` as :meth:`LaneCore.request` would. ``t0`` is what
        begin() returned, ``status`` an index into STATUS_CLASSES, ``cpu0`` the thread CPU time
        at the start when it was sampled. Returns the time of the change.

        One call for the fall and the recording, written out: this runs on every request.
        """
        lock = self._level_lock
        if lock is not None:
            while not lock.acquire(False):
                _sleep(0)
        try:
            h = self.header
            word = self.word + _SEQ  # odd: under way
            h[_H_LEVEL] = word
            now = self._clock()
            level = self.level
            self.level = level - 1
            if 0 < level <= _MAX_LEVEL:
                total = self._above[level] + now - self._enter[level]
                self._above[level] = total
                self.above_words[level] = total
                word += _FALL
            else:
                word = _word(word + _SEQ, level - 1)
            self.word = word
            h[_H_LEVEL] = word
        finally:
            if lock is not None:
                lock.release()
        if lane is None:
            return now
        duration = now - t0
        methods = lane.routes.get(route)
        slot = methods.get(method) if methods is not None else None
        if slot is None:
            slot = self.route_record(lane, route, method)
        w, service = slot
        w[status] += 1
        bl = duration.bit_length()
        i = _START[bl][duration >> _SHIFT[bl]]
        while duration > _BOUNDS[i]:
            i += 1
        w[R_DURATION + _ROUTE_CELL[i]] += 1
        w[R_SUM] += duration
        service[i] += 1
        if cpu0 is not None:
            w[R_CPU] += self._cpu_clock() - cpu0
            w[R_CPU_WALL] += duration
        return now
