"""The Prometheus recording and alerting rules, and their YAML.

Recording rules hold the expressions that are expensive or used in several places: utilisation,
queue-wait quantiles, CPU share, and the capacity model's utilisation-target method, per job (the
fleet) and per instance (one host). Async workers (uvicorn, gunicorn's uvicorn and gevent workers)
have the same series: their utilisation is the event loops' ELU, and the suggestion counts loops
at the loop target (one thread per process, every worker at its full RSS), as
:mod:`workermeter.loop_capacity` does. Names follow Prometheus's ``level:metric:operations``
convention and do not change with :class:`Settings`, so the dashboard can query them.

The windows, thresholds and ``for:`` durations are :class:`Settings`; the committed file uses the
defaults, and the real-Prometheus test builds a copy with second-long windows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from workermeter import capacity, loop_capacity, observe_loops
from workermeter import metrics as m

from . import promql as q

JOB = ("job",)
INSTANCE = ("job", "instance")

RUNBOOK = "https://github.com/workermeter/workermeter/blob/main/docs/alerts.md"

# Recorded series. "rate5m" names the default window; a test copy with a shorter one keeps them.
BUSY_INSTANCE = "instance:workermeter_busy_slots:rate5m"
BUSY_JOB = "job:workermeter_busy_slots:rate5m"
SLOTS_INSTANCE = "instance:workermeter_slots:sum"
SLOTS_JOB = "job:workermeter_slots:sum"
UTILISATION_INSTANCE = "instance:workermeter_utilisation:ratio_rate5m"
UTILISATION_JOB = "job:workermeter_utilisation:ratio_rate5m"
ALL_BUSY_INSTANCE = "instance:workermeter_all_slots_busy:ratio_rate5m"
REQUESTS_INSTANCE = "instance:workermeter_requests:rate5m"
REQUESTS_JOB = "job:workermeter_requests:rate5m"
WAIT_BUCKETS_INSTANCE = "instance_le:workermeter_queue_wait_seconds_bucket:rate5m"
WAIT_BUCKETS_JOB = "job_le:workermeter_queue_wait_seconds_bucket:rate5m"
WAIT_INSTANCE = "instance:workermeter_queue_wait_seconds:quantile_rate5m"
WAIT_JOB = "job:workermeter_queue_wait_seconds:quantile_rate5m"
CPU_SHARE_JOB = "job:workermeter_cpu_share:ratio_rate5m"
CPU_SHARE_ROUTE = "job_route:workermeter_cpu_share:ratio_rate5m"
THREAD_LIMIT = "job:workermeter_thread_limit:rate5m"
CPU_CEILING = "instance:workermeter_cpu_ceiling_slots:rate5m"
MEMORY_CEILING = "instance:workermeter_memory_ceiling_processes:max"
SUGGESTED_SLOTS = "job:workermeter_suggested_slots:rate5m"
SUGGESTED_MACHINES = "job:workermeter_suggested_machines:rate5m"
SUGGESTED_MACHINE_SLOTS = "job:workermeter_suggested_slots_per_machine:rate5m"
SUGGESTED_PROCESSES = "job:workermeter_suggested_processes:rate5m"
SUGGESTED_THREADS = "job:workermeter_suggested_threads:rate5m"
# Async workers: their event loops and the thread pool that runs their sync code.
LOOP_BUSY_INSTANCE = "instance:workermeter_event_loop_busy:rate5m"
LOOP_BUSY_JOB = "job:workermeter_event_loop_busy:rate5m"
LOOPS_INSTANCE = "instance:workermeter_event_loops:rate5m"
LOOPS_JOB = "job:workermeter_event_loops:rate5m"
LOOP_UTILISATION_INSTANCE = "instance:workermeter_event_loop_utilisation:ratio_rate5m"
LOOP_UTILISATION_JOB = "job:workermeter_event_loop_utilisation:ratio_rate5m"
LOOP_CPU_SHARE_JOB = "job:workermeter_event_loop_cpu_share:ratio_rate5m"
LOOP_BLOCKED_JOB = "job:workermeter_event_loop_blocked:rate5m"
LOOP_BLOCKING_ROUTE = "job_route:workermeter_event_loop_blocked:ratio_rate5m"
POOL_UTILISATION_INSTANCE = "instance:workermeter_thread_pool_utilisation:ratio_rate5m"
POOL_WAIT_INSTANCE = "instance:workermeter_thread_pool_wait:rate5m"

QUANTILES = ("0.5", "0.95", "0.99")


@dataclass(frozen=True)
class Settings:
    """What a team may want to tune. Changing one means rebuilding (``python -m grafana.build``)
    or editing the generated file by hand: the rules themselves stay plain Prometheus YAML.

    :param window: range of every ``rate()`` in the recording rules.
    :param target: the utilisation target of the suggestion and of the utilisation alert (the
        capacity model's default, 0.8).
    :param loop_target: the same for an async worker's event loop (default 0.6: one loop is one
        server with a queue of its own, see docs/capacity.md).
    :param all_busy: the share of time with every slot busy that makes an alert.
    :param wait_p95: seconds of p95 queue wait that make an alert.
    :param memory_share: the share of the memory ceiling in use that makes an alert.
    :param lookback: how far back a job counts as one that had workermeter metrics.
    :param durations: ``for:`` of each alert, by name.
    """

    window: str = "5m"
    target: float = capacity.Targets().utilisation
    loop_target: float = capacity.Targets().loop_utilisation
    all_busy: float = 0.1
    wait_p95: float = 0.1
    memory_share: float = 0.9
    lookback: str = "1h"
    durations: Mapping[str, str] = field(
        default_factory=lambda: {
            "WorkermeterHighUtilisation": "15m",
            "WorkermeterHighEventLoopUtilisation": "15m",
            "WorkermeterEventLoopBlocked": "10m",
            "WorkermeterThreadPoolWaits": "10m",
            "WorkermeterAllSlotsBusy": "15m",
            "WorkermeterQueueWaitHigh": "10m",
            "WorkermeterMemoryCeilingClose": "15m",
            "WorkermeterRejectedHeaders": "10m",
            "WorkermeterCapacityUnknown": "15m",
            "WorkermeterTargetDown": "5m",
            "WorkermeterMetricsAbsent": "5m",
        }
    )


@dataclass(frozen=True)
class Record:
    record: str
    expr: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Alert:
    alert: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str

    @property
    def runbook_url(self) -> str:
        return f"{RUNBOOK}#{self.alert.lower()}"


def recording_rules(s: Settings) -> list[Record]:
    w = s.window
    records = [
        Record(BUSY_INSTANCE, q.sum_rate(q.counter(m.BUSY), INSTANCE, "", w)),
        Record(BUSY_JOB, f"sum by (job) ({BUSY_INSTANCE})"),
        Record(SLOTS_INSTANCE, f"sum by (job, instance) ({q.name(m.CAPACITY)})"),
        Record(SLOTS_JOB, f"sum by (job) ({SLOTS_INSTANCE})"),
        *loop_rules(s),
        # An async worker's loops win: its busy slot-seconds count requests in flight.
        Record(
            UTILISATION_INSTANCE,
            f"{LOOP_UTILISATION_INSTANCE}\nor\n{BUSY_INSTANCE} / {SLOTS_INSTANCE}",
        ),
        Record(UTILISATION_JOB, f"{LOOP_UTILISATION_JOB}\nor\n{BUSY_JOB} / {SLOTS_JOB}"),
        Record(ALL_BUSY_INSTANCE, q.all_slots_busy(INSTANCE, "", w)),
        Record(REQUESTS_INSTANCE, q.sum_rate(q.counter(m.REQUESTS), INSTANCE, "", w)),
        Record(REQUESTS_JOB, f"sum by (job) ({REQUESTS_INSTANCE})"),
        # Classic buckets only: Prometheus 2.42 refuses to record a sum of native histograms
        # whose count differs by float rounding from its buckets' added up. The quantiles below
        # read native histograms from the scraped series instead.
        Record(
            WAIT_BUCKETS_INSTANCE,
            q.sum_rate(q.name(m.QUEUE_WAIT, "_bucket"), (*INSTANCE, "le"), "", w),
        ),
        Record(WAIT_BUCKETS_JOB, f"sum by (job, le) ({WAIT_BUCKETS_INSTANCE})"),
    ]
    native_wait = q.native(m.QUEUE_WAIT)
    for record, buckets, labels in (
        (WAIT_INSTANCE, WAIT_BUCKETS_INSTANCE, INSTANCE),
        (WAIT_JOB, WAIT_BUCKETS_JOB, JOB),
    ):
        for quantile in QUANTILES:
            records.append(
                Record(
                    record,
                    f"histogram_quantile({quantile}, {buckets})\nor\n"
                    f"histogram_quantile({quantile}, "
                    f"{q.sum_rate(native_wait, labels, '', w)})",
                    {"quantile": quantile},
                )
            )
    return records + capacity_rules(s)


def loop_rules(s: Settings) -> list[Record]:
    """Async workers: the loops' demand and ELU, how much of it was CPU, what a blocking call
    held (per job, and the routes), and the thread pool's use and waits."""
    w = s.window
    cpu = q.loop_cpu(JOB, "", w)
    return [
        Record(LOOP_BUSY_INSTANCE, q.loop_busy(INSTANCE, "", w)),
        Record(LOOP_BUSY_JOB, f"sum by (job) ({LOOP_BUSY_INSTANCE})"),
        Record(LOOPS_INSTANCE, q.loops_observed(INSTANCE, "", w)),
        Record(LOOPS_JOB, f"sum by (job) ({LOOPS_INSTANCE})"),
        Record(LOOP_UTILISATION_INSTANCE, f"{LOOP_BUSY_INSTANCE} / ({LOOPS_INSTANCE} > 0)"),
        Record(LOOP_UTILISATION_JOB, f"{LOOP_BUSY_JOB} / ({LOOPS_JOB} > 0)"),
        Record(LOOP_CPU_SHARE_JOB, q.loop_cpu_share(cpu, LOOP_BUSY_JOB)),
        Record(LOOP_BLOCKED_JOB, f"{LOOP_BUSY_JOB} * (1 - {LOOP_CPU_SHARE_JOB})"),
        Record(
            LOOP_BLOCKING_ROUTE,
            q.blocking_routes("", w, LOOP_BUSY_JOB, observe_loops.NOT_CPU),
        ),
        Record(
            POOL_UTILISATION_INSTANCE,
            f"{q.sum_rate(q.counter(m.POOL_BUSY), INSTANCE, '', w)}\n"
            f"  / (sum by (job, instance) ({q.name(m.POOL_SIZE)}) > 0)",
        ),
        Record(POOL_WAIT_INSTANCE, q.sum_rate(q.counter(m.POOL_WAIT), INSTANCE, "", w)),
    ]


