"""gunicorn config hooks: one store per server, its metrics served by the arbiter.

Import the hooks into ``gunicorn.conf.py``; gunicorn calls each one by its name::

    # gunicorn.conf.py
    from workermeter.gunicorn import child_exit, on_exit, on_starting, when_ready, worker_exit

    workers = 4
    # metrics of every worker: http://127.0.0.1:9191/metrics

The app is wrapped in :class:`~workermeter.WSGIMiddleware` (or the ASGI one) as usual. The hooks
give all its workers one store and serve that store from the arbiter, which never serves a
request, so a scrape is answered even when every worker is busy.

Each hook is a plain function with gunicorn's signature. Where ``gunicorn.conf.py`` has a hook of
its own, call ours from it; keyword arguments take precedence over the environment::

    from workermeter import gunicorn as workermeter

    def when_ready(server):
        workermeter.when_ready(server, port=9200)
        server.log.info("ready")

``on_starting(server, *, directory=None)``
    Arbiter, before the first worker. Prepares the store: ``directory``, else ``$WORKERMETER_DIR``,
    else a new private directory under ``/dev/shm/workermeter-<uid>/`` (where the stores of
    servers gone for 10 minutes are swept away), and exports it as ``WORKERMETER_DIR``: the
    workers inherit the arbiter's environment.
``when_ready(server, *, port=None, bind=None)``
    Arbiter, once it listens and before it forks the workers. Serves the metrics on
    ``bind:port`` from a thread of the arbiter: ``port`` defaults to ``$WORKERMETER_PORT`` or
    9191 (0 picks a free port, which is logged), ``bind`` to ``$WORKERMETER_BIND`` or
    ``127.0.0.1``. Threads do not survive ``fork``, and nothing in a worker uses this one: every
    child closes its copies of the metrics sockets as it is forked (``os.register_at_fork``, so
    no ``post_fork`` hook is needed), and a fork waits for a scrape in progress, so that no
    worker inherits the store's file locks. The arbiter also writes the history of the instance
    (:mod:`workermeter.history_candidate`): a row a minute, kept where ``$WORKERMETER_HISTORY_DIR``
    says, else in the store.
``child_exit(server, worker)``
    Arbiter, after a worker died: exited, recycled by ``max_requests``, or killed. Folds it into
    the store's archive at once: its counters stay in the totals, its gauges and its request in
    flight disappear, the elapsed part of that request counts as busy time up to now, and the
    store keeps one set of files per live worker.
``worker_exit(server, worker)``
    gunicorn calls it in the exiting worker (nothing to do there: the store sees the exit by
    itself) and, in the arbiter, for a worker it found already gone, which ``child_exit`` does
    not see; there it folds like ``child_exit``.
``on_exit(server)``
    Arbiter, at shutdown: writes the minute under way to the history and stops serving the
    metrics. The store stays for a last reader; an
    automatic one is swept 10 minutes after its workers are gone.

An error in a hook is logged through gunicorn's logger and never stops gunicorn: the server runs
on without the part that failed (for example without the metrics port when the port is taken).
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .exposition import Exposition
from .instance import ENV_DIR, sweep
from .metrics_server import MetricsServer, listen, metrics_app
from .snapshot import Snapshot
from .store import Store, default_base, ensure_private_dir

if TYPE_CHECKING:
    from . import history_candidate

__all__ = ["child_exit", "on_exit", "on_starting", "when_ready", "worker_exit"]

ENV_PORT = "WORKERMETER_PORT"
ENV_BIND = "WORKERMETER_BIND"
DEFAULT_PORT = 9191
DEFAULT_BIND = "127.0.0.1"
FORK_WAIT = 5.0  # seconds a fork waits for a scrape to finish before going ahead anyway
_ATTR = "_workermeter"  # where the state of this server instance hangs on the arbiter object


class Logger(Protocol):
    """The part of gunicorn's logger the hooks use (``logging.Logger`` has it too)."""

    def info(self, msg: str, *args: Any) -> None: ...

    def error(self, msg: str, *args: Any) -> None: ...

    def exception(self, msg: str, *args: Any) -> None: ...


