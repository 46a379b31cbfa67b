"""A real nginx stamping ``X-Request-Start: t=${msec}`` in front of a real gunicorn.

nginx is a Debian package that ``scripts/test.sh`` installs; without it these tests fail (they do
not skip), so a CI machine missing it cannot pass unnoticed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from servers import REQUEST_TIMEOUT, drive, find_nginx, gunicorn, nginx, scrape_idle

NGINX = find_nginx()
MISSING = (
    "nginx is not installed: `apt-get install nginx` (scripts/test.sh does it) or put it on PATH; "
    "the nginx tests fail rather than skip so that CI cannot pass without them"
)


def require_nginx() -> str:
    """The nginx binary; the calling test fails (not skips) when there is none."""
    if NGINX is None:
        pytest.fail(MISSING, pytrace=False)
    return NGINX


REQUESTS = 50
CLIENTS = 4
HANDLER_MS = 20


def test_queue_wait_through_nginx(tmp_path: Path) -> None:
    nginx_binary = require_nginx()
    with (
        gunicorn(tmp_path, workers=1, store=tmp_path / "store") as app,
        nginx(tmp_path, upstream=app.port, binary=nginx_binary) as proxy,
    ):
        # The clients forge a start 20 years old: nginx must overwrite it with its own stamp.
        statuses = drive(
            proxy.url,
            [f"/sleep?ms={HANDLER_MS}"] * REQUESTS,
            clients=CLIENTS,
            headers={"X-Request-Start": "t=1100000000"},
        )
        # Through nginx the scrape carries X-Forwarded-For: not a local client, so 404.
        with requests.get(proxy.url + "/metrics", timeout=REQUEST_TIMEOUT) as forwarded:
            refused = forwarded.status_code
        m = scrape_idle(app.url)
        access_log = (tmp_path / "nginx" / "access.log").read_text()

    assert statuses == [200] * REQUESTS
    assert refused == 404
    assert access_log.count('"GET /sleep') == REQUESTS
    assert m.sum("workermeter_requests_total") == REQUESTS
    count = m.sum("workermeter_queue_wait_seconds_count")
    assert count == REQUESTS
    assert m.sum("workermeter_queue_wait_rejected_total") == 0
    # 4 clients on one single-threaded worker with 20 ms handlers: most requests wait for
    # others to finish, so the mean wait is tens of milliseconds.
    assert m.sum("workermeter_queue_wait_seconds_sum") / count > 0.01
    assert m.sum("workermeter_queue_wait_seconds_bucket", le="+Inf") == REQUESTS
    assert m.sum("workermeter_queue_wait_seconds_bucket", le="0.005") < REQUESTS
