"""``workermeter history``: a history written by the real writer on fake clocks (as in
tests/test_history.py), read back through the command with "now" fixed, from the file and from a
real status endpoint (``workermeter.status.Site`` served by wsgiref) behind a token."""

from __future__ import annotations

import csv
import datetime
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

import pytest

from conftest import FakeClock, FakeWallClock
from workermeter import history as h
from workermeter import history_writer as hw
from workermeter.access import allowed
from workermeter.cli import history as cli
from workermeter.cli import main
from workermeter.metrics_server import QuietHandler
from workermeter.recorder import Recorder, status_index
from workermeter.snapshot import Snapshot
from workermeter.status import Site, Status, refused
from workermeter.store import Store

MIB = 1 << 20
LOCAL = datetime.timezone(datetime.timedelta(hours=1))  # the zone TZ below names
START = datetime.datetime(2026, 12, 3, 13, 40, tzinfo=LOCAL).timestamp()  # the first row
MINUTES = 30  # 13:40 to 14:09 local, each written
NOW = START + 32 * 60 + 30  # 14:12:30: 14:10 and 14:11 are gaps, 14:12 is under way
# Requests of 1 s each, one at a time on one slot: minute offset -> requests (else 6).
SERVED = {5: 12, 10: 24, 22: 30, 25: 45, 26: 0, 27: 0, 28: 18}
REPORT = 25  # 14:05: POST /report, each request queued 0.3 s, the first 5 answered 500
TOKEN = "s3cret"


def served(offset: int) -> int:
    return SERVED.get(offset, 6)


def minute(hh: int, mm: int) -> float:
    return datetime.datetime(2026, 12, 3, hh, mm, tzinfo=LOCAL).timestamp()


@dataclass
class Recorded:
    directory: Path  # the store, and the history in it (the default)
    mono: FakeClock


def _gauges(_snap: Snapshot) -> hw.Gauges:
    return hw.Gauges(rss_max=80 * MIB, uss_max=30 * MIB, host_memory=4 << 30,
                     host_available_min=2 << 30, cores=2)  # fmt: skip


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """The 30 minutes of SERVED, each row written by the writer at the minute's end."""
    directory = tmp_path_factory.mktemp("instance") / "store"
    mono, wall = FakeClock(), FakeWallClock(START)
    recorder = Recorder(directory=directory, clock=mono, wall_clock=wall, cpu_sample=0)
    active = recorder.activate(multithread=False, capacity=1)
    lane = active.lane()
    writer = hw.Writer(Store(directory, clock=mono), directory, wall_clock=wall, sample=_gauges)
    writer.tick()

    def advance(seconds: float) -> None:
        mono.advance(seconds)
        wall.now += seconds

    for offset in range(MINUTES):
        end = wall.now + 60
        report = offset == REPORT
        for i in range(served(offset)):
            active.begin(lane, start=f"t={wall.now - 0.3:.6f}" if report else None)
            advance(1.0)
            route, method = ("/report", "POST") if report else ("/items/{id}", "GET")
            lane.request(route, method, status_index(500 if report and i < 5 else 200), 10**9)
            active.end()
        advance(end - wall.now)
        assert writer.tick() == 1
    return Recorded(directory, mono)


