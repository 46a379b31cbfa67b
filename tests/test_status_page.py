"""The status page: its HTML rendered from real data (a recorder, store and history writer on fake
clocks), read back with ``html.parser``; then the page served by a real gunicorn with the hooks
and loaded in a real browser, Debian's ``chromium-headless-shell``, driven over the Chrome DevTools
Protocol: no console error nor CSP violation, the numbers shown are the JSON's, the cursor moves
in every chart.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from conftest import FakeClock, FakeWallClock
from servers import LIFETIME, REQUEST_TIMEOUT, ROOT, Server, drive, gunicorn
from workermeter import history_writer as hw
from workermeter.recorder import Recorder, status_index
from workermeter.status import Status
from workermeter.status_charts import LEFT, RIGHT, WIDTH, errors_per_second, show
from workermeter.status_page import SCRIPT, STYLE, render
from workermeter.store import Store

T0 = 1_764_770_400.0  # 2025-12-03 14:00 UTC, the fake wall clock's "now" at the end
XSS = "<script>alert(1)</script>"
BASE = "/metrics/status"
MIB = 1 << 20
# The tables' columns: the keys of the data each one shows, in order.
BUSIEST_COLUMNS = ("time", "utilisation", "all_busy_seconds", "queue_wait_p95",
                   "requests_per_second", "errors")  # fmt: skip
ROUTE_COLUMNS = ("route", "method", "requests", "busy_seconds", "service_time_mean", "cpu_share")
WORKER_COLUMNS = ("slot", "pid", "age_seconds", "requests", "in_flight", "busy_share", "rss",
                  "uss")  # fmt: skip

# ------------------------------------------------------------------ real data on fake clocks


def sample_status(tmp_path: Path) -> Status:
    """40 minutes of history: light traffic, 5 minutes with both slots taken and long queue
    waits, 5 idle minutes, then traffic with errors and a route whose name is markup. The
    writer starts 40 minutes before ``T0``, so a range starting earlier begins with gaps."""
    mono, wall = FakeClock(), FakeWallClock(T0 - 40 * 60)
    store = tmp_path / "store"
    rec = Recorder(directory=store, clock=mono, wall_clock=wall, cpu_sample=1)
    act = rec.activate(multithread=True, capacity=2)
    lane = act.lane()

    def gauges(_snap: object) -> hw.Gauges:
        return hw.Gauges(rss_max=80 * MIB, uss_max=30 * MIB, host_memory=4 << 30,
                         host_available_min=2 << 30, cores=2, process_cpu_ns=10**9)  # fmt: skip

    writer = hw.Writer(Store(store, clock=mono), store, wall_clock=wall, sample=gauges)
    writer.tick()

    def advance(seconds: float) -> None:
        mono.advance(seconds)
        wall.now += seconds

    for minute in range(40):
        used = 0.0
        if minute < 10 or 20 <= minute < 39:
            for i in range(30):
                act.begin(lane, start=f"t={wall.now - 0.005:.6f}")
                advance(0.1)
                route = XSS if minute >= 20 and i % 3 == 0 else "/items/{id}"
                status = status_index(500 if minute >= 20 and i % 10 == 0 else 200)
                lane.request(route, "GET", status, 100_000_000)
                act.end()
                used += 0.1
        elif minute < 15:  # saturated: two requests at once, 20 s each, queued for 0.3 s
            for _ in range(2):
                act.begin(lane, start=f"t={wall.now - 0.3:.6f}")
                act.begin(lane, start=f"t={wall.now - 0.3:.6f}")
                advance(20)
                for _ in range(2):
                    lane.request("/report", "POST", status_index(200), 20_000_000_000)
                    act.end()
                used += 20
        advance(60 - used)
        writer.sample()
        writer.tick()
    return Status(
        lambda: Store(store, clock=mono),
        processes=lambda pids: {p: (80 * MIB, 30 * MIB, 1.0) for p in pids},
        host=lambda: (4 << 30, 2 << 30, 2),
        clock=wall,
    )


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    children: list[Element] = field(default_factory=list)

    def find(self, tag: str | None = None, **attrs: str) -> list[Element]:
        """Every descendant (itself included) with this tag and these attributes."""
        found = [self] if _matches(self, tag, attrs) else []
        for child in self.children:
            found += child.find(tag, **attrs)
        return found

    def one(self, tag: str | None = None, **attrs: str) -> Element:
        found = self.find(tag, **attrs)
        assert len(found) == 1, f"{tag} {attrs}: {len(found)} found"
        return found[0]

    def all_text(self) -> str:
        return self.text + "".join(c.all_text() for c in self.children)

    def json(self, name: str) -> Any:
        return json.loads(self.attrs[name])


def _matches(e: Element, tag: str | None, attrs: dict[str, str]) -> bool:
    return (tag is None or e.tag == tag) and all(
        e.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items()
    )


VOID = {"meta", "link", "br", "img", "input", "hr"}  # HTML's; SVG's are written <x/>


class Tree(HTMLParser):
    """The page as a tree of elements; ``raw_attrs`` keeps every attribute as written."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]
        self.raw_attrs: list[tuple[str, str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.raw_attrs += [(tag, k, v) for k, v in attrs]
        e = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(e)
        if tag not in VOID:
            self.stack.append(e)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.raw_attrs += [(tag, k, v) for k, v in attrs]
        self.stack[-1].children.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].text += data


def parse_page(page: str) -> Tree:
    tree = Tree()
    tree.feed(page)
    tree.close()
    assert [e.tag for e in tree.stack] == ["#document"], "elements left open"
    return tree


def cells(table: Element) -> list[list[Any]]:
    return [[td.json("data-value") for td in tr.find("td")] for tr in table.one("tbody").find("tr")]


def line(doc: Element, chart: str, name: str) -> list[Any]:
    values: list[Any] = (
        doc.one("svg", id=f"chart-{chart}").one("path", data_name=name).json("data-values")
    )
    return values


# ---------------------------------------------------------------------------- without a browser


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    status = sample_status(tmp_path_factory.mktemp("status"))
    data = json.loads(status.json(f"from={T0 - 50 * 60:.0f}&to={T0:.0f}"))
    return data, render(data, BASE)


def test_page_is_one_document_with_no_inline_script_or_style(
    sample: tuple[dict[str, Any], str],
) -> None:
    _, page = sample
    tree = parse_page(page)
    doc = tree.root
    assert page.startswith("<!DOCTYPE html>")
    assert doc.one("meta", name="viewport")
    assert [s.attrs.get("src") for s in doc.find("script")] == [f"{BASE}.js"]
    assert all(not s.all_text().strip() for s in doc.find("script"))
    assert [e.attrs["href"] for e in doc.find("link", rel="stylesheet")] == [f"{BASE}.css"]
    assert not doc.find("style")
    assert not [a for a in tree.raw_attrs if a[1] == "style" or a[1].startswith("on")]
    # Nothing from elsewhere: every URL the page names is its own (or data:).
    urls = [v or "" for _, k, v in tree.raw_attrs if k in ("src", "href")]
    assert all(u.startswith(("/", "?", "data:")) for u in urls), urls
    assert doc.one(id="directory").all_text().endswith("store")


def test_every_string_is_escaped(sample: tuple[dict[str, Any], str]) -> None:
    data, page = sample
    assert XSS in [r["route"] for r in data["routes"]]
    assert XSS not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    routes = parse_page(page).root.one("table", id="routes")
    assert XSS in [tr.find("td")[0].all_text() for tr in routes.one("tbody").find("tr")]


def test_now_header_and_ranges(sample: tuple[dict[str, Any], str]) -> None:
    data, page = sample
    doc = parse_page(page).root
    now = data["now"]
    assert doc.one(id="verdict").all_text() == now["verdict"]
    assert doc.one(id="verdict-reason").all_text() == now["verdict_reason"]
    for key, unit in [("busy", "count"), ("workers", "count"), ("utilisation_1m", "ratio"),
                      ("utilisation_5m", "ratio"), ("utilisation_15m", "ratio"),
                      ("queue_wait_p95_5m", "seconds")]:  # fmt: skip
        e = doc.one(id=f"now-{key}")
        assert e.json("data-value") == now[key], key
        assert e.all_text() == show(now[key], unit), key
    assert doc.one(id="generated").attrs["datetime"] == data["generated"]
    links = doc.one("nav", id="ranges").find("a")
    assert [a.attrs["href"] for a in links] == [f"?range={r}" for r in data["range"]["ranges"]]
    assert not [a for a in links if "aria-current" in a.attrs]  # a from=&to= range: none current

    for name in data["range"]["ranges"]:
        current = parse_page(render({**data, "range": {**data["range"], "name": name}}, BASE))
        marked = current.root.find("a", aria_current="page")
        assert [a.all_text() for a in marked] == [name]


def test_tables_hold_the_datas_values(sample: tuple[dict[str, Any], str]) -> None:
    data, page = sample
    doc = parse_page(page).root
    busiest = cells(doc.one("table", id="busiest"))
    assert len(busiest) == len(data["busiest"]) > 0
    first = data["busiest"][0]
    assert busiest[0][:2] == [first["time"], first["utilisation"]]
    assert busiest[0] == [first[k] for k in BUSIEST_COLUMNS]
    assert cells(doc.one("table", id="routes")) == [
        [r[k] for k in ROUTE_COLUMNS] for r in data["routes"]
    ]
    assert cells(doc.one("table", id="workers")) == [
        [w[k] for k in WORKER_COLUMNS] for w in data["workers"]
    ]
    suggestion = data["suggestion"]
    if "error" in suggestion:
        assert doc.one(id="suggestion-error").all_text() == suggestion["error"]
    else:
        assert doc.one(id="setting").all_text() == suggestion["setting"]
        assert [li.all_text() for li in doc.one("ul", id="reasons").find("li")] == suggestion[
            "reasons"
        ]


def test_charts_hold_the_rows_values_and_gaps_break_the_lines(
    sample: tuple[dict[str, Any], str],
) -> None:
    data, page = sample
    doc = parse_page(page).root
    rows = data["rows"]
    assert rows[0]["gap"] and not rows[-5]["gap"]  # the range begins before the history
    times = [r["time"] for r in rows]
    for chart in ("utilisation", "queue", "requests", "memory"):
        assert doc.one("svg", id=f"chart-{chart}").json("data-times") == times

    expected = {
        ("utilisation", "busy"): [r["utilisation"] for r in rows],
        ("utilisation", "slots"): [r["slots"] for r in rows],
        ("queue", "p50"): [r["queue_wait_p50"] for r in rows],
        ("queue", "p95"): [r["queue_wait_p95"] for r in rows],
        ("requests", "requests/s"): [r["requests_per_second"] for r in rows],
        ("requests", "errors/s"): [errors_per_second(r) for r in rows],
        ("memory", "RSS"): [r["rss_max"] for r in rows],
        ("memory", "USS"): [r["uss_max"] for r in rows],
    }
    for (chart, name), values in expected.items():
        assert line(doc, chart, name) == values, (chart, name)
        for row, v in zip(rows, values, strict=True):
            if row["gap"]:
                assert v is None, (chart, name, row["time"])
    # A line is lifted at each gap or unknown value: one M per run of known values.
    for (chart, name), values in expected.items():
        runs = sum(
            1 for i, v in enumerate(values) if v is not None and (i == 0 or values[i - 1] is None)
        )
        d = doc.one("svg", id=f"chart-{chart}").one("path", data_name=name).attrs["d"]
        assert d.count("M") == runs, (chart, name, d)
    errors = [e for e in expected["requests", "errors/s"] if e]
    assert errors and all(e == pytest.approx(3 / 60) for e in errors[:-1])

    # Saturated minutes are shaded, the 80 % line is drawn, the axes name their maximum.
    queue = doc.one("svg", id="chart-queue")
    assert len(queue.find("rect", **{"class": "band"})) == 1
    assert doc.one("svg", id="chart-utilisation").one("line", **{"class": "rule"}).json(
        "data-value"
    ) == pytest.approx(0.8)
    top = queue.one("text", **{"class": "axis axis-left"}).json("data-max")
    assert max(v for v in expected["queue", "p95"] if v is not None) <= top
    ceiling = data["suggestion"].get("memory_ceiling_per_worker")
    if ceiling:  # gigabytes over lines of 80 MiB: named at the top rather than drawn
        assert doc.one("svg", id="chart-memory").one(data_value=json.dumps(float(ceiling)))


@pytest.mark.parametrize("query", ["range=1h", "range=90d"])
def test_a_page_with_no_history(tmp_path: Path, query: str) -> None:
    status = Status(lambda: Store(tmp_path / "store"), processes=lambda pids: {},
                    host=lambda: (0, 0, 0), clock=lambda: T0)  # fmt: skip
    data = json.loads(status.json(query))
    page = render(data, BASE)
    doc = parse_page(page).root
    assert doc.one(id="history-message").all_text() == data["history"]["message"]
    assert doc.one(id="verdict").all_text() == "unknown"
    assert all(v is None for v in line(doc, "utilisation", "busy"))
    assert len(doc.find("text", **{"class": "empty"})) == 4
    assert doc.one(id="suggestion-error").all_text() == "no history yet"


def test_script_and_style_are_small_and_self_contained() -> None:
    assert SCRIPT.count(b"\n") < 150
    assert b"http" not in SCRIPT and b"@import" not in STYLE and b"url(" not in STYLE
    assert b"@media (max-width: 600px)" in STYLE


# ------------------------------------------------------------------------ in a real browser

CHROMIUM = "/usr/bin/chromium-headless-shell"
CONF = ROOT / "integrations" / "gunicorn.conf.py"
_DEVTOOLS = re.compile(r"DevTools listening on (ws://\S+)")
_METRICS_AT = re.compile(r"workermeter: metrics of all workers on (http://\S+)/metrics")
_STORE_AT = re.compile(r"workermeter: store (\S+)")


class DevToolsError(RuntimeError):
    """A DevTools command answered with an error."""


class Page:
    """One tab of the browser, over a flattened DevTools session; ``events`` keeps every event
    received, in order."""

    def __init__(self, ws: Any, session: str) -> None:
        self.ws = ws
        self.session = session
        self.events: list[dict[str, Any]] = []
        self._id = 0

    def call(self, method: str, timeout: float = 20.0, **params: Any) -> dict[str, Any]:
        self._id += 1
        ident = self._id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params,
                                 "sessionId": self.session}))  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(deadline, method)
            if message.get("id") == ident:
                if "error" in message:
                    raise DevToolsError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def wait_event(self, method: str, since: int, timeout: float = 20.0) -> dict[str, Any]:
        """The first event ``method`` received after the first ``since`` events."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[since:]:
                if event.get("method") == method:
                    return event
            self._receive(deadline, method)

    def _receive(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer to {waiting_for}")
        message: dict[str, Any] = json.loads(self.ws.recv(timeout=left))
        if "method" in message:
            self.events.append(message)
        return message

    def open(self, url: str) -> None:
        since = len(self.events)
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired", since)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)  # fmt: skip
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression[:60]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors (CSP violations)."""
        found = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(f"console: {params.get('args')}")
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {params.get('exceptionDetails')}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(f"log: {params['entry'].get('text')}")
        return found

    def viewport(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=width < 600)  # fmt: skip


