"""Capacity model for async workers: how many event loops (worker processes) an app needs.

An async worker process (uvicorn, gunicorn's uvicorn worker, gunicorn ``-k gevent``) runs one event
loop on one thread, and the loop runs one step of one request at a time: it is one server. Each
process also has a queue of its own, since a connection stays with the process that accepted it.
So a loop is not a pooled slot, and it is sized with more headroom:

- the loops' demand D is loop-seconds per second at the peak, the sum of the workers' event-loop
  utilisation (ELU); loops for a target u are ``⌈D / u⌉`` (``Targets.loop_utilisation``, 0.6);
- a wait target is met per loop, an M/G/1 queue at a load of D / n with the loop time per request
  ``D / λ`` as its service time (cv 1 assumed: the loop time of single requests is not measured);
- threads: one per process (a loop is one thread); the CPU ceiling is ``cores / CPU share`` of
  the loops' busy time; the memory ceiling counts every worker at its full RSS, since uvicorn
  spawns its workers and they share no pages;
- before any of that, a loop held without the CPU is a blocking call inside ``async def`` (the
  answer names the routes), and tasks waiting for a thread mean that the pool that runs sync
  endpoints, not the loop, is the limit.

See docs/capacity.md for why 0.6 and how it compares with pooled slots.
"""

from __future__ import annotations

import math
from typing import Literal

from .capacity import (
    CPU_BOUND,
    SATURATED_UTILISATION,
    BlockingRoute,
    LoopDemand,
    Machine,
    Suggestion,
    Targets,
    Workload,
    _ceil,
    _mib,
    _ms,
    _plural,
    mean_wait,
    wait_percentile,
)

__all__ = ["BLOCKED_FLOOR", "BLOCKING_ROUTE_SHARE", "HOLD_CV", "POOL_WAIT_FLOOR", "suggest_loops"]

#: A route that held the loops without the CPU for at least this share of their busy time is named.
BLOCKING_ROUTE_SHARE = 0.05
#: Loop-seconds per second held without the CPU from which the answer starts with the blocking:
#: a twentieth of one loop.
BLOCKED_FLOOR = 0.05
#: Task-seconds per second spent waiting for a pool thread from which the pool is the limit (the
#: wait is counted exactly, so anything above a millisecond a second is real queueing).
POOL_WAIT_FLOOR = 0.001
#: Coefficient of variation assumed for the loop time of one request, which is not measured.
HOLD_CV = 1.0


def _loops_for_wait(offered: float, hold: float | None, wait: float, q: float) -> int:
    """The fewest loops, each an M/G/1 queue at ``offered / n``, whose ``q`` wait is <= ``wait``."""
    if hold is None:
        return 1
    loops = math.floor(offered) + 1
    while wait_percentile(1, offered / loops, hold, quantile=q, cv=HOLD_CV) > wait:
        loops += 1
    return loops


def _named(loops: LoopDemand) -> list[BlockingRoute]:
    """The blocking routes worth naming, the ones holding the loops longest first."""
    named = [b for b in loops.blocking if b.loop_share >= BLOCKING_ROUTE_SHARE]
    return sorted(named, key=lambda b: (-b.loop_share, b.route))


def _routes_text(named: list[BlockingRoute]) -> str:
    return ", ".join(
        f"{b.route} ({_ms(b.per_request)} per request, {b.loop_share:.0%} of the loops' busy time)"
        for b in named
    )


