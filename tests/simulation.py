"""A small discrete-event simulation of an M/G/c FCFS queue, to check the capacity model.

Requests arrive as a Poisson process and are served first come, first served by ``servers``
identical slots pulling from one queue, like gunicorn sync workers on one listen socket. Service
times are deterministic (cv 0), exponential (cv 1) or gamma (any other cv) with the given mean.
Everything is drawn from a seeded ``random.Random``, so a run is repeatable.

With one FCFS queue, a request starts on the slot that frees first, so the simulation only needs
the times at which each slot next becomes free: a heap of ``servers`` numbers.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from random import Random


@dataclass(frozen=True)
class Result:
    """Queue waits of the measured requests (after the warm-up), sorted ascending."""

    waits: list[float]
    busy_share: float  # slot-seconds of service / (servers x simulated time)

    @property
    def mean_wait(self) -> float:
        return math.fsum(self.waits) / len(self.waits)

    @property
    def waited_share(self) -> float:
        """Share of requests that waited at all (an estimate of the Erlang C probability)."""
        return sum(1 for wait in self.waits if wait > 0.0) / len(self.waits)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of the wait (nearest rank)."""
        return self.waits[min(len(self.waits) - 1, max(0, math.ceil(q * len(self.waits)) - 1))]


def simulate(
    servers: int,
    rate: float,
    service_time: float,
    cv: float,
    *,
    requests: int = 200_000,
    warmup: int = 10_000,
    seed: int = 1,
) -> Result:
    """Simulate ``requests`` Poisson arrivals at ``rate`` per second; keep all but the first
    ``warmup`` (the queue starts empty, which would bias waits low)."""
    if servers < 1 or rate <= 0 or service_time <= 0 or cv < 0 or not 0 <= warmup < requests:
        raise ValueError("simulate needs servers >= 1, rate > 0, service_time > 0, cv >= 0")
    rng = Random(seed)
    if cv == 0:
        draws = [service_time] * requests
    elif cv == 1:
        draws = [rng.expovariate(1.0 / service_time) for _ in range(requests)]
    else:
        shape = 1.0 / (cv * cv)
        draws = [rng.gammavariate(shape, service_time / shape) for _ in range(requests)]
    free = [0.0] * servers  # already a heap
    waits: list[float] = []
    now = 0.0
    kept_from = 0.0
    busy = 0.0
    for index, service in enumerate(draws):
        now += rng.expovariate(rate)
        start = max(now, free[0])
        heapq.heapreplace(free, start + service)
        if index == warmup:
            kept_from = now
        if index >= warmup:
            waits.append(start - now)
            busy += service
    waits.sort()
    # From the first kept arrival until the last kept request has left.
    return Result(waits=waits, busy_share=busy / (servers * (max(free) - kept_from)))
