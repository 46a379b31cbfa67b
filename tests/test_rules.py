"""The Prometheus rules: generated file up to date, valid for promtool, alerts tested firing and
not firing, runbook anchors present, and the suggestion in PromQL equal to
``workermeter.capacity.suggest`` for the utilisation-target method.

promtool comes with Debian's ``prometheus`` package that ``scripts/test.sh`` installs; without it
these tests fail rather than skip, so a CI machine missing it cannot pass unnoticed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from servers import ROOT
from workermeter import metrics
from workermeter.capacity import MIB, LoopDemand, Machine, Workload, suggest
from workermeter.observe_loops import blocking_routes

if str(ROOT) not in sys.path:  # `pytest` run without `python -m`: the build code is at the root
    sys.path.insert(0, str(ROOT))

from grafana import build, rules

PROMETHEUS = ROOT / "integrations" / "prometheus"
UNIT_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
ALERTS_DOC = ROOT / "docs" / "alerts.md"
GIB = 1024 * MIB
DECLARED = {name for metric in metrics.METRICS for name in metrics.series_names(metric)}
# Outside the contract but standard: Prometheus's own scrape health series.
PROMETHEUS_SERIES = {"up"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(
            "promtool is not installed: `apt-get install prometheus` (scripts/test.sh does it); "
            "the rule tests fail rather than skip so that CI cannot pass without them",
            pytrace=False,
        )
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )


def used_names(expr: str) -> tuple[set[str], set[str]]:
    """The workermeter series and the recorded series that a PromQL expression reads."""
    recorded = set(re.findall(r"\b[a-z_]+:workermeter_[a-z0-9_]+:[a-z0-9_]+", expr))
    plain = set(re.findall(r"(?<![:\w])workermeter_[a-z0-9_]+\b(?!:)", expr))
    return plain, recorded


def test_committed_rules_are_generated() -> None:
    assert build.RULES.read_text(encoding="utf-8") == rules.render(), (
        "integrations/prometheus/workermeter-rules.yml is stale: run python -m grafana.build"
    )


def test_promtool_checks_the_rules() -> None:
    done = promtool("check", "rules", str(build.RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    assert UNIT_TESTS, "no promtool unit tests in integrations/prometheus/tests"
    done = promtool("test", "rules", *map(str, UNIT_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_silent() -> None:
    """Each alert has a promtool case with expected alerts and one with none."""
    text = "\n".join(path.read_text() for path in UNIT_TESTS)
    cases = re.findall(r"alertname: (\w+)\n\s+exp_alerts:( \[\])?", text)
    firing = {name for name, empty in cases if not empty}
    silent = {name for name, empty in cases if empty}
    alerts = {a.alert for a in rules.alerting_rules(rules.Settings())}
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - silent == set(), "alerts never tested silent"


def test_only_declared_metrics_are_used() -> None:
    recorded = rules.recorded_names()
    for expr in rules.expressions():
        plain, records = used_names(expr)
        assert plain <= DECLARED, f"undeclared metric in {expr!r}"
        assert records <= recorded, f"unknown recorded series in {expr!r}"
        others = set(re.findall(r"(?<![\w:$])([a-z_]+)\s*(?:==|\{|\[)", expr)) - {"by", "on"}
        assert others <= PROMETHEUS_SERIES | plain, f"a series outside the contract in {expr!r}"


def test_alerts_explain_themselves() -> None:
    doc = ALERTS_DOC.read_text(encoding="utf-8")
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line[3:].strip().lower()).replace(" ", "-")
        for line in doc.splitlines()
        if line.startswith("## ")
    }
    for alert in rules.alerting_rules(rules.Settings()):
        assert alert.summary and alert.description
        assert "$value" in alert.description, f"{alert.alert}: the description shows no value"
        anchor = alert.runbook_url.split("#", 1)[1]
        assert anchor in anchors, f"{alert.alert}: no '## {alert.alert}' section in docs/alerts.md"


def test_short_settings_change_only_windows_and_durations() -> None:
    """The real-Prometheus test loads a copy with second-long windows: same rules otherwise."""
    short = rules.Settings(window="10s", durations=dict.fromkeys(rules.Settings().durations, "5s"))
    default, fast = rules.render(), rules.render(short)
    assert default.count("[5m]") == fast.count("[10s]") > 0
    assert rules.recorded_names() == rules.recorded_names(short)


# ------------------------------------------------------------- the suggestion against the model


@dataclass(frozen=True)
class Host:
    instance: str
    cores: int
    memory: int
    rss: int
    uss: int | None
    busy_per_minute: int  # busy slot-seconds (async: loop-seconds) added each minute
    cpu_per_minute: int | None  # sampled CPU seconds a minute, per 60 s of sampled service time
    # (async: the loop workers' process CPU seconds a minute)
    loops: int = 0  # async workers: event loops, sharing the busy and CPU seconds equally


@dataclass(frozen=True)
class Case:
    id: str
    hosts: tuple[Host, ...]
    process_cpu_per_minute: int | None = None  # used when no request was sampled


def host(
    busy: int, cpu: int | None, *, cores: int = 2, memory: int = 4 * GIB, rss: int = 150 * MIB,
    uss: int | None = None, instance: str = "web1:9191", loops: int = 0,
) -> Host:  # fmt: skip
    return Host(instance, cores, memory, rss, uss, busy, cpu, loops)


CASES = (
    # 3.5 busy slots, 5% CPU: ceil(3.5 / 0.8) = 5 slots as threads of one process.
    Case("io-bound", (host(210, 3, uss=100 * MIB),)),
    # docs/capacity.md example 1 with threads: 3 busy slots, 30% CPU, 4 cores: 2 x 2.
    Case("pythonanywhere", (host(180, 18, cores=4),)),
    # docs/capacity.md example 4: CPU-bound on 2 cores, 2 machines of 2 processes.
    Case("cores-limit", (host(120, 57),)),
    # 4 cores / 0.95 = 4.2 slots can run, 3.33 / 0.8 = 4.17 are needed: 5 whole slots do not fit.
    Case("cores-limit-fraction", (host(200, 57, cores=4),)),
    # 12 busy slots, 50% CPU, 300/200 MiB workers on 2 GiB: memory holds 4 processes.
    Case("memory-limit", (host(720, 30, cores=64, memory=2 * GIB, rss=300 * MIB, uss=200 * MIB),)),
    # 2.4 / 0.8 is 2.9999999999999996 and 3.2 / 0.8 is 4.000000000000001: 3 and 4 slots.
    Case("float-noise-below", (host(144, 6),)),
    Case("float-noise-above", (host(192, 6),)),
    # No request sampled for CPU: the processes' CPU time over their busy time, 0.4 / 2.
    Case("process-cpu", (host(120, None),), process_cpu_per_minute=24),
    # Idle, 0 CPU: no CPU ceiling, 1 process of 1 thread.
    Case("idle", (host(0, 0),)),
    # Two hosts behind a load balancer: the fleet's load on machines like the smaller one.
    Case(
        "two-hosts",
        (
            host(90, 15, cores=4, memory=8 * GIB, rss=200 * MIB, uss=120 * MIB),
            host(150, 15, uss=150 * MIB, rss=200 * MIB, instance="web2:9191"),
        ),
    ),
    # Async workers: loops sized at 0.6, one thread each, every worker at its full RSS.
    # 1 loop-second a second, 10% CPU: ceil(1 / 0.6) = 2 loops.
    Case("async-io", (host(60, 6, loops=2),)),
    # 1.5 loop-seconds, 89% CPU on 2 cores: 2.25 loops can run, 2.5 are needed: 2 machines of 2.
    Case("async-cores-limit", (host(90, 80, loops=2),)),
    # 3 loop-seconds at 300 MiB on 2 GiB: 3 spawned workers fit (4 with forked ones' USS), 5
    # loops are needed: 2 machines of 3.
    Case(
        "async-memory-limit",
        (host(180, 120, cores=64, memory=2 * GIB, rss=300 * MIB, uss=200 * MIB, loops=4),),
    ),
    # Idle loops: 1 process; the CPU share counts as 1, so the cores are the ceiling.
    Case("async-idle", (host(0, 0, loops=1),)),
)


def series(case: Case) -> list[dict[str, str]]:
    """Input series for promtool, 1 minute apart: counters that grow linearly, so that rate()
    over 5 minutes is exactly (5 x increment) / 300, the number the model gets too."""
    out = []

    def add(h: Host, name: str, values: str, **labels: str) -> None:
        all_labels = {"job": case.id, "instance": h.instance, **labels}
        text = ", ".join(f'{k}="{v}"' for k, v in all_labels.items())
        out.append({"series": f"{name}{{{text}}}", "values": values})

    for h in case.hosts:
        if h.loops:
            add_loops(h, add)
            continue
        add(h, "workermeter_busy_seconds_total", f"0+{h.busy_per_minute}x30", worker="0")
        add(h, "workermeter_capacity_threads", "1x30", worker="0")
        add(h, "workermeter_host_cpu_count", f"{h.cores}x30")
        add(h, "workermeter_host_memory_total_bytes", f"{h.memory}x30")
        add(h, "workermeter_process_resident_memory_bytes", f"{h.rss}x30", worker="0")
        if h.uss is not None:
            add(h, "workermeter_process_unique_memory_bytes", f"{h.uss}x30", worker="0")
        if h.cpu_per_minute is not None:
            add(h, "workermeter_sampled_cpu_seconds_total", f"0+{h.cpu_per_minute}x30", route="/")
            add(h, "workermeter_sampled_duration_seconds_total", "0+60x30", route="/")
        if case.process_cpu_per_minute is not None:
            add(
                h,
                "workermeter_process_cpu_seconds_total",
                f"0+{case.process_cpu_per_minute}x30",
                worker="0",
            )
    return out


def add_loops(h: Host, add: Callable[..., None]) -> None:
    """An async host: its loops' series, and the slot series an async worker has too (requests
    in flight, 3 at a time on 1 "slot", of requests that await, 2% CPU), which must not count."""
    add(h, "workermeter_host_cpu_count", f"{h.cores}x30")
    add(h, "workermeter_host_memory_total_bytes", f"{h.memory}x30")
    assert h.cpu_per_minute is not None
    for worker in map(str, range(h.loops)):
        busy, cpu = h.busy_per_minute // h.loops, h.cpu_per_minute // h.loops
        loop = {"worker": worker, "method": "uvloop"}
        add(h, "workermeter_event_loop_busy_seconds_total", f"0+{busy}x30", **loop)
        add(h, "workermeter_event_loop_observed_seconds_total", "0+60x30", **loop)
        add(h, "workermeter_process_cpu_seconds_total", f"0+{cpu}x30", worker=worker)
        add(h, "workermeter_busy_seconds_total", "0+180x30", worker=worker)
        add(h, "workermeter_capacity_threads", "1x30", worker=worker)
        add(h, "workermeter_process_resident_memory_bytes", f"{h.rss}x30", worker=worker)
        if h.uss is not None:
            add(h, "workermeter_process_unique_memory_bytes", f"{h.uss}x30", worker=worker)
    add(h, "workermeter_sampled_cpu_seconds_total", "0+1x30", route="/")
    add(h, "workermeter_sampled_duration_seconds_total", "0+60x30", route="/")


def rate(per_minute: int) -> float:
    """What Prometheus's rate() over 5 minutes gives for a counter growing this much a minute."""
    return (per_minute * 5) / 300


