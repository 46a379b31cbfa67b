"""The shared store: one memory-mapped region per worker process, merged at scrape time.

Layout of a store directory (private to the user, mode 0700)::

    slot-3.lock          held (flock) by the live worker that uses slot index 3
    w3-12345-0.wm        chunk 0 of worker pid 12345 in slot 3: header, concurrency levels, records
    w3-12345-1.wm        further chunks when the first one is full
    archive.wm           totals of workers that have exited, merged when they are found dead
    dir.lock             scrapers hold it shared while reading, exclusive while merging the dead

A region is written only by its own process, and every record in it only by one thread (a
*lane*), so the hot path needs no lock: values are plain 64-bit integers written through a
``memoryview`` of the mapping. A worker holds an exclusive ``flock`` on its chunk 0 for its whole
life; the kernel drops it when the process dies, even by SIGKILL, which is how a scrape tells the
dead from the living. Counters of the dead are moved into the archive, so totals never go
backwards while the number of files stays bounded by the number of live workers.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import re
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("workermeter")

MAGIC = int.from_bytes(b"WMSTORE2", "little")
CHUNK_BYTES = 1 << 20
CHUNK_WORDS = CHUNK_BYTES // 8

# Header words, in every chunk.
H_MAGIC = 0
H_USED = 1  # words in use; records are published by advancing it
H_PID = 2
H_SLOT = 3
H_CAPACITY = 4  # slots (threads) per process, 0 when unknown
H_START_WALL_NS = 5
H_START_MONO_NS = 6
H_LEVEL = 7  # requests in flight in the low LEVEL_BITS; above them a count of updates, odd
LEVEL_BITS = 16  # while one is under way (a sequence lock: see read_levels)
H_WEBSOCKETS = 8  # websocket connections open
H_LISTENERS = 9  # inodes of up to MAX_LISTENERS listening sockets the worker serves, 0 for none
MAX_LISTENERS = 4
H_POOL_SIZE = 13  # threads in the pool that runs an async app's sync code, 0 when none is known
H_POOL_IN_USE = 14  # of them taken now
# The event loop and its thread pool, written by the loop's thread only (eventloop.py).
# H_LOOP_MARK is the monotonic ns of the loop's last change, positive when it has been busy
# since, negative when it has been waiting for I/O since. A timed meter (H_LOOP_GRACE > 0)
# updates from a timer instead: since its positive mark, a loop that missed the next update by
# more than the grace has been busy all along since the grace ran out (an idle loop wakes for a
# timer that is due). A change of the mark alone (waking up) is one write. Any update of more
# words makes H_LOOP_SEQ odd, reads the time, writes the words, and makes H_LOOP_SEQ even again,
# as the level word does: a scrape retries a copy taken mid-update or changed while it read its
# time, so a copy counts no further than the next update commits, and no total goes back.
H_LOOP_METHOD = 15  # index into LOOP_METHODS; 0: no loop measured
H_LOOP_SEQ = 16
H_LOOP_START = 17  # monotonic ns the meter was installed: observed time runs from here
H_LOOP_BUSY = 18  # ns the loop was busy, up to the mark's time
H_LOOP_MARK = 19
H_LOOP_GRACE = 20
H_POOL_BUSY = 22  # thread-ns the pool's threads were taken, up to H_POOL_SINCE
H_POOL_WAIT = 23  # task-ns spent waiting for a thread, up to H_POOL_SINCE
H_POOL_SINCE = 24
H_POOL_WAITING = 25  # tasks waiting for a thread now
HEADER_WORDS = 32

LOOP_METHODS = ("", "asyncio", "uvloop", "gevent", "lag_estimate")

# Concurrency levels, chunk 0 only. ENTER[k]: monotonic time the level last rose to k.
# ABOVE[k]: nanoseconds spent with at least k requests in flight, up to the last fall below k.
MAX_LEVEL = 1024
ENTER = HEADER_WORDS
ABOVE = ENTER + MAX_LEVEL + 1
FIRST_RECORD = ABOVE + MAX_LEVEL + 1

# Record kinds.
ROUTE = 1  # key "route\0method"
PROCESS = 2  # key ""
LEVELS = 3  # archive only, key: slot; values: ABOVE[0..MAX_LEVEL] (ABOVE[0] the time observed),
# then the slot's capacity
FOLDED = 4  # archive only, key: identity of a dead worker already merged, no values
LOOPS = 5  # archive only, key: slot; values: LOOP_VALUES
# LOOPS values, and those of Snapshot.loops.
L_METHOD, L_BUSY, L_OBSERVED, L_POOL_BUSY, L_POOL_WAIT = range(5)
LOOP_VALUES = 5
RECORD_HEADER = 4  # words: length in words, kind, lane, key bytes

# w<slot>-<pid>-<token>-<chunk>.wm: the random token keeps a reused pid from meeting the files of
# a dead worker that had the same pid.
_NAME = re.compile(r"w(\d+)-(\d+)-([0-9a-f]{8})-(\d+)\.wm\Z")
_PACK = struct.Struct("<4q")


def _open_nofollow(path: Path, flags: int, mode: int = 0o600) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) or check that an existing one is ours and private.

    Raises ``ValueError`` saying what to do when the directory is a symlink, is not a directory,
    belongs to another user, or is open to others (it is never chmod-ed: ``/tmp`` must stay as
    it is).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ValueError(
            f"workermeter store {path} must be a real directory, not a symlink or file"
        )
    if st.st_uid != os.geteuid():
        raise ValueError(
            f"workermeter store {path} belongs to uid {st.st_uid}, not to this user; "
            "set WORKERMETER_DIR to a directory you own"
        )
    if st.st_mode & 0o077:
        raise ValueError(
            f"workermeter store {path} is open to other users (mode "
            f"{stat.S_IMODE(st.st_mode):o}); make it private with 'chmod 700 {path}' or set "
            "WORKERMETER_DIR to a directory of its own"
        )
    return path


def default_base() -> Path:
    """Where stores live unless WORKERMETER_DIR says otherwise: RAM-backed when possible."""
    shm = Path("/dev/shm")
    root = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return root / f"workermeter-{os.geteuid()}"


class Chunk:
    """One mapped file of a region; ``words`` is the writable view used by the hot path."""

    __slots__ = ("fd", "mm", "words")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.mm = mmap.mmap(fd, CHUNK_BYTES)
        self.words = memoryview(self.mm).cast("q")

    def close(self) -> None:
        self.words.release()
        self.mm.close()
        os.close(self.fd)


class Region:
    """The part of the store one worker process writes."""

    def __init__(
        self,
        directory: Path,
        *,
        capacity: int,
        clock: Callable[[], int],
        wall_clock: Callable[[], float],
        listeners: Sequence[int] = (),
    ) -> None:
        self.directory = directory
        self.pid = os.getpid()
        self._token = os.urandom(4).hex()
        self._alloc_lock = threading.Lock()
        self._slot_fd, self.slot = _claim_slot(directory)
        self._chunks: list[Chunk] = []
        try:
            first = self._new_chunk()
        except BaseException:
            os.close(self._slot_fd)
            raise
        h = first.words
        h[H_CAPACITY] = capacity
        # Read together, so the time observed since start matches the start time shown.
        h[H_START_MONO_NS] = clock()
        h[H_START_WALL_NS] = int(wall_clock() * 1e9)
        for i, inode in enumerate(listeners[:MAX_LISTENERS]):
            h[H_LISTENERS + i] = inode
        self.header = h
        # Chunk 0 is published under its final name only once locked and filled in, so a scrape
        # never mistakes a worker being born for a dead one.
        os.rename(self._path(0, temp=True), self._path(0))

    def _path(self, index: int, *, temp: bool = False) -> Path:
        name = f"w{self.slot}-{self.pid}-{self._token}-{index}.wm"
        return self.directory / (f".{name}.tmp" if temp else name)

    def _new_chunk(self) -> Chunk:
        index = len(self._chunks)
        path = self._path(index, temp=index == 0)
        fd = _open_nofollow(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        try:
            os.ftruncate(fd, CHUNK_BYTES)
            if index == 0:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            chunk = Chunk(fd)
        except BaseException:
            os.close(fd)
            raise
        w = chunk.words
        w[H_PID] = self.pid
        w[H_SLOT] = self.slot
        w[H_USED] = FIRST_RECORD if index == 0 else HEADER_WORDS
        w[H_MAGIC] = MAGIC
        self._chunks.append(chunk)
        return chunk

    def allocate(self, kind: int, key: str, lane: int, nvalues: int) -> tuple[memoryview, int]:
        """Append a zeroed record and return the view and index of its first value."""
        raw = key.encode()
        key_words = (len(raw) + 7) // 8
        size = RECORD_HEADER + key_words + nvalues
        if size + HEADER_WORDS > CHUNK_WORDS:
            raise ValueError(f"record too large for the store: {key[:80]!r}")
        with self._alloc_lock:
            chunk = self._chunks[-1]
            used = chunk.words[H_USED]
            if used + size > CHUNK_WORDS:
                chunk = self._new_chunk()
                used = HEADER_WORDS
            w = chunk.words
            start = used * 8
            chunk.mm[start : start + 32] = _PACK.pack(size, kind, lane, len(raw))
            chunk.mm[start + 32 : start + 32 + len(raw)] = raw
            w[H_USED] = used + size  # publish
            return w, used + RECORD_HEADER + key_words

    def abandon(self) -> None:
        """Forget the region without touching the files: for a child process after fork.

        The descriptors are shared with the parent, whose locks stay held through its copies.
        """
        for chunk in self._chunks:
            chunk.close()
        os.close(self._slot_fd)
        self._chunks.clear()


def _claim_slot(directory: Path) -> tuple[int, int]:
    """Lock the lowest free slot index: indexes are reused when a worker is replaced."""
    for slot in range(65536):
        fd = _open_nofollow(directory / f"slot-{slot}.lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return fd, slot
    raise RuntimeError(f"no free worker slot in {directory}")


# --------------------------------------------------------------------------- reading


@dataclass
class WorkerState:
    """One live worker as a scrape sees it."""

    slot: int
    pid: int
    capacity: int
    start_wall: float
    level: int
    websockets: int
    above_ns: list[int]  # above_ns[k]: ns with at least k in flight; [0] is the time observed
    listeners: tuple[int, ...] = ()
    pool_size: int = 0
    pool_in_use: int = 0
    pool_waiting: int = 0


@dataclass
class Snapshot:
    """Everything in a store at one moment: live workers plus the merged records of all."""

    workers: list[WorkerState] = field(default_factory=list)
    # Levels of every slot ever seen (dead workers' included), to keep per-worker counters rising.
    levels: dict[int, list[int]] = field(default_factory=dict)
    folded: set[str] = field(default_factory=set)
    # The last known capacity of every slot, so a dead worker's all-busy time stays exposed.
    capacities: dict[int, int] = field(default_factory=dict)
    # Event-loop and thread-pool totals of every slot that ran a measured loop (LOOP_VALUES).
    loops: dict[int, list[int]] = field(default_factory=dict)
    # Each key's records as read, summed when ``records`` is first asked for.
    _parts: dict[tuple[int, str], list[memoryview]] = field(default_factory=dict, repr=False)
    _totals: dict[tuple[int, str], list[int]] | None = field(default=None, repr=False)

    def add_record(self, kind: int, key: str, values: memoryview) -> None:
        """Count a record's values (64-bit words) in the totals of its key."""
        self._totals = None
        parts = self._parts.get((kind, key))
        if parts is None:
            self._parts[(kind, key)] = [values]
        else:
            parts.append(values)

    @property
    def records(self) -> dict[tuple[int, str], list[int]]:
        """The values of each (kind, key), summed over every worker and the archive."""
        if self._totals is None:
            self._totals = {key: _sum_columns(parts) for key, parts in self._parts.items()}
        return self._totals

    def add_levels(self, slot: int, above: list[int], capacity: int = 0) -> None:
        if capacity:
            self.capacities[slot] = capacity
        have = self.levels.get(slot)
        if have is None:
            self.levels[slot] = list(above)
        else:
            for i, v in enumerate(above):
                have[i] += v


    def add_loop(self, slot: int, values: Sequence[int]) -> None:
        """Add a slot's loop totals; the method is the last one seen."""
        have = self.loops.get(slot)
        if have is None:
            self.loops[slot] = list(values)
            return
        for i in range(L_BUSY, LOOP_VALUES):
            have[i] += values[i]
        if values[L_METHOD]:
            have[L_METHOD] = values[L_METHOD]


