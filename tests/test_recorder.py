"""The recorder's hot path: the level word, the bucket walk and the one-call finish write what the
plain code they replace would."""

from __future__ import annotations

import bisect
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FakeClock, FakeWallClock
from workermeter import buckets, layout
from workermeter.metrics import BUCKETS_NS
from workermeter.record_values import (
    FINE_CELLS,
    P_QUEUE,
    P_QUEUE_SUM,
    P_SERVICE,
    PROCESS_VALUES,
    R_DURATION,
    ROUTE_CELLS,
    ROUTE_VALUES,
)
from workermeter.recorder import METHODS, Active, Lane, Recorder, status_index
from workermeter.request_start import queue_wait_one

MASK = (1 << layout.LEVEL_BITS) - 1

# Every cell bound, a nanosecond either side, zero, and a power of two of each bit length.
DURATIONS = sorted(
    {
        0,
        *(b + d for b in buckets.FINE.bounds for d in (-1, 0, 1)),
        *(1 << n for n in range(62)),
        *((1 << n) - 1 for n in range(1, 60)),
    }
)


def record(lane: Lane, route: str, method: str = "GET") -> list[int]:
    w = lane.routes[route][method][0]
    assert len(w) == ROUTE_VALUES
    return list(w)


def test_bucket_walk_is_bisect(recorder: Recorder, clock: FakeClock) -> None:
    """finish() counts each duration in one cell of the route's record and one of the service
    time's, those bisect_left over their bounds finds."""
    active = recorder.activate(multithread=False, capacity=1)
    lane = active.lane()
    start = P_SERVICE

    def counts() -> tuple[list[int], list[int]]:
        route = record(lane, "/d")[R_DURATION : R_DURATION + ROUTE_CELLS] if lane.routes else []
        return route or [0] * ROUTE_CELLS, list(lane.proc[start : start + FINE_CELLS])

    for duration in DURATIONS:
        route_before, service_before = counts()
        t0 = active.begin()
        clock.ns += duration
        active.finish(lane, "/d", "GET", status_index(200), t0, None)
        route_after, service_after = counts()
        route_cell = bisect.bisect_left(buckets.ROUTE.bounds, duration)
        fine_cell = bisect.bisect_left(buckets.FINE.bounds, duration)
        assert [b - a for a, b in zip(route_before, route_after, strict=True)] == [
            int(i == route_cell) for i in range(ROUTE_CELLS)
        ], duration
        assert [b - a for a, b in zip(service_before, service_after, strict=True)] == [
            int(i == fine_cell) for i in range(FINE_CELLS)
        ], duration


@pytest.mark.parametrize("ns", [b + d for b in BUCKETS_NS for d in (-1000, 0, 1000)])
def test_queue_wait_bucket_is_bisect(
    recorder: Recorder, wall_clock: FakeWallClock, ns: int
) -> None:
    """begin() finds each queue wait's bucket as bisect_left over the bounds does."""
    active = recorder.activate(multithread=False, capacity=1)
    lane = active.lane()
    start = 1_700_000_000.0
    wall_clock.now = start + ns / 1e9
    active.begin(lane, f"t={start}", 2.0, 600.0)
    w = lane.proc
    cells = list(w[P_QUEUE : P_QUEUE + FINE_CELLS])
    wait = int((wall_clock.now - start) * 1e9)
    assert cells.index(1) == bisect.bisect_left(buckets.FINE.bounds, wait)
    assert sum(cells) == 1
    assert w[P_QUEUE_SUM] == wait


@pytest.mark.parametrize("method", [*sorted(METHODS), "BREW", ""])
@pytest.mark.parametrize("cpu", [None, 7_000])
def test_finish_records_what_request_records(
    make_recorder: Callable[..., Recorder], clock: FakeClock, method: str, cpu: int | None
) -> None:
    """The middleware's one-call finish() and Lane.request() write the same values."""
    active = make_recorder().activate(multithread=False, capacity=1)
    lane = active.lane()
    cpu_clock = FakeClock(start_ns=0)
    active._cpu_clock = cpu_clock
    for status, duration in [(200, 3), (404, 2_500_000), (503, 12_345_678_901), (99, 0)]:
        t0 = active.begin()
        clock.ns += duration
        cpu_clock.ns += cpu or 0
        active.finish(lane, "/a", method, status_index(status), t0, 0 if cpu else None)
        cpu_clock.ns = 0
        lane.request("/b", method, status_index(status), duration, cpu)
    stored = "OTHER" if method not in METHODS else method
    assert record(lane, "/a", stored) == record(lane, "/b", stored)
    assert set(lane.routes["/a"]) == {stored}  # a method outside METHODS is not remembered


