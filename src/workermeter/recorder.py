"""The recorder: what the middleware calls at the start and end of every request, one call each
(``Active.begin`` and ``Active.finish``, written in hotpath.py and, compiled, in _hotpath.pyx).

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

from . import layout, speedups
from . import store as _store
from .hotpath import FINE_CELLS, Slot

# Also the recorder's: the middleware and the tests import them from here.
from .hotpath import STATUS_BY_DIGIT as STATUS_BY_DIGIT
from .hotpath import STATUS_INDEX as STATUS_INDEX
from .hotpath import UNMATCHED as UNMATCHED
from .hotpath import content_longer as content_longer
from .hotpath import status_index as status_index
from .listeners import own_listening_inodes
from .record_values import P_SERVICE, PROCESS_VALUES, ROUTE_VALUES
from .speedups import ActiveCore, LaneCore

log = logging.getLogger("workermeter")

METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
)
ROUTE_LIMIT = 200  # distinct route labels kept by default
UPLOAD_BYTES = 100_000  # larger request bodies are kept out of the queue wait by default
CPU_SAMPLE = 16  # by default 1 request in 16 has its CPU time measured
OTHER = "<other>"
_MAX_LEVEL = layout.MAX_LEVEL
_ENTER = layout.ENTER
_ABOVE = layout.ABOVE


class Lane(LaneCore):
    """One thread's records: a process record and one record per (route, method).

    Only the thread that owns the lane writes to it. A process whose requests never overlap
    (a sync worker, an event loop) has a single lane, whichever thread serves.
    """

    __slots__ = ()

    def __init__(self, active: Active, index: int) -> None:
        self.active = active
        self.index = index
        # route -> method -> Slot. Only the methods of METHODS are keys; any other finds no
        # record and goes to route_record.
        self.routes = {}
        # cpu_sample 0 starts the countdown at -1: it never reaches zero.
        self.countdown = active.cpu_sample or -1
        # Views of one record each: its values are at small indexes, which Python does not
        # allocate an int object for, where record + offset would be one.
        self.proc = active.allocate(layout.PROCESS, "", index, PROCESS_VALUES)
        self.service = active.view(self.proc[P_SERVICE : P_SERVICE + FINE_CELLS])


class Active(ActiveCore):
    """The recorder's state in one process: its region, lanes and concurrency level."""

    def __init__(self, recorder: Recorder, *, multithread: bool, capacity: int | None) -> None:
        super().__init__()
        self.region = recorder.store().attach(
            capacity=recorder.threads or capacity or 0,
            wall_clock=recorder.wall_clock,
            listeners=own_listening_inodes(),
        )
        self.header = self.region.header
        self.header[layout.H_HOT_PATH] = layout.HOT_PATHS.index(speedups.PATH)
        self.cpu_sample = recorder.cpu_sample
        self.route_limit = recorder.route_limit
        self._lock = threading.Lock()
        self.local = threading.local()
        self._lanes: list[Lane] = []
        self._free: list[int] = []
        self._routes: set[str] = set()
        self._alloc_failed = False
        # The header's ENTER and ABOVE words, each level at its own index.
        self.enter_words = self.region.view(self.header[_ENTER : _ENTER + _MAX_LEVEL + 1])
        self.above_words = self.region.view(self.header[_ABOVE : _ABOVE + _MAX_LEVEL + 1])
        # Only threads share the level; an event loop or a sync worker needs no lock.
        self._level_lock = threading.Lock() if multithread else None
        # A server that runs one request at a time (an event loop, a sync worker) has one lane,
        # found without the thread-local lookup; threads each have their own.
        self.single = None
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
            return self.single  # type: ignore[return-value]
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

    def route_record(self, lane: LaneCore, route: str, method: str) -> Slot:
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

    def _allocate(self, lane: LaneCore, route: str, method: str) -> Slot:
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
