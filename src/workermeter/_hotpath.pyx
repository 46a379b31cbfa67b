# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=False
"""The hot path compiled: what every request runs, written in Cython.

The same steps as the pure-Python reference (hotpath.py, and the middleware's own in wsgi.py
and asgi.py), with the same values written to the same words of the store. What differs is
where the time goes: the state a request touches lives in C fields of extension types, the store
is written through the pointers of its memoryviews, the clocks are read with clock_gettime when
they are the standard library's, and the response wrapper is one object with no bound methods
made per request (it is its own start_response).

A view is checked each time it is written through: that it is not released (a child after
fork releases its parent's views), writable, contiguous and long enough; an index is checked
against the record's length. Nothing is written out of bounds whatever a caller passes.
"""

from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp

import logging
import time

from workermeter import buckets, layout
from workermeter.hotpath import (
    START_KEYS,
    STATUS_BY_DIGIT,
    STATUS_INDEX,
    UNMATCHED,
    content_longer,
)
from workermeter.integrations import KEY, route_from_environ, route_from_scope
from workermeter.record_values import (
    FINE_CELLS,
    P_DISCONNECTS,
    P_LAG,
    P_LAG_SUM,
    P_QUEUE_SUM,
    P_REJECTED,
    P_SKEW,
    P_UPLOADS,
    PROCESS_VALUES,
    R_CPU,
    R_CPU_WALL,
    R_DURATION,
    R_HELD,
    R_SUM,
    REJECT_REASONS,
    ROUTE_CELLS,
    ROUTE_VALUES,
)
from workermeter.request_start import EPOCH_2000, SKEW, queue_wait, queue_wait_one

cdef extern from *:
    """
    #include <time.h>
    static inline int64_t wm_clock(clockid_t id) {
        struct timespec ts;
        clock_gettime(id, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    }
    /* time.time(), to the bit: CPython turns the same nanoseconds into seconds this way. */
    static inline double wm_wall(void) {
        int64_t t = wm_clock(CLOCK_REALTIME);
        if (t % 1000000000 == 0) return (double)(t / 1000000000);
        return (double)t / 1e9;
    }
    static inline void wm_store(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline void wm_fence(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
    static inline int wm_bit_length(uint64_t v) { return v ? 64 - __builtin_clzll(v) : 0; }
    """
    int CLOCK_MONOTONIC
    int CLOCK_THREAD_CPUTIME_ID
    int64_t wm_clock(int id) nogil
    double wm_wall() nogil
    void wm_store(int64_t *p, int64_t v) nogil
    void wm_fence() nogil
    int wm_bit_length(uint64_t v) nogil

cdef extern from "Python.h":
    ctypedef struct PyMemoryViewObject:
        int flags
    int _Py_MEMORYVIEW_RELEASED
    int _Py_MEMORYVIEW_C
    bint PyMemoryView_Check(object)
    Py_buffer *PyMemoryView_GET_BUFFER(object)
    PyObject *PyDict_GetItemWithError(object, object) except? NULL
    Py_ssize_t PyObject_LengthHint(object, Py_ssize_t) except -1
    Py_ssize_t PyUnicode_Tailmatch(object, object, Py_ssize_t, Py_ssize_t, int) except -1
    Py_ssize_t PY_SSIZE_T_MAX
    const char *PyUnicode_AsUTF8AndSize(object, Py_ssize_t *) except NULL
    bint PyUnicode_IS_ASCII(object)
    double PyOS_string_to_double(const char *, char **, PyObject *) except? -1.0
    object PyUnicode_DecodeLatin1(const char *, Py_ssize_t, const char *)
    PyObject *PyIter_Next(object)  # NULL at the end, or with an exception set
    PyObject *PyErr_Occurred()
    bint PyErr_ExceptionMatches(PyObject *)
    void Py_DECREF(PyObject *)

log = logging.getLogger("workermeter")

# The layout, as C constants; checked against the Python modules' at import.
cdef enum:
    MAX_LEVEL = 1024
    LEVEL_BITS = 16
    NFINE = 324
    PARTS = 64

if layout.MAX_LEVEL != MAX_LEVEL or layout.LEVEL_BITS != LEVEL_BITS or FINE_CELLS != NFINE:
    raise ImportError("workermeter._hotpath was built for another store layout: reinstall")