def _sum_columns(parts: list[memoryview]) -> list[int]:
    """Column sums of equally long rows of 64-bit words; a row of another length (written by
    another version) adds the columns the first row has.

    Summing a column of one joined buffer runs in C: at 64 workers x 200 routes this is a
    third of the time of adding row by row.
    """
    width = len(parts[0])
    if len(parts) == 1:
        return parts[0].tolist()
    if all(len(p) == width for p in parts):
        joined = memoryview(b"".join(parts)).cast("q")
        return [sum(joined[i::width]) for i in range(width)]
    return [sum(p[i] for p in parts if i < len(p)) for i in range(width)]


def _read_words(path: Path, *, whole: bool = True) -> memoryview | None:
    """A store file's words up to what its header says is used; with ``whole=False`` only its
    header, once the file is known to hold all of them. None for a file that is not one."""
    try:
        fd = _open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:  # vanished between listing and opening: just folded away
        return None
    except OSError as e:  # a symlink (O_NOFOLLOW), a directory, no permission
        _warn_once(path, e.strerror or str(e))
        return None
    try:
        return _read_fd(fd, path, whole=whole)
    finally:
        os.close(fd)


def _read_fd(fd: int, path: Path, *, whole: bool = True) -> memoryview | None:
    head = os.pread(fd, HEADER_WORDS * 8, 0)
    if len(head) < HEADER_WORDS * 8:
        _warn_once(path, "too short")
        return None
    h = memoryview(head).cast("q")
    used = h[H_USED]
    if h[H_MAGIC] != MAGIC or not HEADER_WORDS <= used <= CHUNK_WORDS:
        _warn_once(path, "not a workermeter store file")
        return None
    if not whole:
        if os.fstat(fd).st_size < used * 8:
            _warn_once(path, "truncated")
            return None
        return h
    data = os.pread(fd, used * 8, 0)
    if len(data) < used * 8:
        _warn_once(path, "truncated")
        return None
    return memoryview(data).cast("q")