def expected(case: Case) -> tuple[dict[str, float], dict[str, float | None], dict[str, int]]:
    """Job figures and per-instance ceilings, from workermeter.capacity."""
    if any(h.loops for h in case.hosts):
        return expected_loops(case)
    busy = 0.0
    for h in case.hosts:
        busy += rate(h.busy_per_minute)
    sampled = [h.cpu_per_minute for h in case.hosts if h.cpu_per_minute is not None]
    if sampled:
        cpu = 0.0
        for per_minute in sampled:
            cpu += rate(per_minute)
        share = cpu / (len(sampled) * rate(60))
    else:
        assert case.process_cpu_per_minute is not None
        share = rate(case.process_cpu_per_minute) / busy
    share = min(max(share, 0.0), 1.0)
    machines = {
        h.instance: Machine(
            cores=h.cores, memory_total=h.memory, process_rss=h.rss, process_uss=h.uss
        )
        for h in case.hosts
    }
    # The rules size machines like the smallest host: the tests keep one host smallest in both.
    smallest = min(machines.values(), key=lambda m: (m.cores, m.memory_ceiling))
    assert smallest.memory_ceiling == min(m.memory_ceiling for m in machines.values())
    # peak_rate x service_time must be exactly the busy slots: a service time of 1 s does it.
    answer = suggest(Workload(peak_rate=busy, service_time=1.0, cpu_share=share), smallest)
    job: dict[str, float] = {
        rules.SUGGESTED_SLOTS: answer.slots_for_utilisation,
        rules.SUGGESTED_MACHINES: answer.machines,
        rules.SUGGESTED_PROCESSES: answer.processes,
        rules.SUGGESTED_THREADS: answer.threads,
    }
    cpu_ceiling = {i: (m.cores / share if share > 0 else None) for i, m in machines.items()}
    memory_ceiling = {i: m.memory_ceiling for i, m in machines.items()}
    return job, cpu_ceiling, memory_ceiling


