"""Real servers for the tests: gunicorn, uvicorn and nginx on 127.0.0.1, bounded in time.

Each server binds a free loopback port and runs under coreutils ``timeout``, so it dies on its own
after ``LIFETIME`` seconds even if the test process dies first. It is stopped by its process id:
SIGTERM, a bounded wait, then SIGKILL to the process group that ``timeout`` leads. Load is always
a fixed number of requests from a fixed number of client threads.

The helpers are context managers rather than fixtures, so a test module imports exactly what it
uses and the server's lifetime is visible in the test body.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from workermeter.store import default_base

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
LIFETIME = 90  # seconds any server may live, whatever happens to the test that started it
READY_TIMEOUT = 20.0
REQUEST_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0
# Variables of the library that must not leak from the developer's shell into a server.
# Servers keep a history as users' do; the tests' own process does not (see conftest).
_LIBRARY_ENV = ("WORKERMETER_DIR", "WORKERMETER_TOKEN", "WORKERMETER_HISTORY")


class ServerExited(RuntimeError):
    """The server process ended before it was ready."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    """A server process started by :func:`launch`; ``auto_store`` is its automatic store directory
    (``None`` when ``WORKERMETER_DIR`` was given)."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    auto_store: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, needle: str, count: int = 1, timeout: float = READY_TIMEOUT) -> None:
        """Wait until ``needle`` appears ``count`` times in the server's output."""
        deadline = time.monotonic() + timeout
        while self.log_text().count(needle) < count:
            if self.proc.poll() is not None:
                raise ServerExited(f"{self.name} exited:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: {needle!r} not seen {count} times in {timeout} s:\n"
                    f"{self.log_text()}"
                )
            time.sleep(0.05)

    def wait_ready(self, path: str, timeout: float = READY_TIMEOUT) -> None:
        """Wait until the server answers an HTTP GET of ``path`` with any status."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerExited(f"{self.name} exited:\n{self.log_text()}")
            try:
                requests.get(self.url + path, timeout=2).close()
                return
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{self.name} not answering {path} in {timeout} s:\n{self.log_text()}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL the process group: ``timeout`` made itself its leader."""
        proc = self.proc
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                # Still ours: the group's leader is not reaped until the wait below.
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT)


def launch(
    name: str,
    argv: Callable[[int], list[str]],
    *,
    log: Path,
    env: Mapping[str, str],
    ready_path: str = "/metrics",
    ready_log: tuple[str, int] | None = None,
) -> Server:
    """Start ``argv(port)`` on a free port and wait until it answers ``ready_path``.

    A port taken by someone else between choosing and binding it is retried on another one.
    """
    for _attempt in range(3):
        port = free_port()
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ["timeout", "-k", "5", str(LIFETIME), *argv(port)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=ROOT,
                start_new_session=True,
            )
        server = Server(name, proc, port, log)
        try:
            if ready_log is not None:
                server.wait_log(*ready_log)
            server.wait_ready(ready_path)
        except ServerExited:
            server.stop()
            if "in use" in server.log_text().lower():
                continue
            raise
        except BaseException:
            server.stop()
            raise
        return server
    raise ServerExited(f"{name}: no free port after 3 attempts:\n{log.read_text()}")


