"""What the store's records hold: the index of each value of a ROUTE record (one per lane,
route and method) and of a PROCESS record (one per lane). Each histogram is counted in the cells
of buckets.py, its sum beside them."""

from __future__ import annotations

from . import buckets
from .metrics import BUCKETS_NS
from .request_start import FUTURE, TOO_OLD, UNPARSABLE

NBUCKETS = len(BUCKETS_NS) + 1  # a classic histogram's buckets, +Inf last
FINE_CELLS = buckets.FINE.cells  # a histogram's cells in a PROCESS record (buckets.py)
ROUTE_CELLS = buckets.ROUTE.cells  # a route's, in a ROUTE record

# ROUTE record values.
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")
R_DURATION = len(STATUS_CLASSES)  # ROUTE_CELLS cells
R_SUM = R_DURATION + ROUTE_CELLS
R_CPU = R_SUM + 1
R_CPU_WALL = R_CPU + 1
R_HELD = R_CPU_WALL + 1  # event-loop time held by the sampled requests' own steps (async)
ROUTE_VALUES = R_HELD + 1

# PROCESS record values (one record per lane).
P_QUEUE = 0  # FINE_CELLS cells
P_QUEUE_SUM = P_QUEUE + FINE_CELLS
P_SKEW = P_QUEUE_SUM + 1
REJECT_REASONS = (UNPARSABLE, FUTURE, TOO_OLD)
P_REJECTED = P_SKEW + 1
P_DISCONNECTS = P_REJECTED + len(REJECT_REASONS)
P_WEBSOCKETS = P_DISCONNECTS + 1
P_UPLOADS = P_WEBSOCKETS + 1
P_LAG = P_UPLOADS + 1  # FINE_CELLS cells
P_LAG_SUM = P_LAG + FINE_CELLS
P_SERVICE = P_LAG_SUM + 1  # FINE_CELLS cells of every route's service time; the sum is the routes'
PROCESS_VALUES = P_SERVICE + FINE_CELLS