@pytest.fixture(autouse=True)
def zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is UTC+1 (a POSIX TZ needs no zone files); no variable of a real server."""
    for name in (hw.ENV_HISTORY, "WORKERMETER_DIR", "WORKERMETER_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TZ", "XYZ-01")
    time.tzset()
    monkeypatch.setattr(cli, "now", lambda: NOW)
    yield
    monkeypatch.undo()
    time.tzset()


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], recorded: Recorded) -> Run:
    """``run(*options)``: ``workermeter history --dir <the recorded history> *options``."""

    def go(*options: str, source: tuple[str, ...] | None = None) -> tuple[int, str, str]:
        given = ("--dir", str(recorded.directory)) if source is None else source
        code = main(["history", *given, *options])
        out, err = capsys.readouterr()
        return code, out, err

    return go


def rows_json(run: Run, *options: str, **source: tuple[str, ...]) -> list[dict[str, Any]]:
    code, out, err = run(*options, "--json", **source)
    assert code == 0, err
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def by_time(rows: list[dict[str, Any]]) -> dict[float, dict[str, Any]]:
    return {datetime.datetime.fromisoformat(r["time"]).timestamp(): r for r in rows}


# ------------------------------------------------------------------------------ the numbers


def test_json_rows_are_what_was_written_and_a_gap_is_null(run: Run, recorded: Recorded) -> None:
    rows = rows_json(run, "--from", "13:30", "--to", "14:12")
    assert len(rows) == 42  # 13:30 to 14:11
    found = by_time(rows)
    for offset in range(MINUTES):
        row = found[START + offset * 60]
        n = served(offset)
        assert row["gap"] is False
        assert row["requests"] == n
        assert row["utilisation"] == pytest.approx(n / 60)  # busy slot-seconds over 60
        assert row["all_busy_seconds"] == pytest.approx(n)  # one slot: busy is all busy
        assert row["rss_max"] == 80 * MIB
    # Exactly what the file holds, as Row.as_dict() gives it, in local time.
    file = h.HistoryFile(recorded.directory)
    written = {r.start: r.as_dict() for r in h.rows(file, minute(13, 30), minute(14, 12))}
    file.close()
    for t, row in found.items():
        assert {**row, "time": None} == {**written[t], "time": None}
    busy = found[minute(14, 5)]
    assert busy["time"] == "2026-12-03T14:05:00+01:00"
    assert busy["errors"] == 5 and 0.25 < busy["queue_wait_p95"] <= 0.5
    idle = found[minute(14, 6)]  # recorded, nothing served: zero
    assert idle["requests"] == 0 and idle["utilisation"] == 0.0 and idle["gap"] is False
    assert [list(row) for row in rows] == [list(rows[0])] * len(rows)  # the same fields, in order
    for gap in (found[minute(13, 30)], found[minute(14, 10)]):  # nothing recorded: null
        assert gap["gap"] is True
        assert gap["requests"] is None and gap["utilisation"] is None
        assert gap["all_busy_seconds"] is None and gap["queue_wait_p95"] is None


def test_csv_parses_back_to_the_same_numbers(run: Run) -> None:
    options = ("--from", "13:30", "--to", "14:12")
    rows = rows_json(run, *options)
    code, out, _ = run(*options, "--csv")
    assert code == 0
    parsed = list(csv.DictReader(io.StringIO(out)))
    assert [r["time"] for r in parsed] == [r["time"] for r in rows]
    for back, row in zip(parsed, rows, strict=True):
        if row["gap"]:
            assert back["requests"] == back["utilisation"] == back["all_busy_seconds"] == ""
            continue
        assert int(back["requests"]) == row["requests"]
        assert float(back["utilisation"]) == row["utilisation"]
        assert float(back["all_busy_seconds"]) == row["all_busy_seconds"]


def test_the_row_under_way_is_left_out_until_it_is_written(run: Run) -> None:
    rows = rows_json(run)  # the last hour, minute rows
    assert len(rows) == 59  # 13:13 to 14:11; 14:12 is under way and holds nothing yet
    assert rows[-1]["time"] == "2026-12-03T14:11:00+01:00" and rows[-1]["gap"]


# ---------------------------------------------------------------------------------- the times


@pytest.mark.parametrize(
    ("when", "clock"),
    [
        ("14:05", NOW),
        ("today 14:05:59", NOW),
        ("yesterday 14:05", NOW + 86400 - 3 * 3600),  # the next morning
        ("2026-12-03T14:05", NOW + 5 * 86400),
        ("2026-12-03 14:05:30", NOW),
        ("2026-12-03T13:05Z", NOW),
        ("2026-12-03T15:05+02:00", NOW),
        (str(int(minute(14, 5)) + 17), NOW),
    ],
)
def test_at_selects_the_minute_and_five_either_side(
    run: Run, monkeypatch: pytest.MonkeyPatch, when: str, clock: float
) -> None:
    monkeypatch.setattr(cli, "now", lambda: clock)
    rows = rows_json(run, "--at", when)
    assert [r["time"][11:16] for r in rows] == [f"14:{m:02d}" for m in range(11)]
    assert rows[5]["requests"] == served(REPORT)


def test_utc_reads_and_prints_times_in_utc(run: Run) -> None:
    rows = rows_json(run, "--at", "13:05", "--utc")
    assert rows[5]["time"] == "2026-12-03T13:05:00+00:00"
    assert rows[5]["requests"] == served(REPORT)
    code, out, _ = run("--at", "13:05", "--utc")
    assert code == 0
    assert "(UTC)" in out.splitlines()[0]
    marked = [line for line in out.splitlines() if line.startswith(">")]
    assert len(marked) == 1 and marked[0].startswith("> 13:05")


def test_a_bad_time_says_what_is_accepted_in_one_line(run: Run) -> None:
    code, out, err = run("--at", "half past two")
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert err.startswith("workermeter: --at: not a time: 'half past two'; write it as ISO 8601")
    assert "yesterday 14:05" in err and "unix seconds" in err
    assert run("--from", "14:00", "--to", "13:00")[0] == 2
    assert run("--at", "14:20")[0] == 2  # in the future


# ---------------------------------------------------------------------------------- the steps


def test_two_days_are_hourly_rows(run: Run) -> None:
    rows = rows_json(run, "--range", "2d")
    assert len(rows) == 48 and {r["seconds"] for r in rows} == {3600.0}
    assert rows[-1]["time"] == "2026-12-03T14:00:00+01:00"
    assert rows[-2]["requests"] == sum(served(o) for o in range(20))  # 13:40 to 13:59
    assert rows[-1]["requests"] == sum(served(o) for o in range(20, MINUTES))
    assert rows[0]["gap"] and rows[0]["requests"] is None
    # Minutes up to 6 h (less the one under way), hours beyond.
    assert len(rows_json(run, "--range", "6h")) == 6 * 60 - 1
    assert len(rows_json(run, "--range", "6h1m")) == 7
    assert rows_json(run, "--range", "2h", "--hourly")[-1]["seconds"] == 3600.0


def test_minute_rows_older_than_eight_days_are_refused(run: Run) -> None:
    code, _, err = run("--range", "9d", "--minutely")
    assert code == 2 and "minute rows are kept for 8 days" in err
    assert len(rows_json(run, "--range", "8d", "--minutely")) == 8 * 24 * 60 - 1
    code, _, err = run("--from", "0")  # 1970: more rows than the status JSON gives at once
    assert code == 2 and "more than 20,000 rows" in err


# ----------------------------------------------------------------------------------- the text


def test_text_collapses_long_runs_of_gaps_and_lists_the_busiest(run: Run) -> None:
    code, out, _ = run("--from", "13:30", "--to", "14:12")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("History from ")
    assert "2026-12-03 13:30 to 14:12 (local time, XYZ)" in lines[0]
    assert "  13:30\u201313:40 nothing recorded (10 minutes)" in lines
    assert "  14:10  (nothing recorded)" in lines and "  14:11  (nothing recorded)" in lines
    table = lines[: lines.index("")]
    assert len(table) == 2 + 1 + MINUTES + 2  # header, columns, the run, the rows, two gaps
    busy = next(line for line in table if line.startswith("  14:05"))
    assert busy.split()[1:5] == ["75%", "0.75/1", "45.0", "s"] and busy.endswith("80 MiB")
    start = lines.index("Busiest minutes (by utilisation, then time with every slot busy, then "
                        "queue wait):")  # fmt: skip
    busiest = [line.split()[0] for line in lines[start + 2 : start + 2 + cli.BUSIEST]]
    assert busiest == ["14:05", "14:02", "13:50", "14:08", "13:45"]
    assert lines[start + 2 + cli.BUSIEST] == ""
    routes = lines[lines.index(next(x for x in lines if x.startswith("Busiest routes"))) :]
    items = next(line for line in routes if "/items/{id}" in line)
    assert items.split()[1:3] == ["GET", str(sum(served(o) for o in range(20)))]
    assert not any("/report" in line for line in routes)  # its hour has not ended


def test_a_missing_history_says_where_it_looked(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded: Recorded
) -> None:
    code, _, err = run(source=("--dir", str(tmp_path)))
    assert code == 2
    assert err == (
        f"workermeter: no history.wm in {tmp_path}: pass the directory the server keeps its "
        "history in (its WORKERMETER_HISTORY_DIR, else its WORKERMETER_DIR)\n"
    )
    monkeypatch.setenv(hw.ENV_HISTORY, str(recorded.directory))
    assert rows_json(run, "--at", "14:05")[5]["requests"] == served(REPORT)


# ------------------------------------------------------------------------------------ --url


@dataclass
class Endpoint:
    url: str
    authorizations: list[str | None]


@pytest.fixture
def endpoint(recorded: Recorded) -> Iterator[Endpoint]:
    """The status JSON of the recorded instance, served as a server behind a proxy serves it:
    only to the token, as a bearer token or basic-auth password."""
    status = Status(
        lambda: Store(recorded.directory, clock=recorded.mono),
        processes=lambda pids: {p: (80 * MIB, 30 * MIB, 1.0) for p in pids},
        host=lambda: (4 << 30, 2 << 30, 2),
        clock=lambda: NOW,
    )
    site = Site(status, "/metrics/status")
    seen: list[str | None] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        authorization = environ.get("HTTP_AUTHORIZATION")
        seen.append(authorization)
        if allowed(TOKEN, environ.get("REMOTE_ADDR"), True, authorization):
            answer = site.respond(
                environ["PATH_INFO"], environ["REQUEST_METHOD"], environ.get("QUERY_STRING", "")
            )
        else:
            answer = refused(TOKEN)
        start_response(answer[0], answer[1])
        return [answer[2]]

    server: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Endpoint(f"http://127.0.0.1:{server.server_port}/metrics/status", seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_url_reads_the_same_rows_with_the_token(
    run: Run, endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    span = ("--from", "13:30", "--to", "14:12")
    local = rows_json(run, *span)
    remote = rows_json(run, *span, source=("--url", endpoint.url, "--token", TOKEN))
    assert remote == local
    assert endpoint.authorizations == [f"Bearer {TOKEN}"]
    monkeypatch.setenv("WORKERMETER_TOKEN", TOKEN)
    code, out, err = run(*span, source=("--url", endpoint.url + ".json"))
    assert code == 0, err
    assert endpoint.authorizations[-1] == f"Bearer {TOKEN}"
    assert out.startswith(f"History from {endpoint.url}.json: ")
    # The hour under way's routes come from the live store: /report is there.
    routes = [line.split()[:3] for line in out[out.index("Busiest routes") :].splitlines()]
    assert routes[2:] == [
        ["/items/{id}", "GET", str(sum(served(o) for o in range(MINUTES) if o != REPORT))],
        ["/report", "POST", str(served(REPORT))],
    ]


def test_url_refusals_say_what_to_do(run: Run, endpoint: Endpoint) -> None:
    code, _, err = run(source=("--url", endpoint.url))
    assert code == 2 and endpoint.authorizations == [None]
    assert err == (
        f"workermeter: {endpoint.url}.json answered HTTP 401 Unauthorized: it wants the server's "
        "token; pass --token or set $WORKERMETER_TOKEN\n"
    )
    code, _, err = run(source=("--url", endpoint.url, "--token", "wrong"))
    assert code == 2 and "the token was refused" in err
    code, _, err = run(source=("--url", endpoint.url + "/nope", "--token", TOKEN))
    assert code == 2 and "HTTP 404 Not Found: no status page there" in err
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run(source=("--url", f"127.0.0.1:{port}"))
    assert code == 2
    where = f"http://127.0.0.1:{port}/metrics/status.json"
    assert err == f"workermeter: cannot reach {where}: connection refused\n"
