"""The Kubernetes recipes of integrations/kubernetes: their PromQL, run on a real Prometheus
loaded with a known load, gives the replica count that load needs, and the manifests pass the
Kubernetes schemas and the schemas of KEDA's and prometheus-operator's CRDs.

One Prometheus (Debian's package) scrapes, every second, a small exporter on 127.0.0.1 that
serves the metrics workermeter exposes for the pods of each case below, with counters that grow
at known rates and carry their own timestamps (so every ``rate()`` is exact), and evaluates the
recording rules of ``grafana/rules.py`` with 10-second windows (same names and expressions as the
committed file). Each recipe's query is then sent the way its consumer sends it: KEDA's
Prometheus scaler (``/api/v1/query`` at the current second, one element or an error) and
prometheus-adapter (``seriesQuery`` listed with ``/api/v1/series``, ``metricsQuery`` expanded for
the HPA's selector as ``BuildExternal`` expands it), and the replica count follows from the
HPA's own formula. The expected counts are worked out by hand in the case table.

Validators (installed by scripts/test.sh; without them these tests fail rather than skip):
``kubernetes-validate --strict`` (PyPI, Kubernetes' OpenAPI schemas) for Deployment, Service,
ConfigMap and HorizontalPodAutoscaler; ``@kubernetes-models/keda`` and
``@kubernetes-models/prometheus-operator`` (npm, the CRDs' schemas compiled for Node) for the
ScaledObject and the ServiceMonitor; and
``tests/data/kubernetes/keda-scaledobject-strict.schema.json``, written from KEDA's documented
fields, for what the CRD schema leaves open (unknown fields, the Prometheus trigger's metadata
keys, ``metricType``).
"""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
import yaml

import servers
from workermeter.capacity import Targets

if str(servers.ROOT) not in sys.path:  # `pytest` without `python -m`: build code at the root
    sys.path.insert(0, str(servers.ROOT))

from grafana import rules

