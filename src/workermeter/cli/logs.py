"""``workermeter logs FILE…``: how busy the workers were, and how many they need, from access logs.

Reads the logs with :func:`workermeter.accesslog.analyse`, prints the report in plain words (or
``--json``), and ends with the suggestion of :func:`workermeter.capacity.suggest`.
:func:`read_logs` is the log source for ``workermeter suggest`` too.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, TextIO

import psutil

from ..accesslog import FORMATS, LogAnalysis, LogError, Minute, Progress, analyse, line_format
from ..capacity import MIB, Machine, Suggestion, suggest
from . import UsageError

HELP = "Rates, busy workers and a suggestion from access logs (nginx, gunicorn, Apache)."

#: Worker memory assumed when --process-memory is not given (the seeds' typical Django worker).
PROCESS_MEMORY = 150 * MIB
#: Show a progress bar (on a terminal) when the files add up to this many bytes.
PROGRESS_BYTES = 16 * MIB
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Log lines need a duration: nginx $request_time/$upstream_response_time (best with "
        "$msec), gunicorn %(D)s or %(L)s, Apache %D. docs/logs.md has the configuration lines."
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="access logs, plain or gzip")
    parser.add_argument(
        "--format",
        default="auto",
        metavar="FORMAT",
        help=f"auto (default: chosen per file), {', '.join(FORMATS)}, or custom with --pattern",
    )
    parser.add_argument(
        "--pattern",
        help="a custom line pattern: a regex with named groups (end or start, duration, path, "
        "method, status) or placeholders, e.g. '{end} \"{request}\" {status} {duration:ms}'",
    )
    parser.add_argument(
        "--capacity",
        metavar="N",
        help="slots that served these requests (processes x threads, all machines): shows the "
        "minutes when every one was busy",
    )
    parser.add_argument("--processes", metavar="P", help="worker processes now (sets capacity)")
    parser.add_argument("--threads", metavar="T", help="threads per process now (default 1)")
    parser.add_argument("--cores", metavar="C", help="CPU cores of the server (default: this one)")
    parser.add_argument(
        "--memory", metavar="BYTES", help="memory of the server, e.g. 4G (default: this one)"
    )
    parser.add_argument(
        "--process-memory",
        metavar="BYTES",
        help=f"memory of one worker process, e.g. 200M (default {PROCESS_MEMORY // MIB}M)",
    )
    parser.add_argument(
        "--cpu-share",
        metavar="SHARE",
        help="share of a request's time spent on the CPU, 0..1 (logs cannot show it; default 0.5)",
    )
    parser.add_argument(
        "--top", metavar="K", default="10", help="routes and minutes to list (default 10)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON for machines")


def run(args: argparse.Namespace) -> int:
    top = parse_integer("--top", args.top)
    capacity, processes, threads = _capacity(args)
    share = None if args.cpu_share is None else parse_share(args.cpu_share)
    analysis = read_logs(
        args.files, fmt=args.format, pattern=args.pattern, capacity=capacity, cpu_share=share
    )
    machine, assumed = _machine(args, processes, threads)
    suggestion = None
    if analysis.workload is not None and isinstance(machine, Machine):
        suggestion = suggest(analysis.workload, machine)
    if args.json:
        doc = _document(analysis, machine, suggestion, assumed)
        print(json.dumps(_plain(doc), indent=2))
    else:
        _print_report(analysis, machine, suggestion, assumed, top, sys.stdout)
    return 0


def read_logs(
    paths: Sequence[str],
    *,
    fmt: str = "auto",
    pattern: str | None = None,
    capacity: int | None = None,
    cpu_share: float | None = None,
) -> LogAnalysis:
    """:func:`~workermeter.accesslog.analyse` for a command: a progress bar on a terminal for
    large files, and every problem with the input as a :class:`~workermeter.cli.UsageError`."""
    if fmt not in ("auto", *FORMATS, "custom"):
        choices = ", ".join(("auto", *FORMATS, "custom"))
        raise UsageError(f"--format must be one of {choices}, not {fmt!r}")
    if fmt != "auto" or pattern is not None:
        try:
            line_format(fmt, pattern)
        except ValueError as e:
            raise UsageError(f"--pattern/--format: {e}") from None
    for path in paths:
        if not os.path.exists(path):
            raise UsageError(f"{path}: no such file")
        if os.path.isdir(path):
            raise UsageError(f"{path}: is a directory, not a log file")
    try:
        with _progress(paths) as progress:
            return analyse(
                paths,
                fmt=fmt,
                pattern=pattern,
                capacity=capacity,
                cpu_share=cpu_share,
                progress=progress,
            )
    except LogError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        where = e.filename or ", ".join(paths)
        raise UsageError(f"{where}: cannot read: {e.strerror or e}") from None


# --- options ----------------------------------------------------------------------------------


def parse_integer(name: str, value: str, low: int = 1) -> int:
    """A whole-number option, at least ``low``."""
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"{name} must be a whole number, not {value!r}") from None
    if number < low:
        raise UsageError(f"{name} must be at least {low}, not {number}")
    return number


def parse_share(value: str) -> float:
    """``--cpu-share``: a share from 0 to 1."""
    try:
        share = float(value)
    except ValueError:
        share = math.nan
    if not 0.0 <= share <= 1.0:
        raise UsageError(f"--cpu-share must be a share from 0 to 1 (e.g. 0.3), not {value!r}")
    return share


def parse_size(name: str, value: str) -> int:
    """``4294967296``, ``4G``, ``4GiB``, ``512M``, ``1.5G``: binary units (1K = 1024 bytes)."""
    m = _SIZE.fullmatch(value.strip())
    if m is None:
        raise UsageError(
            f"{name} must be bytes, optionally with K, M, G or T (e.g. 4G), not {value!r}"
        )
    size = int(float(m[1]) * _UNITS[m[2].upper()])
    if size < 1:
        raise UsageError(f"{name} must be more than 0 bytes, not {value!r}")
    return size


def _capacity(args: argparse.Namespace) -> tuple[int | None, int | None, int]:
    """--capacity, or --processes x --threads; they must agree when both are given."""
    capacity = None if args.capacity is None else parse_integer("--capacity", args.capacity)
    processes = None if args.processes is None else parse_integer("--processes", args.processes)
    threads = 1 if args.threads is None else parse_integer("--threads", args.threads)
    if args.threads is not None and processes is None:
        raise UsageError("--threads needs --processes (or give the total as --capacity)")
    if processes is not None:
        slots = processes * threads
        if capacity is not None and capacity != slots:
            raise UsageError(
                f"--capacity {capacity} disagrees with --processes {processes} x --threads "
                f"{threads} = {slots} slots; give one or the other"
            )
        capacity = slots
    return capacity, processes, threads


def _machine(
    args: argparse.Namespace, processes: int | None, threads: int
) -> tuple[Machine | str, list[str]]:
    """The server as the options describe it, filling gaps from this machine. Returns the
    reason instead when the defaults cannot describe one (a tiny container, say)."""
    assumed = []
    if args.cores is None:
        cores = float(psutil.cpu_count() or 1)
        assumed.append(f"{cores:g} cores (this machine's; pass --cores)")
    else:
        try:
            cores = float(args.cores)
        except ValueError:
            raise UsageError(f"--cores must be a number, not {args.cores!r}") from None
    if args.memory is None:
        memory = int(psutil.virtual_memory().total)
        assumed.append(f"{memory / (1 << 30):.1f} GiB of memory (this machine's; pass --memory)")
    else:
        memory = parse_size("--memory", args.memory)
    if args.process_memory is None:
        process = PROCESS_MEMORY
        assumed.append(f"{process // MIB} MiB per worker process (pass --process-memory)")
    else:
        process = parse_size("--process-memory", args.process_memory)
    if processes is None and args.capacity is not None:
        # the slot count is known
        processes, threads = parse_integer("--capacity", args.capacity), 1
    try:
        return (
            Machine(
                cores=cores,
                memory_total=memory,
                process_rss=process,
                processes=processes,
                threads=threads,
            ),
            assumed,
        )
    except ValueError as e:
        if args.cores is not None and args.memory is not None and args.process_memory is not None:
            raise UsageError(str(e)) from None
        return f"No suggestion: {e} (some of it assumed: {'; '.join(assumed)}).", assumed


# --- progress ---------------------------------------------------------------------------------


@contextmanager
def _progress(paths: Sequence[str], stream: TextIO | None = None) -> Iterator[Progress | None]:
    """A progress bar on a terminal when the files are large: rich's if it is installed."""
    out = sys.stderr if stream is None else stream
    try:
        total = sum(os.path.getsize(p) for p in paths)
    except OSError:  # analyse() reports the unreadable file properly
        total = 0
    if total < PROGRESS_BYTES or not out.isatty():
        yield None
        return
    try:
        rich_progress = importlib.import_module("rich.progress")
        rich_console = importlib.import_module("rich.console")
    except ImportError:  # rich is optional: plain text instead
        plain = PlainProgress(out)
        try:
            yield plain
        finally:
            plain.close()
        return
    bar = rich_progress.Progress(
        rich_progress.TextColumn("reading {task.description}"),
        rich_progress.BarColumn(),
        rich_progress.TaskProgressColumn(),
        rich_progress.TimeRemainingColumn(),
        console=rich_console.Console(file=out),
        transient=True,
    )
    with bar:
        task = bar.add_task(os.path.basename(paths[0]), total=total)
        done = dict.fromkeys(paths, 0)

        def update(path: str, done_bytes: int, total: int) -> None:
            done[path] = done_bytes
            bar.update(task, completed=sum(done.values()), description=os.path.basename(path))

        yield update