def level_word(active: Active) -> int:
    return active.header[layout.H_LEVEL]


@pytest.mark.parametrize("multithread", [False, True], ids=["single", "threads"])
def test_level_word_is_odd_while_an_update_is_under_way(tmp_path: Path, multithread: bool) -> None:
    """The clock is read after the word turns odd, and the word is even again with the new
    level after: what a scrape's sequence lock relies on (store.read_chunk0)."""
    seen: list[int] = []
    watched: list[Active] = []

    def clock() -> int:  # notes the level word each time an update reads the time
        seen.extend(level_word(a) for a in watched)
        return 0

    rec = Recorder(directory=tmp_path, clock=clock)
    active = rec.activate(multithread=multithread, capacity=None)
    watched.append(active)
    lane = active.lane()
    words = [level_word(active)]
    for step in (+1, +1, -1, +1, -1, -1):
        if step > 0:
            active.begin()
        else:
            active.finish(lane, "/x", "GET", 1, 0, None)
        words.append(level_word(active))
    assert [w & MASK for w in words] == [0, 1, 2, 1, 2, 1, 0]
    assert all(layout.steady(w) for w in words)
    assert all(not layout.steady(w) for w in seen)
    assert [w >> layout.LEVEL_BITS for w in words] == list(range(0, 13, 2))
    assert [w >> layout.LEVEL_BITS for w in seen] == list(range(1, 12, 2))
    assert [w & MASK for w in seen] == [0, 1, 2, 1, 2, 1]  # the level before the change


def test_level_word_holds_levels_past_the_recorded_ones(tmp_path: Path) -> None:
    """Past MAX_LEVEL the level is still exact, and past what LEVEL_BITS hold the word keeps
    the largest level it can, without spilling into the update count."""
    rec = Recorder(directory=tmp_path, clock=FakeClock())
    active = rec.activate(multithread=False, capacity=None)
    top = MASK + 3
    for n in range(1, top + 1):
        active.begin()
        if n in (layout.MAX_LEVEL, layout.MAX_LEVEL + 1, MASK, top):
            assert level_word(active) & MASK == min(n, MASK)
            assert level_word(active) >> layout.LEVEL_BITS == 2 * n
    for n in range(top - 1, -1, -1):
        active.end()
        if n in (MASK + 1, MASK, MASK - 1, layout.MAX_LEVEL, 0):
            assert active.level == n
            assert level_word(active) & MASK == min(n, MASK)
            assert level_word(active) >> layout.LEVEL_BITS == 2 * (2 * top - n)


_NOW = 1_700_000_000.25
HEADERS = st.one_of(
    # One number in seconds, ms, us or ns, bare or after t=, around now, in the past or future.
    st.builds(
        lambda prefix, ago, unit, dot: prefix + (
            f"{(_NOW - ago) * unit:.3f}" if dot else str(int((_NOW - ago) * unit))
        ),
        st.sampled_from(["", "t="]),
        st.floats(-5, 900, allow_nan=False),
        st.sampled_from([1, 1000, 1_000_000, 1_000_000_000]),
        st.booleans(),
    ),
    st.sampled_from(["", "t=", "t=abc", "nan", "inf", "1e9", "t=1700000000.1, t=1700000000.2",
                     "srv1 t=1700000000.123", "-1700000000", "1" * 50, "t=1.7e9", " 1700000000.1"]),
    st.text(max_size=30),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(start=HEADERS)
def test_begin_records_what_the_general_path_records(start: str) -> None:
    """begin()'s written-out parse of one request-start value records what parsing it with
    request_start and Lane.queue_wait records, whatever the value."""
    with tempfile.TemporaryDirectory() as tmp:
        wall = FakeWallClock(_NOW)
        recorder = Recorder(directory=Path(tmp), clock=FakeClock(), wall_clock=wall)
        active = recorder.activate(multithread=True, capacity=2)
        fast, general = active.new_lane(), Lane(active, 99)
        active.begin(fast, start, 2.0, 600.0)
        general.queue_wait(*queue_wait_one(start, _NOW, max_skew=2.0, max_age=600.0))
        assert len(fast.proc) == PROCESS_VALUES
        assert list(fast.proc) == list(general.proc)
