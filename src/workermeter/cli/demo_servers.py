"""The servers ``workermeter demo`` runs its sample app under: gunicorn with sync workers, or
uvicorn with ``--asgi``. Each listens on a socket the demo binds and hands over as a file
descriptor (port 0 then means a free port, with no race between choosing and binding it), runs
under coreutils ``timeout`` where there is one, and is stopped by its process id however the demo
ends.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import UsageError

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Sample:
    """One way to serve the sample app: the server, its workers and the app's import path."""

    server: str  # "gunicorn" or "uvicorn"
    workers: int
    kind: str  # what the workers are, in words

    def argv(self, fd: int) -> list[str]:
        if self.server == "gunicorn":
            return [
                sys.executable, "-m", "gunicorn",
                "--bind", f"fd://{fd}",
                "--workers", str(self.workers),
                "--worker-class", "sync",
                "--graceful-timeout", "2",
                "--timeout", "30",
                "--log-level", "warning",
                *_gunicorn_flags(),
                "workermeter.demo_app:application",
            ]  # fmt: skip
        return [
            sys.executable, "-m", "uvicorn",
            "--fd", str(fd),
            "--workers", str(self.workers),
            "--timeout-graceful-shutdown", "2",
            "--log-level", "warning",
            "--no-access-log",
            "workermeter.demo_app:asgi_application",
        ]  # fmt: skip


GUNICORN = Sample("gunicorn", 2, "sync workers")
UVICORN = Sample("uvicorn", 1, "event-loop worker")


def _gunicorn_flags() -> list[str]:
    from gunicorn.config import KNOWN_SETTINGS

    # gunicorn >= 25 opens a control socket at a fixed path that every instance would share.
    names = {s.name for s in KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in names else []


def listen(port: int) -> socket.socket:
    """The app's listening socket on 127.0.0.1, to hand to the server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on 127.0.0.1:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def running(
    sample: Sample, sock: socket.socket, store: Path, log: Path, lifetime: float
) -> Iterator[int]:
    """Run the sample app on ``sock``; yield the server's pid; stop it by pid: SIGTERM, a
    bounded wait, then SIGKILL to its process group."""
    fd = sock.fileno()
    argv = sample.argv(fd)
    timeout = shutil.which("timeout")
    if timeout is not None:  # dies on its own even if this process is killed
        argv = [timeout, "-k", "5", str(round(lifetime)), *argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERMETER_")}
    env["WORKERMETER_DIR"] = str(store)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            pass_fds=(fd,),
            start_new_session=True,  # Ctrl-C reaches the demo, which stops the server itself
        )
    try:
        yield proc.pid
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # it ended between the wait and the kill
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(STOP_TIMEOUT)


def _tail(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:  # never written
        return "no output"
    return lines[-1] if lines else "no output"


def wait_ready(sample: Sample, port: int, pid: int, log: Path) -> None:
    """Wait until the app answers ``GET /``, or say why it never will."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", "/")
                conn.getresponse().read()
                return
            finally:
                conn.close()
        except (OSError, http.client.HTTPException):  # not serving yet
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise UsageError(f"{sample.server} exited before serving: {_tail(log)}") from None
        if time.monotonic() > deadline:
            raise UsageError(
                f"{sample.server} did not answer in {READY_TIMEOUT:.0f} s: {_tail(log)}"
            )
        time.sleep(0.1)
