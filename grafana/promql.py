"""PromQL building blocks shared by the dashboard and the rules.

Metric names come from the contract in :mod:`workermeter.metrics`, never from string literals,
and the capacity formulas follow :mod:`workermeter.capacity` step by step.
"""

from __future__ import annotations

from collections.abc import Sequence

from workermeter import capacity
from workermeter import metrics as m

#: Memory kept free before workers are counted: the model's two default reserves.
RESERVES = 2 * capacity.RESERVE
#: ``capacity._ceil`` forgives float noise (15 x 0.2 is 3.0000000000000004 and needs 3 slots);
#: multiplying by this before ``ceil`` does the same for anything of 1 or more.
CEIL_FORGIVE = "0.999999999"


def name(metric: m.Metric, suffix: str = "") -> str:
    """The exposed series name of ``metric`` with ``suffix`` (``_total``, ``_bucket``...).

    :raises ValueError: if the metric does not expose that series.
    """
    series = metric.name + suffix
    if series not in m.sample_names(metric):
        raise ValueError(f"{metric.name} exposes {m.sample_names(metric)}, not {series}")
    return series


def counter(metric: m.Metric) -> str:
    return name(metric, "_total")


def by(labels: Sequence[str]) -> str:
    return f"by ({', '.join(labels)})"


def rate(series: str, selector: str, window: str) -> str:
    return f"rate({series}{selector}[{window}])"


def sum_rate(series: str, labels: Sequence[str], selector: str, window: str) -> str:
    return f"sum {by(labels)} ({rate(series, selector, window)})"


# A histogram is stored by a Prometheus as classic series (``_bucket`` by ``le``, ``_sum``,
# ``_count``) or, when it takes native histograms and scrapes the protobuf format, as one native
# series of the metric's own name. The queries below ask for the classic series or else the
# native one: whichever the Prometheus has.


def native(metric: m.Metric) -> str:
    """The native series of a histogram."""
    if metric.kind != "histogram":
        raise ValueError(f"{metric.name} is a {metric.kind}, not a histogram")
    return metric.name


def histogram_quantile(
    quantile: str, metric: m.Metric, labels: Sequence[str], selector: str, window: str
) -> str:
    """The ``quantile`` of a histogram over ``window``, by ``labels``, of either kind."""
    classic = sum_rate(name(metric, "_bucket"), (*labels, "le"), selector, window)
    return (
        f"histogram_quantile({quantile}, {classic})\n"
        f"or\nhistogram_quantile({quantile}, {sum_rate(native(metric), labels, selector, window)})"
    )


def histogram_sum_rate(
    metric: m.Metric, labels: Sequence[str], selector: str, window: str, part: str = "sum"
) -> str:
    """The rate of a histogram's sum (or, with ``part="count"``, of its count) by ``labels``,
    of either kind."""
    classic = sum_rate(name(metric, f"_{part}"), labels, selector, window)
    native_ = f"sum {by(labels)} (histogram_{part}({rate(native(metric), selector, window)}))"
    return f"(\n  {classic}\n  or\n  {native_}\n)"


def ceil_forgiving(x: str) -> str:
    """``ceil`` of ``x`` that, like ``capacity._ceil``, ignores float noise above an integer."""
    return f"ceil({x} * {CEIL_FORGIVE})"


def max_of(labels: Sequence[str], terms: Sequence[tuple[str, str]]) -> str:
    """The element-wise maximum of vectors that share ``labels``: each ``(bound, expr)`` gets a
    ``bound`` label so that ``or`` keeps them all, and ``max by`` picks the largest."""
    joined = "\n  or\n".join(
        f'  label_replace(\n{indent(expr, 4)},\n    "bound", "{bound}", "", "")'
        for bound, expr in terms
    )
    return f"max {by(labels)} (\n{joined}\n)"


def indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())


def utilisation(labels: Sequence[str], selector: str, window: str) -> str:
    """Busy slot-seconds per second over the slots there are (``workermeter_capacity_threads``
    is absent when a worker's capacity is unknown, and then so is its utilisation)."""
    busy = sum_rate(counter(m.BUSY), labels, selector, window)
    return f"{busy}\n  / sum {by(labels)} ({name(m.CAPACITY)}{selector})"


def all_slots_busy(labels: Sequence[str], selector: str, window: str) -> str:
    """Share of time every slot of every live worker process was busy, at least: one minus the
    shares of time each process had a free slot (exact for one process). Slots of workers that
    are gone (their pid gauge went with them) are left out."""
    per_worker = (
        f"{rate(counter(m.ALL_BUSY), selector, window)}\n"
        f"      and on ({', '.join((*labels, 'worker'))}) {name(m.WORKER_PID)}{selector}"
    )
    return f"clamp(\n  1 - sum {by(labels)} (1 - (\n      {per_worker}\n  )),\n  0, 1)"


def cpu_share(labels: Sequence[str], selector: str, window: str, busy: str) -> str:
    """CPU time over service time of the sampled requests; when none was sampled, the worker
    processes' CPU time over their busy time (``busy``, an expression by ``labels``)."""
    sampled = sum_rate(counter(m.CPU), labels, selector, window)
    wall = sum_rate(counter(m.CPU_WALL), labels, selector, window)
    process = sum_rate(counter(m.PROCESS_CPU), labels, selector, window)
    return (
        f"clamp(\n    {sampled}\n      / ({wall} > 0)\n  or\n"
        f"    {process}\n      / ({busy} > 0),\n  0, 1)"
    )


