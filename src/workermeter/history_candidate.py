"""Who writes the history: one process of a server instance at a time, chosen by a file lock.

Every process that can (the gunicorn hooks' arbiter, ``workermeter serve``, and every worker with
the middleware) runs a :class:`Candidate`: a daemon thread that tries, every few seconds, to take
a POSIX record lock (``lockf``) on ``history.lock``. The one that holds it is the writer. A lock
of that kind is released by the kernel when its process dies, even by SIGKILL, so a writer that
dies is replaced within seconds, with no stale lock to clean up; and unlike ``flock`` it is not
inherited by ``fork``, so an arbiter's lock does not pass to its workers. A process holds such a
lock once, whatever descriptor took it, and closing any descriptor of the file releases it: so a
process runs one candidate per history directory (:func:`start`).

The writer samples the workers' memory and CPU, the host and the listen backlog every
``SAMPLE_EVERY`` seconds (:class:`Sampler`) and writes each minute's row just after it ends.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .history_writer import Gauges, Writer, history_directory
from .snapshot import Snapshot
from .store import Store, ensure_private_dir

if TYPE_CHECKING:
    from .listeners import Listener

log = logging.getLogger("workermeter")

LOCK = "history.lock"
SAMPLE_EVERY = 5.0  # seconds between readings of memory, CPU and the listen backlog
RETRY_EVERY = 5.0  # seconds between tries of a candidate that is not the writer
WORKERS_EVERY = 30.0  # seconds the list of workers to sample is kept between minute rows
ENV_HISTORY = "WORKERMETER_HISTORY"  # "0" or "off": no history kept


class Sampler:
    """What the writer reads besides the store: the largest RSS and USS of one worker, the
    workers' CPU time since the last reading, the host's memory and cores, and connections waiting
    in the listen backlog of the workers' sockets.

    The first reading of a process is its baseline: the CPU it used before is not counted in any
    minute (at most ``SAMPLE_EVERY`` seconds of it, for a worker that started since).
    """

    def __init__(
        self,
        *,
        processes: Callable[[list[int]], dict[int, tuple[int, int, float]]] | None = None,
        host: Callable[[], tuple[int, int, int]] | None = None,
        listeners: Callable[[], dict[int, Listener]] | None = None,
    ) -> None:
        if processes is None or host is None:
            from .usage import ProcessUsage, host_usage  # psutil: only in the writer

            processes = processes or ProcessUsage()
            host = host or host_usage
        if listeners is None:
            from .listeners import listening

            listeners = listening
        self._processes = processes
        self._host = host
        self._listeners = listeners
        self._cpu: dict[tuple[int, float], float] = {}  # (pid, start) -> CPU seconds last read

    def __call__(self, snap: Snapshot) -> Gauges:
        g = Gauges()
        usages = self._processes([w.pid for w in snap.workers])
        cpu: dict[tuple[int, float], float] = {}
        for w in snap.workers:
            usage = usages.get(w.pid)
            if usage is None:
                continue
            rss, uss, seconds = usage
            g.rss_max, g.uss_max = max(g.rss_max, rss), max(g.uss_max, uss)
            key = (w.pid, w.start_wall)
            before = self._cpu.get(key)
            if before is not None:
                g.process_cpu_ns += round(max(seconds - before, 0.0) * 1e9)
            cpu[key] = seconds
        self._cpu = cpu
        g.host_memory, available, g.cores = self._host()
        g.host_available_min = available
        inodes = {inode for w in snap.workers for inode in w.listeners}
        if inodes:
            g.backlog_max = sum(
                listener.queued
                for listener in self._listeners().values()
                if listener.inode in inodes
            )
        return g


class Candidate:
    """A daemon thread that writes the history while this process holds ``history.lock``.

    ``store`` gives the store to read (the gunicorn arbiter passes its fork-safe one); ``sample``
    the readings of processes and host (a :class:`Sampler`, made when the lock is first taken).
    """

    def __init__(
        self,
        store_directory: str | os.PathLike[str],
        *,
        sample: Callable[[Snapshot], Gauges | None] | None = None,
        history: str | os.PathLike[str] | None = None,
        store: Callable[[], Store] | None = None,
        wait_first: float = 0.0,
    ) -> None:
        self.store_directory = Path(store_directory)
        self.directory = Path(history) if history else history_directory(self.store_directory)
        self._sample = sample
        self._store = store
        self._wait_first = wait_first
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._writer: Writer | None = None
        self._fd: int | None = None
        self._owner = os.getpid()
        self._workers: Snapshot | None = None  # the last read of the store, for its workers
        self._workers_at = 0.0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="workermeter-history", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write the minute under way and let another process take over."""
        self._stop.set()
        if self._thread is not None and os.getpid() == self._owner:
            self._thread.join(10)
        elif self._thread is None and os.getpid() == self._owner:
            self._finish()  # turned by a timer (see on_uwsgi_timer): no thread to do it
        self._thread = None

    def step(self) -> None:
        """One turn: take the lock if it is free, then, as the writer, sample the processes and
        write every minute that has ended.

        The store is read (every worker's records merged) for a minute's row, and otherwise
        only every ``WORKERS_EVERY`` seconds, for the list of workers to sample: a new worker is
        sampled within that time, and a gone one is skipped."""
        if self._writer is None:
            if not self._try_lock():
                return
            self._writer = self._become_writer()
        writer = self._writer
        now = time.monotonic()
        if writer.due():
            self._workers = writer.store.collect()
            self._workers_at = now
            writer.tick(snap=self._workers)  # samples with it too
            return
        if self._workers is None or now - self._workers_at >= WORKERS_EVERY:
            self._workers, self._workers_at = writer.store.collect(), now
        writer.sample(self._workers)

    @property
    def writing(self) -> bool:
        return self._writer is not None

    def _try_lock(self) -> bool:
        ensure_private_dir(self.directory)
        fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def _become_writer(self) -> Writer:
        store = self._store() if self._store is not None else Store(self.store_directory)
        if self._sample is None:
            self._sample = Sampler()
        writer = Writer(store, self.directory, sample=self._sample)
        log.info("workermeter: writing the history in %s", self.directory)
        return writer

    def _run(self) -> None:
        try:
            if self._stop.wait(self._wait_first):
                return
            while not self._stop.is_set():
                self.step()
                if self._writer is None:
                    self._stop.wait(RETRY_EVERY)
                else:
                    to_minute = 60 - time.time() % 60
                    self._stop.wait(min(SAMPLE_EVERY, to_minute + 0.05))
        except Exception:  # the meter failing never fails the app
            log.exception("workermeter: the history writer stopped")
        self._finish()

    def _finish(self) -> None:
        """Write the minute under way, as the writer, and release the lock."""
        try:
            if self._writer is not None:
                self._writer.tick(final=True)
        except Exception:
            log.exception("workermeter: the history writer stopped")
        finally:
            if self._writer is not None:
                self._writer.file.close()
                self._writer = None
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)  # releases the lock
                self._fd = None


