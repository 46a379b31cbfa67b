"""Tests for the capacity model: Erlang C, the seeds' worked examples, a simulation, the docs."""

from __future__ import annotations

import doctest
import functools
import math
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulation import Result, simulate
from workermeter.capacity import (
    BlockingRoute,
    LoopDemand,
    Machine,
    Suggestion,
    Targets,
    Workload,
    erlang_c,
    mean_wait,
    suggest,
    wait_percentile,
)
from workermeter.metrics import METRICS, sample_names

MIB = 1 << 20
GIB = 1 << 30
DOC = Path(__file__).resolve().parent.parent / "docs" / "capacity.md"


def exact_erlang_c(servers: int, load: Fraction) -> Fraction:
    """Erlang C straight from its textbook definition, in exact fractions (small c only)."""
    tail = load**servers / math.factorial(servers) * servers / (servers - load)
    head = sum((load**k / math.factorial(k) for k in range(servers)), Fraction(0))
    return tail / (head + tail)


def log_erlang_c(servers: int, load: float) -> float:
    """Erlang C from log-gamma terms: a second, independent formula that works for large c.

    Dividing the definition by A^c/c!: C = X / (X + sum_k c!/k! * A^(k-c)), X = c / (c - A).
    """
    logs = [
        math.lgamma(servers + 1) - math.lgamma(k + 1) + (k - servers) * math.log(load)
        for k in range(servers)
    ]
    top = max(logs)
    head = math.exp(top) * math.fsum(math.exp(x - top) for x in logs)
    x = servers / (servers - load)
    return x / (x + head)


# --- Erlang C -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("servers", "load", "expected"),
    [
        pytest.param(1, 0.5, 0.5, id="M/M/1: P(wait) = rho"),
        pytest.param(2, 1.0, 1 / 3, id="c=2,A=1"),
        pytest.param(10, 8.0, 0.4092, id="c=10,A=8"),
        pytest.param(3, 2.0, 4 / 9, id="c=3,A=2"),
        pytest.param(5, 4.0, 0.5541, id="c=5,A=4"),
    ],
)
def test_erlang_c_textbook(servers: int, load: float, expected: float) -> None:
    assert erlang_c(servers, load) == pytest.approx(expected, abs=5e-5)


@given(
    servers=st.integers(1, 40),
    numerator=st.integers(1, 999),
)
def test_erlang_c_matches_exact_fractions(servers: int, numerator: int) -> None:
    load = Fraction(numerator * servers, 1000)  # rho = numerator / 1000, below 1
    expected = float(exact_erlang_c(servers, load))
    assert erlang_c(servers, float(load)) == pytest.approx(expected, rel=1e-12, abs=1e-300)


@pytest.mark.parametrize(
    ("servers", "load"),
    [(5000, 4990.0), (10_000, 9990.0), (10_000, 9000.0), (2000, 1999.9), (300, 150.0)],
)
def test_erlang_c_stable_for_many_servers(servers: int, load: float) -> None:
    value = erlang_c(servers, load)
    assert 0.0 < value < 1.0
    assert value == pytest.approx(log_erlang_c(servers, load), rel=1e-9)


def test_erlang_c_near_saturation_and_beyond() -> None:
    for servers in (1, 2, 100, 10_000):
        below = erlang_c(servers, servers * (1 - 1e-12))
        assert 0.999 < below <= 1.0
        assert erlang_c(servers, float(servers)) == 1.0
        assert erlang_c(servers, servers + 0.5) == 1.0
        assert mean_wait(servers, float(servers), 0.1) == math.inf
        assert wait_percentile(servers, servers * 2.0, 0.1) == math.inf


def test_no_load_means_no_wait() -> None:
    assert erlang_c(1, 0.0) == 0.0
    assert erlang_c(10_000, 0.0) == 0.0
    assert mean_wait(3, 0.0, 0.2) == 0.0
    assert wait_percentile(3, 0.0, 0.2) == 0.0


@settings(max_examples=300)
@given(servers=st.integers(1, 300), rho=st.floats(0.001, 0.999))
def test_more_servers_wait_less(servers: int, rho: float) -> None:
    load = rho * servers
    assert erlang_c(servers + 1, load) <= erlang_c(servers, load)
    assert mean_wait(servers + 1, load, 1.0) <= mean_wait(servers, load, 1.0)