RECIPES = servers.ROOT / "integrations" / "kubernetes"
DATA = servers.TESTS / "data" / "kubernetes"
NODE_MODELS = servers.ROOT / ".venvs" / "kubernetes-models" / "node_modules"
KUBERNETES_VERSION = "1.30"
WINDOW = "10s"
SETTINGS = rules.Settings(window=WINDOW, durations=dict.fromkeys(rules.Settings().durations, "5s"))
UTILISATION = "job:workermeter_utilisation:ratio_rate5m"
HPA_TOLERANCE = 0.1  # kube-controller-manager's --horizontal-pod-autoscaler-tolerance default
BUILT_IN = {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler"}
CUSTOM = {"ScaledObject", "ServiceMonitor"}


# ------------------------------------------------------------------------------- the load


@dataclass(frozen=True)
class Case:
    """One app's pods. ``pods`` holds, per pod and per worker process, busy slot-seconds per
    second (sync, ``threads`` slots a worker) or event-loop busy seconds per second (async,
    ``threads`` 0: one loop a worker). ``desired`` is the replica count that must come out."""

    job: str
    app: str  # the recipe used: "web" (sync) or "api" (async) in integrations/kubernetes
    threads: int
    pods: tuple[tuple[float, ...], ...]
    desired: int

    @property
    def utilisation(self) -> float:
        """Busy over capacity, by definition: slots for sync workers, loops for async ones."""
        busy = sum(sum(pod) for pod in self.pods)
        units = sum(len(pod) for pod in self.pods) * (self.threads or 1)
        return busy / units


CASES = (
    # 2 pods x 2 processes x 2 threads, 7.6 busy slots: 0.95 of 8 slots, 0.95 / 0.8 = 1.1875
    # is past the 10% tolerance: ceil(2 x 1.1875) = ceil(7.6 / 0.8 / 4) = 3.
    Case("web-up", "web", 2, ((2.0, 1.8), (1.9, 1.9)), 3),
    # 6 busy slots on 2 pods of 4: 0.75, ceil(6 / 0.8 / 4) = 2, and 0.9375 is within tolerance.
    Case("web-steady", "web", 2, ((1.5, 1.5), (1.2, 1.8)), 2),
    # 1.2 busy slots: 0.15, ceil(2 x 0.1875) = 1, held at the recipe's minReplicaCount 2.
    Case("web-idle", "web", 2, ((0.3, 0.3), (0.4, 0.2)), 2),
    # 3 pods x 2 loops, 1.5 loop-seconds a second: ELU 0.25, 0.25 / 0.6 = 0.4167,
    # ceil(3 x 0.4167) = ceil(1.5 / 0.6 / 2) = 2: scale in.
    Case("api-down", "api", 0, ((0.2, 0.3), (0.25, 0.25), (0.1, 0.4)), 2),
    # 3 pods x 1 loop, 1.5 loop-seconds a second: ELU 0.5, ceil(3 x 0.8333) = ceil(1.5 / 0.6) = 3.
    Case("api-steady", "api", 0, ((0.4,), (0.5,), (0.6,)), 3),
    # 2 pods x 2 loops, 3.0 loop-seconds a second: ELU 0.75, ceil(2 x 1.25) = ceil(3 / 0.6 / 2) = 3.
    Case("api-up", "api", 0, ((0.9, 0.7), (0.8, 0.6)), 3),
)
ASYNC_CONCURRENCY = 5.0  # request-seconds in flight a second per async worker: not busyness


def exposition(case: Case, pod: tuple[float, ...], now_ms: int, origin: float) -> str:
    """What workermeter exposes for one pod of ``case`` at ``now_ms``: counters started at
    ``origin`` (an hour back, so no ``rate()`` extrapolates to a counter's zero), stamped."""
    elapsed = now_ms / 1000 - origin
    lines = []
    for worker, rate in enumerate(pod):
        w = f'worker="{worker}"'
        if case.threads:
            lines += [
                f"workermeter_busy_seconds_total{{{w}}} {rate * elapsed!r} {now_ms}",
                f"workermeter_capacity_threads{{{w}}} {case.threads} {now_ms}",
                f"workermeter_capacity_detected{{{w}}} 1 {now_ms}",
            ]
        else:
            # An event loop: request-seconds in flight count concurrency, the loop's own
            # counters its busyness; the capacity in threads is unknown.
            m = f'{w},method="uvloop"'
            lines += [
                f"workermeter_busy_seconds_total{{{w}}} {ASYNC_CONCURRENCY * elapsed!r} {now_ms}",
                f"workermeter_capacity_detected{{{w}}} 0 {now_ms}",
                f"workermeter_event_loop_busy_seconds_total{{{m}}} {rate * elapsed!r} {now_ms}",
                f"workermeter_event_loop_observed_seconds_total{{{m}}} {elapsed!r} {now_ms}",
            ]
    return "\n".join(lines) + "\n"


class Exporter(http.server.BaseHTTPRequestHandler):
    """Serves ``/<job>/<pod index>``: the pod's metrics at the moment of the request."""

    origin = 0.0

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        found = [c for c in CASES if c.job == parts[0]] if len(parts) == 2 else []
        if not found or not parts[1].isdigit() or int(parts[1]) >= len(found[0].pods):
            self.send_error(404)
            return
        body = exposition(
            found[0], found[0].pods[int(parts[1])], time.time_ns() // 10**6, self.origin
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape would bury the test's own output


def prometheus_config(exporter: str, rules_file: Path) -> str:
    """One job per case, one target per pod, labelled as prometheus-operator labels them."""
    address = exporter.removeprefix("http://")
    jobs = []
    for case in CASES:
        groups = [
            {
                "targets": [address],
                "labels": {
                    "__metrics_path__": f"/{case.job}/{i}",
                    "instance": f"{case.job}-{i}",
                    "namespace": "shop",
                    "pod": f"{case.job}-{i}",
                },
            }
            for i in range(len(case.pods))
        ]
        jobs.append({"job_name": case.job, "static_configs": groups})
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_file)],
        "scrape_configs": jobs,
    }
    return yaml.safe_dump(config)


Prom = servers.PrometheusAPI


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prom]:
    """Prometheus with 12 s of scrapes of every pod and the rules evaluated over them."""
    tmp = tmp_path_factory.mktemp("kubernetes")
    rules_file = tmp / "rules.yml"
    rules_file.write_text(rules.render(SETTINGS))
    handler = type("CaseExporter", (Exporter,), {"origin": time.time() - 3600})
    with servers.handler_server(handler) as exporter:
        config = tmp / "prometheus.yml"
        config.write_text(prometheus_config(exporter, rules_file))
        with servers.prometheus(tmp, config) as server:
            p = Prom(server.url)
            targets = sum(len(c.pods) for c in CASES)
            deadline = time.monotonic() + 60
            # Every target scraped for longer than the rules' window, then two evaluations more.
            while True:
                with contextlib.suppress(AssertionError, requests.RequestException, ValueError):
                    covered = p.get("/api/v1/query", query="count_over_time(up[12s]) >= 11")
                    if len(covered["result"]) == targets:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"not all {targets} targets scraped for 12 s:\n{server.log_text()}"
                    )
                time.sleep(0.5)
            time.sleep(2.5)
            yield p


