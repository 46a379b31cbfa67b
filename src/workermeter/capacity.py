"""Capacity model: how many processes x threads, and how many machines, a web app needs.

Every thread of every worker process is a *slot* that serves one request at a time; the slots of a
machine pull from one first-come-first-served queue (the listen socket). Requests arrive as a
Poisson process at the peak rate λ and need a service time with mean S and coefficient of
variation cv (0 = always the same, 1 = exponential). From that:

- offered load A = λ·S is the mean number of busy slots (Little's law);
- slots for a utilisation target u are ⌈A / u⌉, simple enough to write in PromQL;
- slots for a queue-wait target are the fewest c that meet it, from Erlang C for M/M/c with the
  Allen-Cunneen factor (1 + cv²)/2 for service-time variability: mean wait
  W = C·S / (c - A) · (1 + cv²)/2, tail P(wait > t) ≈ C·exp(-2(c - A)·t / ((1 + cv²)·S));
- threads per process ≈ 1 / CPU share (capped): the GIL runs one thread per process at a time, so
  CPU-bound apps get processes and I/O-bound apps get threads;
- a CPU ceiling (slots ≤ cores / CPU share), a memory ceiling (processes that fit after reserves:
  the first at its RSS, each further one at its USS), and the fewest machines whose share of the
  load fits both.

Async workers (uvicorn, gunicorn's uvicorn worker, gevent) are sized by their event loops instead
(:mod:`workermeter.loop_capacity`): a workload with ``loops`` gets that answer from :func:`suggest`.

Assumptions: Poisson arrivals, one queue per machine, a service time that does not grow with load
(true inside the CPU ceiling), steady state. Against a simulation (docs/capacity.md) the mean wait
is within 5 % for exponential service times, and for fixed ones within 5 % at 80-90 % utilisation
and up to 18 % low at 50 %, where waits are tiny. When the workers were saturated, neither rate nor
busy time can show demand beyond the capacity they had, so the answer is marked as a lower bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "BlockingRoute",
    "LoopDemand",
    "Machine",
    "Suggestion",
    "Targets",
    "Workload",
    "erlang_c",
    "mean_wait",
    "suggest",
    "wait_percentile",
]

MIB = 1024 * 1024
#: The seeds' reserves: 512 MiB for the system and 512 MiB more for other processes/disk cache.
RESERVE = 512 * MIB
#: Measured utilisation at or above this means the workers were saturated.
SATURATED_UTILISATION = 0.95
#: A share of time with every slot busy at or above this means the workers were saturated.
SATURATED_ALL_BUSY = 0.9
#: CPU share above which an app is called CPU-bound: one thread per process.
CPU_BOUND = 0.5
#: Default cap on threads per process, so an I/O-bound app still spreads over a few processes.
MAX_THREADS = 8


def _real(name: str, value: object, what: str, low: float, high: float = math.inf) -> float:
    """Check that ``value`` is a finite number in ``[low, high]``; return it as a float."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(value)


