"""``workermeter serve``: serve a store's metrics from a process of their own.

For servers without hooks that could serve them (and for gunicorn without the hooks of
``workermeter.gunicorn``): start the server with ``WORKERMETER_DIR`` set, and this exporter beside
it with the same directory. It reads the store at every scrape, folds workers that have died into
the archive, answers while every worker is busy, and writes the history of the instance. It runs
until SIGTERM or SIGINT, then exits 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import stat
import sys
from pathlib import Path

from .. import history_candidate
from ..instance import ENV_DIR
from ..metrics_server import serve_metrics
from . import UsageError

HELP = "serve the metrics of a store directory on a port of their own, until SIGTERM"
DEFAULT_PORT = 9191
DEFAULT_BIND = "127.0.0.1"
_STOP = {signal.SIGTERM, signal.SIGINT}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        dest="directory",
        metavar="DIR",
        help=f"the store directory the server's workers write to (default: ${ENV_DIR})",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"TCP port to listen on; 0 picks a free one (default: {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--bind",
        default=DEFAULT_BIND,
        metavar="ADDRESS",
        help=f"address to listen on (default: {DEFAULT_BIND}: this host only)",
    )


def run(args: argparse.Namespace) -> int:
    directory = store_directory(args.directory)
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is not a TCP port (0-65535)")
    # Block the stop signals before the server's threads exist, so that they inherit the mask
    # and the signal is taken here, by sigwait, rather than by a thread or a handler.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP)
    try:
        try:
            httpd, _thread = serve_metrics(args.port, args.bind, directory=directory)
        except OSError as e:  # taken port, unknown address, no permission for a low port
            raise UsageError(f"cannot listen on {args.bind} port {args.port}: {_why(e)}") from None
        except ValueError as e:  # a setting in the environment it cannot use
            raise UsageError(str(e)) from None
        try:
            address = httpd.socket.getsockname()
            host, port = str(address[0]), int(address[1])
            where = f"[{host}]" if ":" in host else host
            print(
                f"workermeter: serving {directory} on http://{where}:{port}/metrics",
                file=sys.stderr,
                flush=True,
            )
            history = history_candidate.start(directory)
            signal.sigwait(_STOP)
            if history is not None:
                history.stop()
        finally:
            httpd.shutdown()
            httpd.server_close()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return 0


def store_directory(given: str | None) -> Path:
    """The store directory to serve: ``given``, else ``$WORKERMETER_DIR``; it must exist, be a
    real directory of this user, and be private.

    It is never created nor its mode changed: a mistyped path would otherwise be served, empty,
    forever, and a shared directory given by mistake would be locked up.
    """
    if given is None:
        given = os.environ.get(ENV_DIR) or None
        if given is None:
            raise UsageError(f"no store directory: pass --dir DIR or set {ENV_DIR}")
    elif not given:
        raise UsageError("--dir is empty: pass the store directory of the server's workers")
    path = Path(given)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise UsageError(
            f"store directory {path} does not exist; pass the {ENV_DIR} the server's workers use"
        ) from None
    except OSError as e:  # a parent that is not a directory, or cannot be searched
        raise UsageError(f"cannot read store directory {path}: {_why(e)}") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"store directory {path} must be a real directory, not a link or a file")
    if st.st_uid != os.geteuid():
        raise UsageError(f"store directory {path} belongs to uid {st.st_uid}, not to this user")
    if st.st_mode & 0o077:
        raise UsageError(
            f"store directory {path} is open to other users (mode {st.st_mode & 0o777:o}); "
            f"chmod 700 it"
        )
    return path


def _why(e: OSError) -> str:
    return e.strerror or str(e)
