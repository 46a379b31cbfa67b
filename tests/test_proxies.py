"""Real proxies in front of real servers, configured by the files in ``integrations/``: nginx
(``proxy_pass`` and ``uwsgi_pass``), Apache (mod_proxy), HAProxy and Caddy, and a real
Prometheus scraping with ``prometheus.yml``.

Each proxy runs from its shipped file with only ports and addresses replaced. The clients send a
forged ``X-Request-Start`` 20 years old: a proxy that appended to it rather than overwrote it
would have it taken as the start (the earliest value wins) and rejected as too old. So every
request must show a queue wait, and none a rejected one. A missing proxy fails its test (it does
not skip): ``scripts/test.sh`` installs them all.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import requests

from servers import (
    REQUEST_TIMEOUT,
    Metrics,
    Server,
    drive,
    gunicorn,
    launch,
    nginx_argv,
    scrape_idle,
    server_env,
)
from test_other_servers import INTEGRATIONS, apache, running, shipped, tool, uwsgi
from workermeter.request_start import FUTURE, SKEW, UNPARSABLE, queue_wait

REQUESTS = 40
CLIENTS = 4
HANDLER_MS = 10
FORGED = {"X-Request-Start": "t=1100000000"}  # 2004: rejected as too old if it were taken


def paths() -> list[str]:
    return [f"/sleep?ms={HANDLER_MS}"] * REQUESTS


def refused_through(proxy: Server) -> int:
    """The status of ``/metrics`` asked through the proxy (which adds X-Forwarded-For)."""
    with requests.get(proxy.url + "/metrics", timeout=REQUEST_TIMEOUT) as r:
        return r.status_code


def assert_stamped(m: Metrics, total: int) -> None:
    """Every request has a queue wait from the proxy's stamp, in the right unit."""
    assert m.sum("workermeter_requests_total") == total
    count = m.sum("workermeter_queue_wait_seconds_count")
    assert count == total
    assert m.sum("workermeter_queue_wait_rejected_total") == 0
    # Tens of milliseconds at most (4 clients, one worker, 10 ms handlers): a unit read wrong
    # would be off by a factor of 1000 or rejected.
    assert 0 < m.sum("workermeter_queue_wait_seconds_sum") / count < 0.5


# --------------------------------------------------------------------------- nginx


def nginx_servers() -> list[str]:
    """The ``server { ... }`` blocks of ``integrations/nginx.conf``, in order."""
    blocks: list[str] = []
    current: list[str] = []
    depth = 0
    for line in (INTEGRATIONS / "nginx.conf").read_text().splitlines():
        code = line.split("#", 1)[0]
        if not current and code.strip() != "server {":
            continue
        current.append(line)
        depth += code.count("{") - code.count("}")
        if depth == 0:
            blocks.append("\n".join(current) + "\n")
            current = []
    assert len(blocks) == 2, "integrations/nginx.conf: expected a proxy_pass and a uwsgi_pass block"
    return blocks


@contextlib.contextmanager
def nginx(tmp_path: Path, block: str, replacements: Mapping[str, str]) -> Iterator[Server]:
    """nginx serving one server block of ``integrations/nginx.conf``; ``{port}`` in a
    replacement stands for the port nginx listens on."""
    binary = tool("nginx", "apt-get install nginx")
    prefix = tmp_path / "nginx"
    prefix.mkdir(parents=True, exist_ok=True)
    # `include uwsgi_params` is relative to the directory of the main configuration file.
    shutil.copy("/etc/nginx/uwsgi_params", prefix / "uwsgi_params")

    def argv(port: int) -> list[str]:
        site = block
        for old, new in replacements.items():
            assert old in site, f"{old!r} is no longer in integrations/nginx.conf"
            site = site.replace(old, new.format(port=port))
        return nginx_argv(binary, prefix, site)

    with running(launch("nginx", argv, log=prefix / "stdout.log", env=server_env(None))) as server:
        yield server


def test_nginx_proxy_pass(tmp_path: Path) -> None:
    block = nginx_servers()[0]
    with gunicorn(tmp_path, workers=1, store=tmp_path / "store") as app:
        replacements = {
            "listen 80;": "listen 127.0.0.1:{port};",
            "proxy_pass http://127.0.0.1:8000;": f"proxy_pass http://127.0.0.1:{app.port};",
        }
        with nginx(tmp_path, block, replacements) as front:
            statuses = drive(front.url, paths(), clients=CLIENTS, headers=FORGED)
            refused = refused_through(front)
        m = scrape_idle(app.url)

    assert statuses == [200] * REQUESTS
    assert refused == 404
    assert_stamped(m, REQUESTS)


