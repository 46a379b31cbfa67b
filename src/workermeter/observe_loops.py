"""What async workers' event loops and thread pools did over a window, from counter increases.

An async job is one whose workers expose event-loop series. For it this module gives each
worker's event-loop utilisation (ELU: loop busy seconds over seconds observed), the loops' demand
(loop-seconds per second) and how much of it was CPU (the workers' process CPU time over their
loops' busy time), the routes that hold a loop without the CPU (sampled held time minus sampled
CPU time: a blocking call inside ``async def``), the thread pool's use and waits, and what to
tell about workers measured for part of the window or with an estimated ELU. Both sources use
it: :mod:`workermeter.observe` (scrapes) and :mod:`workermeter.prometheus_source`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from . import metrics as m
from .capacity import BlockingRoute, LoopDemand
from .measurement import Counts, clamp_share, ratio

__all__ = ["ESTIMATE", "FULL_WINDOW", "Loops", "blocking_routes", "loop_notes", "loops"]

#: A worker whose loop was observed for less than this share of the window is said to be so.
FULL_WINDOW = 0.95
#: The ``method`` label of an ELU estimated from late timer probes, where no hook exists.
ESTIMATE = "lag_estimate"
#: A route is blocking when at least this share of the time it held the loop was not CPU.
NOT_CPU = 0.5


def blocking_routes(
    *,
    held: Mapping[str, float],
    cpu: Mapping[str, float],
    sampled: Mapping[str, float],
    busy: Mapping[str, float],
    requests: Mapping[str, float],
    loop_busy: float,
) -> tuple[BlockingRoute, ...]:
    """The routes that held the loop mostly without the CPU, the longest first.

    Per route, over the same window: ``held``, ``cpu`` and ``sampled`` are the sampled
    requests' loop time, CPU time and service time; ``busy`` and ``requests`` are the service
    time and the count of all its requests; ``loop_busy`` is the loops' busy seconds. A sampled
    request's held-minus-CPU share of its service time, scaled to all of the route's service
    time, is the loop time the route held without the CPU.
    """
    found = []
    for route, held_s in held.items():
        wall = sampled.get(route, 0.0)
        blocked = max(0.0, held_s - cpu.get(route, 0.0))
        if held_s <= 0 or wall <= 0 or blocked < NOT_CPU * held_s:
            continue
        share = blocked / wall  # of the route's service time
        count = requests.get(route, 0.0)
        total = share * busy.get(route, 0.0)
        found.append(
            BlockingRoute(
                route=route,
                per_request=share * busy.get(route, 0.0) / count if count > 0 else 0.0,
                loop_share=clamp_share(total / loop_busy) if loop_busy > 0 else 0.0,
            )
        )
    return tuple(sorted(found, key=lambda b: (-b.loop_share, b.route)))


@dataclass(frozen=True)
class Loops:
    """The event loops and thread pools of an async job over a window, by ``worker`` label.

    :param seconds: the window's length.
    :param elu: each worker's event-loop utilisation: busy seconds / seconds observed.
    :param measured: share of the window each worker's loop was observed, 0..1.
    :param methods: how each worker's loop was measured (asyncio, uvloop, gevent, lag_estimate).
    :param busy: loop-seconds per second, all workers together: the loops' demand.
    :param loops: loops measured: seconds observed per second, all workers together.
    :param cpu_share: the loop workers' process CPU time over their loops' busy time, clamped
        to 0..1; None without process CPU figures.
    :param blocking: routes that held the loop mostly without the CPU, the longest first.
    :param pool_threads: each worker's thread pool size (from the last scrape).
    :param pool_busy: each worker's pool thread-seconds taken per second.
    :param pool_wait: each worker's task-seconds per second waiting for a pool thread.
    """

    seconds: float
    elu: Mapping[str, float]
    measured: Mapping[str, float]
    methods: Mapping[str, str]
    busy: float
    loops: float
    cpu_share: float | None
    blocking: tuple[BlockingRoute, ...]
    pool_threads: Mapping[str, int]
    pool_busy: Mapping[str, float]
    pool_wait: Mapping[str, float]

    @property
    def utilisation(self) -> float | None:
        """The loops' ELU together: loop busy seconds over loop seconds observed."""
        return ratio(self.busy, self.loops)

    @property
    def pool_utilisation(self) -> Mapping[str, float]:
        """Each worker's share of its pool's thread-seconds taken."""
        return {
            w: self.pool_busy.get(w, 0.0) / size for w, size in self.pool_threads.items() if size
        }

    def demand(self) -> LoopDemand:
        """The capacity model's input; an unknown CPU share counts as all CPU (1), so that no
        blocking call is reported that was not seen."""
        sizes = sum(self.pool_threads.values())
        return LoopDemand(
            busy=self.busy,
            cpu_share=1.0 if self.cpu_share is None else self.cpu_share,
            blocking=self.blocking,
            pool_threads=max(self.pool_threads.values()) if sizes else None,
            pool_utilisation=clamp_share(sum(self.pool_busy.values()) / sizes) if sizes else None,
            pool_wait=sum(self.pool_wait.values()),
        )