cdef int64_t LEVEL_MASK = (1 << LEVEL_BITS) - 1
cdef int64_t SEQ = 1 << LEVEL_BITS
cdef int64_t RISE = SEQ + 1
cdef int64_t FALL = SEQ - 1
cdef Py_ssize_t H_LEVEL = layout.H_LEVEL
cdef Py_ssize_t C_P_QUEUE_SUM = P_QUEUE_SUM
cdef Py_ssize_t C_P_SKEW = P_SKEW
cdef Py_ssize_t C_P_LAG = P_LAG
cdef Py_ssize_t C_P_LAG_SUM = P_LAG_SUM
cdef Py_ssize_t C_P_UPLOADS = P_UPLOADS
cdef Py_ssize_t C_P_DISCONNECTS = P_DISCONNECTS
cdef Py_ssize_t C_PROCESS_VALUES = PROCESS_VALUES
cdef Py_ssize_t C_R_DURATION = R_DURATION
cdef Py_ssize_t C_R_SUM = R_SUM
cdef Py_ssize_t C_R_CPU = R_CPU
cdef Py_ssize_t C_R_CPU_WALL = R_CPU_WALL
cdef Py_ssize_t C_R_HELD = R_HELD
cdef Py_ssize_t C_ROUTE_VALUES = ROUTE_VALUES
cdef double EPOCH_S = EPOCH_2000
cdef double EPOCH_MS = EPOCH_2000 * 1e3
cdef double EPOCH_US = EPOCH_2000 * 1e6
cdef double EPOCH_NS = EPOCH_2000 * 1e9
cdef double MAX_FLOAT = 1.7976931348623157e308
cdef double WAIT_LIMIT = 9.0e18  # ns: a wait this long takes the general path (int64 ends)

# buckets.FINE_START, FINE_SHIFT, FINE_BOUNDS and ROUTE_CELL as C arrays (see buckets.py).
cdef short FINE_START[65][PARTS]
cdef int FINE_SHIFT[65]
cdef int64_t FINE_BOUNDS[NFINE]
cdef short ROUTE_CELL[NFINE]


def _tables():
    if len(buckets.FINE_BOUNDS) != NFINE or len(buckets.ROUTE_CELL) != NFINE:
        raise ImportError("workermeter._hotpath was built for other buckets: reinstall")
    cdef int bl, part, i
    for bl in range(65):
        FINE_SHIFT[bl] = buckets.FINE_SHIFT[bl]
        for part in range(PARTS):
            FINE_START[bl][part] = buckets.FINE_START[bl][part]
    for i in range(NFINE):
        # The last bound (2**64, past any value) ends every walk; int64's largest does too.
        FINE_BOUNDS[i] = min(buckets.FINE_BOUNDS[i], (1 << 63) - 1)
        ROUTE_CELL[i] = buckets.ROUTE_CELL[i]
    if max(buckets.ROUTE_CELL) >= ROUTE_CELLS:
        raise ImportError("workermeter._hotpath: inconsistent buckets")


_tables()


cdef inline int fine_cell(int64_t ns) noexcept nogil:
    """A value's FINE cell: bisect_left of buckets.FINE.bounds, by its bit length's part."""
    if ns <= 0:
        return 0
    cdef int bl = wm_bit_length(<uint64_t>ns)
    cdef int i = FINE_START[bl][ns >> FINE_SHIFT[bl]]
    while ns > FINE_BOUNDS[i]:
        i += 1
    return i


cdef inline int64_t *words(object view, Py_ssize_t n) except NULL:
    """The words of ``view``, a memoryview of at least ``n`` writable, contiguous 8-byte words."""
    if not PyMemoryView_Check(view):
        raise TypeError(f"expected a memoryview of the store, got {type(view).__name__}")
    cdef int flags = (<PyMemoryViewObject *> <PyObject *> view).flags
    if flags & _Py_MEMORYVIEW_RELEASED:
        raise ValueError("operation forbidden on released memoryview object")
    cdef Py_buffer *b = PyMemoryView_GET_BUFFER(view)
    if b.readonly or b.itemsize != 8 or not (flags & _Py_MEMORYVIEW_C) or b.len < n * 8:
        raise ValueError("expected a writable view of the store's 8-byte words")
    return <int64_t *> b.buf


