"""Native histograms on a real Prometheus (Debian's 2.42, ``--enable-feature=native-histograms``,
which then scrapes the protobuf format):

- scraping a real gunicorn sent requests of known service times and queue waits, its
  ``histogram_quantile`` of the native histograms gives their p95 within a few per cent;
- the series each kind costs in its TSDB (``prometheus_tsdb_head_series``), for the series
  budget's worst case of docs/metrics.md: 200 routes x 3 methods x 2xx/4xx/5xx.

The dashboard and the rules on both kinds are test_prometheus.py's.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

import servers
from test_cli_serve import Exporter
from test_protobuf import ACCEPT_NATIVE
from workermeter import textformat
from workermeter.exposition import Exposition
from workermeter.recorder import Recorder, status_index
from workermeter.store import Store

HOOKS = "from workermeter.gunicorn import child_exit, on_exit, on_starting, when_ready\n"
WORKERS = 4
REQUESTS = 400
CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: app
    static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
"""
# The series Prometheus adds for each target it scrapes: up, scrape_duration_seconds,
# scrape_samples_scraped, scrape_samples_post_metric_relabeling, scrape_series_added.
SCRAPE_SERIES = 5


@contextlib.contextmanager
def native_prometheus(tmp_path: Path, port: int, native: bool = True) -> Iterator[servers.Server]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "prometheus.yml"
    config.write_text(CONFIG.format(port=port))
    with servers.prometheus(tmp_path, config, native=native) as server:
        yield server


def wait_for(prom: servers.PrometheusAPI, expr: str, value: float, timeout: float = 30) -> float:
    """The time at which ``expr`` first equals ``value`` (a fresh Prometheus scrapes after ~5 s)."""
    deadline = time.monotonic() + timeout
    seen: Any = None
    while time.monotonic() < deadline:
        now = time.time()
        with contextlib.suppress(AssertionError, requests.RequestException, ValueError):
            seen = prom.query(expr, now)
            if len(seen) == 1 and seen[0][1] == value:
                return now
        time.sleep(0.25)
    raise TimeoutError(f"{expr} never reached {value}: last {seen}")


