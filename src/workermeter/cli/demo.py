"""``workermeter demo``: the whole product in under a minute, with nothing else to install.

It starts the sample app (:mod:`workermeter.demo_app`) under gunicorn with 2 sync workers on
127.0.0.1 (with ``--asgi``: under uvicorn with one event-loop worker), sends it a bounded ramp of
traffic from a pool of client threads until it is well past what the workers can serve, shows the
live view of ``workermeter top`` while it runs, and ends with the suggestion and the status page
of the run, served until Ctrl-C or ``--wait`` runs out. The server runs with a store of its own
in a temporary directory (:mod:`.demo_servers`); this process writes its history.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import random
import signal
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from .. import history_candidate, observe
from ..capacity import suggest
from . import UsageError
from . import demo_servers as servers
from .suggest import setting
from .top import Watch, need_rich

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

HELP = (
    "See it work in under a minute: a sample app under gunicorn, traffic past saturation, "
    "the live view, the suggestion and the status page."
)

#: The routes requested and their shares, and the peak rate offered: well past what the workers
#: serve. gunicorn's 2 sync workers serve about 2 / (0.7 x 41 ms + 0.3 x 16 ms), some 60
#: requests/s; uvicorn's one loop is held about 0.2 x 15 ms + 0.2 x 30 ms + 0.6 x ~1 ms per
#: request, some 100 requests/s.
MIX = (("/io", 0.7), ("/cpu", 0.3))
ASGI_MIX = (("/io", 0.6), ("/cpu", 0.2), ("/block", 0.2))
START_RATE = 10.0
PEAK_RATE = 95.0
ASGI_PEAK_RATE = 150.0
#: The ramp reaches its peak at this share of the duration, then holds it.
RAMP_SHARE = 0.6
#: At most this many requests in flight from the clients: bounds the backlog and the wait.
CLIENTS = 48
REQUEST_TIMEOUT = 10.0
WAIT = "10m"  # how long the status page stays up after the traffic, by default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration",
        default="40",
        metavar="SECONDS",
        help="how long to send traffic (default 40; 60s and 1m work too)",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="port for the app on 127.0.0.1 (default: a free one)"
    )
    parser.add_argument(
        "--wait",
        default=WAIT,
        metavar="DURATION",
        help=f"serve the status page for this long after the traffic (default {WAIT}; "
        "Ctrl-C ends it sooner)",
    )
    parser.add_argument(
        "--no-wait",
        dest="wait",
        action="store_const",
        const="0",
        help="end once the suggestion is printed",
    )
    parser.add_argument(
        "--asgi",
        action="store_true",
        help="an async app under uvicorn instead: a CPU route, an awaiting route and one that "
        "blocks the event loop",
    )


# ------------------------------------------------------------------------------------- traffic


class Ramp:
    """Poisson arrivals at a rate climbing linearly from ``start`` to ``peak`` requests/s over
    ``ramp`` seconds and then held, each a GET of a path of ``mix`` (drawn by its share) on
    loopback with an ``X-Request-Start`` stamp as nginx's ``t=${msec}`` writes it.

    At most ``clients`` requests are in flight; an arrival finding them all busy is counted in
    ``skipped`` and not sent (a real client would be waiting too).
    """

    def __init__(
        self,
        port: int,
        *,
        start: float = START_RATE,
        peak: float = PEAK_RATE,
        ramp: float,
        mix: tuple[tuple[str, float], ...] = MIX,
        clients: int = CLIENTS,
        seed: int = 1,
    ) -> None:
        self.port = port
        self.paths = [path for path, _ in mix]
        self.shares = [share for _, share in mix]
        self.start_rate, self.peak_rate, self.ramp = start, peak, ramp
        self.clients = clients
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(clients)
        self._pool = ThreadPoolExecutor(clients, thread_name_prefix="workermeter-demo-client")
        self._thread = threading.Thread(target=self._arrivals, name="workermeter-demo-traffic")
        self._began = 0.0
        self.sent = self.ok = self.failed = self.skipped = 0

    def rate(self, elapsed: float) -> float:
        """The arrival rate ``elapsed`` seconds into the ramp."""
        climbed = min(1.0, elapsed / self.ramp) if self.ramp > 0 else 1.0
        return self.start_rate + (self.peak_rate - self.start_rate) * climbed

    def elapsed(self) -> float:
        return time.monotonic() - self._began

    def start(self) -> None:
        self._began = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        """Stop sending, drop what is not sent yet, and wait for the requests in flight."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _arrivals(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            due += self._rng.expovariate(self.rate(due - self._began))
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            path = self._rng.choices(self.paths, self.shares)[0]
            if not self._slots.acquire(blocking=False):
                with self._lock:
                    self.skipped += 1
                continue
            with self._lock:
                self.sent += 1
            self._pool.submit(self._request, path)

    def _request(self, path: str) -> None:
        ok = False
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
            try:
                headers = {"X-Request-Start": f"t={time.time():.3f}", "Connection": "close"}
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            finally:
                conn.close()
        except (OSError, http.client.HTTPException):  # refused, reset or timed out: counted
            ok = False
        finally:
            self._slots.release()
            with self._lock:
                if ok:
                    self.ok += 1
                else:
                    self.failed += 1


