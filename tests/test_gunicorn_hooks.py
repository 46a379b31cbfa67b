"""gunicorn with the hooks of ``workermeter.gunicorn``: the arbiter owns the store and answers
scrapes on a port of its own, even when every worker is busy.

The real tests run gunicorn with ``integrations/gunicorn.conf.py``, the file users copy, or with
``tests/apps/gunicorn_own_hooks.py``, a config whose own hooks call workermeter's. The metrics
port is 0 (any free one) and read from the arbiter's log, so no port is guessed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from servers import (
    REQUEST_TIMEOUT,
    ROOT,
    TESTS,
    Metrics,
    Server,
    drive,
    gunicorn,
    listening_inode,
    scrape,
    scrape_idle,
    stamp,
    warm,
)
from workermeter import gunicorn as hooks
from workermeter.instance import ENV_DIR
from workermeter.store import default_base

CONF = ROOT / "integrations" / "gunicorn.conf.py"
OWN_HOOKS = TESTS / "apps" / "gunicorn_own_hooks.py"
_METRICS_AT = re.compile(r"workermeter: metrics of all workers on (http://\S+)/metrics")
_STORE_AT = re.compile(r"workermeter: store (\S+)")
_ARBITER = re.compile(r"Listening at: \S+ \((\d+)\)")


@dataclass(frozen=True)
class Hooked:
    """A gunicorn started with workermeter's hooks: the server, the arbiter's pid, the base URL
    of the metrics port it serves, and the store it prepared."""

    server: Server
    arbiter: int
    metrics: str
    store: Path


def _found(pattern: re.Pattern[str], server: Server) -> str:
    match = pattern.search(server.log_text())
    if match is None:
        raise AssertionError(f"{pattern.pattern!r} not in the log:\n{server.log_text()}")
    return match.group(1)


@contextlib.contextmanager
def hooked(
    tmp_path: Path,
    *,
    workers: int,
    store: Path | None = None,
    conf: Path = CONF,
    extra: Sequence[str] = (),
) -> Iterator[Hooked]:
    """gunicorn ``-c conf`` with the metrics port 0; ``store=None`` lets ``on_starting`` create
    the store, which is removed at the end."""
    created: Path | None = None
    try:
        with gunicorn(
            tmp_path, workers=workers, store=store,
            extra=("-c", str(conf), "-e", "WORKERMETER_PORT=0", *extra),
        ) as server:  # fmt: skip
            path = Path(_found(_STORE_AT, server))
            if store is None:
                created = path
            yield Hooked(
                server,
                arbiter=int(_found(_ARBITER, server)),
                metrics=_found(_METRICS_AT, server),
                store=path,
            )
    finally:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)


def get(url: str) -> int | None:
    """GET ``url``: the status, or None when the connection broke (a worker killed under it)."""
    try:
        with requests.get(url, headers={"X-Request-Start": stamp()}, timeout=REQUEST_TIMEOUT) as r:
            return r.status_code
    except requests.ConnectionError:
        return None


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` has open."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed while listed
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def wait_scrape(url: str, ok: Callable[[Metrics], bool], timeout: float = 5.0) -> Metrics:
    """Scrape ``url`` until a scrape satisfies ``ok``; return it."""
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(url)
        if ok(m):
            return m
        if time.monotonic() > deadline:
            raise TimeoutError(f"no scrape of {url} as expected in {timeout} s")
        time.sleep(0.02)


def assert_exact(m: Metrics, total: int, *, started: int | None = None) -> None:
    """Every completed request counted once, none left in flight. The queue wait is observed
    when a request starts: ``started`` also counts those that never completed."""
    assert m.sum("workermeter_requests_total") == total
    assert m.sum("workermeter_request_duration_seconds_count") == total
    assert m.sum("workermeter_queue_wait_seconds_count") == (total if started is None else started)
    assert m.sum("workermeter_in_flight_requests") == 0


# --------------------------------------------------------------------------- the hooks alone


class FakeArbiter:
    """What the hooks see of gunicorn's arbiter: its logger."""

    def __init__(self) -> None:
        self.log = logging.getLogger("test.gunicorn")


