"""The event-loop meters and the thread pool's counts, exactly, on fake clocks: what each meter
writes, what a scrape reads between updates, and that nothing goes backwards or is lost when a
worker dies."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import selectors
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from conftest import FakeClock
from test_store import in_child
from workermeter import eventloop, layout, threadpool
from workermeter import store as s
from workermeter.exposition import StoreCollector
from workermeter.recorder import Recorder


def _recorder(path: Path, clock: Callable[[], int]) -> Recorder:
    return Recorder(directory=path, clock=clock, cpu_sample=0)


def _loops(path: Path, clock: FakeClock) -> dict[int, list[int]]:
    return s.Store(path, clock=clock).collect().loops


def _busy_observed(path: Path, clock: FakeClock) -> tuple[float, float]:
    values = _loops(path, clock)[0]
    return values[layout.L_BUSY] / 1e9, values[layout.L_OBSERVED] / 1e9


class FakeSelector:
    """A selector whose select() lets the fake clock run as if it had waited."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.wait = 0.0
        self.timeouts: list[float | None] = []
        self.during: list[list[int]] = []
        self.store: tuple[Path, FakeClock] | None = None

    def select(self, timeout: float | None = None) -> list[Any]:
        self.timeouts.append(timeout)
        self.clock.advance(self.wait)
        if self.store is not None:  # a scrape while the loop waits
            self.during.append(_loops(*self.store)[0])
        return []

    def get_map(self) -> dict[Any, Any]:
        return {}


class FakeLoop:
    def __init__(self, selector: FakeSelector) -> None:
        self._selector = selector


def _selector_meter(
    tmp_path: Path, clock: FakeClock
) -> tuple[FakeLoop, FakeSelector, eventloop.LoopWords]:
    active = _recorder(tmp_path, clock).activate(multithread=False, capacity=None)
    words = eventloop.loop_words(active, active.header, clock)
    selector = FakeSelector(clock)
    loop = FakeLoop(selector)
    assert eventloop.install_asyncio(loop, words) == "asyncio"
    return loop, selector, words


def test_asyncio_busy_between_waits_and_idle_in_them(tmp_path: Path) -> None:
    clock = FakeClock()
    loop, selector, _ = _selector_meter(tmp_path, clock)
    assert _busy_observed(tmp_path, clock) == (0.0, 0.0)  # the window starts at install
    clock.advance(0.3)  # running callbacks
    assert _busy_observed(tmp_path, clock) == (0.3, 0.3)  # read while busy: counted so far
    selector.wait, selector.store = 0.5, (tmp_path, clock)
    loop._selector.select(1.0)
    # Read while it waited: the 0.3 s before, and 0.5 s observed idle.
    assert selector.during == [
        [layout.LOOP_METHODS.index("asyncio"), 300_000_000, 800_000_000, 0, 0]
    ]
    clock.advance(0.2)
    assert _busy_observed(tmp_path, clock) == (0.5, 1.0)
    assert selector.timeouts == [1.0]


def test_a_poll_that_does_not_wait_is_busy(tmp_path: Path) -> None:
    clock = FakeClock()
    loop, selector, _ = _selector_meter(tmp_path, clock)
    selector.wait = 0.25
    loop._selector.select(0)  # ready callbacks: the loop only polls
    loop._selector.select(-1)
    assert _busy_observed(tmp_path, clock) == (0.5, 0.5)
    loop._selector.select(None)  # waits for I/O without a timer
    assert _busy_observed(tmp_path, clock) == (0.5, 0.75)


def test_one_meter_per_loop(tmp_path: Path) -> None:
    clock = FakeClock()
    loop, selector, words = _selector_meter(tmp_path, clock)
    timed = selector.select
    assert isinstance(getattr(timed, "__self__", None), eventloop.SelectorMeter)
    assert eventloop.install_asyncio(loop, words) is None  # a second middleware: nothing added
    assert selector.select == timed
    other = FakeLoop(selector)  # a loop whose selector another copy of the meter measures
    assert eventloop.install_asyncio(other, words) is None
    eventloop.uninstall(loop)
    assert selector.select == FakeSelector.select.__get__(selector)  # its own method again


def test_a_real_asyncio_loop_is_measured_and_still_serves(tmp_path: Path) -> None:
    active = _recorder(tmp_path, FakeClock()).activate(multithread=False, capacity=None)

    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(await r.readline())
        await w.drain()
        w.close()

    async def main() -> tuple[str | None, bytes, bool]:
        loop = asyncio.get_running_loop()
        words = eventloop.LoopWords(active.header, time.perf_counter_ns)
        method = eventloop.install_asyncio(loop, words)
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        async with server:
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
            writer.write(b"ping\n")
            await writer.drain()
            line = await reader.readline()
            writer.close()
            await writer.wait_closed()
        selector = loop._selector  # type: ignore[attr-defined]
        wrapped = isinstance(getattr(selector.select, "__self__", None), eventloop.SelectorMeter)
        eventloop.uninstall(loop)
        return method, line, wrapped

    assert asyncio.run(main()) == ("asyncio", b"ping\n", True)
    assert active.header[layout.H_LOOP_MARK] > active.header[layout.H_LOOP_START]  # it measured


