"""The dashboard and the rules on a real Prometheus scraping real servers under a known load.

One Prometheus (Debian's package) scrapes, every second:

- job ``app``: two gunicorns of 2 sync workers each, as two instances behind an imaginary load
  balancer, scraped on the arbiter's metrics port (``workermeter.gunicorn`` hooks);
- job ``quiet``: one more gunicorn, lightly loaded throughout;
- job ``asgi``: one uvicorn worker whose async route blocks its event loop in ``time.sleep``
  for 30 ms, ten times a second, and whose sync route takes a pool thread for 20 ms.

The WSGI handlers sleep 50 ms. The load is paced (a request every 1/rate seconds, each on a new
connection with a fresh ``X-Request-Start``): first a low phase, then a high one. Rules are the
generated ones with 10-second windows and 5-second ``for:``, the dashboard's ``$__rate_interval``
is 10 s too. Then every panel query and every recorded series is asked at the end of each phase,
and the utilisation, the suggestion and the alerts are checked against the load that was sent and
against ``workermeter.capacity``; for the async job, its event loop's utilisation, the blocking
route and the number of loops the rules suggest.

With ``WORKERMETER_DASHBOARD_PNG=docs/img/dashboard.png`` in the environment, the dashboard's key
panels are also drawn from Prometheus's answers to that file (needs ``pip install -e '.[docs]'``).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

import servers
from workermeter import metrics
from workermeter.capacity import LoopDemand, Machine, Workload, suggest

if str(servers.ROOT) not in sys.path:  # `pytest` without `python -m`: build code at the root
    sys.path.insert(0, str(servers.ROOT))

from grafana import dashboard, promql, render, rules

HANDLER = 0.050  # seconds each request sleeps
WINDOW = "10s"  # rule windows and $__rate_interval
SETTINGS = rules.Settings(window=WINDOW, durations=dict.fromkeys(rules.Settings().durations, "5s"))
LOW, HIGH = 13.0, 20.0  # seconds of each phase
# requests per second per target in each phase: (low, high)
RATES = {
    "a": (16.0, 36.0), "b": (14.0, 34.0), "quiet": (12.0, 12.0),
    "asgi": (10.0, 10.0), "asgi-sync": (5.0, 5.0),
}  # fmt: skip
SLOTS = 2  # sync workers per gunicorn
BLOCK = 0.030  # seconds the async route holds the loop in time.sleep
PICTURE = os.environ.get("WORKERMETER_DASHBOARD_PNG")
HOOKS = (
    "from workermeter.gunicorn import child_exit, on_exit, on_starting, when_ready, worker_exit\n"
)


@contextlib.contextmanager
def metered_gunicorn(tmp_path: Path, name: str) -> Iterator[tuple[servers.Server, int]]:
    """gunicorn with 2 sync workers and the workermeter hooks; yields it and its metrics port."""
    config = tmp_path / f"{name}.conf.py"
    config.write_text(HOOKS)
    metrics_port = servers.free_port()
    extra = ["-c", str(config), "--env", f"WORKERMETER_PORT={metrics_port}"]
    with servers.gunicorn(
        tmp_path / name, workers=SLOTS, store=tmp_path / name / "store", extra=extra, name=name
    ) as server:
        server.wait_log("workermeter: metrics of all workers")
        servers.warm(server, SLOTS)  # a worker joins the store with its first request
        yield server, metrics_port


PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: ["{rules}"]
scrape_configs:
  - job_name: app
    static_configs: [{{targets: ["127.0.0.1:{a}", "127.0.0.1:{b}"]}}]
  - job_name: quiet
    static_configs: [{{targets: ["127.0.0.1:{quiet}"]}}]
  - job_name: asgi
    static_configs: [{{targets: ["127.0.0.1:{asgi}"]}}]
"""


@contextlib.contextmanager
def prometheus(tmp_path: Path, ports: dict[str, int], native: bool) -> Iterator[servers.Server]:
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(rules.render(SETTINGS))
    config = tmp_path / "prometheus.yml"
    config.write_text(PROMETHEUS_CONFIG.format(rules=rules_file, **ports))
    with servers.prometheus(tmp_path, config, native=native) as server:
        yield server


# ----------------------------------------------------------------------------- Prometheus API

Prom = servers.PrometheusAPI


