"""The hot path's memory: nothing leaks per request, nothing is read or written out of bounds,
and no header, however malformed, makes it raise.

valgrind's memcheck runs the compiled hot path (``PYTHONMALLOC=malloc``, so that every Python
object is a block it tracks); a million requests leave the resident memory and Python's
allocated blocks flat; 10^5 fuzzed request-start headers are counted as the pure-Python parser
says they must be. Each test runs on whichever path this process runs (``WORKERMETER_PURE=1``
for the pure-Python one), but valgrind's, which is about the compiled code.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest

from conftest import WALL_START, FakeClock, FakeWallClock
from promtext import parse, value
from workermeter import ASGIMiddleware, WSGIMiddleware, speedups
from workermeter import request_start as rs
from workermeter.exposition import StoreCollector
from workermeter.recorder import Recorder
from workermeter.store import Store
from workermeter.textformat import render

LOAD = Path(__file__).parent / "apps" / "hotpath_load.py"


def load(directory: Path, wsgi: int, asgi: int, *, prefix: list[str] | None = None,
         checkpoints: int = 2, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """tests/apps/hotpath_load.py in a process of its own, on this process's hot path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run(
        [*(prefix or []), sys.executable, str(LOAD), str(directory), str(wsgi), str(asgi),
         str(checkpoints)],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )  # fmt: skip