def _stop_chromium(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to every process of the browser, each by its pid, a bounded wait, then SIGKILL
    to those left. Debian's /usr/bin/chromium-headless-shell is a shell script that does not
    exec, so the browser is not ``proc``'s child but its grandchild. (``timeout`` itself, at the
    end of ``LIFETIME``, signals its whole process group, the browser included.)"""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:  # timeout ended: it took its process group with it
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):  # gone with its parent meanwhile
            member.terminate()
    _, alive = psutil.wait_procs(family, timeout=10)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(alive, timeout=10)
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Page]:
    """A fresh chromium-headless-shell with a profile in ``tmp_path``, and one tab."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium-headless-shell")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium-headless-shell)")
    with chromium(tmp_path) as page:
        yield page


@contextlib.contextmanager
def chromium(tmp_path: Path) -> Iterator[Page]:
    """chromium-headless-shell under ``timeout`` (it dies on its own after ``LIFETIME``
    seconds), its profile and log in ``tmp_path``; one tab of 1200 x 1600 pixels."""
    from websockets.sync.client import connect

    log = tmp_path / "chromium.log"
    argv = [
        "timeout", "-k", "5", str(LIFETIME), CHROMIUM,
        "--remote-debugging-port=0", f"--user-data-dir={tmp_path / 'chromium'}",
        "--no-first-run", "--no-default-browser-check", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        *(["--no-sandbox"] if os.geteuid() == 0 else []),  # its sandbox refuses to run as root
        "about:blank",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while (found := _DEVTOOLS.search(log.read_text(errors="replace"))) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"chromium did not start:\n{log.read_text()}")
            time.sleep(0.05)
        with connect(found.group(1), max_size=None, open_timeout=10) as ws:
            ident = 0

            def command(method: str, **params: Any) -> dict[str, Any]:
                nonlocal ident
                ident += 1
                ws.send(json.dumps({"id": ident, "method": method, "params": params}))
                while True:
                    message: dict[str, Any] = json.loads(ws.recv(timeout=20))
                    if message.get("id") == ident:
                        result: dict[str, Any] = message["result"]
                        return result

            target = command("Target.createTarget", url="about:blank")["targetId"]
            session = command("Target.attachToTarget", targetId=target, flatten=True)
            page = Page(ws, session["sessionId"])
            for domain in ("Runtime", "Log", "Page"):
                page.call(f"{domain}.enable")
            page.viewport(1200, 1600)
            yield page
    finally:
        _stop_chromium(proc)