# One candidate per process and history directory: see the module's docstring.
_running: dict[tuple[int, Path], Candidate] = {}
_running_lock = threading.Lock()


def enabled() -> bool:
    """Whether the history is kept: unless ``$WORKERMETER_HISTORY`` is 0 or off."""
    return os.environ.get(ENV_HISTORY, "").strip().lower() not in ("0", "off", "false", "no")


def start(
    store_directory: str | os.PathLike[str],
    *,
    store: Callable[[], Store] | None = None,
    wait_first: float = 0.0,
    history: str | os.PathLike[str] | None = None,
) -> Candidate | None:
    """Run this process's candidate for the history of ``store_directory`` (once; later calls
    return the same one). None when the history is switched off. It stops, writing the minute
    under way, when the interpreter exits."""
    if not enabled():
        return None
    return _this_process(store_directory, history, thread=True, store=store, wait_first=wait_first)


def _this_process(
    store_directory: str | os.PathLike[str],
    history: str | os.PathLike[str] | None,
    *,
    thread: bool,
    store: Callable[[], Store] | None = None,
    wait_first: float = 0.0,
) -> Candidate:
    """This process's candidate for the history of ``store_directory``, made at the first call,
    its thread started with ``thread`` (else something else turns it), stopped at exit."""
    directory = Path(history) if history else history_directory(Path(store_directory))
    key = (os.getpid(), Path(os.path.abspath(directory)))
    with _running_lock:
        found = _running.get(key)
        if found is None:
            found = Candidate(store_directory, history=directory, store=store,
                              wait_first=wait_first)  # fmt: skip
            _running[key] = found
            if thread:
                found.start()
            atexit.register(found.stop)
    return found


def on_uwsgi_timer(store_directory: Callable[[], Path]) -> bool:
    """In uWSGI's master, for workers without threads (a thread started there never runs): a
    uWSGI timer signal every ``SAMPLE_EVERY`` seconds turns a candidate in every worker
    (:meth:`Candidate.step`), between requests; the one holding the lock writes. Registered in
    the master, as uWSGI asks, so that every worker, respawned ones included, has the handler.
    False where that cannot be (no master, no free signal, history off)."""
    uwsgi = sys.modules.get("uwsgi")  # there only inside uWSGI
    if uwsgi is None or not enabled() or not uwsgi.masterpid():
        return False
    signum = next((n for n in range(255, -1, -1) if not uwsgi.signal_registered(n)), None)
    if signum is None:
        log.warning("workermeter: no free uWSGI signal for the history timer; none is kept")
        return False

    def turn(_signum: int) -> None:
        try:
            _this_process(store_directory(), None, thread=False).step()
        except Exception:  # the history is worth less than the requests
            log.exception("workermeter: the history writer stopped")

    uwsgi.register_signal(signum, "workers", turn)
    uwsgi.add_timer(signum, round(SAMPLE_EVERY))
    return True


def _forget_in_child() -> None:
    global _running_lock
    _running_lock = threading.Lock()
    _running.clear()  # the parent's threads do not run here


os.register_at_fork(after_in_child=_forget_in_child)