def true_quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values``: the smallest value with a share q at or below it."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def test_native_quantiles_on_a_real_prometheus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """gunicorn, 4 sync workers with the hooks, served 400 requests, each told by its
    X-Request-Start how long it queued and by its query how long to take, from spread-out
    distributions; 4 clients at a time, so that no request waits for a worker. Prometheus's
    p95 over the native histograms is that of the values sent, within 5% (schema 3: buckets 9%
    wide, read by linear interpolation)."""
    servers.find_prometheus()
    rng = random.Random(12)
    # Long enough for what gunicorn adds to a request (under a millisecond) not to count.
    service = [min(max(rng.lognormvariate(math.log(0.060), 0.6), 0.010), 0.400)
               for _ in range(REQUESTS)]  # fmt: skip
    # The waits are told well above what the network and gunicorn add to them (a millisecond, a
    # few on a loaded machine) for that not to count.
    queued = [min(max(rng.lognormvariate(math.log(0.150), 0.5), 0.020), 1.0)
              for _ in range(REQUESTS)]  # fmt: skip
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(HOOKS)
    port = servers.free_port()
    extra = ["-c", str(config), "--env", f"WORKERMETER_PORT={port}"]
    with contextlib.ExitStack() as stack:
        app = stack.enter_context(
            servers.gunicorn(tmp_path / "app", workers=WORKERS, store=tmp_path / "store",
                             extra=extra)
        )  # fmt: skip
        app.wait_log("workermeter: metrics of all workers")
        # Each /sleep?ms=50, stamped as it is sent: a wait of about a millisecond.
        warmed = servers.warm(app, WORKERS)
        prom = servers.PrometheusAPI(stack.enter_context(native_prometheus(tmp_path, port)).url)

        def send(i: int) -> int:
            headers = {
                "X-Request-Start": f"t={time.time() - queued[i]:.6f}",
                "Connection": "close",
            }
            url = f"{app.url}/sleep?ms={service[i] * 1000:.3f}"
            with requests.get(url, headers=headers, timeout=servers.REQUEST_TIMEOUT) as r:
                return r.status_code

        with ThreadPoolExecutor(WORKERS) as pool:
            assert set(pool.map(send, range(REQUESTS))) == {200}
        total = REQUESTS + warmed
        at = wait_for(prom, "histogram_count(workermeter_service_time_seconds)", total)
        assert prom.one("histogram_count(workermeter_queue_wait_seconds)", at) == total
        # Only native series: the classic ones are not kept.
        assert prom.query("workermeter_service_time_seconds_count", at) == []
        ((_, kept),) = prom.histograms("workermeter_service_time_seconds", at)
        assert float(kept["count"]) == total

        found: list[tuple[str, float, float, float]] = []
        for q in (0.5, 0.95):
            sent_service = true_quantile(service + [0.050] * warmed, q)
            got = prom.one(f"histogram_quantile({q}, workermeter_service_time_seconds)", at)
            found.append(("service", q, got, sent_service))
            assert got == pytest.approx(sent_service, rel=0.05), (q, got, sent_service)
            sent_wait = true_quantile(queued + [0.0] * warmed, q)
            got = prom.one(f"histogram_quantile({q}, workermeter_queue_wait_seconds)", at)
            found.append(("queue wait", q, got, sent_wait))
            assert got == pytest.approx(sent_wait, rel=0.05), (q, got, sent_wait)
        # The sums too: each request's service time and wait as sent, plus what gunicorn and
        # the network add (a few ms each at most, on two shared cores).
        served = prom.one("histogram_sum(workermeter_service_time_seconds)", at)
        assert 0 < served - sum(service) - 0.050 * warmed < 0.004 * total
        waited = prom.one("histogram_sum(workermeter_queue_wait_seconds)", at)
        assert 0 < waited - sum(queued) < 0.010 * total
    with capsys.disabled():
        for what, q, got, sent in found:
            print(
                f"\n{what} p{q * 100:g}: {got * 1000:.2f} ms, sent {sent * 1000:.2f} ms "
                f"({got / sent - 1:+.1%})",
                end="",
            )


# ------------------------------------------------------------------------------ series budget

METHODS = ("GET", "POST", "PUT")
STATUSES = (200, 404, 500)


def test_series_in_the_tsdb_of_either_kind(
    tmp_path: Path, exporters: list[Exporter], capsys: pytest.CaptureFixture[str]
) -> None:
    """One worker served 200 routes x 3 methods x 2xx/4xx/5xx: the series a Prometheus keeps
    of it are those of the text format (at most 4,000 by the budget), or, taking native
    histograms, one a histogram instead of one a bucket (at most 2,000)."""
    servers.find_prometheus()
    store = tmp_path / "store"
    active = Recorder(directory=store, cpu_sample=1).activate(multithread=False, capacity=1)
    lane = active.lane()
    for i in range(200):
        for method in METHODS:
            for status in STATUSES:
                active.begin()
                lane.request(f"/r{i}/{{id}}", method, status_index(status), 20_000_000, cpu=10**6)
                active.end()
    families = Exposition(lambda: Store(store)).collector.families(native=True)
    classic = textformat.render(families, openmetrics=False).count(b"\n") - 2 * len(families)
    native = sum(
        len(f.histograms) if f.metric.kind == "histogram" else len(f.values) for f in families
    )

    exporter = Exporter(tmp_path, "--dir", str(store), "--port", "0")
    exporters.append(exporter)
    port = int(exporter.url().rsplit(":", 1)[1])
    with requests.get(f"http://127.0.0.1:{port}/metrics", headers={"Accept": ACCEPT_NATIVE},
                      timeout=10) as r:  # fmt: skip
        assert r.headers["Content-Type"] == textformat.PROTOBUF.content_type
    heads = {}
    for kind, expected in (("classic", classic), ("native", native)):
        with native_prometheus(tmp_path / kind, port, native=kind == "native") as server:
            prom = servers.PrometheusAPI(server.url)
            wait_for(prom, "scrape_samples_scraped", classic if kind == "classic" else native)
            own = requests.get(f"{server.url}/metrics", timeout=10).text
            head = next(
                float(line.split()[1]) for line in own.splitlines()
                if line.startswith("prometheus_tsdb_head_series ")
            )  # fmt: skip
            assert head == expected + SCRAPE_SERIES, kind
            heads[kind] = head
    assert heads["classic"] <= 4000
    assert heads["native"] <= 2000
    with capsys.disabled():
        print(f"\nprometheus_tsdb_head_series, 200 routes x 3 x 3: {heads}")