@dataclass(frozen=True)
class Hooked:
    server: Server
    metrics: str  # the base URL of the arbiter's metrics port


@contextlib.contextmanager
def hooked_gunicorn(tmp_path: Path, workers: int) -> Iterator[Hooked]:
    """gunicorn with the hooks of ``integrations/gunicorn.conf.py``, the metrics on any port."""
    created: Path | None = None
    try:
        with gunicorn(tmp_path, workers=workers, store=None,
                      extra=("-c", str(CONF), "-e", "WORKERMETER_PORT=0")) as server:  # fmt: skip
            text = server.log_text()
            store, metrics = _STORE_AT.search(text), _METRICS_AT.search(text)
            assert store is not None and metrics is not None, text
            created = Path(store.group(1))
            yield Hooked(server, metrics.group(1))
    finally:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)


def status_json(metrics: str, query: str) -> dict[str, Any]:
    with requests.get(f"{metrics}{BASE}.json?{query}", timeout=REQUEST_TIMEOUT) as r:
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data


def between(before: Any, shown: Any, after: Any, where: str) -> None:
    """``shown`` was read between two JSON answers: it is one of them or, for a number that
    moved (a minute under way), lies between them."""
    if isinstance(before, dict):
        for k in before:
            between(before[k], shown[k], after[k], f"{where}.{k}")
    elif isinstance(before, list):
        assert len(before) == len(shown) == len(after), where
        for i, (b, s, a) in enumerate(zip(before, shown, after, strict=True)):
            between(b, s, a, f"{where}[{i}]")
    elif isinstance(shown, str) and shown not in (before, after):
        # A sentence with numbers in it ("the slots were 87% busy"): the same words, and each
        # number between.
        parts = [re.split(r"(\d+(?:\.\d+)?)", str(v)) for v in (before, shown, after)]
        assert len({len(p) for p in parts}) == 1, f"{where}: {before!r} {shown!r} {after!r}"
        for i, (b, s, a) in enumerate(zip(*parts, strict=True)):
            if i % 2:
                between(float(b), float(s), float(a), where)
            else:
                assert b == s == a, f"{where}: {before!r} {shown!r} {after!r}"
    elif shown not in (before, after):
        numbers = all(isinstance(v, int | float) for v in (before, shown, after))
        assert numbers and min(before, after) <= shown <= max(before, after), (
            f"{where}: {shown!r} is neither {before!r} nor {after!r} nor between"
        )


