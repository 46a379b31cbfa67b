"""``workermeter top``: the frame rendered from fixed figures, and once against a real gunicorn."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import servers
from workermeter import observe
from workermeter.capacity import MIB, BlockingRoute
from workermeter.cli import main
from workermeter.cli.top import Watch, bar, frame
from workermeter.observe_loops import Loops


def observation(**changes: Any) -> observe.Observation:
    figures: dict[str, Any] = dict(
        seconds=5.0,
        requests=300.0,
        rate=60.0,
        service_time=0.032,
        service_cv=0.4,
        cpu_share=0.25,
        process_cpu_share=0.3,
        utilisation=0.96,
        worker_utilisation={"0": 0.97, "1": 0.95},
        worker_all_busy={"0": 0.97, "1": 0.95},
        all_busy_share=0.92,
        busy_distribution={0: 0.04, 1: 0.96},
        queue_waits=300.0,
        queue_wait_mean=0.3,
        queue_wait_p50=0.25,
        queue_wait_p95=0.8,
        wait_growing=False,
        in_flight={"0": 1, "1": 1},
        capacity={"0": 1, "1": 1},
        pids={"0": 4242, "1": 4243},
        rss={"0": 30 * MIB, "1": 31 * MIB},
        uss={"0": 15 * MIB, "1": 16 * MIB},
        processes=2,
        threads=1,
        cores=2.0,
        memory_total=4096 * MIB,
        backlog=46.0,
        routes=(
            observe.RouteStats("/io", 200.0, 40.0, 8.4, 0.042, 0.01),
            observe.RouteStats("/cpu", 100.0, 20.0, 1.6, 0.016, None),
        ),
    )
    figures.update(changes)
    return observe.Observation(**figures)


def render(renderable: Any) -> str:
    console = Console(record=True, width=120)
    console.print(renderable)
    text: str = console.export_text()
    return text


def test_frame_shows_every_figure() -> None:
    text = render(frame(observation(), "http://app/metrics"))
    lines = text.splitlines()
    assert lines[0] == "workermeter top  http://app/metrics  last 5 s"
    assert "requests/s      60.0" in text
    assert "in flight   2" in text
    assert "utilisation     ███████████████████░  96%" in text
    assert "processes   2 x 1 thread" in text
    assert "queue wait  p50 250 ms   p95 800 ms" in text
    assert "all slots busy  ██████████████████░░  92%" in text
    assert "service time    32 ms mean, 25% CPU" in text
    assert "host        2 cores, 4.0 GiB" in text
    assert "listen backlog  46 waiting to be accepted" in text
    # Workers, with memory; the slots-busy distribution; routes by busy time with CPU share.
    worker = next(line for line in lines if "4242" in line)
    assert "97%" in worker and "30 MiB" in worker and "15 MiB" in worker
    assert any(line.split("│")[1:2] == ["    1 "] and "96%" in line for line in lines)
    io = next(line for line in lines if "/io" in line)
    assert [cell.strip() for cell in io.split("│")[1:-1]] == [
        "/io",
        "40.0",
        "1.68",
        "84%",
        "42 ms",
        "1%",
    ]
    cpu = next(line for line in lines if "/cpu " in line)
    assert cpu.split("│")[-2].strip() == "—"  # no request of it was sampled for CPU
    assert lines.index(io) < lines.index(cpu)
    # The suggestion for this window: saturated, so a lower bound.
    assert "Suggestion: 1 process x 3 threads  (at least: the workers were saturated)" in text
    assert "64% busy at this rate, queue wait mean 7.0 ms, p95 36 ms; memory fits 191" in text


def test_backlog_only_when_the_server_exposes_it() -> None:
    text = render(frame(observation(backlog=None), "http://app/metrics"))
    assert "listen backlog" not in text


def test_frame_without_traffic_or_header() -> None:
    quiet = observation(
        requests=0.0,
        rate=0.0,
        service_time=None,
        queue_waits=0.0,
        queue_wait_p50=None,
        queue_wait_p95=None,
        routes=(),
    )
    text = render(frame(quiet, "http://app/metrics"))
    assert "queue wait  — (no X-Request-Start header seen)" in text
    assert "Suggestion: no request finished in the last 5 s." in text
    assert "Routes" not in text


def test_frame_before_the_second_scrape_and_after_an_error() -> None:
    text = render(frame(None, "http://app/metrics", error="cannot reach http://app/metrics"))
    assert "cannot reach http://app/metrics; retrying" in text
    assert "waiting for a second scrape" in text


@pytest.mark.parametrize(
    ("share", "text"),
    [(0.0, "░░░░░░░░░░   0%"), (0.5, "█████░░░░░  50%"), (1.2, "██████████ 120%"), (None, "—")],
)
def test_bar(share: float | None, text: str) -> None:
    assert bar(share, width=10).plain == text


class NotMetrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_down_or_not_workermeter_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top", "http://127.0.0.1:9", "--once"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "workermeter: cannot reach http://127.0.0.1:9/metrics: connection refused\n"
    with servers.handler_server(NotMetrics) as url:
        assert main(["top", url, "--once"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"workermeter: {url}/metrics answered HTTP 404 ")
    assert err.count("\n") == 1
    assert main(["top", "http://127.0.0.1:9", "--interval", "never"]) == 2
    assert "not a duration" in capsys.readouterr().err


def test_watch_keeps_going_when_the_server_goes_away() -> None:
    answers = iter([None, None, "down"])

    def fetch(url: str, timeout: float) -> str:
        if next(answers) == "down":
            raise observe.SourceError("cannot reach http://app/metrics: connection refused")
        return "# TYPE workermeter_workers gauge\nworkermeter_workers 1\n"

    ticks = iter(range(10))
    watch = Watch("http://app/metrics", fetch=fetch, clock=lambda: float(next(ticks)))
    watch.poll()
    assert watch.observation() is None
    watch.poll()
    assert watch.observation() is not None
    watch.poll()
    assert watch.error == "cannot reach http://app/metrics: connection refused"
    assert "connection refused; retrying" in render(watch.frame())


def test_once_against_a_real_gunicorn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with servers.gunicorn(tmp_path, workers=2, store=tmp_path / "store") as app:
        servers.warm(app, 2)
        load = threading.Thread(
            target=servers.drive, args=(app.url, ["/sleep?ms=100"] * 24), kwargs={"clients": 4}
        )
        load.start()
        try:
            code = main(["top", app.url, "--once", "--interval", "0.6"])
        finally:
            load.join()
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"workermeter top  {app.url}/metrics  last " in out
    assert "Workers" in out and "/sleep" in out
    assert "processes   2 x 1 thread" in out
    assert "Suggestion: " in out


def async_observation() -> observe.Observation:
    loops = Loops(
        seconds=5.0,
        elu={"0": 0.7, "1": 0.5},
        measured={"0": 1.0, "1": 0.4},
        methods={"0": "uvloop", "1": "uvloop"},
        busy=1.2,
        loops=2.0,
        cpu_share=0.25,
        blocking=(BlockingRoute("/block", per_request=0.03, loop_share=0.75),),
        pool_threads={"0": 4, "1": 4},
        pool_busy={"0": 2.0, "1": 1.0},
        pool_wait={"0": 0.3, "1": 0.0},
    )
    return observation(
        utilisation=0.6,
        worker_utilisation={},
        worker_all_busy={},
        all_busy_share=None,
        capacity={},
        routes=(
            observe.RouteStats("/block", 200.0, 40.0, 6.0, 0.03, 0.01, 1.0),
            observe.RouteStats("/io", 100.0, 20.0, 4.0, 0.04, 0.01, 0.02),
        ),
        loops=loops,
    )


def test_frame_of_an_async_job() -> None:
    text = render(frame(async_observation(), "http://app/metrics"))
    lines = text.splitlines()
    assert "event loops     ████████████░░░░░░░░  60%" in text
    assert "processes   2 event loops" in text
    assert "thread pool     8 threads, 38% taken, tasks waited 0.30 s per second: the limit" in text
    head = next(line for line in lines if "ELU" in line)
    assert [c.strip() for c in head.split("┃")[1:-1]][3:6] == ["busy", "ELU", "pool"]
    worker = next(line for line in lines if "4242" in line)
    assert "███████░░░  70%" in worker and "50%" in worker  # ELU, and half its pool taken
    assert "Not every event loop was measured for all of the last 5 s: worker 1 for 40%" in (
        text.replace("\n", " ")
    )
    block = next(line for line in lines if "/block" in line and "│" in line)
    assert block.split("│")[-2].strip() == "100%"  # held the loop all its time
    assert "First: a blocking call holds the event loop (/block): fix it before adding" in text
    assert "First: the thread pool that runs sync endpoints is the limit, not the loop." in text
    # ceil(1.2 / 0.6) loops, each 60 % busy.
    assert "Suggestion: 2 processes x 1 thread (event loops)" in text
    assert "60% busy at this rate, wait for the loop mean" in text


def test_once_against_a_real_uvicorn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with servers.uvicorn(tmp_path, workers=2, store=tmp_path / "store") as app:
        load = threading.Thread(
            target=servers.drive, args=(app.url, ["/sleep?ms=100"] * 24), kwargs={"clients": 4}
        )
        load.start()
        try:
            code = main(["top", app.url, "--once", "--interval", "0.6"])
        finally:
            load.join()
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "event loops " in out and "ELU" in out and "loop held" in out
    assert "processes   2 event loops" in out
    assert "Suggestion: 1 process x 1 thread (event loops)" in out  # awaiting: idle loops