# --------------------------------------------------------------------------------------- run


def _status(ramp: Ramp, left: float) -> RenderableType:
    from rich.text import Text

    rate = ramp.rate(ramp.elapsed())
    text = Text("traffic  ", style="bold")
    text.append(f"offering {rate:,.0f} requests/s (ramping {ramp.start_rate:g} to ")
    text.append(f"{ramp.peak_rate:g}), sent {ramp.sent:,}, ok {ramp.ok:,}")
    if ramp.failed:
        text.append(f", failed {ramp.failed:,}", style="red")
    if ramp.skipped:
        text.append(
            f", {ramp.skipped:,} not sent while {ramp.clients} were waiting", style="yellow"
        )
    text.append(f"  ({left:.0f} s left, Ctrl-C ends it early)", style="dim")
    return text


def _conclude(console: Console, watch: Watch, ramp: Ramp, sample: servers.Sample) -> None:
    obs = watch.observation()
    if obs is None or obs.requests <= 0:
        console.print("No request finished: nothing to suggest.", style="bold red")
        return
    try:
        answer = suggest(obs.workload(), obs.machine())
    except observe.SourceError as e:
        console.print(f"Nothing to suggest: {e}", style="bold red")
        return
    console.print()
    console.print(
        f"In the last {obs.seconds:.0f} s the demo offered up to {ramp.rate(ramp.elapsed()):,.0f} "
        f"requests/s, and the {sample.workers} {sample.kind} completed {obs.rate:,.0f}/s, "
        f"{obs.utilisation or 0:.0%} busy."
    )
    console.print(f"[bold]Suggestion: {setting(answer)}[/bold]", highlight=False)
    for reason in answer.reasons:
        console.print(f"  - {reason}", highlight=False)
    offered = ramp.rate(ramp.elapsed())
    if answer.lower_bound and obs.service_time and offered > obs.rate:
        # The demo knows its arrival rate, which a saturated server cannot show: size for it.
        demand = obs.workload()
        # The same requests, more of them: busy time grows with the rate, for slots and loops;
        # what showed the saturation no longer applies to a demand that is known.
        loops = demand.loops
        if loops is not None:
            loops = dataclasses.replace(loops, busy=loops.busy * offered / obs.rate)
        at_offered = dataclasses.replace(
            demand, peak_rate=offered, typical_rate=None, utilisation=None,
            all_busy_share=None, wait_growing=False, loops=loops,
        )  # fmt: skip
        full = suggest(at_offered, obs.machine())
        console.print(
            f"At the {offered:,.0f} requests/s actually offered (the rate a proxy's access log "
            f"would show), the model asks for {setting(full)}.",
            highlight=False,
        )
    console.print()
    console.print("[bold]Next, measure your own app:[/bold]")
    console.print(
        "  - add the middleware: app = WSGIMiddleware(app), or ASGIMiddleware, from workermeter",
        highlight=False,
    )
    console.print("  - watch it: workermeter top http://127.0.0.1:8000/metrics", highlight=False)
    console.print(
        "  - size it: workermeter suggest --metrics http://127.0.0.1:8000/metrics --for 60s",
        highlight=False,
    )
    console.print(
        "  - look back: http://127.0.0.1:8000/metrics/status, or workermeter history --range 24h",
        highlight=False,
    )


