"""Real uWSGI, mod_wsgi and waitress on 127.0.0.1: the capacity each one reports, and one scrape
that shows every worker's requests exactly, with busy time matching the sleeps that were sent.

uWSGI and Apache run from the files in ``integrations/`` (``uwsgi.ini``, ``apache-vhost.conf``)
with only ports, paths and sizes replaced, so the shipped files are the tested ones. As in
``servers.py``: free loopback ports, ``timeout`` around every server, stopped by pid, a fixed
number of requests. A missing server fails its test (it does not skip): ``scripts/test.sh``
installs them all.

Apache refuses to serve as root, and mod_wsgi to run its daemon processes as root. As root, the
tests start Apache in a user namespace where it is the unprivileged ``nobody``, mapped to root
outside: Apache never switches user, and it reads what the test can read (the Python
installation, pytest's private temporary directories).

``test_proxies.py`` uses the helpers of this module too.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from servers import (
    LIFETIME,
    REQUEST_TIMEOUT,
    ROOT,
    TESTS,
    Metrics,
    Server,
    automatic_store,
    drive,
    free_port,
    launch,
    scrape,
    scrape_idle,
    server_env,
    warm,
)
from workermeter.store import default_base

INTEGRATIONS = ROOT / "integrations"
APACHE_MODULES = Path("/usr/lib/apache2/modules")  # Debian's apache2 package
SLEEP_MS = 20
WARM_MS = 50  # what servers.warm() sends
N = 120
BUSY_TOLERANCE = 0.10  # measured busy time may exceed the sleeps by this share (server overhead)


# --------------------------------------------------------------------------- helpers


def tool(name: str, install: str) -> str:
    """An executable: beside this Python (pip-installed), else on PATH or in /usr/sbin. The
    calling test fails, rather than skips, when it is missing."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=path)
    if found is None:
        pytest.fail(f"{name} is not installed: {install} (scripts/test.sh does it)", pytrace=False)
    return found


def shipped(name: str, replacements: Mapping[str, str]) -> str:
    """The file ``integrations/<name>`` with each key of ``replacements`` replaced. Every key must
    occur in the file, so that the file and the test cannot drift apart unnoticed."""
    text = (INTEGRATIONS / name).read_text()
    for old, new in replacements.items():
        assert old in text, f"{old!r} is no longer in integrations/{name}"
        text = text.replace(old, new)
    return text


def nobody_uid() -> int:
    return pwd.getpwnam("nobody").pw_uid


def unprivileged(argv: list[str]) -> list[str]:
    """``argv`` as an unprivileged user: unchanged unless we are root, else in a user namespace
    where the process is ``nobody`` inside and root outside (see the module docstring)."""
    if os.geteuid() != 0:
        return argv
    user = pwd.getpwnam("nobody")
    return ["unshare", "--user", f"--map-user={user.pw_uid}", f"--map-group={user.pw_gid}", *argv]


def unprivileged_store_base() -> Path:
    """Where a server started by :func:`unprivileged` keeps its automatic stores."""
    if os.geteuid() != 0:
        return default_base()
    return default_base().with_name(f"workermeter-{nobody_uid()}")


def unix_listener_inode(directory: Path) -> int:
    """Inode of the listening Unix socket whose path lies in ``directory``."""
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        # Num RefCount Protocol Flags Type St Inode Path; flag 0x10000: listening
        fields = line.split()
        inside = len(fields) > 7 and fields[7].startswith(f"{directory}/")
        if inside and int(fields[3], 16) & 0x10000:
            return int(fields[6])
    raise AssertionError(f"no Unix socket listens in {directory}")


def remove_store(path: Path) -> None:
    """Remove an automatic store; and the base of ``nobody``'s stores if it is left empty."""
    shutil.rmtree(path, ignore_errors=True)
    if path.parent == unprivileged_store_base() != default_base():
        with contextlib.suppress(OSError):  # not empty: another store is still in use
            path.parent.rmdir()


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    """Yield a started server and stop it however the test ends. On a failure, print the end of
    its log: pytest shows it with the failure, and a server's own error is usually there."""
    try:
        yield server
    except BaseException:
        print(f"--- the end of {server.name}'s log ---\n{server.log_text()[-4000:]}")
        raise
    finally:
        server.stop()