def _count(name: str, value: object, low: int = 1) -> int:
    """Check that ``value`` is an integer of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _ceil(x: float) -> int:
    """``ceil`` that forgives float noise: 15 * 0.2 is 3.0000000000000004, and needs 3 slots."""
    nearest = round(x)
    return nearest if abs(x - nearest) <= 1e-9 * max(1.0, abs(x)) else math.ceil(x)


def _erlang_b(servers: int, offered_load: float) -> float:
    # B(0) = 1, B(k) = A·B(k-1) / (k + A·B(k-1)): each step is in (0, 1], so nothing overflows
    # the way A^c / c! does, and it costs c steps.
    b = 1.0
    for k in range(1, servers + 1):
        b = offered_load * b / (k + offered_load * b)
    return b


def _c_from_b(servers: int, offered_load: float, b: float) -> float:
    if offered_load >= servers:
        return 1.0
    # C = c·B / (c - A·(1 - B)); the denominator stays >= c·B > 0 as A approaches c.
    return servers * b / (servers - offered_load * (1.0 - b))


def _check_queue(servers: object, offered_load: object) -> tuple[int, float]:
    return (
        _count("servers", servers),
        _real("offered_load", offered_load, "the mean number of busy slots (λ·S) >= 0", 0.0),
    )


def erlang_c(servers: int, offered_load: float) -> float:
    """The probability that a request has to wait in an M/M/c queue (Erlang C).

    Computed from the Erlang B recursion, which is stable for thousands of servers and for
    loads close to saturation.

    :param servers: the number of slots ``c`` (processes x threads), at least 1.
    :param offered_load: ``A = λ·S``, the mean number of busy slots, at least 0.
    :return: a probability in ``[0, 1]``; 1 when ``offered_load >= servers`` (saturated).
    :raises ValueError: if an argument is out of range.
    """
    servers, offered_load = _check_queue(servers, offered_load)
    return _c_from_b(servers, offered_load, _erlang_b(servers, offered_load))


def _variability(cv: object) -> float:
    cv = _real("cv", cv, "the service time's coefficient of variation >= 0 (0 = fixed)", 0.0)
    return (1.0 + cv * cv) / 2.0


def mean_wait(servers: int, offered_load: float, service_time: float, *, cv: float = 1.0) -> float:
    """The mean queue wait in seconds of an M/G/c queue (Allen-Cunneen approximation).

    ``W = C(c, A) · S / (c - A) · (1 + cv²) / 2``: exact for M/M/c (cv 1) and for M/G/1.

    :param servers: the number of slots ``c``.
    :param offered_load: ``A = λ·S``, the mean number of busy slots.
    :param service_time: the mean service time ``S`` in seconds, above 0.
    :param cv: the coefficient of variation of the service time: 0 fixed, 1 exponential.
    :return: seconds; ``math.inf`` when ``offered_load >= servers``.
    :raises ValueError: if an argument is out of range.
    """
    servers, offered_load = _check_queue(servers, offered_load)
    service_time = _service_time(service_time)
    factor = _variability(cv)
    if offered_load >= servers:
        return math.inf
    waiting = _c_from_b(servers, offered_load, _erlang_b(servers, offered_load))
    return waiting * service_time / (servers - offered_load) * factor


def _service_time(value: object) -> float:
    what = "the mean service time in seconds > 0"
    seconds = _real("service_time", value, what, 0.0)
    if seconds == 0:
        raise ValueError(f"service_time must be {what}, got {value!r}")
    return seconds


def _percentile(
    waiting: float, servers: int, offered_load: float, service_time: float, q: float, factor: float
) -> float:
    if offered_load >= servers:
        return math.inf
    if waiting <= 1.0 - q:
        return 0.0
    return math.log(waiting / (1.0 - q)) * service_time * factor / (servers - offered_load)


def wait_percentile(
    servers: int,
    offered_load: float,
    service_time: float,
    *,
    quantile: float = 0.95,
    cv: float = 1.0,
) -> float:
    """The queue wait in seconds that a share ``quantile`` of requests stay within.

    Uses ``P(wait > t) ≈ C · exp(-(c - A)/S · t / f)`` with ``f = (1 + cv²)/2``: the M/M/c tail
    (exact for cv 1) with its decay slowed or sped up by the Allen-Cunneen factor, so that the
    mean wait of the waiting requests matches :func:`mean_wait`. 0 when fewer than
    ``1 - quantile`` of requests wait at all.

    :param servers: the number of slots ``c``.
    :param offered_load: ``A = λ·S``, the mean number of busy slots.
    :param service_time: the mean service time ``S`` in seconds, above 0.
    :param quantile: e.g. 0.95 for the p95 wait; strictly between 0 and 1.
    :param cv: the coefficient of variation of the service time: 0 fixed, 1 exponential.
    :return: seconds; ``math.inf`` when ``offered_load >= servers``.
    :raises ValueError: if an argument is out of range.
    """
    servers, offered_load = _check_queue(servers, offered_load)
    service_time = _service_time(service_time)
    q = _quantile(quantile)
    factor = _variability(cv)
    waiting = _c_from_b(servers, offered_load, _erlang_b(servers, offered_load))
    return _percentile(waiting, servers, offered_load, service_time, q, factor)


def _quantile(value: object) -> float:
    q = _real("quantile", value, "a share strictly between 0 and 1, e.g. 0.95", 0.0, 1.0)
    if q in (0.0, 1.0):
        raise ValueError(f"quantile must be a share strictly between 0 and 1, e.g. 0.95, got {q!r}")
    return q


def _slots_for_wait(
    offered_load: float, service_time: float, factor: float, wait: float, q: float
) -> int:
    """The fewest slots whose ``q`` wait percentile is at most ``wait`` seconds."""
    servers = math.floor(offered_load) + 1
    b = _erlang_b(servers, offered_load)
    while True:
        waiting = _c_from_b(servers, offered_load, b)
        if _percentile(waiting, servers, offered_load, service_time, q, factor) <= wait:
            return servers
        servers += 1
        b = offered_load * b / (servers + offered_load * b)


@dataclass(frozen=True)
class BlockingRoute:
    """A route whose requests hold an event loop without using the CPU: a blocking call
    (``time.sleep``, a sync database driver or HTTP client) inside ``async def``.

    :param route: the route template.
    :param per_request: seconds each request held the loop without the CPU, on average.
    :param loop_share: its share of the loops' busy time, 0..1.
    """

    route: str
    per_request: float
    loop_share: float

    def __post_init__(self) -> None:
        if not isinstance(self.route, str):
            raise ValueError(f"route must be a route template (str), got {self.route!r}")
        _real("per_request", self.per_request, "seconds per request >= 0", 0.0)
        _real("loop_share", self.loop_share, "a share of the loops' busy time, 0..1", 0.0, 1.0)


@dataclass(frozen=True)
class LoopDemand:
    """What the event loops of async workers (one loop per worker process) were asked to do.

    :param busy: loop-seconds per second at the peak: the sum of every worker's event-loop
        utilisation (ELU), that is how many loops' worth of work there was.
    :param cpu_share: share of that busy time spent on the CPU (the workers' CPU time over their
        loops' busy time), 0..1. The rest is a loop held without the CPU: a blocking call.
    :param blocking: routes that hold the loops without the CPU, in any order.
    :param pool_threads: threads of each worker's thread pool (anyio's limiter, which runs sync
        endpoints), if the workers have one.
    :param pool_utilisation: share of the pools' thread-seconds taken at the peak, 0..1.
    :param pool_wait: task-seconds per second spent waiting for a thread of the pools.
    """

    busy: float
    cpu_share: float
    blocking: tuple[BlockingRoute, ...] = ()
    pool_threads: int | None = None
    pool_utilisation: float | None = None
    pool_wait: float = 0.0

    def __post_init__(self) -> None:
        _real("busy", self.busy, "loop-seconds per second >= 0 (the sum of the ELUs)", 0.0)
        _real("cpu_share", self.cpu_share, "the CPU time / loop busy time share, 0..1", 0.0, 1.0)
        if not isinstance(self.blocking, tuple) or not all(
            isinstance(b, BlockingRoute) for b in self.blocking
        ):
            raise ValueError(f"blocking must be a tuple of BlockingRoute, got {self.blocking!r}")
        if self.pool_threads is not None:
            _count("pool_threads", self.pool_threads)
        if self.pool_utilisation is not None:
            what = "a measured share of the pool's thread-seconds, 0..1 (or None)"
            _real("pool_utilisation", self.pool_utilisation, what, 0.0, 1.0)
        _real("pool_wait", self.pool_wait, "task-seconds per second >= 0", 0.0)


@dataclass(frozen=True)
class Workload:
    """What the app is asked to do, measured over a window (a busy day, say).

    :param peak_rate: requests per second at the peak of the window; the model sizes for it.
    :param service_time: mean seconds a request occupies a slot (the app's own time, without
        queue wait).
    :param cpu_share: share of the service time spent on the CPU, 0..1 (CPU time / service
        time): near 1 for CPU-bound code, near 0 for code waiting on a database or an API.
    :param service_cv: coefficient of variation of the service time (standard deviation /
        mean): 0 when every request takes the same time, 1 for exponential, above 1 when a few
        slow routes dominate.
    :param typical_rate: requests per second at a typical moment, to say how busy the suggestion
        is then; at most ``peak_rate``.
    :param utilisation: measured share of the current slots' time spent busy, 0..1.
    :param all_busy_share: measured share of time during which every slot was busy, 0..1.
    :param wait_growing: whether queue wait or the listen backlog kept growing over the window.
    :param loops: for async workers, what their event loops did; the suggestion then counts
        loops (processes), not slots, and ``utilisation`` is the loops' ELU.

    ``utilisation``, ``all_busy_share`` and ``wait_growing`` describe the current setting; any of
    them showing saturation makes the suggestion a lower bound.
    """

    peak_rate: float
    service_time: float
    cpu_share: float
    service_cv: float = 1.0
    typical_rate: float | None = None
    utilisation: float | None = None
    all_busy_share: float | None = None
    wait_growing: bool = False
    loops: LoopDemand | None = None

    def __post_init__(self) -> None:
        _real("peak_rate", self.peak_rate, "requests per second >= 0", 0.0)
        _service_time(self.service_time)
        _real("cpu_share", self.cpu_share, "the CPU time / service time share, 0..1", 0.0, 1.0)
        _variability(self.service_cv)
        if self.typical_rate is not None:
            what = f"requests per second between 0 and peak_rate ({self.peak_rate!r})"
            _real("typical_rate", self.typical_rate, what, 0.0, self.peak_rate)
        for name in ("utilisation", "all_busy_share"):
            value = getattr(self, name)
            if value is not None:
                _real(name, value, "a measured share of time, 0..1 (or None)", 0.0, 1.0)
        if not isinstance(self.wait_growing, bool):
            raise ValueError(f"wait_growing must be True or False, got {self.wait_growing!r}")
        if self.loops is not None and not isinstance(self.loops, LoopDemand):
            raise ValueError(f"loops must be a LoopDemand or None, got {self.loops!r}")


@dataclass(frozen=True)
class Machine:
    """One machine the app runs on, and how it is set up now.

    :param cores: CPU cores available to the app (a fractional container quota is fine), >= 1.
    :param memory_total: the machine's physical memory in bytes.
    :param process_rss: resident memory of one warmed-up worker process, in bytes. The first
        process is counted at its RSS: it pays for the pages all workers share.
    :param process_uss: unique memory of one warmed-up worker, in bytes (the memory freed if it
        exited). Each further process is counted at its USS, since forked workers share the rest
        (more so with ``--preload``). Defaults to ``process_rss``, which is safe but pessimistic.
    :param processes: worker processes serving the rate now, if known.
    :param threads: threads per worker process now.
    :param reserve_system: bytes kept for the operating system (default 512 MiB).
    :param reserve_other: bytes kept for everything else on the machine: a database, other
        sites, disk cache (default 512 MiB).
    """

    cores: float
    memory_total: int
    process_rss: int
    process_uss: int | None = None
    processes: int | None = None
    threads: int = 1
    reserve_system: int = RESERVE
    reserve_other: int = RESERVE

    def __post_init__(self) -> None:
        _real("cores", self.cores, "the number of CPU cores, >= 1", 1.0)
        _count("memory_total", self.memory_total)
        _count("process_rss", self.process_rss)
        if self.process_uss is not None:
            _count("process_uss", self.process_uss)
            if self.process_uss > self.process_rss:
                raise ValueError(
                    f"process_uss ({self.process_uss}) cannot exceed process_rss "
                    f"({self.process_rss}): pass the unique memory of one worker, or None"
                )
        if self.processes is not None:
            _count("processes", self.processes)
        _count("threads", self.threads)
        _count("reserve_system", self.reserve_system, 0)
        _count("reserve_other", self.reserve_other, 0)
        if self.memory_ceiling < 1:
            raise ValueError(
                f"memory_total ({_mib(self.memory_total)}) minus reserves "
                f"({_mib(self.reserve_system + self.reserve_other)}) leaves no room for one "
                f"process of {_mib(self.process_rss)}: pass smaller reserve_system/reserve_other "
                f"or the memory of a larger machine"
            )

    @property
    def memory_ceiling(self) -> int:
        """Worker processes that fit: the first at its RSS, each further one at its USS."""
        free = self.memory_total - self.reserve_system - self.reserve_other - self.process_rss
        if free < 0:
            return 0
        return 1 + free // (self.process_uss or self.process_rss)

    @property
    def spawned_ceiling(self) -> int:
        """Worker processes that fit when each costs its full RSS: spawned workers (uvicorn
        ``--workers``) share no pages with each other, so their USS does not apply."""
        free = self.memory_total - self.reserve_system - self.reserve_other
        return max(0, free // self.process_rss)


@dataclass(frozen=True)
class Targets:
    """What the suggestion must achieve at the peak rate.

    :param utilisation: the share of time each slot may be busy, in (0, 1]. 0.8 leaves room for
        bursts; 1.0 turns the target off (it never bounds the queue).
    :param wait: the longest queue wait in seconds allowed at ``wait_quantile``, or None.
    :param wait_quantile: which requests ``wait`` is for: 0.95 means 95 % of them.
    :param loop_utilisation: the share of time each event loop (one async worker process) may
        be busy, in (0, 1]: lower than ``utilisation``, because one loop is one server with a
        queue of its own (see docs/capacity.md).
    """

    utilisation: float = 0.8
    loop_utilisation: float = 0.6
    wait: float | None = None
    wait_quantile: float = 0.95

    def __post_init__(self) -> None:
        target = _real("utilisation", self.utilisation, "a share in (0, 1], e.g. 0.8", 0.0, 1.0)
        if target == 0:
            raise ValueError("utilisation must be a share in (0, 1], e.g. 0.8, got 0")
        loop = _real(
            "loop_utilisation", self.loop_utilisation, "a share in (0, 1], e.g. 0.6", 0.0, 1.0
        )
        if loop == 0:
            raise ValueError("loop_utilisation must be a share in (0, 1], e.g. 0.6, got 0")
        if self.wait is not None:
            _real("wait", self.wait, "seconds of queue wait >= 0 (or None)", 0.0)
        _quantile(self.wait_quantile)


@dataclass(frozen=True)
class Suggestion:
    """The answer: ``processes`` x ``threads`` on each of ``machines`` machines, and why.

    :param processes: worker processes per machine (gunicorn ``-w``).
    :param threads: threads per process (gunicorn ``--threads``).
    :param machines: machines needed, each with the same setting behind a load balancer.
    :param offered_load: ``λ·S`` at the peak: slots busy on average (Little's law).
    :param slots_for_utilisation: ``⌈λ·S / target⌉`` for all machines together.
    :param slots_for_wait: the fewest slots meeting the wait target, or None without one.
    :param cpu_ceiling: slots one machine's cores can keep running (cores / CPU share), or None
        when the CPU share is (about) 0.
    :param memory_ceiling: worker processes that fit in one machine's memory.
    :param utilisation: predicted share of time each slot is busy at the peak.
    :param mean_wait: predicted mean queue wait at the peak, in seconds.
    :param wait_at_quantile: predicted queue wait at the target's quantile (p95 by default).
    :param typical_utilisation: predicted utilisation at the typical rate, if one was given.
    :param current_utilisation: the current setting's utilisation at the peak rate (above 1
        means overload), if the current processes are known.
    :param limited_by: what forced more than one machine: ``"cpu"`` or ``"memory"``.
    :param lower_bound: the inputs show saturation, so real demand may be higher.
    :param reasons: one plain-English sentence per step, in order.
    :param event_loops: the answer counts event loops (async workers, one thread each): the
        slot fields then count loops, and utilisation is event-loop utilisation.
    :param loop_blocked: most of the loops' busy time was not CPU: a blocking call holds them,
        and the reasons say so first.
    :param blocking_routes: routes named for holding the loop without the CPU, most first.
    :param pool_limited: the thread pool that runs sync endpoints, not the loop, is the limit.
    """

    processes: int
    threads: int
    machines: int
    offered_load: float
    slots_for_utilisation: int
    slots_for_wait: int | None
    cpu_ceiling: float | None
    memory_ceiling: int
    utilisation: float
    mean_wait: float
    wait_at_quantile: float
    typical_utilisation: float | None
    current_utilisation: float | None
    limited_by: Literal["cpu", "memory"] | None
    lower_bound: bool
    reasons: tuple[str, ...]
    event_loops: bool = False
    loop_blocked: bool = False
    blocking_routes: tuple[str, ...] = ()
    pool_limited: bool = False

    @property
    def slots(self) -> int:
        """Slots in total: machines x processes x threads."""
        return self.machines * self.processes * self.threads


def _mib(n: int) -> str:
    return f"{n / MIB:,.0f} MiB"


def _ms(seconds: float) -> str:
    return "unbounded" if math.isinf(seconds) else f"{seconds * 1000:,.0f} ms"


def _plural(n: int, word: str, words: str = "") -> str:
    return f"{n} {word}" if n == 1 else f"{n} {words or word + 's'}"


@dataclass(frozen=True)
class _Plan:
    slots: int  # needed on one machine
    processes: int
    threads: int


def suggest(
    workload: Workload,
    machine: Machine,
    targets: Targets | None = None,
    *,
    max_threads: int = MAX_THREADS,
) -> Suggestion:
    """Suggest processes x threads (and machines) for ``workload`` on machines like ``machine``.

    Example::

        suggest(Workload(peak_rate=15, service_time=0.2, cpu_share=0.9),
                Machine(cores=2, memory_total=4 << 30, process_rss=150 << 20))

    An async workload (``workload.loops`` set) is sized by its event loops instead: see
    :func:`workermeter.loop_capacity.suggest_loops`.

    :param workload: the rate, service time and CPU share, and any signs of saturation.
    :param machine: cores, memory and the current setting of one machine.
    :param targets: utilisation and wait targets; ``Targets()`` (80 % busy) by default.
    :param max_threads: the most threads per process to suggest for I/O-bound apps.
    :return: a :class:`Suggestion` with the reasoning in ``reasons``.
    :raises ValueError: if ``max_threads`` is not an integer >= 1.
    """
    targets = Targets() if targets is None else targets
    max_threads = _count("max_threads", max_threads)
    if workload.loops is not None:
        # Imported here: the loop model builds on this module's types and formulas.
        from .loop_capacity import suggest_loops

        return suggest_loops(workload, workload.loops, machine, targets)
    rate, service = workload.peak_rate, workload.service_time
    share, target = workload.cpu_share, targets.utilisation
    factor = (1.0 + workload.service_cv**2) / 2.0
    load = rate * service
    ceiling = machine.cores / share if share > 0 else math.inf
    cpu_ceiling = ceiling if math.isfinite(ceiling) else None
    memory_ceiling = machine.memory_ceiling
    # The GIL lets one thread of a process run Python at a time: about 1 / share threads keep
    # that one core busy, more only queue for the GIL.
    gil_threads = max_threads if share * max_threads <= 1 else max(1, int(1 / share + 1e-9))

    def slots_for(offered: float) -> tuple[int, int | None]:
        by_utilisation = _ceil(offered / target)
        by_wait = None
        if targets.wait is not None:
            by_wait = _slots_for_wait(offered, service, factor, targets.wait, targets.wait_quantile)
        return by_utilisation, by_wait

    def plan(machines: int) -> _Plan:
        by_utilisation, by_wait = slots_for(load / machines)
        slots = max(1, by_utilisation, by_wait or 0)
        threads = min(gil_threads, slots)
        processes = math.ceil(slots / threads)
        return _Plan(slots, processes, math.ceil(slots / processes))

    def fits(p: _Plan) -> tuple[bool, bool]:
        cpu_ok = cpu_ceiling is None or p.slots <= cpu_ceiling + 1e-9
        return cpu_ok, p.processes <= memory_ceiling

    slots_for_utilisation, slots_for_wait = slots_for(load)
    first = plan(1)
    limited_by: Literal["cpu", "memory"] | None = None
    machines, chosen = 1, first
    if not all(fits(first)):
        # Each machine holds at most cores / share slots and memory_ceiling processes, and needs
        # at least (its load / target) slots: a lower bound to start counting from.
        least = load / target / (gil_threads * memory_ceiling)
        if cpu_ceiling is not None:
            least = max(least, load / target / cpu_ceiling)
        machines = max(2, _ceil(least))
        chosen = plan(machines)
        while not all(fits(chosen)):
            machines += 1
            chosen = plan(machines)
        while machines > 1 and all(fits(plan(machines - 1))):
            machines -= 1  # only if float noise made the lower bound overshoot
            chosen = plan(machines)
        # The limit that binds is the one one machine fewer would break.
        limited_by = "memory" if fits(plan(machines - 1))[0] else "cpu"

    slots = chosen.processes * chosen.threads
    per_machine = load / machines
    utilisation = per_machine / slots
    predicted_mean = mean_wait(slots, per_machine, service, cv=workload.service_cv)
    predicted_tail = wait_percentile(
        slots, per_machine, service, quantile=targets.wait_quantile, cv=workload.service_cv
    )
    typical_utilisation = None
    if workload.typical_rate is not None:
        typical_utilisation = workload.typical_rate * service / machines / slots
    current_slots = None if machine.processes is None else machine.processes * machine.threads
    current_utilisation = None if current_slots is None else load / current_slots

    pct = f"{targets.wait_quantile * 100:g}"
    reasons = [
        f"At the peak of {rate:g} requests/s taking {_ms(service)} each, {load:.2f} slots are "
        f"busy on average (offered load = rate x service time, Little's law)."
    ]
    if target < 1:
        reasons.append(
            f"Keeping each slot at most {target:.0%} busy needs {load:.2f} / {target:g} = "
            f"{slots_for_utilisation} slots, rounded up."
        )
    else:
        reasons.append(
            f"At 100% busy, {load:.2f} / 1 = {slots_for_utilisation} slots are just enough, but "
            f"then the queue never drains after a burst: choose a target below 1, like 0.8, or "
            f"a wait target."
        )
    if slots_for_wait is not None:
        reasons.append(
            f"Keeping the p{pct} queue wait within {_ms(targets.wait or 0.0)} needs "
            f"{slots_for_wait} slots (Erlang C for M/M/c, scaled by (1 + cv²)/2 = {factor:.2f} "
            f"for service-time variability: the Allen-Cunneen approximation)."
        )
    if share > CPU_BOUND:
        reasons.append(
            f"Requests spend {share:.0%} of their time on the CPU and the GIL lets only one "
            f"thread per process run Python at a time, so the app needs processes, not "
            f"threads: {_plural(chosen.threads, 'thread')} per process."
        )
    elif max_threads == 1:
        reasons.append(
            f"Requests spend only {share:.0%} of their time on the CPU, so threads could share "
            f"a process's GIL, but max_threads=1 makes every slot a process."
        )
    else:
        about = (
            f"about {1 / share:.0f} threads can"
            if share * max_threads > 1
            else f"more threads than the cap of {max_threads} could"
        )
        reasons.append(
            f"Requests spend only {share:.0%} of their time on the CPU, so {about} share one "
            f"process's GIL while the others wait on I/O: {_plural(chosen.threads, 'thread')} "
            f"per process, which needs fewer processes and less memory."
        )
    if cpu_ceiling is None:
        reasons.append("With a CPU share of about 0, the cores set no ceiling on slots.")
    else:
        reasons.append(
            f"{machine.cores:g} cores keep at most {cpu_ceiling:.1f} slots running at once "
            f"(cores / CPU share), and the peak uses {load * share:.2f} cores."
        )
    uss = machine.process_uss or machine.process_rss
    reasons.append(
        f"After {_mib(machine.reserve_system)} for the system and {_mib(machine.reserve_other)} "
        f"for other processes, {_mib(machine.memory_total)} fits {memory_ceiling} worker "
        f"processes (the first at its RSS of {_mib(machine.process_rss)}, each further one at "
        f"its USS of {_mib(uss)})."
    )
    setting = (
        f"{_plural(chosen.processes, 'process', 'processes')} x "
        f"{_plural(chosen.threads, 'thread')} = {_plural(slots, 'slot')}"
    )
    outcome = (
        f"{utilisation:.0%} busy at the peak, mean queue wait {_ms(predicted_mean)}, "
        f"p{pct} {_ms(predicted_tail)}"
    )
    if machines == 1:
        reasons.append(f"One machine is enough: {setting}, {outcome}.")
    else:
        if limited_by == "cpu":
            need = (
                f"{machine.cores:g} cores run at most {cpu_ceiling or 0:.1f} slots, so the "
                f"{first.slots} slots needed"
            )
        else:
            need = (
                f"{memory_ceiling} processes fit in memory, so the {first.processes} processes "
                f"needed"
            )
        reasons.append(
            f"{need} take {machines} machines behind a load balancer, each with {setting}, "
            f"{outcome}."
        )
    if typical_utilisation is not None:
        reasons.append(
            f"At the typical {workload.typical_rate:g} requests/s the slots are "
            f"{typical_utilisation:.0%} busy."
        )
    if current_slots is not None and current_utilisation is not None:
        now = (
            f"Now {_plural(current_slots, 'slot')} would be {current_utilisation:.0%} busy at peak"
        )
        if current_slots * share > machine.cores:
            now += (
                f", and when all are busy they want {current_slots * share:.1f} cores of "
                f"{machine.cores:g}, so the measured service time may include waiting for a core"
            )
        reasons.append(now + ".")
    cores_limit = share > CPU_BOUND and (
        limited_by == "cpu"
        or (current_slots is not None and cpu_ceiling is not None and current_slots > cpu_ceiling)
    )
    if cores_limit:
        reasons.append(
            f"This app is CPU-bound and the {machine.cores:g} cores are the limit: more workers "
            f"on this machine will not help, the extra ones only wait for a core and make every "
            f"request slower (busy time cannot show this, CPU time can); add cores or machines "
            f"or make requests cheaper."
        )
    saturated = []
    if workload.utilisation is not None and workload.utilisation >= SATURATED_UTILISATION:
        saturated.append(f"measured utilisation {workload.utilisation:.0%}")
    if current_utilisation is not None and current_utilisation >= SATURATED_UTILISATION:
        saturated.append(f"rate x service time fills {current_utilisation:.0%} of the slots")
    if workload.all_busy_share is not None and workload.all_busy_share >= SATURATED_ALL_BUSY:
        saturated.append(f"all slots busy {workload.all_busy_share:.0%} of the time")
    if workload.wait_growing:
        saturated.append("queue wait kept growing")
    if saturated:
        reasons.append(
            f"The workers were saturated ({', '.join(saturated)}): a rate or busy time measured "
            f"then cannot show demand beyond what the current slots could serve, and service "
            f"times measured then may be inflated, so this suggestion is a lower bound; measure "
            f"again once it runs."
        )
    return Suggestion(
        processes=chosen.processes,
        threads=chosen.threads,
        machines=machines,
        offered_load=load,
        slots_for_utilisation=slots_for_utilisation,
        slots_for_wait=slots_for_wait,
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
    )