def expected_loops(
    case: Case,
) -> tuple[dict[str, float], dict[str, float | None], dict[str, int]]:
    """The same for an async job, from ``suggest`` with the loops' demand."""
    (h,) = case.hosts
    assert h.cpu_per_minute is not None
    demand = rate(h.busy_per_minute // h.loops) * h.loops
    cpu = rate(h.cpu_per_minute // h.loops) * h.loops
    share = min(cpu / demand, 1.0) if demand > 0 else 1.0  # as observe_loops takes it
    machine = Machine(cores=h.cores, memory_total=h.memory, process_rss=h.rss, process_uss=h.uss)
    loops = LoopDemand(busy=demand, cpu_share=share)
    answer = suggest(
        Workload(peak_rate=demand, service_time=1.0, cpu_share=share, loops=loops), machine
    )
    assert answer.event_loops and answer.threads == 1
    job: dict[str, float] = {
        rules.SUGGESTED_SLOTS: answer.slots_for_utilisation,
        rules.SUGGESTED_MACHINES: answer.machines,
        rules.SUGGESTED_PROCESSES: answer.processes,
        rules.SUGGESTED_THREADS: answer.threads,
    }
    return job, {h.instance: h.cores / share}, {h.instance: machine.spawned_ceiling}


def expr_tests(case: Case) -> list[dict[str, Any]]:
    job, cpu_ceiling, memory_ceiling = expected(case)
    tests: list[dict[str, Any]] = [
        {
            "expr": f'{name}{{job="{case.id}"}}',
            "eval_time": "10m",
            "exp_samples": [{"labels": f'{name}{{job="{case.id}"}}', "value": value}],
        }
        for name, value in job.items()
    ]
    loops = sum(h.loops for h in case.hosts)
    if loops:  # utilisation is the loops' ELU, not the slots' requests in flight
        elu = sum(rate(h.busy_per_minute // h.loops) * h.loops for h in case.hosts) / loops
        where = f'{{job="{case.id}"}}'
        tests.append(
            {
                "expr": f"abs({rules.UTILISATION_JOB}{where} - {elu!r}) < bool 1e-09",
                "eval_time": "10m",
                "exp_samples": [{"labels": where, "value": 1}],
            }
        )
    for instance, ceiling in cpu_ceiling.items():
        where = f'{{job="{case.id}", instance="{instance}"}}'
        if ceiling is None:  # no CPU ceiling: no series
            tests.append({"expr": rules.CPU_CEILING + where, "eval_time": "10m", "exp_samples": []})
            continue
        # A float from rate()s: equal to within float noise (1 where true, with the bool modifier).
        tests.append(
            {
                "expr": f"abs({rules.CPU_CEILING}{where} - {ceiling!r}) < bool 1e-09",
                "eval_time": "10m",
                "exp_samples": [{"labels": where, "value": 1}],
            }
        )
    for instance, processes in memory_ceiling.items():
        where = f'{{job="{case.id}", instance="{instance}"}}'
        tests.append(
            {
                "expr": rules.MEMORY_CEILING + where,
                "eval_time": "10m",
                "exp_samples": [{"labels": rules.MEMORY_CEILING + where, "value": processes}],
            }
        )
    return tests


def test_the_expected_answers_cover_every_branch() -> None:
    """The table reaches one machine, CPU- and memory-bound fleets, and no CPU ceiling."""
    answers = {c.id: expected(c) for c in CASES}
    machines = {i: a[0][rules.SUGGESTED_MACHINES] for i, a in answers.items()}
    assert machines["cores-limit"] == 2
    assert machines["cores-limit-fraction"] == 2
    assert machines["memory-limit"] == 2
    assert answers["idle"][1] == {"web1:9191": None}
    assert answers["pythonanywhere"][0][rules.SUGGESTED_PROCESSES] == 2
    assert answers["float-noise-below"][0][rules.SUGGESTED_SLOTS] == 3
    assert answers["float-noise-above"][0][rules.SUGGESTED_SLOTS] == 4
    assert answers["async-io"][0][rules.SUGGESTED_PROCESSES] == 2
    assert answers["async-cores-limit"][0][rules.SUGGESTED_MACHINES] == 2
    assert answers["async-memory-limit"][0][rules.SUGGESTED_MACHINES] == 2
    assert answers["async-memory-limit"][0][rules.SUGGESTED_PROCESSES] == 3
    assert answers["async-memory-limit"][2] == {"web1:9191": 3}
    assert answers["async-idle"][0][rules.SUGGESTED_PROCESSES] == 1


def test_suggestion_in_promql_equals_the_model(tmp_path: Path) -> None:
    """promtool evaluates the recording rules on synthetic series; every answer must equal
    ``suggest()`` on the same numbers, case by case (all cases in one promtool run)."""
    unit = {
        "rule_files": [str(build.RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": case.id,
                "interval": "1m",
                "input_series": series(case),
                "promql_expr_test": expr_tests(case),
            }
            for case in CASES
        ],
    }
    path = tmp_path / "model.yml"
    path.write_text(json.dumps(unit, indent=1))  # JSON is YAML
    done = promtool("test", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_blocking_routes_in_promql_equal_observe_loops(tmp_path: Path) -> None:
    """The routes the rules say hold the loops without the CPU, and their shares of the loops'
    busy time, are what ``observe_loops.blocking_routes`` finds in the same increases."""
    # Per minute: sampled loop time, CPU and service time; all requests' service time and count.
    routes = {
        "/block": (12.0, 0.6, 12.5, 20.0, 100),  # held 95% without the CPU
        "/spin": (6.0, 5.7, 6.0, 30.0, 300),  # on the CPU: not blocking
        "/half": (4.0, 2.0, 8.0, 40.0, 100),  # exactly half: blocking, as observe_loops says
        "/await": (0.0, 0.0, 30.0, 300.0, 300),  # holds nothing
    }
    loop_busy = 50.0  # loop-seconds a minute, over both workers
    out = []

    def add(name: str, per_minute: float, **labels: str) -> None:
        text = ", ".join(f'{k}="{v}"' for k, v in {"job": "api", **labels}.items())
        out.append({"series": f"{name}{{{text}}}", "values": f"0+{per_minute:g}x30"})

    for worker in ("0", "1"):
        labels = {"instance": "api1:8000", "worker": worker, "method": "asyncio"}
        add("workermeter_event_loop_busy_seconds_total", loop_busy / 2, **labels)
    for route, (held, cpu, sampled, served, count) in routes.items():
        add("workermeter_sampled_event_loop_seconds_total", held, route=route)
        add("workermeter_sampled_cpu_seconds_total", cpu, route=route)
        add("workermeter_sampled_duration_seconds_total", sampled, route=route)
        add("workermeter_request_duration_seconds_sum", served, route=route, method="GET")
        add("workermeter_request_duration_seconds_count", count, route=route, method="GET")
    found = blocking_routes(
        held={r: v[0] for r, v in routes.items()},
        cpu={r: v[1] for r, v in routes.items()},
        sampled={r: v[2] for r, v in routes.items()},
        busy={r: v[3] for r, v in routes.items()},
        requests={r: float(v[4]) for r, v in routes.items()},
        loop_busy=loop_busy,
    )
    assert [b.route for b in found] == ["/block", "/half"]
    where = '{job="api"}'
    unit = {
        "rule_files": [str(build.RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": out,
                "promql_expr_test": [
                    {
                        "expr": f"count({rules.LOOP_BLOCKING_ROUTE}{where})",
                        "eval_time": "10m",
                        "exp_samples": [{"labels": "{}", "value": len(found)}],
                    },
                    *(
                        {
                            "expr": f'abs({rules.LOOP_BLOCKING_ROUTE}{{route="{b.route}"}}'
                            f" - {b.loop_share!r}) < bool 1e-09",
                            "eval_time": "10m",
                            "exp_samples": [
                                {"labels": f'{{job="api", route="{b.route}"}}', "value": 1}
                            ],
                        }
                        for b in found
                    ),
                ],
            }
        ],
    }
    path = tmp_path / "blocking.yml"
    path.write_text(json.dumps(unit, indent=1))
    done = promtool("test", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