@settings(max_examples=300)
@given(servers=st.integers(1, 300), rho=st.floats(0.001, 0.99), more=st.floats(1.0, 1.01))
def test_more_load_waits_more(servers: int, rho: float, more: float) -> None:
    load = rho * servers
    assert erlang_c(servers, load * more) >= erlang_c(servers, load)
    assert wait_percentile(servers, load * more, 1.0) >= wait_percentile(servers, load, 1.0)


def test_single_server_formulas() -> None:
    # M/M/1: W = rho / (mu - lambda); P(W > t) = rho * exp(-(mu - lambda) t).
    service, rho = 0.05, 0.8
    mu, lam = 1 / service, rho / service
    assert mean_wait(1, rho, service) == pytest.approx(rho / (mu - lam))
    assert wait_percentile(1, rho, service) == pytest.approx(math.log(rho / 0.05) / (mu - lam))
    # M/D/1, Pollaczek-Khinchine: W = rho * S / (2 (1 - rho)); Allen-Cunneen is exact here.
    assert mean_wait(1, rho, service, cv=0) == pytest.approx(rho * service / (2 * (1 - rho)))
    # Fewer than 5 % of requests wait at all: the p95 wait is 0.
    assert wait_percentile(8, 2.0, service) == 0.0


BAD_CALLS = [
    pytest.param(lambda: erlang_c(0, 1.0), "servers", id="no-servers"),
    pytest.param(lambda: erlang_c(True, 1.0), "servers", id="bool-servers"),
    pytest.param(lambda: erlang_c(2.0, 1.0), "servers", id="float-servers"),  # type: ignore[arg-type]
    pytest.param(lambda: erlang_c(2, -1.0), "offered_load", id="negative-load"),
    pytest.param(lambda: erlang_c(2, math.nan), "offered_load", id="nan-load"),
    pytest.param(lambda: erlang_c(2, math.inf), "offered_load", id="inf-load"),
    pytest.param(lambda: mean_wait(2, 1.0, 0.0), "service_time", id="zero-service"),
    pytest.param(lambda: mean_wait(2, 1.0, 0.1, cv=-1), "cv", id="negative-cv"),
    pytest.param(lambda: wait_percentile(2, 1.0, 0.1, quantile=1.0), "quantile", id="q=1"),
    pytest.param(lambda: wait_percentile(2, 1.0, 0.1, quantile=95), "quantile", id="q=95"),
    pytest.param(lambda: Workload(-1, 0.1, 0.5), "peak_rate", id="negative-rate"),
    pytest.param(lambda: Workload(10, -0.1, 0.5), "service_time", id="negative-service"),
    pytest.param(lambda: Workload(10, 0.1, 1.5), "cpu_share", id="cpu-share-above-1"),
    pytest.param(lambda: Workload(10, 0.1, 0.5, service_cv=-0.1), "cv", id="negative-cv-w"),
    pytest.param(lambda: Workload(10, 0.1, 0.5, typical_rate=20), "typical_rate", id="typ>peak"),
    pytest.param(lambda: Workload(10, 0.1, 0.5, utilisation=1.2), "utilisation", id="util>1"),
    pytest.param(lambda: Workload(10, 0.1, 0.5, all_busy_share=-1), "all_busy", id="share<0"),
    pytest.param(lambda: Workload("10", 0.1, 0.5), "peak_rate", id="str-rate"),  # type: ignore[arg-type]
    pytest.param(lambda: Machine(0.5, 4 * GIB, 150 * MIB), "cores", id="half-core"),
    pytest.param(lambda: Machine(2, 4 * GIB, 0), "process_rss", id="no-rss"),
    pytest.param(lambda: Machine(2, 4 * GIB, 100 * MIB, 200 * MIB), "process_uss", id="uss>rss"),
    pytest.param(lambda: Machine(2, 4 * GIB, 100 * MIB, threads=0), "threads", id="no-threads"),
    pytest.param(lambda: Machine(2, 1 * GIB, 100 * MIB), "reserve", id="nothing-fits"),
    pytest.param(lambda: Machine(2, 4 * GIB, 9, reserve_other=-1), "reserve_other", id="res<0"),
    pytest.param(lambda: Targets(utilisation=0), "utilisation", id="target-0"),
    pytest.param(lambda: Targets(utilisation=80), "utilisation", id="target-80"),
    pytest.param(lambda: Targets(wait=-0.1), "wait", id="negative-wait"),
    pytest.param(lambda: Targets(wait_quantile=0), "quantile", id="quantile-0"),
    pytest.param(
        lambda: suggest(Workload(1, 0.1, 0.5), Machine(2, 4 * GIB, MIB), max_threads=0),
        "max_threads",
        id="max-threads-0",
    ),
]