# --------------------------------------------------------------------- how consumers ask


def keda_value(prom: Prom, trigger: dict[str, Any]) -> float:
    """The value KEDA's Prometheus scaler reads (pkg/scalers/prometheus_scaler.go): the query at
    the current second; no element, or NaN, is 0 only with ignoreNullValues; two are an error."""
    meta = trigger["metadata"]
    ignore_null = meta.get("ignoreNullValues", "true") == "true"
    at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    data = prom.get("/api/v1/query", query=meta["query"], time=at)
    result = data["result"]
    if len(result) > 1:
        raise AssertionError(f"KEDA fails: {meta['query']} returned {len(result)} elements")
    if not result:
        if ignore_null:
            return 0.0
        raise AssertionError(f"KEDA fails: {meta['query']} returned nothing")
    value = float(result[0]["value"][1])
    if math.isnan(value) or math.isinf(value):
        if ignore_null:
            return 0.0
        raise AssertionError(f"KEDA fails: {meta['query']} returned {value}")
    return value


def label_matchers(selector: dict[str, str], namespace: str | None) -> str:
    """``<<.LabelMatchers>>`` of prometheus-adapter's BuildExternal for a ``matchLabels``
    selector: its requirements sorted by key, then the HPA's namespace if the rule is namespaced."""
    parts = [f"{key}={json.dumps(selector[key])}" for key in sorted(selector)]
    if namespace is not None:
        parts.append(f"namespace={json.dumps(namespace)}")
    return ",".join(parts)


def expand(template: str, series: str, matchers: str) -> str:
    """prometheus-adapter's metricsQuery template, for the fields an external rule gets."""
    out = template.replace("<<.Series>>", series).replace("<<.LabelMatchers>>", matchers)
    out = out.replace("<<.GroupBy>>", "")
    if "<<" in out:
        raise ValueError(f"a template field this test does not expand: {template!r}")
    return out


