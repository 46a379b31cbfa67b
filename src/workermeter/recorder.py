"""The recorder: what the middleware calls at the start and end of every request, one call each
(``Active.begin`` and ``Active.finish``).

Each thread records into its own *lane* of the process's region, so counters and histograms need
no lock. Only the concurrency level (how many requests are in flight) is shared by the threads of
a process; for threaded servers its update at request start and end is one short critical section,
for single-threaded workers and event loops there is none.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from . import buckets, layout
from . import store as _store
from .listeners import own_listening_inodes
from .record_values import (
    FINE_CELLS,
    P_LAG,
    P_LAG_SUM,
    P_QUEUE,
    P_QUEUE_SUM,
    P_REJECTED,
    P_SERVICE,
    P_SKEW,
    PROCESS_VALUES,
    R_CPU,
    R_CPU_WALL,
    R_DURATION,
    R_HELD,
    R_SUM,
    REJECT_REASONS,
    ROUTE_VALUES,
)
from .request_start import EPOCH_2000, SKEW, queue_wait_one, seconds_of

log = logging.getLogger("workermeter")

METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
)
ROUTE_LIMIT = 200  # distinct route labels kept by default
UPLOAD_BYTES = 100_000  # larger request bodies are kept out of the queue wait by default
CPU_SAMPLE = 16  # by default 1 request in 16 has its CPU time measured
UNMATCHED = "<unmatched>"
OTHER = "<other>"

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


def _word(word: int, level: int) -> int:
    """``word``'s update count with ``level`` in the level bits, held within them."""
    return (word & ~_LEVEL_MASK) | min(max(level, 0), _LEVEL_MASK)


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

Slot = tuple[memoryview, memoryview]
"""A lane's route record, as a view of its values, and the view of the lane's service-time
cells, which every request of the route counts in too."""


class Lane:
    """One thread's records: a process record and one record per (route, method).

    Only the thread that owns the lane writes to it. A process whose requests never overlap
    (a sync worker, an event loop) has a single lane, whichever thread serves.
    """

    __slots__ = ("active", "countdown", "index", "proc", "routes", "service")

    def __init__(self, active: Active, index: int) -> None:
        self.active = active
        self.index = index
        # route -> method -> Slot: two lookups of strings whose hashes are cached, cheaper than
        # building and hashing a (route, method) key per request. Only the methods of METHODS
        # are keys; any other finds no record and goes to route_record.
        self.routes: dict[str, dict[str, Slot]] = {}
        # cpu_sample 0 starts the countdown at -1: it never reaches zero.
        self.countdown = active.cpu_sample or -1
        # Views of one record each: its values are at small indexes, which Python does not
        # allocate an int object for, where record + offset would be one.
        self.proc = active.allocate(layout.PROCESS, "", index, PROCESS_VALUES)
        self.service = active.view(self.proc[P_SERVICE : P_SERVICE + FINE_CELLS])

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
        middleware records through :meth:`Active.finish`, which writes the same values."""
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
        after :meth:`Active.finish` recorded the request without a CPU sample."""
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


class Active:
    """The recorder's state in one process: its region, lanes and concurrency level."""

    def __init__(self, recorder: Recorder, *, multithread: bool, capacity: int | None) -> None:
        self.region = recorder.store().attach(
            capacity=recorder.threads or capacity or 0,
            wall_clock=recorder.wall_clock,
            listeners=own_listening_inodes(),
        )
        self.header = self.region.header
        self.cpu_sample = recorder.cpu_sample
        self.route_limit = recorder.route_limit
        self._lock = threading.Lock()
        self.local = threading.local()
        self._lanes: list[Lane] = []
        self._free: list[int] = []
        self._routes: set[str] = set()
        self._alloc_failed = False
        self.level = 0
        self.word = 0  # the level word as last committed: see begin
        self._enter = [0] * (_MAX_LEVEL + 1)
        self._above = [0] * (_MAX_LEVEL + 1)
        # The header's ENTER and ABOVE words, each level at its own index.
        self.enter_words = self.region.view(self.header[_ENTER : _ENTER + _MAX_LEVEL + 1])
        self.above_words = self.region.view(self.header[_ABOVE : _ABOVE + _MAX_LEVEL + 1])
        # Only threads share the level; an event loop or a sync worker needs no lock.
        self._level_lock = threading.Lock() if multithread else None
        # A server that runs one request at a time (an event loop, a sync worker) has one lane,
        # found without the thread-local lookup; threads each have their own.
        self.single: Lane | None = None
        if not multithread:
            self.single = lane = Lane(self, 0)
            self._lanes.append(lane)
        # The time of a level change is read inside the update (with threads, inside the
        # critical section), so changes are applied in the order of their times; the request's
        # duration is measured between the two changes.
        self._clock = recorder.clock
        self._cpu_clock = recorder.cpu_clock
        self._wall_clock = recorder.wall_clock

    def lane(self) -> Lane:
        """This thread's lane (the process's single lane when requests never overlap)."""
        if self.single is not None:
            return self.single
        try:
            return self.local.lane  # type: ignore[no-any-return]
        except AttributeError:
            return self.new_lane()

    def new_lane(self) -> Lane:
        with self._lock:
            if self._free:
                lane = self._lanes[self._free.pop()]
            else:
                lane = Lane(self, len(self._lanes))
                self._lanes.append(lane)
        self.local.lane = lane
        # The lane, records and all, passes to a new thread when this one ends.
        self.local.holder = holder = _LaneHolder()
        weakref.finalize(holder, self._free.append, lane.index)
        return lane

    def route_record(self, lane: Lane, route: str, method: str) -> Slot:
        """A lane's record for a route, allocated on first use.

        Methods outside METHODS share one ``OTHER`` record and are not remembered. Past
        ``route_limit`` distinct routes, new ones share the lane's ``<other>`` record and are
        not remembered, so neither the store nor the lane grows with them.
        """
        if method not in METHODS:
            method = "OTHER"
            slot = lane.routes.get(route, {}).get(method)
            if slot is not None:
                return slot
        with self._lock:
            known = route in self._routes
            if not known and len(self._routes) < self.route_limit:
                self._routes.add(route)
                known = True
        if not known:
            slot = lane.routes.get(OTHER, {}).get(method)
            if slot is None:
                slot = self._allocate(lane, OTHER, method)
            return slot
        return self._allocate(lane, route, method)

    def _allocate(self, lane: Lane, route: str, method: str) -> Slot:
        record = self.allocate(layout.ROUTE, f"{route}\0{method}", lane.index, ROUTE_VALUES)
        slot = (record, lane.service)
        lane.routes.setdefault(route, {})[method] = slot
        return slot

    def allocate(self, kind: int, key: str, lane: int, nvalues: int) -> memoryview:
        """A view of a new record's values in the store; when the store cannot grow (its file
        system is full), of one in this process's memory, so that requests are still served
        (the loss is logged once)."""
        try:
            return self.region.allocate(kind, key, lane, nvalues)
        except OSError as e:  # ENOSPC on a full /dev/shm, or the like
            if not self._alloc_failed:
                self._alloc_failed = True
                log.error("workermeter: the store cannot grow (%s); new series are not kept", e)
            return memoryview(bytearray(8 * nvalues)).cast("q")

    def view(self, view: memoryview) -> memoryview:
        """``view``, of a record :meth:`allocate` gave, kept with the region's own."""
        return self.region.view(view)

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
        lane: Lane | None = None,
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
        self, lane: Lane | None, route: str, method: str, status: int, t0: int, cpu0: int | None
    ) -> int:
        """A request ends: time spent at the top level is banked, the level falls by one, and
        the request is recorded in ``lane`` as :meth:`Lane.request` would. ``t0`` is what
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

    def thread_pool(self, size: int, in_use: int) -> None:
        """Publish the size and use of the thread pool that runs an async app's sync code."""
        self.header[layout.H_POOL_SIZE] = size
        self.header[layout.H_POOL_IN_USE] = in_use

    def websocket(self, delta: int) -> None:
        with self._lock:
            self.header[layout.H_WEBSOCKETS] += delta