@pytest.mark.parametrize(("call", "name"), BAD_CALLS)
def test_invalid_input_says_what_to_pass(call: Any, name: str) -> None:
    with pytest.raises(ValueError, match=name) as info:
        call()
    assert re.search(r"must|cannot|pass", str(info.value))


# --- the seeds' worked examples -----------------------------------------------------------------


def test_pythonanywhere_three_workers_at_full_load_four_at_80_percent() -> None:
    # "If your code takes 0.2 seconds ... and you need to handle 15 requests a second at peak
    # times of the day, that means you need three workers." Single-threaded workers.
    app = Workload(peak_rate=15, service_time=0.2, cpu_share=0.3)
    box = Machine(cores=4, memory_total=4 * GIB, process_rss=150 * MIB)
    full = suggest(app, box, Targets(utilisation=1.0), max_threads=1)
    assert full.offered_load == pytest.approx(3.0)
    assert (full.slots_for_utilisation, full.processes, full.threads) == (3, 3, 1)
    assert full.mean_wait == math.inf  # 100 % busy: the queue never drains
    assert "never drains" in full.reasons[1]
    usual = suggest(app, box, max_threads=1)
    assert (usual.slots_for_utilisation, usual.processes, usual.threads) == (4, 4, 1)
    assert usual.utilisation == pytest.approx(0.75)


def test_server_fault_memory_ceiling_for_two_sites_on_a_4_gb_box() -> None:
    # 4 GB box, 512 MB for the system, 512 MB more, 150 MiB per process: 3072 / 150 = 20.
    box = Machine(cores=4, memory_total=4 * GIB, process_rss=150 * MIB)
    assert box.memory_ceiling == 20
    # The second site's 10 processes count as "other processes" for the first one.
    site = Machine(
        cores=2, memory_total=4 * GIB, process_rss=150 * MIB, reserve_other=512 * MIB + 1500 * MIB
    )
    assert site.memory_ceiling == 10
    # Forked workers sharing pages: the first at RSS, the rest at USS: 1 + (3072 - 150) // 90.
    shared = Machine(cores=4, memory_total=4 * GIB, process_rss=150 * MIB, process_uss=90 * MIB)
    assert shared.memory_ceiling == 33
    # More processes than fit: a second machine, and the reason says memory.
    busy = suggest(Workload(peak_rate=400, service_time=0.25, cpu_share=0.01), site)
    assert busy.limited_by == "memory"
    assert busy.machines > 1
    assert busy.processes <= site.memory_ceiling
    assert any("fit in memory" in reason for reason in busy.reasons)


def test_cpu_bound_gets_processes_io_bound_gets_threads() -> None:
    box = Machine(cores=2, memory_total=4 * GIB, process_rss=150 * MIB)
    cpu = suggest(Workload(peak_rate=30, service_time=0.05, cpu_share=0.9), box)
    io = suggest(Workload(peak_rate=30, service_time=0.3, cpu_share=0.1), box)
    assert (cpu.processes, cpu.threads) == (2, 1)
    assert (io.processes, io.threads) == (2, 6)
    assert any("GIL" in reason and "processes, not threads" in reason for reason in cpu.reasons)
    assert any("GIL" in reason and "wait on I/O" in reason for reason in io.reasons)
    assert cpu.cpu_ceiling == pytest.approx(2 / 0.9)
    assert io.cpu_ceiling == pytest.approx(20)
    capped = suggest(Workload(peak_rate=30, service_time=0.3, cpu_share=0.1), box, max_threads=4)
    assert capped.threads <= 4


def test_utilisation_method_is_promql_simple() -> None:
    # slots = ceil(busy_rate / target), processes = ceil(slots / threads).
    for rate, service, target in [(15, 0.2, 0.8), (100, 0.035, 0.7), (7, 1.3, 0.9)]:
        result = suggest(
            Workload(peak_rate=rate, service_time=service, cpu_share=1.0),
            Machine(cores=64, memory_total=64 * GIB, process_rss=100 * MIB),
            Targets(utilisation=target),
        )
        slots = math.ceil(rate * service / target - 1e-9)
        assert result.slots_for_utilisation == slots
        assert result.processes == math.ceil(slots / result.threads)