def adapter_metric_name(rule: dict[str, Any], series: str) -> str | None:
    """The metric name an adapter rule gives a series (``name.matches`` -> ``name.as``)."""
    name = rule.get("name", {})
    pattern = name.get("matches", "")
    match = re.search(pattern, series)
    if match is None:
        return None
    if "as" not in name:
        return series
    # Go's Regexp.ExpandString: the template alone, with $1 or ${1} for the groups.
    return match.expand(re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", name["as"]))


def quantity_milli(text: str) -> int:
    """A Kubernetes quantity as the HPA reads a target: in thousandths."""
    return int(text[:-1]) if text.endswith("m") else round(float(text) * 1000)


def hpa_replicas(usage_milli: int, target_milli: int, current: int, low: int, high: int) -> int:
    """Kubernetes's count for an External metric with a Value target (replica_calculator.go,
    GetExternalMetricReplicas): within the tolerance the pods stay, else
    ceil(usage / target x ready pods), then clamped to the replica range."""
    ratio = usage_milli / target_milli
    desired = current if abs(1.0 - ratio) <= HPA_TOLERANCE else math.ceil(ratio * current)
    return min(max(desired, low), high)


# -------------------------------------------------------------------------------- manifests


def documents(name: str) -> list[dict[str, Any]]:
    with open(RECIPES / name, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def one(name: str, kind: str, app: str) -> dict[str, Any]:
    found = [d for d in documents(name) if d["kind"] == kind and d["metadata"]["name"] == app]
    assert len(found) == 1, f"{name}: {len(found)} {kind} named {app}"
    return found[0]


def for_job(query: str, app: str, job: str) -> str:
    """The recipe's query for another job: the app's job matcher replaced, once."""
    matcher = f'job="{app}"'
    assert query.count(matcher) == 1, f"{query!r} should select {matcher} once"
    return query.replace(matcher, f'job="{job}"')


def missing_rule_message(case: Case) -> str:
    why = "" if case.threads else " (async): the rules do not record ELU as its utilisation yet"
    return f"{UTILISATION} has no series for job {case.job}{why}"


@pytest.mark.parametrize("case", CASES, ids=[c.job for c in CASES])
def test_keda_scaled_object_gives_the_replicas_needed(prom: Prom, case: Case) -> None:
    scaled = one("keda-scaledobject.yaml", "ScaledObject", case.app)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "Value"
    trigger = {**trigger, "metadata": {**trigger["metadata"]}}
    trigger["metadata"]["query"] = for_job(trigger["metadata"]["query"], case.app, case.job)
    try:
        value = keda_value(prom, trigger)
    except AssertionError as e:
        raise AssertionError(f"{e}; {missing_rule_message(case)}") from None
    assert value == pytest.approx(case.utilisation, abs=1e-6)
    spec = scaled["spec"]
    desired = hpa_replicas(
        int(value * 1000),  # KEDA hands the HPA the value in thousandths
        quantity_milli(trigger["metadata"]["threshold"]),
        len(case.pods),
        spec["minReplicaCount"],
        spec["maxReplicaCount"],
    )
    assert desired == case.desired


@pytest.mark.parametrize("case", CASES, ids=[c.job for c in CASES])
def test_hpa_through_prometheus_adapter_gives_the_replicas_needed(prom: Prom, case: Case) -> None:
    hpa = one("hpa.yaml", "HorizontalPodAutoscaler", case.app)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    external = metric["external"]
    selector = dict(external["metric"]["selector"]["matchLabels"])
    assert selector == {"job": case.app}
    selector["job"] = case.job
    (config,) = [d for d in documents("prometheus-adapter-config.yaml") if d["kind"] == "ConfigMap"]
    adapter = yaml.safe_load(config["data"]["config.yaml"])

    # The adapter lists each rule's seriesQuery and names the series it finds.
    named: list[tuple[dict[str, Any], str]] = []
    for rule in adapter["externalRules"]:
        listed = prom.get("/api/v1/series", **{"match[]": rule["seriesQuery"]})
        for series in listed:
            if adapter_metric_name(rule, series["__name__"]) == external["metric"]["name"]:
                named.append((rule, series["__name__"]))
                assert series.keys() == {"__name__", "job"}, series
    found = {(id(r), s) for r, s in named}
    assert len(found) == 1, f"{external['metric']['name']}: served by {found or 'no rule'}"
    rule, series_name = named[0]
    jobs = {s["job"] for s in prom.get("/api/v1/series", **{"match[]": rule["seriesQuery"]})}
    assert case.job in jobs, missing_rule_message(case)

    namespaced = rule.get("resources", {}).get("namespaced", True)
    namespace = hpa["metadata"]["namespace"] if namespaced else None
    query = expand(rule["metricsQuery"], series_name, label_matchers(selector, namespace))
    result = prom.get("/api/v1/query", query=query)["result"]
    assert len(result) == 1, f"{query}: {result}"
    # The HPA adds up the items, each converted to thousandths (metric_converter.go).
    usage = sum(int(float(item["value"][1]) * 1000.0) for item in result)
    # Truncated to thousandths: up to one below the exact value (and float noise).
    assert usage == pytest.approx(case.utilisation * 1000, abs=1.001)
    spec = hpa["spec"]
    target = external["target"]
    assert target["type"] == "Value"
    desired = hpa_replicas(
        usage,
        quantity_milli(target["value"]),
        len(case.pods),
        spec["minReplicas"],
        spec["maxReplicas"],
    )
    assert desired == case.desired


def test_recipes_use_a_recorded_name_and_the_targets() -> None:
    """The recipes read the recorded utilisation and aim at workermeter's targets: 0.8 for a
    sync app's slots, 0.6 for an async app's event loops."""
    assert UTILISATION in rules.recorded_names()
    targets = {"web": Targets().utilisation, "api": Targets().loop_utilisation}
    for app, target in targets.items():
        (trigger,) = one("keda-scaledobject.yaml", "ScaledObject", app)["spec"]["triggers"]
        assert UTILISATION in trigger["metadata"]["query"]
        assert float(trigger["metadata"]["threshold"]) == target
        (metric,) = one("hpa.yaml", "HorizontalPodAutoscaler", app)["spec"]["metrics"]
        assert quantity_milli(metric["external"]["target"]["value"]) == round(target * 1000)


def test_recipes_point_at_the_apps() -> None:
    """Each autoscaler targets a Deployment of app.yaml in its namespace, the job it selects is
    that app's Service (prometheus-operator's job label), and the ServiceMonitor scrapes every
    such Service on a port it has."""
    apps = documents("app.yaml")
    deployments = {
        (d["metadata"]["namespace"], d["metadata"]["name"])
        for d in apps
        if d["kind"] == "Deployment"
    }
    services = [d for d in apps if d["kind"] == "Service"]
    assert deployments == {("shop", "web"), ("shop", "api")}
    for scaler in documents("keda-scaledobject.yaml") + documents("hpa.yaml"):
        key = (scaler["metadata"]["namespace"], scaler["spec"]["scaleTargetRef"]["name"])
        assert key in deployments, key
    (monitor,) = documents("servicemonitor.yaml")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    for namespace, name in deployments:
        (service,) = [s for s in services if s["metadata"]["name"] == name]
        assert service["metadata"]["namespace"] == monitor["metadata"]["namespace"] == namespace
        assert wanted.items() <= service["metadata"]["labels"].items()
        assert ports <= {p["name"] for p in service["spec"]["ports"]}


# ------------------------------------------------------------------------------ validation


def kubernetes_validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.fail(
            "kubernetes-validate is not installed: `pip install kubernetes-validate` "
            "(scripts/test.sh does it)",
            pytrace=False,
        )
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kubernetes_validate",
            "--strict",
            "-k",
            KUBERNETES_VERSION,
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def validate_crds(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    node = shutil.which("node")
    if node is None or not (NODE_MODELS / "@kubernetes-models" / "keda").is_dir():
        pytest.fail(
            "node and the CRD models are needed: `apt-get install nodejs npm` and `npm install "
            f"--prefix {NODE_MODELS.parent} @kubernetes-models/keda@2 "
            "@kubernetes-models/prometheus-operator@6` (scripts/test.sh does it)",
            pytrace=False,
        )
    done = subprocess.run(
        [node, str(DATA / "validate_crds.mjs"), str(NODE_MODELS)],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


def test_built_in_kinds_pass_the_kubernetes_schemas(tmp_path: Path) -> None:
    files = sorted(RECIPES.glob("*.yaml"))
    done = kubernetes_validate(*files)
    assert done.returncode == 0, done.stdout + done.stderr
    for path in files:
        for doc in documents(path.name):
            resource = f"{doc['kind'].lower()}/{doc['metadata']['name']}"
            if doc["kind"] in BUILT_IN:
                assert f"INFO {path} passed for resource {resource}" in done.stdout, resource
            else:
                assert doc["kind"] in CUSTOM, f"{path.name}: no validator for {doc['kind']}"
    # The strict schemas do reject: a misspelt field of the HPA's target.
    hpa = one("hpa.yaml", "HorizontalPodAutoscaler", "web")
    hpa["spec"]["metrics"][0]["external"]["target"]["averageUtilisation"] = 80
    broken = tmp_path / "hpa.yaml"
    broken.write_text(yaml.safe_dump(hpa))
    done = kubernetes_validate(broken)
    assert done.returncode == 1 and "did not validate" in done.stdout, done.stdout


def test_custom_resources_pass_their_crd_schemas() -> None:
    docs = [
        d for name in ("keda-scaledobject.yaml", "servicemonitor.yaml") for d in documents(name)
    ]
    assert {d["kind"] for d in docs} == CUSTOM
    assert [r["error"] for r in validate_crds(docs)] == [None] * len(docs)
    # The CRD schema does reject: KEDA's threshold is a string.
    broken = json.loads(json.dumps(docs[0]))
    broken["spec"]["triggers"][0]["metadata"]["threshold"] = 0.8
    (result,) = validate_crds([broken])
    assert "threshold must be string" in result["error"]


STRICT = json.loads((DATA / "keda-scaledobject-strict.schema.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        pytest.param(("metadata", "treshold"), "0.8", "Additional properties", id="misspelt-key"),
        pytest.param(("metricType",), "Utilisation", "is not one of", id="metric-type"),
        pytest.param(("metadata", "threshold"), "80%", "does not match", id="threshold"),
    ],
)
def test_scaled_objects_use_only_documented_fields(
    path: tuple[str, ...], value: str, message: str
) -> None:
    validator = jsonschema.Draft202012Validator(STRICT)
    for doc in documents("keda-scaledobject.yaml"):
        assert list(validator.iter_errors(doc)) == [], doc["metadata"]["name"]
        broken = json.loads(json.dumps(doc))
        target = broken["spec"]["triggers"][0]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        errors = [e.message for e in validator.iter_errors(broken)]
        assert any(message in e for e in errors), errors