def suggest_loops(
    workload: Workload, loops: LoopDemand, machine: Machine, targets: Targets
) -> Suggestion:
    """Suggest worker processes (one event loop each) for an async app, and machines.

    :func:`workermeter.capacity.suggest` calls this for a workload with ``loops``; the sync
    model's slot fields of the :class:`~workermeter.capacity.Suggestion` count loops here.

    :param workload: the rate, and signs of saturation (``utilisation`` is the loops' ELU).
    :param loops: the loops' demand, its CPU share, the blocking routes and the thread pool.
    :param machine: cores, memory (each worker at its full RSS) and the current processes.
    :param targets: ``loop_utilisation`` and the wait target.
    """
    demand, share, rate = loops.busy, loops.cpu_share, workload.peak_rate
    target = targets.loop_utilisation
    hold = demand / rate if rate > 0 and demand > 0 else None  # loop-seconds per request
    cpu_ceiling = machine.cores / share if share > 0 else None
    memory_ceiling = machine.spawned_ceiling

    def loops_for(offered: float) -> tuple[int, int | None]:
        by_wait = None
        if targets.wait is not None:
            by_wait = _loops_for_wait(offered, hold, targets.wait, targets.wait_quantile)
        return _ceil(offered / target), by_wait

    def plan(machines: int) -> int:
        by_utilisation, by_wait = loops_for(demand / machines)
        return max(1, by_utilisation, by_wait or 0)

    def fits(n: int) -> tuple[bool, bool]:
        return cpu_ceiling is None or n <= cpu_ceiling + 1e-9, n <= memory_ceiling

    loops_for_utilisation, loops_for_wait = loops_for(demand)
    first = plan(1)
    machines, processes = 1, first
    limited_by: Literal["cpu", "memory"] | None = None
    if not all(fits(first)):
        least = demand / target / min(memory_ceiling, cpu_ceiling or math.inf)
        machines = max(2, _ceil(least))
        while not all(fits(plan(machines))):
            machines += 1
        while machines > 1 and all(fits(plan(machines - 1))):
            machines -= 1  # only if float noise made the lower bound overshoot
        processes = plan(machines)
        limited_by = "memory" if fits(plan(machines - 1))[0] else "cpu"

    per_machine = demand / machines
    utilisation = per_machine / processes
    q = targets.wait_quantile
    predicted_mean = predicted_tail = 0.0
    if hold is not None:
        predicted_mean = mean_wait(1, utilisation, hold, cv=HOLD_CV)
        predicted_tail = wait_percentile(1, utilisation, hold, quantile=q, cv=HOLD_CV)
    typical_utilisation = None
    if workload.typical_rate is not None and hold is not None:
        typical_utilisation = workload.typical_rate * hold / machines / processes
    current = machine.processes
    current_utilisation = None if current is None else demand / current

    named = _named(loops)
    reasons: list[str] = []
    held_without_cpu = demand * (1.0 - share)
    blocked_first = share < CPU_BOUND and held_without_cpu >= BLOCKED_FLOOR
    if blocked_first:
        which = (
            f"The routes holding it without the CPU: {_routes_text(named)}."
            if named
            else "No sampled request shows which route it is: the loop may be held outside "
            "requests, or waiting for the GIL while threads of the pool run Python."
        )
        reasons.append(
            f"First, a blocking call holds the event loop: only {share:.0%} of the loops' busy "
            f"time is CPU, and for the other {held_without_cpu:.2f} loop-seconds per second a "
            f"worker serves nothing else. {which} Fix that before adding processes (await an "
            f"async client, or run the call in a thread: a plain def endpoint, or "
            f"anyio.to_thread.run_sync): more processes only spread the blocking over more loops."
        )
    pool_limited = loops.pool_wait >= POOL_WAIT_FLOOR
    threads = (
        "its threads"
        if loops.pool_threads is None
        else (f"its {_plural(loops.pool_threads, 'thread')} per worker")
    )
    if pool_limited:
        taken = (
            ""
            if loops.pool_utilisation is None
            else (f", {loops.pool_utilisation:.0%} of them taken at the peak")
        )
        reasons.append(
            f"The thread pool that runs sync endpoints is the limit, not the loop: tasks waited "
            f"{loops.pool_wait:.2f} task-seconds per second for one of {threads}{taken}. "
            f"Raise the limiter's total_tokens (anyio.to_thread.current_default_thread_limiter()"
            f".total_tokens = N at startup) or make those endpoints async def."
        )
    per_request = "" if hold is None else f", {_ms(hold)} of loop time per request"
    reasons.append(
        f"At the peak of {rate:g} requests/s the event loops are busy {demand:.2f} loop-seconds "
        f"per second (the sum of the workers' event-loop utilisation): {demand:.2f} loops' "
        f"worth of work{per_request}."
    )
    if target < 1:
        reasons.append(
            f"Each worker process runs one event loop, which runs one request's step at a time, "
            f"with a queue of its own (a connection stays with the process that accepted it): a "
            f"loop is one server, not a pooled slot, and needs more headroom. Keeping each loop "
            f"at most {target:.0%} busy needs {demand:.2f} / {target:g} = "
            f"{_plural(loops_for_utilisation, 'loop')}, rounded up."
        )
    else:
        reasons.append(
            f"At 100% busy, {demand:.2f} / 1 = {_plural(loops_for_utilisation, 'loop')} are "
            f"just enough, but then the queue never drains after a burst: choose a target below "
            f"1, like 0.6, or a wait target."
        )
    pct = f"{q * 100:g}"
    if loops_for_wait is not None:
        reasons.append(
            f"Keeping the p{pct} wait for a loop within {_ms(targets.wait or 0.0)} needs "
            f"{_plural(loops_for_wait, 'loop')} (each loop an M/G/1 queue, cv {HOLD_CV:g} "
            f"assumed for the loop time per request)."
        )
    reasons.append(
        "An async worker serves its requests on one thread, its event loop, so the answer is "
        "processes: 1 thread per process, one loop each."
    )
    if pool_limited is False and loops.pool_utilisation:
        reasons.append(
            f"The thread pool that runs sync endpoints had at most {loops.pool_utilisation:.0%} "
            f"of {threads} taken and no task waited for a thread: it is not the limit."
        )
    if cpu_ceiling is None:
        reasons.append("With a CPU share of about 0, the cores set no ceiling on loops.")
    else:
        reasons.append(
            f"{share:.0%} of the loops' busy time is CPU: {machine.cores:g} cores keep at most "
            f"{cpu_ceiling:.1f} loops busy at once (cores / CPU share), and the peak uses "
            f"{demand * share:.2f} cores."
        )
    reasons.append(
        f"Each async worker counts at its full RSS (uvicorn spawns its workers, which share no "
        f"memory): after "
        f"{_mib(machine.reserve_system)} for the system and {_mib(machine.reserve_other)} for "
        f"other processes, {_mib(machine.memory_total)} fits {memory_ceiling} worker processes "
        f"at their full RSS of {_mib(machine.process_rss)} each."
    )
    setting = (
        f"{_plural(processes, 'process', 'processes')} x 1 thread = "
        f"{_plural(processes, 'event loop')}"
    )
    outcome = (
        f"each {utilisation:.0%} busy at the peak, mean wait for the loop {_ms(predicted_mean)}, "
        f"p{pct} {_ms(predicted_tail)}"
    )
    if machines == 1:
        reasons.append(f"One machine is enough: {setting}, {outcome}.")
    else:
        if limited_by == "cpu":
            need = f"{machine.cores:g} cores keep at most {cpu_ceiling or 0:.1f} loops busy"
        else:
            need = f"{memory_ceiling} workers fit in memory"
        reasons.append(
            f"{need}, so the {_plural(first, 'loop')} needed take {machines} machines behind a "
            f"load balancer, each with {setting}, {outcome}."
        )
    if typical_utilisation is not None:
        reasons.append(
            f"At the typical {workload.typical_rate:g} requests/s the loops are "
            f"{typical_utilisation:.0%} busy."
        )
    if current is not None and current_utilisation is not None:
        now = f"Now {_plural(current, 'loop')} would be {current_utilisation:.0%} busy at peak"
        if current * share > machine.cores:
            now += (
                f", and when all are busy they want {current * share:.1f} cores of "
                f"{machine.cores:g}, so the measured loop time may include waiting for a core"
            )
        reasons.append(now + ".")
    if named and not blocked_first:
        reasons.append(
            f"Some routes hold the loop without using the CPU: {_routes_text(named)}. That is a "
            f"blocking call inside async def, and it stalls every other request of its worker "
            f"meanwhile: await an async client or run the call in a thread."
        )
    if share > CPU_BOUND and (
        limited_by == "cpu"
        or (current is not None and cpu_ceiling is not None and current > cpu_ceiling)
    ):
        reasons.append(
            f"The loops are CPU-bound and the {machine.cores:g} cores are the limit: more "
            f"workers on this machine will not help, the extra ones only wait for a core (loop "
            f"busy time cannot show this, CPU time can); add cores or machines or make requests "
            f"cheaper."
        )
    saturated = []
    if workload.utilisation is not None and workload.utilisation >= SATURATED_UTILISATION:
        saturated.append(f"measured event-loop utilisation {workload.utilisation:.0%}")
    if current_utilisation is not None and current_utilisation >= SATURATED_UTILISATION:
        saturated.append(f"the demand fills {current_utilisation:.0%} of the current loops")
    if workload.wait_growing:
        saturated.append("queue wait kept growing")
    if saturated:
        reasons.append(
            f"The loops were saturated ({', '.join(saturated)}): busy time measured then cannot "
            f"show demand beyond what the current loops could serve, so this suggestion is a "
            f"lower bound; measure again once it runs."
        )
    return Suggestion(
        processes=processes,
        threads=1,
        machines=machines,
        offered_load=demand,
        slots_for_utilisation=loops_for_utilisation,
        slots_for_wait=loops_for_wait,
        cpu_ceiling=cpu_ceiling,
        memory_ceiling=memory_ceiling,
        utilisation=utilisation,
        mean_wait=predicted_mean,
        wait_at_quantile=predicted_tail,
        typical_utilisation=typical_utilisation,
        current_utilisation=current_utilisation,
        limited_by=limited_by,
        lower_bound=bool(saturated),
        reasons=tuple(reasons),
        event_loops=True,
        loop_blocked=blocked_first,
        blocking_routes=tuple(b.route for b in named),
        pool_limited=pool_limited,
    )