cdef object _perf_counter_ns = time.perf_counter_ns
cdef object _thread_time_ns = time.thread_time_ns
cdef object _time = time.time
cdef object _sleep = time.sleep


cdef inline int64_t read_clock(object clock) except? -1:
    if clock is _perf_counter_ns:
        return wm_clock(CLOCK_MONOTONIC)
    return clock()


cdef inline int64_t read_cpu_clock(object clock) except? -1:
    if clock is _thread_time_ns:
        return wm_clock(CLOCK_THREAD_CPUTIME_ID)
    return clock()


cdef inline double read_wall(object clock) except? -1.0:
    if clock is _time:
        return wm_wall()
    return clock()


cdef inline object dict_get(object d, object key, object default):
    """``d.get(key, default)``, without the method call when ``d`` is a dict."""
    cdef PyObject *found
    if type(d) is dict:
        found = PyDict_GetItemWithError(d, key)
        if found is NULL:
            return default
        return <object> found
    return d.get(key, default)


cdef inline object slot_of(LaneCore lane, object route, object method):
    """The lane's Slot for (route, method), allocated on first use."""
    cdef PyObject *found = PyDict_GetItemWithError(lane.routes, route)
    cdef object methods
    if found is not NULL:
        methods = <object> found
        found = PyDict_GetItemWithError(methods, method) if type(methods) is dict else NULL
        if found is not NULL:
            return <object> found
    return lane.active.route_record(lane, route, method)


cdef class LaneCore:
    """What a request writes in one thread's records: see hotpath.LaneCore."""

    cdef public object active
    cdef public Py_ssize_t index
    cdef public dict routes
    cdef public long long countdown
    cdef public object proc
    cdef public object service

    def queue_wait(self, wait, problem):
        """Record the outcome of parsing the request-start headers."""
        cdef int64_t *w = words(self.proc, C_PROCESS_VALUES)
        cdef int64_t ns
        if wait is not None:
            ns = int(wait * 1e9)
            w[fine_cell(ns)] += 1  # P_QUEUE is 0
            w[C_P_QUEUE_SUM] += ns
            if problem is SKEW:
                w[C_P_SKEW] += 1
        elif problem is not None:
            w[P_REJECTED + REJECT_REASONS.index(problem)] += 1

    def request(self, route, method, int status, int64_t duration, cpu=None):
        """Record a finished request of ``duration`` ns: see hotpath.LaneCore.request."""
        slot = slot_of(self, route, method)
        view, service = slot
        record(view, service, status, duration, cpu is not None, 0 if cpu is None else cpu)

    def sampled(self, route, method, int64_t cpu, int64_t held, int64_t duration):
        """Record what a sampled async request took in its own steps."""
        slot = slot_of(self, route, method)
        cdef int64_t *w = words(slot[0], C_ROUTE_VALUES)
        w[C_R_CPU] += cpu
        w[C_R_CPU_WALL] += duration
        w[C_R_HELD] += held

    def loop_lag(self, double seconds):
        """Record how late the event loop ran a callback that was due."""
        cdef int64_t ns = int(seconds * 1e9)
        cdef int64_t *w = words(self.proc, C_PROCESS_VALUES)
        w[C_P_LAG + fine_cell(ns)] += 1
        w[C_P_LAG_SUM] += ns

    def count(self, Py_ssize_t offset):
        count(self, offset)


cdef inline int count(LaneCore lane, Py_ssize_t offset) except -1:
    if not 0 <= offset < C_PROCESS_VALUES:
        raise IndexError(f"no value {offset} in a process record")
    words(lane.proc, C_PROCESS_VALUES)[offset] += 1
    return 0


cdef inline int record(
    object view, object service, Py_ssize_t status, int64_t duration, bint sampled, int64_t cpu
) except -1:
    """A finished request in its route record and the lane's service-time cells."""
    cdef int64_t *w = words(view, C_ROUTE_VALUES)
    cdef int64_t *s = words(service, NFINE)
    if not 0 <= status < C_R_DURATION:
        raise IndexError(f"status index {status} is not one of STATUS_CLASSES'")
    w[status] += 1
    cdef int cell = fine_cell(duration)
    w[C_R_DURATION + ROUTE_CELL[cell]] += 1
    w[C_R_SUM] += duration
    s[cell] += 1
    if sampled:
        w[C_R_CPU] += cpu
        w[C_R_CPU_WALL] += duration
    return 0