def server_env(store: Path | None, **extra: str) -> dict[str, str]:
    """The test's environment for a server, with ``WORKERMETER_DIR`` set only if ``store`` is."""
    env = {k: v for k, v in os.environ.items() if k not in _LIBRARY_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    if store is not None:
        env["WORKERMETER_DIR"] = str(store)
    env.update(extra)
    return env


def listening_inode(port: int) -> int | None:
    """Inode of the socket listening on 127.0.0.1:``port``, from ``/proc/net/tcp``."""
    local = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:  # not Linux
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 9 and fields[1] == local and fields[3] == "0A":
            return int(fields[9])
    return None


def automatic_store(port: int) -> Path:
    """The store directory workermeter derives for the server listening on ``port``."""
    inode = listening_inode(port)
    if inode is None:
        raise AssertionError(f"nothing listens on 127.0.0.1:{port}")
    return default_base() / f"sock-{inode}"


@contextlib.contextmanager
def _running(server: Server, *, auto_store: bool) -> Iterator[Server]:
    """Yield a started server; stop it, and remove its automatic store, however the test ends."""
    try:
        if auto_store:
            server.auto_store = automatic_store(server.port)
        yield server
    finally:
        server.stop()
        if server.auto_store is not None:
            shutil.rmtree(server.auto_store, ignore_errors=True)


def _gunicorn_flags() -> list[str]:
    from gunicorn.config import KNOWN_SETTINGS

    # gunicorn >= 25 opens a control socket at a fixed path shared by every instance.
    names = {s.name for s in KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in names else []


@contextlib.contextmanager
def gunicorn(
    tmp_path: Path,
    *,
    workers: int,
    store: Path | None,
    worker_class: str = "sync",
    threads: int | None = None,
    preload: bool = False,
    extra: Sequence[str] = (),
    app: str = "apps.wsgi_app:application",
    name: str = "gunicorn",
) -> Iterator[Server]:
    """gunicorn serving ``app`` from ``tests/apps``; ``threads`` also goes to the WSGI app's
    middleware, ``extra`` to gunicorn.

    ``store=None`` leaves ``WORKERMETER_DIR`` unset, so the workers find their store themselves.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)

    def argv(port: int) -> list[str]:
        args = [
            sys.executable, "-m", "gunicorn",
            "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers),
            "--worker-class", worker_class,
            "--graceful-timeout", "3",
            "--timeout", "30",
            "--pythonpath", str(TESTS),
            "--log-level", "info",
            *_gunicorn_flags(),
        ]  # fmt: skip
        if threads is not None:
            args += ["--threads", str(threads)]
        if preload:
            args.append("--preload")
        return [*args, *extra, app]

    app_env = {"APP_THREADS": str(threads)} if threads is not None else {}
    env = server_env(store, **app_env)
    server = launch(
        name, argv, log=tmp_path / f"{name}.log", env=env,
        ready_log=("Booting worker with pid", workers),
    )  # fmt: skip
    with _running(server, auto_store=store is None) as running:
        yield running


@contextlib.contextmanager
def uvicorn(
    tmp_path: Path,
    *,
    workers: int,
    store: Path | None,
    name: str = "uvicorn",
    extra: Sequence[str] = (),
    app: str = "apps.asgi_app:app",
    env: Mapping[str, str] | None = None,
) -> Iterator[Server]:
    """uvicorn ``--workers N`` serving ``app`` (``tests/apps/asgi_app.py`` unless told), with
    ``env`` added to its environment; workers are spawned, not forked, and get the listening
    socket passed to them."""
    tmp_path.mkdir(parents=True, exist_ok=True)

    def argv(port: int) -> list[str]:
        return [
            sys.executable, "-m", "uvicorn", app,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--workers", str(workers),
            "--app-dir", str(TESTS),
            "--no-access-log",
            "--timeout-graceful-shutdown", "3",
            *extra,
        ]  # fmt: skip

    server = launch(
        name, argv, log=tmp_path / f"{name}.log", env=server_env(store, **(env or {})),
        ready_log=("Application startup complete.", workers),
    )  # fmt: skip
    with _running(server, auto_store=store is None) as running:
        yield running


def find_nginx() -> str | None:
    """The nginx binary, also where Debian puts it outside a non-root user's PATH."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which("nginx", path=path)


_NGINX_MAIN = """\
daemon off;
master_process on;
worker_processes 1;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;

events {{
    worker_connections 64;
}}

http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    include {site};
}}
"""

_NGINX_SITE = """\
server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass http://127.0.0.1:{upstream};
        # proxy_set_header here drops every inherited one: Host is set again on purpose.
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Request-Start "t=${{msec}}";
    }}
}}
"""


def nginx_argv(binary: str, prefix: Path, site: str) -> list[str]:
    """Write nginx's main configuration (pid, logs and temp files under ``prefix``) around the
    ``server`` block ``site``, and return the command that runs it in the foreground."""
    # As root, nginx would run its worker as "nobody", which cannot enter pytest's 0700 tmp dirs.
    user = "user root;" if os.geteuid() == 0 else ""
    (prefix / "site.conf").write_text(site)
    conf = prefix / "nginx.conf"
    conf.write_text(_NGINX_MAIN.format(prefix=prefix, user=user, site=prefix / "site.conf"))
    return [binary, "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "error.log")]


@contextlib.contextmanager
def nginx(tmp_path: Path, *, upstream: int, binary: str) -> Iterator[Server]:
    """nginx in front of 127.0.0.1:``upstream``, stamping ``X-Request-Start: t=${msec}``.

    Everything it writes (pid, logs, temp files) stays under ``tmp_path/nginx``.
    """
    prefix = tmp_path / "nginx"
    prefix.mkdir(parents=True, exist_ok=True)

    def argv(port: int) -> list[str]:
        return nginx_argv(binary, prefix, _NGINX_SITE.format(port=port, upstream=upstream))

    server = launch("nginx", argv, log=prefix / "stdout.log", env=server_env(None))
    with _running(server, auto_store=False) as running:
        yield running


def find_prometheus() -> str:
    """The prometheus binary; the test fails (not skips) without it, so CI cannot pass without
    the Debian package scripts/test.sh installs."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail(
            "prometheus is not installed: `apt-get install prometheus` (scripts/test.sh does it); "
            "this test fails rather than skips so that CI cannot pass without it",
            pytrace=False,
        )
    return binary


@contextlib.contextmanager
def prometheus(tmp_path: Path, config: Path, *, native: bool = False) -> Iterator[Server]:
    """A real Prometheus on 127.0.0.1 with ``config``, its data under ``tmp_path``; with
    ``native``, one that takes native histograms (it then scrapes the protobuf format)."""
    binary = find_prometheus()

    def argv(port: int) -> list[str]:
        return [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            *(["--enable-feature=native-histograms"] if native else []),
        ]

    server = launch(
        "prometheus", argv, log=tmp_path / "prometheus.log", env=server_env(None),
        ready_path="/-/ready",
    )  # fmt: skip
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class PrometheusAPI:
    """Prometheus's HTTP API at ``url``: every answer must be a success."""

    url: str

    def get(self, path: str, **params: str) -> Any:
        with requests.get(self.url + path, params=params, timeout=10) as r:
            body: Any = r.json() if r.headers.get("content-type", "").startswith("app") else {}
            assert r.status_code == 200 and body.get("status") == "success", (
                f"{path} {params}: {r.status_code} {r.text[:500]}"
            )
            return body["data"]

    def histograms(self, expr: str, at: float) -> list[tuple[dict[str, str], dict[str, Any]]]:
        """The native histograms ``expr`` gives: each one's labels, and its count, sum and
        buckets (each ``[boundary rule, lower, upper, count]``, as strings)."""
        data = self.get("/api/v1/query", query=expr, time=f"{at:.3f}")
        assert data["resultType"] == "vector", expr
        return [(s["metric"], s["histogram"][1]) for s in data["result"] if "histogram" in s]

    def query(self, expr: str, at: float) -> list[tuple[dict[str, str], float]]:
        data = self.get("/api/v1/query", query=expr, time=f"{at:.3f}")
        assert data["resultType"] == "vector", expr
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]

    def one(self, expr: str, at: float) -> float:
        result = self.query(expr, at)
        assert len(result) == 1, f"{expr} at {at}: {result}"
        return result[0][1]

    def by(self, label: str, expr: str, at: float) -> dict[str, float]:
        return {labels[label]: value for labels, value in self.query(expr, at)}


# --------------------------------------------------------------------------- load and scrapes


def stamp() -> str:
    """An ``X-Request-Start`` value as nginx's ``t=${msec}`` writes it."""
    return f"t={time.time():.3f}"


def drive(
    url: str,
    paths: Sequence[str],
    *,
    clients: int = 8,
    headers: Mapping[str, str] | None = None,
) -> list[int]:
    """Request every path once from ``clients`` threads with a session each; the statuses.

    Each request carries a fresh ``X-Request-Start`` (unless ``headers`` are given) and closes its
    connection, so the server spreads requests over its workers instead of pinning a session to
    one of them.
    """
    chunks = [paths[i::clients] for i in range(clients)]

    def run(chunk: Sequence[str]) -> list[int]:
        statuses = []
        with requests.Session() as session:
            for path in chunk:
                sent = {"X-Request-Start": stamp()} if headers is None else dict(headers)
                sent["Connection"] = "close"
                with session.get(url + path, headers=sent, timeout=REQUEST_TIMEOUT) as r:
                    statuses.append(r.status_code)
        return statuses

    with ThreadPoolExecutor(clients) as pool:
        return [status for done in pool.map(run, chunks) for status in done]


@dataclass(frozen=True)
class Metrics:
    """One parsed scrape."""

    samples: tuple[Sample, ...]

    def select(self, name: str, **labels: str) -> list[Sample]:
        return [
            s for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]  # fmt: skip

    def sum(self, name: str, **labels: str) -> float:
        """The sum of every series of ``name`` with these labels."""
        return sum(s.value for s in self.select(name, **labels))

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """Series of ``name`` summed by the value of one label."""
        out: dict[str, float] = {}
        for s in self.select(name, **labels):
            out[s.labels[label]] = out.get(s.labels[label], 0.0) + s.value
        return out

    def pids(self) -> dict[str, int]:
        """Live worker pids by worker label."""
        return {w: int(pid) for w, pid in self.by("workermeter_worker_pid", "worker").items()}


def parse(text: str) -> Metrics:
    return Metrics(tuple(s for f in text_string_to_metric_families(text) for s in f.samples))


def scrape(url: str, **headers: str) -> Metrics:
    """``GET /metrics`` once and parse it; fails unless it is answered with 200."""
    with requests.get(url + "/metrics", headers=headers, timeout=REQUEST_TIMEOUT) as r:
        r.raise_for_status()
        return parse(r.text)


def warm(server: Server, workers: int, *, gone: int | None = None, timeout: float = 20.0) -> int:
    """Send small concurrent batches until ``workers`` workers have recorded a request (and the
    pid ``gone`` is no longer among them); return how many requests completed with 200.

    A worker joins the store with its first request, so a test that counts workers runs this.
    """
    deadline = time.monotonic() + timeout
    done = 0
    while True:
        statuses = drive(server.url, ["/sleep?ms=50"] * (2 * workers), clients=workers)
        if set(statuses) != {200}:
            raise AssertionError(f"warming up {server.name} got statuses {statuses}")
        done += len(statuses)
        m = scrape(server.url)
        pids = m.pids()
        if len(pids) == workers and gone not in pids.values():
            return done
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pids)} of {workers} workers seen: {pids}")


