"""The compiled hot path held to the pure-Python reference: the same requests, driven through the
middleware of each on identical fake clocks, must leave byte-identical stores and expositions.

The process runs one path (``import workermeter``); the other is imported again beside it as a
module graph of its own (``benchmarks/pure.py``). Each graph records into its own store
directory. Only the header word saying which path wrote a region, and the ``path`` label of
``workermeter_worker_info`` that shows it, may differ.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import io
import os
import random
import shutil
import struct
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import workermeter
import workermeter.asgi
import workermeter.exposition
import workermeter.layout
import workermeter.recorder
import workermeter.speedups
import workermeter.store
import workermeter.textformat
import workermeter.wsgi
from conftest import FakeClock, FakeWallClock, switching_often
from promtext import parse, total, value
from workermeter import layout
from workermeter import record_values as rv
from workermeter.integrations import KEY
from workermeter.request_start import SKEW

PYTHON = workermeter.speedups.PYTHON
COMPILED = workermeter.speedups.COMPILED
PATHS = (PYTHON, COMPILED)
INFO = "workermeter_worker_info{"
REQUESTS = "workermeter_requests_total"

# benchmarks/ is not a package on sys.path: its loader of a second module graph is read from the
# repository.
_spec = importlib.util.spec_from_file_location(
    "_workermeter_second_graph", Path(__file__).parents[1] / "benchmarks" / "pure.py"
)
assert _spec is not None and _spec.loader is not None
_loader = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_loader)

EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# 60 examples take a few seconds; a difference found is shrunk for up to Hypothesis's 5 minutes.
SHRINKING = pytest.mark.timeout(420)


@functools.cache
def _both() -> dict[str, ModuleType]:
    here = workermeter.speedups
    try:
        other = _loader.load(pure=here.PATH == COMPILED)
    except AssertionError as e:  # the compiled extension does not import
        pytest.fail(
            f"the compiled hot path cannot be compared with the pure-Python one: {e} "
            f"(this process: {here.describe()})"
        )
    graphs: dict[str, ModuleType] = {here.PATH: workermeter, other.speedups.PATH: other}
    assert set(graphs) == set(PATHS), [g.speedups.describe() for g in graphs.values()]
    assert graphs[COMPILED].speedups.compiled is not None, graphs[COMPILED].speedups.describe()
    assert graphs[PYTHON].speedups.compiled is None, graphs[PYTHON].speedups.describe()
    assert graphs[COMPILED].wsgi.WSGIMiddleware.__call__ is not workermeter.wsgi.WSGICall.__call__
    return graphs


def graphs() -> dict[str, ModuleType]:
    """Each hot path's ``workermeter`` package, by ``speedups.PATH``."""
    return _both()


# --------------------------------------------------------------------------- clocks, stores


@dataclass
class Clocks:
    """The clocks of one graph's run: each run gets its own, moved by the same steps."""

    mono: FakeClock = field(default_factory=FakeClock)
    wall: FakeWallClock = field(default_factory=FakeWallClock)
    cpu: FakeClock = field(default_factory=lambda: FakeClock(start_ns=0))

    def tick(self, ns: int, jump: float = 0.0) -> None:
        """Time passes; the wall clock may also be stepped (NTP), backwards too."""
        self.mono.ns += ns
        self.wall.now += ns / 1e9 + jump


def make_recorder(graph: ModuleType, directory: Path, clocks: Clocks, **options: Any) -> Any:
    return graph.recorder.Recorder(
        directory=directory,
        clock=clocks.mono,
        wall_clock=clocks.wall,
        cpu_clock=clocks.cpu,
        **options,
    )


def release(recorder: Any) -> None:
    """Close a recorder's files (and so drop its lock): its region is not written again."""
    active = recorder.active
    if active is not None:
        recorder.active = None
        active.region.abandon()


@dataclass(frozen=True)
class State:
    """What a store holds, as a scrape reads it, and what it renders to."""

    files: dict[str, bytes]
    metrics: str  # the text exposition without the worker_info samples
    info: tuple[str, ...]  # the worker_info samples


def state(directory: Path, clock: FakeClock, path: str) -> State:
    """Every file of the store, with each region's hot-path word checked to be ``path``'s and
    set to 0; and the store rendered by the exposition of this process's graph, the same for
    both stores, with fixed process, host and listener readings."""
    files: dict[str, bytes] = {}
    # The store is made by the first request measured: none where only /metrics was asked for.
    names = sorted(os.listdir(directory)) if directory.exists() else []
    for name in names:
        match = layout.NAME.match(name)
        if match is None:  # slot and directory locks: no content
            files[name] = b""
            continue
        slot, pid, _token, chunk = match.groups()  # the token is random: not in the key
        data = bytearray((directory / name).read_bytes())
        if chunk == "0":
            # The one word that must differ: which hot path wrote the region.
            (written,) = struct.unpack_from("<q", data, layout.H_HOT_PATH * 8)
            assert written == layout.HOT_PATHS.index(path), (name, written, path)
            struct.pack_into("<q", data, layout.H_HOT_PATH * 8, 0)
        files[f"w{slot}-{pid}-{chunk}"] = bytes(data)
    collector = workermeter.exposition.StoreCollector(
        lambda: workermeter.store.Store(directory, clock=clock),
        processes=lambda pids: {pid: (150 << 20, 99 << 20, 12.5) for pid in pids},
        host=lambda: (8 << 30, 3 << 30, 2),
        listeners=dict,
    )
    text = workermeter.textformat.render(collector.families(), openmetrics=False).decode()
    lines = text.splitlines(keepends=True)
    info = tuple(line for line in lines if line.startswith(INFO))
    assert all(f'path="{path}"' in line for line in info), info
    return State(files, "".join(line for line in lines if not line.startswith(INFO)), info)


