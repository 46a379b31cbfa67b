"""Which server runs this process, and how many requests one of its processes serves at once.

Asked once per process, with the first request. Servers are recognised without importing them:
mod_wsgi and uWSGI put a module of their own in ``sys.modules``; gunicorn and waitress are found
as the worker object on the call stack of the request, whose configuration says its threads.
uvicorn is found the same way through its request cycle. When nothing tells, the answer says so
rather than guessing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any


@dataclass(frozen=True)
class Capacity:
    """What a server says about its concurrency.

    ``threads``: requests one process serves at once (None: unknown). ``processes``: worker
    processes configured (None: unknown). ``source`` names where the numbers came from.
    """

    server: str
    threads: int | None
    processes: int | None
    source: str


def _positive(value: Any) -> int | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    try:
        number = int(value)
    except (TypeError, ValueError):  # absent, or not a number in a server's options
        return None
    return number if number > 0 else None


def _mod_wsgi() -> Capacity | None:
    module = sys.modules.get("mod_wsgi")
    if module is None or not hasattr(module, "threads_per_process"):
        return None
    return Capacity(
        "mod_wsgi",
        _positive(getattr(module, "threads_per_process", None)),
        _positive(getattr(module, "maximum_processes", None)),
        "mod_wsgi.threads_per_process",
    )


def _uwsgi() -> Capacity | None:
    module = sys.modules.get("uwsgi")
    if module is None or not hasattr(module, "opt"):
        return None
    opt = getattr(module, "opt", {})
    threads = _positive(opt.get("threads")) if isinstance(opt, dict) else None
    return Capacity("uwsgi", threads or 1, _positive(getattr(module, "numproc", None)),
                    "uwsgi.opt['threads']")  # fmt: skip


def _from_stack(frame: FrameType | None) -> Capacity | None:
    """Find the server's worker object among the ``self`` of the frames serving this request
    (or loading the app in a worker), or as the ``worker`` gunicorn's arbiter is forking."""
    depth = 0
    while frame is not None and depth < 64:
        f_locals = frame.f_locals
        owner = f_locals.get("self")
        module = type(owner).__module__ if owner is not None else ""
        if module.startswith("gunicorn.workers."):
            return _gunicorn(owner)
        forked = f_locals.get("worker")
        if module == "gunicorn.arbiter" and type(forked).__module__.startswith("gunicorn.workers."):
            return _gunicorn(forked)
        if module.startswith("waitress."):
            found = _waitress(owner)
            if found is not None:
                return found
        if module.startswith("uvicorn.protocols."):
            return _uvicorn(owner)
        if module.startswith("uvicorn.lifespan."):  # the lifespan startup: its config is at hand
            return _uvicorn_config(getattr(owner, "config", None))
        frame = frame.f_back
        depth += 1
    return None


def _gunicorn(worker: Any) -> Capacity:
    cfg = getattr(worker, "cfg", None)
    kind = type(worker).__name__
    processes = _positive(getattr(cfg, "workers", None))
    if kind == "SyncWorker":
        return Capacity("gunicorn sync", 1, processes, "gunicorn worker class")
    if kind == "ThreadWorker":
        return Capacity("gunicorn gthread", _positive(getattr(cfg, "threads", None)), processes,
                        "gunicorn --threads")  # fmt: skip
    # gevent, eventlet and the ASGI worker serve up to worker_connections at once.
    return Capacity(f"gunicorn {kind}", _positive(getattr(cfg, "worker_connections", None)),
                    processes, "gunicorn --worker-connections")  # fmt: skip


def _uvicorn(cycle: Any) -> Capacity:
    """uvicorn's request cycle reaches its connection's protocol, which holds the config.

    An event loop has no fixed number of slots: only ``--limit-concurrency`` bounds it."""
    protocol = getattr(getattr(cycle, "on_response", None), "__self__", None)
    return _uvicorn_config(getattr(protocol, "config", None))


def _uvicorn_config(config: Any) -> Capacity:
    return Capacity(
        "uvicorn",
        _positive(getattr(config, "limit_concurrency", None)),
        _positive(getattr(config, "workers", None)),
        "uvicorn --limit-concurrency",
    )


def _waitress(owner: Any) -> Capacity | None:
    for path in ("adj", "server.adj", "channel.server.adj"):
        target = owner
        for name in path.split("."):
            target = getattr(target, name, None)
        threads = _positive(getattr(target, "threads", None))
        if threads is not None:
            return Capacity("waitress", threads, 1, "waitress threads")
    return None


def _in_master(frame: FrameType | None) -> bool:
    """Whether the stack is that of a pre-fork server's master: gunicorn's arbiter, or uWSGI's
    master loading the app before it forks."""
    module = sys.modules.get("uwsgi")
    if module is not None and hasattr(module, "worker_id"):
        return bool(module.worker_id() == 0)
    depth = 0
    while frame is not None and depth < 64:
        owner = frame.f_locals.get("self")
        if owner is not None and type(owner).__module__ in (
            "gunicorn.arbiter",
            "gunicorn.app.base",
        ):
            return True
        frame = frame.f_back
        depth += 1
    return False


def worker(frame: FrameType | None) -> Capacity | None:
    """What the server says about this process when it is one of the server's workers, ready
    to serve (the app is being loaded in it, or it is being forked for it); None when the
    process is not known to be a worker (a master, a script, a server that does not tell)."""
    module = sys.modules.get("uwsgi")
    if module is not None and hasattr(module, "worker_id"):
        return _uwsgi() if module.worker_id() > 0 else None
    found = _mod_wsgi() or _from_stack(frame)
    if found is not None and found.server == "uvicorn":
        return None  # an ASGI server: the lifespan says when a worker is ready
    return found


def on_uwsgi_fork(callback: Callable[[], object]) -> bool:
    """Call ``callback`` in each worker uWSGI forks from here: uWSGI forks in C and runs no
    Python at-fork hook, only its own ``uwsgi.post_fork_hook``, which is chained (a hook set
    before is still called). Nothing happens outside uWSGI: False there."""
    module = sys.modules.get("uwsgi")
    if module is None or not hasattr(module, "worker_id"):
        return False
    previous = getattr(module, "post_fork_hook", None)

    def hook() -> None:
        if callable(previous):
            previous()
        callback()

    setattr(module, "post_fork_hook", hook)  # noqa: B010 - a C module mypy knows no stub of
    return True


def master(frame: FrameType | None) -> bool:
    """Whether this process is a pre-fork server's master, which forks workers from itself."""
    return worker(frame) is None and _in_master(frame)


def detect(environ: Mapping[str, Any] | None = None, frame: FrameType | None = None) -> Capacity:
    """What the server running this request says about its capacity.

    ``frame`` is where to start looking up the call stack for the server's worker object; none
    is looked at without one.
    """
    for found in (_mod_wsgi(), _uwsgi()):
        if found is not None:
            return found
    found = _from_stack(frame)
    if found is not None:
        return found
    if environ is not None and environ.get("wsgi.multithread") is False:
        software = str(environ.get("SERVER_SOFTWARE", "a WSGI server"))
        return Capacity(software, 1, None, "wsgi.multithread is false")
    software = str(environ.get("SERVER_SOFTWARE", "unknown")) if environ is not None else "unknown"
    return Capacity(software, None, None, "not told")
