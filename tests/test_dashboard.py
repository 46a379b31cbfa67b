"""The Grafana dashboard: generated file up to date, importable shape, every panel explained,
and only metrics of the contract (or recorded by the rules) queried.

The queries themselves run against a real Prometheus in ``test_prometheus.py``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from servers import ROOT
from workermeter import metrics

if str(ROOT) not in sys.path:  # `pytest` run without `python -m`: the build code is at the root
    sys.path.insert(0, str(ROOT))

from grafana import build, dashboard, rules

ROWS = (
    "Are the workers keeping up?",
    "How many workers?",
    "Event loops (async workers)",
    "Where does the time go?",
    "Memory",
    "Health of the meter",
)
DECLARED = {name for metric in metrics.METRICS for name in metrics.series_names(metric)}
VARIABLES = {"$job", "$instance", "$__rate_interval"}


def committed() -> dict[str, Any]:
    model: dict[str, Any] = json.loads(build.DASHBOARD.read_text(encoding="utf-8"))
    return model


def panels() -> list[dict[str, Any]]:
    return [p for p in committed()["panels"] if p["type"] != "row"]


def test_committed_dashboard_is_generated() -> None:
    assert build.DASHBOARD.read_text(encoding="utf-8") == dashboard.render(), (
        "grafana/workermeter.json is stale: run python -m grafana.build"
    )
    assert build.stale() == []


def test_build_writes_what_it_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m grafana.build`` writes the files that ``--check`` compares."""
    monkeypatch.setattr(build, "ROOT", tmp_path)
    monkeypatch.setattr(build, "DASHBOARD", tmp_path / "grafana" / "workermeter.json")
    monkeypatch.setattr(build, "RULES", tmp_path / "rules" / "workermeter-rules.yml")
    assert build.main(["--check"]) == 1
    assert build.main([]) == 0
    assert build.main(["--check"]) == 0
    assert build.DASHBOARD.read_text() == dashboard.render()
    assert build.RULES.read_text() == rules.render()


def test_importable_model() -> None:
    model = committed()
    assert model["schemaVersion"] == dashboard.SCHEMA_VERSION
    assert model["uid"] == dashboard.UID
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["type"] == variables["instance"]["type"] == "query"
    assert variables["instance"]["includeAll"] and variables["instance"]["multi"]
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids))


def test_rows_in_order() -> None:
    titles = [p["title"] for p in committed()["panels"] if p["type"] == "row"]
    assert tuple(titles) == ROWS


def test_panels_fit_the_grid_without_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in committed()["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        cells = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_every_panel_has_a_unit_and_a_one_line_description() -> None:
    for panel in panels():
        description = panel["description"]
        assert description and "\n" not in description and len(description) <= 200, panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]


def test_only_declared_metrics_and_defined_variables() -> None:
    recorded = rules.recorded_names()
    for panel in panels():
        for target in panel["targets"]:
            expr = target["expr"]
            plain = set(re.findall(r"(?<![:\w])workermeter_[a-z0-9_]+\b(?!:)", expr))
            assert plain <= DECLARED, f"{panel['title']}: undeclared metric in {expr!r}"
            records = set(re.findall(r"\b[a-z_]+:workermeter_[a-z0-9_]+:[a-z0-9_]+", expr))
            assert records <= recorded, f"{panel['title']}: not a recorded series in {expr!r}"
            names = set(re.findall(r"(?<![\w:$])([a-z_]+)\{", expr))
            assert names <= plain | {"up"}, f"{panel['title']}: a series outside the contract"
            assert set(re.findall(r"\$\w+", expr)) <= VARIABLES, panel["title"]


def test_only_the_capacity_row_needs_the_rules() -> None:
    """Every other row works on a Prometheus without the rules loaded."""
    recorded = rules.recorded_names()
    for row in dashboard.rows():
        uses_rules = any(
            name in query.expr
            for panel in row.panels
            for query in panel.queries
            for name in recorded
        )
        assert uses_rules == row.needs_rules, row.title


def test_every_declared_gauge_and_counter_family_appears() -> None:
    """A metric added to the contract without a panel is a decision, not an accident."""
    shown = " ".join(t["expr"] for p in panels() for t in p["targets"])
    recorded_inputs = " ".join(rules.expressions())
    left_out = {
        m.name for m in metrics.METRICS if m.name not in shown and m.name not in recorded_inputs
    }
    # Not on the board: per-worker bookkeeping and what the ASGI connection panels would add.
    assert left_out == {
        "workermeter_websocket_connections",
        "workermeter_open_websockets",
        "workermeter_busy_slots_seconds",
        "workermeter_worker_start_time_seconds",
        "workermeter_worker_info",
    }
