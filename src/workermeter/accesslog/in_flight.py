"""Rebuild, from each request's ``[start, end)``, how many requests were in flight at every
moment and minute (:func:`concurrency`), and how long each waited for a free slot
(:func:`fcfs_waits`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Minute:
    """One clock minute (UTC-aligned, so also aligned in any whole-minute time zone).

    :param start: Unix time of the minute's first second.
    :param arrivals: requests that started in it.
    :param mean_in_flight: requests in flight, averaged over the 60 s.
    :param max_in_flight: the most requests in flight at once (for any positive time).
    :param busy_slots: slots busy, averaged over the 60 s: in flight, capped at the capacity.
    :param seconds_at_capacity: seconds with at least ``capacity`` requests in flight: every
        slot busy. 0 without a capacity.
    """

    start: int
    arrivals: int
    mean_in_flight: float
    max_in_flight: int
    busy_slots: float
    seconds_at_capacity: float

    @property
    def rate(self) -> float:
        """Arrivals per second."""
        return self.arrivals / 60.0

    @property
    def share_at_capacity(self) -> float:
        """Share of the minute with every slot busy."""
        return self.seconds_at_capacity / 60.0


@dataclass(frozen=True)
class Concurrency:
    """Requests in flight over time, rebuilt from each request's ``[start, end)``.

    :param time_at_level: seconds during which exactly ``k`` requests were in flight, at index k,
        from the first start to the last end.
    :param max_in_flight: the most requests in flight at once, for any positive time.
    :param mean_in_flight: requests in flight on average from the first start to the last end.
    :param seconds_at_capacity: seconds with at least ``capacity`` requests in flight.
    :param minutes: every minute with an arrival or a request in flight, in order.
    """

    time_at_level: tuple[float, ...]
    max_in_flight: int
    mean_in_flight: float
    seconds_at_capacity: float
    minutes: tuple[Minute, ...]


def concurrency(
    starts: Sequence[float], ends: Sequence[float], *, capacity: int | None = None
) -> Concurrency:
    """Sweep the sorted start and end events of requests: exact, O(n log n).

    Intervals are half-open: a request ending at t and one starting at t never overlap, and a
    request of duration 0 is never in flight.

    :param starts: each request's start, in Unix seconds.
    :param ends: each request's end, same order, each at or after its start.
    :param capacity: slots (processes x threads); enables ``seconds_at_capacity``.
    :raises ValueError: if the lengths differ, an end precedes its start, or capacity < 1.
    """
    n = len(starts)
    if len(ends) != n:
        raise ValueError(f"starts and ends differ in length ({n} and {len(ends)})")
    if capacity is not None and (isinstance(capacity, bool) or capacity < 1):
        raise ValueError(f"capacity must be an integer >= 1 (slots), got {capacity!r}")
    if any(e < s for s, e in zip(starts, ends, strict=True)):
        raise ValueError("every end must be at or after its start")
    cap = capacity if capacity is not None else n + 1  # never reached without a capacity
    order = sorted(range(n), key=starts.__getitem__)
    # A request of length 0 is never in flight: it arrives, but holds no slot.
    end_times = sorted(e for s, e in zip(starts, ends, strict=True) if e > s)
    m_ends = len(end_times)
    time_at: list[float] = [0.0]
    # minute -> [arrivals, ∫in flight, ∫busy slots, seconds at capacity, max in flight]
    minutes: dict[int, list[float]] = {}

    def minute(m: int) -> list[float]:
        acc = minutes.get(m)
        if acc is None:
            acc = minutes[m] = [0, 0.0, 0.0, 0.0, 0]
        return acc

    def hold(a: float, b: float, level: int) -> None:
        """``level`` requests were in flight during ``[a, b)``, b > a."""
        while len(time_at) <= level:
            time_at.append(0.0)
        time_at[level] += b - a
        if level == 0:
            return  # nothing to add to any minute: skip idle gaps of any length in one step
        busy = min(level, cap)
        m = int(a // 60)
        while True:
            edge = (m + 1) * 60.0
            upto = b if b <= edge else edge
            acc = minute(m)
            d = upto - a
            acc[1] += level * d
            acc[2] += busy * d
            if level >= cap:
                acc[3] += d
            if level > acc[4]:
                acc[4] = level
            if b <= edge:
                return
            a, m = edge, m + 1

    level, j = 0, 0
    now = starts[order[0]] if n else 0.0
    for i in order:
        s = starts[i]
        # Ends first at equal times: [start, end) intervals that touch do not overlap.
        while j < m_ends and end_times[j] <= s:
            t = end_times[j]
            if t > now:
                hold(now, t, level)
                now = t
            level -= 1
            j += 1
        if s > now:
            hold(now, s, level)
            now = s
        minute(int(s // 60))[0] += 1
        if ends[i] > s:
            level += 1
    while j < m_ends:
        t = end_times[j]
        if t > now:
            hold(now, t, level)
            now = t
        level -= 1
        j += 1

    span = (max(ends) - starts[order[0]]) if n else 0.0
    in_flight = sum(k * t for k, t in enumerate(time_at))
    highest = max((k for k, t in enumerate(time_at) if t > 0), default=0)
    return Concurrency(
        time_at_level=tuple(time_at[: highest + 1]),
        max_in_flight=highest,
        mean_in_flight=in_flight / span if span > 0 else 0.0,
        seconds_at_capacity=sum(time_at[cap:]) if capacity is not None else 0.0,
        minutes=tuple(
            Minute(
                start=m * 60,
                arrivals=int(acc[0]),
                mean_in_flight=acc[1] / 60.0,
                max_in_flight=int(acc[4]),
                busy_slots=acc[2] / 60.0,
                seconds_at_capacity=acc[3],
            )
            for m, acc in sorted(minutes.items())
        ),
    )


def fcfs_waits(starts: Sequence[float], ends: Sequence[float], slots: int) -> list[float]:
    """Each request's wait for a slot, rebuilt from a proxy's log: exact for ``slots`` slots
    serving one first-come-first-served queue (gunicorn's sync workers on one listen socket).

    A proxy logs when a request arrived (``start``) and when its response came back (``end``),
    the wait included. Served in arrival order, the k-th arrival (from 0) gets a slot when the
    (k - slots + 1)-th response overall leaves, or at once if that was before it arrived: no
    response before then can be a later arrival's, since those start after it. So its wait is
    ``max(0, sorted(ends)[k - slots] - start)``. A wait longer than the whole logged time is
    impossible with the right ``slots``: it is capped at the logged time, and means more
    requests were served at once than ``slots`` (or not in arrival order).

    :param starts: arrivals, in Unix seconds.
    :param ends: departures, same order.
    :param slots: processes x threads behind the proxy, at least 1.
    :return: waits in seconds, in input order.
    :raises ValueError: if the lengths differ or slots < 1.
    """
    n = len(starts)
    if len(ends) != n:
        raise ValueError(f"starts and ends differ in length ({n} and {len(ends)})")
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ValueError(f"slots must be an integer >= 1, got {slots!r}")
    order = sorted(range(n), key=starts.__getitem__)
    departures = sorted(ends)
    waits = [0.0] * n
    for k in range(slots, n):
        i = order[k]
        free = departures[k - slots]
        if free > starts[i]:
            waits[i] = min(free, ends[i]) - starts[i]
    return waits