Records = tuple[tuple[int, str, int, int], ...]
"""Each record's kind, key, and the first and end words of its values."""
Layout = tuple[int, Records]
"""Where a chunk's records are: the word parsing stopped at, and the records before it. A
record never moves once written."""


def _layout(words: memoryview, first: int, path: Path, known: Layout | None = None) -> Layout:
    """The layout of the records in ``words`` from word ``first``, going on from ``known``."""
    used = len(words)  # what was read: H_USED in it may have grown since
    pos, found = known if known is not None else (first, ())
    records: list[tuple[int, str, int, int]] = []
    raw = words.cast("B")
    while pos < used:
        size, kind, _lane, key_len = _PACK.unpack_from(raw, pos * 8)
        key_words = (key_len + 7) // 8
        if (
            kind not in (ROUTE, PROCESS, LEVELS, FOLDED, LOOPS)
            or key_len < 0
            or size < RECORD_HEADER + key_words
        ):
            _warn_once(path, f"corrupt record at word {pos}")
            break
        if pos + size > used:
            _warn_once(path, f"record past the end at word {pos}")
            break
        start = (pos + RECORD_HEADER) * 8
        try:
            key = str(raw[start : start + key_len], "utf-8")
        except UnicodeDecodeError:
            _warn_once(path, f"corrupt key at word {pos}")
            break
        records.append((kind, key, pos + RECORD_HEADER + key_words, pos + size))
        pos += size
    return pos, found + tuple(records) if records else found


