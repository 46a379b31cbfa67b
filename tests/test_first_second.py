"""Every worker counts in the capacity from the moment it is ready to serve, before its first
request: real gunicorn (sync, gthread, gevent; with and without ``--preload``, with and without
the hooks), uWSGI and uvicorn, and a worker recycled by ``max_requests`` is replaced in the count
as it is replaced in the server.

The store is read directly by the test, never through the app: a scrape of the app's
``/metrics`` is itself a call of the app, and these tests are about workers no request reached.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from servers import REQUEST_TIMEOUT, ROOT, Server, automatic_store, gunicorn, uvicorn
from test_other_servers import remove_store, uwsgi
from workermeter.snapshot import Snapshot
from workermeter.store import Store

CONF = ROOT / "integrations" / "gunicorn.conf.py"


def _until(
    read: Callable[[], Snapshot], workers: int, timeout: float = 15.0, *, loops: bool = False
) -> Snapshot:
    """The first snapshot with ``workers`` live workers (and, with ``loops``, their event loops
    measured, which a worker starts just after it counts): a server logs a worker's boot before
    the worker has loaded the app."""
    deadline = time.monotonic() + timeout
    while True:
        snap = read()
        ready = len(snap.workers) >= workers and (not loops or len(snap.loops) >= workers)
        if ready or time.monotonic() > deadline:
            return snap
        time.sleep(0.05)


def _requests(snap: Snapshot) -> int:
    return sum(sum(v[:6]) for (kind, _), v in snap.records.items() if kind == 1)


@pytest.mark.parametrize(
    ("workers", "worker_class", "threads", "preload", "hooks", "slots"),
    [
        pytest.param(4, "sync", None, False, False, 4, id="sync"),
        pytest.param(4, "sync", None, True, False, 4, id="sync-preload"),
        pytest.param(4, "sync", None, False, True, 4, id="sync-hooks"),
        pytest.param(4, "sync", None, True, True, 4, id="sync-preload-hooks"),
        pytest.param(2, "gthread", 4, False, False, 8, id="gthread"),
        pytest.param(2, "gthread", 4, True, False, 8, id="gthread-preload"),
        pytest.param(2, "gthread", 4, True, True, 8, id="gthread-preload-hooks"),
        pytest.param(2, "gevent", None, False, False, 2000, id="gevent"),
        pytest.param(2, "gevent", None, True, True, 2000, id="gevent-preload-hooks"),
    ],
)
def test_gunicorn_workers_count_before_any_request(
    tmp_path: Path,
    workers: int,
    worker_class: str,
    threads: int | None,
    preload: bool,
    hooks: bool,
    slots: int,
) -> None:
    store = tmp_path / "store"
    extra = ("-c", str(CONF), "-e", "WORKERMETER_PORT=0") if hooks else ()
    # threads= goes to gunicorn only: the middleware must learn it from the server.
    argv_threads = ("--threads", str(threads)) if threads else ()
    with gunicorn(
        tmp_path, workers=workers, store=store, worker_class=worker_class, preload=preload,
        extra=(*extra, *argv_threads),
    ) as server:  # fmt: skip
        snap = _until(Store(store).collect, workers, loops=worker_class == "gevent")
        pids = {w.pid for w in snap.workers}
        assert server.proc.pid not in pids  # never the arbiter (nor coreutils' timeout)
    assert len(snap.workers) == workers
    assert sum(w.capacity for w in snap.workers) == slots
    assert _requests(snap) == 0
    if worker_class == "gevent":  # the hub is measured from the start too
        assert sorted(snap.loops) == list(range(workers))


def test_uwsgi_workers_count_before_any_request(tmp_path: Path) -> None:
    """The app loaded by uWSGI's master, then forked into its workers (no lazy-apps)."""
    with uwsgi(tmp_path, processes=2, threads=2) as (server, _):
        store = automatic_store(server.port)
        try:
            snap = _until(Store(store).collect, 2)
        finally:
            remove_store(store)
    assert sorted(w.capacity for w in snap.workers) == [2, 2]
    assert _requests(snap) == 0


def test_uvicorn_workers_count_from_their_lifespan_startup(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with uvicorn(tmp_path, workers=2, store=store):
        snap = _until(Store(store).collect, 2)
    assert len(snap.workers) == 2
    assert len(snap.loops) == 2  # each one's loop measured from its startup
    assert _requests(snap) == 0


def _steady_load(server: Server, seconds: float, rate: float) -> int:
    sent, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        with requests.get(server.url + "/sleep?ms=5", headers={"Connection": "close"},
                          timeout=REQUEST_TIMEOUT) as r:  # fmt: skip
            assert r.status_code == 200
        sent += 1
        time.sleep(max(0.0, start + sent / rate - time.monotonic()))
    return sent


@pytest.mark.parametrize(
    ("preload", "hooks", "short_share"),
    [
        pytest.param(True, True, 0.02, id="preload-hooks"),
        pytest.param(False, False, 0.12, id="plain"),
    ],
)
def test_recycled_workers_are_replaced_in_the_count(
    tmp_path: Path, preload: bool, hooks: bool, short_share: float
) -> None:
    """4 sync workers, each replaced after 10 requests, at 8 requests/s: a worker is recycled
    every 1.25 s. Scraped every 0.1 s, the summed capacity is 4 at every scrape but for those
    that fall between an old worker's exit and its replacement's start. With --preload the
    replacement counts from its fork, a few ms after gunicorn reaped the old one. Without it, it
    counts once it has imported the app, ~50 ms later here (measured: 6 of 119 scrapes)."""
    import threading

    store = tmp_path / "store"
    extra = ("-c", str(CONF), "-e", "WORKERMETER_PORT=0") if hooks else ()
    seen: list[int] = []
    pids: set[int] = set()
    with gunicorn(
        tmp_path, workers=4, store=store, preload=preload,
        extra=(*extra, "--max-requests", "10"),
    ) as server:  # fmt: skip
        _until(Store(store).collect, 4)
        done = threading.Event()

        def watch() -> None:
            reader = Store(store)
            while not done.is_set():
                snap = reader.collect()
                seen.append(sum(w.capacity for w in snap.workers))
                pids.update(w.pid for w in snap.workers)
                time.sleep(0.1)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            sent = _steady_load(server, 12.0, 8.0)
        finally:
            done.set()
            watcher.join()
    assert sent >= 80
    assert len(pids) >= 4 + sent // 10 - 4  # the workers really were replaced
    short = [c for c in seen if c != 4]
    # Never more than 4, never less than 3, and missing a worker only for that gap.
    assert max(seen) == 4 and min(seen) >= 3, seen
    assert len(short) <= max(2, len(seen) * short_share), (short, len(seen))


def test_a_forked_child_of_a_worker_is_not_a_worker(tmp_path: Path) -> None:
    """A process the app forks itself (multiprocessing, a subprocess helper) does not count."""
    from workermeter import WSGIMiddleware

    def app(environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
        return []

    mw = WSGIMiddleware(app, directory=tmp_path)
    mw.recorder.after_fork_in_child = mw._attach_forked  # as in a master
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0 if mw.recorder.active is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert Store(tmp_path).collect().workers == []