def _value_name(kind: int, offset: int) -> str:
    """What the value at ``offset`` of a record is (record_values.py)."""
    if kind == layout.ROUTE:
        if offset < rv.R_DURATION:
            return f"requests[{rv.STATUS_CLASSES[offset]}]"
        if offset < rv.R_SUM:
            return f"duration cell {offset - rv.R_DURATION}"
        return {rv.R_SUM: "duration sum", rv.R_CPU: "cpu", rv.R_CPU_WALL: "cpu wall",
                rv.R_HELD: "loop held"}.get(offset, f"value {offset}")  # fmt: skip
    cells = ((rv.P_QUEUE, "queue wait"), (rv.P_LAG, "loop lag"), (rv.P_SERVICE, "service"))
    for first, name in cells:
        if first <= offset < first + rv.FINE_CELLS:
            return f"{name} cell {offset - first}"
    if rv.P_REJECTED <= offset < rv.P_REJECTED + len(rv.REJECT_REASONS):
        return f"rejected[{rv.REJECT_REASONS[offset - rv.P_REJECTED]}]"
    return {rv.P_QUEUE_SUM: "queue wait sum", rv.P_SKEW: "skew", rv.P_DISCONNECTS: "disconnects",
            rv.P_WEBSOCKETS: "websockets", rv.P_UPLOADS: "uploads",
            rv.P_LAG_SUM: "loop lag sum"}.get(offset, f"value {offset}")  # fmt: skip


def explain(name: str, python: bytes, compiled: bytes) -> str:
    """Where two versions of a store file differ, word by word."""
    if len(python) != len(compiled):
        return f"{name}: {len(python)} bytes (python) against {len(compiled)} (compiled)"
    a, b = memoryview(python).cast("q"), memoryview(compiled).cast("q")
    first = layout.FIRST_RECORD if name.endswith("-0") else layout.HEADER_WORDS
    used = min(max(a[layout.H_USED], first), len(a))
    records = layout.parse_layout(a[:used], first, Path(name))[1]

    def where(i: int) -> str:
        if i < layout.HEADER_WORDS:
            return f"header word {i}"
        if i < first:
            table, level = ("ENTER", i - layout.ENTER) if i < layout.ABOVE else (
                "ABOVE", i - layout.ABOVE)  # fmt: skip
            return f"{table}[{level}]"
        for kind, key, start, end in records:
            if start <= i < end:
                return f"record {kind} {key[:60]!r}: {_value_name(kind, i - start)}"
        return f"word {i}, not in a record"

    differ = [i for i in range(len(a)) if a[i] != b[i]]
    lines = [f"{where(i)}: python {a[i]}, compiled {b[i]}" for i in differ[:20]]
    return f"{name}: {len(differ)} words differ:\n  " + "\n  ".join(lines)


def assert_same(states: dict[str, State]) -> None:
    python, compiled = states[PYTHON], states[COMPILED]
    assert list(python.files) == list(compiled.files)
    for name in python.files:
        if python.files[name] != compiled.files[name]:
            pytest.fail(explain(name, python.files[name], compiled.files[name]))
    assert python.metrics == compiled.metrics
    # No worker_info where only the middleware's own pages were asked for: nothing was measured.
    assert len(python.info) == len(compiled.info)
    assert [line.replace('path="python"', 'path="compiled"') for line in python.info] == list(
        compiled.info
    )


# --------------------------------------------------------------------------- inputs

MISSING = "<missing>"  # a status left out of the message
UNHASHABLE = "<list>"  # a status that is a list


class Boom(Exception):
    """What the apps raise."""


class Halt(BaseException):
    """Not an Exception: the middleware lets it through as a 5xx all the same."""


@dataclass(frozen=True)
class Stamp:
    """A request-start value: a form, and the wait it tells at the wall clock's time of the
    request (or a literal text)."""

    form: str
    wait: float = 0.0
    prefix: str = ""
    pad: tuple[str, str] = ("", "")
    digits: int = 3
    text: str = ""

    def render(self, wall: float) -> str:
        at = wall - self.wait
        form = self.form
        if form == "literal":
            return self.text
        if form == "s":
            body = f"{at:.{self.digits}f}"
        elif form == "ms":
            body = f"{round(at * 1e3)}"
        elif form == "ms_frac":
            body = f"{at * 1e3:.{self.digits}f}"
        elif form == "us":
            body = f"{round(at * 1e6)}"
        elif form == "ns":
            body = f"{round(at * 1e9)}"
        elif form == "multi":  # several values, of two units: the earliest counts
            body = f"{at:.{self.digits}f}, t={round((at + 1.5) * 1e3)}"
        else:  # "token": a server token first
            return f"{self.pad[0]}srv1 {self.prefix}{at:.{self.digits}f}{self.pad[1]}"
        return f"{self.pad[0]}{self.prefix}{body}{self.pad[1]}"


WAITS = st.one_of(
    st.floats(-5.0, 700.0, allow_nan=False),
    st.floats(0.0, 1.0),
    # at the bounds of max_skew (2 s) and max_age (600 s) by default, and far out
    st.sampled_from([0.0, 1e-9, 1e-6, 2.0, -2.0, -2.0000001, 600.0, 600.0001, -1e6, 3e8]),
)
LITERALS = [
    "", " ", "t=", "t= ", "abc", "t=abc", "-1", "t=-1700000000", "0", "t=0", "1", "inf", "t=inf",
    "-inf", "nan", "t=nan", "NaN", "1e9", "1.7e9", "t=1.7e12", "1e400", "t=1e400",
    "1_700_000_000", "0x1F", "t=1700000000.5.5", "9" * 39, "9" * 41, "9" * 400, "1" + "0" * 40,
    "t=" + "9" * 39, "946684800", "946684800.0001", "946684800001",
    "\uff19\uff14\uff16\uff16\uff18\uff14\uff18\uff10\uff10\uff11",  # full-width digits
    "\u0661\u0667" + "\u0660" * 8 + ".5",  # Arabic-Indic digits
    "t=1700000000,5", "srv1 t=1700000000", "t=1700000000, t=1700000001",
    "t=1700000000.1 t=1699999999.9", ",,,", "t=t=1700000000", "\udcff", "t=\x00", "1700000000€",
    "1.700000000123e9", "+1700000000", "  1700000000123  ", "17000000001234567890123",
]  # fmt: skip
STAMPS = st.one_of(
    st.builds(
        Stamp,
        form=st.sampled_from(["s", "ms", "ms_frac", "us", "ns", "multi", "token"]),
        wait=WAITS,
        prefix=st.sampled_from(["t=", "t=", ""]),
        pad=st.sampled_from([("", ""), ("", ""), (" ", ""), ("", " "), ("  ", "\t")]),
        digits=st.integers(0, 9),
    ),
    st.builds(
        Stamp,
        form=st.just("literal"),
        text=st.one_of(
            st.sampled_from(LITERALS),
            st.text(max_size=16),
            st.text(alphabet="0123456789.,t= -e", max_size=30),
        ),
    ),
)
ADVANCES = st.one_of(
    st.just(0),
    st.integers(0, 10**6),
    st.integers(0, 10**9),
    st.integers(0, 4 * 3600 * 10**9),
    st.sampled_from([1, 999, 10**9 - 1, 2**32, 1_000_000_001]),
)
JUMPS = st.one_of(st.just(0.0), st.just(0.0), st.floats(-10.0, 10.0), st.sampled_from([-3e3, 1e3]))
ROUTES = ["default", "path", "none", "empty", "raise", "flaky", "long"]
METHODS = st.one_of(
    st.sampled_from(["GET", "GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS",
                     "CONNECT", "TRACE", "get", "BREW", "PROPFIND", "M-SEARCH", "", "GET ",
                     "ПОСТ"]),
    st.none(),
)  # fmt: skip
URL_PATHS = ["/", "/a", "/items/42", "/ünïcödé", "/" + "z" * 20, "/b", "/metrics"]