cdef class ActiveCore:
    """What a request changes in its process: the concurrency level. See hotpath.ActiveCore,
    whose begin() and finish() these are, with the same words written in the same order.

    With threads, the pure path takes ``_level_lock`` for an update because its clock call can
    switch threads. Here, with the standard clocks, an update runs no Python code and holds the
    GIL throughout: it is one critical section already, and the lock is only taken around a
    clock given as a Python callable.
    """

    cdef public object header
    cdef public object enter_words
    cdef public object above_words
    cdef public object single
    cdef public object local
    cdef public long long cpu_sample
    cdef public long long level
    cdef public long long word
    cdef public object _level_lock
    cdef public object _clock
    cdef public object _cpu_clock
    cdef public object _wall_clock
    cdef int64_t enter[MAX_LEVEL + 1]
    cdef int64_t above[MAX_LEVEL + 1]

    def begin(self, lane=None, start=None, double max_skew=2.0, double max_age=600.0):
        """A request starts: see hotpath.ActiveCore.begin."""
        return self._begin(lane, start, max_skew, max_age)

    def end(self):
        """The level falls by one; returns the time of the change."""
        return self._finish(None, "", "", 0, 0, None)

    def finish(self, lane, route, method, Py_ssize_t status, int64_t t0, cpu0):
        """A request ends: see hotpath.ActiveCore.finish."""
        return self._finish(lane, route, method, status, t0, cpu0)

    cdef int _queue_wait(self, LaneCore lane, object start, double max_skew, double max_age) except -1:
        """Record the queue wait told by ``start``, one request-start value."""
        cdef double wall = read_wall(self._wall_clock)
        cdef double at = -1.0
        cdef double ns
        cdef int64_t *w
        if type(start) is str and PyUnicode_IS_ASCII(start):
            at = parse_one(start)
        if at >= 0.0 and 0.0 <= wall - at <= max_age:
            ns = (wall - at) * 1e9
            if ns < WAIT_LIMIT:
                w = words(lane.proc, C_PROCESS_VALUES)
                w[fine_cell(<int64_t> ns)] += 1  # P_QUEUE is 0
                w[C_P_QUEUE_SUM] += <int64_t> ns
                return 0
        # Anything else (several values, a server token, garbage, a wait past max_age), as the
        # pure path takes it.
        lane.queue_wait(*queue_wait_one(start, wall, max_skew=max_skew, max_age=max_age))
        return 0

    cdef inline int _lock(self) except -1:
        lock = self._level_lock
        if lock is not None and self._clock is not _perf_counter_ns:
            while not lock.acquire(False):
                _sleep(0)
            return 1
        return 0

    cdef int64_t _begin(self, object lane, object start, double max_skew, double max_age) except? -1:
        if start is not None and lane is not None:
            self._queue_wait(<LaneCore?> lane, start, max_skew, max_age)
        cdef int64_t *h = words(self.header, H_LEVEL + 1)
        cdef int64_t *enter = words(self.enter_words, MAX_LEVEL + 1)
        cdef int locked = self._lock()
        cdef int64_t word, now, level
        try:
            word = self.word + SEQ  # odd: under way
            wm_store(&h[H_LEVEL], word)
            wm_fence()
            now = read_clock(self._clock)
            level = self.level + 1
            self.level = level
            if level <= MAX_LEVEL:
                self.enter[level] = now
                enter[level] = now
                word += RISE
            else:
                word = set_level(word + SEQ, level)
            self.word = word
            wm_store(&h[H_LEVEL], word)
            return now
        finally:
            if locked:
                self._level_lock.release()

    cdef int64_t _finish(
        self, object lane, object route, object method, Py_ssize_t status, int64_t t0, object cpu0
    ) except? -1:
        cdef int64_t *h = words(self.header, H_LEVEL + 1)
        cdef int64_t *above = words(self.above_words, MAX_LEVEL + 1)
        cdef int locked = self._lock()
        cdef int64_t word, now, level, total
        try:
            word = self.word + SEQ  # odd: under way
            wm_store(&h[H_LEVEL], word)
            wm_fence()
            now = read_clock(self._clock)
            level = self.level
            self.level = level - 1
            if 0 < level <= MAX_LEVEL:
                total = self.above[level] + now - self.enter[level]
                self.above[level] = total
                above[level] = total
                word += FALL
            else:
                word = set_level(word + SEQ, level - 1)
            self.word = word
            wm_store(&h[H_LEVEL], word)
        finally:
            if locked:
                self._level_lock.release()
        if lane is None:
            return now
        cdef LaneCore ln = <LaneCore?> lane
        cdef int64_t duration = now - t0
        slot = slot_of(ln, route, method)
        view, service = slot
        if cpu0 is None:
            record(view, service, status, duration, False, 0)
        else:
            record(view, service, status, duration, True,
                   read_cpu_clock(self._cpu_clock) - <int64_t> cpu0)
        return now


