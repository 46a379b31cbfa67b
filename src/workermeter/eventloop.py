"""Event-loop utilisation (ELU): the share of wall time a worker's event loop was not waiting for
I/O, as libuv and Node.js define it.

One meter per loop, installed on the server's loop (the one running the app) and writing into the
worker's region (store.H_LOOP_*) from the loop's own thread:

- asyncio: the loop waits only in ``loop._selector.select(timeout)``; that one method of the
  selector is replaced on the instance, so that every wait with a timeout is timed (a poll with
  timeout 0 does not wait: it counts as busy, as in libuv). Every other call goes to the selector
  as before.
- uvloop: libuv keeps the loop's idle time itself once ``uv_loop_configure(UV_METRICS_IDLE_TIME)``
  is set; it is read by a timer. uvloop does not document the entry point, so it is looked for and
  the estimate below is used where it is missing.
- gevent: the hub's loop runs *prepare* watchers just before it waits and *check* watchers just
  after: the time between the two is idle.
- elsewhere: an estimate from Poisson-timed probes: a probe late by more than 1 ms finds the loop
  busy, so the share of late probes estimates the share of busy time (it reads low for loops busy
  in bursts shorter than that).

Busy time counts CPU-bound code and blocking calls (``time.sleep``, a sync database driver inside
``async def``) alike; awaited I/O is idle. The window starts when the meter is installed.
"""

from __future__ import annotations

import ctypes
import logging
import random
import sys
import weakref
from collections.abc import Callable
from typing import Any

from . import layout

log = logging.getLogger("workermeter")

ASYNCIO = layout.LOOP_METHODS.index("asyncio")
UVLOOP = layout.LOOP_METHODS.index("uvloop")
GEVENT = layout.LOOP_METHODS.index("gevent")
ESTIMATE = layout.LOOP_METHODS.index("lag_estimate")

PUBLISH_INTERVAL = 0.25  # seconds between updates of a loop measured by a timer
ESTIMATE_MEAN = 0.05  # mean seconds between the estimate's probes
LATE_NS = 2_000_000  # a probe later than this found the loop busy (timers may be ms-rounded)
_SLACK_NS = 5_000_000  # a timer may fire this late on an idle loop (libuv's clock is in ms)

_H_SEQ = layout.H_LOOP_SEQ
_H_BUSY = layout.H_LOOP_BUSY
_H_MARK = layout.H_LOOP_MARK


class LoopWords:
    """The loop's words of a worker's region, and how they change.

    A change of more than the mark word goes: the sequence word turns odd (:meth:`begin`), the
    time is read, the words are written, the sequence word turns even (:meth:`end`). Only the
    loop's thread writes.
    """

    __slots__ = ("busy", "clock", "h", "seq")

    def __init__(self, header: memoryview, clock: Callable[[], int]) -> None:
        self.h = header
        self.clock = clock
        self.seq = header[_H_SEQ]
        if self.seq & 1:  # a writer of this region died mid-update: it cannot be this process's
            self.seq += 1
        self.busy = header[_H_BUSY]

    def begin(self) -> int:
        """Mark an update under way; the time of the change."""
        self.seq += 1
        self.h[_H_SEQ] = self.seq
        return self.clock()

    def end(self) -> None:
        self.seq += 1
        self.h[_H_SEQ] = self.seq

    def start(self, method: int, grace: int = 0) -> int:
        """Begin measuring now, the loop busy (it runs this), updated by a timer due within
        ``grace`` ns if that is given; the time it began."""
        h = self.h
        now = self.begin()
        h[layout.H_LOOP_START] = now
        h[_H_MARK] = now
        h[layout.H_LOOP_GRACE] = grace
        h[_H_BUSY] = self.busy = 0
        h[layout.H_LOOP_METHOD] = method
        self.end()
        return now

    def timed(self, busy: int, grace: int) -> int:
        """An update by a timer: ``busy`` ns in all since the start, the next one due within
        ``grace`` ns. Returns the time of the update."""
        h = self.h
        now = self.begin()
        self.busy = busy = max(busy, self.busy)  # a counter: never back
        h[_H_BUSY] = busy
        h[_H_MARK] = now
        h[layout.H_LOOP_GRACE] = grace
        self.end()
        return now