def capacity_rules(s: Settings) -> list[Record]:
    """The utilisation-target method of :func:`workermeter.capacity.suggest`, step by step.

    ``y`` = busy slots / target. Slots ``⌈y⌉``. Threads per process: the thread limit from the
    CPU share. One machine (the smallest host of the job) holds at most ``⌊cores / share⌋``
    slots and ``memory ceiling x thread limit`` slots, so the machines needed are the largest of
    1, ``⌈y / ⌊cpu ceiling⌋⌉`` and ``⌈y / (memory ceiling x thread limit)⌉``; each machine then
    gets ``⌈y / machines⌉`` slots (at least 1) as ``⌈slots / thread limit⌉`` processes of
    ``⌈slots / processes⌉`` threads.

    For a job whose workers run event loops, the same steps count loops: ``y`` = loop busy /
    loop target, the CPU share is the loops' (process CPU over loop busy time), the thread limit
    is 1 and the memory ceiling counts every worker at its full RSS.
    """
    w = s.window
    y = f"({LOOP_BUSY_JOB} / {s.loop_target:g} or {BUSY_JOB} / {s.target:g})"
    cores = f"max by (job, instance) ({q.name(m.HOST_CPUS)})"
    return [
        Record(
            CPU_SHARE_JOB,
            f"{LOOP_CPU_SHARE_JOB}\nor\n{q.cpu_share(JOB, '', w, BUSY_JOB)}",
        ),
        Record(CPU_SHARE_ROUTE, q.route_cpu_share(("job", "route"), "", w)),
        Record(THREAD_LIMIT, f"{LOOP_BUSY_JOB} * 0 + 1\nor\n{q.thread_limit(CPU_SHARE_JOB)}"),
        # A CPU share of 0 sets no ceiling: the series is absent then, as capacity says None.
        Record(CPU_CEILING, f"{cores}\n  / on (job) group_left () ({CPU_SHARE_JOB} > 0)"),
        Record(
            MEMORY_CEILING,
            f"{q.spawned_ceiling(INSTANCE, '')}\n  and on (job, instance) {LOOP_BUSY_INSTANCE}\n"
            f"or\n{q.memory_ceiling(INSTANCE, '')}",
        ),
        Record(SUGGESTED_SLOTS, q.ceil_forgiving(y)),
        Record(
            SUGGESTED_MACHINES,
            q.max_of(
                JOB,
                [
                    ("one", f"{SUGGESTED_SLOTS} * 0 + 1"),
                    (
                        "cpu",
                        q.ceil_forgiving(f"{y}\n  / floor(min by (job) ({CPU_CEILING}) + 1e-09)\n"),
                    ),
                    (
                        "memory",
                        q.ceil_forgiving(
                            f"{y}\n  / (min by (job) ({MEMORY_CEILING}) * {THREAD_LIMIT})\n"
                        ),
                    ),
                ],
            ),
        ),
        Record(
            SUGGESTED_MACHINE_SLOTS,
            f"clamp_min({q.ceil_forgiving(f'{y} / {SUGGESTED_MACHINES}')}, 1)",
        ),
        Record(SUGGESTED_PROCESSES, f"ceil({SUGGESTED_MACHINE_SLOTS} / {THREAD_LIMIT})"),
        Record(SUGGESTED_THREADS, f"ceil({SUGGESTED_MACHINE_SLOTS} / {SUGGESTED_PROCESSES})"),
    ]