def test_timed_updates_count_a_missed_timer_as_busy(tmp_path: Path) -> None:
    """uvloop and the estimate update from a timer. A scrape long after a missed update counts the
    time past the grace as busy (an idle loop would have run the timer); the next update, which
    knows better, is never below what was read."""
    clock = FakeClock()
    active = _recorder(tmp_path, clock).activate(multithread=False, capacity=None)
    words = eventloop.LoopWords(active.header, clock)
    words.start(eventloop.UVLOOP, grace=250_000_000)
    clock.advance(0.2)  # the timer is not due yet: nothing is known of these 0.2 s
    assert _busy_observed(tmp_path, clock) == (0.0, 0.0)
    clock.advance(0.25)  # 0.2 s past the grace: busy all along since then
    assert _busy_observed(tmp_path, clock) == (0.2, 0.2)
    # The loop comes back: libuv says it was busy 0.3 of the 0.45 s.
    words.timed(busy=300_000_000, grace=250_000_000)
    busy, observed = _busy_observed(tmp_path, clock)
    assert (busy, observed) == (0.3, 0.45)
    # A timer update never moves busy time back, whatever it is given.
    words.timed(busy=100_000_000, grace=250_000_000)
    assert _busy_observed(tmp_path, clock)[0] == 0.3


def test_a_scrape_during_an_update_waits_for_it(tmp_path: Path) -> None:
    clock = FakeClock()
    active = _recorder(tmp_path, clock).activate(multithread=False, capacity=None)
    words = eventloop.LoopWords(active.header, clock)
    words.start(eventloop.ASYNCIO)
    words.begin()  # odd: an update under way in this very process, never finished
    store = s.Store(tmp_path, clock=clock)
    # The reader retries for a while, then takes what is there rather than hang.
    values = store.collect().loops[0]
    assert values[layout.L_METHOD] == eventloop.ASYNCIO
    words.end()


def test_a_dead_workers_loop_totals_stay_in_its_slot(tmp_path: Path) -> None:
    """A worker that dies keeps its loop and pool totals in the archive; its replacement in the
    same slot adds to them, so the slot's counters never go backwards."""
    clock = FakeClock()

    def work() -> None:
        active = _recorder(tmp_path, clock).activate(multithread=False, capacity=None)
        selector = FakeSelector(clock)
        selector.wait = 1.0
        meter = eventloop.SelectorMeter(selector, eventloop.LoopWords(active.header, clock))
        clock.advance(2.0)
        meter.select(5.0)  # 2 s busy, then 1 s waiting, then busy again

    in_child(work, kill=True)
    # The child's clock moved in the child only: read here, it was busy 2 s of the 3 s observed
    # up to its last update.
    first = s.Store(tmp_path, clock=clock).collect().loops[0]
    assert first == [eventloop.ASYNCIO, 2_000_000_000, 3_000_000_000, 0, 0]
    assert "archive.wm" in os.listdir(tmp_path)  # folded: the totals live on in the archive
    # The replacement takes slot 0 and adds its own.
    active = _recorder(tmp_path, clock).activate(multithread=False, capacity=None)
    words = eventloop.LoopWords(active.header, clock)
    words.start(eventloop.ASYNCIO)
    clock.advance(0.5)
    again = s.Store(tmp_path, clock=clock).collect().loops[0]
    assert again[layout.L_BUSY] == first[layout.L_BUSY] + 500_000_000
    assert again[layout.L_OBSERVED] == first[layout.L_OBSERVED] + 500_000_000


def test_the_exposition_names_the_method_and_leaves_sync_workers_out(tmp_path: Path) -> None:
    clock = FakeClock()
    active = _recorder(tmp_path, clock).activate(multithread=False, capacity=None)
    words = eventloop.LoopWords(active.header, clock)
    words.start(eventloop.GEVENT)
    clock.advance(1.5)
    collector = StoreCollector(
        lambda: s.Store(tmp_path, clock=clock), processes=lambda pids: {}, host=lambda: (1, 1, 1),
        listeners=dict,
    )  # fmt: skip
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in collector.collect()
        for sample in family.samples
    }
    labels = (("method", "gevent"), ("worker", "0"))
    assert samples[("workermeter_event_loop_busy_seconds_total", labels)] == 1.5
    assert samples[("workermeter_event_loop_observed_seconds_total", labels)] == 1.5
    # No pool in a gevent worker: no pool series.
    assert not [k for k in samples if k[0].startswith("workermeter_thread_pool")]