class SelectorMeter:
    """Times the waits of an asyncio loop's selector: its ``select`` stands in for the
    selector's own, on the selector instance."""

    __slots__ = ("_clock", "_select", "_since", "_words", "h", "selector")

    def __init__(self, selector: Any, words: LoopWords) -> None:
        self.selector = selector
        self._select = selector.select
        self._words = words
        self._clock = words.clock
        self.h = words.h
        self._since = words.start(ASYNCIO)

    # The one call on the loop's path: written out, it runs on every iteration that waits.
    # Going idle is an update of two words, between odd and even sequence words (see store.py);
    # waking up writes the mark alone.
    def select(self, timeout: float | None = None) -> Any:
        if timeout is not None and timeout <= 0:
            return self._select(timeout)  # a poll that does not wait is busy time, as in libuv
        h = self.h
        words = self._words
        seq = words.seq + 1
        h[_H_SEQ] = seq
        now = self._clock()
        h[_H_MARK] = -now
        h[_H_BUSY] = words.busy = words.busy + now - self._since
        h[_H_SEQ] = words.seq = seq + 1
        try:
            return self._select(timeout)
        finally:
            h[_H_MARK] = self._since = self._clock()


class _LibuvIdle:
    """libuv's idle-time metric of one uvloop loop, through uvloop's exported loop pointer."""

    def __init__(self, loop: Any) -> None:
        # The extension module holding the loop (uvloop.Loop subclasses uvloop.loop.Loop).
        module = next(
            sys.modules[k.__module__]
            for k in type(loop).__mro__
            if hasattr(sys.modules.get(k.__module__), "libuv_get_loop_t_ptr")
        )
        lib = ctypes.CDLL(module.__file__)
        capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
        capsule_pointer.restype = ctypes.c_void_p
        capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
        pointer = capsule_pointer(module.libuv_get_loop_t_ptr(loop), None)
        if not pointer:
            raise OSError("uvloop gave no loop pointer")
        self._pointer = ctypes.c_void_p(pointer)
        configure = lib.uv_loop_configure
        configure.restype = ctypes.c_int
        uv_metrics_idle_time = 1  # uv_loop_option UV_METRICS_IDLE_TIME
        rc = configure(self._pointer, ctypes.c_int(uv_metrics_idle_time))
        if rc != 0:
            raise OSError(f"uv_loop_configure failed ({rc})")
        idle = lib.uv_metrics_idle_time
        idle.restype = ctypes.c_uint64
        idle.argtypes = [ctypes.c_void_p]
        self._idle = idle
        self.base: int = int(idle(self._pointer))  # idle counts from the configure call

    def idle_ns(self) -> int:
        return int(self._idle(self._pointer)) - self.base


class TimedMeter:
    """A loop measured by a timer on it: uvloop's idle time, or the late-probe estimate."""

    def __init__(self, loop: Any, words: LoopWords, libuv: _LibuvIdle | None, seed: int) -> None:
        self._loop = loop
        self._words = words
        self._libuv = libuv
        self._random = random.Random(seed)
        self._stopped = False
        method = UVLOOP if libuv is not None else ESTIMATE
        delay = self._delay()
        self._start = self._last = words.start(method, self._grace(delay))
        self._due = self._start + int(delay * 1e9)
        self._estimate = 0
        self._handle = loop.call_later(delay, self._tick)

    def _delay(self) -> float:
        if self._libuv is not None:
            return PUBLISH_INTERVAL
        return min(self._random.expovariate(1 / ESTIMATE_MEAN), 5 * ESTIMATE_MEAN)

    @staticmethod
    def _grace(delay: float) -> int:
        return int(delay * 1e9) + _SLACK_NS

    def _tick(self) -> None:
        if self._stopped:
            return
        words = self._words
        now = words.clock()
        delay = self._delay()
        if self._libuv is not None:
            busy = now - self._start - self._libuv.idle_ns()
        else:
            if now - self._due > LATE_NS:
                self._estimate += now - self._last
            busy = self._estimate
        self._last = words.timed(busy, self._grace(delay))
        self._due = self._last + int(delay * 1e9)
        self._handle = self._loop.call_later(delay, self._tick)

    def stop(self) -> None:
        self._stopped = True
        self._handle.cancel()