def _wait_on_status(console: Console, url: str, seconds: float) -> None:
    """Keep the status page up for ``seconds``, or until Ctrl-C."""
    console.print()
    console.print(f"[bold]The status page of this run:[/bold] {url}", highlight=False)
    console.print(
        f"Served for {_span(seconds)}; Ctrl-C ends it sooner.", style="dim", highlight=False
    )
    with contextlib.suppress(KeyboardInterrupt):  # the end the user asked for
        time.sleep(seconds)


def _span(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the demo like Ctrl-C: the server is stopped first


def run(args: argparse.Namespace) -> int:
    need_rich("demo")
    sample = servers.UVICORN if args.asgi else servers.GUNICORN
    try:
        __import__(sample.server)
    except ModuleNotFoundError:
        raise UsageError(
            f"workermeter demo needs {sample.server}: pip install 'workermeter[demo]'"
        ) from None
    from rich.console import Console

    from ..metrics_server import serve_metrics
    from ..options import default_status_path

    try:
        status_path = default_status_path("/metrics")
    except ValueError as e:
        raise UsageError(str(e)) from None

    try:
        seconds = observe.parse_duration(args.duration)
    except ValueError as e:
        raise UsageError(f"--duration: {e}") from None
    try:
        wait = observe.parse_duration(args.wait) if args.wait != "0" else 0.0
    except ValueError as e:
        raise UsageError(f"--wait: {e} (or --no-wait)") from None
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    console = Console()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        with tempfile.TemporaryDirectory(prefix="workermeter-demo-") as tmp:
            store, log = Path(tmp) / "store", Path(tmp) / f"{sample.server}.log"
            sock = servers.listen(args.port)
            port = sock.getsockname()[1]
            try:
                lifetime = seconds + wait + 60
                with servers.running(sample, sock, store, log, lifetime=lifetime) as pid:
                    servers.wait_ready(sample, port, pid, log)
                    # The view reads the store from its own port here, not from the app's
                    # /metrics: a worker answers scrapes only between requests (a loop, when
                    # it is not blocked), and past saturation a scrape would wait in the same
                    # queue as the traffic.
                    server, _thread = serve_metrics(0, "127.0.0.1", directory=store)
                    history = history_candidate.start(store)
                    try:
                        url = f"http://127.0.0.1:{server.server_port}/metrics"
                        console.print(
                            f"[bold]workermeter demo[/bold]: {sample.server} (pid {pid}) with "
                            f"{sample.workers} {sample.kind} on http://127.0.0.1:{port}, "
                            f"{seconds:g} s of traffic",
                            highlight=False,
                        )
                        watch = Watch(url, title="workermeter demo")
                        if args.asgi:
                            ramp = Ramp(port, ramp=seconds * RAMP_SHARE, mix=ASGI_MIX,
                                        peak=ASGI_PEAK_RATE)  # fmt: skip
                        else:
                            ramp = Ramp(port, ramp=seconds * RAMP_SHARE)
                        finished = _show(console, watch, ramp, seconds)
                        _conclude(console, watch, ramp, sample)
                        if finished and wait > 0 and status_path is not None:
                            page = f"http://127.0.0.1:{server.server_port}{status_path}"
                            _wait_on_status(console, page, wait)
                    finally:
                        if history is not None:
                            history.stop()
                        server.shutdown()
                        server.server_close()
            finally:
                sock.close()
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _show(console: Console, watch: Watch, ramp: Ramp, seconds: float) -> bool:
    """Send the traffic and show the view until ``seconds`` have passed (True) or Ctrl-C."""
    from rich.console import Group
    from rich.live import Live

    watch.poll()
    ramp.start()
    try:
        with Live(watch.frame(), console=console, auto_refresh=False) as view:
            end = time.monotonic() + seconds
            tick = time.monotonic()
            while time.monotonic() < end:
                tick += 1.0
                time.sleep(max(0.0, min(tick, end) - time.monotonic()))
                watch.poll()
                left = max(0.0, end - time.monotonic())
                view.update(Group(watch.frame(), _status(ramp, left)), refresh=True)
    except KeyboardInterrupt:
        console.print("Stopped early.", style="yellow")
        return False
    finally:
        ramp.stop()
    return True