def test_wait_target_adds_slots() -> None:
    app = Workload(peak_rate=15, service_time=0.2, cpu_share=0.3)
    box = Machine(cores=4, memory_total=4 * GIB, process_rss=150 * MIB)
    result = suggest(app, box, Targets(wait=0.1), max_threads=1)
    assert result.slots_for_wait == 6
    assert result.wait_at_quantile <= 0.1
    assert wait_percentile(5, 3.0, 0.2) > 0.1  # 5 would not do
    deterministic = Workload(peak_rate=15, service_time=0.2, cpu_share=0.3, service_cv=0)
    assert suggest(deterministic, box, Targets(wait=0.1)).slots_for_wait == 5


def test_no_traffic_still_needs_one_worker() -> None:
    result = suggest(
        Workload(peak_rate=0, service_time=0.1, cpu_share=0.5, typical_rate=0),
        Machine(cores=1, memory_total=2 * GIB, process_rss=100 * MIB),
        Targets(wait=0.0),
    )
    assert (result.processes, result.threads, result.machines) == (1, 1, 1)
    assert result.slots_for_wait == 1
    assert result.mean_wait == 0.0
    assert result.typical_utilisation == 0.0


# --- honest under overload ----------------------------------------------------------------------


def test_saturated_input_is_a_lower_bound() -> None:
    box = Machine(cores=8, memory_total=8 * GIB, process_rss=150 * MIB, processes=4, threads=2)
    calm = suggest(Workload(peak_rate=20, service_time=0.2, cpu_share=0.2), box)
    assert not calm.lower_bound
    assert not any("lower bound" in reason for reason in calm.reasons)
    for workload in [
        Workload(peak_rate=20, service_time=0.2, cpu_share=0.2, utilisation=0.97),
        Workload(peak_rate=20, service_time=0.2, cpu_share=0.2, all_busy_share=0.93),
        Workload(peak_rate=20, service_time=0.2, cpu_share=0.2, wait_growing=True),
        Workload(peak_rate=39, service_time=0.2, cpu_share=0.2),  # 7.8 of 8 slots busy
    ]:
        result = suggest(workload, box)
        assert result.lower_bound
        (reason,) = [r for r in result.reasons if "lower bound" in r]
        assert reason.startswith("The workers were saturated (")


def test_cpu_bound_on_two_cores_is_told_cores_are_the_limit() -> None:
    # FACTS: 4 CPU-bound workers on 2 cores made requests slower while busy time asked for more.
    box = Machine(cores=2, memory_total=4 * GIB, process_rss=150 * MIB, processes=2)
    app = Workload(peak_rate=40, service_time=0.05, cpu_share=0.95, utilisation=0.97)
    result = suggest(app, box)
    assert result.limited_by == "cpu"
    assert result.machines == 2
    assert result.processes <= 2
    assert result.lower_bound
    (reason,) = [r for r in result.reasons if "cores are the limit" in r]
    assert "more workers on this machine will not help" in reason
    # Already running more workers than cores, within the CPU's reach: still told.
    over = Machine(cores=2, memory_total=4 * GIB, process_rss=150 * MIB, processes=4)
    fewer = suggest(Workload(peak_rate=30, service_time=0.05, cpu_share=0.9), over)
    assert fewer.processes == 2
    assert any("cores are the limit" in r for r in fewer.reasons)
    assert any("waiting for a core" in r for r in fewer.reasons)
    # An I/O-bound app on the same two cores is not told so.
    io = suggest(Workload(peak_rate=30, service_time=0.3, cpu_share=0.1), over)
    assert not any("cores are the limit" in r for r in io.reasons)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0, 2000),
    service=st.floats(0.001, 5),
    share=st.floats(0, 1),
    cv=st.floats(0, 3),
    cores=st.integers(1, 64),
    rss_mib=st.integers(20, 1000),
    target=st.floats(0.05, 1.0),
    wait=st.none() | st.floats(0, 2),
)
def test_suggestion_meets_its_targets_within_its_ceilings(
    rate: float,
    service: float,
    share: float,
    cv: float,
    cores: int,
    rss_mib: int,
    target: float,
    wait: float | None,
) -> None:
    machine = Machine(cores=cores, memory_total=64 * GIB, process_rss=rss_mib * MIB)
    result = suggest(
        Workload(peak_rate=rate, service_time=service, cpu_share=share, service_cv=cv),
        machine,
        Targets(utilisation=target, wait=wait),
    )
    assert isinstance(result, Suggestion)
    assert result.utilisation <= target + 1e-9
    if wait is not None:
        assert result.wait_at_quantile <= wait + 1e-12
    assert 1 <= result.processes <= machine.memory_ceiling
    assert 1 <= result.threads <= 8
    assert result.slots >= result.slots_for_utilisation
    assert result.slots >= (result.slots_for_wait or 0)
    assert (result.machines > 1) == (result.limited_by is not None)
    if result.cpu_ceiling is not None:  # slots needed on one machine fit its cores
        assert result.utilisation * result.processes * result.threads * share <= cores + 1e-9
    assert all(reason.endswith(".") for reason in result.reasons)
    if share > 0.5:  # CPU-bound: one thread per process, and the reason says why
        assert result.threads == 1
        assert any("processes, not threads" in reason for reason in result.reasons)
    else:
        assert not any("processes, not threads" in reason for reason in result.reasons)