def sleeps(n: int, ms: int = SLEEP_MS) -> list[str]:
    return [f"/sleep?ms={ms}"] * n


def assert_totals(m: Metrics, total: int) -> None:
    """Every request counted once, each with a queue wait, none rejected, none in flight."""
    assert m.sum("workermeter_requests_total") == total
    assert m.sum("workermeter_requests_total", status="2xx") == total
    assert m.sum("workermeter_request_duration_seconds_count") == total
    assert m.sum("workermeter_queue_wait_seconds_count") == total
    assert m.sum("workermeter_queue_wait_rejected_total") == 0
    assert m.sum("workermeter_in_flight_requests") == 0


def assert_busy(m: Metrics, slept: float) -> None:
    """Busy slot-seconds are the service times added up: at least the sleeps, and not much more."""
    busy = m.sum("workermeter_busy_seconds_total")
    assert slept <= busy <= slept * (1 + BUSY_TOLERANCE), f"busy {busy:.3f} s, slept {slept:.3f} s"


def assert_capacity(m: Metrics, threads: int, workers: int) -> None:
    """``workers`` worker processes, each detected to serve ``threads`` requests at once."""
    labels = [str(i) for i in range(workers)]
    assert m.sum("workermeter_workers") == workers
    assert m.by("workermeter_capacity_threads", "worker") == dict.fromkeys(labels, threads)
    assert m.by("workermeter_capacity_detected", "worker") == dict.fromkeys(labels, 1.0)


# --------------------------------------------------------------------------- uWSGI