def route_cpu_share(labels: Sequence[str], selector: str, window: str) -> str:
    sampled = sum_rate(counter(m.CPU), labels, selector, window)
    wall = sum_rate(counter(m.CPU_WALL), labels, selector, window)
    return f"{sampled}\n  / ({wall} > 0)"


def thread_limit(share: str) -> str:
    """Threads per process for a CPU share, as ``capacity.suggest`` picks them: about
    ``1 / share`` (the GIL runs one thread at a time), between 1 and ``capacity.MAX_THREADS``."""
    return f"clamp(floor(1 / {share} + 1e-09), 1, {capacity.MAX_THREADS})"


def memory_ceiling(labels: Sequence[str], selector: str) -> str:
    """Worker processes that fit in a host's memory after the reserves, the first at its RSS and
    each further one at its USS (RSS where USS could not be read): ``Machine.memory_ceiling``."""
    rss = f"max {by(labels)} ({name(m.RSS)}{selector})"
    uss = f"max {by(labels)} ({name(m.USS)}{selector})"
    total = f"max {by(labels)} ({name(m.HOST_MEMORY)}{selector})"
    return (
        f"clamp_min(\n  floor(\n    ({total}\n      - {RESERVES}\n      - {rss})\n"
        f"    / ({uss}\n      or {rss})\n  ) + 1,\n  0)"
    )


# ---------------------------------------------------------------- async workers: the event loops


def loop_busy(labels: Sequence[str], selector: str, window: str) -> str:
    """Loop-seconds per second the event loops were busy: the sum of their ELUs."""
    return sum_rate(counter(m.LOOP_BUSY), labels, selector, window)


def loops_observed(labels: Sequence[str], selector: str, window: str) -> str:
    """Event loops measured: seconds observed per second (below the count of loops for those
    measured for part of the window)."""
    return sum_rate(counter(m.LOOP_OBSERVED), labels, selector, window)


def loop_utilisation(labels: Sequence[str], selector: str, window: str) -> str:
    """Event-loop utilisation (ELU): busy seconds over seconds observed."""
    observed = loops_observed(labels, selector, window)
    return f"{loop_busy(labels, selector, window)}\n  / ({observed} > 0)"


def any_utilisation(labels: Sequence[str], selector: str, window: str) -> str:
    """Utilisation of sync and async workers alike, with a ``kind`` label: the event loops' ELU
    where the workers run loops, else busy slots over slots. An async worker's busy slot-seconds
    count requests in flight, not busyness, so its loops always win."""
    loops = loop_utilisation(labels, selector, window)
    return (
        f'label_replace(\n{indent(loops, 2)},\n  "kind", "event loops", "", "")\nor\n'
        f"label_replace(\n{indent(utilisation(labels, selector, window), 2)}\n"
        f'  unless on ({", ".join(labels)})\n{indent(loops, 2)},\n  "kind", "slots", "", "")'
    )


def loop_cpu(labels: Sequence[str], selector: str, window: str) -> str:
    """CPU seconds per second of the worker processes that run an event loop."""
    cpu = rate(counter(m.PROCESS_CPU), selector, window)
    observed = rate(counter(m.LOOP_OBSERVED), selector, window)
    return f"sum {by(labels)} (\n  {cpu}\n    and on (job, instance, worker) {observed}\n)"


def loop_cpu_share(cpu: str, busy: str) -> str:
    """The loops' CPU time over their busy time, 0..1 (``cpu`` and ``busy`` by the same labels);
    1 while the loops are idle or without CPU figures, as ``observe_loops`` takes it, so that no
    blocking is seen that was not."""
    return f"clamp({cpu}\n  / ({busy} > 0), 0, 1)\nor\n{busy} * 0 + 1"


def spawned_ceiling(labels: Sequence[str], selector: str) -> str:
    """Worker processes that fit in a host's memory after the reserves when each costs its full
    RSS (spawned workers share no pages): ``Machine.spawned_ceiling``."""
    rss = f"max {by(labels)} ({name(m.RSS)}{selector})"
    total = f"max {by(labels)} ({name(m.HOST_MEMORY)}{selector})"
    return f"clamp_min(\n  floor(\n    ({total}\n      - {RESERVES})\n    / {rss}\n  ),\n  0)"


def blocking_routes(selector: str, window: str, loop_busy_job: str, not_cpu: float) -> str:
    """Per job and route, the share of the loops' busy time the route held the loop without the
    CPU, as ``observe_loops.blocking_routes`` reckons it: the sampled requests' held-minus-CPU
    share of their service time, times all of the route's service time, over the loops' busy
    time (``loop_busy_job``, by job). Only routes whose held time was at most ``1 - not_cpu``
    CPU are listed."""
    labels = ("job", "route")
    held = sum_rate(counter(m.LOOP_HELD), labels, selector, window)
    cpu = sum_rate(counter(m.CPU), labels, selector, window)
    wall = sum_rate(counter(m.CPU_WALL), labels, selector, window)
    served = histogram_sum_rate(m.DURATION, labels, selector, window)
    return (
        f"clamp(\n  ({held}\n    - {cpu})\n  / ({wall} > 0)\n  * {served}\n"
        f"  / on (job) group_left () ({loop_busy_job} > 0),\n  0, 1)\n"
        f"and on (job, route)\n  {cpu}\n  <= {1 - not_cpu:g} * ({held} > 0)"
    )