def wait_for_scrapes(prom: Prom, targets: int, timeout: float = 30.0) -> None:
    """Until every target has been scraped successfully (the first scrape comes after ~5 s)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(AssertionError, requests.RequestException, ValueError):
            # 503 in plain text until the storage is open, though /-/ready already answers
            if len(prom.query("up == 1", time.time())) == targets:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not all {targets} targets scraped in {timeout} s")
        time.sleep(0.25)


def substitute(expr: str, job: str) -> str:
    """A dashboard query as Grafana sends it, for ``job`` and every instance."""
    return expr.replace("$__rate_interval", WINDOW).replace("$job", job).replace("$instance", ".*")


# -------------------------------------------------------------------------------------- load


def get(url: str) -> int:
    headers = {"X-Request-Start": servers.stamp(), "Connection": "close"}
    with requests.get(url, headers=headers, timeout=servers.REQUEST_TIMEOUT) as r:
        return r.status_code


def pace(
    url: str, phases: Sequence[tuple[float, float, float]], pool: ThreadPoolExecutor
) -> list[Future[int]]:
    """Send a request to ``url`` every 1/rate seconds in each ``(start, end, rate)`` phase
    (wall-clock times); return the futures of their statuses."""
    sent: list[Future[int]] = []
    for start, end, rate in phases:
        i = 0
        while (due := start + i / rate) < end:
            if (delay := due - time.time()) > 0:
                time.sleep(delay)
            sent.append(pool.submit(get, url))
            i += 1
    return sent


@dataclass
class AlertLog:
    """States of alerts seen through /api/v1/alerts: (alertname, job) -> states."""

    seen: dict[tuple[str, str], set[str]]

    def watch(self, prom: Prom, until: float, phase: str) -> None:
        while time.time() < until:
            for alert in prom.get("/api/v1/alerts")["alerts"]:
                key = (alert["labels"]["alertname"], alert["labels"].get("job", ""))
                self.seen.setdefault(key, set()).add(f"{phase}:{alert['state']}")
            time.sleep(0.5)


# -------------------------------------------------------------------------------------- test


@pytest.mark.parametrize("native", [False, True], ids=["classic", "native-histograms"])
def test_dashboard_and_rules_on_a_real_prometheus(tmp_path: Path, native: bool) -> None:
    """The same checks on a Prometheus that stores classic histograms, and on one that takes
    native histograms (the protobuf format, ``--enable-feature=native-histograms``)."""
    servers.find_prometheus()  # before starting the apps: fail fast without it
    with contextlib.ExitStack() as stack:
        a, a_port = stack.enter_context(metered_gunicorn(tmp_path, "a"))
        b, b_port = stack.enter_context(metered_gunicorn(tmp_path, "b"))
        quiet, quiet_port = stack.enter_context(metered_gunicorn(tmp_path, "quiet"))
        asgi = stack.enter_context(
            servers.uvicorn(
                tmp_path / "asgi", workers=1, store=tmp_path / "asgi" / "store",
                app="apps.loop_app:app", env={"LOOP_APP_CPU_SAMPLE": "1"},
            )
        )  # fmt: skip
        assert get(asgi.url + "/sync?ms=1") == 200
        ports = {"a": a_port, "b": b_port, "quiet": quiet_port, "asgi": asgi.port}
        prom = Prom(stack.enter_context(prometheus(tmp_path, ports, native)).url)
        wait_for_scrapes(prom, 4)
        check_histogram_kind(prom, native, time.time())

        # Both phases are laid out on the wall clock up front, and run without a gap.
        t0 = time.time() + 0.5
        t_low, t_end = t0 + LOW, t0 + LOW + HIGH
        urls = {
            "a": a.url + "/sleep?ms=50",
            "b": b.url + "/sleep?ms=50",
            "quiet": quiet.url + "/sleep?ms=50",
            "asgi": asgi.url + f"/block?ms={BLOCK * 1000:g}",
            "asgi-sync": asgi.url + "/sync?ms=20",
        }
        alerts = AlertLog({})
        with ThreadPoolExecutor(64) as pool, ThreadPoolExecutor(len(urls)) as pacers:
            paced = [
                pacers.submit(
                    pace, url, [(t0, t_low, RATES[k][0]), (t_low, t_end, RATES[k][1])], pool
                )
                for k, url in urls.items()
            ]
            alerts.watch(prom, t_low, "low")
            alerts.watch(prom, t_end, "high")
            statuses = [f.result() for p in paced for f in p.result()]
        assert set(statuses) == {200}
        time.sleep(2.0)  # the last scrapes and rule evaluations of the high phase

        check_phase(prom, "low", t_low - 0.5)
        check_phase(prom, "high", t_end - 0.5)
        check_suggestion_against_the_model(prom, t_end - 0.5)
        check_event_loop(prom, t_end - 0.5)
        check_every_query_answers(prom, t_end - 0.5, native)
        check_alerts(prom, alerts, t_low - 0.5, t_end - 0.5)
        if PICTURE:
            draw_picture(prom, t0, t_low, t_end, Path(PICTURE))


def check_histogram_kind(prom: Prom, native: bool, at: float) -> None:
    """Which series the Prometheus keeps: classic ones (``_bucket``, ``_count``, ``_sum``), or
    one native histogram per histogram and none of those."""
    for name in ("workermeter_service_time_seconds", "workermeter_queue_wait_seconds"):
        classic = prom.query(f'{name}_count{{job="app"}}', at)
        kept = prom.histograms(f'{name}{{job="app"}}', at)
        assert (len(classic), len(kept)) == ((0, 2) if native else (2, 0)), (name, classic, kept)


def check_phase(prom: Prom, phase: str, at: float) -> None:
    """Utilisation from the panel and from the rules against the load sent, fleet and per
    instance; the fleet figures are the sum of the two instances'."""
    i = 0 if phase == "low" else 1
    sent = {"a": RATES["a"][i], "b": RATES["b"][i]}
    expected = {k: rate * HANDLER / SLOTS for k, rate in sent.items()}
    fleet_expected = sum(sent.values()) * HANDLER / (2 * SLOTS)

    panel = next(p for r in dashboard.rows() for p in r.panels if p.title == "Utilisation")
    fleet_query, instance_query = (substitute(q.expr, "app") for q in panel.queries)
    fleet = prom.one(fleet_query, at)
    per_instance = prom.by("instance", instance_query, at)
    recorded = prom.one(f'{rules.UTILISATION_JOB}{{job="app"}}', at)
    recorded_instances = prom.by("instance", f'{rules.UTILISATION_INSTANCE}{{job="app"}}', at)

    # rate x service time / slots, within a few percent (gunicorn adds ~1 ms per request).
    assert fleet == pytest.approx(fleet_expected, rel=0.06), phase
    assert recorded == pytest.approx(fleet_expected, rel=0.06), phase
    assert sorted(per_instance.values()) == pytest.approx(sorted(expected.values()), rel=0.06)
    assert recorded_instances.keys() == per_instance.keys() and len(per_instance) == 2
    if phase == "high":
        assert fleet > 0.8 and recorded > 0.8
    else:
        assert fleet < 0.5 and recorded < 0.5

    # The same from Prometheus's own rate and mean service time: the busy counter and the
    # duration histogram agree.
    served = prom.one(f'{rules.REQUESTS_JOB}{{job="app"}}', at)
    app = '{job="app"}'
    mean = prom.one(
        f"{promql.histogram_sum_rate(metrics.DURATION, ('job',), app, WINDOW)}"
        f" / {promql.histogram_sum_rate(metrics.DURATION, ('job',), app, WINDOW, 'count')}",
        at,
    )
    assert served == pytest.approx(sum(sent.values()), rel=0.05)
    assert mean == pytest.approx(HANDLER, rel=0.06)
    assert recorded == pytest.approx(served * mean / (2 * SLOTS), rel=0.04)

    # Many machines: the job's figures are the instances' added up.
    busy = prom.by("instance", f'{rules.BUSY_INSTANCE}{{job="app"}}', at)
    assert prom.one(f'{rules.BUSY_JOB}{{job="app"}}', at) == pytest.approx(sum(busy.values()))
    assert prom.one(f'{rules.SLOTS_JOB}{{job="app"}}', at) == 2 * SLOTS
    machines = substitute(dashboard.MACHINES_NOW, "app")
    assert prom.one(machines, at) == 2