cdef inline int64_t set_level(int64_t word, int64_t level) noexcept nogil:
    """``word``'s update count with ``level`` in the level bits, held within them."""
    if level < 0:
        level = 0
    elif level > LEVEL_MASK:
        level = LEVEL_MASK
    return (word & ~LEVEL_MASK) | level


cdef double[23] POWERS = [10.0 ** k for k in range(23)]


cdef inline double decimal(const char *s, Py_ssize_t n) noexcept nogil:
    """The double nearest the decimal number of ``n`` digits with at most one point at ``s``,
    when its digits make an integer below 2**53 and it has at most 22 after the point: that
    integer and the power of ten are exact doubles, so their quotient is correctly rounded (as
    strtod's is). -1.0 otherwise, for strtod to work it out."""
    cdef uint64_t m = 0
    cdef int after = -1
    cdef Py_ssize_t i
    for i in range(n):
        if s[i] == b'.':
            after = 0
            continue
        m = m * 10 + <uint64_t> (s[i] - 48)
        if m >= (<uint64_t> 1) << 53:
            return -1.0
        if after >= 0:
            after += 1
    if after > 22:
        return -1.0
    if after <= 0:
        return <double> m
    return (<double> m) / POWERS[after]


cdef double parse_one(str value) except? -2.0:
    """request_start.parse_timestamp for one plain number, bare or after ``t=``, of ASCII digits
    and at most one point: its Unix seconds, or -1.0 for anything else, which the general path
    then parses (so what is accepted is what the pure path accepts)."""
    cdef Py_ssize_t n, i, dots = 0, digits = 0
    cdef const char *s = PyUnicode_AsUTF8AndSize(value, &n)
    if n >= 2 and s[0] == b't' and s[1] == b'=':
        s += 2
        n -= 2
    if n == 0 or n > 40:
        return -1.0
    for i in range(n):
        if s[i] == b'.':
            dots += 1
        elif b'0' <= s[i] <= b'9':
            digits += 1
        else:
            return -1.0
    if dots > 1 or digits == 0:
        return -1.0
    # Correctly rounded, as float() and float(int()) are: the same double.
    cdef double number = decimal(s, n)
    if number < 0.0:
        number = PyOS_string_to_double(s, NULL, NULL)
    if number > EPOCH_S:
        if number <= EPOCH_MS:
            return number
        if number <= EPOCH_US:
            return number / 1e3
        if number <= EPOCH_NS:
            return number / 1e6
        if number <= MAX_FLOAT:
            return number / 1e9
    return -1.0


# The middleware. ---------------------------------------------------------------------------

cdef object _NO_BODY = ()
cdef object _DONE = iter(())  # an iterator with nothing left
cdef object _ENDED = object()  # a streamed body that has ended or raised
cdef Py_ssize_t _5XX = STATUS_BY_DIGIT["5"]
cdef Py_ssize_t _OTHER = 5
cdef object _START_KEYS = START_KEYS
cdef object _route_from_environ = route_from_environ
cdef object _route_from_scope = route_from_scope
cdef object _STATUS_BY_DIGIT = STATUS_BY_DIGIT
cdef object _STATUS_INDEX = STATUS_INDEX


cdef object environ_route(object environ):
    """integrations.route_from_environ, the default route function, written out."""
    route = dict_get(environ, KEY, None)
    if route is not None:
        return route if type(route) is str else str(route)
    request = dict_get(environ, "werkzeug.request", None)
    rule = getattr(request, "url_rule", None)
    if rule is not None:
        template = getattr(rule, "rule", None)
        if isinstance(template, str):
            return mounted(dict_get(environ, "SCRIPT_NAME", ""), template)
    return None