@contextlib.contextmanager
def uwsgi(
    tmp_path: Path,
    *,
    processes: int,
    threads: int | None,
    lazy: bool = False,
    store: Path | None = None,
    uwsgi_socket: bool = False,
    name: str = "uwsgi",
) -> Iterator[tuple[Server, dict[str, int]]]:
    """uWSGI from ``integrations/uwsgi.ini`` serving ``tests/apps/wsgi_app.py`` over HTTP.

    ``threads=None`` drops the threads line, ``lazy`` turns on ``lazy-apps``. ``store`` turns on
    the ini's exporter lines: ``WORKERMETER_DIR`` and ``workermeter serve`` as an attached daemon
    (port ``"exporter"``). ``uwsgi_socket`` adds a uwsgi-protocol socket (port ``"uwsgi"``) for
    nginx's ``uwsgi_pass``. Yields the server and those extra ports.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    binary = tool("uwsgi", "pip install uwsgi")
    ports: dict[str, int] = {}

    def argv(port: int) -> list[str]:
        extra = ""
        replace = {
            "module = myproject.wsgi:application":
                f"module = apps.wsgi_app:application\npythonpath = {TESTS}",
            "processes = 4": f"processes = {processes}",
            "threads = 2": f"threads = {threads}" if threads else "; no threads",
            "http-socket = 127.0.0.1:8000": f"http-socket = 127.0.0.1:{port}",
        }  # fmt: skip
        if lazy:
            replace["; lazy-apps = true"] = "lazy-apps = true"
        if store is not None:
            ports["exporter"] = free_port()
            daemon = f"timeout --foreground {LIFETIME} {sys.executable} -m workermeter"
            replace.update({
                "; env = WORKERMETER_DIR=": "env = WORKERMETER_DIR=",
                "; exec-asap = mkdir": "exec-asap = mkdir",
                "; attach-daemon = /srv/myproject/venv/bin/workermeter serve --port 9191":
                    f"attach-daemon = {daemon} serve --port {ports['exporter']}",
                "/run/myproject/workermeter": str(store),
            })  # fmt: skip
        if uwsgi_socket:
            ports["uwsgi"] = free_port()
            extra = f"socket = 127.0.0.1:{ports['uwsgi']}\n"
        ini = tmp_path / f"{name}.ini"
        ini.write_text(shipped("uwsgi.ini", replace) + extra)
        return [binary, "--ini", str(ini)]

    server = launch(
        name, argv, log=tmp_path / f"{name}.log", env=server_env(None),
        ready_log=("spawned uWSGI worker", processes),
    )  # fmt: skip
    with running(server):
        if store is not None:
            server.wait_log("workermeter: serving")
        yield server, ports


def test_uwsgi_processes_and_threads_share_an_automatic_store(tmp_path: Path) -> None:
    """``processes = 3``, ``threads = 2``, the app imported by the master before the fork: every
    worker finds the store of the socket it inherited, and reports 2 threads."""
    with uwsgi(tmp_path, processes=3, threads=2) as (server, _):
        store = automatic_store(server.port)
        try:
            warmed = warm(server, 3)
            statuses = drive(server.url, sleeps(N))
            m = scrape_idle(server.url)
            shared = store.is_dir()
        finally:
            remove_store(store)

    assert statuses == [200] * N
    assert shared
    assert_totals(m, warmed + N)
    assert_capacity(m, threads=2, workers=3)
    assert_busy(m, warmed * WARM_MS / 1000 + N * SLEEP_MS / 1000)


def test_uwsgi_without_threads_with_an_exporter(tmp_path: Path) -> None:
    """No threads line (capacity 1), ``lazy-apps`` (the app imported in each worker), and the
    ini's exporter: ``WORKERMETER_DIR`` plus ``workermeter serve`` attached to the master, which
    answers while every worker is busy."""
    store = tmp_path / "store"
    with uwsgi(tmp_path, processes=3, threads=None, lazy=True, store=store) as (server, ports):
        exporter = f"http://127.0.0.1:{ports['exporter']}"
        warmed = warm(server, 3)
        statuses = drive(server.url, sleeps(N))
        with ThreadPoolExecutor(3) as pool:
            # Three requests of 1.5 s hold all three workers: the app's own /metrics would wait.
            slow = [pool.submit(_get, server.url + "/sleep?ms=1500") for _ in range(3)]
            deadline = time.monotonic() + 1.2
            while (busy := scrape(exporter)).sum("workermeter_in_flight_requests") < 3:
                assert time.monotonic() < deadline, "the slow requests never all showed"
                time.sleep(0.02)
            slow_statuses = [f.result() for f in slow]
        from_exporter = scrape_idle(exporter)
        from_app = scrape_idle(server.url)

    assert statuses == [200] * N
    assert slow_statuses == [200] * 3
    assert busy.sum("workermeter_in_flight_requests") == 3
    total = warmed + N + 3
    for m in (from_exporter, from_app):
        assert_totals(m, total)
        assert_capacity(m, threads=1, workers=3)
    assert_busy(from_exporter, warmed * WARM_MS / 1000 + N * SLEEP_MS / 1000 + 3 * 1.5)


def _get(url: str, headers: Mapping[str, str] | None = None) -> int:
    sent = {"X-Request-Start": f"t={time.time():.3f}"} if headers is None else dict(headers)
    with requests.get(url, headers=sent, timeout=REQUEST_TIMEOUT) as r:
        return r.status_code


# --------------------------------------------------------------------------- mod_wsgi


@contextlib.contextmanager
def mod_wsgi_express(
    tmp_path: Path, *, processes: int, threads: int, name: str = "mod_wsgi"
) -> Iterator[Server]:
    """``mod_wsgi-express start-server`` serving ``tests/apps/wsgi_app.py`` (as a module) from a
    server root of its own, in daemon mode: ``processes`` of ``threads`` threads."""
    root = tmp_path / name
    root.mkdir(parents=True, exist_ok=True)
    express = tool("mod_wsgi-express", "pip install mod_wsgi (needs apache2-dev)")

    def argv(port: int) -> list[str]:
        return unprivileged([
            express, "start-server", "apps.wsgi_app",
            "--application-type", "module",
            "--python-path", str(TESTS),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--processes", str(processes),
            "--threads", str(threads),
            "--server-root", str(root),
            "--locale", "C.UTF-8",
            "--log-to-terminal",
        ])  # fmt: skip

    server = launch(name, argv, log=tmp_path / f"{name}.log", env=server_env(None))
    with running(server):
        yield server


def test_mod_wsgi_express_processes_and_threads(tmp_path: Path) -> None:
    """``--processes 2 --threads 3``: the daemons report mod_wsgi's threads_per_process, share the
    store of the daemon socket they inherit, and take the queue start from mod_wsgi's environ
    when no proxy sends X-Request-Start."""
    with mod_wsgi_express(tmp_path, processes=2, threads=3) as server:
        store = unprivileged_store_base() / f"sock-{unix_listener_inode(tmp_path / 'mod_wsgi')}"
        try:
            warmed = warm(server, 2)
            statuses = drive(server.url, sleeps(N), headers={})  # no X-Request-Start at all
            m = scrape_idle(server.url)
            shared = store.is_dir()
        finally:
            remove_store(store)

    assert statuses == [200] * N
    assert shared
    assert_totals(m, warmed + N)  # queue waits of all N from mod_wsgi.request_start
    assert_capacity(m, threads=3, workers=2)
    assert_busy(m, warmed * WARM_MS / 1000 + N * SLEEP_MS / 1000)
    # The wait from Apache's accept to the daemon thread: small, and far from a unit mistake.
    assert 0 < m.sum("workermeter_queue_wait_seconds_sum") / (warmed + N) < 0.5


_HTTPD_CONF = """\
ServerRoot {root}
ServerName 127.0.0.1
PidFile {root}/httpd.pid
DefaultRuntimeDir {root}
ErrorLog /dev/stderr
LogLevel warn
Listen 127.0.0.1:{port}
StartServers 1
ServerLimit 2
ThreadsPerChild 16
MaxRequestWorkers 32
MinSpareThreads 8
MaxSpareThreads 32
{load}
Include {site}
"""


def mod_wsgi_module_config() -> str:
    """The LoadModule and WSGIPythonHome lines for the mod_wsgi installed in this Python."""
    express = tool("mod_wsgi-express", "pip install mod_wsgi (needs apache2-dev)")
    return subprocess.run(
        [express, "module-config"], check=True, capture_output=True, text=True, timeout=30
    ).stdout


@contextlib.contextmanager
def apache(
    tmp_path: Path,
    site: Callable[[int], str],
    *,
    modules: Sequence[str] = (),
    wsgi: bool = False,
    name: str = "apache",
) -> Iterator[Server]:
    """Debian's apache2 with the event MPM, serving the virtual host ``site(port)`` on
    127.0.0.1:``port``; ``modules`` are loaded beside mod_headers, ``wsgi`` loads mod_wsgi."""
    root = tmp_path / name
    root.mkdir(parents=True, exist_ok=True)
    httpd = tool("apache2", "apt-get install apache2")
    names = ("mpm_event", "authz_core", "headers", *modules)
    load = "\n".join(f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so" for m in names)
    if wsgi:
        load += f"\n{mod_wsgi_module_config()}\nWSGISocketPrefix {root}/wsgi\n"

    def argv(port: int) -> list[str]:
        (root / "site.conf").write_text(site(port))
        conf = root / "httpd.conf"
        conf.write_text(
            _HTTPD_CONF.format(root=root, port=port, load=load, site=root / "site.conf")
        )
        return unprivileged([httpd, "-f", str(conf), "-DFOREGROUND"])

    server = launch(name, argv, log=root / "stdout.log", env=server_env(None))
    with running(server):
        yield server


def test_apache_vhost_with_mod_wsgi_daemons(tmp_path: Path) -> None:
    """``integrations/apache-vhost.conf`` as shipped (``processes=5 threads=15``): each daemon
    reports 15 threads, and the vhost's RequestHeader replaces a forged X-Request-Start (taken,
    it would be 20 years old and rejected as too old)."""
    site_dir = tmp_path / "srv"
    (site_dir / "myproject").mkdir(parents=True)
    (site_dir / "myproject" / "wsgi.py").write_text("from apps.wsgi_app import application\n")

    def site(port: int) -> str:
        return shipped("apache-vhost.conf", {
            "python-home=/srv/myproject/venv": f"python-home={sys.prefix}",
            "python-path=/srv/myproject": f"python-path={site_dir}:{TESTS}",
            "/srv/myproject": str(site_dir),
            "<VirtualHost *:80>": f"<VirtualHost *:{port}>",
        })  # fmt: skip

    with apache(tmp_path, site, wsgi=True) as server:
        store = unprivileged_store_base() / f"sock-{unix_listener_inode(tmp_path / 'apache')}"
        try:
            statuses = drive(server.url, sleeps(N), headers={"X-Request-Start": "t=1100000000"})
            m = scrape_idle(server.url)
            shared = store.is_dir()
        finally:
            remove_store(store)

    assert statuses == [200] * N
    assert shared
    assert_totals(m, N)
    workers = int(m.sum("workermeter_workers"))
    assert 1 <= workers <= 5
    assert_capacity(m, threads=15, workers=workers)
    assert_busy(m, N * SLEEP_MS / 1000)
    assert 0 < m.sum("workermeter_queue_wait_seconds_sum") / N < 0.5


# --------------------------------------------------------------------------- waitress


@contextlib.contextmanager
def waitress(tmp_path: Path, *, threads: int, name: str = "waitress") -> Iterator[Server]:
    """waitress (one process, ``threads`` threads) serving ``tests/apps/wsgi_app.py``."""
    tmp_path.mkdir(parents=True, exist_ok=True)

    def argv(port: int) -> list[str]:
        return [
            sys.executable, "-m", "waitress",
            f"--listen=127.0.0.1:{port}",
            f"--threads={threads}",
            "apps.wsgi_app:application",
        ]  # fmt: skip

    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    env = server_env(None, PYTHONPATH=path)
    server = launch(name, argv, log=tmp_path / f"{name}.log", env=env)
    with running(server):
        yield server


def test_waitress_threads(tmp_path: Path) -> None:
    with waitress(tmp_path, threads=4) as server:
        store = automatic_store(server.port)
        try:
            statuses = drive(server.url, sleeps(N))
            m = scrape_idle(server.url)
            shared = store.is_dir()
        finally:
            remove_store(store)

    assert statuses == [200] * N
    assert shared
    assert_totals(m, N)
    assert_capacity(m, threads=4, workers=1)
    assert_busy(m, N * SLEEP_MS / 1000)


def test_uwsgi_without_threads_keeps_the_history_on_its_timer(tmp_path: Path) -> None:
    """No threads and no exporter: a timer the master registered turns the candidates in the
    workers between requests; one of them writes, and the history holds what /metrics counts."""
    from test_status import history_total, lock_holder

    store: Path | None = None
    try:
        with uwsgi(tmp_path, processes=2, threads=None) as (server, _):
            store = automatic_store(server.port)
            warmed = warm(server, 2)
            statuses = drive(server.url, sleeps(N))
            pids = set(scrape_idle(server.url).pids().values())
            deadline = time.monotonic() + 15
            while (total := history_total(server.url)[0]) != warmed + N or (
                lock_holder(store) not in pids
            ):
                assert time.monotonic() < deadline, (total, warmed + N, lock_holder(store), pids)
                time.sleep(0.2)
    finally:
        if store is not None:  # once uWSGI has stopped: its writer's last row goes there
            remove_store(store)
    assert statuses == [200] * N
    assert "no free uWSGI signal" not in server.log_text()
    assert "Traceback" not in server.log_text()