class GeventMeter:
    """Times the waits of gevent's hub loop with a prepare watcher (about to wait) and a check
    watcher (done waiting)."""

    def __init__(self, hub_loop: Any, words: LoopWords) -> None:
        self._words = words
        self._since = words.start(GEVENT)
        self._prepare = hub_loop.prepare(ref=False)
        self._check = hub_loop.check(ref=False)
        # libev runs higher priorities first: ours goes last before the wait (after gevent's own
        # callbacks) and first after it.
        self._prepare.priority = -2
        self._check.priority = 2
        self._prepare.start(self._idle)
        self._check.start(self._busy)

    def _idle(self) -> None:
        words = self._words
        h = words.h
        seq = words.seq + 1
        h[_H_SEQ] = seq
        now = words.clock()
        h[_H_MARK] = -now
        h[_H_BUSY] = words.busy = words.busy + now - self._since
        h[_H_SEQ] = words.seq = seq + 1

    def _busy(self) -> None:
        self._words.h[_H_MARK] = self._since = self._words.clock()

    def stop(self) -> None:
        self._prepare.stop()
        self._check.stop()


# The loops measured in this process, each by one meter: a second install on the same loop (two
# middleware, a nested app) finds it here and adds nothing.
_installed: weakref.WeakKeyDictionary[Any, object] = weakref.WeakKeyDictionary()
# gevent's loops take no weak reference; a hub's loop lives as long as its thread anyway.
_hubs: dict[int, tuple[Any, GeventMeter]] = {}


# One LoopWords per region: its sequence word must have a single writer's count.
_words: weakref.WeakKeyDictionary[Any, LoopWords] = weakref.WeakKeyDictionary()


def loop_words(owner: Any, header: memoryview, clock: Callable[[], int]) -> LoopWords:
    """The loop words of ``owner``'s region (``header``), made on first use."""
    words = _words.get(owner)
    if words is None:
        words = _words[owner] = LoopWords(header, clock)
    return words


def install_asyncio(loop: Any, words: LoopWords) -> str | None:
    """Measure ``loop`` (the running asyncio-compatible loop of the server) into ``words``.

    Returns the method's name, or None when this loop is measured already. Never raises for a
    loop it cannot hook: it falls back to the estimate.
    """
    if loop in _installed:
        return None
    selector = getattr(loop, "_selector", None)
    meter: object
    if type(loop).__module__.startswith("uvloop"):
        try:
            libuv: _LibuvIdle | None = _LibuvIdle(loop)
        except (OSError, AttributeError, KeyError, TypeError, StopIteration) as e:
            # uvloop without its loop pointer or libuv's symbols (another build): estimate.
            log.info("workermeter: uvloop's idle time is not readable (%s); estimating ELU", e)
            libuv = None
        meter = TimedMeter(loop, words, libuv, seed=id(loop))
    elif isinstance(getattr(getattr(selector, "select", None), "__self__", None), SelectorMeter):
        return None  # measured by a meter of another copy of this module
    elif selector is not None and hasattr(selector, "__dict__") and callable(selector.select):
        meter = SelectorMeter(selector, words)
        selector.select = meter.select  # the instance's: shadows the class's method
    else:
        meter = TimedMeter(loop, words, None, seed=id(loop))
    _installed[loop] = meter
    return layout.LOOP_METHODS[words.h[layout.H_LOOP_METHOD]]


def install_gevent(words: LoopWords) -> str | None:
    """Measure the gevent hub of this thread into ``words``; None when measured already or
    gevent is not in use."""
    gevent = sys.modules.get("gevent")
    if gevent is None:
        return None
    loop = gevent.get_hub().loop
    if id(loop) in _hubs:
        return None
    _hubs[id(loop)] = (loop, GeventMeter(loop, words))
    return "gevent"


def uninstall(loop: Any) -> None:
    """Stop measuring ``loop`` (tests; a loop that closes takes its meter with it)."""
    meter = _installed.pop(loop, None) if id(loop) not in _hubs else _hubs.pop(id(loop))[1]
    if isinstance(meter, SelectorMeter):
        del meter.selector.select  # the class's method again
    elif isinstance(meter, TimedMeter | GeventMeter):
        meter.stop()