class PlainProgress:
    """``reading access.log:  42%`` on one line, rewritten as reading goes on."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.shown: tuple[str, int] | None = None

    def __call__(self, path: str, done: int, total: int) -> None:
        percent = 100 * done // total if total else 100
        if self.shown != (path, percent):
            self.shown = (path, percent)
            self.stream.write(f"\rreading {os.path.basename(path)}: {percent:3d}%")
            self.stream.flush()

    def close(self) -> None:
        if self.shown is not None:
            self.stream.write("\n")
            self.stream.flush()


# --- the report -------------------------------------------------------------------------------


def _clock(analysis: LogAnalysis) -> timezone:
    return timezone(timedelta(seconds=analysis.utc_offset))


def _when(analysis: LogAnalysis, t: float, fmt: str) -> str:
    return datetime.fromtimestamp(t, _clock(analysis)).strftime(fmt)


def _minute_format(analysis: LogAnalysis) -> str:
    days = {_when(analysis, m.start, "%Y-%m-%d") for m in analysis.minutes}
    return "%H:%M" if len(days) <= 1 else "%Y-%m-%d %H:%M"


def _duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "-"
    if seconds < 10:
        return f"{seconds * 1000:,.0f} ms"
    return f"{seconds:,.1f} s"


def _span(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h} h {m} min"
    return f"{m} min {s} s" if m else f"{s} s"


def _plural(n: int, word: str, words: str = "") -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {words or word + 's'}"


def _print_report(
    a: LogAnalysis,
    machine: Machine | str,
    suggestion: Suggestion | None,
    assumed: Sequence[str],
    top: int,
    out: TextIO,
) -> None:
    def say(line: str = "") -> None:
        print(line, file=out)

    where = _plural(len(a.files), "file")
    counts = [_plural(a.requests, "request"), f"from {where} ({a.format})"]
    extra = []
    if a.malformed:
        extra.append(_plural(a.malformed, "malformed line"))
    if a.skipped:
        extra.append(f"{a.skipped:,} not passed to the app")
    say(" ".join(counts) + (f"; {', '.join(extra)}" if extra else "") + ".")
    if len(a.files) > 1:
        for f in a.files:
            say(
                f"  {f.path}: {f.format}, {f.requests:,} requests, {f.malformed:,} malformed"
                + (", ended early" if f.truncated else "")
            )
    offset = _when(a, a.first, "%z")
    offset = f"{offset[:3]}:{offset[3:]}"
    same_day = _when(a, a.first, "%Y-%m-%d") == _when(a, a.last, "%Y-%m-%d")
    until = _when(a, a.last, "%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S")
    say(
        f"Time span: {_when(a, a.first, '%Y-%m-%d %H:%M:%S')} to {until} (UTC{offset}), "
        f"{_span(a.span)}."
    )
    say()
    minute_fmt = _minute_format(a)
    peak = a.peak_minute
    say(
        f"Arrival rate: peak {peak.rate:,.2f} requests/s ({peak.arrivals:,} in the minute from "
        f"{_when(a, peak.start, minute_fmt)}), typical {a.typical_rate:,.2f}/s (the median "
        f"minute)."
    )
    took = "the logged times less the rebuilt waits" if a.waits_rebuilt else "the logged times"
    say(
        f"Service time: mean {_duration(a.service_time)}, p50 {_duration(a.service_p50)}, "
        f"p95 {_duration(a.service_p95)}, cv {a.service_cv:.2f} ({took})."
    )
    if a.waits_rebuilt:
        say(
            f"Queue wait (rebuilt: first come, first served by {a.capacity} slots): "
            f"{a.waited:,} of {a.requests:,} requests waited; mean {_duration(a.wait_mean)}, "
            f"p95 {_duration(a.wait_p95)}."
        )
    conc = a.concurrency
    line = (
        f"Concurrency: at most {conc.max_in_flight:,} requests in flight at once, "
        f"{conc.mean_in_flight:.2f} on average"
    )
    if a.capacity is not None:
        share = conc.seconds_at_capacity / a.span if a.span > 0 else 0.0
        line += (
            f"; all {a.capacity} slots busy for {_duration(conc.seconds_at_capacity)} "
            f"({share:.1%} of the time)"
        )
    say(line + ".")
    say()

    say(f"Top routes by worker time (of {len(a.routes):,}):")
    rows: list[tuple[str, ...]] = [("route", "requests", "time", "share", "p50", "p95")]
    for r in a.routes[:top]:
        rows.append(
            (
                r.route,
                f"{r.requests:,}",
                _duration(r.busy_seconds),
                f"{r.busy_share:.0%}",
                _duration(r.p50),
                _duration(r.p95),
            )
        )
    _table(rows, say)
    say()

    say("Busiest minutes:")
    rows = [("minute", "requests", "per s", "max in flight", "mean in flight", "all busy")]
    for m in a.busiest_minutes(top):
        rows.append(_minute_row(a, m, minute_fmt))
    _table(rows, say)
    say()

    if a.capacity is None:
        say(
            "Pass --capacity N (or --processes P --threads T) to see the minutes when every "
            "worker was busy."
        )
    else:
        full = a.minutes_at_capacity
        say(
            f"Minutes with all {a.capacity} slots busy: {len(full):,} of "
            f"{len(a.minutes):,} with traffic."
        )
        if full:
            ranked = sorted(full, key=lambda m: (-m.seconds_at_capacity, m.start))[:top]
            for m in sorted(ranked, key=lambda m: m.start):
                say(
                    f"  {_when(a, m.start, minute_fmt)}  all busy for "
                    f"{_duration(m.seconds_at_capacity)} ({m.share_at_capacity:.0%} of the "
                    f"minute), up to {m.max_in_flight} in flight, {m.arrivals:,} arrivals"
                )
            if len(full) > len(ranked):
                say(f"  ... and {len(full) - len(ranked):,} more (--json lists every minute)")
    say()

    if suggestion is not None:
        say(
            f"Suggestion: {_plural(suggestion.processes, 'process', 'processes')} x "
            f"{_plural(suggestion.threads, 'thread')} on {_plural(suggestion.machines, 'machine')}"
            + (" (a lower bound: the workers were saturated)" if suggestion.lower_bound else "")
            + "."
        )
        for reason in suggestion.reasons:
            say(f"  - {reason}")
        if assumed:
            say(f"  Assumed: {'; '.join(assumed)}.")
    elif isinstance(machine, str):
        say(machine)
    else:
        say("No suggestion: every logged duration is 0.")
    say()

    if a.warnings:
        say("Warnings:")
        for w in a.warnings:
            say(f"  - {w}")
    if a.bad_lines:
        say()
        say(f"Malformed lines (the first {len(a.bad_lines)} of {a.malformed:,}):")
        for b in a.bad_lines:
            say(f"  {b.path}:{b.line_number}: {b.reason}")
            say(f"    {_printable(b.text)}")


def _printable(text: str) -> str:
    """The line as it is, but control characters escaped so they cannot upset the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _minute_row(a: LogAnalysis, m: Minute, fmt: str) -> tuple[str, ...]:
    busy = "-" if a.capacity is None else f"{m.share_at_capacity:.0%}"
    return (
        _when(a, m.start, fmt),
        f"{m.arrivals:,}",
        f"{m.rate:,.2f}",
        f"{m.max_in_flight:,}",
        f"{m.mean_in_flight:,.2f}",
        busy,
    )