class Arbiter(Protocol):
    """The part of gunicorn's arbiter, the hooks' ``server`` argument, that the hooks use."""

    @property
    def log(self) -> Logger: ...


def on_starting(server: Arbiter, *, directory: str | os.PathLike[str] | None = None) -> None:
    """Prepare this server instance's store and export it as ``WORKERMETER_DIR``."""
    with _logged(server, "on_starting"):
        if getattr(server, _ATTR, None) is not None:
            return  # called twice (a user's hook and ours): the first call decided
        env = os.environ.get(ENV_DIR)
        if directory is not None:
            path = ensure_private_dir(Path(directory))
        elif env:
            path = ensure_private_dir(Path(env))
        else:
            base = ensure_private_dir(default_base())
            path = Path(tempfile.mkdtemp(prefix=f"pid-{os.getpid()}-", dir=base))
            sweep(base, keep=path)
        path = Path(os.path.abspath(path))  # the workers may change directory
        state = _Instance(path)
        os.environ[ENV_DIR] = str(path)
        setattr(server, _ATTR, state)
        server.log.info("workermeter: store %s", path)


def when_ready(server: Arbiter, *, port: int | None = None, bind: str | None = None) -> None:
    """Serve the metrics of every worker from a thread of the arbiter."""
    with _logged(server, "when_ready"):
        state = _state(server)
        if state is None:
            server.log.error(
                "workermeter: no store to serve; import on_starting from workermeter.gunicorn "
                "into gunicorn.conf.py too, or set WORKERMETER_DIR"
            )
            return
        if state.httpd is not None:
            return
        if port is None:
            port = _port_from_env()
        elif isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port={port!r} is not a TCP port; pass a number 0-65535")
        if bind is None:
            bind = os.environ.get(ENV_BIND) or DEFAULT_BIND
        host, actual = state.serve(bind, port)
        where = f"[{host}]" if ":" in host else host
        server.log.info(
            "workermeter: metrics of all workers on http://%s:%s/metrics", where, actual
        )
        state.keep_history()


def child_exit(server: Arbiter, worker: object) -> None:
    """Fold the worker that died into the store's archive."""
    with _logged(server, "child_exit"):
        state = _state(server)
        if state is not None and state.owner == os.getpid():
            state.store.fold()


def worker_exit(server: Arbiter, worker: object) -> None:
    """In the arbiter, for a worker found already gone: fold it like ``child_exit``."""
    with _logged(server, "worker_exit"):
        state = _state(server, adopt=False)
        # In the exiting worker itself the owner differs: the store sees that exit by itself.
        if state is not None and state.owner == os.getpid():
            state.store.fold()


def on_exit(server: Arbiter) -> None:
    """Stop serving the metrics."""
    with _logged(server, "on_exit"):
        state = _state(server, adopt=False)
        if state is not None and state.owner == os.getpid():
            state.stop()


@contextlib.contextmanager
def _logged(server: Arbiter, hook: str) -> Iterator[None]:
    # A hook's exception would stop the arbiter, and with it every request: metrics are not
    # worth that. Whatever failed is logged, with what to do when the message says it.
    try:
        yield
    except Exception:
        server.log.exception("workermeter: %s failed; gunicorn goes on without it", hook)


def _state(server: Arbiter, *, adopt: bool = True) -> _Instance | None:
    """The hooks' state on the arbiter; without on_starting, the store ``WORKERMETER_DIR``
    names is adopted, if ``adopt``."""
    state: _Instance | None = getattr(server, _ATTR, None)
    if state is None and adopt:
        env = os.environ.get(ENV_DIR)
        if env:
            state = _Instance(ensure_private_dir(Path(env)))
            setattr(server, _ATTR, state)
    return state


def _port_from_env() -> int:
    raw = os.environ.get(ENV_PORT)
    if not raw:
        return DEFAULT_PORT
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError(f"{ENV_PORT}={raw!r} is not a TCP port; set it to a number 0-65535")
    return port