@dataclass(frozen=True)
class Config:
    """The middleware's options for one example."""

    route: str
    threads: int | None
    route_limit: int
    cpu_sample: int
    upload_bytes: int
    max_skew: float
    max_age: float
    multithread: bool
    mod_wsgi: bool


def configs(multithread: bool | None = None) -> st.SearchStrategy[Config]:
    return st.builds(
        Config,
        route=st.sampled_from(ROUTES),
        threads=st.sampled_from([None, 1, 2, 4]),
        route_limit=st.sampled_from([1, 2, 3, 200]),
        cpu_sample=st.integers(0, 3),
        upload_bytes=st.sampled_from([0, 10, 100_000]),
        max_skew=st.sampled_from([2.0, 0.0, 0.5, float("inf")]),
        max_age=st.sampled_from([600.0, 0.0, 5.0, 1e9, float("inf")]),
        multithread=st.booleans() if multithread is None else st.just(multithread),
        mod_wsgi=st.booleans(),
    )


def config_recorder(path: str, directory: Path, clocks: Clocks, config: Config) -> Any:
    """``path``'s recorder with the options of ``config``."""
    return make_recorder(
        graphs()[path],
        directory,
        clocks,
        threads=config.threads,
        route_limit=config.route_limit,
        cpu_sample=config.cpu_sample,
        upload_bytes=config.upload_bytes,
    )


def route_function(kind: str, name: str) -> Callable[[Any], str | None] | None:
    """The route function of a config: None for the middleware's default. ``name`` is the
    path's key in the environ or the scope."""
    if kind == "default":
        return None
    if kind == "path":
        return lambda request: str(request.get(name))
    if kind == "none":
        return lambda request: None
    if kind == "empty":
        return lambda request: ""
    if kind == "long":
        # Records of ~120 KB keys: a few fill a chunk (the store grows by chunks); "/zzz..."'s
        # is too large for any (refused where the request ends).
        return lambda request: str(request.get(name)) * 60_000
    if kind == "raise":

        def failing(request: Any) -> str:
            raise LookupError("no route here")

        return failing
    # "flaky": names a route, none, or fails, by how often it was called: how often each path
    # asks shows in the routes recorded.
    calls = 0

    def flaky(request: Any) -> str | None:
        nonlocal calls
        calls += 1
        if calls % 4 == 3:
            raise LookupError("flaky")
        return None if calls % 2 else f"/flaky/{calls % 3}"

    return flaky


@st.composite
def schedules(draw: st.DrawFn, n: int) -> list[tuple[str, int, int, float]]:
    """When each of ``n`` requests starts and ends: (start or end, request, ns and wall-clock
    jump before it). Requests start in order and end in any order, overlapping."""
    steps: list[tuple[str, int, int, float]] = []
    running: list[int] = []
    started = 0
    while started < n or running:
        if started < n and (not running or draw(st.booleans())):
            steps.append(("start", started, draw(ADVANCES), draw(JUMPS)))
            running.append(started)
            started += 1
        else:
            i = running.pop(draw(st.integers(0, len(running) - 1)))
            steps.append(("end", i, draw(ADVANCES), draw(JUMPS)))
    return steps


# --------------------------------------------------------------------------- WSGI


@dataclass(frozen=True)
class WsgiRequest:
    method: str | None
    path: str
    start: Stamp | None  # X-Request-Start
    queue: Stamp | None  # X-Queue-Start
    length: str | None  # Content-Length
    status: str
    app: str  # what the app does before its body (see wsgi_app)
    body: str  # what its body is
    chunks: int
    fail_at: int
    key: str | int | None  # environ["workermeter.route"] (the default route function)
    rule: str | int | None  # the url_rule of a Werkzeug request, when werkzeug
    werkzeug: bool
    script: str
    app_ns: int
    chunk_ns: int
    cpu_ns: int
    early: int  # chunks the server sends when the request starts
    consume: str  # what the server does when the request ends
    take: int


LENGTHS = [
    "0", "10", "11", "100000", "100001", "abc", "", " 5 ", "-1", "\uff11\uff12",
    "99999999999999999999",
]  # fmt: skip
WSGI_STATUSES = [
    "200 OK", "200 OK", "201 Created", "204 No Content", "302 Found", "304 Not Modified",
    "404 Not Found", "418 I'm a teapot", "500 Internal Server Error", "503 Service Unavailable",
    "101 Switching Protocols", "999 X", "abc", "", "2", "\u0662\u0660\u0660 OK", "0 Zero",
    "600 Beyond", " 200 OK",
]  # fmt: skip
WSGI_APPS = ["raise", "halt", "no_start", "exc_info", "raise_after", "write", "lazy"]
WSGI_BODIES = ["list", "tuple", "gen", "fail", "halt", "closing", "close_fails"]
WSGI_REQUESTS = st.builds(
    WsgiRequest,
    method=METHODS,
    path=st.sampled_from(URL_PATHS),
    start=st.one_of(st.none(), STAMPS, STAMPS),
    queue=st.one_of(st.none(), st.none(), st.none(), STAMPS),
    length=st.one_of(st.none(), st.none(), st.sampled_from(LENGTHS)),
    status=st.one_of(st.sampled_from(WSGI_STATUSES), st.text(max_size=4)),
    app=st.sampled_from(["ok", "ok", "ok", *WSGI_APPS]),
    body=st.sampled_from(["list", "list", "gen", *WSGI_BODIES]),
    chunks=st.integers(0, 4),
    fail_at=st.integers(0, 4),
    key=st.one_of(st.none(), st.none(), st.sampled_from(["/k/{id}", "", 7, "/ünï"])),
    rule=st.sampled_from([None, "/w/<id>", 5]),
    werkzeug=st.booleans(),
    script=st.sampled_from(["", "", "/app", "/app/"]),
    app_ns=ADVANCES,
    chunk_ns=ADVANCES,
    cpu_ns=st.integers(0, 10**9),
    early=st.integers(0, 2),
    consume=st.sampled_from(["all", "all", "all", "some", "none", "open", "twice"]),
    take=st.integers(0, 3),
)


