"""The cells a histogram is counted in, in the store: one count per interval between two
consecutive bounds of either kind of histogram, so that both kinds are exact sums of cells.

A *classic* histogram has the bounds of ``metrics.BUCKETS``. A *native* one (Prometheus's
exponential histograms) has, at schema ``s``, a bound at every ``2**(k / 2**s)`` seconds: bucket
``k`` holds the values in ``(2**((k-1) / 2**s), 2**(k / 2**s)]``, and a zero bucket holds those
up to its threshold. The store counts each observation once, in the cell of the union of both
kinds' bounds that holds it; a scrape adds cells up into either kind.

Two partitions:

* ``FINE``, for the histograms without route labels (queue wait, service time, loop lag): the
  classic bounds and the native ones of schema 3, 8 buckets per power of two (each 9% wide,
  what Prometheus's Go client picks for its default bucket factor of 1.1). 324 cells.
* ``ROUTE``, for a route's histogram: the classic bounds and the native ones of schema 0, one
  bucket per power of two, as coarse as the route's classic buckets are by default. 72 cells.
  Every bound of ``ROUTE`` is one of ``FINE``: the cell of ``ROUTE`` that holds a value is found
  from its cell of ``FINE`` (``ROUTE_CELL``), so a request's duration is searched for once.

Native buckets start above ``ZERO_THRESHOLD`` (2**-20 s, 0.95 us: nothing measured is that
short) and end at ``2**TOP`` seconds (18 h); the top bucket also holds anything longer, as the
classic +Inf bucket does.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence

from .metrics import BUCKETS_NS

SCHEMA = 3
ROUTE_SCHEMA = 0
LOW = -20  # the zero bucket's threshold is 2**LOW seconds
TOP = 16  # the last native bucket ends at 2**TOP seconds
ZERO_THRESHOLD = 2.0**LOW
_ZERO_NS = math.floor(ZERO_THRESHOLD * 1e9)


class Partition:
    """The cells of one kind of histogram record, and how they add up into either kind.

    ``bounds`` are the cells' upper bounds in nanoseconds (inclusive), but for the last cell,
    which has none. A value's cell is ``bisect_left(bounds, ns)``.
    """

    def __init__(self, schema: int) -> None:
        self.schema = schema
        per = 2**schema
        indexes = range(LOW * per + 1, TOP * per + 1)
        native = {k: math.floor(2.0 ** (k / per) * 1e9) for k in indexes}
        self.bounds: tuple[int, ...] = tuple(sorted({_ZERO_NS, *BUCKETS_NS, *native.values()}))
        self.cells = len(self.bounds) + 1
        at = {bound: i for i, bound in enumerate(self.bounds)}
        # The last cell of each classic bucket, +Inf's last.
        self.classic_at = (*(at[b] for b in BUCKETS_NS), self.cells - 1)
        self.zero_at = at[_ZERO_NS]
        self.first_index = LOW * per + 1  # the native index of the first bucket above zero
        # The last cell of each native bucket, from first_index on; the top one takes the rest.
        self.native_at = (*(at[native[k]] for k in sorted(native)[:-1]), self.cells - 1)

    def cell(self, ns: int) -> int:
        """The cell of a value of ``ns`` nanoseconds (the hot paths inline this: see
        ``FINE_START``)."""
        return bisect.bisect_left(self.bounds, ns)

    def cumulative(self, cells: Sequence[int]) -> list[int]:
        """The classic histogram's cumulative bucket counts, +Inf last."""
        running = list(itertools.accumulate(cells))
        return [running[i] for i in self.classic_at]

    def classic(self, cells: Sequence[int]) -> list[int]:
        """The classic histogram's count in each bucket, +Inf last."""
        cumulative = self.cumulative(cells)
        return [b - a for a, b in zip([0, *cumulative], cumulative, strict=False)]

    def native(self, cells: Sequence[int]) -> tuple[int, list[tuple[int, int]]]:
        """The native histogram: the zero bucket's count, and each bucket that holds any value
        as (index, count), in order."""
        running = list(itertools.accumulate(cells))
        zero = running[self.zero_at]
        buckets = []
        below = zero
        for index, end in enumerate(self.native_at, self.first_index):
            upto = running[end]
            if upto != below:
                buckets.append((index, upto - below))
                below = upto
        return zero, buckets


FINE = Partition(SCHEMA)
ROUTE = Partition(ROUTE_SCHEMA)
# ROUTE's cell for each of FINE's cells.
ROUTE_CELL: tuple[int, ...] = (*(ROUTE.cell(b) for b in FINE.bounds), ROUTE.cells - 1)

# The hot paths find a value's FINE cell without bisect: a value of bit length bl > 6 is split
# by its next 5 bits into 32 parts of its power of two (smaller values are each their own part),
# and FINE_START[bl][part] is the first cell the part can reach. A part holds at most one bound
# but rarely (8 native and 3 classic bounds per power of two), so a walk up FINE_BOUNDS from
# there is one comparison, two now and then:
#
#     bl = ns.bit_length()
#     i = FINE_START[bl][ns >> FINE_SHIFT[bl]]
#     while ns > FINE_BOUNDS[i]:
#         i += 1
_PARTS = 64  # a part is ns >> FINE_SHIFT[bl], below 64
FINE_SHIFT = tuple(max(bl - 6, 0) for bl in range(65))
FINE_START = tuple(
    tuple(FINE.cell(max(part << FINE_SHIFT[bl], (1 << bl) >> 1)) for part in range(_PARTS))
    for bl in range(65)
)
FINE_BOUNDS = (*FINE.bounds, 1 << 64)  # one no value reaches ends the walk
