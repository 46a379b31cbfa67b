"""Shared fixtures: a store directory and clocks that move only when a test says so."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from workermeter.recorder import Recorder

# The middleware in this process keeps no history: each test's store would get a history file of
# its own, and a writer thread. The tests of the history turn it on where they need it; servers the
# tests start keep theirs (tests/servers.py).
os.environ["WORKERMETER_HISTORY"] = "off"

WALL_START = 1_700_000_000.0


class FakeClock:
    """A monotonic clock in integer nanoseconds (like ``perf_counter_ns``) that tests advance."""

    def __init__(self, start_ns: int = 5_000_000_000) -> None:
        self.ns = start_ns

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += round(seconds * 1e9)


class FakeWallClock:
    """A wall clock in float Unix seconds (like ``time.time``) that tests set."""

    def __init__(self, now: float = WALL_START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def wall_clock() -> FakeWallClock:
    return FakeWallClock()


@pytest.fixture
def cpu_clock() -> FakeClock:
    return FakeClock(start_ns=0)


@pytest.fixture
def make_recorder(
    store_dir: Path, clock: FakeClock, wall_clock: FakeWallClock, cpu_clock: FakeClock
) -> Callable[..., Recorder]:
    """``make_recorder(**options)``: a recorder on the fake clocks, by default without CPU
    sampling so that only the tests that ask for it see any."""

    def make(**options: Any) -> Recorder:
        options.setdefault("cpu_sample", 0)
        return Recorder(
            directory=store_dir, clock=clock, wall_clock=wall_clock, cpu_clock=cpu_clock, **options
        )

    return make


@pytest.fixture
def recorder(make_recorder: Callable[..., Recorder]) -> Recorder:
    return make_recorder()


@pytest.fixture
def exporters() -> Iterator[list[Any]]:
    """``test_cli_serve.Exporter``s a test started, stopped however it ends."""
    started: list[Any] = []
    yield started
    for exporter in started:
        exporter.stop()


@contextlib.contextmanager
def switching_often() -> Iterator[None]:
    """While held, the interpreter switches threads every 10 µs: in the middle of requests."""
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(switch)


@pytest.fixture
def alone() -> Iterator[None]:
    """Held for the whole test, by one test at a time across every pytest process of this
    machine: for tests that load both cores and assert what the load did (the demo saturates
    its workers). scripts/test.sh runs two pytest processes at once, one per hot path."""
    path = Path(tempfile.gettempdir()) / "workermeter-tests-alone.lock"
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