def plain(**fields: Any) -> WsgiRequest:
    """A request of a plain case: a GET answered 200 with a list, but for ``fields``."""
    defaults: dict[str, Any] = dict(
        method="GET", path="/", start=None, queue=None, length=None, status="200 OK", app="ok",
        body="list", chunks=1, fail_at=0, key=None, rule=None, werkzeug=False, script="",
        app_ns=0, chunk_ns=0, cpu_ns=0, early=0, consume="all", take=0,
    )  # fmt: skip
    return WsgiRequest(**{**defaults, **fields})


class _Rule:
    def __init__(self, rule: str | int) -> None:
        self.rule = rule


class _WerkzeugRequest:
    def __init__(self, rule: str | int | None) -> None:
        self.url_rule = _Rule(rule) if rule is not None else None


class _Closing:
    """A body with a close() of its own, which may fail."""

    def __init__(self, chunks: list[bytes], fails: bool) -> None:
        self.chunks = chunks
        self.fails = fails

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        if self.fails:
            raise Boom("close failed")


Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]


def wsgi_app(clocks: Clocks) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    def body(r: WsgiRequest) -> Iterable[bytes]:
        chunks = [b"%d;" % i for i in range(r.chunks)]
        if r.body == "list":
            return chunks
        if r.body == "tuple":
            return tuple(chunks)  # () when empty: the very object the middleware uses for none
        if r.body in ("closing", "close_fails"):
            return _Closing(chunks, r.body == "close_fails")

        def stream() -> Iterator[bytes]:
            for i, chunk in enumerate(chunks):
                if i:
                    clocks.tick(r.chunk_ns)
                if r.body != "gen" and i == r.fail_at:
                    raise Boom("mid-stream") if r.body == "fail" else Halt("mid-stream")
                yield chunk
            if r.body != "gen" and r.fail_at >= len(chunks):
                raise Boom("at the end") if r.body == "fail" else Halt("at the end")

        return stream()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        r: WsgiRequest = environ["test.request"]
        clocks.tick(r.app_ns)
        clocks.cpu.ns += r.cpu_ns
        if r.app == "raise":
            raise Boom("before start_response")
        if r.app == "halt":
            raise Halt("before start_response")
        if r.app == "lazy":  # start_response called when the body is first iterated

            def lazy() -> Iterator[bytes]:
                start_response(r.status, [("Content-Type", "text/plain")])
                yield from body(r)

            return lazy()
        if r.app != "no_start":
            write = start_response(r.status, [("Content-Type", "text/plain")])
            if r.app == "exc_info":  # an error page replacing the response not yet sent
                try:
                    raise Boom("handled")
                except Boom:
                    start_response("500 Internal Server Error", [], sys.exc_info())
            elif r.app == "raise_after":
                raise Boom("after start_response")
            elif r.app == "write":
                write(b"written;")
        return body(r)

    return app


def wsgi_environ(r: WsgiRequest, config: Config, wall: float) -> Environ:
    environ: Environ = {
        "PATH_INFO": r.path,
        "SCRIPT_NAME": r.script,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": config.multithread,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "test.request": r,
    }
    if r.method is not None:
        environ["REQUEST_METHOD"] = r.method
    if r.start is not None:
        environ["HTTP_X_REQUEST_START"] = r.start.render(wall)
    if r.queue is not None:
        environ["HTTP_X_QUEUE_START"] = r.queue.render(wall)
    if r.length is not None:
        environ["CONTENT_LENGTH"] = r.length
    if r.key is not None:
        environ[KEY] = r.key
    if r.werkzeug:
        environ["werkzeug.request"] = _WerkzeugRequest(r.rule)
    if config.mod_wsgi:  # mod_wsgi's own keys: the general path for every request
        environ["mod_wsgi.version"] = (5, 0, 0)
        environ["mod_wsgi.request_start"] = str(round(wall * 1e6))
    return environ


class WsgiExchange:
    """One request as a server handles it, everything it sees written to ``log``."""

    def __init__(self, mw: Any, environ: Environ, log: list[str]) -> None:
        self.log = log
        # The metrics answered by the middleware itself differ (the path label, the process's
        # memory): only their status is compared.
        self.own = environ.get("PATH_INFO") == "/metrics"
        self.result: Any = None
        self.items: Iterator[bytes] | None = None
        try:
            self.result = mw(environ, self.start_response)
            self.items = iter(self.result)
        except (Exception, Halt) as e:
            log.append(f"call raised {type(e).__name__}: {e}")

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: object = None
    ) -> Callable[[bytes], object]:
        shown = "" if self.own else f" {headers!r} {exc_info is not None}"
        self.log.append(f"start_response {status!r}{shown}")
        return self.write

    def write(self, data: bytes) -> None:
        self.log.append(f"write {data!r}")

    def read(self, n: int | None = None) -> None:
        """Send ``n`` more chunks of the body, or all."""
        sent = 0
        while self.items is not None and (n is None or sent < n):
            try:
                chunk = next(self.items)
            except StopIteration:
                self.log.append("body done")
                return
            except (Exception, Halt) as e:
                self.log.append(f"body raised {type(e).__name__}: {e}")
                return
            self.log.append("chunk of the metrics" if self.own else f"chunk {chunk!r}")
            sent += 1

    def close(self) -> None:
        if self.result is None:
            return
        try:
            self.result.close()
        except (Exception, Halt) as e:
            self.log.append(f"close raised {type(e).__name__}: {e}")
        else:
            self.log.append("closed")

    def end(self, r: WsgiRequest) -> None:
        if r.consume == "open":  # left in flight: closed after the first look at the store
            return
        if r.consume in ("all", "twice"):
            self.read()
        elif r.consume == "some":  # the client went away: closed before the body was all sent
            self.read(r.take)
        self.close()
        if r.consume == "twice":
            self.close()