def alerting_rules(s: Settings) -> list[Alert]:
    w, d = s.window, s.durations
    target, loop_target = f"{s.target:.0%}", f"{s.loop_target:.0%}"
    seen = f"last_over_time({q.name(m.HOST_CPUS)}[{s.lookback}])"
    return [
        Alert(
            "WorkermeterHighUtilisation",
            f"{UTILISATION_JOB} > {s.target:g}\n  unless on (job) {LOOP_UTILISATION_JOB}",
            d["WorkermeterHighUtilisation"],
            "warning",
            f"Workers of {{{{ $labels.job }}}} are more than {target} busy",
            f"Over the last {w} the worker slots of job {{{{ $labels.job }}}} spent "
            f"{{{{ $value | humanizePercentage }}}} of their time serving requests, above the "
            f"{target} target, for {d['WorkermeterHighUtilisation']}. Requests start to queue "
            f'for a free worker: add slots (the dashboard\'s "How many workers?" row has the '
            f"suggested processes x threads).",
        ),
        Alert(
            "WorkermeterHighEventLoopUtilisation",
            f"{LOOP_UTILISATION_JOB} > {s.loop_target:g}",
            d["WorkermeterHighEventLoopUtilisation"],
            "warning",
            f"Event loops of {{{{ $labels.job }}}} are more than {loop_target} busy",
            f"Over the last {w} the event loops of job {{{{ $labels.job }}}} were busy "
            f"{{{{ $value | humanizePercentage }}}} of the time (their ELU), above the "
            f"{loop_target} target for one loop, for {d['WorkermeterHighEventLoopUtilisation']}. "
            f"Each loop serves one step at a time with a queue of its own, so requests start "
            f'to wait: add worker processes (the dashboard\'s "How many workers?" row has the '
            f"number), or first fix a blocking call if WorkermeterEventLoopBlocked fires too.",
        ),
        Alert(
            "WorkermeterEventLoopBlocked",
            f"{LOOP_BLOCKED_JOB} >= {loop_capacity.BLOCKED_FLOOR:g}\n"
            f"  and on (job) {LOOP_CPU_SHARE_JOB} < {capacity.CPU_BOUND:g}",
            d["WorkermeterEventLoopBlocked"],
            "warning",
            "A blocking call holds the event loops of {{ $labels.job }}",
            f'For {{{{ $value | printf "%.2f" }}}} loop-seconds per second over the last {w}, '
            f"the event loops of job {{{{ $labels.job }}}} were busy without using the CPU: a "
            f"blocking call inside async def (time.sleep, a sync database driver or HTTP "
            f"client), during which the worker serves nothing else. The dashboard's "
            f'"Blocking routes" panel names the routes; await an async client or run the call '
            f"in a thread. More processes only spread the blocking.",
        ),
        Alert(
            "WorkermeterThreadPoolWaits",
            f"{POOL_WAIT_INSTANCE} >= {loop_capacity.POOL_WAIT_FLOOR:g}",
            d["WorkermeterThreadPoolWaits"],
            "warning",
            "Sync code of {{ $labels.instance }} waits for a thread",
            f"Tasks of {{{{ $labels.instance }}}} (job {{{{ $labels.job }}}}) waited "
            f'{{{{ $value | printf "%.3f" }}}} task-seconds per second over the last {w} for '
            f"a thread of the pool that runs an async app's sync endpoints: the pool, not the "
            f"event loop, is the limit. Raise the limiter's total_tokens at startup or make "
            f"those endpoints async def.",
        ),
        Alert(
            "WorkermeterAllSlotsBusy",
            f"{ALL_BUSY_INSTANCE} > {s.all_busy:g}\n  unless on (job, instance) {LOOPS_INSTANCE}",
            d["WorkermeterAllSlotsBusy"],
            "warning",
            "Every worker slot of {{ $labels.instance }} is often busy",
            f"For at least {{{{ $value | humanizePercentage }}}} of the last {w}, every worker "
            f"slot of {{{{ $labels.instance }}}} (job {{{{ $labels.job }}}}) was busy, so "
            f"requests arriving then waited for a worker.",
        ),
        Alert(
            "WorkermeterQueueWaitHigh",
            f'{WAIT_INSTANCE}{{quantile="0.95"}} > {s.wait_p95:g}',
            d["WorkermeterQueueWaitHigh"],
            "warning",
            "Requests wait for a worker on {{ $labels.instance }}",
            f"95% of the requests to {{{{ $labels.instance }}}} (job {{{{ $labels.job }}}}) "
            f"waited up to {{{{ $value | humanizeDuration }}}} between the proxy and a worker "
            f"over the last {w}, above the {s.wait_p95 * 1000:g}ms threshold.",
        ),
        Alert(
            "WorkermeterMemoryCeilingClose",
            f"sum by (job, instance) ({q.name(m.WORKERS)})\n  / {MEMORY_CEILING} > "
            f"{s.memory_share:g}",
            d["WorkermeterMemoryCeilingClose"],
            "warning",
            "{{ $labels.instance }} is close to the worker processes its memory holds",
            "{{ $labels.instance }} (job {{ $labels.job }}) runs {{ $value | "
            "humanizePercentage }} of the worker processes that fit in its memory (host memory "
            "less 1 GiB of reserves, the first worker at its RSS and each further one at its "
            "USS). More workers, or workers that grow, push the host into swap or the OOM "
            "killer.",
        ),
        Alert(
            "WorkermeterRejectedHeaders",
            f"sum by (job, reason) ({q.rate(q.counter(m.QUEUE_REJECTED), '', w)}) > 0",
            d["WorkermeterRejectedHeaders"],
            "info",
            "{{ $labels.job }}: X-Request-Start headers rejected as {{ $labels.reason }}",
            f'{{{{ $value | printf "%.3g" }}}} request-start headers per second sent to '
            f"{{{{ $labels.job }}}} were rejected as {{{{ $labels.reason }}}} over the last "
            f"{w}: queue wait is not measured for those requests. The proxy in front of the app "
            f"is probably misconfigured.",
        ),
        Alert(
            "WorkermeterCapacityUnknown",
            f"count by (job, instance) (\n  {q.name(m.CAPACITY_KNOWN)} == 0\n"
            f"    unless on (job, instance, worker) {q.counter(m.LOOP_OBSERVED)}\n)",
            d["WorkermeterCapacityUnknown"],
            "info",
            "Utilisation of {{ $labels.instance }} is unknown",
            "{{ $value }} worker processes of {{ $labels.instance }} (job {{ $labels.job }}) do "
            "not know how many requests they serve at once, so their utilisation, the "
            "suggestion and the utilisation alert are missing. Pass threads=N to the "
            "middleware.",
        ),
        Alert(
            "WorkermeterTargetDown",
            f"up == 0\n  and on (job) group by (job) ({seen})",
            d["WorkermeterTargetDown"],
            "warning",
            "Prometheus cannot scrape {{ $labels.instance }}",
            f"Every scrape of {{{{ $labels.instance }}}} (job {{{{ $labels.job }}}}) for "
            f"{d['WorkermeterTargetDown']} failed (up = {{{{ $value }}}}): its workers are not "
            f"measured and the fleet figures leave them out.",
        ),
        Alert(
            "WorkermeterMetricsAbsent",
            f"count by (job) ({seen})\n  unless on (job) {q.name(m.HOST_CPUS)}",
            d["WorkermeterMetricsAbsent"],
            "warning",
            "No workermeter metrics from {{ $labels.job }}",
            f"{{{{ $value }}}} instances of job {{{{ $labels.job }}}} exposed workermeter "
            f"metrics in the last {s.lookback} and none does now: the targets are gone from "
            f"service discovery, or the app stopped serving its metrics.",
        ),
    ]