def test_nginx_uwsgi_pass(tmp_path: Path) -> None:
    """The uwsgi protocol carries variables, not headers: ``uwsgi_param HTTP_X_REQUEST_START``
    after ``include uwsgi_params`` replaces the client's header."""
    block = nginx_servers()[1]
    with uwsgi(tmp_path, processes=1, threads=None, uwsgi_socket=True) as (app, ports):
        replacements = {
            "listen 81;": "listen 127.0.0.1:{port};",
            "uwsgi_pass 127.0.0.1:8001;": f"uwsgi_pass 127.0.0.1:{ports['uwsgi']};",
        }
        with nginx(tmp_path, block, replacements) as front:
            statuses = drive(front.url, paths(), clients=CLIENTS, headers=FORGED)
        m = scrape_idle(app.url)

    assert statuses == [200] * REQUESTS
    assert_stamped(m, REQUESTS)


# --------------------------------------------------------------------------- Apache


@pytest.mark.parametrize(
    ("line", "stamped"),
    [
        pytest.param('"%t"', True, id="as-shipped"),
        # %t writes "t=" itself: "t=%t" sends "t=t=1700000000123456", which is no timestamp.
        pytest.param('"t=%t"', False, id="t=%t-is-wrong"),
    ],
)
def test_apache_mod_proxy(tmp_path: Path, line: str, stamped: bool) -> None:
    with gunicorn(tmp_path, workers=1, store=tmp_path / "store") as app:

        def site(port: int) -> str:
            return shipped("apache-proxy.conf", {
                "<VirtualHost *:80>": f"<VirtualHost *:{port}>",
                "http://127.0.0.1:8000/": f"http://127.0.0.1:{app.port}/",
                'X-Request-Start "%t"': f"X-Request-Start {line}",
            })  # fmt: skip

        with apache(tmp_path, site, modules=("proxy", "proxy_http")) as front:
            statuses = drive(front.url, paths(), clients=CLIENTS, headers=FORGED)
            refused = refused_through(front)
        m = scrape_idle(app.url)

    assert statuses == [200] * REQUESTS
    assert refused == 404
    if stamped:
        assert_stamped(m, REQUESTS)
    else:
        assert m.sum("workermeter_queue_wait_seconds_count") == 0
        assert m.by("workermeter_queue_wait_rejected_total", "reason")[UNPARSABLE] == REQUESTS


# --------------------------------------------------------------------------- HAProxy


def haproxy_config(tmp_path: Path, text: str) -> list[str]:
    binary = tool("haproxy", "apt-get install haproxy")
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    return [binary, "-db", "-f", str(path)]


def test_haproxy(tmp_path: Path) -> None:
    with gunicorn(tmp_path, workers=1, store=tmp_path / "store") as app:

        def argv(port: int) -> list[str]:
            return haproxy_config(tmp_path, shipped("haproxy.cfg", {
                "bind :80": f"bind 127.0.0.1:{port}",
                "server app1 127.0.0.1:8000": f"server app1 127.0.0.1:{app.port}",
            }))  # fmt: skip

        log = tmp_path / "haproxy.log"
        with running(launch("haproxy", argv, log=log, env=server_env(None))) as front:
            statuses = drive(front.url, paths(), clients=CLIENTS, headers=FORGED)
            refused = refused_through(front)
        m = scrape_idle(app.url)

    assert statuses == [200] * REQUESTS
    assert refused == 404
    assert_stamped(m, REQUESTS)


_HAPROXY_ECHO = """\
defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s

frontend echo
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain lf-string "{shipped} {naive}"
"""


def test_haproxy_stamp_is_zero_padded(tmp_path: Path) -> None:
    """The shipped ``t=%[date(0,us)]`` always has 16 digits. ``t=%[date()]%[date_us()]`` does
    not: ``date_us`` is not zero-padded, so in the first 100 ms of each second the value is
    short and reads as a time in the future."""
    shipped_stamp = re.findall(
        r"set-header X-Request-Start (\S+)", (INTEGRATIONS / "haproxy.cfg").read_text()
    )
    assert shipped_stamp == ["t=%[date(0,us)]"]
    naive = "t=%[date()]%[date_us()]"

    def argv(port: int) -> list[str]:
        echo = _HAPROXY_ECHO.format(port=port, shipped=shipped_stamp[0], naive=naive)
        return haproxy_config(tmp_path, echo)

    good: list[str] = []
    short: list[str] = []
    log = tmp_path / "haproxy.log"
    with (
        running(launch("haproxy", argv, log=log, env=server_env(None))) as front,
        requests.Session() as session,
    ):
        # Each second has 100 ms of short values: ask until one is seen, for at most 2.5 s.
        deadline = time.monotonic() + 2.5
        while not short and time.monotonic() < deadline:
            with session.get(front.url + "/", timeout=REQUEST_TIMEOUT) as r:
                ours, theirs = r.text.split()
            good.append(ours)
            if len(theirs) < len("t=") + 16:
                short.append(theirs)
            time.sleep(0.002)

    assert all(re.fullmatch(r"t=\d{16}", value) for value in good), good
    assert short, "no short date_us value seen in 2.5 s"
    # 4 or 5 digits of date_us read as milliseconds centuries ahead: rejected. 3 digits (the first
    # millisecond of a second) read as a millisecond stamp up to 1 s ahead: counted as clock
    # skew, with no wait. Never a wait.
    now = time.time()
    assert all(queue_wait([value], now)[1] in (FUTURE, SKEW) for value in short), short
    wait, reason = queue_wait(good[-1:], time.time())
    assert reason is None and wait is not None and 0 <= wait < 1


