"""``workermeter logs`` end to end through ``main([...])``: the report, --json, and bad input."""

from __future__ import annotations

import gzip
import io
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from workermeter.cli import UsageError, main
from workermeter.cli import logs as cli_logs

DATA = Path(__file__).resolve().parent / "data" / "logs"
NGINX = str(DATA / "nginx-workermeter.log")
SERVER = ["--cores", "2", "--memory", "4G", "--process-memory", "200M"]
CUSTOM = "{end} INFO request method={method} path={path} status={status} took={duration:ms}ms"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["logs", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_report_in_plain_words(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, NGINX, "--processes", "2", *SERVER)
    assert (code, err) == (0, "")
    expected = [
        "20 requests from 1 file (nginx); 2 malformed lines, 1 not passed to the app.",
        "Time span: 2024-01-15 14:04:50 to 14:06:15 (UTC+01:00), 1 min 25 s.",
        "Arrival rate: peak 0.22 requests/s (13 in the minute from 14:05), typical 0.07/s",
        "Service time: mean 512 ms, p50 225 ms, p95 2,000 ms, cv 1.19 (the logged times less "
        "the rebuilt waits).",
        "Queue wait (rebuilt: first come, first served by 2 slots): 2 of 20 requests waited; "
        "mean 85 ms, p95 715 ms.",
        "Concurrency: at most 3 requests in flight at once, 0.14 on average; all 2 slots busy "
        "for 3,550 ms (4.2% of the time).",
        "  GET /reports/{date}         3  5,500 ms    54%  2,000 ms  2,000 ms",
        "  14:05         13   0.22              3            0.18        6%",
        "Minutes with all 2 slots busy: 1 of 3 with traffic.",
        "  14:05  all busy for 3,550 ms (6% of the minute), up to 3 in flight, 13 arrivals",
        "Suggestion: 1 process x 1 thread on 1 machine.",
        "  - Now 2 slots would be 6% busy at peak.",
        "  - Logged times include queueing: nginx logs $upstream_response_time",
        "Malformed lines (the first 2 of 2):",
        "  tests/data/logs/nginx-workermeter.log:16: not a combined/common log line",
        "    \\x16\\x03\\x01\\x02\\x00\\x01\\x00\\x01\\xfc\\x03\\x03",
    ]
    for text in expected:
        assert text.replace("tests/data/logs/", str(DATA) + "/") in out, text
    assert "Assumed:" not in out  # cores, memory and process memory were all given


def test_json_for_machines(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, NGINX, "--capacity", "2", "--json", *SERVER, "--cpu-share", "0.9")
    assert code == 0
    doc = json.loads(out)
    assert (doc["requests"], doc["malformed"], doc["skipped"], doc["capacity"]) == (20, 2, 1, 2)
    assert doc["minutes_at_capacity"] == ["2024-01-15T14:05+0100"]
    assert doc["peak_minute"]["arrivals"] == 13
    assert doc["concurrency"]["max_in_flight"] == 3
    assert doc["service"]["mean"] == pytest.approx(0.512)
    assert doc["queue_wait"]["rebuilt"] is True and doc["queue_wait"]["waited"] == 2
    assert doc["routes"][0]["route"] == "GET /reports/{date}"
    assert len(doc["minutes"]) == 3 and len(doc["bad_lines"]) == 2
    assert doc["cpu_share"] == 0.9 and doc["cpu_share_assumed"] is False
    assert doc["workload"]["cpu_share"] == 0.9
    assert doc["machine"]["cores"] == 2.0
    assert doc["machine"]["memory_total"] == 4 << 30
    assert doc["machine"]["process_rss"] == 200 << 20
    assert doc["machine"]["processes"] == 2
    assert doc["suggestion"]["slots"] >= 1
    assert doc["suggestion"]["reasons"]
    assert doc["assumed"] == []


@pytest.mark.parametrize(
    ("name", "extra", "fmt", "clock"),
    [
        pytest.param("nginx-combined.log", [], "nginx", "14:05", id="nginx-combined"),
        pytest.param("gunicorn.log", [], "gunicorn", "14:05", id="gunicorn"),
        pytest.param("apache.log", [], "apache", "14:05", id="apache"),
        pytest.param("apache.log", ["--format", "apache"], "apache", "14:05", id="apache-given"),
        # the custom log is in UTC, and its report too
        pytest.param("custom.log", ["--pattern", CUSTOM], "custom", "13:05", id="custom"),
    ],
)
def test_every_sample_format(
    capsys: pytest.CaptureFixture[str], name: str, extra: list[str], fmt: str, clock: str
) -> None:
    code, out, _ = run(capsys, str(DATA / name), *extra, *SERVER)
    assert code == 0
    assert f"20 requests from 1 file ({fmt})" in out
    assert f"(13 in the minute from {clock})" in out
    assert "Pass --capacity N" in out  # no capacity given: no minutes at capacity
    assert "Suggestion:" in out


def test_gzip_and_several_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    packed = tmp_path / "access.log.1.gz"
    packed.write_bytes(gzip.compress((DATA / "nginx-combined.log").read_bytes()))
    code, out, _ = run(capsys, NGINX, str(packed), "--top", "1", *SERVER)
    assert code == 0
    assert "40 requests from 2 files (nginx)" in out
    assert f"  {packed}: nginx, 20 requests, 0 malformed" in out
    routes = out.split("Top routes by worker time")[1].split("\n\n")[0]
    assert len(routes.strip().splitlines()) == 3  # title, header, one route


def test_assumptions_are_said(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, NGINX)
    assert code == 0
    assert "Assumed: " in out
    assert "(this machine's; pass --cores)" in out
    assert "150 MiB per worker process (pass --process-memory)" in out
    assert "assumes requests spend 50% of their time on the CPU" in out


def test_machine_too_small_for_the_defaults_is_no_suggestion(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(total=900 << 20))
    code, out, _ = run(capsys, NGINX)
    assert code == 0
    assert "No suggestion: memory_total (900 MiB) minus reserves" in out
    assert "Arrival rate:" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["missing.log"], "missing.log: no such file", id="missing-file"),
        pytest.param([str(DATA)], "is a directory", id="directory"),
        pytest.param([str(DATA / "../test_x.py")], "no such file", id="missing-relative"),
        pytest.param([__file__], "no line of", id="no-parsable-line"),
        pytest.param([NGINX, "--format", "iis"], "--format must be one of", id="bad-format"),
        pytest.param([NGINX, "--format", "custom"], "needs a pattern", id="custom-no-pattern"),
        pytest.param([NGINX, "--pattern", "{end} {oops}"], "unknown placeholder", id="pattern"),
        pytest.param([NGINX, "--pattern", "(?P<end>["], "regular expression", id="bad-regex"),
        pytest.param([NGINX, "--format", "apache"], "in the apache format", id="wrong-format"),
        pytest.param([NGINX, "--capacity", "0"], "--capacity must be at least 1", id="cap-0"),
        pytest.param([NGINX, "--capacity", "two"], "--capacity must be a whole", id="cap-word"),
        pytest.param([NGINX, "--threads", "2"], "--threads needs --processes", id="threads"),
        pytest.param(
            [NGINX, "--capacity", "8", "--processes", "2", "--threads", "2"],
            "--capacity 8 disagrees with --processes 2 x --threads 2 = 4 slots",
            id="disagree",
        ),
        pytest.param([NGINX, "--cpu-share", "2"], "--cpu-share must be a share", id="share"),
        pytest.param([NGINX, "--cpu-share", "x"], "--cpu-share must be a share", id="share-x"),
        pytest.param([NGINX, "--memory", "lots"], "--memory must be bytes", id="memory"),
        pytest.param([NGINX, "--memory", "0"], "more than 0 bytes", id="memory-0"),
        pytest.param([NGINX, "--cores", "many"], "--cores must be a number", id="cores"),
        pytest.param([NGINX, "--top", "-1"], "--top must be at least 1", id="top"),
        pytest.param(
            [NGINX, "--cores", "0.5", "--memory", "4G", "--process-memory", "1G"],
            "cores must be the number of CPU cores",
            id="machine",
        ),
        pytest.param(
            [NGINX, "--cores", "2", "--memory", "1G", "--process-memory", "200M"],
            "leaves no room for one process",
            id="memory-too-small",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.startswith("workermeter: ") and err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log = tmp_path / "secret.log"
    log.write_bytes((DATA / "apache.log").read_bytes())
    log.chmod(0)
    code, _, err = run(capsys, str(log))
    assert code == 2
    assert "cannot read: Permission denied" in err


def test_unreadable_file_as_root(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied", NGINX)

    monkeypatch.setattr("workermeter.accesslog.reading.open", refuse, raising=False)
    code, _, err = run(capsys, NGINX)
    assert code == 2
    assert err == f"workermeter: {NGINX}: cannot read: Permission denied\n"


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["logs", "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    for option in ("FILE", "--format", "--pattern", "--capacity", "--processes", "--threads"):
        assert option in out
    for option in ("--cores", "--memory", "--process-memory", "--cpu-share", "--top", "--json"):
        assert option in out
    assert "docs/logs.md" in out


def test_read_logs_is_the_log_source_for_other_commands() -> None:
    analysis = cli_logs.read_logs([NGINX], capacity=2)
    assert analysis.workload is not None
    with pytest.raises(UsageError, match="no such file"):
        cli_logs.read_logs(["nope.log"])


# --- progress ----------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_progress_rewrites_one_line() -> None:
    out = Terminal()
    bar = cli_logs.PlainProgress(out)
    for done in (0, 10, 10, 55, 100):
        bar("/var/log/a.log", done, 100)
    bar.close()
    assert out.getvalue() == (
        "\rreading a.log:   0%\rreading a.log:  10%\rreading a.log:  55%\rreading a.log: 100%\n"
    )


def test_no_progress_when_small_or_not_a_terminal() -> None:
    with cli_logs._progress([NGINX], Terminal()) as progress:
        assert progress is None  # small
    with cli_logs._progress([NGINX], io.StringIO()) as progress:
        assert progress is None  # not a terminal


def test_plain_progress_without_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_logs, "PROGRESS_BYTES", 0)
    monkeypatch.setitem(sys.modules, "rich.progress", None)  # import fails
    out = Terminal()
    with cli_logs._progress([NGINX], out) as progress:
        assert isinstance(progress, cli_logs.PlainProgress)
        progress(NGINX, 1, 2)
    assert out.getvalue() == "\rreading nginx-workermeter.log:  50%\n"


def test_rich_progress_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("rich.progress")
    monkeypatch.setattr(cli_logs, "PROGRESS_BYTES", 0)
    out = Terminal()
    with cli_logs._progress([NGINX], out) as progress:
        assert progress is not None and not isinstance(progress, cli_logs.PlainProgress)
        progress(NGINX, 10, 100)
        progress(NGINX, 100, 100)
