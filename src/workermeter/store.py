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

What the words of a file mean is in :mod:`workermeter.layout`; what a scrape makes of them, in
:mod:`workermeter.snapshot`.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .layout import (
    CHUNK_BYTES,
    CHUNK_WORDS,
    FIRST_RECORD,
    FOLDED,
    H_CAPACITY,
    H_HOT_PATH,
    H_LEVEL,
    H_LISTENERS,
    H_MAGIC,
    H_PID,
    H_POOL_IN_USE,
    H_POOL_SIZE,
    H_POOL_WAITING,
    H_SLOT,
    H_START_MONO_NS,
    H_START_WALL_NS,
    H_USED,
    H_WEBSOCKETS,
    HEADER_WORDS,
    HOT_PATHS,
    LEVELS,
    LOOP_VALUES,
    LOOPS,
    MAGIC,
    MAX_LEVEL,
    MAX_LISTENERS,
    NAME,
    PACK,
    PROCESS,
    RECORD_HEADER,
    Layout,
    Records,
    level_of,
    open_nofollow,
    parse_layout,
    read_words,
    warn_once,
)
from .record_values import FINE_CELLS, P_SERVICE
from .snapshot import Snapshot, WorkerState, above_now, loop_now, read_chunk0


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
    """One mapped file of a region; ``words`` is its writable view."""

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
        self._views: list[memoryview] = []
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
        fd = open_nofollow(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
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

    def allocate(self, kind: int, key: str, lane: int, nvalues: int) -> memoryview:
        """Append a zeroed record and return a view of its values."""
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
            chunk.mm[start : start + 32] = PACK.pack(size, kind, lane, len(raw))
            chunk.mm[start + 32 : start + 32 + len(raw)] = raw
            w[H_USED] = used + size  # publish
            first = used + RECORD_HEADER + key_words
            return self.view(w[first : first + nvalues])

    def view(self, view: memoryview) -> memoryview:
        """``view``, a view of this region that the hot path writes through, kept so that
        :meth:`abandon` can release it: a mapping with views of it left cannot be closed."""
        self._views.append(view)
        return view

    def abandon(self) -> None:
        """Forget the region without touching the files: for a child process after fork.

        The descriptors are shared with the parent, whose locks stay held through its copies.
        """
        for view in self._views:
            view.release()
        self._views.clear()
        for chunk in self._chunks:
            chunk.close()
        os.close(self._slot_fd)
        self._chunks.clear()


def _claim_slot(directory: Path) -> tuple[int, int]:
    """Lock the lowest free slot index: indexes are reused when a worker is replaced."""
    for slot in range(65536):
        fd = open_nofollow(directory / f"slot-{slot}.lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return fd, slot
    raise RuntimeError(f"no free worker slot in {directory}")


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
        fd = open_nofollow(self.directory / "dir.lock", os.O_RDWR | os.O_CREAT)
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
            m = NAME.match(entry.name)
            if m:
                slot, pid, token, index = m.groups()
                found.setdefault((int(slot), int(pid), token), []).append(
                    (int(index), Path(entry.path))
                )
        groups = {k: [p for _, p in sorted(v)] for k, v in found.items()}
        return {
            k: v
            for k, v in groups.items()
            if v[0].name.endswith("-0.wm") and read_words(v[0], whole=False) is not None
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
        state: WorkerState | None = None
        for index, path in enumerate(paths):
            if index == 0:
                read = read_chunk0(path, self.clock, live=live)
                if read is None:
                    return
                words, now = read
                above = above_now(words, now)
                snap.add_levels(slot, above, words[H_CAPACITY])
                loop = loop_now(words, now)
                if loop is not None:
                    snap.add_loop(slot, loop)
                if live:
                    state = WorkerState(
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
                            hot_path=_hot_path(words[H_HOT_PATH]),
                            listeners=tuple(
                                i for i in words[H_LISTENERS : H_LISTENERS + MAX_LISTENERS] if i
                            ),
                        )
                    snap.workers.append(state)
            else:
                chunk = read_words(path)
                if chunk is None:
                    continue
                words = chunk
            # A worker's records are only ever appended: parse only those new since the last
            # scrape. The name holds a random token: no other worker's chunk ever has it.
            known = self._layouts.get(path.name)
            if known is not None and known[0] > len(words):
                known = None  # shorter than when last read: not the file it was
            first = FIRST_RECORD if index == 0 else HEADER_WORDS
            layout = self._layouts[path.name] = parse_layout(words, first, path, known)
            self._merge(snap, words, layout[1], path)
            if state is not None:  # every request is counted in its lane's service time
                state.requests += sum(
                    sum(words[start + P_SERVICE : start + P_SERVICE + FINE_CELLS])
                    for kind, _, start, _ in layout[1] if kind == PROCESS
                )

    def _merge_archive(self, snap: Snapshot, path: Path) -> None:
        archive = read_words(path)
        if archive is not None:  # rewritten by every fold: parsed whole each time
            self._merge(snap, archive, parse_layout(archive, HEADER_WORDS, path)[1], path)

    def _merge(
        self,
        snap: Snapshot,
        words: memoryview,
        records: Records,
        path: Path,
    ) -> None:
        for kind, key, start, end in snap.add_counts(words, records):
            values = words[start:end]
            if kind == FOLDED:
                snap.folded.add(key)
            elif kind == LEVELS:
                # ABOVE[0..MAX_LEVEL], then the slot's capacity
                above, capacity = list(values[: MAX_LEVEL + 1]), values[MAX_LEVEL + 1 :]
                try:
                    snap.add_levels(int(key), above, capacity[0] if capacity else 0)
                except ValueError:
                    warn_once(path, f"bad slot key {key!r}")
            elif kind == LOOPS:
                try:
                    snap.add_loop(int(key), [*values[:LOOP_VALUES], 0, 0, 0, 0, 0][:LOOP_VALUES])
                except ValueError:
                    warn_once(path, f"bad slot key {key!r}")

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
    words = read_words(path, whole=False)
    if words is None:
        return None
    return f"{path.name}@{words[H_START_WALL_NS]}"


def has_live_worker(directory: Path) -> bool:
    """Whether any worker process still holds a region in the store ``directory``."""
    try:
        names = os.listdir(directory)
    except OSError:  # gone or unreadable: nobody can be writing to it
        return False
    firsts = [name for name in names if NAME.match(name) and name.endswith("-0.wm")]
    return any(_is_alive(directory / name) for name in firsts)


def _is_alive(path: Path) -> bool | None:
    """True when the owner still holds chunk 0's lock; None when the file is gone."""
    try:
        fd = open_nofollow(path, os.O_RDONLY)
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
        fd = open_nofollow(path, os.O_RDONLY)
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
        body += PACK.pack(size, kind, 0, len(raw)) + raw + b"\0" * pad
        body += struct.pack(f"<{len(values)}q", *values)
    used = HEADER_WORDS + len(body) // 8
    if used > CHUNK_WORDS:
        raise RuntimeError(f"workermeter archive {path} would exceed {CHUNK_BYTES} bytes")
    header = struct.pack(f"<{HEADER_WORDS}q", MAGIC, used, *([0] * (HEADER_WORDS - 2)))
    tmp = path.with_name(f".archive-{os.getpid()}.tmp")
    fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, header + bytes(body))
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _hot_path(index: int) -> str:
    return HOT_PATHS[index] if 0 <= index < len(HOT_PATHS) else HOT_PATHS[0]
