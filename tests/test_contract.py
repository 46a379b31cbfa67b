"""The metric contract: the docs, the code and a real scrape agree."""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from workermeter import WSGIMiddleware, metrics
from workermeter.wsgi import Environ, StartResponse

ROOT = Path(__file__).resolve().parents[1]


def test_docs_table_is_generated_from_the_code() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text()
    assert metrics.markdown_table() in doc


def test_names_follow_prometheus_conventions() -> None:
    seen: set[str] = set()
    for metric in metrics.METRICS:
        assert metric.name.startswith("workermeter_")
        assert metric.name not in seen
        seen.add(metric.name)
        assert not metric.name.endswith("_total"), "the _total suffix is added for counters"
        if metric.unit in ("seconds", "bytes"):
            assert f"_{metric.unit}" in metric.name
        assert metric.help.endswith(".")


def test_buckets_cover_idle_and_overload() -> None:
    assert tuple(sorted(metrics.BUCKETS)) == metrics.BUCKETS
    assert metrics.BUCKETS[-1] >= 60
    fine = [b for b in metrics.BUCKETS if 0.001 <= b <= 1.0]
    assert len(fine) >= 20
    # No gap wider than 2x between neighbours from 1 ms up: quantiles stay within a factor of 2.
    for low, high in zip(metrics.BUCKETS, metrics.BUCKETS[1:], strict=False):
        if low >= 0.001:
            assert high / low <= 2.5


def _app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_a_scrape_exposes_exactly_the_declared_metrics(tmp_path: Path) -> None:
    mw = WSGIMiddleware(_app, directory=tmp_path, threads=4, route=lambda e: "/r")
    env: Environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/r",
        "wsgi.multithread": True,
        "HTTP_X_REQUEST_START": f"t={time.time():.3f}",
    }
    for _ in range(3):
        body = mw(dict(env), lambda status, headers, exc_info=None: lambda data: None)
        list(body)
        getattr(body, "close")()  # noqa: B009
    out = mw(
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "REMOTE_ADDR": "127.0.0.1"},
        lambda status, headers, exc_info=None: lambda data: None,
    )
    text = b"".join(out).decode()
    exposed = {f.name for f in text_string_to_metric_families(text)}
    declared = {m.name for m in metrics.METRICS}
    assert exposed == declared