def test_the_pool_counts_threads_taken_and_tasks_waiting_exactly(tmp_path: Path) -> None:
    """anyio's own limiter, driven as its to_thread does, on a fake clock."""
    clock = FakeClock()
    active = _recorder(tmp_path, clock).activate(multithread=False, capacity=None)
    words = eventloop.LoopWords(active.header, clock)

    async def main() -> None:
        limiter = anyio.CapacityLimiter(1)
        pool = threadpool.instrument(limiter, words)
        assert pool is not None
        assert threadpool.instrument(limiter, words) is pool  # once only
        first, second = object(), object()
        await limiter.acquire_on_behalf_of(first)  # a thread taken
        clock.advance(1.0)
        waiter = asyncio.ensure_future(limiter.acquire_on_behalf_of(second))
        await asyncio.sleep(0)  # the second task waits for the only thread
        clock.advance(0.5)
        snap = s.Store(tmp_path, clock=clock).collect()
        assert snap.loops[0][layout.L_POOL_BUSY :] == [1_500_000_000, 500_000_000]
        assert snap.workers[0].pool_in_use == 1 and snap.workers[0].pool_waiting == 1
        limiter.release_on_behalf_of(first)  # the thread passes to the waiting task
        await waiter
        clock.advance(2.0)
        limiter.release_on_behalf_of(second)
        clock.advance(7.0)  # idle: nothing more is counted
        snap = s.Store(tmp_path, clock=clock).collect()
        assert snap.loops[0][layout.L_POOL_BUSY :] == [3_500_000_000, 500_000_000]
        assert (snap.workers[0].pool_in_use, snap.workers[0].pool_waiting) == (0, 0)
        assert snap.workers[0].pool_size == 1
        limiter.total_tokens = 3
        pool.publish()
        assert s.Store(tmp_path, clock=clock).collect().workers[0].pool_size == 3

    asyncio.run(main())


def test_a_limiter_it_cannot_count_is_left_alone() -> None:
    class Other:  # another backend's limiter, holders kept otherwise
        _borrowers: tuple[object, ...] = ()

    header = memoryview(bytearray(8 * layout.HEADER_WORDS)).cast("q")
    assert threadpool.instrument(Other(), eventloop.LoopWords(header, FakeClock())) is None


@pytest.mark.parametrize("timeout", [0.001, None])
def test_a_real_selector_still_selects_through_the_meter(
    tmp_path: Path, timeout: float | None
) -> None:
    clock = FakeClock()
    active = _recorder(tmp_path, clock).activate(multithread=False, capacity=None)
    real = selectors.DefaultSelector()
    loop = FakeLoop(real)  # type: ignore[arg-type]
    assert eventloop.install_asyncio(loop, eventloop.LoopWords(active.header, clock)) == "asyncio"
    r, w = os.pipe()
    try:
        real.register(r, selectors.EVENT_READ, "data")
        os.write(w, b"x")
        clock.advance(1.0)
        ready = real.select(timeout)
        assert [(key.fd, key.data) for key, _ in ready] == [(r, "data")]
        assert _busy_observed(tmp_path, clock) == (1.0, 1.0)  # the fake clock stood still in it
    finally:
        eventloop.uninstall(loop)
        real.close()
        os.close(r)
        os.close(w)


def test_the_default_limiter_of_a_loop(tmp_path: Path) -> None:
    async def main() -> Any:
        return threadpool.default_limiter()

    limiter = asyncio.run(main())
    assert limiter is not None and limiter.total_tokens == 40
    assert threadpool.default_limiter() is None  # no loop running: nothing to measure


def test_counters_never_go_backwards_while_a_loop_runs_in_another_process(
    tmp_path: Path,
) -> None:
    """A child process changes between busy and idle as fast as it can while this one scrapes:
    on two cores the scrapes land in the middle of changes, and no total may ever move back."""
    ready, stop = mp.Event(), mp.Event()
    child = mp.get_context("fork").Process(target=_flip, args=(tmp_path, ready, stop))
    child.start()
    try:
        assert ready.wait(10)
        store = s.Store(tmp_path)
        last = [0, 0, 0, 0, 0]
        changes = 0
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            values = store.collect().loops[0]
            for i in (layout.L_BUSY, layout.L_OBSERVED):
                assert values[i] >= last[i], (i, values, last)
            changes += values != last
            last = values
        assert changes > 20  # the child really was changing meanwhile
        assert 0 < last[layout.L_BUSY] < last[layout.L_OBSERVED]
    finally:
        stop.set()
        child.join(10)


def _flip(path: Path, ready: Any, stop: Any) -> None:  # pragma: no cover - in the child
    active = _recorder(path, time.perf_counter_ns).activate(multithread=False, capacity=None)
    selector = selectors.DefaultSelector()
    meter = eventloop.SelectorMeter(
        selector, eventloop.LoopWords(active.header, time.perf_counter_ns)
    )
    ready.set()
    while not stop.is_set():
        meter.select(0.00005)  # nothing registered: waits 50 µs, idle
        end = time.perf_counter() + 0.00005
        while time.perf_counter() < end:  # busy for 50 µs
            pass
