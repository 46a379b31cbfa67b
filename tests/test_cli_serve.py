"""``workermeter serve``: a standalone exporter process reading a server's store.

A real gunicorn without hooks writes to ``WORKERMETER_DIR``; ``workermeter serve`` runs as a
process of its own (under ``timeout``, stopped by its pid) on port 0, and tells the port it took
in its one line on stderr. Bad input is refused with one line and exit status 2.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from servers import LIFETIME, ROOT, drive, gunicorn, scrape, scrape_idle, server_env, warm
from test_gunicorn_hooks import assert_exact, get, wait_scrape
from workermeter.cli import main

_SERVING = re.compile(r"serving \S+ on (http://\S+)/metrics")


class Exporter:
    """``python -m workermeter serve ARGS`` under ``timeout``; its stderr goes to a file."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.stderr = tmp_path / "serve.err"
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                ["timeout", "-k", "5", str(LIFETIME), sys.executable, "-m", "workermeter",
                 "serve", *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                env=server_env(None) if env is None else env, cwd=ROOT, start_new_session=True,
            )  # fmt: skip

    def text(self) -> str:
        return self.stderr.read_text(errors="replace")

    def url(self, timeout: float = 10.0) -> str:
        """The base URL the exporter listens on, once it says so."""
        deadline = time.monotonic() + timeout
        while (match := _SERVING.search(self.text())) is None:
            assert self.proc.poll() is None, f"workermeter serve exited:\n{self.text()}"
            assert time.monotonic() < deadline, f"workermeter serve not ready:\n{self.text()}"
            time.sleep(0.02)
        return match.group(1)

    def signal(self, sig: signal.Signals) -> None:
        """Signal the exporter itself, not the ``timeout`` in front of it."""
        (child,) = psutil.Process(self.proc.pid).children()
        child.send_signal(sig)

    def wait(self) -> int:
        return self.proc.wait(15)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(15)
        if self.proc.stdout is not None:
            self.proc.stdout.close()




def test_serve_reads_the_store_of_a_gunicorn_without_hooks(
    tmp_path: Path, exporters: list[Exporter]
) -> None:
    store = tmp_path / "store"
    with gunicorn(tmp_path, workers=2, store=store) as server:
        exporter = Exporter(tmp_path, "--dir", str(store), "--port", "0")
        exporters.append(exporter)
        url = exporter.url()
        done = warm(server, 2)
        statuses = drive(server.url, [f"/items/{i}" for i in range(200)], clients=4)
        done += statuses.count(200)
        m = scrape_idle(url)
        # The exporter answers while both sync workers are busy.
        with ThreadPoolExecutor(2) as pool:
            slow = [pool.submit(get, server.url + "/sleep?ms=1500") for _ in range(2)]
            busy = wait_scrape(url, lambda m: m.sum("workermeter_in_flight_requests") == 2)
            assert [f.result() for f in slow] == [200, 200]
        after = scrape_idle(url)
        exporter.signal(signal.SIGTERM)
        status = exporter.wait()

    assert statuses == [200] * 200
    assert_exact(m, done)
    assert m.sum("workermeter_workers") == 2
    assert busy.sum("workermeter_requests_total") == done
    assert_exact(after, done + 2)
    assert status == 0
    assert exporter.text().splitlines() == [f"workermeter: serving {store} on {url}/metrics"]


def test_serve_takes_the_store_from_the_environment_and_stops_on_sigint(
    tmp_path: Path, exporters: list[Exporter]
) -> None:
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    exporter = Exporter(tmp_path, "--port", "0", env=server_env(store))
    exporters.append(exporter)
    m = scrape(exporter.url())
    exporter.signal(signal.SIGINT)

    assert exporter.wait() == 0
    assert m.sum("workermeter_workers") == 0
    assert m.sum("workermeter_requests_total") == 0


def test_serve_refuses_a_missing_store_in_one_line(tmp_path: Path) -> None:
    exporter = Exporter(tmp_path, "--dir", str(tmp_path / "nowhere"))
    try:
        status = exporter.wait()
    finally:
        exporter.stop()

    assert status == 2
    assert exporter.text() == (
        f"workermeter: store directory {tmp_path / 'nowhere'} does not exist; "
        "pass the WORKERMETER_DIR the server's workers use\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param([], "no store directory: pass --dir DIR or set WORKERMETER_DIR",
                     id="no-dir"),
        pytest.param(["--dir", ""], "--dir is empty", id="empty-dir"),
        pytest.param(["--dir", "{tmp}/nowhere"], "{tmp}/nowhere does not exist", id="missing"),
        pytest.param(["--dir", "{tmp}/file"], "must be a real directory", id="a-file"),
        pytest.param(["--dir", "{tmp}/link"], "must be a real directory", id="a-symlink"),
        pytest.param(["--dir", "{tmp}/open"], "is open to other users (mode 755); chmod 700",
                     id="not-private"),
        pytest.param(["--dir", "{tmp}/store", "--port", "70000"], "--port 70000 is not a TCP port",
                     id="bad-port"),
        pytest.param(["--dir", "{tmp}/store", "--port", "{taken}"], "Address already in use",
                     id="port-taken"),
        pytest.param(["--dir", "{tmp}/store", "--bind", "no-such-host.invalid"],
                     "cannot listen on no-such-host.invalid port", id="bad-bind"),
    ],
)  # fmt: skip
def test_serve_bad_input_is_one_line_and_status_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    monkeypatch.delenv("WORKERMETER_DIR", raising=False)
    (tmp_path / "store").mkdir(mode=0o700)
    (tmp_path / "open").mkdir(mode=0o755)
    (tmp_path / "file").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "store")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        given = [a.format(tmp=tmp_path, taken=taken.getsockname()[1]) for a in args]
        status = main(["serve", *given])
    out, err = capsys.readouterr()

    assert status == 2
    assert out == ""
    assert err.startswith("workermeter: ") and err.count("\n") == 1
    assert message.format(tmp=tmp_path) in err