def run_wsgi(
    path: str,
    base: Path,
    config: Config,
    requests: list[WsgiRequest],
    steps: list[tuple[str, int, int, float]],
) -> tuple[list[State], list[str]]:
    """The requests through ``path``'s WSGIMiddleware: the store with the requests left open
    still in flight, and once they are closed too; and what the server saw."""
    clocks = Clocks()
    directory = base / path
    recorder = config_recorder(path, directory, clocks, config)
    try:
        mw = graphs()[path].wsgi.WSGIMiddleware(
            wsgi_app(clocks),
            recorder=recorder,
            route=route_function(config.route, "PATH_INFO"),
            max_skew=config.max_skew,
            max_age=config.max_age,
        )
        log: list[str] = []
        exchanges: dict[int, WsgiExchange] = {}
        for kind, i, ns, jump in steps:
            clocks.tick(ns, jump)
            log.append(f"{kind} {i}")
            r = requests[i]
            if kind == "start":
                exchanges[i] = exchange = WsgiExchange(
                    mw, wsgi_environ(r, config, clocks.wall.now), log
                )
                exchange.read(r.early)
            else:
                exchanges[i].end(r)
        states = [state(directory, clocks.mono, path)]
        clocks.tick(1_000_000_007)
        for i, exchange in exchanges.items():
            if requests[i].consume == "open":
                exchange.close()
        clocks.tick(3)
        states.append(state(directory, clocks.mono, path))
        return states, log
    finally:
        release(recorder)


def compare_wsgi(
    base: Path,
    config: Config,
    requests: list[WsgiRequest],
    steps: list[tuple[str, int, int, float]],
) -> None:
    try:
        runs = {path: run_wsgi(path, base, config, requests, steps) for path in PATHS}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert runs[PYTHON][1] == runs[COMPILED][1]  # what the server saw
    for python, compiled in zip(runs[PYTHON][0], runs[COMPILED][0], strict=True):
        assert_same({PYTHON: python, COMPILED: compiled})


@st.composite
def wsgi_scenarios(
    draw: st.DrawFn, multithread: bool | None = None
) -> tuple[Config, list[WsgiRequest], list[tuple[str, int, int, float]]]:
    config = draw(configs(multithread))
    requests = draw(st.lists(WSGI_REQUESTS, min_size=1, max_size=10))
    return config, requests, draw(schedules(len(requests)))


@SHRINKING
@EXAMPLES
@given(scenario=wsgi_scenarios())
def test_wsgi_requests_leave_identical_stores(
    tmp_path_factory: pytest.TempPathFactory,
    scenario: tuple[Config, list[WsgiRequest], list[tuple[str, int, int, float]]],
) -> None:
    graphs()
    compare_wsgi(tmp_path_factory.mktemp("wsgi"), *scenario)


@SHRINKING
@EXAMPLES
@given(scenario=wsgi_scenarios(multithread=True))
def test_overlapping_requests_of_a_threaded_server_leave_identical_stores(
    tmp_path_factory: pytest.TempPathFactory,
    scenario: tuple[Config, list[WsgiRequest], list[tuple[str, int, int, float]]],
) -> None:
    """A threaded server's environ (the level taken under its lock, a lane per thread), its
    requests overlapping as threads would, begun and ended from one thread in a drawn order:
    concurrency, busy slots and all-slots-busy time are determined, and must be the same."""
    graphs()
    compare_wsgi(tmp_path_factory.mktemp("threaded"), *scenario)


# --------------------------------------------------------------------------- ASGI


@dataclass(frozen=True)
class AsgiRequest:
    kind: str  # the scope's type: "http", or "websocket" (a connection, not a request)
    method: str | None
    path: str
    root: str  # root_path
    app_root: str | None  # app_root_path (Starlette's)
    starts: tuple[Stamp, ...]  # X-Request-Start values, each a header
    queue: Stamp | None  # X-Queue-Start
    queue_first: bool
    length: bytes | None  # Content-Length
    odd_headers: bool  # an upper-case name, a second Content-Length, a header as a list
    bad_header: bool  # a header of three items
    key: str | int | None  # scope["workermeter.route"]
    matched: tuple[str, str | int] | None  # scope["route"]: ("route" | "mount" | "mount*", path)
    plan: tuple[tuple[Any, ...], ...]  # what the app does, in order (see asgi_app)
    fails_after: int | None  # the server's send raises OSError after this many messages
    swallow: bool  # the app carries on when a send fails
    open: bool  # left waiting at its gate: cancelled at the end, as for a client gone


STATUSES = st.one_of(
    st.sampled_from([200, 200, 201, 204, 301, 304, 404, 418, 500, 503, 599, 600, 99, 100, 0, -1,
                     999, 10**30, -(10**30), 2**63, 2**64 + 200, True, 200.0, "200",
                     HTTPStatus.OK, HTTPStatus.NOT_FOUND, None, MISSING, UNHASHABLE]),
    st.integers(),
)  # fmt: skip
ASGI_STEPS = st.one_of(
    st.tuples(st.just("start"), STATUSES),
    st.tuples(st.just("body"), st.sampled_from([True, True, False, None])),
    st.tuples(st.just("receive")),
    st.tuples(st.just("advance"), ADVANCES),
    st.tuples(st.just("cpu"), st.integers(0, 10**9)),
    st.tuples(st.just("yield")),
    st.tuples(st.just("other")),
    st.tuples(st.just("raise"), st.sampled_from(["boom", "halt", "cancel", "oserror"])),
)