# --- against a simulation -----------------------------------------------------------------------

SERVICE = 0.05  # 50 ms handlers, as in the FACTS testbed
CASES = [(cv, rho, c) for cv in (1.0, 0.0) for rho in (0.5, 0.8, 0.9) for c in (1, 2, 4, 8)]


@functools.cache
def simulated(cv: float, rho: float, servers: int) -> Result:
    return simulate(servers, rho * servers / SERVICE, SERVICE, cv, seed=1)


def mean_tolerance(cv: float, rho: float) -> float:
    """Stated error of the mean wait: exact for M/M/c (up to simulation noise); Allen-Cunneen
    under-predicts fixed service times at low load, where waits are tiny."""
    return 0.05 if cv == 1 or rho >= 0.8 else 0.20


def p95_within(model: float, simulated_p95: float, cv: float, rho: float) -> bool:
    if cv == 1 or rho >= 0.8:
        return abs(model - simulated_p95) <= 0.07 * simulated_p95
    return abs(model - simulated_p95) <= max(0.20 * simulated_p95, 0.01 * SERVICE)


@pytest.mark.parametrize(("cv", "rho", "servers"), CASES)
def test_model_mean_wait_matches_simulation(cv: float, rho: float, servers: int) -> None:
    result = simulated(cv, rho, servers)
    assert result.busy_share == pytest.approx(rho, abs=0.02)  # utilisation = lambda*S/c
    model = mean_wait(servers, rho * servers, SERVICE, cv=cv)
    assert model == pytest.approx(result.mean_wait, rel=mean_tolerance(cv, rho))


@pytest.mark.parametrize(("cv", "rho", "servers"), CASES)
def test_model_p95_wait_matches_simulation(cv: float, rho: float, servers: int) -> None:
    result = simulated(cv, rho, servers)
    model = wait_percentile(servers, rho * servers, SERVICE, cv=cv)
    assert p95_within(model, result.quantile(0.95), cv, rho)


@pytest.mark.parametrize(("rho", "servers"), [(rho, c) for _, rho, c in CASES if _ == 0.0])
def test_plain_erlang_c_overpredicts_fixed_service_times(rho: float, servers: int) -> None:
    # FACTS: queue wait followed M/D/c, and Erlang C over-predicted it about 2x.
    result = simulated(0.0, rho, servers)
    ratio = mean_wait(servers, rho * servers, SERVICE, cv=1.0) / result.mean_wait
    assert (1.85 if rho >= 0.8 else 1.5) <= ratio <= 2.1
    corrected = mean_wait(servers, rho * servers, SERVICE, cv=0.0) / result.mean_wait
    assert abs(corrected - 1) < abs(ratio - 1)


def test_simulation_is_repeatable() -> None:
    one = simulate(2, 30.0, SERVICE, 1.0, requests=20_000, warmup=1000, seed=7)
    two = simulate(2, 30.0, SERVICE, 1.0, requests=20_000, warmup=1000, seed=7)
    assert one.waits == two.waits
    assert len(one.waits) == 19_000
    gamma = simulate(2, 30.0, SERVICE, 0.5, requests=20_000, warmup=1000)
    assert 0 < gamma.mean_wait < one.mean_wait