def check_suggestion_against_the_model(prom: Prom, at: float) -> None:
    """The recorded suggestion equals ``suggest()`` on the numbers the rules saw."""
    # The moment the rule group last ran: ask every input as of then.
    e = prom.one(f'timestamp({rules.SUGGESTED_SLOTS}{{job="app"}})', at)
    busy = prom.one(f'{rules.BUSY_JOB}{{job="app"}}', e)
    rate = prom.one(f'{rules.REQUESTS_JOB}{{job="app"}}', e)
    share = prom.one(f'{rules.CPU_SHARE_JOB}{{job="app"}}', e)
    assert 0 < share < 0.2  # sleeping handlers barely use the CPU

    def per_instance(expr: str) -> dict[str, float]:
        return prom.by("instance", expr, e)

    cores = per_instance('max by (instance) (workermeter_host_cpu_count{job="app"})')
    total = per_instance('max by (instance) (workermeter_host_memory_total_bytes{job="app"})')
    rss = per_instance('max by (instance) (workermeter_process_resident_memory_bytes{job="app"})')
    uss = per_instance('max by (instance) (workermeter_process_unique_memory_bytes{job="app"})')
    hosts = {
        i: Machine(
            cores=cores[i], memory_total=int(total[i]), process_rss=int(rss[i]),
            process_uss=int(uss[i]),
        )
        for i in cores
    }  # fmt: skip
    assert len(hosts) == 2
    ceilings = per_instance(f'{rules.MEMORY_CEILING}{{job="app"}}')
    for instance, machine in hosts.items():
        # A scrape landing between the rule's run and this query can move RSS by a few pages:
        # exact equality is promtool's job (test_rules.py).
        assert ceilings[instance] == pytest.approx(machine.memory_ceiling, rel=0.01)
        assert prom.by("instance", f'{rules.CPU_CEILING}{{job="app"}}', e)[instance] == (
            pytest.approx(machine.cores / share)
        )
    smallest = min(hosts.values(), key=lambda m: m.memory_ceiling)
    answer = suggest(Workload(peak_rate=rate, service_time=busy / rate, cpu_share=share), smallest)

    def recorded(name: str) -> float:
        return prom.one(f'{name}{{job="app"}}', e)

    assert recorded(rules.SUGGESTED_SLOTS) == answer.slots_for_utilisation
    assert recorded(rules.SUGGESTED_MACHINES) == answer.machines
    assert recorded(rules.SUGGESTED_PROCESSES) == answer.processes
    assert recorded(rules.SUGGESTED_THREADS) == answer.threads
    # And what the load sent implies: (36 + 34)/s x 50 ms = 3.5 busy slots, / 0.8 -> 5 slots,
    # all threads of one process since the handlers wait rather than compute.
    assert (answer.slots_for_utilisation, answer.machines, answer.processes, answer.threads) == (
        5, 1, 1, 5,
    )  # fmt: skip