def result(run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert run.returncode == 0, f"exited {run.returncode}:\n{run.stderr[-6000:]}"
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


# -- valgrind memcheck ----------------------------------------------------------------------------

MEMCHECK = [
    "valgrind", "--tool=memcheck", "--leak-check=full", "--show-leak-kinds=definite",
    "--num-callers=40", "--error-exitcode=0",
]  # fmt: skip
# A report's first line: "==1234== Invalid read of size 8", "==1234== 16 bytes in 1 blocks are
# definitely lost in loss record 3 of 40", and so on.
REPORT = re.compile(r"^==\d+==(.*)$")
IN_USE = re.compile(r"in use at exit: ([\d,]+) bytes in ([\d,]+) blocks")
LOST = re.compile(r"(definitely|indirectly) lost: ([\d,]+) bytes in ([\d,]+) blocks")


ERRORS = ("Invalid", "Conditional jump", "Use of uninitialised", "Mismatched",
          "Source and destination", "Syscall param")


def memcheck_reports(stderr: str) -> list[str]:
    """Each error valgrind reported, its first line and its stack (a report ends at a line
    that holds only valgrind's prefix)."""
    blocks: list[list[str]] = [[]]
    for line in stderr.splitlines():
        match = REPORT.match(line)
        if match is None:  # the program's own output
            continue
        text = match.group(1).strip()
        if text:
            blocks[-1].append(text)
        else:  # "==7== ": the end of a report
            blocks.append([])
    return [
        "\n".join(block)
        for block in blocks
        if block and (block[0].startswith(ERRORS) or "are definitely lost" in block[0])
    ]


def memcheck(directory: Path, wsgi: int, asgi: int) -> tuple[dict[str, Any], str]:
    python = Path(sys.executable).resolve()  # the interpreter itself, not a pyenv shim
    assert python.is_file()
    run = subprocess.run(
        [*MEMCHECK, str(python), str(LOAD), str(directory), str(wsgi), str(asgi)],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PYTHONMALLOC": "malloc",
             "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )  # fmt: skip
    return result(run), run.stderr


def numbers(pattern: re.Pattern[str], text: str) -> list[tuple[int, ...]]:
    return [tuple(int(g.replace(",", "")) for g in m.groups() if g[0].isdigit())
            for m in pattern.finditer(text)]  # fmt: skip


@pytest.mark.timeout(900)
def test_valgrind_memcheck_finds_no_bad_access_and_no_leak_per_request(tmp_path: Path) -> None:
    if shutil.which("valgrind") is None:
        pytest.fail("valgrind is not installed (scripts/test.sh installs it)")
    if speedups.compiled is None:
        pytest.skip(f"memcheck is for the compiled hot path; this process runs {speedups.PATH}")
    # Two runs, the second with three times the requests: whatever a request leaks would show
    # as more blocks still allocated at exit in the second.
    small, large = (330, 210), (990, 630)
    runs = {}
    for n in (small, large):
        found, stderr = memcheck(tmp_path / f"store-{n[0]}", *n)
        assert found["path"] == "compiled", found
        assert found["counted"] == found["sent"], found
        runs[n] = (found, stderr)
    for n, (_found, stderr) in runs.items():
        ours = [r for r in memcheck_reports(stderr) if "_hotpath" in r]
        bad = [r for r in memcheck_reports(stderr) if r.startswith(("Invalid", "Mismatched"))]
        assert not ours and not bad, (
            f"{n} requests: memcheck reports in the hot path or of a bad access:\n"
            + "\n\n".join([*ours, *bad])[:8000]
        )
        lost = numbers(LOST, stderr)
        assert lost == [(0, 0), (0, 0)], f"{n}: {lost} (bytes, blocks) lost:\n{stderr[-4000:]}"
    in_use = {n: numbers(IN_USE, stderr) for n, (_found, stderr) in runs.items()}
    assert all(len(found) == 1 for found in in_use.values()), in_use
    (small_bytes, small_blocks), (large_bytes, large_blocks) = in_use[small][0], in_use[large][0]
    extra = sum(large) - sum(small)
    # Python's own caches may keep a few more blocks; one per request would be ~1,000.
    assert large_blocks - small_blocks < 50, (
        f"{extra} more requests left {large_blocks - small_blocks} more blocks "
        f"({large_bytes - small_bytes} bytes) allocated at exit"
    )


def test_memcheck_reports_are_read(tmp_path: Path) -> None:
    """The report reader finds an error and its stack, and a definite leak (not vacuous)."""
    stderr = "\n".join([
        "==7== Memcheck, a memory error detector",
        "==7== ",
        "==7== Invalid read of size 8",
        "==7==    at 0x1: __pyx_pw_11workermeter_8_hotpath_8Response_5__next__ (_hotpath.c:9)",
        "==7==    by 0x2: _PyEval_EvalFrameDefault (ceval.c:1)",
        "==7== ",
        "==7== 24 bytes in 1 blocks are definitely lost in loss record 2 of 9",
        "==7==    at 0x3: malloc (vg_replace_malloc.c:381)",
        "==7== ",
        "==7==     in use at exit: 1,024 bytes in 12 blocks",
        "==7==    definitely lost: 24 bytes in 1 blocks",
        "==7==    indirectly lost: 0 bytes in 0 blocks",
    ])  # fmt: skip
    reports = memcheck_reports(stderr)
    assert len(reports) == 2, reports
    assert reports[0].startswith("Invalid read of size 8\n") and "_hotpath" in reports[0]
    assert "definitely lost" in reports[1]
    assert numbers(LOST, stderr) == [(24, 1), (0, 0)]
    assert numbers(IN_USE, stderr) == [(1024, 12)]


# -- a million requests ---------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_a_million_requests_leave_memory_flat(tmp_path: Path) -> None:
    wsgi, asgi = 1_000_000, 200_000
    found = result(load(tmp_path / "store", wsgi, asgi, checkpoints=6, timeout=540))
    assert found["path"] == speedups.PATH, found
    # Every request counted, whatever its kind (tests/apps/hotpath_load.py).
    assert found["counted"] == found["sent"] == wsgi + asgi + 18, found
    readings = found["readings"]
    assert len(readings) == 7 and readings[-1]["done"] == wsgi + asgi, readings
    first, last = readings[0], readings[-1]
    # A byte per request would be 1.2 MB; a block per request 1.2 million. The readings list
    # itself takes a few blocks per reading.
    assert last["rss"] - first["rss"] < 1 << 20, readings
    assert last["blocks"] - first["blocks"] < 200, readings


# -- fuzzed headers -------------------------------------------------------------------------------

FUZZ = 100_000
ALPHABET = "0123456789.,t= -+eEinfa_x\t"


def fuzzed(rng: random.Random, now: float) -> str:
    """A request-start value: a valid one of some unit, mangled, or noise."""
    kind = rng.randrange(8)
    if kind == 0:
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 30)))
    if kind == 1:  # any code point, lone surrogates included
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(0, 12)))
    if kind == 2:  # bytes as a server decodes them (latin-1)
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 24))).decode("latin-1")
    if kind == 3:  # long
        return rng.choice("9.t=, ") * rng.randrange(30, 2000)
    at = now - rng.choice([0.0, 0.001, 0.5, 1.9, 3.0, 700.0, -1.0, -5.0, 1e6, -1e9])
    at += rng.random() * rng.choice([0.0, 1.0, 100.0])
    unit = rng.choice([1.0, 1e3, 1e6, 1e9])
    text = f"{at * unit:.{rng.randrange(0, 7)}f}" if unit == 1.0 or rng.random() < 0.3 else (
        str(round(at * unit)))  # fmt: skip
    text = rng.choice(["t=", "", "srv1 t=", " t="]) + text
    if kind == 4:
        return text
    if kind == 5:  # several values
        return ", ".join([text, fuzzed(rng, now)] if rng.random() < 0.5 else [text, text])
    # mangled: a character inserted, dropped or replaced
    chars = list(text)
    for _ in range(rng.randrange(1, 4)):
        i = rng.randrange(len(chars) + 1)
        what = rng.randrange(3)
        if what == 0:
            chars.insert(i, rng.choice(ALPHABET + "\x00\udcff\u0660\uff11"))
        elif chars and i < len(chars):
            if what == 1:
                del chars[i]
            else:
                chars[i] = rng.choice(ALPHABET)
    return "".join(chars)


class Expected:
    """What the reference parser makes of each value: the outcome counts and the waits' sum."""

    def __init__(self, max_skew: float, max_age: float) -> None:
        self.max_skew, self.max_age = max_skew, max_age
        self.outcomes: Counter[str] = Counter()
        self.waits = 0.0

    def add(self, values: list[str], now: float) -> None:
        wait, reason = rs.queue_wait(values, now, max_skew=self.max_skew, max_age=self.max_age)
        self.outcomes[reason or ("none" if wait is None else "observed")] += 1
        if wait is not None:
            self.waits += wait


