"""``workermeter suggest``: against a real gunicorn under a known load, and a real Prometheus
scraping it; one-line errors for bad sources."""

from __future__ import annotations

import contextlib
import http.server
import json
import math
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

import servers
from workermeter import observe
from workermeter.capacity import MIB, Machine, Workload, suggest
from workermeter.cli import main
from workermeter.cli.suggest import as_json, explain

RATE = 20.0  # requests/s sent to the real server
SLEEP_MS = 50  # each one sleeps this long: 2 workers are about 50 % busy


@contextlib.contextmanager
def paced(url: str, rate: float, path: str, clients: int = 8) -> Iterator[list[int]]:
    """GET ``url + path`` at exactly ``rate`` per second (not Poisson: the rate over any few
    seconds is then known to a request) until the block ends; yields the statuses so far."""
    stop = threading.Event()
    statuses: list[int] = []

    def send() -> None:
        headers = {"X-Request-Start": servers.stamp(), "Connection": "close"}
        with requests.get(url + path, headers=headers, timeout=servers.REQUEST_TIMEOUT) as r:
            statuses.append(r.status_code)

    def schedule() -> None:
        with ThreadPoolExecutor(clients) as pool:
            start, k = time.monotonic(), 0
            while not stop.wait(max(0.0, start + k / rate - time.monotonic())):
                pool.submit(send)
                k += 1

    thread = threading.Thread(target=schedule)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join()


PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: app
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


@contextlib.contextmanager
def prometheus(tmp_path: Path, target: int, native: bool = False) -> Iterator[servers.Server]:
    """A real Prometheus scraping 127.0.0.1:``target`` every second, its data in ``tmp_path``;
    with ``native``, one that keeps native histograms."""
    config = tmp_path / "prometheus.yml"
    config.write_text(PROMETHEUS_CONFIG.replace("{port}", str(target)))
    with servers.prometheus(tmp_path, config, native=native) as server:
        yield server


def wait_for_samples(url: str, count: int, timeout: float = 30.0) -> None:
    """Wait until Prometheus holds ``count`` scrapes of the app (the first comes after ~5 s)."""
    deadline = time.monotonic() + timeout
    query = 'count_over_time(workermeter_workers{job="app"}[1m])'
    result: list[Any] = []
    while True:
        with requests.get(url + "/api/v1/query", params={"query": query}, timeout=5) as r:
            # 503 in plain text until the storage is open, though /-/ready already answers
            if r.status_code == 200:
                result = r.json()["data"]["result"]
        if result and float(result[0]["value"][1]) >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Prometheus has {result} after {timeout} s")
        time.sleep(0.5)


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code = main(["suggest", *argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    answer: dict[str, Any] = json.loads(out)
    return answer


@pytest.mark.parametrize("native", [False, True], ids=["classic", "native-histograms"])
def test_metrics_and_prometheus_agree_on_a_known_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], native: bool
) -> None:
    """The same answer from /metrics and from a Prometheus, of either kind of histograms."""
    with (
        servers.gunicorn(tmp_path, workers=2, store=tmp_path / "store") as app,
        paced(app.url, RATE, f"/sleep?ms={SLEEP_MS}") as statuses,
        prometheus(tmp_path, app.port, native) as prom,
    ):
        wait_for_samples(prom.url, 6)
        live = run_json(capsys, "--metrics", app.url, "--for", "6s")
        stored = run_json(
            capsys, "--prometheus", prom.url, "--selector", '{job="app"}', "--window", "10s"
        )
    assert statuses and set(statuses) == {200}

    w = live["measured"]["workload"]
    assert w["peak_rate"] == pytest.approx(RATE, rel=0.05)
    assert w["service_time"] == pytest.approx(SLEEP_MS / 1000, rel=0.1)
    assert w["service_cv"] < 0.3  # every request sleeps the same
    # Utilisation = rate x service time / 2 slots, and the load was built to be about half.
    assert w["utilisation"] == pytest.approx(w["peak_rate"] * w["service_time"] / 2, abs=0.03)
    assert w["utilisation"] == pytest.approx(RATE * SLEEP_MS / 1000 / 2, abs=0.04)
    assert w["cpu_share"] < 0.2  # sleeping
    mc = live["measured"]["machine"]
    assert (mc["processes"], mc["threads"]) == (2, 1)
    assert live["source"].endswith("sampled for 6 s")

    p = stored["measured"]["workload"]
    assert p["peak_rate"] == pytest.approx(w["peak_rate"], rel=0.1)
    assert p["typical_rate"] <= p["peak_rate"]
    assert p["service_time"] == pytest.approx(w["service_time"], rel=0.05)
    assert p["service_cv"] < 0.3  # read from its buckets, classic or native, not assumed (1)
    assert p["utilisation"] == pytest.approx(w["utilisation"], abs=0.06)
    assert stored["measured"]["machine"]["processes"] == 2
    assert stored["measured"]["machine"]["threads"] == 1
    for key in ("processes", "threads", "machines", "lower_bound"):
        assert stored["suggestion"][key] == live["suggestion"][key], (key, stored, live)
    assert live["suggestion"]["lower_bound"] is False


