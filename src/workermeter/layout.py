"""What a store file holds: the words of a worker's header, its concurrency levels and its
records, and how one file is read and parsed without trusting it.

Every value is a 64-bit integer. Chunk 0 of a worker starts with HEADER_WORDS header words, then
its concurrency levels (ENTER, ABOVE), then records; further chunks hold a header and records. A
record is RECORD_HEADER words (its length in words, kind, lane and key length), the key's UTF-8
bytes padded to whole words, then its values.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from pathlib import Path

log = logging.getLogger("workermeter")

MAGIC = int.from_bytes(b"WMSTORE3", "little")
EARLIER = {int.from_bytes(b"WMSTORE2", "little")}  # layouts of earlier versions, not read
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
H_HOT_PATH = 26  # the hot path the worker runs: an index into HOT_PATHS (0: not told)
HEADER_WORDS = 32

LOOP_METHODS = ("", "asyncio", "uvloop", "gevent", "lag_estimate")
HOT_PATHS = ("unknown", "python", "compiled")  # speedups.PATH, and 0 for a writer that did not say

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
NAME = re.compile(r"w(\d+)-(\d+)-([0-9a-f]{8})-(\d+)\.wm\Z")
PACK = struct.Struct("<4q")


def open_nofollow(path: Path, flags: int, mode: int = 0o600) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


def read_words(path: Path, *, whole: bool = True) -> memoryview | None:
    """A store file's words up to what its header says is used; with ``whole=False`` only its
    header, once the file is known to hold all of them. None for a file that is not one."""
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:  # vanished between listing and opening: just folded away
        return None
    except OSError as e:  # a symlink (O_NOFOLLOW), a directory, no permission
        warn_once(path, e.strerror or str(e))
        return None
    try:
        return read_fd(fd, path, whole=whole)
    finally:
        os.close(fd)


def read_fd(fd: int, path: Path, *, whole: bool = True) -> memoryview | None:
    head = os.pread(fd, HEADER_WORDS * 8, 0)
    if len(head) < HEADER_WORDS * 8:
        warn_once(path, "too short")
        return None
    h = memoryview(head).cast("q")
    used = h[H_USED]
    if h[H_MAGIC] in EARLIER:
        warn_once(path, "written by an earlier version of workermeter, whose counts it does not "
                  "read: restart the server's workers after upgrading")  # fmt: skip
        return None
    if h[H_MAGIC] != MAGIC or not HEADER_WORDS <= used <= CHUNK_WORDS:
        warn_once(path, "not a workermeter store file")
        return None
    if not whole:
        if os.fstat(fd).st_size < used * 8:
            warn_once(path, "truncated")
            return None
        return h
    data = os.pread(fd, used * 8, 0)
    if len(data) < used * 8:
        warn_once(path, "truncated")
        return None
    return memoryview(data).cast("q")


Records = tuple[tuple[int, str, int, int], ...]
"""Each record's kind, key, and the first and end words of its values."""
Layout = tuple[int, Records]
"""Where a chunk's records are: the word parsing stopped at, and the records before it. A
record never moves once written."""


def parse_layout(words: memoryview, first: int, path: Path, known: Layout | None = None) -> Layout:
    """The layout of the records in ``words`` from word ``first``, going on from ``known``."""
    used = len(words)  # what was read: H_USED in it may have grown since
    pos, found = known if known is not None else (first, ())
    records: list[tuple[int, str, int, int]] = []
    raw = words.cast("B")
    while pos < used:
        size, kind, _lane, key_len = PACK.unpack_from(raw, pos * 8)
        key_words = (key_len + 7) // 8
        if (
            kind not in (ROUTE, PROCESS, LEVELS, FOLDED, LOOPS)
            or key_len < 0
            or size < RECORD_HEADER + key_words
        ):
            warn_once(path, f"corrupt record at word {pos}")
            break
        if pos + size > used:
            warn_once(path, f"record past the end at word {pos}")
            break
        start = (pos + RECORD_HEADER) * 8
        try:
            key = str(raw[start : start + key_len], "utf-8")
        except UnicodeDecodeError:
            warn_once(path, f"corrupt key at word {pos}")
            break
        records.append((kind, key, pos + RECORD_HEADER + key_words, pos + size))
        pos += size
    return pos, found + tuple(records) if records else found


_warned: set[tuple[str, str]] = set()


def warn_once(path: Path, why: str) -> None:
    if (str(path), why) not in _warned:
        _warned.add((str(path), why))
        log.warning("workermeter: skipping %s: %s", path, why)


def level_of(word: int) -> int:
    """The number of requests in flight, from the level word."""
    return word & ((1 << LEVEL_BITS) - 1)


def steady(word: int) -> bool:
    return not (word >> LEVEL_BITS) & 1
