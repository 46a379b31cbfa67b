"""``workermeter demo`` end to end, as a user runs it: a subprocess, bounded in time."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest
import requests

import servers

# Each demo loads both cores for its whole run and asserts that its workers were saturated.
pytestmark = pytest.mark.usefixtures("alone")

DEMO_APPS = {"workermeter.demo_app:application", "workermeter.demo_app:asgi_application"}


# Set in the environment of the demos this process starts, and so of their servers: the demos
# of another test process running at the same time (scripts/test.sh runs two) are not ours.
MARK = "TEST_DEMO_OWNER"  # the demo passes on all but WORKERMETER_* variables
TOKEN = f"{os.getpid()}-{time.time_ns()}"


def demo_processes(since: float) -> list[psutil.Process]:
    """Live processes serving a demo app of this test process that started after ``since`` (so
    not anyone else's demo, nor one from before this test)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "create_time", "status"]):
        info = proc.info
        if not (
            DEMO_APPS & set(info["cmdline"] or [])
            and info["create_time"] >= since - 1
            and info["status"] != psutil.STATUS_ZOMBIE
        ):
            continue
        try:
            ours = proc.environ().get(MARK) == TOKEN
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue  # ended meanwhile
        if ours:
            found.append(proc)
    return found


def environment() -> dict[str, str]:
    env = servers.server_env(None)
    env["COLUMNS"] = "120"
    env[MARK] = TOKEN
    return env


def test_demo_runs_end_to_end_and_leaves_nothing_running() -> None:
    started = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "workermeter", "demo", "--duration", "10", "--no-wait"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
        cwd=servers.ROOT,
    )
    elapsed = time.time() - started
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert "Traceback" not in result.stderr
    pid = int(re.search(r"gunicorn \(pid (\d+)\)", out).group(1))  # type: ignore[union-attr]
    # The last frame of the live view, then the answer and where to go next.
    assert "Workers" in out and "/io" in out and "/cpu" in out
    assert "in flight" in out and "queue wait  p50" in out
    assert re.search(r"^Suggestion: \d+ process(es)? x \d+ threads? on ", out, re.M)
    assert "- At the peak of" in out  # the reasons
    assert "Next, measure your own app:" in out
    assert "workermeter suggest --metrics" in out
    # It drove the 2 workers past saturation.
    assert "the workers were saturated" in out
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert demo_processes(started) == []
    assert elapsed < 30


def test_the_async_demo_sizes_event_loops_and_names_the_blocking_route() -> None:
    started = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "workermeter", "demo", "--asgi", "--duration", "12", "--no-wait"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
        cwd=servers.ROOT,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert "Traceback" not in result.stderr
    pid = int(re.search(r"uvicorn \(pid (\d+)\)", out).group(1))  # type: ignore[union-attr]
    assert "/io" in out and "/cpu" in out and "/block" in out
    # One loop past saturation: it was busy all the time, and the answer is processes of one
    # thread, both at the rate served and at the rate offered, with the blocking route first.
    conclusion = " ".join(out.rsplit("In the last", 1)[1].split())  # unwrapped
    served = re.search(r"event-loop worker completed [\d,]+/s, (\d+)% busy", conclusion)
    assert served and int(served.group(1)) >= 90, conclusion
    assert re.search(r"Suggestion: \d+ processes x 1 thread on 1 machine", conclusion)
    assert re.search(r"actually offered .* asks for \d+ processes x 1 thread", conclusion)
    assert "- First, a blocking call holds the event loop" in conclusion
    assert "/block" in conclusion and "lower bound" in conclusion
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert demo_processes(started) == []


@contextlib.contextmanager
def demo(*args: str) -> Iterator[subprocess.Popen[str]]:
    """``workermeter demo ARGS`` running, its output read through pipes; killed if still
    running when the test ends."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "workermeter", "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
        cwd=servers.ROOT,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ctrl_c_ends_it_early_and_stops_gunicorn() -> None:
    started = time.time()
    with demo("--duration", "60") as proc:
        assert proc.stdout is not None
        header = proc.stdout.readline()  # printed once gunicorn answers
        assert "workermeter demo" in header, header
        assert demo_processes(started)  # gunicorn answered, so it runs
        time.sleep(3)
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Stopped early." in out
    assert "Suggestion: " in out
    assert demo_processes(started) == []


def test_it_ends_on_the_status_page_of_the_run_until_ctrl_c() -> None:
    """After the suggestion, the page of the run is served, its history holding every request
    the metrics counted; Ctrl-C ends it at once and stops everything."""
    started = time.time()
    with demo("--duration", "5", "--wait", "60") as proc:
        assert proc.stdout is not None
        lines: list[str] = []
        while not (found := re.search(r"status page of this run: (http://\S+)", "".join(lines))):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        page_url = found.group(1)
        assert page_url.endswith("/metrics/status")
        assert "Served for 1 min; Ctrl-C ends it sooner." in proc.stdout.readline()
        page = requests.get(page_url, timeout=10)
        assert page.status_code == 200 and "<h1>workermeter status</h1>" in page.text
        counted = servers.scrape(page_url.removesuffix("/metrics/status")).sum(
            "workermeter_requests_total"
        )
        assert counted > 50
        deadline = time.monotonic() + 10
        while True:  # the writer reads the store every few seconds
            rows = requests.get(page_url + ".json?range=1h", timeout=10).json()["rows"]
            if sum(r["requests"] or 0 for r in rows) == counted:
                break
            assert time.monotonic() < deadline, (counted, rows[-3:])
            time.sleep(0.5)
        assert demo_processes(started)  # the app is still up, its workers on the page
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert demo_processes(started) == []
    assert time.time() - started < 40