def _table(rows: Sequence[tuple[str, ...]], say: Any) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        say("  " + "  ".join(cells).rstrip())


# --- JSON -------------------------------------------------------------------------------------


def _document(
    a: LogAnalysis, machine: Machine | str, suggestion: Suggestion | None, assumed: list[str]
) -> dict[str, Any]:
    conc = a.concurrency
    minute_fmt = "%Y-%m-%dT%H:%M%z"

    def minute(m: Minute) -> dict[str, Any]:
        return {"time": _when(a, m.start, minute_fmt), **dataclasses.asdict(m), "rate": m.rate}

    return {
        "files": [dataclasses.asdict(f) for f in a.files],
        "format": a.format,
        "lines": a.lines,
        "requests": a.requests,
        "malformed": a.malformed,
        "skipped": a.skipped,
        "bad_lines": [dataclasses.asdict(b) for b in a.bad_lines],
        "first": a.first,
        "last": a.last,
        "span": a.span,
        "utc_offset": a.utc_offset,
        "whole_second": a.whole_second,
        "includes_queueing": a.includes_queueing,
        "capacity": a.capacity,
        "concurrency": {
            "max_in_flight": conc.max_in_flight,
            "mean_in_flight": conc.mean_in_flight,
            "seconds_at_capacity": conc.seconds_at_capacity,
            "time_at_level": list(conc.time_at_level),
        },
        "peak_minute": minute(a.peak_minute),
        "peak_rate": a.peak_rate,
        "typical_rate": a.typical_rate,
        "service": {
            "mean": a.service_time,
            "cv": a.service_cv,
            "p50": a.service_p50,
            "p95": a.service_p95,
        },
        "queue_wait": {
            "rebuilt": a.waits_rebuilt,
            "waited": a.waited,
            "mean": a.wait_mean,
            "p95": a.wait_p95,
            "capped": a.wait_capped,
        },
        "routes": [dataclasses.asdict(r) for r in a.routes],
        "minutes": [minute(m) for m in a.minutes],
        "minutes_at_capacity": [_when(a, m.start, minute_fmt) for m in a.minutes_at_capacity],
        "cpu_share": a.cpu_share,
        "cpu_share_assumed": a.cpu_share_assumed,
        "workload": None if a.workload is None else dataclasses.asdict(a.workload),
        "machine": dataclasses.asdict(machine) if isinstance(machine, Machine) else None,
        "suggestion": None
        if suggestion is None
        else {**dataclasses.asdict(suggestion), "slots": suggestion.slots},
        "assumed": assumed,
        "warnings": list(a.warnings),
    }


def _plain(value: Any) -> Any:
    """JSON has no infinity or NaN (an unbounded wait, say): they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
