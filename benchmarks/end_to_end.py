"""End to end: python benchmarks/end_to_end.py [--rounds 5] [--seconds 3]

Starts gunicorn (sync, ``-w 2``) serving the Flask app and uvicorn (one process) serving the
FastAPI app of ``e2e_app.py``, once bare and once with each meter (workermeter on its compiled
and on its pure-Python hot path), all on 127.0.0.1, and loads
each with ``wrk`` (Debian package ``wrk``) for a few seconds per round. Rounds are interleaved:
every round loads every server and endpoint once, in the same order, so that whatever else the
machine does hits all alike. Prints requests/s and p99 latency, median and range across rounds.
The servers are started as child processes and stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVERS = {
    "gunicorn sync -w 2, Flask": (
        "flask", ["prometheus-flask-exporter"],
        [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "sync", "--log-level", "warning",
         "--control-socket", "{tmp}/gunicorn-{port}.ctl", "-b", "127.0.0.1:{port}", "e2e_app:app"],
    ),
    # One process: with --workers 2 every request took 44 ms here, the delayed-ACK stall.
    "uvicorn, FastAPI": (
        "fastapi", ["prometheus-fastapi-instrumentator"],
        [sys.executable, "-m", "uvicorn", "--log-level", "warning",
         "--no-access-log", "--host", "127.0.0.1", "--port", "{port}", "e2e_app:app"],
    ),
}  # fmt: skip
ENDPOINTS = ("/hello", "/work")
PURE = "workermeter, pure Python"


@dataclass
class Target:
    server: str
    meter: str
    port: int
    process: subprocess.Popen[bytes]
    rps: dict[str, list[float]] = field(default_factory=dict)
    p99: dict[str, list[float]] = field(default_factory=dict)


def start(server: str, meter: str, port: int, tmp: Path) -> Target:
    framework, _, argv = SERVERS[server]
    env = dict(os.environ, BENCH_METER=meter, BENCH_FRAMEWORK=framework)
    env["PYTHONPATH"] = str(HERE)
    env.pop("WORKERMETER_PURE", None)
    if meter == PURE:  # the same middleware, on the pure-Python hot path
        env["WORKERMETER_PURE"] = "1"
        env["BENCH_METER"] = "workermeter"
    if meter in ("workermeter", PURE):
        env["WORKERMETER_DIR"] = tempfile.mkdtemp(dir=tmp, prefix="store-")
    elif meter != "bare":  # prometheus_client's multiprocess mode, as a pre-fork server needs
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(dir=tmp, prefix="prom-")
    process = subprocess.Popen(
        [a.format(port=port, tmp=tmp) for a in argv], env=env, cwd=HERE, start_new_session=True
    )
    return Target(server, meter, port, process)


def wait_ready(target: Target, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if target.process.poll() is not None:
            raise RuntimeError(f"{target.server} with {target.meter} exited")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{target.port}/hello", timeout=1):
                return
        except OSError:  # not listening yet
            time.sleep(0.2)
    raise RuntimeError(f"{target.server} with {target.meter} did not start in {timeout} s")


def stop(target: Target) -> None:
    if target.process.poll() is None:
        os.killpg(target.process.pid, signal.SIGTERM)
        try:
            target.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(target.process.pid, signal.SIGKILL)
            target.process.wait()


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(port: int, path: str, seconds: int, connections: int) -> tuple[float, float]:
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency",
         "--timeout", "5s", f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True, timeout=seconds + 30,
    ).stdout  # fmt: skip
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    if rps is None or p99 is None or "Non-2xx" in out:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return float(rps.group(1)), _ms(p99.group(1), p99.group(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=3, help="per wrk run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(prefix="wm-e2e-") as tmp:
        try:
            port = 18600
            for server, (_, peers, _) in SERVERS.items():
                for meter in ["bare", "workermeter", PURE, *peers]:
                    targets.append(start(server, meter, port, Path(tmp)))
                    port += 1
            for t in targets:
                wait_ready(t)
                for path in ENDPOINTS:
                    wrk(t.port, path, 1, args.connections)  # warm up
            for _ in range(args.rounds):
                for path in ENDPOINTS:
                    for t in targets:
                        rps, p99 = wrk(t.port, path, args.seconds, args.connections)
                        t.rps.setdefault(path, []).append(rps)
                        t.p99.setdefault(path, []).append(p99)
        finally:
            for t in targets:
                stop(t)
    report(targets, args)


def bootstrap(values: list[float], resamples: int = 4000) -> tuple[float, float]:
    """A 95% interval of the median of ``values`` (percentile bootstrap, fixed seed)."""
    rng = random.Random(0)
    medians = sorted(
        statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples)
    )
    return medians[int(resamples * 0.025)], medians[int(resamples * 0.975) - 1]


def report(targets: list[Target], args: argparse.Namespace) -> None:
    print(f"{args.rounds} interleaved rounds of {args.seconds} s, wrk -t 1 -c {args.connections}")
    rows = []
    for path in ENDPOINTS:
        for server in SERVERS:
            group = [t for t in targets if t.server == server]
            bare = statistics.median(group[0].rps[path])
            print(f"\n{server}, {path}")
            print(
                f"{'meter':36s} {'req/s (min-max)':>24s} {'vs bare':>8s} {'95% CI':>16s} "
                f"{'p99 ms (min-max)':>22s}"
            )
            for t in group:
                rps, p99 = t.rps[path], t.p99[path]
                med = statistics.median(rps)
                change = (med - bare) / bare * 100
                # Each round against the bare server's in the same round: the pairs cancel what
                # the machine did meanwhile; the interval is a bootstrap of their median.
                paired = [(r - b) / b * 100 for r, b in zip(rps, group[0].rps[path], strict=True)]
                low, high = bootstrap(paired)
                print(
                    f"{t.meter:36s} {med:8.0f} ({min(rps):6.0f}-{max(rps):6.0f}) "
                    f"{change:+7.1f}% {low:+6.1f} to {high:+5.1f}% "
                    f"{statistics.median(p99):8.2f} ({min(p99):5.2f}-{max(p99):5.2f})"
                )
                rows.append({"server": server, "path": path, "meter": t.meter, "rps": rps,
                             "p99_ms": p99, "change_pct": change, "paired_pct": paired,
                             "ci95_pct": [low, high]})  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
