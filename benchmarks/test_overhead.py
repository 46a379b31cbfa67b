"""Per-request overhead under pytest-benchmark: ``pytest benchmarks/ --benchmark-only``.

Compare each meter with the bare app of the same group; ``report.py`` prints the same comparison
as time added per request, from interleaved rounds.
"""

from __future__ import annotations

import pytest
from cases import asgi_cases, wsgi_cases
from pytest_benchmark.fixture import BenchmarkFixture

WSGI = wsgi_cases()
ASGI = asgi_cases()


@pytest.mark.parametrize("name", list(WSGI))
def test_wsgi(benchmark: BenchmarkFixture, name: str) -> None:
    benchmark.group = "wsgi"
    benchmark(WSGI[name])


@pytest.mark.parametrize("name", list(ASGI))
def test_asgi(benchmark: BenchmarkFixture, name: str) -> None:
    benchmark.group = "asgi"
    benchmark(ASGI[name])