_warned: set[tuple[str, str]] = set()


def _warn_once(path: Path, why: str) -> None:
    if (str(path), why) not in _warned:
        _warned.add((str(path), why))
        log.warning("workermeter: skipping %s: %s", path, why)


def level_of(word: int) -> int:
    """The number of requests in flight, from the level word."""
    return word & ((1 << LEVEL_BITS) - 1)


def _steady(word: int) -> bool:
    return not (word >> LEVEL_BITS) & 1


def _above_now(words: memoryview, now: int) -> list[int]:
    """ABOVE[] of a worker as of ``now``, counting the elapsed part of requests in flight.

    ``words`` must be a consistent copy (see _read_chunk0). The writer reads the time of a change
    after marking the update, and ``now`` was read before the copy was taken: a copy from before
    a change counts no further than the change will commit, so counters never go backwards.
    """
    level = min(level_of(words[H_LEVEL]), MAX_LEVEL)
    above = list(words[ABOVE : ABOVE + MAX_LEVEL + 1])
    above[0] = max(now - words[H_START_MONO_NS], 0)
    for k in range(1, level + 1):
        above[k] += max(now - words[ENTER + k], 0)
    return above


def _loop_now(words: memoryview, now: int) -> list[int] | None:
    """A worker's loop totals (LOOP_VALUES) as of ``now``, counting the time since its last
    update by what the loop was doing then; None when it measures no loop and has no pool.

    ``words`` must be a consistent copy, taken as for _above_now: the writer reads its time only
    once it has marked its update, so no total here is more than the next update commits.
    """
    method = words[H_LOOP_METHOD]
    if not method and not words[H_POOL_SIZE]:
        return None
    busy, observed = words[H_LOOP_BUSY], 0
    if method:
        mark, grace = words[H_LOOP_MARK], words[H_LOOP_GRACE]
        since = abs(mark)
        elapsed = max(now - since, 0)
        if grace > 0:
            elapsed = max(elapsed - grace, 0)
            busy += elapsed
        elif mark > 0:
            busy += elapsed
        observed = max(since - words[H_LOOP_START], 0) + elapsed
    pool_elapsed = max(now - words[H_POOL_SINCE], 0) if words[H_POOL_SINCE] else 0
    pool_busy = words[H_POOL_BUSY] + max(words[H_POOL_IN_USE], 0) * pool_elapsed
    pool_wait = words[H_POOL_WAIT] + max(words[H_POOL_WAITING], 0) * pool_elapsed
    return [method, busy, observed, pool_busy, pool_wait]