def scrape(directory: Path, clock: FakeClock) -> dict[Any, float]:
    collector = StoreCollector(
        lambda: Store(directory, clock=clock),
        processes=lambda pids: {pid: (1, 1, 1.0) for pid in pids},
        host=lambda: (2, 1, 1),
        listeners=dict,
    )
    return parse(render(collector.families(), openmetrics=False).decode())


def check_counts(samples: dict[Any, float], expected: Expected, requests: int) -> None:
    outcomes = expected.outcomes
    assert sum(outcomes.values()) == requests
    # Not vacuous: the fuzz reaches every outcome.
    assert all(outcomes[k] > 100 for k in ("observed", rs.SKEW, rs.FUTURE, rs.TOO_OLD,
                                            rs.UNPARSABLE)), outcomes  # fmt: skip
    found = {
        "requests": value(samples, "workermeter_requests_total", route="/fuzz", status="2xx"),
        "observed": value(samples, "workermeter_queue_wait_seconds_count"),
        rs.SKEW: value(samples, "workermeter_queue_wait_clock_skew_total"),
        **{
            reason: value(samples, "workermeter_queue_wait_rejected_total", reason=reason)
            for reason in (rs.FUTURE, rs.TOO_OLD, rs.UNPARSABLE)
        },
    }
    wanted = {
        "requests": requests,
        # A start slightly in the future is observed as a wait of 0, and counted as skew.
        "observed": outcomes["observed"] + outcomes[rs.SKEW],
        **{k: outcomes[k] for k in (rs.SKEW, rs.FUTURE, rs.TOO_OLD, rs.UNPARSABLE)},
    }
    assert found == wanted
    waits = value(samples, "workermeter_queue_wait_seconds_sum")
    assert waits == pytest.approx(expected.waits, rel=1e-9, abs=1e-6)


@pytest.mark.timeout(300)
def test_fuzzed_headers_raise_nothing_and_count_as_the_reference_parser_says(
    tmp_path: Path,
) -> None:
    rng = random.Random(20261205)
    clock, wall, cpu = FakeClock(), FakeWallClock(), FakeClock(start_ns=0)
    expected = Expected(max_skew=2.0, max_age=600.0)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    recorder = Recorder(directory=tmp_path / "store", clock=clock, wall_clock=wall,
                        cpu_clock=cpu, threads=1, cpu_sample=0)  # fmt: skip
    mw = WSGIMiddleware(app, recorder=recorder, route=lambda environ: "/fuzz")
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        statuses.append(status)

    for i in range(FUZZ):
        wall.now = WALL_START + i * 0.01
        clock.ns += 10_000_000
        environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/f",
                                   "wsgi.multithread": False}  # fmt: skip
        values = [fuzzed(rng, wall.now)]
        environ["HTTP_X_REQUEST_START"] = values[0]
        if i % 5 == 0:
            values.append(fuzzed(rng, wall.now))
            environ["HTTP_X_QUEUE_START"] = values[1]
        expected.add(values, wall.now)
        body = mw(environ, start_response)
        assert list(body) == [b"ok"]
        body.close()  # type: ignore[attr-defined]
    assert statuses == ["200 OK"] * FUZZ
    check_counts(scrape(tmp_path / "store", clock), expected, FUZZ)


@pytest.mark.timeout(300)
def test_fuzzed_asgi_headers_raise_nothing_and_count_as_the_reference_parser_says(
    tmp_path: Path,
) -> None:
    rng = random.Random(51220262)
    clock, wall, cpu = FakeClock(), FakeWallClock(), FakeClock(start_ns=0)
    expected = Expected(max_skew=2.0, max_age=600.0)
    sent: list[int] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            sent.append(message["status"])

    recorder = Recorder(directory=tmp_path / "store", clock=clock, wall_clock=wall,
                        cpu_clock=cpu, cpu_sample=0)  # fmt: skip
    mw = ASGIMiddleware(app, recorder=recorder, route=lambda scope: "/fuzz")
    recorder.activate(multithread=False, capacity=None)  # as the lifespan startup does
    for i in range(FUZZ):
        wall.now = WALL_START + i * 0.01
        clock.ns += 10_000_000
        values = [fuzzed(rng, wall.now)]
        if i % 5 == 0:
            values.append(fuzzed(rng, wall.now))
        # A server gives header values as bytes; the middleware reads them as latin-1, and
        # a value that is not latin-1 cannot come from a server.
        encoded = [v.encode("latin-1", "replace") for v in values]
        expected.add([e.decode("latin-1") for e in encoded], wall.now)
        names = [b"x-request-start", b"x-queue-start"][:: 1 if i % 2 else -1]
        scope = {"type": "http", "method": "GET", "path": "/f",
                 "headers": [(b"host", b"h"), *zip(names, encoded, strict=False)]}  # fmt: skip
        coroutine = mw(scope, receive, send)
        with pytest.raises(StopIteration):
            coroutine.send(None)
    assert sent == [200] * FUZZ
    check_counts(scrape(tmp_path / "store", clock), expected, FUZZ)