@st.composite
def asgi_plans(draw: st.DrawFn) -> tuple[tuple[Any, ...], ...]:
    """The app's steps: most often a response start and a body, then anything; with one wait
    for its gate (which the schedule opens) somewhere."""
    common = draw(st.sampled_from([
        [("start", 200), ("body", False)],
        [("start", 200), ("body", True), ("body", False)],
        [("start", 200), ("body", True)],
        [],
    ]))  # fmt: skip
    plan = [*common, *draw(st.lists(ASGI_STEPS, max_size=5))]
    if draw(st.booleans()):
        plan = list(draw(st.permutations(plan)))
    plan.insert(draw(st.integers(0, len(plan))), ("wait",))
    return tuple(plan)


MATCHED = [None, None, ("route", "/items/{id}"), ("route", 5), ("mount", "/static"),
           ("mount*", "/sub")]  # fmt: skip
ASGI_REQUESTS = st.builds(
    AsgiRequest,
    kind=st.sampled_from(["http"] * 9 + ["websocket"]),
    method=METHODS,
    path=st.sampled_from([*URL_PATHS, "/api/metrics"]),
    root=st.sampled_from(["", "", "/api"]),
    app_root=st.sampled_from([None, None, "", "/api"]),
    starts=st.one_of(st.just(()), st.tuples(STAMPS), st.tuples(STAMPS, STAMPS)),
    queue=st.one_of(st.none(), st.none(), STAMPS),
    queue_first=st.booleans(),
    length=st.one_of(
        st.none(),
        st.none(),
        st.sampled_from([b"0", b"10", b"11", b"100001", b"abc", b"", b" 5", b"-3"]),
    ),
    odd_headers=st.booleans(),
    bad_header=st.sampled_from([False] * 15 + [True]),
    key=st.one_of(st.none(), st.none(), st.sampled_from(["/k/{id}", "", 7])),
    matched=st.sampled_from(MATCHED),
    plan=asgi_plans(),
    fails_after=st.one_of(st.none(), st.none(), st.integers(0, 3)),
    swallow=st.booleans(),
    open=st.sampled_from([False] * 5 + [True]),
)


class _Route:
    """A Starlette Route: a path template and an endpoint."""

    def __init__(self, path: str | int) -> None:
        self.path = path
        self.endpoint = None


class _Mount:
    """A Starlette Mount: a path and routes (none: it hands every path to one app)."""

    def __init__(self, path: str | int, routes: list[str]) -> None:
        self.path = path
        self.routes = routes


def _header_value(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def asgi_scope(r: AsgiRequest, index: int, wall: float) -> dict[str, Any]:
    starts = [(b"x-request-start", _header_value(s.render(wall))) for s in r.starts]
    queue = [(b"x-queue-start", _header_value(r.queue.render(wall)))] if r.queue else []
    headers: list[Any] = [(b"host", b"127.0.0.1:8000")]
    headers += [*queue, *starts] if r.queue_first else [*starts, *queue]
    if r.length is not None:
        headers.append((b"content-length", r.length))
    if r.odd_headers:
        headers += [(b"X-Request-Start", b"t=1"), (b"content-length", b"99999999"),
                    [b"x-other", b"list"]]  # fmt: skip
    if r.bad_header:
        headers.append((b"x-three", b"items", b"here"))
    scope: dict[str, Any] = {
        "type": r.kind,
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "scheme": "http",
        "path": r.path,
        "raw_path": r.path.encode(),
        "query_string": b"",
        "root_path": r.root,
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8000),
        "test.request": r,
        "test.index": index,
    }
    if r.method is not None:
        scope["method"] = r.method
    if r.app_root is not None:
        scope["app_root_path"] = r.app_root
    if r.key is not None:
        scope[KEY] = r.key
    if r.matched is not None:
        kind, where = r.matched
        scope["route"] = _Route(where) if kind == "route" else _Mount(
            where, ["inner"] if kind == "mount*" else [])  # fmt: skip
    return scope


Message = dict[str, Any]


class AsgiExchange:
    """The server side of one request: a request without a body, then a disconnect."""

    def __init__(self, index: int, fails_after: int | None, log: list[str], own: bool) -> None:
        self.index = index
        self.own = own  # the metrics, answered by the middleware: see WsgiExchange
        self.fails_after = fails_after
        self.log = log
        self.received = 0
        self.sent = 0

    async def receive(self) -> Message:
        self.received += 1
        if self.received == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent += 1
        if self.fails_after is not None and self.sent > self.fails_after:
            self.log.append(f"{self.index} send failed")
            raise OSError("the client went away")
        shown = {"type": message["type"], "status": message.get("status")} if self.own else message
        self.log.append(f"{self.index} sent {shown!r}")


