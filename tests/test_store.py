"""The shared store: private directories, workers that die, folding, forks, exact levels."""

from __future__ import annotations

import array
import functools
import logging
import os
import signal
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from workermeter import layout
from workermeter import store as s
from workermeter.record_values import PROCESS_VALUES, ROUTE_VALUES
from workermeter.recorder import Recorder, status_index
from workermeter.snapshot import Snapshot


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: int = 1_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def in_child(work: Callable[[], None], *, kill: bool = False) -> None:
    """Run ``work`` in a forked child and wait for it; with ``kill``, SIGKILL it after."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(r)
            work()
            os.write(w, b"x")
            if kill:
                time.sleep(30)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(w)
    assert os.read(r, 1) == b"x", "the child failed before finishing its work"
    os.close(r)
    if kill:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if kill:
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    else:
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def record(recorder: Recorder, route: str, n: int, duration: int = 1000) -> None:
    active = recorder.activate(multithread=False, capacity=1)
    lane = active.lane()
    for _ in range(n):
        active.begin()
        lane.request(route, "GET", status_index(200), duration)
        active.end()


def route_count(snap: Snapshot, route: str) -> int:
    values = snap.records.get((layout.ROUTE, f"{route}\0GET"), [0] * ROUTE_VALUES)
    return sum(values[:6])


def test_private_dir_is_created_0700(tmp_path: Path) -> None:
    d = s.ensure_private_dir(tmp_path / "a" / "store")
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700


def test_open_dir_is_refused_not_changed(tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o755)
    with pytest.raises(ValueError, match="chmod 700"):
        s.ensure_private_dir(d)
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o755


def test_symlinked_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ValueError, match="real directory"):
        s.ensure_private_dir(tmp_path / "link")


def test_file_in_place_of_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="real directory"):
        s.ensure_private_dir(tmp_path / "f")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a directory to another user")
def test_foreign_dir_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "theirs"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    with pytest.raises(ValueError, match="WORKERMETER_DIR"):
        s.ensure_private_dir(d)


def test_live_worker_is_read_and_dead_worker_is_folded(tmp_path: Path) -> None:
    clock = Clock()
    store = s.Store(tmp_path, clock=clock)
    in_child(lambda: record(Recorder(directory=tmp_path, clock=clock), "/dead", 7))
    mine = Recorder(directory=tmp_path, clock=clock)
    record(mine, "/live", 3)

    snap = store.collect()
    assert route_count(snap, "/dead") == 7
    assert route_count(snap, "/live") == 3
    assert [w.pid for w in snap.workers] == [os.getpid()]
    # The dead worker's files are gone, its totals are in the archive, and stay there.
    names = sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".wm")
    assert len(names) == 2 and names[0] == "archive.wm"
    assert names[1].startswith(f"w0-{os.getpid()}-") or names[1].startswith(f"w1-{os.getpid()}-")
    again = store.collect()
    assert route_count(again, "/dead") == 7
    assert route_count(again, "/live") == 3


def test_slot_of_a_dead_worker_is_reused(tmp_path: Path) -> None:
    clock = Clock()
    slots: list[int] = []

    def attach_and_report(r: int) -> None:
        rec = Recorder(directory=tmp_path, clock=clock)
        active = rec.activate(multithread=False, capacity=1)
        os.write(r, str(active.region.slot).encode())

    for _ in range(3):
        r, w = os.pipe()
        in_child(functools.partial(attach_and_report, w))
        os.close(w)
        slots.append(int(os.read(r, 16)))
        os.close(r)
    assert slots == [0, 0, 0]


def test_worker_killed_mid_request_leaves_nothing_in_flight(tmp_path: Path) -> None:
    clock = Clock(5_000_000_000)
    store = s.Store(tmp_path, clock=clock)

    def start_and_hang() -> None:
        rec = Recorder(directory=tmp_path, clock=clock)
        record(rec, "/done", 2, duration=10)
        rec.activate(multithread=False, capacity=1).begin()  # never ends

    in_child(start_and_hang, kill=True)
    clock.now += 3_000_000_000
    snap = store.collect()
    assert snap.workers == []
    assert route_count(snap, "/done") == 2
    # The request it died in counts as busy up to the fold, and is no longer in flight.
    assert sum(snap.levels[0][1:]) == 3_000_000_000
    clock.now += 7_000_000_000
    assert sum(store.collect().levels[0][1:]) == 3_000_000_000


def test_thousands_of_recycled_workers_keep_exact_totals_and_few_files(tmp_path: Path) -> None:
    clock = Clock()
    store = s.Store(tmp_path, clock=clock)
    for i in range(300):
        in_child(lambda: record(Recorder(directory=tmp_path, clock=clock), "/r", 3))
        if i % 50 == 0:
            store.collect()
    snap = store.collect()
    assert route_count(snap, "/r") == 900
    assert len(list(tmp_path.glob("w*.wm"))) == 0
    assert len(list(tmp_path.iterdir())) <= 4  # archive, dir.lock, slot-0.lock (+ tmp none)


def test_fold_interrupted_before_deleting_counts_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    store = s.Store(tmp_path, clock=clock)
    in_child(lambda: record(Recorder(directory=tmp_path, clock=clock), "/x", 5))

    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise OSError("interrupted")

    monkeypatch.setattr(Path, "unlink", refuse)
    with pytest.raises(OSError, match="interrupted"):
        store.collect()
    monkeypatch.undo()
    assert route_count(store.collect(), "/x") == 5
    assert route_count(store.collect(), "/x") == 5
    assert list(tmp_path.glob("w*.wm")) == []


def test_forked_child_starts_with_an_empty_region(tmp_path: Path) -> None:
    clock = Clock()
    rec = Recorder(directory=tmp_path, clock=clock)
    record(rec, "/parent", 4)
    parent_slot = rec.active.region.slot if rec.active else -1

    def child() -> None:
        assert rec.active is None  # forgotten at the fork
        record(rec, "/child", 1)
        assert rec.active is not None and rec.active.region.slot != parent_slot
        snap = s.Store(tmp_path, clock=clock).collect()
        assert route_count(snap, "/parent") == 4
        assert route_count(snap, "/child") == 1
        assert len(snap.workers) == 2

    in_child(child)
    snap = s.Store(tmp_path, clock=clock).collect()
    assert route_count(snap, "/parent") == 4
    assert route_count(snap, "/child") == 1
    assert [w.pid for w in snap.workers] == [os.getpid()]


def test_corrupt_and_foreign_files_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    rec = Recorder(directory=tmp_path, clock=clock)
    record(rec, "/ok", 2)
    (tmp_path / "w7-1-0badf00d-0.wm").write_bytes(b"not a store file at all" * 20)
    (tmp_path / "w8-2-0badf00d-0.wm").symlink_to("/etc/passwd")
    (tmp_path / "archive.wm").write_bytes(b"\0" * 64)
    (tmp_path / "unrelated.txt").write_text("hello")
    # A header that claims more words than the file holds, of a worker that is not running.
    header = [0] * layout.HEADER_WORDS
    header[layout.H_MAGIC], header[layout.H_USED] = layout.MAGIC, layout.HEADER_WORDS + 100
    (tmp_path / "w9-3-0badf00d-0.wm").write_bytes(struct.pack(f"<{layout.HEADER_WORDS}q", *header))
    # A worker of an earlier version, whose layout this one does not read.
    header[layout.H_MAGIC] = int.from_bytes(b"WMSTORE2", "little")
    (tmp_path / "w10-4-0badf00d-0.wm").write_bytes(
        struct.pack(f"<{layout.HEADER_WORDS}q", *header)
    )
    with caplog.at_level(logging.WARNING, logger="workermeter"):
        snap = s.Store(tmp_path, clock=clock).collect()
    assert route_count(snap, "/ok") == 2
    text = caplog.text
    assert "w7-1-0badf00d-0.wm" in text and "not a workermeter store file" in text
    assert "w8-2-0badf00d-0.wm" in text
    assert "w9-3-0badf00d-0.wm: truncated" in text
    assert (
        "w10-4-0badf00d-0.wm: written by an earlier version of workermeter, whose counts it does "
        "not read: restart the server's workers after upgrading"
    ) in text
    assert (tmp_path / "w7-1-0badf00d-0.wm").exists()  # left alone, not deleted
    assert (tmp_path / "w9-3-0badf00d-0.wm").exists()


def test_levels_are_exact(tmp_path: Path) -> None:
    """A known schedule of overlapping requests gives exact time at each level."""
    clock = Clock(0)
    rec = Recorder(directory=tmp_path, clock=clock, threads=2)
    active = rec.activate(multithread=True, capacity=None)
    sec = 1_000_000_000
    # t=0..1 idle, A from 1 to 5, B from 2 to 3, C from 4 to 7, scrape at 9.
    events = [(1, +1), (2, +1), (3, -1), (4, +1), (5, -1), (7, -1)]
    for t, step in events:
        clock.now = t * sec
        (active.begin if step > 0 else active.end)()
    clock.now = 9 * sec
    snap = s.Store(tmp_path, clock=clock).collect()
    above = snap.levels[active.region.slot]
    assert above[0] == 9 * sec  # observed since attach at t=0
    assert above[1] == 6 * sec  # 1..7
    assert above[2] == 2 * sec  # 2..3 and 4..5
    assert above[3] == 0
    assert snap.workers[0].capacity == 2


def test_running_request_counts_while_it_runs(tmp_path: Path) -> None:
    clock = Clock(0)
    rec = Recorder(directory=tmp_path, clock=clock)
    active = rec.activate(multithread=False, capacity=1)
    store = s.Store(tmp_path, clock=clock)
    active.begin()
    for t in (10, 30, 60):
        clock.now = t * 1_000_000_000
        snap = store.collect()
        assert snap.workers[0].level == 1
        assert sum(snap.levels[0][1:]) == clock.now
    active.end()
    clock.now = 100 * 1_000_000_000
    snap = store.collect()
    assert snap.workers[0].level == 0
    assert sum(snap.levels[0][1:]) == 60 * 1_000_000_000


def test_many_routes_spill_into_more_chunks(tmp_path: Path) -> None:
    clock = Clock()
    rec = Recorder(directory=tmp_path, clock=clock, route_limit=5000)
    for i in range(3000):
        record(rec, f"/r{i}", 1)
    assert len(list(tmp_path.glob(f"w0-{os.getpid()}-*.wm"))) >= 2
    snap = s.Store(tmp_path, clock=clock).collect()
    assert sum(route_count(snap, f"/r{i}") for i in range(3000)) == 3000


def test_one_store_reads_records_added_between_scrapes(tmp_path: Path) -> None:
    """A store remembers where each worker's records lie; what is appended after a scrape,
    in the same chunk or in a new one, is read by the next, and nothing twice."""
    clock = Clock()
    store = s.Store(tmp_path, clock=clock)
    rec = Recorder(directory=tmp_path, clock=clock, route_limit=5000)
    record(rec, "/a", 2)
    assert route_count(store.collect(), "/a") == 2
    record(rec, "/a", 3)  # the same record, new values
    record(rec, "/b", 1)  # a new record after the ones already read
    snap = store.collect()
    assert (route_count(snap, "/a"), route_count(snap, "/b")) == (5, 1)
    for i in range(3000):  # past the first chunk
        record(rec, f"/r{i}", 1)
    snap = store.collect()
    assert len(list(tmp_path.glob(f"w0-{os.getpid()}-*.wm"))) >= 2
    assert sum(route_count(snap, f"/r{i}") for i in range(3000)) == 3000
    assert (route_count(snap, "/a"), route_count(snap, "/b")) == (5, 1)


def test_records_of_another_length_add_the_values_both_have() -> None:
    snap = Snapshot()
    for values in ([1, 2, 3], [10, 20, 30], [100, 200], [1000, 2000, 3000, 4000]):
        snap.add_record(layout.ROUTE, "k", memoryview(array.array("q", values)).cast("B").cast("q"))
    assert snap.records[(layout.ROUTE, "k")] == [1111, 2222, 3033]
    same = Snapshot()
    for values in ([1, 2], [3, 4], [5, 6]):
        same.add_record(layout.ROUTE, "k", memoryview(array.array("q", values)).cast("B").cast("q"))
    assert same.records[(layout.ROUTE, "k")] == [9, 12]


def test_stores_of_gone_servers_are_swept(tmp_path: Path) -> None:
    from workermeter.instance import sweep

    clock = Clock()
    base = s.ensure_private_dir(tmp_path / "base")
    gone, live, young, mine = (base / n for n in ("sock-1", "sock-2", "sock-3", "sock-4"))
    in_child(lambda: record(Recorder(directory=gone, clock=clock), "/x", 1))
    record(Recorder(directory=live, clock=clock), "/x", 1)
    in_child(lambda: record(Recorder(directory=young, clock=clock), "/x", 1))
    mine.mkdir()
    (base / "unrelated").mkdir()
    old = time.time() - 3600
    for d in (gone, live, mine, base / "unrelated"):
        os.utime(d, (old, old))
    assert sweep(base, keep=mine) == [gone]
    assert sorted(p.name for p in base.iterdir()) == ["sock-2", "sock-3", "sock-4", "unrelated"]


def test_routes_past_the_limit_do_not_grow_the_store(tmp_path: Path) -> None:
    clock = Clock()
    rec = Recorder(directory=tmp_path, clock=clock, route_limit=3)
    for i in range(2000):
        record(rec, f"/raw/{i}", 1)
    snap = s.Store(tmp_path, clock=clock).collect()
    routes = sorted(key.split("\0")[0] for kind, key in snap.records if kind == layout.ROUTE)
    assert routes == ["/raw/0", "/raw/1", "/raw/2", "<other>"]
    assert route_count(snap, "<other>") == 1997
    active = rec.active
    assert active is not None
    assert len(active.lane().routes) == 4
    # The process record and 4 route records, each with its header and key
    room = PROCESS_VALUES + layout.RECORD_HEADER + 4 * (ROUTE_VALUES + layout.RECORD_HEADER + 2)
    assert active.region.header[layout.H_USED] <= layout.FIRST_RECORD + room
