"""A store as one scrape sees it: the live workers and the records of every worker merged, and
how a live worker's chunk 0 is copied consistently while it changes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .layout import (
    ABOVE,
    ENTER,
    H_LEVEL,
    H_LOOP_BUSY,
    H_LOOP_GRACE,
    H_LOOP_MARK,
    H_LOOP_METHOD,
    H_LOOP_SEQ,
    H_LOOP_START,
    H_POOL_BUSY,
    H_POOL_IN_USE,
    H_POOL_SINCE,
    H_POOL_SIZE,
    H_POOL_WAIT,
    H_POOL_WAITING,
    H_START_MONO_NS,
    L_BUSY,
    L_METHOD,
    LOOP_VALUES,
    MAX_LEVEL,
    PROCESS,
    ROUTE,
    Records,
    level_of,
    open_nofollow,
    read_fd,
    steady,
    warn_once,
)


@dataclass
class WorkerState:
    """One live worker as a scrape sees it."""

    slot: int
    pid: int
    capacity: int
    start_wall: float
    level: int
    websockets: int
    above_ns: list[int]  # above_ns[k]: ns with at least k in flight; [0] is the time observed
    listeners: tuple[int, ...] = ()
    pool_size: int = 0
    pool_in_use: int = 0
    pool_waiting: int = 0
    requests: int = 0  # requests it completed, by its own records
    hot_path: str = "unknown"  # the hot path it runs: layout.HOT_PATHS


@dataclass
class Snapshot:
    """Everything in a store at one moment: live workers plus the merged records of all."""

    workers: list[WorkerState] = field(default_factory=list)
    # Levels of every slot ever seen (dead workers' included), to keep per-worker counters rising.
    levels: dict[int, list[int]] = field(default_factory=dict)
    folded: set[str] = field(default_factory=set)
    # The last known capacity of every slot, so a dead worker's all-busy time stays exposed.
    capacities: dict[int, int] = field(default_factory=dict)
    # Event-loop and thread-pool totals of every slot that ran a measured loop (LOOP_VALUES).
    loops: dict[int, list[int]] = field(default_factory=dict)
    # Each key's records as read, summed when ``records`` is first asked for.
    _parts: dict[tuple[int, str], list[memoryview]] = field(default_factory=dict, repr=False)
    _totals: dict[tuple[int, str], list[int]] | None = field(default=None, repr=False)

    def add_record(self, kind: int, key: str, values: memoryview) -> None:
        """Count a record's values (64-bit words) in the totals of its key."""
        self._totals = None
        parts = self._parts.get((kind, key))
        if parts is None:
            self._parts[(kind, key)] = [values]
        else:
            parts.append(values)

    def add_counts(self, words: memoryview, records: Records) -> Records:
        """Count the ROUTE and PROCESS records of ``records`` (positions in ``words``) as
        :meth:`add_record` does, in one loop: a scrape of 64 workers x 200 routes meets
        12,800 of them. Returns the other records."""
        self._totals = None
        parts = self._parts
        rest = []
        for record in records:
            kind, key, start, end = record
            if kind in (ROUTE, PROCESS):
                have = parts.get((kind, key))
                if have is None:
                    parts[(kind, key)] = [words[start:end]]
                else:
                    have.append(words[start:end])
            else:
                rest.append(record)
        return tuple(rest)

    @property
    def records(self) -> dict[tuple[int, str], list[int]]:
        """The values of each (kind, key), summed over every worker and the archive."""
        if self._totals is None:
            self._totals = {key: sum_columns(parts) for key, parts in self._parts.items()}
        return self._totals

    def add_levels(self, slot: int, above: list[int], capacity: int = 0) -> None:
        if capacity:
            self.capacities[slot] = capacity
        have = self.levels.get(slot)
        if have is None:
            self.levels[slot] = list(above)
        else:
            for i, v in enumerate(above):
                have[i] += v

    def add_loop(self, slot: int, values: Sequence[int]) -> None:
        """Add a slot's loop totals; the method is the last one seen."""
        have = self.loops.get(slot)
        if have is None:
            self.loops[slot] = list(values)
            return
        for i in range(L_BUSY, LOOP_VALUES):
            have[i] += values[i]
        if values[L_METHOD]:
            have[L_METHOD] = values[L_METHOD]