def asgi_app(clocks: Clocks, gates: dict[int, asyncio.Event]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        r: AsgiRequest = scope["test.request"]
        i: int = scope["test.index"]

        async def sending(message: Message) -> None:
            try:
                await send(message)
            except OSError:
                if not r.swallow:
                    raise

        for step in r.plan:
            kind = step[0]
            if kind == "wait":
                await gates[i].wait()
            elif kind == "start":
                message: Message = {"type": "http.response.start", "headers": []}
                status = step[1]
                if status == UNHASHABLE:
                    message["status"] = [200]
                elif status != MISSING:
                    message["status"] = status
                await sending(message)
            elif kind == "body":
                message = {"type": "http.response.body", "body": b"part"}
                if step[1] is not None:
                    message["more_body"] = step[1]
                await sending(message)
            elif kind == "receive":
                await receive()
            elif kind == "advance":
                clocks.tick(step[1])
            elif kind == "cpu":
                clocks.cpu.ns += step[1]
            elif kind == "yield":
                await asyncio.sleep(0)
            elif kind == "other":
                await sending({"type": "http.response.debug", "info": {}})
            elif step[1] == "boom":
                raise Boom("in the app")
            elif step[1] == "halt":
                raise Halt("in the app")
            elif step[1] == "cancel":
                raise asyncio.CancelledError
            else:
                raise OSError("the app's own")

    return app


async def drive_asgi(
    mw: Any,
    gates: dict[int, asyncio.Event],
    requests: list[AsgiRequest],
    steps: list[tuple[str, int, int, float]],
    clocks: Clocks,
    look: Callable[[], State],
) -> tuple[list[State], list[str]]:
    log: list[str] = []
    tasks: dict[int, asyncio.Task[None]] = {}

    async def one(i: int) -> None:
        r = requests[i]
        exchange = AsgiExchange(i, r.fails_after, log, r.path.endswith("/metrics"))
        try:
            await mw(asgi_scope(r, i, clocks.wall.now), exchange.receive, exchange.send)
        except (Exception, Halt, asyncio.CancelledError) as e:
            log.append(f"{i} raised {type(e).__name__}: {e}")
        else:
            log.append(f"{i} returned")

    for kind, i, ns, jump in steps:
        clocks.tick(ns, jump)
        log.append(f"{kind} {i}")
        if kind == "start":
            gates[i] = asyncio.Event()
            tasks[i] = asyncio.ensure_future(one(i))
        elif not requests[i].open:
            gates[i].set()
        for _ in range(4):
            await asyncio.sleep(0)
    states = [look()]
    clocks.tick(1_000_000_007)
    for task in tasks.values():
        task.cancel()
    await asyncio.gather(*tasks.values())
    clocks.tick(3)
    states.append(look())
    return states, log


def run_asgi(
    path: str,
    base: Path,
    config: Config,
    requests: list[AsgiRequest],
    steps: list[tuple[str, int, int, float]],
) -> tuple[list[State], list[str]]:
    clocks = Clocks()
    directory = base / path
    recorder = config_recorder(path, directory, clocks, config)
    try:
        gates: dict[int, asyncio.Event] = {}
        mw = graphs()[path].asgi.ASGIMiddleware(
            asgi_app(clocks, gates),
            recorder=recorder,
            route=route_function(config.route, "path"),
            max_skew=config.max_skew,
            max_age=config.max_age,
        )
        # Attached before the loop runs, as a worker's lifespan startup would do: its first
        # request would also install the event-loop meter and its probe, whose writes follow
        # the loop's own wake-ups (real time), not the requests: not part of the hot path.
        recorder.activate(multithread=False, capacity=None)
        return asyncio.run(
            drive_asgi(
                mw, gates, requests, steps, clocks, lambda: state(directory, clocks.mono, path)
            )
        )
    finally:
        release(recorder)


@st.composite
def asgi_scenarios(
    draw: st.DrawFn,
) -> tuple[Config, list[AsgiRequest], list[tuple[str, int, int, float]]]:
    config = draw(configs(multithread=False))
    requests = draw(st.lists(ASGI_REQUESTS, min_size=1, max_size=8))
    return config, requests, draw(schedules(len(requests)))


@SHRINKING
@EXAMPLES
@given(scenario=asgi_scenarios())
def test_asgi_requests_leave_identical_stores(
    tmp_path_factory: pytest.TempPathFactory,
    scenario: tuple[Config, list[AsgiRequest], list[tuple[str, int, int, float]]],
) -> None:
    """Requests of one event loop, overlapping: each app parks at a gate the schedule opens (or
    is cancelled at the end, as a server cancels the task of a client gone)."""
    graphs()
    base = tmp_path_factory.mktemp("asgi")
    try:
        runs = {path: run_asgi(path, base, *scenario) for path in PATHS}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert runs[PYTHON][1] == runs[COMPILED][1]  # what the server saw
    for python, compiled in zip(runs[PYTHON][0], runs[COMPILED][0], strict=True):
        assert_same({PYTHON: python, COMPILED: compiled})


# --------------------------------------------------------------------------- the core calls

CORE_CALLS = st.one_of(
    st.tuples(st.just("begin"), st.one_of(st.none(), STAMPS), st.sampled_from([2.0, 0.0])),
    st.tuples(st.just("finish"), st.integers(0, 5), st.sampled_from(["/a", "/b", "/ü"]),
              st.sampled_from(["GET", "POST", "BREW"]), st.booleans()),
    st.tuples(st.just("end")),
    st.tuples(st.just("queue_wait"),
              st.one_of(st.tuples(st.floats(0.0, 1e6), st.sampled_from([None, SKEW])),
                        st.tuples(st.none(), st.sampled_from([None, *rv.REJECT_REASONS])))),
    st.tuples(st.just("request"), st.sampled_from(["/a", "/c"]),
              st.sampled_from(["GET", "HEAD", "OTHER"]), st.integers(0, 5),
              st.integers(0, 10**15), st.one_of(st.none(), st.integers(0, 10**12))),
    st.tuples(st.just("sampled"), st.sampled_from(["/a", "/d"]),
              st.sampled_from(["GET", "POST", "BREW"]), st.integers(0, 10**12),
              st.integers(0, 10**12), st.integers(0, 10**15)),
    st.tuples(st.just("loop_lag"), st.floats(0.0, 1e6)),
    st.tuples(st.just("count"), st.integers(0, rv.PROCESS_VALUES - 1)),
    st.tuples(st.just("advance"), ADVANCES),
)  # fmt: skip


def run_core(path: str, base: Path, calls: list[tuple[Any, ...]]) -> State:
    clocks = Clocks()
    recorder = make_recorder(graphs()[path], base / path, clocks, cpu_sample=2)
    try:
        active = recorder.activate(multithread=True, capacity=2)
        lane = active.lane()
        starts: list[int] = []
        for call in calls:
            kind, args = call[0], call[1:]
            if kind == "begin":
                start = args[0].render(clocks.wall.now) if args[0] is not None else None
                starts.append(active.begin(lane, start, args[1], 600.0))
            elif kind == "finish" and starts:
                status, route, method, sampled = args
                active.finish(lane, route, method, status, starts.pop(0),
                              clocks.cpu.ns - 5 if sampled else None)  # fmt: skip
            elif kind == "end" and starts:
                starts.pop()
                active.end()
            elif kind == "advance":
                clocks.tick(args[0])
                clocks.cpu.ns += args[0] // 3
            elif kind in ("queue_wait", "request", "sampled", "loop_lag", "count"):
                getattr(lane, kind)(*(args[0] if kind == "queue_wait" else args))
        return state(base / path, clocks.mono, path)
    finally:
        release(recorder)


@SHRINKING
@EXAMPLES
@given(calls=st.lists(CORE_CALLS, max_size=40))
def test_the_core_calls_write_the_same_words(
    tmp_path_factory: pytest.TempPathFactory, calls: list[tuple[Any, ...]]
) -> None:
    """LaneCore's and ActiveCore's calls on their own, with values the middleware passes and the
    event-loop probe's lag, which the middleware tests do not reach."""
    graphs()
    base = tmp_path_factory.mktemp("core")
    try:
        assert_same({path: run_core(path, base, calls) for path in PATHS})
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- plain cases


def _ok(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_a_request_is_counted_alike_by_both(tmp_path: Path) -> None:
    """Not vacuous: one GET, its queue wait and its duration, counted once in each store."""
    states = {}
    for path, graph in graphs().items():
        clocks = Clocks()
        recorder = make_recorder(graph, tmp_path / path, clocks, cpu_sample=1)
        try:
            mw = graph.wsgi.WSGIMiddleware(_ok, recorder=recorder, route=lambda e: "/hello")
            r = plain(path="/hello", start=Stamp("s", wait=0.25, prefix="t="))
            exchange = WsgiExchange(
                mw,
                wsgi_environ(
                    r,
                    Config("path", None, 200, 1, 100_000, 2.0, 600.0, False, False),
                    clocks.wall.now,
                ),
                [],
            )
            clocks.tick(125_000_000)
            exchange.end(r)
            assert exchange.log == [
                "start_response '200 OK' [('Content-Type', 'text/plain')] False",
                "chunk b'ok'", "body done", "closed",
            ]  # fmt: skip
            states[path] = state(tmp_path / path, clocks.mono, path)
        finally:
            release(recorder)
        samples = parse(states[path].metrics)
        assert value(samples, REQUESTS, route="/hello", status="2xx") == 1
        assert total(samples, REQUESTS) == 1
        assert value(samples, "workermeter_request_duration_seconds_sum", route="/hello") == 0.125
        assert value(samples, "workermeter_queue_wait_seconds_count") == 1
        assert value(samples, "workermeter_queue_wait_seconds_sum") == pytest.approx(0.25)
        assert states[path].info == (f'workermeter_worker_info{{path="{path}",worker="0"}} 1.0\n',)
    assert_same(states)


def test_more_requests_in_flight_than_levels_are_kept(tmp_path: Path) -> None:
    """Past MAX_LEVEL requests at once, levels are no longer recorded one by one: both paths
    clamp and carry on alike, and come back to the recorded levels as requests end."""
    n = layout.MAX_LEVEL + 6
    order = list(range(n))
    random.Random(7).shuffle(order)
    states: dict[str, list[State]] = {}
    r = plain(path="/deep")
    config = Config("path", 8, 200, 3, 100_000, 2.0, 600.0, True, False)
    for path, graph in graphs().items():
        clocks = Clocks()
        recorder = make_recorder(graph, tmp_path / path, clocks, threads=8, cpu_sample=3)
        try:
            mw = graph.wsgi.WSGIMiddleware(
                wsgi_app(clocks), recorder=recorder, route=lambda e: "/deep"
            )
            exchanges = []
            for _ in range(n):
                clocks.tick(1_000_003)
                exchanges.append(WsgiExchange(mw, wsgi_environ(r, config, clocks.wall.now), []))
            looks = [state(tmp_path / path, clocks.mono, path)]
            for i in order:
                clocks.tick(999_983)
                exchanges[i].end(r)
            looks.append(state(tmp_path / path, clocks.mono, path))
            states[path] = looks
        finally:
            release(recorder)
    during, after = (parse(look.metrics) for look in states[PYTHON])
    assert value(during, "workermeter_in_flight_requests", worker="0") == n
    assert value(after, REQUESTS, route="/deep", status="2xx") == n
    for python, compiled in zip(states[PYTHON], states[COMPILED], strict=True):
        assert_same({PYTHON: python, COMPILED: compiled})


THREADED = [  # method, status, body, what the server does
    ("GET", "200 OK", "list", "all"),
    ("POST", "404 Not Found", "gen", "all"),
    ("GET", "503 Service Unavailable", "fail", "all"),
    ("PUT", "200 OK", "gen", "some"),
    ("BREW", "999 X", "list", "none"),
]


def serve_in_threads(path: str, directory: Path, nthreads: int, each: int) -> State:
    """``each`` requests in each of ``nthreads`` threads, on clocks that never move."""
    requests = [
        plain(method=method, path=f"/t{i % 3}", start=Stamp("s", wait=0.5, prefix="t="),
              status=status, body=body, chunks=2, fail_at=1, consume=consume, take=1)
        for i, (method, status, body, consume) in enumerate(THREADED)
    ]  # fmt: skip
    config = Config("path", nthreads, 200, 2, 100_000, 2.0, 600.0, True, False)
    clocks = Clocks()
    recorder = make_recorder(graphs()[path], directory, clocks, threads=nthreads, cpu_sample=2)
    try:
        mw = graphs()[path].wsgi.WSGIMiddleware(
            wsgi_app(clocks), recorder=recorder, route=lambda e: e["PATH_INFO"]
        )
        barrier = threading.Barrier(nthreads)
        failures: list[BaseException] = []

        def serve() -> None:
            try:
                barrier.wait()
                for k in range(each):
                    r = requests[k % len(requests)]
                    WsgiExchange(mw, wsgi_environ(r, config, clocks.wall.now), []).end(r)
            except BaseException as e:  # reported by the main thread
                failures.append(e)

        threads = [threading.Thread(target=serve) for _ in range(nthreads)]
        with switching_often():
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        assert failures == []
        return state(directory, clocks.mono, path)
    finally:
        release(recorder)


def test_real_threads_give_the_same_totals(tmp_path: Path) -> None:
    """Real threads interleave as they will: on clocks that stand still, what they record
    adds up to the same exposition whatever the order (each thread's lane holds its own share,
    in an order of its own, so the store files themselves are not compared)."""
    nthreads, each = 4, 40
    states = {path: serve_in_threads(path, tmp_path / path, nthreads, each) for path in PATHS}
    for look in states.values():
        samples = parse(look.metrics)
        assert total(samples, REQUESTS) == nthreads * each
        assert value(samples, REQUESTS, route="/t1", status="4xx") == nthreads * each // 5
        assert value(samples, "workermeter_client_disconnects_total") == 2 * nthreads * each // 5
        assert value(samples, "workermeter_queue_wait_seconds_count") == nthreads * each
    assert states[PYTHON].metrics == states[COMPILED].metrics
