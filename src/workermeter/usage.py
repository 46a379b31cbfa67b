"""Reading the memory and CPU of worker processes and of the host, for the exposition and for
the history: psutil, imported only by the processes that read them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

import psutil

USS_EVERY = 30.0  # seconds a reading of a process's USS is used before it is read again
USS_SHARE = 4  # a scrape reads the USS again of at most 1 in this many workers


class ProcessUsage:
    """(RSS bytes, USS bytes, CPU seconds) of processes by pid; gone ones are left out.

    RSS and CPU are read at every call (``/proc/PID/statm`` and ``stat``: ~70 µs a process
    through psutil). USS makes the kernel walk the process's page tables
    (``/proc/PID/smaps_rollup``: 0.3 ms for a small worker, more for a big one; 20 ms for 64
    workers) and moves slowly. So a process's USS is read when it is first asked for, then again
    once the reading is ``uss_every`` seconds old, and a call reads again at most one in
    ``USS_SHARE`` of the processes it is asked about, the stalest first.
    """

    def __init__(
        self, *, uss_every: float = USS_EVERY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not uss_every >= 0:
            raise ValueError(f"uss_every must be a number of seconds >= 0, not {uss_every!r}")
        self.uss_every = uss_every
        self.clock = clock
        # (pid, start time) -> (when read, USS): the start time tells a reused pid apart
        self._uss: dict[tuple[int, float], tuple[float, int]] = {}

    def __call__(self, pids: Iterable[int]) -> dict[int, tuple[int, int, float]]:
        now = self.clock()
        usage: dict[int, tuple[int, int, float]] = {}
        known: dict[tuple[int, float], tuple[float, int]] = {}
        stale: list[tuple[float, psutil.Process, tuple[int, float]]] = []
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                with proc.oneshot():
                    rss = proc.memory_info().rss
                    times = proc.cpu_times()
                    key = (pid, proc.create_time())
                    reading = self._uss.get(key)
                    if reading is None:
                        reading = (now, _uss(proc))
                    elif now - reading[0] >= self.uss_every:
                        stale.append((reading[0], proc, key))
            except (psutil.NoSuchProcess, psutil.ZombieProcess):  # exited since the store was read
                continue
            known[key] = reading
            usage[pid] = (rss, reading[1], times.user + times.system)
        stale.sort(key=lambda s: s[0])
        for _, proc, key in stale[: -(-len(usage) // USS_SHARE)]:
            try:
                known[key] = (now, _uss(proc))
            except (psutil.NoSuchProcess, psutil.ZombieProcess):  # exited meanwhile: next time
                continue
            rss, _, cpu = usage[key[0]]
            usage[key[0]] = (rss, known[key][1], cpu)
        self._uss = known  # processes not asked about are gone
        return usage


def _uss(proc: psutil.Process) -> int:
    try:
        return int(proc.memory_full_info().uss)
    except psutil.AccessDenied:  # smaps may be closed to us: USS unknown, exposed as 0
        return 0


def host_usage() -> tuple[int, int, int]:
    """(total memory, available memory, logical CPUs) of this host."""
    vm = psutil.virtual_memory()
    return vm.total, vm.available, psutil.cpu_count() or os.cpu_count() or 1