# ------------------------------------------------------------------------------------------- YAML


def _string(value: str) -> str:
    # A JSON string is a valid YAML double-quoted scalar: JSON's escapes are a subset of YAML's.
    return json.dumps(value, ensure_ascii=False)


def _expr(expr: str, indent: str) -> list[str]:
    if "\n" not in expr:
        return [f"{indent}expr: {expr}"] if _plain(expr) else [f"{indent}expr: {_string(expr)}"]
    return [f"{indent}expr: |-", *(f"{indent}  {line}" for line in expr.splitlines())]


def _plain(text: str) -> bool:
    """Whether YAML reads ``text`` back unchanged as a plain (unquoted) scalar."""
    return (
        bool(text)
        and text[0] not in "!&*{}[]|>'\"%@`#,?:-"
        and ": " not in text
        and " #" not in text
        and text == text.strip()
    )


def _mapping(key: str, values: Mapping[str, str], indent: str) -> list[str]:
    if not values:
        return []
    return [f"{indent}{key}:", *(f"{indent}  {k}: {_string(v)}" for k, v in values.items())]


def render(settings: Settings | None = None) -> str:
    """The rules file as YAML, for ``promtool`` and Prometheus's ``rule_files``."""
    s = Settings() if settings is None else settings
    out = [
        "# Prometheus rules for workermeter: recording rules for the dashboard's capacity row and",
        "# the alerts, and alerting rules whose runbook is docs/alerts.md.",
        "# Generated by `python -m grafana.build` from grafana/rules.py: edit there and rebuild.",
        "groups:",
        "  - name: workermeter-recording",
        "    rules:",
    ]
    for r in recording_rules(s):
        out += [f"      - record: {r.record}", *_expr(r.expr, "        ")]
        out += _mapping("labels", r.labels, "        ")
    out += ["  - name: workermeter-alerts", "    rules:"]
    for a in alerting_rules(s):
        out += [f"      - alert: {a.alert}", *_expr(a.expr, "        "), f"        for: {a.for_}"]
        out += _mapping("labels", {"severity": a.severity}, "        ")
        annotations = {
            "summary": a.summary,
            "description": a.description,
            "runbook_url": a.runbook_url,
        }
        out += _mapping("annotations", annotations, "        ")
    return "\n".join(out) + "\n"


def recorded_names(settings: Settings | None = None) -> set[str]:
    return {r.record for r in recording_rules(Settings() if settings is None else settings)}


def expressions(settings: Settings | None = None) -> Sequence[str]:
    s = Settings() if settings is None else settings
    return [r.expr for r in recording_rules(s)] + [a.expr for a in alerting_rules(s)]
