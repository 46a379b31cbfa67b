"""Read access log files, plain or gzip, line by line into flat arrays of request starts,
durations and routes: the format chosen per file, bad lines counted with a few examples, and
progress reported in bytes.
"""

from __future__ import annotations

import gzip
import itertools
import os
import zlib
from array import array
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from .formats import LineFormat, LogLine, ParseResult, Rejected, _choose
from .routes import OTHER, UNKNOWN, route_template

#: Bad lines kept as examples.
EXAMPLES = 5
#: Lines read to choose a file's format.
DETECT_LINES = 200
#: A longer line is malformed (and read in pieces, so a file without newlines cannot fill memory).
MAX_LINE = 64 * 1024
_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)


class Progress(Protocol):
    """Told how far reading has got: ``done`` of ``total`` bytes of ``path`` (compressed bytes
    for gzip). Called at the start and end of each file and every few thousand lines between."""

    def __call__(self, path: str, done: int, total: int, /) -> None: ...


@dataclass(frozen=True)
class BadLine:
    """A malformed line, kept as an example: where it is, what it says, and what is wrong."""

    path: str
    line_number: int
    text: str
    reason: str


@dataclass(frozen=True)
class FileSummary:
    """What one file held.

    :param format: the format it was read as (chosen per file with ``fmt="auto"``).
    :param lines: non-blank lines; ``requests + malformed + skipped``.
    :param skipped: requests answered without the app (nginx ``$upstream_response_time`` ``-``).
    :param truncated: the file ended early (a gzip file cut short or corrupt); what came before
        was read.
    """

    path: str
    format: str
    lines: int
    requests: int
    malformed: int
    skipped: int
    truncated: bool


class Reader:
    """Collects the requests of all files into flat arrays, and the routes they belong to."""

    def __init__(self, max_routes: int, progress: Progress | None) -> None:
        self.starts = array("d")
        self.durations = array("d")
        self.routes = array("L")
        self.route_ids: dict[str, int] = {}
        self.route_names: list[str] = []
        self.max_routes = max_routes
        self.progress = progress
        self.examples: list[BadLine] = []
        self.utc_offset: int | None = None
        self.whole_second = False
        self.files: list[FileSummary] = []
        self.templates: dict[str, str] = {}
        self.ambiguous: list[str] = []
        self.overflowed = False

    def route(self, method: str, path: str) -> int:
        """The index of ``METHOD /template`` (or of ``<invalid>``, ``<unknown>``, ``<other>``)."""
        template = self.templates.get(path)
        if template is None:
            template = route_template(path) if path else UNKNOWN
            if len(self.templates) >= 10_000:
                self.templates.clear()  # a bounded cache: paths with ids rarely repeat
            self.templates[path] = template
        key = template
        if method and template.startswith("/"):
            key = f"{method if method in _METHODS else 'OTHER'} {template}"
        index = self.route_ids.get(key)
        if index is None:
            if len(self.route_ids) >= self.max_routes:
                self.overflowed = True
                key = OTHER
                index = self.route_ids.get(key)
            if index is None:
                index = self.route_ids[key] = len(self.route_names)
                self.route_names.append(key)
        return index

    def add(self, start: float, line: LogLine) -> None:
        self.starts.append(start)
        self.durations.append(line.duration)
        self.routes.append(self.route(line.method, line.path))
        if self.utc_offset is None and line.utc_offset is not None:
            self.utc_offset = line.utc_offset

    def add_second(self, lines: list[LogLine]) -> None:
        """Lines stamped with the same whole second: spread them evenly across it, in log
        order (the order they were written in), instead of piling them on one instant."""
        k = len(lines)
        for i, line in enumerate(lines):
            t = line.time + (i + 0.5) / k
            self.add(t if line.time_is_start else t - line.duration, line)

    def read(self, path: str, fmt: LineFormat | None) -> None:
        with ExitStack() as stack:
            raw = stack.enter_context(open(path, "rb"))
            total = os.fstat(raw.fileno()).st_size
            gzipped = raw.read(2) == b"\x1f\x8b"  # whatever the file is called
            raw.seek(0)
            stream: _Source = raw
            if gzipped:
                stream = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
            if self.progress is not None:
                self.progress(path, 0, total)
            lines = _Lines(stream, raw, partial(self._tell, path, total))
            self._parse(path, lines, fmt)
            if self.progress is not None:
                self.progress(path, total, total)

    def _tell(self, path: str, total: int, done: int) -> None:
        if self.progress is not None:
            self.progress(path, min(done, total), total)

    def _parse(self, path: str, lines: _Lines, fmt: LineFormat | None) -> None:
        head: list[tuple[int, str | None]] = []
        if fmt is None:
            for item in lines:
                head.append(item)
                if len(head) >= DETECT_LINES:
                    break
            fmt, ambiguous = _choose(head)
            if ambiguous:
                self.ambiguous.append(path)
        requests = malformed = skipped = 0
        run: list[LogLine] = []
        for number, text in itertools.chain(head, lines):
            if text is None:
                result: ParseResult = Rejected(f"longer than {MAX_LINE} bytes")
            elif fmt is None:
                result = Rejected("not a line of any known format (nginx, gunicorn, apache)")
            else:
                result = fmt.parse(text)
            if isinstance(result, Rejected):
                if result.malformed:
                    malformed += 1
                    if len(self.examples) < EXAMPLES:
                        shown = (text or "")[:200]
                        self.examples.append(BadLine(path, number, shown, result.reason))
                else:
                    skipped += 1
                continue
            requests += 1
            if result.whole_second:
                self.whole_second = True
                if run and (
                    run[0].time != result.time or run[0].time_is_start is not result.time_is_start
                ):
                    self.add_second(run)
                    run = []
                run.append(result)
            else:
                if run:
                    self.add_second(run)
                    run = []
                self.add(result.start, result)
        if run:
            self.add_second(run)
        self.files.append(
            FileSummary(
                path=path,
                format=fmt.name if fmt is not None else "unknown",
                lines=requests + malformed + skipped,
                requests=requests,
                malformed=malformed,
                skipped=skipped,
                truncated=lines.truncated,
            )
        )


class _Source(Protocol):
    def readline(self, size: int | None = -1, /) -> bytes: ...

    def tell(self) -> int: ...


class _Lines:
    """The non-blank lines of a (possibly gzip) stream as (number, text), text None when too
    long. Stops early, setting ``truncated``, when a gzip stream is cut short or corrupt."""

    def __init__(self, stream: _Source, raw: _Source, tell: Callable[[int], None]) -> None:
        self.stream, self.raw, self.tell = stream, raw, tell
        self.truncated = False
        self._iter = self._generate()

    def __iter__(self) -> Iterator[tuple[int, str | None]]:
        return self._iter  # one pass: the lines read to detect the format are not read again

    def _generate(self) -> Iterator[tuple[int, str | None]]:
        number = 0
        long = False
        readline = partial(self.stream.readline, MAX_LINE)
        while True:
            try:
                data = readline()
            except (EOFError, zlib.error, gzip.BadGzipFile):
                # A rotated log compressed while being written, or not gzip after all: keep
                # what was read and say so.
                self.truncated = True
                return
            if not data:
                return
            complete = data.endswith(b"\n")
            if long:  # the rest of an over-long line, already counted
                long = not complete
                continue
            number += 1
            if number % 8192 == 0:
                self.tell(self.raw.tell())
            if not complete and len(data) >= MAX_LINE:
                long = True
                yield number, None
                continue
            text = data.decode("utf-8", "replace").rstrip("\r\n")
            if text.strip():
                yield number, text