class NotMetrics(http.server.BaseHTTPRequestHandler):
    """Answers every GET with an HTML page, like a web app without the middleware."""

    def do_GET(self) -> None:
        body = b"<html><body>Hello</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("workermeter: ")
    return err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["--metrics", "http://127.0.0.1:9/metrics", "--for", "1s"],
            "cannot reach http://127.0.0.1:9/metrics: connection refused",
            id="metrics-down",
        ),
        pytest.param(
            ["--metrics", "ftp://127.0.0.1/metrics"], "not an http(s) URL", id="metrics-scheme"
        ),
        pytest.param(
            ["--metrics", "http://127.0.0.1:9", "--for", "5x"],
            "--for: not a duration: '5x'",
            id="bad-for",
        ),
        pytest.param(
            ["--prometheus", "http://127.0.0.1:9"],
            "cannot reach http://127.0.0.1:9",
            id="prometheus-down",
        ),
        pytest.param(
            ["--prometheus", "http://127.0.0.1:9", "--window", "yesterday"],
            "--window: not a duration",
            id="bad-window",
        ),
        pytest.param(
            ["--metrics", "http://127.0.0.1:9", "--target-utilisation", "0"],
            "--target-utilisation: utilisation must be a share in (0, 1]",
            id="bad-target",
        ),
        pytest.param(
            ["--metrics", "http://127.0.0.1:9", "--target-wait", "soon"],
            "--target-wait: not a duration",
            id="bad-wait",
        ),
    ],
)
def test_bad_input_is_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert message in one_line_error(capsys, ["suggest", *argv])


def test_not_a_workermeter_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    with servers.handler_server(NotMetrics) as url:
        err = one_line_error(capsys, ["suggest", "--metrics", url, "--for", "1s"])
        assert f"{url}/metrics: not Prometheus metrics" in err
        err = one_line_error(capsys, ["suggest", "--prometheus", url])
        assert "is not a Prometheus server" in err


def measurement() -> observe.Measurement:
    return observe.Measurement(
        source="http://app/metrics, sampled for 60 s",
        seconds=60.0,
        workload=Workload(
            peak_rate=15, service_time=0.2, cpu_share=0.9, service_cv=0.5, utilisation=0.97
        ),
        machine=Machine(
            cores=4, memory_total=4096 * MIB, process_rss=150 * MIB, processes=3, threads=1
        ),
        queue_wait_p50=0.12,
        queue_wait_p95=0.48,
        notes=("A note.",),
    )


def test_explain_in_plain_words() -> None:
    measured = measurement()
    answer = suggest(measured.workload, measured.machine)
    text = explain(measured, answer)
    lines = text.splitlines()
    assert lines[0] == "Measured: http://app/metrics, sampled for 60 s"
    assert "  rate          15.0 requests/s at the peak" in lines
    assert "  service time  200 ms mean (cv 0.50), 90% of it on the CPU" in lines
    assert "  now           3 processes x 1 thread, 97% busy" in lines
    assert "  queue wait    p50 120 ms, p95 480 ms" in lines
    assert "  memory        RSS 150 MiB per process; host 4 cores, 4,096 MiB" in lines
    assert "Suggestion: 4 processes x 1 thread on 1 machine (gunicorn --workers 4 --threads 1)" in (
        lines
    )
    assert "  This is a lower bound: the workers were saturated while measured." in lines
    assert all(f"  - {reason}" in lines for reason in answer.reasons)
    assert lines[-2:] == ["Notes:", "  - A note."]


def test_json_has_no_infinity() -> None:
    measured = measurement()
    saturated = Workload(peak_rate=100, service_time=0.2, cpu_share=0.1)
    answer = suggest(saturated, measured.machine)
    data = as_json(measured, answer)
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text)["suggestion"]["slots"] == answer.slots
    assert data["measured"]["machine"]["processes"] == 3
    assert data["notes"] == ["A note."]