def loops(d: Counts, seconds: float, pool_threads: Mapping[str, float]) -> Loops | None:
    """The event loops in the increases ``d`` over ``seconds``, or None for a sync job (no
    event-loop series); ``pool_threads`` is the last scrape's pool size by worker."""
    busy_by = d.by(m.LOOP_BUSY.name + "_total", "worker", "method")
    observed_by = d.by(m.LOOP_OBSERVED.name + "_total", "worker", "method")
    if not busy_by and not observed_by:
        return None
    busy = {w: 0.0 for w, _ in observed_by}
    for (w, _), v in busy_by.items():
        busy[w] = busy.get(w, 0.0) + v
    observed: dict[str, float] = {}
    methods: dict[str, str] = {}
    for (w, method), v in sorted(observed_by.items()):
        observed[w] = observed.get(w, 0.0) + v
        methods[w] = method
    elu = {w: clamp_share(busy.get(w, 0.0) / v) for w, v in sorted(observed.items()) if v > 0}
    loop_busy = sum(busy.values())
    cpu_by = {w: v for (w,), v in d.by(m.PROCESS_CPU.name + "_total", "worker").items()}
    cpu = [cpu_by[w] for w in busy if w in cpu_by]
    held = _by_route(d, m.LOOP_HELD.name + "_total")
    return Loops(
        seconds=seconds,
        elu=elu,
        measured={w: clamp_share(v / seconds) for w, v in sorted(observed.items())},
        methods=methods,
        busy=loop_busy / seconds,
        loops=sum(observed.values()) / seconds,
        cpu_share=clamp_share(sum(cpu) / loop_busy) if cpu and loop_busy > 0 else None,
        blocking=blocking_routes(
            held=held,
            cpu=_by_route(d, m.CPU.name + "_total"),
            sampled=_by_route(d, m.CPU_WALL.name + "_total"),
            busy=_by_route(d, m.DURATION.name + "_sum"),
            requests=_by_route(d, m.DURATION.name + "_count"),
            loop_busy=loop_busy,
        ),
        pool_threads={w: round(v) for w, v in sorted(pool_threads.items()) if v > 0},
        pool_busy={
            w: v / seconds
            for (w,), v in sorted(d.by(m.POOL_BUSY.name + "_total", "worker").items())
        },
        pool_wait={
            w: v / seconds
            for (w,), v in sorted(d.by(m.POOL_WAIT.name + "_total", "worker").items())
        },
    )


def _per_second(d: Counts, name: str, seconds: float) -> dict[str, float]:
    return {w: v / seconds for (w,), v in sorted(d.by(name, "worker").items())}


def _by_route(d: Counts, name: str) -> dict[str, float]:
    return {route: v for (route,), v in d.by(name, "route").items()}


def loop_notes(
    measured: Mapping[str, float], methods: Mapping[str, str], cpu_known: bool, window: str
) -> list[str]:
    """What to tell about the loops: workers measured for part of ``window`` (words such as
    "the 60 s window"), estimated ELUs, and an unknown CPU share."""
    notes = []
    partial = {w: s for w, s in measured.items() if s < FULL_WINDOW}
    if partial:
        listed = ", ".join(f"worker {w} for {s:.0%}" for w, s in sorted(partial.items(), key=_n))
        notes.append(
            f"Not every event loop was measured for all of {window}: {listed} (a worker that "
            f"started during it, or was not scraped). Their ELU covers that part only, and the "
            f"loops' demand counts what they did then."
        )
    estimated = sorted((w for w, method in methods.items() if method == ESTIMATE), key=_number)
    if estimated:
        which = ", ".join(estimated)
        notes.append(
            f"The event-loop utilisation of worker{'s' if len(estimated) > 1 else ''} {which} "
            f"is an estimate (method {ESTIMATE}): no hook into that loop exists, so it is the "
            f"share of timer probes that ran late, which reads low (0.41 and 0.83 for true loads "
            f"of 0.5 and 0.9 when it was tried)."
        )
    if not cpu_known:
        notes.append(
            "The workers' CPU time was not exposed, so the loops' busy time is taken as all CPU "
            "and no blocking call can be told from it."
        )
    return notes


def _number(worker: str) -> tuple[int, str]:
    return (int(worker), "") if worker.isdigit() else (1 << 30, worker)


def _n(item: tuple[str, float]) -> tuple[int, str]:
    return _number(item[0])