def _words(now: dict[str, Any]) -> tuple[str, str]:
    """The verdict and its reason without their numbers."""
    return now["verdict"], re.sub(r"\d+(\.\d+)?", "#", now["verdict_reason"])


READ_PAGE = """(() => {
  const value = (e) => e.dataset.now === "verdict" ? e.dataset.value : JSON.parse(e.dataset.value);
  const now = {};
  for (const e of document.querySelectorAll("#now [data-now][data-value]")) {
    now[e.dataset.now] = value(e);
  }
  now.verdict_reason = document.getElementById("verdict-reason").textContent;
  const shown = {};
  for (const e of document.querySelectorAll("#now [data-now][data-unit][id]")) {
    shown[e.dataset.now] = e.textContent;
  }
  const charts = {};
  for (const svg of document.querySelectorAll("svg.chart")) {
    const lines = {};
    for (const p of svg.querySelectorAll("path.line")) {
      lines[p.dataset.name] = JSON.parse(p.dataset.values);
    }
    charts[svg.id.replace("chart-", "")] = {times: JSON.parse(svg.dataset.times), lines};
  }
  const cell = (td) => td.dataset.value === undefined ? null : JSON.parse(td.dataset.value);
  const rows = (id) => Array.from(document.querySelectorAll(`#${id} tbody tr`),
                                  (tr) => Array.from(tr.cells, cell));
  return {now, shown, charts, routes: rows("routes"), busiest: rows("busiest")};
})()"""