def test_logs_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # One minute of nginx lines: 120 requests of 100 ms, one every 0.5 s, logged with $msec.
    start = datetime(2024, 1, 15, 14, 5, tzinfo=timezone.utc).timestamp()
    lines = []
    for k in range(120):
        end = start + 0.1 + k * 0.5
        stamp = datetime.fromtimestamp(end, timezone.utc).strftime("%d/%b/%Y:%H:%M:%S +0000")
        lines.append(
            f'198.51.100.7 - - [{stamp}] "GET /items/{k} HTTP/1.1" 200 512 "-" "test" '
            f'rt=0.100 urt="0.100" msec={end:.3f}'
        )
    log = tmp_path / "access.log"
    log.write_text("\n".join(lines) + "\n")
    answer = run_json(
        capsys,
        "--logs",
        str(log),
        "--capacity",
        "1",
        "--cpu-share",
        "0.2",
        "--process-memory",
        "200M",
    )
    w, mc = answer["measured"]["workload"], answer["measured"]["machine"]
    assert w["peak_rate"] == pytest.approx(2.0)
    assert w["service_time"] == pytest.approx(0.1, rel=0.01)
    assert w["cpu_share"] == 0.2
    assert (mc["processes"], mc["threads"], mc["process_rss"]) == (1, 1, 200 * MIB)
    assert answer["suggestion"]["offered_load"] == pytest.approx(0.2, rel=0.01)
    assert answer["source"] == f"access logs {log} (120 requests)"
    assert "Cores and memory are this machine's: run it where the app runs." in answer["notes"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--logs", "no-such.log"], "no-such.log: no such file", id="missing"),
        pytest.param(["--logs", "x.log", "--capacity", "two"], "--capacity must be", id="capacity"),
        pytest.param(["--logs", "x.log", "--cpu-share", "2"], "--cpu-share must be", id="share"),
    ],
)
def test_logs_bad_input_is_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert message in one_line_error(capsys, ["suggest", *argv])


# ------------------------------------------------------------------------------ async workers


@contextlib.contextmanager
def loop_uvicorn(tmp_path: Path, workers: int = 2) -> Iterator[servers.Server]:
    """uvicorn ``--workers N`` on asyncio serving ``tests/apps/loop_app.py``, every request
    sampled (so each route's held and CPU time is known)."""

    def argv(port: int) -> list[str]:
        return [
            sys.executable, "-m", "uvicorn", "apps.loop_app:app",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
            "--loop", "asyncio", "--app-dir", str(servers.TESTS),
            "--no-access-log", "--timeout-graceful-shutdown", "3",
        ]  # fmt: skip

    env = servers.server_env(tmp_path / "store", LOOP_APP_CPU_SAMPLE="1")
    server = servers.launch(
        "uvicorn", argv, log=tmp_path / "uvicorn.log", env=env,
        ready_log=("Application startup complete.", workers),
    )  # fmt: skip
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("native", [False, True], ids=["classic", "native-histograms"])
def test_async_answer_names_the_blocking_route_live_and_from_prometheus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], native: bool
) -> None:
    # 10/s of a 30 ms time.sleep inside async def and 10/s of 10 ms CPU: about 0.4 of one loop,
    # three quarters of it held without the CPU.
    with (
        loop_uvicorn(tmp_path) as app,
        paced(app.url, 10.0, "/block?ms=30") as blocked,
        paced(app.url, 10.0, "/spin?ms=10") as spun,
        prometheus(tmp_path, app.port, native) as prom,
    ):
        wait_for_samples(prom.url, 6)
        live = run_json(capsys, "--metrics", app.url, "--for", "5s")
        stored = run_json(
            capsys, "--prometheus", prom.url, "--selector", '{job="app"}', "--window", "10s"
        )
        assert main(["suggest", "--metrics", app.url, "--for", "2s"]) == 0
        text = capsys.readouterr().out
    assert set(blocked) == {200} and set(spun) == {200}

    for answer in (live, stored):
        loops = answer["measured"]["workload"]["loops"]
        # Wide bounds: two shared cores; the point is which route, not the third digit.
        assert 0.25 < loops["busy"] < 0.8, loops
        assert loops["cpu_share"] < 0.5, loops
        assert loops["blocking"][0]["route"] == "/block", loops
        assert loops["blocking"][0]["per_request"] == pytest.approx(0.03, abs=0.01)
        s = answer["suggestion"]
        assert (s["event_loops"], s["loop_blocked"], s["threads"]) == (True, True, 1)
        assert s["blocking_routes"] == ["/block"]
        assert s["reasons"][0].startswith("First, a blocking call holds the event loop")
        assert "/block (" in s["reasons"][0]
        assert s["processes"] == math.ceil(loops["busy"] / 0.6 - 1e-9)
    # Two workers, each at its full RSS.
    assert live["measured"]["machine"]["processes"] == 2
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("First: "))
    suggestion = next(i for i, line in enumerate(lines) if line.startswith("Suggestion: "))
    assert first < suggestion
    assert lines[first].startswith("First: a blocking call holds the event loop (/block)")
    assert lines[suggestion].endswith("(uvicorn --workers " + lines[suggestion].split()[1] + ")")
    assert any(line.startswith("  event loops   ") for line in lines)


def test_a_sync_answer_says_nothing_of_loops() -> None:
    measured = measurement()
    answer = suggest(measured.workload, measured.machine)
    assert not answer.event_loops and answer.blocking_routes == ()
    text = explain(measured, answer)
    assert "First:" not in text and "event loops" not in text
    assert "(gunicorn --workers 4 --threads 1)" in text