def check_event_loop(prom: Prom, at: float) -> None:
    """The async job: its utilisation is the loop's ELU, at least the time the route blocked it;
    the blocking route is named; the suggestion is ``suggest()`` with the loops' demand."""
    where = '{job="asgi"}'
    e = prom.one(f"timestamp({rules.SUGGESTED_SLOTS}{where})", at)
    elu = prom.one(f"{rules.UTILISATION_JOB}{where}", e)
    assert elu == prom.one(f"{rules.LOOP_UTILISATION_JOB}{where}", e)
    panel = next(p for r in dashboard.rows() for p in r.panels if p.title == "Utilisation")
    assert prom.one(substitute(panel.queries[0].expr, "asgi"), e) == pytest.approx(elu, rel=0.02)
    # 10/s x 30 ms held in time.sleep, plus the loop's own work for the 15 requests a second
    # (parsing, the middleware, handing the sync route to a thread): a few ms a second at most.
    sent = RATES["asgi"][1] * BLOCK
    assert sent - 0.01 < elu < sent + 0.08, elu
    # Slept, not computed: most of it was blocked, and /block did it.
    busy = prom.one(f"{rules.LOOP_BUSY_JOB}{where}", e)
    share = prom.one(f"{rules.LOOP_CPU_SHARE_JOB}{where}", e)
    assert share < 0.3 and prom.one(f"{rules.LOOP_BLOCKED_JOB}{where}", e) == pytest.approx(
        busy * (1 - share)
    )
    routes = prom.by("route", f"{rules.LOOP_BLOCKING_ROUTE}{where}", e)
    assert max(routes, key=routes.__getitem__) == "/block" and routes["/block"] > 0.7, routes
    assert routes.get("/sync", 0.0) < 0.1, routes
    # The pool: one thread taken 5/s x 20 ms, none waited for. A thread is held for its sleep plus
    # its wake-up, which on two shared cores under a parallel load has read up to 1.52x.
    pool = prom.one(f"{rules.POOL_UTILISATION_INSTANCE}{where}", e)
    assert 0.1 * 0.8 / 40 < pool < 0.1 * 2.0 / 40, pool  # of Starlette's 40 threads
    assert prom.one(f"{rules.POOL_WAIT_INSTANCE}{where}", e) == 0
    # The loop count, as suggest() reckons it from the same inputs.
    cores = prom.one(f"max(workermeter_host_cpu_count{where})", e)
    machine = Machine(
        cores=cores,
        memory_total=int(prom.one(f"max(workermeter_host_memory_total_bytes{where})", e)),
        process_rss=int(prom.one(f"max(workermeter_process_resident_memory_bytes{where})", e)),
        process_uss=int(prom.one(f"max(workermeter_process_unique_memory_bytes{where})", e)),
    )
    assert prom.one(f"{rules.MEMORY_CEILING}{where}", e) == pytest.approx(
        machine.spawned_ceiling, rel=0.01
    )
    assert prom.one(f"{rules.CPU_CEILING}{where}", e) == pytest.approx(cores / share)
    loops = LoopDemand(busy=busy, cpu_share=share)
    answer = suggest(
        Workload(peak_rate=busy, service_time=1.0, cpu_share=share, loops=loops), machine
    )
    assert answer.event_loops
    for name, value in (
        (rules.SUGGESTED_SLOTS, answer.slots_for_utilisation),
        (rules.SUGGESTED_MACHINES, answer.machines),
        (rules.SUGGESTED_PROCESSES, answer.processes),
        (rules.SUGGESTED_THREADS, answer.threads),
    ):
        assert prom.one(f"{name}{where}", e) == value, name
    # 0.3 loop-seconds a second at 0.6 per loop: one worker process of one thread.
    assert (answer.slots_for_utilisation, answer.processes, answer.threads) == (1, 1, 1)