def wait_recycled(server: Server, workers: int, timeout: float = 10.0) -> None:
    """Wait until gunicorn has replaced every worker that announced its exit, and each of those
    processes is gone (so none of them can exit during the next scrape)."""
    deadline = time.monotonic() + timeout
    while True:
        text = server.log_text()
        exited = [int(pid) for pid in re.findall(r"Worker exiting \(pid: (\d+)\)", text)]
        booted = text.count("Booting worker with pid")
        if booted - len(exited) == workers and not any(_alive(pid) for pid in exited):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{server.name}: workers still being replaced:\n{text}")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def scrape_idle(url: str, timeout: float = 5.0) -> Metrics:
    """The first scrape that shows no request in flight, once the load has been sent.

    A client holds its whole response a moment before the worker records the request: the WSGI
    server closes the response iterable, and an ASGI app returns, after the last byte is sent.
    So a scrape right after the load can find the last request still in flight (seen with
    gunicorn's asgi worker); every scrape counts it, as finished or as in flight.
    """
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(url)
        if m.sum("workermeter_in_flight_requests") == 0:
            return m
        if time.monotonic() > deadline:
            raise TimeoutError(f"requests still in flight after {timeout} s")
        time.sleep(0.02)


@contextlib.contextmanager
def handler_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 answering with ``handler`` in a thread; yields its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