def simulation_table() -> str:
    """The table of docs/capacity.md, from the same runs as the tests above."""

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.1f}"

    def err(model: float, measured: float) -> str:
        return f"{round((model / measured - 1) * 100):+d} %" if measured > 0 else "-"

    rows = [
        "| service time | utilisation | slots | mean wait, simulated | model | error "
        "| p95 wait, simulated | model | error |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cv, rho, servers in CASES:
        result = simulated(cv, rho, servers)
        model_mean = mean_wait(servers, rho * servers, SERVICE, cv=cv)
        model_p95 = wait_percentile(servers, rho * servers, SERVICE, cv=cv)
        rows.append(
            f"| {'exponential' if cv else 'fixed'} | {rho:.0%} | {servers} "
            f"| {ms(result.mean_wait)} ms | {ms(model_mean)} ms "
            f"| {err(model_mean, result.mean_wait)} "
            f"| {ms(result.quantile(0.95))} ms | {ms(model_p95)} ms "
            f"| {err(model_p95, result.quantile(0.95))} |"
        )
    return "\n".join(rows)


# --- the docs cannot drift from the model -------------------------------------------------------


def test_docs_simulation_table_is_current() -> None:
    table = simulation_table()
    assert table in DOC.read_text(encoding="utf-8"), f"update docs/capacity.md with:\n{table}"


def test_docs_examples_run() -> None:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"^```pycon\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)
    assert len(blocks) >= 4
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    globs: dict[str, Any] = {}
    for number, block in enumerate(blocks):
        test = parser.get_doctest(block, globs, f"capacity.md block {number}", str(DOC), 0)
        runner.run(test, clear_globs=False)
        globs = test.globs  # DocTest copies its globals: carry names on to the next block
    results = runner.summarize(verbose=False)
    assert results.attempted > 10
    assert results.failed == 0


def test_docs_use_only_declared_metrics() -> None:
    declared = {name for metric in METRICS for name in (metric.name, *sample_names(metric))}
    used = set(re.findall(r"workermeter_[a-z_]+", DOC.read_text(encoding="utf-8")))
    assert used
    assert used <= declared, f"not in the metric contract: {sorted(used - declared)}"


# --- async workers: event loops -----------------------------------------------------------------


def loops_box(**changes: Any) -> Machine:
    figures: dict[str, Any] = dict(
        cores=4, memory_total=4 * GIB, process_rss=200 * MIB, process_uss=50 * MIB
    )
    figures.update(changes)
    return Machine(**figures)


def test_async_suggestion_counts_loops_at_their_target() -> None:
    # 1.5 loop-seconds per second at 50 requests/s: 30 ms of loop time per request, 90 % CPU.
    app = Workload(
        peak_rate=50, service_time=0.04, cpu_share=0.5, loops=LoopDemand(busy=1.5, cpu_share=0.9)
    )
    answer = suggest(app, loops_box())
    assert answer.event_loops and not answer.loop_blocked and not answer.pool_limited
    # ceil(1.5 / 0.6) = ceil(2.5) = 3 loops, one thread each, each 50 % busy.
    assert (answer.slots_for_utilisation, answer.processes, answer.threads) == (3, 3, 1)
    assert (answer.machines, answer.offered_load, answer.utilisation) == (1, 1.5, 0.5)
    # Each loop is M/G/1 at 0.5 with cv 1: W = rho / (1 - rho) x 30 ms = 30 ms; p95 is
    # ln(0.5 / 0.05) x 30 ms / (1 - 0.5).
    assert answer.mean_wait == pytest.approx(0.03)
    assert answer.wait_at_quantile == pytest.approx(math.log(10) * 0.06)
    assert answer.cpu_ceiling == pytest.approx(4 / 0.9)
    assert answer.reasons[0] == (
        "At the peak of 50 requests/s the event loops are busy 1.50 loop-seconds per second "
        "(the sum of the workers' event-loop utilisation): 1.50 loops' worth of work, 30 ms of "
        "loop time per request."
    )
    assert answer.reasons[1].endswith(
        "Keeping each loop at most 60% busy needs 1.50 / 0.6 = 3 loops, rounded up."
    )
    assert answer.reasons[-1] == (
        "One machine is enough: 3 processes x 1 thread = 3 event loops, each 50% busy at the "
        "peak, mean wait for the loop 30 ms, p95 138 ms."
    )
    # The same demand as sync slots at 0.8 would be 2: a loop gets more headroom.
    assert suggest(Workload(peak_rate=50, service_time=0.03, cpu_share=0.9), loops_box()).slots == 2


def test_async_memory_ceiling_counts_every_worker_at_its_full_rss() -> None:
    # Spawned workers share nothing: (4096 - 1024) // 200 = 15, where USS would allow 58.
    box = loops_box()
    assert (box.spawned_ceiling, box.memory_ceiling) == (15, 58)
    app = Workload(
        peak_rate=50, service_time=0.04, cpu_share=0.5, loops=LoopDemand(busy=1.5, cpu_share=0.9)
    )
    answer = suggest(app, box)
    assert answer.memory_ceiling == 15
    assert any("fits 15 worker processes at their full RSS of 200 MiB" in r for r in answer.reasons)
    # A 1 GiB worker: 3 fit, and 2.4 loop-seconds need ceil(2.4 / 0.6) = 4: two machines of 2.
    big = loops_box(process_rss=1024 * MIB, process_uss=100 * MIB)
    heavy = Workload(
        peak_rate=80, service_time=0.04, cpu_share=0.5, loops=LoopDemand(busy=2.4, cpu_share=0.5)
    )
    split = suggest(heavy, big)
    assert (split.memory_ceiling, split.limited_by, split.machines, split.processes) == (
        3, "memory", 2, 2,
    )  # fmt: skip


def test_async_cpu_bound_loops_are_capped_by_cores() -> None:
    # 3 loop-seconds of CPU on 2 cores: 5 loops needed, the cores run 2; 3 machines of 2 loops.
    app = Workload(
        peak_rate=100, service_time=0.03, cpu_share=1.0, loops=LoopDemand(busy=3.0, cpu_share=1.0)
    )
    answer = suggest(app, loops_box(cores=2, processes=4))
    assert (answer.cpu_ceiling, answer.limited_by) == (2.0, "cpu")
    assert (answer.machines, answer.processes, answer.threads) == (3, 2, 1)
    assert answer.utilisation == pytest.approx(0.5)
    assert (
        "2 cores keep at most 2.0 loops busy, so the 5 loops needed take 3 machines behind a load "
        "balancer, each with 2 processes x 1 thread = 2 event loops, each 50% busy at the peak"
    ) in " ".join(answer.reasons)
    (limit,) = [r for r in answer.reasons if "cores are the limit" in r]
    assert limit.startswith("The loops are CPU-bound and the 2 cores are the limit")
    assert any("they want 4.0 cores of 2" in r for r in answer.reasons)


def test_async_blocking_is_said_first_and_routes_longest_first() -> None:
    blocking = (
        BlockingRoute("/b", per_request=0.01, loop_share=0.2),
        BlockingRoute("/a", per_request=0.03, loop_share=0.6),
        BlockingRoute("/c", per_request=0.001, loop_share=0.01),  # too little to name
        BlockingRoute("/d", per_request=0.005, loop_share=0.2),
    )
    app = Workload(
        peak_rate=40,
        service_time=0.05,
        cpu_share=0.1,
        loops=LoopDemand(busy=1.0, cpu_share=0.2, blocking=blocking),
    )
    answer = suggest(app, loops_box())
    assert answer.loop_blocked
    assert answer.blocking_routes == ("/a", "/b", "/d")
    assert answer.reasons[0] == (
        "First, a blocking call holds the event loop: only 20% of the loops' busy time is CPU, "
        "and for the other 0.80 loop-seconds per second a worker serves nothing else. The routes "
        "holding it without the CPU: /a (30 ms per request, 60% of the loops' busy time), /b "
        "(10 ms per request, 20% of the loops' busy time), /d (5 ms per request, 20% of the "
        "loops' busy time). Fix that before adding processes (await an async client, or run the "
        "call in a thread: a plain def endpoint, or anyio.to_thread.run_sync): more processes "
        "only spread the blocking over more loops."
    )
    assert answer.processes == 2  # then the sizing: ceil(1.0 / 0.6)
    # Mostly CPU: no blocking first, but a route that blocks is still named, later.
    cpu = Workload(
        peak_rate=40,
        service_time=0.05,
        cpu_share=0.7,
        loops=LoopDemand(busy=1.0, cpu_share=0.7, blocking=blocking[1:2]),
    )
    mostly = suggest(cpu, loops_box())
    assert not mostly.loop_blocked and mostly.blocking_routes == ("/a",)
    assert not mostly.reasons[0].startswith("First")
    assert any(
        r.startswith("Some routes hold the loop without using the CPU: /a") for r in mostly.reasons
    )


def test_async_thread_pool_as_the_limit() -> None:
    pool = LoopDemand(busy=0.3, cpu_share=0.9, pool_threads=4, pool_utilisation=1.0, pool_wait=0.5)
    answer = suggest(
        Workload(peak_rate=30, service_time=0.2, cpu_share=0.1, loops=pool), loops_box()
    )
    assert answer.pool_limited and not answer.loop_blocked
    assert answer.reasons[0] == (
        "The thread pool that runs sync endpoints is the limit, not the loop: tasks waited 0.50 "
        "task-seconds per second for one of its 4 threads per worker, 100% of them taken at the "
        "peak. Raise the limiter's total_tokens (anyio.to_thread.current_default_thread_limiter()"
        ".total_tokens = N at startup) or make those endpoints async def."
    )
    idle = LoopDemand(busy=0.3, cpu_share=0.9, pool_threads=40, pool_utilisation=0.25)
    calm = suggest(Workload(peak_rate=30, service_time=0.2, cpu_share=0.1, loops=idle), loops_box())
    assert not calm.pool_limited
    assert (
        "The thread pool that runs sync endpoints had at most 25% of its 40 threads per worker "
        "taken and no task waited for a thread: it is not the limit."
    ) in calm.reasons


def test_async_saturated_loops_are_a_lower_bound() -> None:
    app = Workload(
        peak_rate=40,
        service_time=0.03,
        cpu_share=0.9,
        utilisation=0.97,
        loops=LoopDemand(busy=0.97, cpu_share=0.9),
    )
    answer = suggest(app, loops_box(processes=1))
    assert answer.lower_bound and answer.current_utilisation == pytest.approx(0.97)
    assert answer.reasons[-1].startswith(
        "The loops were saturated (measured event-loop utilisation 97%, the demand fills 97% of "
        "the current loops)"
    )


def test_async_wait_target_per_loop() -> None:
    # 1.5 loop-seconds, 30 ms per request; each of n loops an M/G/1 at 1.5 / n: the p95 is
    # ln(rho / 0.05) x 30 ms / (1 - rho): 48.8 ms for 8 loops, 55.5 ms for 7.
    app = Workload(
        peak_rate=50, service_time=0.04, cpu_share=0.5, loops=LoopDemand(busy=1.5, cpu_share=0.9)
    )
    answer = suggest(app, loops_box(cores=16), Targets(wait=0.05))
    assert (answer.slots_for_wait, answer.processes, answer.machines) == (8, 8, 1)
    assert wait_percentile(1, 1.5 / 8, 0.03) <= 0.05 < wait_percentile(1, 1.5 / 7, 0.03)
    assert answer.wait_at_quantile == pytest.approx(math.log(3.75) * 0.03 / 0.8125)
    # On 4 cores 8 loops of 90 % CPU do not fit (4.4 at most): two machines of 4.
    split = suggest(app, loops_box(), Targets(wait=0.05))
    assert (split.limited_by, split.machines, split.processes) == ("cpu", 2, 4)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        pytest.param(lambda: LoopDemand(busy=-1, cpu_share=0.5), "busy", id="busy"),
        pytest.param(lambda: LoopDemand(busy=1, cpu_share=1.5), "cpu_share", id="share"),
        pytest.param(
            lambda: LoopDemand(busy=1, cpu_share=0.5, pool_threads=0), "pool_threads", id="pool"
        ),
        pytest.param(
            lambda: LoopDemand(busy=1, cpu_share=0.5, blocking=["/a"]),  # type: ignore[arg-type]
            "blocking",
            id="blocking",
        ),
        pytest.param(
            lambda: BlockingRoute("/a", per_request=0.1, loop_share=2), "loop_share", id="route"
        ),
        pytest.param(lambda: Targets(loop_utilisation=0), "loop_utilisation", id="target"),
    ],
)
def test_async_invalid_input_says_what_to_pass(call: Any, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        call()