# Rows and recorded series only async workers fill; everything else must answer for the WSGI job.
ASYNC_ROW = "Event loops (async workers)"
ASYNC_LEGENDS = {"{{instance}} event loops measured"}
ASYNC_RECORDS = {
    rules.LOOP_BUSY_INSTANCE, rules.LOOP_BUSY_JOB, rules.LOOPS_INSTANCE, rules.LOOPS_JOB,
    rules.LOOP_UTILISATION_INSTANCE, rules.LOOP_UTILISATION_JOB, rules.LOOP_CPU_SHARE_JOB,
    rules.LOOP_BLOCKED_JOB, rules.LOOP_BLOCKING_ROUTE, rules.POOL_UTILISATION_INSTANCE,
    rules.POOL_WAIT_INSTANCE,
}  # fmt: skip


def check_every_query_answers(prom: Prom, at: float, native: bool) -> None:
    """Every panel query and every recorded series answers with finite data, without error; but
    the queue wait's recorded classic buckets, which a Prometheus that takes native histograms
    does not have (the quantiles recorded from them read the native histograms then)."""
    for row, title, query in dashboard.queries():
        job = "asgi" if row == ASYNC_ROW or query.legend in ASYNC_LEGENDS else "app"
        result = prom.query(substitute(query.expr, job), at)
        finite = [value for _labels, value in result if math.isfinite(value)]
        assert finite, f"{row} / {title}: {query.expr!r} for job {job} gave {result}"
    # Prometheus loaded every rule, and none failed (first: a failed rule records nothing).
    loaded = [rule for g in prom.get("/api/v1/rules")["groups"] for rule in g["rules"]]
    settings = rules.Settings()
    assert len(loaded) == len(rules.recording_rules(settings)) + len(rules.alerting_rules(settings))
    failed = [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
    assert not failed, failed
    assert rules.recorded_names() >= ASYNC_RECORDS
    for name in sorted(rules.recorded_names()):
        job = "asgi" if name in ASYNC_RECORDS else "app"
        if native and name in (rules.WAIT_BUCKETS_INSTANCE, rules.WAIT_BUCKETS_JOB):
            assert prom.query(f'{name}{{job="{job}"}}', at) == [], name  # classic buckets only
            continue
        result = prom.query(f'{name}{{job="{job}"}}', at)
        assert result and all(math.isfinite(v) for _l, v in result), f"{name}: {result}"
        if job == "asgi":  # and none for the sync workers, which run no loop
            assert prom.query(f'{name}{{job="app"}}', at) == [], name
    # The dashboard's variables: jobs and the instances of one.
    jobs = prom.get("/api/v1/label/job/values", **{"match[]": "workermeter_host_cpu_count"})
    assert {"app", "quiet", "asgi"} <= set(jobs)
    instances = prom.get(
        "/api/v1/label/instance/values", **{"match[]": 'workermeter_host_cpu_count{job="app"}'}
    )
    assert len(instances) == 2


def check_alerts(prom: Prom, alerts: AlertLog, at_low: float, at_high: float) -> None:
    """The utilisation alert: silent under the low load, pending then firing under the high one
    (5-second ``for:`` in this copy), and never for the lightly loaded job."""
    high_util = alerts.seen.get(("WorkermeterHighUtilisation", "app"), set())
    assert not {s for s in high_util if s.startswith("low:")}, high_util
    # Pending for 5 s before firing: seen by polling every 0.5 s (firing follows ~15 s into the
    # 20-second high phase, which a slow machine may not reach).
    assert "high:pending" in high_util, alerts.seen
    assert ("WorkermeterHighUtilisation", "quiet") not in alerts.seen
    assert ("WorkermeterHighUtilisation", "asgi") not in alerts.seen
    # uvicorn sets no limit on concurrent requests, but its loop is measured: no slots needed.
    assert ("WorkermeterCapacityUnknown", "asgi") not in alerts.seen
    assert ("WorkermeterCapacityUnknown", "app") not in alerts.seen
    assert ("WorkermeterAllSlotsBusy", "asgi") not in alerts.seen
    # The loop at ~30 %, below its 60 % target, but blocked 0.3 s a second (floor 0.05).
    assert ("WorkermeterHighEventLoopUtilisation", "asgi") not in alerts.seen
    # The same load in both phases: pending within the first, then firing to the end.
    blocked = alerts.seen.get(("WorkermeterEventLoopBlocked", "asgi"), set())
    assert "low:pending" in blocked and "high:firing" in blocked, blocked
    assert ("WorkermeterEventLoopBlocked", "app") not in alerts.seen
    assert ("WorkermeterThreadPoolWaits", "asgi") not in alerts.seen
    # The ALERTS series keeps the same story.
    query = 'ALERTS{alertname="WorkermeterHighUtilisation"}'
    assert prom.query(query, at_low) == []
    assert {labels["job"] for labels, _v in prom.query(query, at_high)} == {"app"}
    # Both workers of a gunicorn are busy together much of the time at 85-90 %: the lower bound
    # is 1 - 2 x (10-15 %). Not so for the quiet job.
    busy_together = prom.by("job", 'ALERTS{alertname="WorkermeterAllSlotsBusy"}', at_high)
    assert set(busy_together) == {"app"}
    assert set(prom.by("instance", 'ALERTS{alertname="WorkermeterAllSlotsBusy"}', at_high)) == {
        labels["instance"] for labels, _ in prom.query('up{job="app"}', at_high)
    }


# --------------------------------------------------------------------------------- the picture

# Panel title -> the queries of it drawn (the per-worker lines would crowd the picture).
KEY_PANELS = {
    "Utilisation": (0, 1),
    "Slots: busy, now and needed": (0, 1, 2),
    "Queue wait": (0, 1, 2),
    "All slots busy": (0,),
}


def draw_picture(prom: Prom, start: float, switch: float, end: float, path: Path) -> None:
    """The dashboard's key panels for job ``app``, from Prometheus's range queries; time runs
    from the start of the load, and instances are called web1 and web2."""
    panels = {p.title: p for r in dashboard.rows() for p in r.panels}
    names: dict[str, str] = {}
    charts = []
    for title, drawn in KEY_PANELS.items():
        panel = panels[title]
        lines = []
        for query in (panel.queries[i] for i in drawn):
            data = prom.get(
                "/api/v1/query_range",
                query=substitute(query.expr, "app"),
                start=f"{start:.3f}",
                end=f"{end:.3f}",
                step="1",
            )
            for s in sorted(data["result"], key=lambda s: sorted(s["metric"].items())):
                label = query.legend
                for key, value in s["metric"].items():
                    if key == "instance":
                        value = names.setdefault(value, f"web{len(names) + 1}")
                    label = label.replace("{{" + key + "}}", value)
                points = [(float(t) - start, float(v)) for t, v in s["values"]]
                lines.append(render.Line(label, [t for t, _ in points], [v for _, v in points]))
        threshold = panel.thresholds[-1][0] if panel.thresholds else None  # a sync job's
        charts.append(render.Chart(title, panel.unit, lines, threshold))
    low, high = (sum(RATES[k][i] for k in ("a", "b")) for i in (0, 1))
    render.draw(
        charts,
        path,
        title=(
            f"workermeter dashboard, job app on a real Prometheus: 2 gunicorns x {SLOTS} sync "
            f"workers, {HANDLER * 1000:g} ms requests, {WINDOW} windows"
        ),
        marks=[(0.0, f"{low:g} req/s"), (switch - start, f"{high:g} req/s")],
    )