class _LaneHolder:
    """Lives in a thread's local storage; its finalizer frees the lane when the thread ends."""


class Recorder:
    """Records the requests of every process of one server into a store directory.

    Creating it touches nothing. A process attaches on its first request, which in a pre-fork
    server happens in the worker, after the fork; a child forked from a process that has recorded
    starts over with an empty region of its own.

    ``threads`` is the number of requests one process serves at once, when the server cannot be
    asked. ``route_limit`` caps distinct route labels (more become ``<other>``). One request in
    ``cpu_sample`` has its thread CPU time measured (0: none). The clocks are injectable for tests.
    """

    def __init__(
        self,
        *,
        directory: Path | Callable[[], Path],
        threads: int | None = None,
        route_limit: int = ROUTE_LIMIT,
        cpu_sample: int = CPU_SAMPLE,
        upload_bytes: int = UPLOAD_BYTES,
        clock: Callable[[], int] = time.perf_counter_ns,
        wall_clock: Callable[[], float] = time.time,
        cpu_clock: Callable[[], int] = time.thread_time_ns,
    ) -> None:
        _check_int("threads", threads, 1, "requests one worker process serves at once", none=True)
        _check_int("route_limit", route_limit, 1, "distinct route labels to keep")
        _check_int(
            "cpu_sample", cpu_sample, 0, "1 in N requests gets its CPU time measured; 0: none"
        )
        _check_int("upload_bytes", upload_bytes, 0, "bodies over this size have no queue wait")
        self._directory = directory
        self.threads = threads
        self.route_limit = route_limit
        self.cpu_sample = cpu_sample
        self.upload_bytes = upload_bytes
        self.clock = clock
        self.wall_clock = wall_clock
        self.cpu_clock = cpu_clock
        self.active: Active | None = None
        # Called in a child forked from a process that never recorded (a pre-fork master):
        # the middleware attaches the worker there, before its first request.
        self.after_fork_in_child: Callable[[], object] | None = None
        self._store: _store.Store | None = None
        self._lock = threading.Lock()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_after_fork(ref))

    def knows_directory(self) -> bool:
        """Whether the store directory is told (the ``directory`` option or
        ``$WORKERMETER_DIR``), rather than found from the server's listening socket."""
        return not callable(self._directory) or bool(os.environ.get("WORKERMETER_DIR"))

    def store(self) -> _store.Store:
        """The store directory, created on first use."""
        if self._store is None:
            d = self._directory
            self._store = _store.Store(d() if callable(d) else d, clock=self.clock)
        return self._store

    def activate(self, *, multithread: bool, capacity: int | None) -> Active:
        """Attach this process to the store; called with its first request."""
        with self._lock:
            if self.active is None:
                self.active = Active(self, multithread=multithread, capacity=capacity)
            return self.active


def _check_int(name: str, value: object, low: int, meaning: str, *, none: bool = False) -> None:
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low} ({meaning}), got {value!r}")


def _forget_after_fork(ref: weakref.ref[Recorder]) -> None:
    recorder = ref()
    if recorder is None:
        return
    recorder._lock = threading.Lock()  # another thread may have held it at the fork
    if recorder.active is not None:
        recorder.active.region.abandon()
        recorder.active = None
    elif recorder.after_fork_in_child is not None:
        recorder.after_fork_in_child()
