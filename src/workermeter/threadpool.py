"""The thread pool that runs an async app's sync code, measured exactly.

Starlette and FastAPI run sync endpoints and dependencies in anyio's worker threads, under the
loop's default ``CapacityLimiter`` (40 tokens unless the app changes it): a thread is taken while
its task holds a token. The limiter keeps its holders in a set and its waiting tasks in an ordered
dict; those two are replaced by versions that count, so every change of the threads taken and the
tasks waiting is written into the worker's region (store.H_POOL_*) as it happens, and a scrape
turns them into thread-seconds taken and task-seconds waited without sampling.

Everything happens on the loop's thread (anyio changes the limiter only there), under the loop's
sequence word (:class:`~workermeter.eventloop.LoopWords`).
"""

from __future__ import annotations

import logging
import sys
from collections import OrderedDict
from typing import Any

from . import layout
from .eventloop import LoopWords

log = logging.getLogger("workermeter")


class PoolWords:
    """Writes the pool's words: threads taken, tasks waiting, and their time integrals."""

    def __init__(self, words: LoopWords, limiter: Any) -> None:
        self._words = words
        self._limiter = limiter
        h = words.h
        self._busy = h[layout.H_POOL_BUSY]
        self._wait = h[layout.H_POOL_WAIT]
        self._since = 0
        self.taken = 0
        self.waiting = 0
        self.publish()

    def counts(self, limiter: Any) -> bool:
        """Whether this is the limiter counted."""
        return limiter is self._limiter

    def publish(self, taken: int = 0, waiting: int = 0) -> None:
        """The pool now has ``taken`` threads in use and ``waiting`` tasks in line, the changes
        relative to what it had (0, 0: only the size may have changed)."""
        words = self._words
        h = words.h
        now = words.begin()
        if self._since:
            elapsed = now - self._since
            self._busy += self.taken * elapsed
            self._wait += self.waiting * elapsed
        self._since = now
        self.taken += taken
        self.waiting += waiting
        h[layout.H_POOL_BUSY] = self._busy
        h[layout.H_POOL_WAIT] = self._wait
        h[layout.H_POOL_SINCE] = now
        h[layout.H_POOL_IN_USE] = self.taken
        h[layout.H_POOL_WAITING] = self.waiting
        h[layout.H_POOL_SIZE] = _size(self._limiter)
        words.end()


def _size(limiter: Any) -> int:
    try:
        return int(limiter.total_tokens)
    except (OverflowError, TypeError, ValueError):  # math.inf tokens: no limit to report
        return 0


class _Holders(set[Any]):
    """The limiter's token holders, counted as they come and go."""

    pool: PoolWords

    def add(self, item: Any) -> None:
        if item not in self:
            super().add(item)
            self.pool.publish(taken=1)

    def remove(self, item: Any) -> None:
        super().remove(item)  # raises KeyError as the limiter expects
        self.pool.publish(taken=-1)

    def discard(self, item: Any) -> None:
        if item in self:
            super().discard(item)
            self.pool.publish(taken=-1)


class _Waiting(OrderedDict[Any, Any]):
    """The limiter's waiting tasks, counted as they come and go."""

    pool: PoolWords

    def __setitem__(self, key: Any, value: Any) -> None:
        new = key not in self
        super().__setitem__(key, value)
        if new:
            self.pool.publish(waiting=1)

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self.pool.publish(waiting=-1)

    def pop(self, key: Any, *default: Any) -> Any:
        had = key in self
        value = super().pop(key, *default)
        if had:
            self.pool.publish(waiting=-1)
        return value

    def popitem(self, last: bool = True) -> tuple[Any, Any]:
        item = super().popitem(last)
        self.pool.publish(waiting=-1)
        return item


def default_limiter() -> Any | None:
    """anyio's default thread limiter of the running loop, if the app uses anyio."""
    to_thread = sys.modules.get("anyio.to_thread")
    if to_thread is None:
        return None
    try:
        return to_thread.current_default_thread_limiter()
    except (RuntimeError, LookupError):  # not inside an anyio-aware loop
        return None


def instrument(limiter: Any, words: LoopWords) -> PoolWords | None:
    """Count the threads taken and tasks waiting of ``limiter`` from now on; None when it is
    not a limiter whose holders and waiters can be counted (another anyio backend or version)."""
    holders = getattr(limiter, "_borrowers", None)
    waiting = getattr(limiter, "_wait_queue", None)
    if isinstance(holders, _Holders):
        return holders.pool  # instrumented already
    if type(holders) is not set or type(waiting) is not OrderedDict:
        log.info("workermeter: %r cannot be measured exactly; sampling it", limiter)
        return None
    new_holders = _Holders(holders)
    new_waiting = _Waiting(waiting)
    pool = PoolWords(words, limiter)
    new_holders.pool = new_waiting.pool = pool
    pool.publish(taken=len(holders), waiting=len(waiting))
    limiter._borrowers = new_holders
    limiter._wait_queue = new_waiting
    return pool