cdef object scope_route(object scope):
    """integrations.route_from_scope, the default route function, written out."""
    route = dict_get(scope, KEY, None)
    if route is not None:
        return route if type(route) is str else str(route)
    matched = dict_get(scope, "route", None)
    template = getattr(matched, "path", None)
    if not isinstance(template, str):
        return None
    root = dict_get(scope, "app_root_path", None)
    prefix = dict_get(scope, "root_path", "")
    inside = isinstance(root, str) and isinstance(prefix, str) and prefix.startswith(root)
    if not hasattr(matched, "endpoint"):
        # A Mount, not a Route: see route_from_scope.
        if getattr(matched, "routes", None):
            return None
        if inside:
            return prefix[len(root):] or "/"
        return template
    if inside:
        return mounted(prefix[len(root):], template)
    return template


cdef inline bint ends_with(object path, object suffixes) except -1:
    """``path.endswith(suffixes)``, for a str and a tuple of them without the method call."""
    if type(path) is not str or type(suffixes) is not tuple:
        return path.endswith(suffixes)
    for suffix in <tuple> suffixes:
        if PyUnicode_Tailmatch(path, suffix, 0, PY_SSIZE_T_MAX, 1):
            return True
    return False


cdef inline object mounted(object prefix, object template):
    return prefix.rstrip("/") + template if prefix else template


cdef object FAILED = object()  # what route_of gives when the route function fails


cdef object route_of(object function, object request, bint asgi):
    """The route the user's (or the default) function names for a WSGI environ or an ASGI
    scope; FAILED when it raises (logged)."""
    try:
        if asgi:
            return scope_route(request) if function is _route_from_scope else function(request)
        return environ_route(request) if function is _route_from_environ else function(request)
    except Exception:  # a user's route function must not break the response
        log.exception("workermeter: route function failed")
        return FAILED


cdef class WSGICall:
    """WSGIMiddleware's __call__: see wsgi.WSGICall."""

    cdef public object app
    cdef public object route
    cdef public object recorder
    cdef public object _own_paths
    cdef public object _start_keys
    cdef public object _wall_clock
    cdef public object _cpu_clock
    cdef public object _upload_bytes
    cdef public double _max_skew
    cdef public double _max_age

    def __call__(self, environ, start_response):
        if self._own_paths and dict_get(environ, "PATH_INFO", None) in self._own_paths:
            return self._own(environ, start_response)
        active = self.recorder.active
        if active is None:
            active = self._activate(environ)
            if active is None:
                return self.app(environ, start_response)
        cdef ActiveCore a = <ActiveCore?> active
        lane = a.single
        if lane is None:
            try:
                lane = a.local.lane
            except AttributeError:
                lane = a.new_lane()
        cdef LaneCore ln = <LaneCore?> lane
        cdef long long n = ln.countdown - 1  # 1 request in cpu_sample has its CPU time measured
        cpu0 = None
        if n:
            ln.countdown = n
        else:
            ln.countdown = a.cpu_sample
            cpu0 = read_cpu_clock(self._cpu_clock)
        start = None
        if self._start_keys is _START_KEYS and "HTTP_X_QUEUE_START" not in environ:
            start = dict_get(environ, "HTTP_X_REQUEST_START", None)
            if start is not None:
                length = dict_get(environ, "CONTENT_LENGTH", None)
                if length and length != "0" and content_longer(length, self._upload_bytes):
                    count(ln, C_P_UPLOADS)
                    start = None
        else:
            self._queue(environ, ln)
        cdef Response response = Response.__new__(Response)
        response.mw = self
        response.environ = environ
        response.lane = ln
        response.cpu0 = cpu0
        response.sr = start_response
        response.status = _OTHER
        response.route = None
        response.items = None
        response.body = None
        response.t0 = a._begin(ln, start, self._max_skew, self._max_age)
        try:
            body = self.app(environ, response)
        except BaseException:
            response.status = _5XX
            response.body = _NO_BODY
            response.close()
            raise
        response.body = body
        return response