@pytest.fixture
def arbiter(monkeypatch: pytest.MonkeyPatch) -> FakeArbiter:
    # on_starting exports WORKERMETER_DIR: set then delete it here, so the end of the test
    # restores the environment as it was.
    for name in (ENV_DIR, hooks.ENV_PORT, hooks.ENV_BIND):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return FakeArbiter()


@pytest.mark.parametrize("name", hooks.__all__)
def test_hooks_have_gunicorns_signatures(name: str) -> None:
    from gunicorn.config import Config

    Config().set(name, getattr(hooks, name))  # gunicorn checks the arity of a hook here


def test_on_starting_exports_a_new_private_store(
    arbiter: FakeArbiter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "base"
    monkeypatch.setattr(hooks, "default_base", lambda: base)
    hooks.on_starting(arbiter)

    store = Path(os.environ[ENV_DIR])
    assert store.parent == base
    assert store.name.startswith(f"pid-{os.getpid()}-")
    assert store.stat().st_mode & 0o777 == 0o700


def test_on_starting_keeps_the_users_store(arbiter: FakeArbiter, tmp_path: Path) -> None:
    os.environ[ENV_DIR] = str(tmp_path / "mine")
    hooks.on_starting(arbiter)
    assert os.environ[ENV_DIR] == str(tmp_path / "mine")
    assert (tmp_path / "mine").is_dir()


@pytest.mark.parametrize(
    ("setup", "call", "logged"),
    [
        pytest.param(
            {ENV_DIR: "file"}, lambda a: hooks.on_starting(a), "on_starting failed",
            id="store-is-a-file",
        ),
        pytest.param(
            {ENV_DIR: "store", hooks.ENV_PORT: "http"}, lambda a: hooks.when_ready(a),
            "WORKERMETER_PORT='http' is not a TCP port", id="bad-port",
        ),
        pytest.param(
            {ENV_DIR: "store", hooks.ENV_PORT: "taken"}, lambda a: hooks.when_ready(a),
            "when_ready failed", id="port-taken",
        ),
        pytest.param(
            {ENV_DIR: "store"}, lambda a: hooks.when_ready(a, port=70000),
            "port=70000 is not a TCP port", id="bad-port-argument",
        ),
        pytest.param(
            {}, lambda a: hooks.when_ready(a), "import on_starting from workermeter.gunicorn",
            id="no-store",
        ),
    ],
)  # fmt: skip
def test_hook_errors_are_logged_and_gunicorn_goes_on(
    arbiter: FakeArbiter,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    setup: dict[str, str],
    call: Callable[[Any], None],
    logged: str,
) -> None:
    (tmp_path / "file").write_text("")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        for name, value in setup.items():
            if name == ENV_DIR:
                value = str(tmp_path / value)
            elif value == "taken":
                value = str(taken.getsockname()[1])
            os.environ[name] = value
        with caplog.at_level(logging.INFO, logger="test.gunicorn"):
            call(arbiter)  # does not raise

    errors = [r.getMessage() + (r.exc_text or "") for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert logged in errors[0]
    assert getattr(getattr(arbiter, "_workermeter", None), "httpd", None) is None


# --------------------------------------------------------------------------- real gunicorn


def test_arbiter_answers_while_every_worker_is_busy(tmp_path: Path) -> None:
    with hooked(tmp_path, workers=2, store=tmp_path / "store") as h:
        done = warm(h.server, 2)
        with ThreadPoolExecutor(2) as pool:
            slow = [pool.submit(get, h.server.url + "/sleep?ms=3000") for _ in range(2)]
            wait_scrape(h.metrics, lambda m: m.sum("workermeter_in_flight_requests") == 2)
            started = time.perf_counter()
            busy = scrape(h.metrics)
            took = time.perf_counter() - started
            # The app's own /metrics needs a free worker: there is none.
            with pytest.raises(requests.Timeout):
                requests.get(h.server.url + "/metrics", timeout=0.5)
            statuses = [f.result() for f in slow]
        after = scrape_idle(h.metrics)
        children = {p.pid for p in psutil.Process(h.arbiter).children()}

    assert took < 1.0
    assert busy.by("workermeter_in_flight_requests", "worker") == {"0": 1.0, "1": 1.0}
    assert busy.sum("workermeter_requests_total") == done  # the two slow ones are not done
    assert busy.sum("workermeter_workers") == 2
    assert set(busy.pids().values()) <= children
    assert statuses == [200, 200]
    assert_exact(after, done + 2)


def test_gthread_threads_are_the_capacity(tmp_path: Path) -> None:
    # --threads on gunicorn's command line only: the middleware finds it in the worker.
    extra = ("--worker-class", "gthread", "--threads", "4")
    with hooked(tmp_path, workers=1, store=tmp_path / "store", extra=extra) as h:
        with ThreadPoolExecutor(4) as pool:
            slow = [pool.submit(get, h.server.url + "/sleep?ms=1000") for _ in range(4)]
            full = wait_scrape(h.metrics, lambda m: m.sum("workermeter_in_flight_requests") == 4)
            statuses = [f.result() for f in slow]
        after = scrape_idle(h.metrics)

    assert statuses == [200] * 4
    assert full.by("workermeter_capacity_threads", "worker") == {"0": 4.0}
    assert full.by("workermeter_capacity_detected", "worker") == {"0": 1.0}
    assert_exact(after, 4)
    assert 0.5 < after.sum("workermeter_all_slots_busy_seconds_total") <= 1.1


def test_store_and_metrics_socket_belong_to_the_arbiter(tmp_path: Path) -> None:
    with hooked(tmp_path, workers=2) as h:
        warm(h.server, 2)
        m = scrape_idle(h.metrics)
        port = int(h.metrics.rsplit(":", 1)[1])
        inode = listening_inode(port)
        workers = list(m.pids().values())
        worker_sockets = [socket_inodes(pid) for pid in workers]
        arbiter_sockets = socket_inodes(h.arbiter)
        files = os.listdir(h.store)

    # on_starting made a private store of this arbiter, and the workers write to it.
    assert h.store.parent == default_base()
    assert h.store.name.startswith(f"pid-{h.arbiter}-")
    assert len(workers) == 2
    assert all(any(f"-{pid}-" in name for name in files) for pid in workers)
    # Only the arbiter listens on the metrics port: the forked workers closed their copies.
    assert inode is not None and inode in arbiter_sockets
    assert all(inode not in sockets for sockets in worker_sockets)


def test_own_hooks_call_workermeters(tmp_path: Path) -> None:
    # The config's keyword arguments win over the environment, whose address is unusable.
    extra = ("-e", "TEST_METRICS_PORT=0", "-e", "WORKERMETER_BIND=203.0.113.1")
    with hooked(tmp_path, workers=2, conf=OWN_HOOKS, extra=extra) as h:
        assert h.metrics.startswith("http://127.0.0.1:")
        done = warm(h.server, 2)
        statuses = drive(h.server.url, ["/items/1"] * 40, clients=4)
        done += statuses.count(200)
        before = scrape_idle(h.metrics)
        worker, pid = sorted(before.pids().items())[0]

        os.kill(pid, signal.SIGTERM)
        h.server.wait_log(f"own child_exit {pid}")
        # child_exit folded the worker at once: no scrape has run since it died.
        files = os.listdir(h.store)
        after = scrape_idle(h.metrics)

    assert "own on_starting" in h.server.log_text()
    assert statuses == [200] * 40
    assert_exact(before, done)
    assert "archive.wm" in files
    assert not [name for name in files if f"-{pid}-" in name]
    assert_exact(after, done)
    assert after.by("workermeter_busy_seconds_total", "worker")[worker] == pytest.approx(
        before.by("workermeter_busy_seconds_total", "worker")[worker], abs=0.01
    )