class _ForkSafeStore(Store):
    """The store as the arbiter reads it: never while the arbiter forks.

    A scrape holds ``flock`` locks on descriptors of the store's files; a worker forked in the
    middle would keep copies of them, and with them the locks, for its whole life.
    """

    def __init__(self, directory: Path, lock: threading.RLock) -> None:
        super().__init__(directory)
        self.lock = lock
        self._depth = 0

    def collect(self) -> Snapshot:
        with self.lock:
            self._depth += 1
            try:
                return super().collect()
            finally:
                self._depth -= 1

    def fold(self) -> None:
        """Fold the dead workers into the archive (a collect does it)."""
        with self.lock:
            # gunicorn before 24 reaps workers in its SIGCHLD handler, which can interrupt a
            # collect in this very thread: a nested fold would wait on that collect's lock
            # forever. The next scrape folds instead.
            if not self._depth:
                self.collect()


class _MetricsServer(MetricsServer):
    """An HTTP server whose sockets no forked child keeps.

    A socket is accepted and closed under ``lock``, which a fork of this process waits for, so
    ``open`` always names every socket a child gets a copy of, and the child closes them all.
    """

    def __init__(
        self, address: tuple[Any, ...], family: socket.AddressFamily, lock: threading.RLock
    ) -> None:
        self.lock = lock
        self.open: set[socket.socket] = set()
        super().__init__(address, family)

    def get_request(self) -> tuple[socket.socket, Any]:
        with self.lock:
            conn, addr = self.socket.accept()
            self.open.add(conn)
        return conn, addr

    def close_request(self, request: Any) -> None:
        with self.lock:
            self.open.discard(request)
            request.close()

    def drop_in_child(self) -> None:
        """Close this process's copies of the sockets, leaving the parent's untouched."""
        for sock in (self.socket, *self.open):
            # detach, not close: a socket with a file object open on it (a request being read)
            # would otherwise stay open, and a later garbage collection would close the number
            # again, by then maybe another file.
            fd = sock.detach()
            if fd >= 0:
                with contextlib.suppress(OSError):  # already closed: nothing to drop
                    os.close(fd)
        self.open.clear()


class _Instance:
    """What the hooks keep for one server instance: its store and its metrics server."""

    def __init__(self, directory: Path) -> None:
        self.owner = os.getpid()
        self.lock = threading.RLock()
        self.store = _ForkSafeStore(directory, self.lock)
        self.httpd: _MetricsServer | None = None
        self._thread: threading.Thread | None = None
        self._fork_held = False
        self.history: history_candidate.Candidate | None = None

    def serve(self, bind: str, port: int) -> tuple[str, int]:
        """Listen on ``bind:port`` and serve from a daemon thread; the address listened on."""
        httpd = _MetricsServer(*listen(bind, port), self.lock)
        httpd.set_app(metrics_app(Exposition(lambda: self.store), lambda: self.store))
        with self.lock:
            self.httpd = httpd
        os.register_at_fork(
            before=self._before_fork,
            after_in_parent=self._after_fork_in_parent,
            after_in_child=self._after_fork_in_child,
        )
        self._thread = threading.Thread(
            target=httpd.serve_forever, name="workermeter-metrics", daemon=True
        )
        self._thread.start()
        return str(httpd.server_address[0]), int(httpd.server_address[1])

    def keep_history(self) -> None:
        """Write the history from the arbiter, which outlives every worker, reading the store
        under the lock a fork waits for."""
        from . import history_candidate

        self.history = history_candidate.start(self.store.directory, store=lambda: self.store)

    def stop(self) -> None:
        history, self.history = self.history, None
        if history is not None:
            history.stop()
        httpd, self.httpd = self.httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    def _before_fork(self) -> None:
        if os.getpid() == self.owner and self.httpd is not None:
            # Bounded: a scrape stuck on a lock of another process must not stop gunicorn
            # from replacing its workers.
            self._fork_held = self.lock.acquire(timeout=FORK_WAIT)

    def _after_fork_in_parent(self) -> None:
        if self._fork_held:
            self._fork_held = False
            self.lock.release()

    def _after_fork_in_child(self) -> None:
        if os.getppid() != self.owner:
            return  # forked by a worker, long after its own copies were dropped
        httpd, self.httpd = self.httpd, None
        if httpd is not None:
            httpd.drop_in_child()
        self._thread = None
        self.history = None  # the arbiter's writer: its thread does not run here
        # The copy of the lock stays held, as it was for the fork: nothing here takes it again.