def sum_columns(parts: list[memoryview]) -> list[int]:
    """Column sums of equally long rows of 64-bit words; a row of another length (written by
    another version) adds the columns the first row has.

    Summing a column of one joined buffer runs in C: at 64 workers x 200 routes this is a
    third of the time of adding row by row.
    """
    width = len(parts[0])
    if len(parts) == 1:
        return parts[0].tolist()
    if all(len(p) == width for p in parts):
        joined = memoryview(b"".join(parts)).cast("q")
        return [sum(joined[i::width]) for i in range(width)]
    return [sum(p[i] for p in parts if i < len(p)) for i in range(width)]


def above_now(words: memoryview, now: int) -> list[int]:
    """ABOVE[] of a worker as of ``now``, counting the elapsed part of requests in flight.

    ``words`` must be a consistent copy (see read_chunk0). The writer reads the time of a change
    after marking the update, and ``now`` was read before the copy was taken: a copy from before
    a change counts no further than the change will commit, so counters never go backwards.
    """
    level = min(level_of(words[H_LEVEL]), MAX_LEVEL)
    above = list(words[ABOVE : ABOVE + MAX_LEVEL + 1])
    above[0] = max(now - words[H_START_MONO_NS], 0)
    for k in range(1, level + 1):
        above[k] += max(now - words[ENTER + k], 0)
    return above


def loop_now(words: memoryview, now: int) -> list[int] | None:
    """A worker's loop totals (LOOP_VALUES) as of ``now``, counting the time since its last
    update by what the loop was doing then; None when it measures no loop and has no pool.

    ``words`` must be a consistent copy, taken as for above_now: the writer reads its time only
    once it has marked its update, so no total here is more than the next update commits.
    """
    method = words[H_LOOP_METHOD]
    if not method and not words[H_POOL_SIZE]:
        return None
    busy, observed = words[H_LOOP_BUSY], 0
    if method:
        mark, grace = words[H_LOOP_MARK], words[H_LOOP_GRACE]
        since = abs(mark)
        elapsed = max(now - since, 0)
        if grace > 0:
            elapsed = max(elapsed - grace, 0)
            busy += elapsed
        elif mark > 0:
            busy += elapsed
        observed = max(since - words[H_LOOP_START], 0) + elapsed
    pool_elapsed = max(now - words[H_POOL_SINCE], 0) if words[H_POOL_SINCE] else 0
    pool_busy = words[H_POOL_BUSY] + max(words[H_POOL_IN_USE], 0) * pool_elapsed
    pool_wait = words[H_POOL_WAIT] + max(words[H_POOL_WAITING], 0) * pool_elapsed
    return [method, busy, observed, pool_busy, pool_wait]


# The words a consistent copy of chunk 0 is checked against: from the level word to the loop's.
CHECKED = slice(H_LEVEL, H_LOOP_MARK + 1)


def read_chunk0(
    path: Path, clock: Callable[[], int], *, live: bool
) -> tuple[memoryview, int] | None:
    """A copy of a worker's chunk 0 whose level state is consistent, and the time it stands for.

    The copy is taken while no level update is under way and the level word is the same after
    it. The time is read between the copy and that check: after every change the copy holds,
    before every change it misses (a writer reads its time only once it has marked its update).
    Counted up to that time, no counter derived from the levels ever goes backwards. A dead
    worker's copy is taken as it is.
    """
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:  # folded away meanwhile
        return None
    except OSError as e:  # a symlink (O_NOFOLLOW), a directory, no permission
        warn_once(path, e.strerror or str(e))
        return None
    try:
        deadline = time.monotonic() + 0.5
        while True:
            words = read_fd(fd, path)
            now = clock()
            if words is None:
                return None
            if not live:
                return words, now
            word = words[H_LEVEL]
            if (
                steady(word)
                and not words[H_LOOP_SEQ] & 1
                and os.pread(fd, (H_LOOP_MARK + 1 - H_LEVEL) * 8, H_LEVEL * 8)
                == words[CHECKED].tobytes()
            ):
                return words, now
            if time.monotonic() > deadline:  # a writer stopped mid-update: take what is there
                warn_once(path, "level updates never settled; read as is")
                return words, now
            time.sleep(0)  # let a writer in this process finish its update
    finally:
        os.close(fd)
