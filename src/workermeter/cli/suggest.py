"""``workermeter suggest``: how many processes x threads (and machines), with the reasons.

For async workers (uvicorn, gunicorn's uvicorn or gevent worker) the answer counts event loops,
and says first when a blocking call or the thread pool, not the number of loops, is the limit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any

import psutil

from .. import observe
from ..capacity import MIB, LoopDemand, Machine, Suggestion, Targets, suggest
from . import UsageError

HELP = "Suggest processes x threads (and machines) from live metrics, Prometheus or access logs."

#: Per-process memory assumed when the source cannot tell (access logs).
ASSUMED_PROCESS_MEMORY = 150 * MIB


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--metrics",
        metavar="URL",
        help="a live workermeter /metrics endpoint to sample, e.g. http://127.0.0.1:8000/metrics",
    )
    source.add_argument(
        "--prometheus", metavar="URL", help="a Prometheus server, e.g. http://127.0.0.1:9090"
    )
    source.add_argument("--logs", metavar="FILE", nargs="+", help="access log files (plain or .gz)")
    source.add_argument(
        "--history",
        metavar="DURATION",
        help="the server's own history over the last DURATION, e.g. 7d (see --dir)",
    )
    parser.add_argument(
        "--dir",
        dest="directory",
        metavar="DIR",
        help=(
            "with --history: the directory holding history.wm (default: "
            "$WORKERMETER_HISTORY_DIR, else $WORKERMETER_DIR)"
        ),
    )
    parser.add_argument(
        "--for",
        dest="duration",
        default="60s",
        metavar="DURATION",
        help="with --metrics: how long to sample, at your peak (default 60s)",
    )
    parser.add_argument(
        "--selector",
        default="",
        help="with --prometheus: the labels of one server's series, e.g. '{job=\"app\"}'",
    )
    parser.add_argument(
        "--window",
        default="1d",
        metavar="DURATION",
        help=(
            "with --prometheus: how far back to look (default 1d); the peak is its highest "
            "5-minute rate"
        ),
    )
    parser.add_argument(
        "--format",
        dest="log_format",
        default="auto",
        metavar="FORMAT",
        help="with --logs: nginx, gunicorn, apache or auto (default: chosen per file)",
    )
    parser.add_argument(
        "--capacity",
        default=None,
        metavar="SLOTS",
        help="with --logs: requests the server could serve at once (processes x threads)",
    )
    parser.add_argument(
        "--cpu-share",
        default=None,
        metavar="SHARE",
        help="with --logs: share of a request's time on the CPU, 0..1 (logs cannot show it)",
    )
    parser.add_argument(
        "--process-memory",
        default=None,
        metavar="BYTES",
        help=(
            "with --logs: memory of one worker process, e.g. 200M (default "
            f"{ASSUMED_PROCESS_MEMORY // MIB}M, an assumption)"
        ),
    )
    parser.add_argument(
        "--target-utilisation",
        type=float,
        default=0.8,
        metavar="SHARE",
        help="the share of time each slot may be busy at the peak (default 0.8)",
    )
    parser.add_argument(
        "--target-loop-utilisation",
        type=float,
        default=Targets().loop_utilisation,
        metavar="SHARE",
        help=(
            "for async workers: the share of time each event loop may be busy at the peak "
            f"(default {Targets().loop_utilisation:g})"
        ),
    )
    parser.add_argument(
        "--target-wait",
        default=None,
        metavar="SECONDS",
        help="the longest p95 queue wait allowed at the peak, e.g. 0.1 or 100ms (default: none)",
    )
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")


def duration(text: str, option: str) -> float:
    try:
        return observe.parse_duration(text)
    except ValueError as e:
        raise UsageError(f"{option}: {e}") from None


def _targets(args: argparse.Namespace) -> Targets:
    wait = None
    if args.target_wait is not None:
        wait = duration(args.target_wait, "--target-wait")
    try:
        return Targets(
            utilisation=args.target_utilisation,
            loop_utilisation=args.target_loop_utilisation,
            wait=wait,
        )
    except ValueError as e:
        option = "--target-loop-utilisation" if "loop_" in str(e) else "--target-utilisation"
        raise UsageError(f"{option}: {e}") from None


def measure(args: argparse.Namespace) -> observe.Measurement:
    """The capacity inputs from the source the options name."""
    if args.metrics is not None:
        seconds = duration(args.duration, "--for")
        url = observe.metrics_url(args.metrics)
        observe.scrape(url)  # a URL that is down or not workermeter fails now, not in a minute
        if not args.json:
            print(f"Sampling {url} for {seconds:g} s...", file=sys.stderr, flush=True)
        return observe.measure_metrics(url, seconds)
    if args.history is not None:
        return _from_history(args)
    if args.prometheus is not None:
        window = duration(args.window, "--window")
        return observe.measure_prometheus(args.prometheus, selector=args.selector, window=window)
    return _from_logs(args)


def _from_history(args: argparse.Namespace) -> observe.Measurement:
    from .. import history as h
    from ..history_source import measure_history, open_history

    seconds = duration(args.history, "--history")
    file = open_history(args.directory)
    end = time.time()
    step = 60 if seconds <= 8 * 86400 else 3600
    days = f"{seconds / 86400:g} days" if seconds >= 86400 else f"{seconds / 3600:g} h"
    return measure_history(h.series(file, end - seconds, end, step), what=f"the last {days}")


def _from_logs(args: argparse.Namespace) -> observe.Measurement:
    # Imported here: only this source needs the log reader.
    from .logs import parse_integer, parse_share, parse_size, read_logs

    capacity = None if args.capacity is None else parse_integer("--capacity", args.capacity)
    share = None if args.cpu_share is None else parse_share(args.cpu_share)
    analysis = read_logs(args.logs, fmt=args.log_format, capacity=capacity, cpu_share=share)
    if analysis.workload is None:
        raise UsageError("every logged duration is 0: the logs cannot show a service time")
    notes = list(analysis.warnings)
    if args.process_memory is None:
        memory = ASSUMED_PROCESS_MEMORY
        notes.append(
            f"Access logs do not show memory: {memory // MIB} MiB per worker process is assumed "
            f"(pass --process-memory)."
        )
    else:
        memory = parse_size("--process-memory", args.process_memory)
    notes.append("Cores and memory are this machine's: run it where the app runs.")
    try:
        machine = Machine(
            cores=float(psutil.cpu_count() or os.cpu_count() or 1),
            memory_total=psutil.virtual_memory().total,
            process_rss=memory,
            processes=capacity,  # the slots, counted as single-threaded processes
        )
    except ValueError as e:
        raise UsageError(f"--process-memory: {e}") from None
    return observe.Measurement(
        source=f"access logs {', '.join(args.logs)} ({analysis.requests:,} requests)",
        seconds=analysis.span,
        workload=analysis.workload,
        machine=machine,
        queue_wait_p95=analysis.wait_p95 if analysis.waits_rebuilt else None,
        notes=tuple(notes),
    )


def run(args: argparse.Namespace) -> int:
    targets = _targets(args)
    try:
        measured = measure(args)
    except observe.SourceError as e:
        raise UsageError(str(e)) from None
    answer = suggest(measured.workload, measured.machine, targets)
    if args.json:
        print(json.dumps(as_json(measured, answer), indent=2))
    else:
        print(explain(measured, answer))
    return 0


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "not measured"
    return f"{seconds * 1000:,.0f} ms"


def _bytes(n: int) -> str:
    return f"{n / MIB:,.0f} MiB" if n < 10 * 1024 * MIB else f"{n / (1024 * MIB):,.1f} GiB"


def setting(answer: Suggestion) -> str:
    """``"3 processes x 2 threads"``, on each of how many machines."""
    processes = f"{answer.processes} process" + ("" if answer.processes == 1 else "es")
    threads = f"{answer.threads} thread" + ("" if answer.threads == 1 else "s")
    where = "on 1 machine" if answer.machines == 1 else f"on each of {answer.machines} machines"
    return f"{processes} x {threads} {where}"


def explain(measured: observe.Measurement, answer: Suggestion) -> str:
    """The measurement, the suggestion and its reasons, in plain words."""
    w, mc = measured.workload, measured.machine
    lines = [f"Measured: {measured.source}"]
    rate = f"{w.peak_rate:,.1f} requests/s at the peak"
    if w.typical_rate is not None:
        rate += f", {w.typical_rate:,.1f} typical"
    lines.append(f"  rate          {rate}")
    lines.append(
        f"  service time  {_ms(w.service_time)} mean (cv {w.service_cv:.2f}), "
        f"{w.cpu_share:.0%} of it on the CPU"
    )
    now = []
    if mc.processes is not None:
        now.append(
            f"{mc.processes} process{'' if mc.processes == 1 else 'es'} x "
            f"{mc.threads} thread{'' if mc.threads == 1 else 's'}"
        )
    if w.utilisation is not None:
        now.append(f"{w.utilisation:.0%} busy" + (" (event-loop utilisation)" if w.loops else ""))
    if w.all_busy_share is not None:
        now.append(f"every slot busy at least {w.all_busy_share:.0%} of the time")
    if now:
        lines.append(f"  now           {', '.join(now)}")
    if w.loops is not None:
        lines.extend(_loop_lines(w.loops))
    p50, p95 = measured.queue_wait_p50, measured.queue_wait_p95
    if p95 is not None:
        lines.append(f"  queue wait    p50 {_ms(p50)}, p95 {_ms(p95)}")
    uss = f", USS {_bytes(mc.process_uss)}" if mc.process_uss is not None else ""
    lines.append(
        f"  memory        RSS {_bytes(mc.process_rss)}{uss} per process; host {mc.cores:g} cores, "
        f"{_bytes(mc.memory_total)}"
    )
    lines.append("")
    lines.extend(_first(answer))
    command = f"gunicorn --workers {answer.processes} --threads {answer.threads}"
    if answer.event_loops:
        command = f"uvicorn --workers {answer.processes}"
    lines.append(f"Suggestion: {setting(answer)} ({command})")
    if answer.lower_bound:
        lines.append("  This is a lower bound: the workers were saturated while measured.")
    lines.append("Why:")
    lines.extend(f"  - {reason}" for reason in answer.reasons)
    if measured.notes:
        lines.append("Notes:")
        lines.extend(f"  - {note}" for note in measured.notes)
    return "\n".join(lines)


def _loop_lines(loops: LoopDemand) -> list[str]:
    lines = [
        f"  event loops   {loops.busy:.2f} loop-seconds per second at the peak, "
        f"{loops.cpu_share:.0%} of it on the CPU"
    ]
    if loops.pool_threads is not None:
        taken = "" if loops.pool_utilisation is None else f", {loops.pool_utilisation:.0%} taken"
        waited = (
            f"tasks waited {loops.pool_wait:.2f} task-seconds per second"
            if loops.pool_wait > 0
            else "no task waited"
        )
        lines.append(f"  thread pool   {loops.pool_threads} threads per worker{taken}, {waited}")
    return lines


def _first(answer: Suggestion) -> list[str]:
    """What to fix before sizing, said before the suggestion."""
    first = []
    if answer.loop_blocked:
        where = ", ".join(answer.blocking_routes) or "no route named"
        first.append(
            f"First: a blocking call holds the event loop ({where}); fix it before adding "
            f"processes (see why)."
        )
    if answer.pool_limited:
        first.append(
            "First: the thread pool that runs sync endpoints is the limit, not the loop (see why)."
        )
    return first


def _finite(value: Any) -> Any:
    """JSON has no infinity: an unbounded wait is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def as_json(measured: observe.Measurement, answer: Suggestion) -> dict[str, Any]:
    """The measurement and the suggestion as plain JSON values."""
    return {
        "source": measured.source,
        "window_seconds": measured.seconds,
        "measured": {
            "workload": _finite(dataclasses.asdict(measured.workload)),
            "machine": dataclasses.asdict(measured.machine),
            "queue_wait_p50": measured.queue_wait_p50,
            "queue_wait_p95": measured.queue_wait_p95,
        },
        "suggestion": _finite({**dataclasses.asdict(answer), "slots": answer.slots}),
        "notes": list(measured.notes),
    }
