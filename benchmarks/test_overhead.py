"""Per-request overhead under pytest-benchmark: ``pytest benchmarks/ --benchmark-only``.

Compare each meter with the bare app of the same group; ``report.py`` prints the same comparison
as time added per request, from interleaved rounds. Framework ASGI cases run their event loop
once per request here, which adds the same loop cost to every case of the group.
"""

from __future__ import annotations

import pytest
from cases import Case
from pytest_benchmark.fixture import BenchmarkFixture
from report import GROUPS

CASES: list[tuple[str, str, Case | str]] = [
    (group, name, case) for group, build in GROUPS.items() for name, case in build().items()
]


@pytest.mark.parametrize(
    "group, name, case", [pytest.param(*c, id=f"{c[0]}-{c[1]}") for c in CASES]
)
def test_overhead(benchmark: BenchmarkFixture, group: str, name: str, case: Case | str) -> None:
    if isinstance(case, str):
        pytest.skip(case)
    benchmark.group = group
    benchmark(case)
