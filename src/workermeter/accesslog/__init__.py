"""Read web server access logs and rebuild what the workers were doing, minute by minute.

Every access log line says when a request ended (or began) and how long it took, so it gives the
request's interval ``[start, end)``. From all the intervals a sweep over the sorted start and end
events rebuilds exactly how many requests were in flight at every moment; from the starts come the
arrivals per minute; from the durations the service time per route. That is the by-hand method
of the PythonAnywhere help page (rate at the busiest minute, mean response time at a quiet time),
automated, and with the answer to "were all workers busy at 14:05?".

Formats (see docs/logs.md for the configuration lines that produce them):

- ``nginx``: combined (or common) format plus ``rt=$request_time urt="$upstream_response_time"
  msec=$msec``, or with ``$request_time`` [``$upstream_response_time``] appended as bare numbers.
- ``gunicorn``: its default access log format plus ``%(D)s`` (µs) or ``%(L)s`` (seconds).
- ``apache``: combined (or common) plus ``%D`` (µs), and optionally ``%{usec}t``/``%{msec}t``.
- ``custom``: a regular expression with named groups, or a pattern with ``{placeholders}``.

Logged times are not always service times: a proxy (nginx, Apache in front of an app server)
measures the time a request waited for a free worker as well, an app server (gunicorn) does not.
:class:`LogAnalysis` says which; given the capacity, it rebuilds each request's wait from the
order of arrivals and departures (:func:`fcfs_waits`) and takes it off. Bad lines are counted
and shown, never fatal.

The modules, one job each: ``formats`` turns a line into a request (``timestamps`` reads its
time), ``routes`` groups paths into routes, ``reading`` reads the files, ``in_flight`` rebuilds
concurrency and queue waits, and ``analysis`` puts them together in :func:`analyse`.
"""

from .analysis import DEFAULT_CPU_SHARE, LogAnalysis, LogError, RouteStats, analyse
from .formats import FORMATS, LineFormat, LogLine, Rejected, line_format
from .in_flight import Concurrency, Minute, concurrency, fcfs_waits
from .reading import BadLine, FileSummary, Progress
from .routes import route_template

__all__ = [
    "DEFAULT_CPU_SHARE",
    "FORMATS",
    "BadLine",
    "Concurrency",
    "FileSummary",
    "LineFormat",
    "LogAnalysis",
    "LogError",
    "LogLine",
    "Minute",
    "Progress",
    "Rejected",
    "RouteStats",
    "analyse",
    "concurrency",
    "fcfs_waits",
    "line_format",
    "route_template",
]