cdef class Response:
    """Wraps the response body; the request ends when it is closed. It is also the
    ``start_response`` the app is given: see wsgi._Response."""

    cdef WSGICall mw
    cdef object environ
    cdef LaneCore lane  # None once closed
    cdef int64_t t0
    cdef object cpu0
    cdef object sr
    cdef Py_ssize_t status
    cdef object route
    cdef object body
    cdef object items
    cdef object it  # a streamed body's iterator, once the server asks for its first chunk

    def __call__(self, status, headers, exc_info=None):
        return self.start_response(status, headers, exc_info)

    def start_response(self, status, headers, exc_info=None):
        cdef Py_ssize_t c
        if type(status) is str and len(<str> status) > 0:
            c = ord((<str> status)[0]) - 0x31  # '1'
            self.status = c if 0 <= c <= 4 else _OTHER
        else:
            self.status = _STATUS_BY_DIGIT.get(status[:1], _OTHER)
        # Name the route now, while the framework still holds its request: see wsgi._Response.
        route = route_of(self.mw.route, self.environ, False)
        if route is not FAILED:
            self.route = route
        if exc_info is None:
            return self.sr(status, headers)
        return self.sr(status, headers, exc_info)

    def __iter__(self):
        body = self.body
        if type(body) is list:
            self.items = items = iter(body)
            return items
        return self  # a streamed body: see __next__

    def __next__(self):
        # wsgi._Response._stream, without a generator: the same chunks, the same 5xx when the
        # app fails while streaming, the same end once the body is all sent.
        # Like a generator's, the stream is over once it has ended or raised: the body is not
        # asked again.
        it = self.it
        if it is None:
            self.it = _ENDED
            try:
                it = iter(self.body)
            except Exception:
                self.status = _5XX
                self.items = _DONE
                raise
            self.it = it
        elif it is _ENDED:
            raise StopIteration
        cdef PyObject *chunk = PyIter_Next(it)
        if chunk is not NULL:
            value = <object> chunk
            Py_DECREF(chunk)  # PyIter_Next's reference: value holds its own
            return value
        self.it = _ENDED
        if PyErr_Occurred() is NULL:
            self.items = _DONE
            raise StopIteration
        if PyErr_ExceptionMatches(<PyObject *> Exception):
            self.status = _5XX
            self.items = _DONE
        pending()

    def close(self):
        lane = self.lane
        if lane is None:  # closed already
            return
        self.lane = None
        body = self.body
        try:
            if type(body) is not list and body is not _NO_BODY:
                close = getattr(body, "close", None)
                if close is not None:
                    close()
        finally:
            route = self.route
            if not route:  # start_response was not called, or named none: ask again
                route = route_of(self.mw.route, self.environ, False)
                if route is FAILED or not route:
                    route = UNMATCHED
            items = self.items
            if body is not _NO_BODY and (items is None or PyObject_LengthHint(items, 0)):
                count(lane, C_P_DISCONNECTS)  # closed before the body was all sent
            (<ActiveCore> lane.active)._finish(
                lane, route, dict_get(self.environ, "REQUEST_METHOD", ""), self.status, self.t0,
                self.cpu0,
            )


cdef inline int pending() except -1:
    """Raises the exception that is set: -1 tells the caller one is."""
    return -1


cdef class Send:
    """The ``send`` an ASGI app is given: notes the status and whether the body was all sent,
    and hands back the server's own awaitable (no coroutine of its own per message)."""

    cdef object send
    cdef object status
    cdef bint complete

    def __call__(self, message):
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
        elif kind == "http.response.body" and not dict_get(message, "more_body", False):
            self.complete = True
        return self.send(message)


cdef inline bint is_name(object name, const char *wanted, Py_ssize_t n):
    if type(name) is bytes:
        return len(<bytes> name) == n and memcmp(<const char *> name, wanted, n) == 0
    return name == (<bytes> wanted[:n])


cdef object flatten(object start):
    if isinstance(start, bytes):
        return [start]
    first, last = start
    return [*flatten(first), last]


