"""Cost of reading the listen backlog at a scrape: python benchmarks/scrape_backlog.py [--rounds N]

Times ``netlink_listening()`` (what ``listening()`` uses on Linux) against ``proc_listening()``
(the fallback, and what every scrape did before), in interleaved rounds on this host, and prints
the median per call. The ``/proc`` cost grows with every TCP socket on the host, TIME_WAIT
included; the netlink cost with the listening sockets only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from workermeter.listeners import Listener, netlink_listening, proc_listening

Source = Callable[[], dict[int, Listener]]


def call_ns(source: Source) -> int:
    start = time.perf_counter_ns()
    source()
    return time.perf_counter_ns() - start


def lines(table: str) -> int:
    try:
        with open(Path("/proc/net") / table) as f:
            return sum(1 for _ in f) - 1
    except OSError:  # no such table here
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="calls of each (default 200)")
    rounds = parser.parse_args().rounds
    sources: dict[str, Source] = {"netlink": netlink_listening, "/proc": proc_listening}
    samples: dict[str, list[int]] = {name: [] for name in sources}
    for source in sources.values():
        source()  # warm up
    for _ in range(rounds):
        for name, source in sources.items():
            samples[name].append(call_ns(source))

    sockets = ", ".join(f"{lines(t)} in /proc/net/{t}" for t in ("tcp", "tcp6", "unix"))
    print(f"host: {sockets}; {len(netlink_listening())} listening")
    print(f"median of {rounds} interleaved calls")
    print(f"{'source':10s} {'median':>10s} {'p90':>10s}")
    for name, values in samples.items():
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"{name:10s} {statistics.median(values) / 1e6:7.3f} ms {p90 / 1e6:7.3f} ms")
    gain = statistics.median(samples["/proc"]) / statistics.median(samples["netlink"])
    print(f"netlink is {gain:.0f}x faster")


if __name__ == "__main__":
    main()