CURSORS = """Array.from(document.querySelectorAll("svg.chart"), (svg) => {
  const c = svg.querySelector("line.cursor");
  const id = svg.id.replace("chart-", "");
  return {id, x: Number(c.getAttribute("x1")), visible: c.getAttribute("visibility") === "visible",
          readout: document.getElementById("readout-" + id).textContent};
})"""


def chart_point(page: Page, chart: str, fraction: float) -> tuple[float, float]:
    """A point in the window, ``fraction`` of the way across the plot of ``chart``."""
    box = page.evaluate(f"""(() => {{
      const svg = document.getElementById("chart-{chart}");
      svg.scrollIntoView({{block: "center"}});
      const r = svg.getBoundingClientRect(), w = svg.viewBox.baseVal.width;
      const k = r.width / w;
      return [r.left + k * Number(svg.dataset.left), r.left + k * Number(svg.dataset.right),
              r.top + r.height / 2];
    }})()""")
    left, right, y = box
    return left + fraction * (right - left), y


def move_mouse(page: Page, x: float, y: float) -> None:
    page.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)


def requests_in(data: dict[str, Any]) -> int:
    return sum(r["requests"] or 0 for r in data["rows"])


def test_the_page_in_a_browser(tmp_path: Path, browser: Page) -> None:
    sent = 40
    with hooked_gunicorn(tmp_path, workers=2) as g:
        assert set(drive(g.server.url, ["/sleep?ms=50"] * sent, clients=4)) == {200}
        query = "range=1h"
        # The minute under way counts once the history writer's cursor is in it: within a few
        # seconds of the start, and of a new minute.
        deadline = time.monotonic() + 15
        while requests_in(status_json(g.metrics, query)) != sent:
            assert time.monotonic() < deadline, status_json(g.metrics, query)["rows"][-3:]
            time.sleep(0.2)

        # The page is read between two answers of the JSON; again if a minute ended or the
        # verdict changed between them (the minute under way moves while it is read).
        for _attempt in range(5):
            before = status_json(g.metrics, query)
            browser.open(f"{g.metrics}{BASE}?{query}")
            shown = browser.evaluate(READ_PAGE)
            after = status_json(g.metrics, query)
            if before["range"] == after["range"] and _words(before["now"]) == _words(after["now"]):
                break
            time.sleep(1)
        assert browser.problems() == []
        # The page's script and style were loaded, from the page's own paths.
        assert browser.evaluate("getComputedStyle(document.body).marginTop") == "0px"

        rows = after["rows"]
        assert sum(r["requests"] or 0 for r in rows) == sent
        between(before["now"], shown["now"], after["now"], "now")
        for key, unit in [("busy", "count"), ("workers", "count"), ("utilisation_1m", "ratio"),
                          ("queue_wait_p95_5m", "seconds")]:  # fmt: skip
            assert shown["shown"][key] == show(shown["now"][key], unit), key
        assert shown["now"]["workers"] == 2 and shown["now"]["busy"] == 0

        def lines(data: dict[str, Any]) -> dict[str, Any]:
            rs = data["rows"]
            return {
                "utilisation": {"times": [r["time"] for r in rs], "lines": {
                    "busy": [r["utilisation"] for r in rs], "slots": [r["slots"] for r in rs]}},
                "queue": {"times": [r["time"] for r in rs], "lines": {
                    "p50": [r["queue_wait_p50"] for r in rs],
                    "p95": [r["queue_wait_p95"] for r in rs]}},
                "requests": {"times": [r["time"] for r in rs], "lines": {
                    "requests/s": [r["requests_per_second"] for r in rs],
                    "errors/s": [errors_per_second(r) for r in rs]}},
                "memory": {"times": [r["time"] for r in rs], "lines": {
                    "RSS": [r["rss_max"] for r in rs], "USS": [r["uss_max"] for r in rs]}},
            }  # fmt: skip

        between(lines(before), shown["charts"], lines(after), "charts")
        assert shown["routes"] == [[r[k] for k in ROUTE_COLUMNS] for r in after["routes"]]
        assert [r[:3] for r in shown["routes"]] == [["/sleep", "GET", sent]]
        assert [r[0] for r in shown["busiest"]] == [r["time"] for r in after["busiest"]]

        # One move over the queue chart puts the cursor on the same row in all four.
        cursors = browser.evaluate(CURSORS)
        assert [c["visible"] for c in cursors] == [False] * 4
        n = len(rows)
        for fraction in (0.25, 0.75):
            move_mouse(browser, *chart_point(browser, "queue", fraction))
            cursors = browser.evaluate(CURSORS)
            i = round(fraction * (n - 1))
            x = LEFT + i * (WIDTH - RIGHT - LEFT) / (n - 1)
            assert [c["id"] for c in cursors] == ["utilisation", "queue", "requests", "memory"]
            for c in cursors:
                assert c["visible"] and c["x"] == pytest.approx(x, abs=0.06), (fraction, c)
                assert c["readout"].count(",") >= 1 and ":" in c["readout"]
        assert browser.problems() == []

        png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
        assert png.startswith(b"\x89PNG")
        if target := os.environ.get("WORKERMETER_SCREENSHOT"):
            Path(target).write_bytes(png)

        # The longest range, all gaps but the hour under way, and a phone's width.
        browser.viewport(390, 844)
        browser.open(f"{g.metrics}{BASE}?range=90d")
        move_mouse(browser, *chart_point(browser, "utilisation", 0.5))
        assert browser.evaluate('document.querySelector("[aria-current=page]").textContent') == (
            "90d"
        )
        assert browser.evaluate("document.documentElement.scrollWidth") <= 390
        widths = browser.evaluate(
            'Array.from(document.querySelectorAll("figure"), (f) => f.getBoundingClientRect().left)'
        )
        assert len(set(widths)) == 1  # the charts stack under 600 px
        assert browser.problems() == []

        # Every 30 s the script fetches the JSON and writes "Now" anew: on a virtual clock here,
        # paused once past the first refresh (it would run the next ones at once).
        browser.evaluate('document.getElementById("now-workers").textContent = "stale"')
        since = len(browser.events)
        browser.call("Emulation.setVirtualTimePolicy", policy="pauseIfNetworkFetchesPending",
                     budget=31_000)  # fmt: skip
        browser.wait_event("Emulation.virtualTimeBudgetExpired", since)
        browser.call("Emulation.setVirtualTimePolicy", policy="pause")
        assert browser.evaluate('document.getElementById("now-workers").textContent') == "2"
        assert browser.problems() == []


def test_no_errors_on_a_page_of_gaps(tmp_path: Path, browser: Page) -> None:
    """Pages of gaps only (an hour of them, and a range of one row), served by the status site
    over a store without history: the script runs on them without an error."""
    import threading
    from wsgiref.simple_server import WSGIServer, make_server

    from workermeter.metrics_server import QuietHandler
    from workermeter.status import Site

    site = Site(Status(lambda: Store(tmp_path / "store")), BASE)

    def app(environ: dict[str, Any], start_response: Any) -> Sequence[bytes]:
        status, headers, body = site.respond(environ["PATH_INFO"], environ["REQUEST_METHOD"],
                                             environ.get("QUERY_STRING", ""))  # fmt: skip
        start_response(status, headers)
        return [body]

    httpd: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}{BASE}"
        for query in ("range=1h", f"from={time.time() - 120:.0f}&to={time.time() - 60:.0f}"):
            browser.open(f"{url}?{query}")
            move_mouse(browser, *chart_point(browser, "memory", 0.3))
            assert browser.evaluate('document.getElementById("verdict").textContent') == "unknown"
        assert browser.problems() == []
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
