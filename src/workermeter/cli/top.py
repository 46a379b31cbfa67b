"""``workermeter top URL``: a live terminal view of a workermeter ``/metrics`` endpoint.

Every interval it scrapes the endpoint and shows the last few seconds: request rate, how busy
each worker is, how many slots were busy how much of the time, queue wait, memory, the busiest
routes with their CPU share, the listen backlog where the server exposes it, and what
``workermeter suggest`` would say about that window. For async workers it adds each worker's
event-loop utilisation (ELU) next to its busy slots, the thread pool's use, and the loop time each
route holds; their utilisation is the loops'. ``workermeter demo`` shows the same view.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import observe
from ..capacity import MIB, Suggestion, suggest
from ..observe_loops import loop_notes
from . import UsageError

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table
    from rich.text import Text

    from ..observe_loops import Loops

# rich is imported where it is used: it comes with the [demo] extra, and building the command's
# parser (which `workermeter --help` does for every command) must not need it.

HELP = "Watch a workermeter /metrics endpoint live: rate, utilisation, queue wait, memory."

#: Scrape intervals the figures are taken over: long enough to smooth, short enough to follow.
WINDOW = 5
BAR = 20
ROUTES = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="URL", help="e.g. http://127.0.0.1:8000/metrics")
    parser.add_argument(
        "--interval",
        default="1s",
        metavar="DURATION",
        help="time between scrapes (default 1s); figures cover the last 5 of them",
    )
    parser.add_argument(
        "--once", action="store_true", help="print one frame (two scrapes apart) and exit"
    )


# ----------------------------------------------------------------------------------- rendering


def _pct(share: float | None) -> str:
    return "—" if share is None else f"{share:.0%}"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if math.isinf(seconds):
        return "unbounded"
    return f"{seconds * 1000:,.1f} ms" if seconds < 0.01 else f"{seconds * 1000:,.0f} ms"


def _mib(n: int | None) -> str:
    return "—" if n is None else f"{n / MIB:,.0f} MiB"


def _style(share: float) -> str:
    return "green" if share < 0.7 else "yellow" if share < 0.9 else "red"


def bar(share: float | None, width: int = BAR) -> Text:
    """A horizontal bar for a share in [0, 1], coloured green, yellow, red as it fills."""
    from rich.text import Text

    if share is None:
        return Text("—")
    full = round(min(1.0, max(0.0, share)) * width)
    text = Text("█" * full, style=_style(share))
    text.append("░" * (width - full), style="dim")
    text.append(f" {share:4.0%}")
    return text


def current_suggestion(obs: observe.Observation) -> Suggestion | None:
    """What ``workermeter suggest`` would say about this window, or None without traffic."""
    try:
        return suggest(obs.workload(), obs.machine())
    except observe.SourceError:  # no request finished, or no worker seen yet
        return None


def _overview(obs: observe.Observation) -> Table:
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_column(style="bold")
    grid.add_column()
    setting = "—"
    if obs.processes is not None:
        setting = f"{obs.processes} x {obs.threads or '?'} thread{'' if obs.threads == 1 else 's'}"
        if obs.loops is not None:  # one loop, on one thread, per async worker process
            setting = f"{obs.processes} event loop{'' if obs.processes == 1 else 's'}"
    grid.add_row("requests/s", f"{obs.rate:,.1f}", "in flight", str(sum(obs.in_flight.values())))
    label = "utilisation" if obs.loops is None else "event loops"
    grid.add_row(label, bar(obs.utilisation), "processes", setting)
    wait = f"p50 {_ms(obs.queue_wait_p50)}   p95 {_ms(obs.queue_wait_p95)}"
    if obs.queue_wait_p95 is None:
        wait = "— (no X-Request-Start header seen)"
    grid.add_row("all slots busy", bar(obs.all_busy_share), "queue wait", wait)
    service = "—"
    if obs.service_time is not None:
        service = f"{_ms(obs.service_time)} mean"
        if obs.cpu_share is not None:
            service += f", {obs.cpu_share:.0%} CPU"
    host = "—"
    if obs.cores is not None and obs.memory_total is not None:
        host = f"{obs.cores:g} cores, {obs.memory_total / (1024 * MIB):,.1f} GiB"
    grid.add_row("service time", service, "host", host)
    if obs.backlog is not None:
        grid.add_row("listen backlog", f"{obs.backlog:g} waiting to be accepted", "", "")
    if obs.loops is not None and obs.loops.pool_threads:
        grid.add_row("thread pool", _pool(obs.loops), "", "")
    return grid


def _pool(loops: Loops) -> str:
    """The thread pools of all workers together: threads, share taken, tasks waiting."""
    threads = sum(loops.pool_threads.values())
    taken = sum(loops.pool_busy.values()) / threads
    wait = sum(loops.pool_wait.values())
    waited = "no task waited" if wait <= 0 else f"tasks waited {wait:.2f} s per second: the limit"
    return f"{threads} threads, {taken:.0%} taken, {waited}"


def _workers(obs: observe.Observation) -> Table:
    from rich.table import Table

    table = Table(title="Workers", title_justify="left", expand=False)
    for name in ("worker", "pid", "threads"):
        table.add_column(name, justify="right")
    table.add_column("busy", no_wrap=True)
    loops = obs.loops
    if loops is not None:
        table.add_column("ELU", no_wrap=True)
        table.add_column("pool", justify="right")
    table.add_column("all busy", justify="right")
    for name in ("in flight", "RSS", "USS"):
        table.add_column(name, justify="right")
    workers = set(obs.pids) | set(obs.capacity) | (set(loops.elu) if loops else set())
    for worker in sorted(workers, key=_number):
        cells: list[RenderableType] = [
            worker,
            str(obs.pids.get(worker, "—")),
            str(obs.capacity.get(worker, "?")),
            bar(obs.worker_utilisation.get(worker), width=10),
        ]
        if loops is not None:
            cells += [
                bar(loops.elu.get(worker), width=10),
                _pct(loops.pool_utilisation.get(worker)),
            ]
        cells += [
            _pct(obs.worker_all_busy.get(worker)),
            str(obs.in_flight.get(worker, 0)),
            _mib(obs.rss.get(worker)),
            _mib(obs.uss.get(worker)),
        ]
        table.add_row(*cells)
    return table


def _number(label: str) -> tuple[int, str]:
    return (int(label), "") if label.isdigit() else (1 << 30, label)


def _distribution(obs: observe.Observation) -> Table:
    from rich.table import Table

    table = Table(title="Slots busy (share of worker time)", title_justify="left")
    table.add_column("busy", justify="right")
    table.add_column("time", no_wrap=True)
    for busy, share in obs.busy_distribution.items():
        table.add_row(str(busy), bar(share))
    return table


def _routes(obs: observe.Observation) -> Table:
    from rich.table import Table

    table = Table(title="Routes by busy time", title_justify="left")
    table.add_column("route", overflow="fold", max_width=40)
    names = ["req/s", "busy slots", "share", "mean", "CPU"]
    if obs.loops is not None:
        names.append("loop held")  # held without CPU: a blocking call
    for name in names:
        table.add_column(name, justify="right")
    busy = sum(r.busy for r in obs.routes)
    for r in obs.routes[:ROUTES]:
        cells = [
            r.route,
            f"{r.rate:,.1f}",
            f"{r.busy / obs.seconds:,.2f}",
            _pct(r.busy / busy if busy else None),
            _ms(r.service_time),
            _pct(r.cpu_share),
        ]
        if obs.loops is not None:
            cells.append(_pct(r.held_share))
        table.add_row(*cells)
    return table


def suggestion_text(answer: Suggestion | None, seconds: float) -> Text:
    """The suggestion in two or three lines."""
    from rich.text import Text

    if answer is None:
        return Text(f"Suggestion: no request finished in the last {seconds:.0f} s.", style="dim")
    processes = f"{answer.processes} process" + ("" if answer.processes == 1 else "es")
    threads = f"{answer.threads} thread" + ("" if answer.threads == 1 else "s")
    machines = "" if answer.machines == 1 else f" on each of {answer.machines} machines"
    text = Text()
    if answer.loop_blocked:
        where = ", ".join(answer.blocking_routes) or "no route named"
        text.append(
            f"First: a blocking call holds the event loop ({where}): fix it before adding "
            f"processes.\n",
            style="bold red",
        )
    if answer.pool_limited:
        text.append(
            "First: the thread pool that runs sync endpoints is the limit, not the loop.\n",
            style="bold red",
        )
    text.append("Suggestion: ", style="bold")
    loops = " (event loops)" if answer.event_loops else ""
    text.append(f"{processes} x {threads}{machines}{loops}", style="bold cyan")
    if answer.lower_bound:
        text.append("  (at least: the workers were saturated)", style="bold red")
    unit = "loop" if answer.event_loops else "slot"
    wait = "wait for the loop" if answer.event_loops else "queue wait"
    outcome = (
        f"\n{answer.utilisation:.0%} busy at this rate, {wait} mean "
        f"{_ms(answer.mean_wait)}, p95 {_ms(answer.wait_at_quantile)}; "
        f"memory fits {answer.memory_ceiling} processes"
    )
    if answer.cpu_ceiling is not None:
        outcome += f", the cores {answer.cpu_ceiling:.1f} {unit}s"
    if answer.limited_by is not None:
        outcome += f" ({answer.limited_by} sets the number of machines)"
    text.append(outcome + ".")
    return text


def frame(
    obs: observe.Observation | None,
    url: str,
    *,
    error: str | None = None,
    title: str = "workermeter top",
) -> RenderableType:
    """One screen of the live view; ``obs`` None while waiting for a second scrape."""
    from rich.console import Group
    from rich.text import Text

    head = Text(f"{title}  ", style="bold")
    head.append(url, style="cyan")
    if obs is not None:
        head.append(f"  last {obs.seconds:.0f} s", style="dim")
    parts: list[RenderableType] = [head]
    if error is not None:
        parts.append(Text(f"{error}; retrying", style="bold red"))
    if obs is None:
        parts.append(Text("waiting for a second scrape...", style="dim"))
        return Group(*parts)
    parts += [_overview(obs), _workers(obs)]
    if obs.loops is not None:
        notes = loop_notes(
            obs.loops.measured,
            obs.loops.methods,
            obs.loops.cpu_share is not None,
            f"the last {obs.seconds:.0f} s",
        )
        parts += [Text(note, style="yellow") for note in notes]
    parts.append(_distribution(obs))
    if obs.routes:
        parts.append(_routes(obs))
    parts.append(suggestion_text(current_suggestion(obs), obs.seconds))
    return Group(*parts)


# ----------------------------------------------------------------------------------- the loop


class Watch:
    """Scrapes one endpoint and keeps the last ``window`` intervals, for :func:`frame`."""

    def __init__(
        self,
        url: str,
        *,
        window: int = WINDOW,
        title: str = "workermeter top",
        fetch: observe.Fetch = observe.http_get,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.title = title
        self._fetch = fetch
        self._clock = clock
        self._scrapes: deque[observe.Scrape] = deque(maxlen=window + 1)
        self.error: str | None = None

    def poll(self) -> None:
        """Scrape once; a failure is kept in ``error`` and shown, and the next poll retries."""
        try:
            self._scrapes.append(observe.scrape(self.url, fetch=self._fetch, clock=self._clock))
            self.error = None
        except observe.SourceError as e:
            self.error = str(e)

    def observation(self) -> observe.Observation | None:
        return observe.observe(self._scrapes) if len(self._scrapes) >= 2 else None

    def frame(self) -> RenderableType:
        return frame(self.observation(), self.url, error=self.error, title=self.title)


def need_rich(command: str) -> None:
    """Raise a usage error naming the extra to install when rich is missing."""
    try:
        import rich  # noqa: F401
    except ModuleNotFoundError:
        raise UsageError(
            f"workermeter {command} needs rich: pip install 'workermeter[demo]'"
        ) from None


def run(args: argparse.Namespace) -> int:
    need_rich("top")
    from rich.console import Console
    from rich.live import Live

    try:
        url = observe.metrics_url(args.url)
        interval = observe.parse_duration(args.interval)
    except (observe.SourceError, ValueError) as e:
        raise UsageError(str(e)) from None
    watch = Watch(url)
    watch.poll()
    if watch.error is not None:  # down or not workermeter from the start: say so and stop
        raise UsageError(watch.error)
    console = Console()
    if args.once:
        time.sleep(interval)
        watch.poll()
        if watch.error is not None:
            raise UsageError(watch.error)
        console.print(watch.frame())
        return 0
    try:
        with Live(watch.frame(), console=console, auto_refresh=False) as live:
            due = time.monotonic()
            while True:
                due += interval
                time.sleep(max(0.0, due - time.monotonic()))
                watch.poll()
                live.update(watch.frame(), refresh=True)
    except KeyboardInterrupt:
        return 0