# The words a consistent copy of chunk 0 is checked against: from the level word to the loop's.
_CHECKED = slice(H_LEVEL, H_LOOP_MARK + 1)


def _read_chunk0(
    path: Path, clock: Callable[[], int], *, live: bool
) -> tuple[memoryview, int] | None:
    """A copy of a worker's chunk 0 whose level state is consistent, and the time it stands for.

    The copy is taken while no level update is under way and the level word is the same after
    it. The time is read between the copy and that check: after every change the copy holds,
    before every change it misses (a writer reads its time only once it has marked its update).
    Counted up to that time, no counter derived from the levels ever goes backwards. A dead
    worker's copy is taken as it is.
    """
    try:
        fd = _open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:  # folded away meanwhile
        return None
    except OSError as e:  # a symlink (O_NOFOLLOW), a directory, no permission
        _warn_once(path, e.strerror or str(e))
        return None
    try:
        deadline = time.monotonic() + 0.5
        while True:
            words = _read_fd(fd, path)
            now = clock()
            if words is None:
                return None
            if not live:
                return words, now
            word = words[H_LEVEL]
            if (
                _steady(word)
                and not words[H_LOOP_SEQ] & 1
                and os.pread(fd, (H_LOOP_MARK + 1 - H_LEVEL) * 8, H_LEVEL * 8)
                == words[_CHECKED].tobytes()
            ):
                return words, now
            if time.monotonic() > deadline:  # a writer stopped mid-update: take what is there
                _warn_once(path, "level updates never settled; read as is")
                return words, now
            time.sleep(0)  # let a writer in this process finish its update
    finally:
        os.close(fd)