cdef class ASGICall:
    """ASGIMiddleware's __call__ (as ``call``): see asgi.ASGICall.

    A special method ``__call__`` of an extension type is a C slot, which servers cannot tell
    from a plain callable: uvicorn and others look for a coroutine function to pick ASGI 3.
    ``call`` is one (a Cython coroutine function), and ASGIMiddleware makes it its __call__."""

    cdef public object app
    cdef public object route
    cdef public object recorder
    cdef public object _own_paths
    cdef public object _own_suffixes
    cdef public object _wall_clock
    cdef public object _cpu_clock
    cdef public object _upload_bytes
    cdef public double _max_skew
    cdef public double _max_age

    async def call(self, scope, receive, send):
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        path = scope["path"]
        if self._own_paths and ends_with(path, self._own_suffixes):
            # ASGI paths include the root path the app is mounted under (behind a proxy).
            root = dict_get(scope, "root_path", "")
            if root and path.startswith(root):
                path = path[len(root):] or "/"
            if path in self._own_paths:
                await self._own(scope, path, send)
                return
        active = self.recorder.active or self._activate()
        if active is None:
            await self.app(scope, receive, send)
            return
        cdef ActiveCore a = <ActiveCore?> active
        lane = a.single or a.lane()
        cdef LaneCore ln = <LaneCore?> lane
        cdef long long n = ln.countdown - 1  # 1 request in cpu_sample has its steps timed
        cdef bint sampled = False
        if n:
            ln.countdown = n
        else:
            ln.countdown = a.cpu_sample
            sampled = True
        start = None
        length = None
        for header in scope["headers"]:
            if type(header) is tuple and len(<tuple> header) == 2:
                name = (<tuple> header)[0]
                value = (<tuple> header)[1]
            else:
                name, value = header
            if is_name(name, b"x-request-start", 15) or is_name(name, b"x-queue-start", 13):
                start = value if start is None else (start, value)
            elif length is None and is_name(name, b"content-length", 14):
                length = value
        one = None  # a single start value, recorded by begin()
        if start is not None:
            if length is not None and content_longer(length, self._upload_bytes):
                count(ln, C_P_UPLOADS)
            elif type(start) is bytes:
                one = PyUnicode_DecodeLatin1(<const char *> start, len(<bytes> start), NULL)
            else:
                values = [v.decode("latin-1") for v in flatten(start)]
                ln.queue_wait(*queue_wait(values, read_wall(self._wall_clock),
                                          max_skew=self._max_skew, max_age=self._max_age))
        cdef int64_t t0 = a._begin(ln, one, self._max_skew, self._max_age)
        cdef Send send_ = Send.__new__(Send)
        send_.send = send
        send_.status = 0
        send_.complete = False
        cdef Steps steps = None
        try:
            if sampled:
                steps = Steps.__new__(Steps)
                steps.awaitable = self.app(scope, receive, send_)
                steps.clock = self.recorder.clock
                steps.cpu_clock = self._cpu_clock
                await steps
            else:
                await self.app(scope, receive, send_)
        except BaseException:
            send_.status = 500
            raise
        finally:
            route = route_of(self.route, scope, True)
            if route is FAILED or not route:
                route = UNMATCHED
            status = send_.status
            if not send_.complete and status != 500:
                count(ln, C_P_DISCONNECTS)
            method = dict_get(scope, "method", "")
            if type(status) is int and 100 <= status < 600:  # compared as ints of any size
                index = <long> status // 100 - 1
            else:
                index = _STATUS_INDEX.get(status, 5)
            now = a._finish(ln, route, method, index, t0, None)
            if steps is not None:
                ln.sampled(route, method, steps.cpu, steps.held, now - t0)


cdef class Steps:
    """Awaits an app's coroutine step by step, timing each step: see asgi._Steps."""

    cdef object awaitable
    cdef object clock
    cdef object cpu_clock
    cdef public int64_t held
    cdef public int64_t cpu

    def __await__(self):
        steps = self.awaitable.__await__()
        clock, cpu_clock = self.clock, self.cpu_clock
        value = None
        error = None
        cdef int64_t t, c
        while True:
            t = read_clock(clock)
            c = read_cpu_clock(cpu_clock)
            try:
                yielded = steps.send(value) if error is None else steps.throw(error)
            except StopIteration:
                return
            finally:
                self.held += read_clock(clock) - t
                self.cpu += read_cpu_clock(cpu_clock) - c
            value = error = None
            try:
                value = yield yielded
            except GeneratorExit:  # closed while suspended: close the app's coroutine too
                close = getattr(steps, "close", None)
                if close is not None:
                    close()
                raise
            except BaseException as e:  # cancellation and the like: the app's to handle
                error = e