# --------------------------------------------------------------------------- Caddy


def test_caddy(tmp_path: Path) -> None:
    binary = tool("caddy", "apt-get install caddy")
    home = tmp_path / "caddy-home"
    home.mkdir()
    env = server_env(
        None, HOME=str(home), XDG_CONFIG_HOME=str(home / "config"), XDG_DATA_HOME=str(home / "data")
    )
    with gunicorn(tmp_path, workers=1, store=tmp_path / "store") as app:

        def argv(port: int) -> list[str]:
            # The admin endpoint listens on a fixed port by default: not in a test.
            text = "{\n\tadmin off\n}\n\n" + shipped("Caddyfile", {
                "app.example.com {": f"http://127.0.0.1:{port} {{",
                "reverse_proxy 127.0.0.1:8000": f"reverse_proxy 127.0.0.1:{app.port}",
            })  # fmt: skip
            path = tmp_path / "Caddyfile"
            path.write_text(text)
            return [binary, "run", "--config", str(path), "--adapter", "caddyfile"]

        with running(launch("caddy", argv, log=tmp_path / "caddy.log", env=env)) as front:
            statuses = drive(front.url, paths(), clients=CLIENTS, headers=FORGED)
            refused = refused_through(front)
        m = scrape_idle(app.url)

    assert statuses == [200] * REQUESTS
    assert refused == 404
    assert_stamped(m, REQUESTS)


# --------------------------------------------------------------------------- Prometheus


def test_prometheus_scrapes_the_app_and_the_exporter(tmp_path: Path) -> None:
    """``prometheus.yml``: promtool accepts it as shipped; a real Prometheus scrapes both jobs
    (the app's own /metrics and ``workermeter serve`` on a port of its own) and sees the same
    total from each."""
    promtool = tool("promtool", "apt-get install prometheus")
    prometheus = tool("prometheus", "apt-get install prometheus")
    check = subprocess.run(
        [promtool, "check", "config", str(INTEGRATIONS / "prometheus.yml")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr

    store = tmp_path / "store"
    config = tmp_path / "prometheus.yml"
    with gunicorn(tmp_path, workers=2, store=store) as app:
        statuses = drive(app.url, paths())  # the workers create the store the exporter reads
        with running(launch(
            "workermeter serve",
            lambda port: [sys.executable, "-m", "workermeter", "serve", "--port", str(port)],
            log=tmp_path / "exporter.log",
            env=server_env(store),
        )) as exporter:  # fmt: skip

            def argv(port: int) -> list[str]:
                targets = {
                    '"127.0.0.1:8000"': f'"127.0.0.1:{app.port}"',
                    '"127.0.0.1:9191"': f'"127.0.0.1:{exporter.port}"',
                }
                # Scraped every second rather than every 15: the test waits for a scrape.
                text = "global:\n  scrape_interval: 1s\n\n" + shipped("prometheus.yml", targets)
                config.write_text(text)
                return [
                    prometheus,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ]

            log = tmp_path / "prometheus.log"
            with running(launch(
                "prometheus", argv, log=log, env=server_env(None), ready_path="/-/ready"
            )) as prom:  # fmt: skip
                totals = _wait_for_totals(prom.url, {"myproject", "myproject-workermeter"})

    assert statuses == [200] * REQUESTS
    assert totals == {"myproject": REQUESTS, "myproject-workermeter": REQUESTS}


def _wait_for_totals(url: str, jobs: set[str], timeout: float = 15.0) -> dict[str, float]:
    """``sum by (job) (workermeter_requests_total)`` once Prometheus has scraped every job."""
    query = "sum by (job) (workermeter_requests_total)"
    deadline = time.monotonic() + timeout
    while True:
        with requests.get(
            url + "/api/v1/query", params={"query": query}, timeout=REQUEST_TIMEOUT
        ) as r:
            result = r.json().get("data", {}).get("result", []) if r.ok else []
        totals = {s["metric"]["job"]: float(s["value"][1]) for s in result}
        if set(totals) == jobs:
            return totals
        if time.monotonic() > deadline:
            raise TimeoutError(f"Prometheus has scraped only {sorted(totals)} of {sorted(jobs)}")
        time.sleep(0.2)
