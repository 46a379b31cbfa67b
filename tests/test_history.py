"""The history: rows written from the store's totals on fake clocks that cross minute, hour and
ring boundaries; a writer replaced, stopped, or gone for minutes; a row read back as a gap."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FakeClock, FakeWallClock
from workermeter import history as h
from workermeter import history_candidate as hc
from workermeter import history_writer as hw
from workermeter.recorder import Recorder, status_index
from workermeter.store import Store

T0 = 1_700_000_040.0  # a minute boundary (1_700_000_040 = 28_333_334 minutes)
MINUTE0 = int(T0) // 60


class World:
    """One worker of ``capacity`` slots and a history writer, on clocks moved together."""

    def __init__(self, tmp_path: Path, capacity: int = 1) -> None:
        self.store_dir = tmp_path / "store"
        self.history_dir = tmp_path / "history"
        self.mono = FakeClock()
        self.wall = FakeWallClock(T0 + 10)
        self.recorder = Recorder(
            directory=self.store_dir, clock=self.mono, wall_clock=self.wall, cpu_sample=0
        )
        self.active = self.recorder.activate(multithread=capacity > 1, capacity=capacity)
        self.lane = self.active.lane()

    def writer(self) -> hw.Writer:
        store = Store(self.store_dir, clock=self.mono)
        self.history_dir.mkdir(mode=0o700, exist_ok=True)
        return hw.Writer(store, self.history_dir, wall_clock=self.wall)

    def advance(self, seconds: float) -> None:
        self.mono.advance(seconds)
        self.wall.now += seconds

    def to(self, wall: float) -> None:
        self.advance(wall - self.wall.now)

    def serve(self, n: int, seconds: float, route: str = "/a", status: int = 200) -> None:
        """``n`` requests one after the other, each ``seconds`` long."""
        for _ in range(n):
            self.active.begin()
            self.advance(seconds)
            self.lane.request(route, "GET", status_index(status), round(seconds * 1e9))
            self.active.end()

    def file(self) -> h.HistoryFile:
        return h.HistoryFile(self.history_dir)


def row(world: World, minute: int) -> h.Row:
    (found,) = h.rows(world.file(), minute * 60, minute * 60 + 1)
    return found


def test_a_minute_row_holds_what_was_served(tmp_path: Path) -> None:
    w = World(tmp_path)
    writer = w.writer()
    assert writer.tick() == 0  # the cursor, 10 s into the minute
    w.serve(30, 0.1)  # 3 s busy
    w.serve(2, 0.1, status=500)
    w.to(T0 + 60.2)
    assert writer.tick() == 1
    first = row(w, MINUTE0)
    assert first.covered == pytest.approx(50.0)  # from the writer's start to the minute's end
    assert first.requests == 32 and first.errors == 2
    assert first.by_status()["2xx"] == 30
    # Capacity counted up to the reading, 0.2 s after the minute's end (as the writer says).
    assert first.utilisation == pytest.approx(3.2 / 50.2)
    assert first.slots == 1 and first.workers == 1 and first.peak_busy == 1
    assert first.all_busy_seconds == pytest.approx(3.2)  # one slot: busy is all busy
    assert first.service_mean == pytest.approx(0.1)
    p50 = first.service_time(0.5)
    assert p50 is not None and 0.05 < p50 <= 0.1  # within the 50-100 ms bucket
    # A full minute half busy, with longer requests.
    w.serve(60, 0.5)
    w.to(T0 + 120.2)
    assert writer.tick() == 1
    second = row(w, MINUTE0 + 1)
    assert second.covered == pytest.approx(60.0)
    assert second.requests == 60
    # The 0.2 s read after the first minute's end counted there, as the module says.
    assert second.utilisation == pytest.approx(30.0 / 60.0, abs=0.2 / 60)
    assert second.service_time(0.95) == pytest.approx(0.5, rel=0.2)
    assert row(w, MINUTE0 + 2).gap and row(w, MINUTE0 - 1).gap


def test_a_new_writer_goes_on_from_the_cursor_and_counts_nothing_twice(tmp_path: Path) -> None:
    w = World(tmp_path)
    first = w.writer()
    first.tick()
    w.serve(10, 1.0)
    w.to(T0 + 60.1)
    first.tick()
    cursor = (w.history_dir / hw.CURSOR).read_text()
    w.serve(20, 1.0)
    w.to(T0 + 120.1)
    first.tick()  # row MINUTE0 + 1 written...
    (w.history_dir / hw.CURSOR).write_text(cursor)  # ...but the writer died before the cursor
    second = w.writer()
    w.serve(5, 1.0)
    w.to(T0 + 180.1)
    assert second.tick() == 2  # minute + 1 again, from the same cursor, and minute + 2
    assert row(w, MINUTE0).requests == 10
    assert row(w, MINUTE0 + 1).requests + row(w, MINUTE0 + 2).requests == 25
    assert row(w, MINUTE0 + 1).spread and row(w, MINUTE0 + 2).spread
    total = sum(r.requests for r in h.rows(w.file(), T0, T0 + 240) if not r.gap)
    assert total == 35


def test_a_first_writer_counts_a_fresh_servers_first_requests_not_an_old_stores(
    tmp_path: Path,
) -> None:
    fresh = World(tmp_path / "fresh")
    fresh.serve(3, 1.0)  # before any candidate took the lock
    writer = fresh.writer()
    assert writer.tick() == 0
    fresh.to(T0 + 60.2)
    assert writer.tick() == 1
    assert row(fresh, MINUTE0).requests == 3 and row(fresh, MINUTE0).covered == pytest.approx(50)

    old = World(tmp_path / "old")
    old.serve(3, 1.0)
    old.advance(hw.FRESH_NS / 1e9)  # history switched on for a store older than that
    writer = old.writer()
    assert writer.tick() == 0
    old.serve(2, 1.0)
    old.advance(60)
    assert writer.tick() == 1
    found = [r for r in h.rows(old.file(), T0, old.wall.now) if not r.gap]
    assert [r.requests for r in found] == [2] and not found[0].spread


def test_a_stopped_writer_leaves_the_minute_for_the_next_to_finish(tmp_path: Path) -> None:
    w = World(tmp_path)
    first = w.writer()
    first.tick()
    w.to(T0 + 60.0)
    first.tick()
    w.serve(7, 1.0)
    w.to(T0 + 90.0)
    assert first.tick(final=True) == 1  # stopping: the half minute so far
    assert row(w, MINUTE0 + 1).requests == 7
    second = w.writer()
    w.serve(4, 1.0)
    w.to(T0 + 120.0)
    assert second.tick() == 1
    full = row(w, MINUTE0 + 1)
    assert full.requests == 11 and full.covered == pytest.approx(60.0)
    assert not full.spread


def test_minutes_nobody_wrote_share_their_counts_or_stay_gaps(tmp_path: Path) -> None:
    w = World(tmp_path)
    writer = w.writer()
    writer.tick()
    w.to(T0 + 60.0)
    writer.tick()
    w.serve(30, 1.0)  # in the 3 minutes nobody writes
    w.to(T0 + 240.0)
    assert writer.tick() == 3
    shared = [row(w, MINUTE0 + k) for k in (1, 2, 3)]
    assert [r.requests for r in shared] == [10, 10, 10]
    assert all(r.spread for r in shared)
    assert sum(r.covered for r in shared) == pytest.approx(180.0)


def test_a_store_made_anew_counts_from_zero_and_before_it_is_a_gap(tmp_path: Path) -> None:
    w = World(tmp_path)
    writer = w.writer()
    writer.tick()
    w.serve(50, 1.0)
    w.to(T0 + 60.0)
    writer.tick()
    # A reboot: the store is gone, the history (elsewhere) stays; 10 minutes later a new one.
    w.active.region.abandon()
    for p in w.store_dir.iterdir():
        p.unlink()
    w.to(T0 + 660.0)
    w.recorder = Recorder(directory=w.store_dir, clock=w.mono, wall_clock=w.wall, cpu_sample=0)
    w.active = w.recorder.activate(multithread=False, capacity=1)
    w.lane = w.active.lane()
    w.serve(6, 1.0)
    w.to(T0 + 720.0)
    again = w.writer()
    again.tick()
    assert row(w, MINUTE0).requests == 50
    assert all(row(w, MINUTE0 + k).gap for k in range(1, 11))
    assert row(w, MINUTE0 + 11).requests == 6


def test_hours_fold_their_minutes_and_keep_the_busiest_routes(tmp_path: Path) -> None:
    w = World(tmp_path, capacity=1)
    start = (MINUTE0 // 60 + 1) * 3600  # the next hour boundary
    w.to(start - 30)
    writer = w.writer()
    writer.tick()
    w.to(start + 0.05)
    writer.tick()
    for minute in range(62):
        w.serve(1, 2.0, route="/slow")
        w.serve(3, 0.1, route=f"/r{minute % 25}")
        w.to(start + minute * 60 + 60.05)
        writer.tick()
    hour = start // 3600
    (first,) = h.rows(w.file(), start, start + 1, hourly=True)
    minutes = [r for r in h.rows(w.file(), start, start + 3600) if not r.gap]
    assert len(minutes) == 60
    assert first.requests == sum(r.requests for r in minutes) == 60 * 4
    assert first.peak_busy == 1 and first.covered == pytest.approx(3600.0, abs=0.1)
    routes = w.file().routes(hour)
    assert len(routes) == h.TOP_ROUTES
    name, values = routes[0]
    assert name == "/slow\0GET" and values[h.RT_REQUESTS] == 60
    assert values[h.RT_SERVICE_NS] == 60 * 2_000_000_000


def test_the_ring_reads_an_overwritten_minute_as_a_gap(tmp_path: Path) -> None:
    directory = tmp_path / "history"
    directory.mkdir()
    f = h.HistoryFile(directory, writable=True)
    values = [0] * h.ROW_WORDS
    values[h.REQUESTS + 1] = 5
    f.write_row(MINUTE0, values)
    assert f.row(MINUTE0) is not None
    f.write_row(MINUTE0 + h.MINUTE_ROWS, values)  # 8 days and an hour later, the same row
    assert f.row(MINUTE0) is None and f.row(MINUTE0 + h.MINUTE_ROWS) is not None
    assert os.path.getsize(directory / h.FILE_NAME) == h.FILE_BYTES <= 8 << 20


def test_another_file_in_its_place_is_refused_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / h.FILE_NAME).write_bytes(b"not a history")
    with pytest.raises(ValueError, match="move it away"):
        h.HistoryFile(tmp_path)


def test_the_cursor_is_plain_json(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.writer().tick()
    data = json.loads((w.history_dir / hw.CURSOR).read_text())
    assert data["totals"]["wall_ns"] == int((T0 + 10) * 1e9)


_CANDIDATE = """
import sys, time
sys.path.insert(0, sys.argv[3])
from workermeter import history_candidate as hc
c = hc.Candidate(sys.argv[1], history=sys.argv[2])
c.start()
while not c.writing:
    time.sleep(0.05)
print("writing", flush=True)
time.sleep(60)
"""


def test_one_process_writes_and_another_takes_over_when_it_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_dir, history_dir = tmp_path / "store", tmp_path / "history"
    Recorder(directory=store_dir).activate(multithread=False, capacity=1)
    src = str(Path(hw.__file__).resolve().parents[1])
    child = subprocess.Popen(
        [sys.executable, "-c", _CANDIDATE, str(store_dir), str(history_dir), src],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "writing"
        monkeypatch.setattr(hc, "RETRY_EVERY", 0.1)
        here = hc.Candidate(store_dir, history=history_dir)
        here.start()
        time.sleep(0.5)
        assert not here.writing  # the child holds the lock
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        deadline = time.monotonic() + 5
        while not here.writing and time.monotonic() < deadline:
            time.sleep(0.05)
        assert here.writing
        here.stop()
        assert not here.writing
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
