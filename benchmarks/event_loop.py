"""What measuring an event loop costs per iteration: python benchmarks/event_loop.py [--rounds N]

Two tasks ping-pong a byte over a socket pair, so every loop iteration waits in the selector (or
libuv's poll, or gevent's hub) once: the cheapest real iteration there is, and the one the meter
wraps. Each round runs the same number of round trips on a bare loop and on a measured one, in
alternating order, for asyncio (the timed selector), uvloop (libuv's idle time: a clock read
libuv makes per poll, and a timer four times a second) and gevent (the hub's prepare and check
watchers). The difference per iteration is the meter's cost; the spread over rounds is shown.
The target is at most 1 µs per iteration.

``--instructions`` counts instructions with valgrind instead (noise-free on a shared machine):
each case runs with N and 2N round trips, and the difference over N, measured minus bare, is what
the meter adds per waiting iteration.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

TRIPS = 20_000  # round trips per run: two loop iterations each

_CHILD = r"""
import asyncio, socket, sys, time, tempfile
sys.path.insert(0, {src!r})
kind, measured, trips = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])

def attach():
    from workermeter import eventloop
    from workermeter.recorder import Recorder
    active = Recorder(directory=tempfile.mkdtemp(prefix="wm-bench-")).activate(
        multithread=False, capacity=None)
    return eventloop, eventloop.loop_words(active, active.header, time.perf_counter_ns)

if kind == "gevent":
    from gevent import monkey
    monkey.patch_all()
    import gevent, gevent.socket
    if measured:
        eventloop, words = attach()
        eventloop.install_gevent(words)
    a, b = gevent.socket.socketpair()
    def echo():
        for _ in range(trips):
            b.sendall(b.recv(1))
    g = gevent.spawn(echo)
    start = time.perf_counter_ns()
    for _ in range(trips):
        a.sendall(b"x")
        a.recv(1)
    print(time.perf_counter_ns() - start)
    g.join()
else:
    if kind == "uvloop":
        import uvloop
        uvloop.install()
    async def main():
        loop = asyncio.get_running_loop()
        if measured:
            eventloop, words = attach()
            assert eventloop.install_asyncio(loop, words) == kind
        a, b = socket.socketpair()
        a.setblocking(False); b.setblocking(False)
        async def echo():
            for _ in range(trips):
                await loop.sock_sendall(b, await loop.sock_recv(b, 1))
        task = loop.create_task(echo())
        start = time.perf_counter_ns()
        for _ in range(trips):
            await loop.sock_sendall(a, b"x")
            await loop.sock_recv(a, 1)
        elapsed = time.perf_counter_ns() - start
        await task
        return elapsed
    print(asyncio.run(main()))
"""


def run(kind: str, measured: bool, trips: int) -> float:
    """Nanoseconds per loop iteration (two per round trip) in a fresh interpreter."""
    src = str(Path(__file__).resolve().parent.parent / "src")
    out = subprocess.run(
        [sys.executable, "-c", _CHILD.format(src=src), kind, "1" if measured else "0", str(trips)],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return int(out.stdout.strip().splitlines()[-1]) / (2 * trips)


def instructions(kind: str, measured: bool, trips: int) -> int:
    """Instructions valgrind counts for a whole child run."""
    src = str(Path(__file__).resolve().parent.parent / "src")
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         "-c", _CHILD.format(src=src), kind, "1" if measured else "0", str(trips)],
        check=True, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(f"valgrind printed no count:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def added_instructions(kind: str, trips: int) -> float:
    """Instructions the meter adds per waiting loop iteration (two per round trip)."""
    per: dict[bool, float] = {}
    for measured in (False, True):
        small, large = (instructions(kind, measured, n) for n in (trips, 2 * trips))
        per[measured] = (large - small) / (2 * trips)
    return per[True] - per[False]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--trips", type=int, default=TRIPS)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--instructions", action="store_true", help="count with valgrind")
    args = parser.parse_args()
    if args.instructions:
        if shutil.which("valgrind") is None:
            sys.exit("valgrind is needed: apt-get install valgrind")
        for kind in ("asyncio", "uvloop", "gevent"):
            added = added_instructions(kind, min(args.trips, 2000))
            print(f"{kind:8} {added:8.0f} instructions added per waiting iteration", flush=True)
        return
    results: dict[str, dict[str, list[float]]] = {}
    for i in range(args.rounds):
        for kind in ("asyncio", "uvloop", "gevent"):
            order = (False, True) if i % 2 == 0 else (True, False)
            for measured in order:
                ns = run(kind, measured, args.trips)
                results.setdefault(kind, {}).setdefault(str(measured), []).append(ns)
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print(f"{'loop':8} {'bare ns/iter':>13} {'measured':>10} {'added ns':>9} {'added spread':>14}")
    for kind, runs in results.items():
        bare, metered = runs["False"], runs["True"]
        added = [m - b for b, m in zip(bare, metered, strict=True)]
        print(
            f"{kind:8} {statistics.median(bare):13.0f} {statistics.median(metered):10.0f} "
            f"{statistics.median(added):9.0f} {min(added):6.0f} … {max(added):5.0f}"
        )


if __name__ == "__main__":
    main()