class Store:
    """A store directory: workers attach to it, scrapes collect from it."""

    def __init__(self, directory: Path, *, clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self.directory = ensure_private_dir(directory)
        self.clock = clock
        # Each worker chunk's layout as last read, by file name: a scrape parses new records only.
        self._layouts: dict[str, Layout] = {}

    def attach(
        self,
        *,
        capacity: int,
        wall_clock: Callable[[], float] = time.time,
        listeners: Sequence[int] = (),
    ) -> Region:
        """Claim a slot and create this process's region."""
        return Region(
            self.directory,
            capacity=capacity,
            clock=self.clock,
            wall_clock=wall_clock,
            listeners=listeners,
        )

    @contextlib.contextmanager
    def _dir_lock(self, how: int) -> Iterator[None]:
        fd = _open_nofollow(self.directory / "dir.lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, how)
            yield
        finally:
            os.close(fd)

    def collect(self) -> Snapshot:
        """Merge the archive and every worker's files; then fold the dead into the archive."""
        with self._dir_lock(fcntl.LOCK_SH):
            snap, dead = self._read_all()
        if dead:  # tidy up: the snapshot already counts them
            with self._dir_lock(fcntl.LOCK_EX):
                self._fold_dead()
        return snap

    def _chunk_files(self) -> dict[tuple[int, int, str], list[Path]]:
        """Chunk files grouped by worker (slot, pid, token), chunk 0 first; groups without a
        readable chunk 0 of ours (foreign or corrupt files, left alone with a warning) are not
        listed."""
        found: dict[tuple[int, int, str], list[tuple[int, Path]]] = {}
        for entry in os.scandir(self.directory):
            m = _NAME.match(entry.name)
            if m:
                slot, pid, token, index = m.groups()
                found.setdefault((int(slot), int(pid), token), []).append(
                    (int(index), Path(entry.path))
                )
        groups = {k: [p for _, p in sorted(v)] for k, v in found.items()}
        return {
            k: v
            for k, v in groups.items()
            if v[0].name.endswith("-0.wm") and _read_words(v[0], whole=False) is not None
        }

    def _read_all(self) -> tuple[Snapshot, bool]:
        snap = Snapshot()
        self._merge_archive(snap, self.directory / "archive.wm")
        dead = False
        groups = self._chunk_files()
        for (slot, _pid, _token), paths in sorted(groups.items()):
            alive = _is_alive(paths[0])
            if alive is None:
                continue
            if not alive:
                # Dead but not folded yet: its counts are read from its files, so a worker that
                # exits while a scrape runs is never missing from it.
                dead = True
                if _identity(paths[0]) not in snap.folded:
                    self._merge_worker(snap, slot, paths, live=False)
                continue
            self._merge_worker(snap, slot, paths, live=True)
        present = {path.name for paths in groups.values() for path in paths}
        self._layouts = {k: v for k, v in self._layouts.items() if k in present}
        return snap, dead

    def _merge_worker(self, snap: Snapshot, slot: int, paths: list[Path], *, live: bool) -> None:
        for index, path in enumerate(paths):
            if index == 0:
                read = _read_chunk0(path, self.clock, live=live)
                if read is None:
                    return
                words, now = read
                above = _above_now(words, now)
                snap.add_levels(slot, above, words[H_CAPACITY])
                loop = _loop_now(words, now)
                if loop is not None:
                    snap.add_loop(slot, loop)
                if live:
                    snap.workers.append(
                        WorkerState(
                            slot=slot,
                            pid=words[H_PID],
                            capacity=words[H_CAPACITY],
                            start_wall=words[H_START_WALL_NS] / 1e9,
                            level=level_of(words[H_LEVEL]),
                            websockets=words[H_WEBSOCKETS],
                            above_ns=above,
                            pool_size=words[H_POOL_SIZE],
                            pool_in_use=words[H_POOL_IN_USE],
                            pool_waiting=words[H_POOL_WAITING],
                            listeners=tuple(
                                i for i in words[H_LISTENERS : H_LISTENERS + MAX_LISTENERS] if i
                            ),
                        )
                    )
            else:
                chunk = _read_words(path)
                if chunk is None:
                    continue
                words = chunk
            # A worker's records are only ever appended: parse only those new since the last
            # scrape. The name holds a random token: no other worker's chunk ever has it.
            known = self._layouts.get(path.name)
            if known is not None and known[0] > len(words):
                known = None  # shorter than when last read: not the file it was
            first = FIRST_RECORD if index == 0 else HEADER_WORDS
            layout = self._layouts[path.name] = _layout(words, first, path, known)
            self._merge(snap, words, layout[1], path)

    def _merge_archive(self, snap: Snapshot, path: Path) -> None:
        archive = _read_words(path)
        if archive is not None:  # rewritten by every fold: parsed whole each time
            self._merge(snap, archive, _layout(archive, HEADER_WORDS, path)[1], path)

    def _merge(
        self,
        snap: Snapshot,
        words: memoryview,
        records: Records,
        path: Path,
    ) -> None:
        for kind, key, start, end in records:
            values = words[start:end]
            if kind == FOLDED:
                snap.folded.add(key)
            elif kind == LEVELS:
                # ABOVE[0..MAX_LEVEL], then the slot's capacity
                above, capacity = list(values[: MAX_LEVEL + 1]), values[MAX_LEVEL + 1 :]
                try:
                    snap.add_levels(int(key), above, capacity[0] if capacity else 0)
                except ValueError:
                    _warn_once(path, f"bad slot key {key!r}")
            elif kind == LOOPS:
                try:
                    snap.add_loop(int(key), [*values[:LOOP_VALUES], 0, 0, 0, 0, 0][:LOOP_VALUES])
                except ValueError:
                    _warn_once(path, f"bad slot key {key!r}")
            else:
                snap.add_record(kind, key, values)

    def _fold_dead(self) -> None:
        """Move every dead worker's totals into the archive and delete its files.

        The elapsed part of requests a worker was serving when it died is counted up to now:
        at most the time since its death too much, never less than a scrape already reported.
        """
        archive_path = self.directory / "archive.wm"
        snap = Snapshot()
        self._merge_archive(snap, archive_path)
        previously = snap.folded
        snap.folded = set()
        doomed: list[list[Path]] = []
        for (slot, _pid, _token), paths in sorted(self._chunk_files().items()):
            fd = _lock_if_dead(paths[0])
            if fd is None:
                continue
            try:
                ident = _identity(paths[0])
                if ident is not None and ident not in previously:
                    self._merge_worker(snap, slot, paths, live=False)
            finally:
                os.close(fd)
            if ident is not None:
                snap.folded.add(ident)
            doomed.append(paths)
        if not doomed:
            return
        # The archive names what it has merged, so a fold interrupted before the files below are
        # deleted is finished by the next one without counting anything twice.
        _write_archive(archive_path, snap)
        for paths in doomed:
            for path in reversed(paths):  # chunk 0 last: it is what marks a worker as present
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def _identity(path: Path) -> str | None:
    words = _read_words(path, whole=False)
    if words is None:
        return None
    return f"{path.name}@{words[H_START_WALL_NS]}"


def has_live_worker(directory: Path) -> bool:
    """Whether any worker process still holds a region in the store ``directory``."""
    try:
        names = os.listdir(directory)
    except OSError:  # gone or unreadable: nobody can be writing to it
        return False
    firsts = [name for name in names if _NAME.match(name) and name.endswith("-0.wm")]
    return any(_is_alive(directory / name) for name in firsts)


def _is_alive(path: Path) -> bool | None:
    """True when the owner still holds chunk 0's lock; None when the file is gone."""
    try:
        fd = _open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _lock_if_dead(path: Path) -> int | None:
    try:
        fd = _open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _write_archive(path: Path, snap: Snapshot) -> None:
    """Write the merged totals of the dead as one file, replacing the old archive atomically."""
    body = bytearray()
    entries: list[tuple[int, str, list[int]]] = [
        (k, key, v) for (k, key), v in snap.records.items()
    ]
    entries += [
        (LEVELS, str(slot), [*above, snap.capacities.get(slot, 0)])
        for slot, above in snap.levels.items()
    ]
    entries += [(LOOPS, str(slot), values) for slot, values in snap.loops.items()]
    entries += [(FOLDED, ident, []) for ident in sorted(snap.folded)]
    for kind, key, values in entries:
        raw = key.encode()
        pad = (-len(raw)) % 8
        size = RECORD_HEADER + (len(raw) + pad) // 8 + len(values)
        body += _PACK.pack(size, kind, 0, len(raw)) + raw + b"\0" * pad
        body += struct.pack(f"<{len(values)}q", *values)
    used = HEADER_WORDS + len(body) // 8
    if used > CHUNK_WORDS:
        raise RuntimeError(f"workermeter archive {path} would exceed {CHUNK_BYTES} bytes")
    header = struct.pack(f"<{HEADER_WORDS}q", MAGIC, used, *([0] * (HEADER_WORDS - 2)))
    tmp = path.with_name(f".archive-{os.getpid()}.tmp")
    fd = _open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, header + bytes(body))
    finally:
        os.close(fd)
    os.replace(tmp, path)
