"""Every metric the Grafana dashboard and the alert rules read exists in a live gateway's
/metrics, and so does every label they match, group or show, so neither can silently rot.

A gateway runs with the cache and a budget on; a few requests (a cache miss and hit, a
stored prompt, an error) make the labelled series exist before /metrics is scraped.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import FakeHandle, make_gateway

from gateway.testing.langfuse_receiver import LangfuseReceiver
from support.gateway_proc import ADMIN_KEY, GatewayProcess, default_models
from support.promql import grouping_labels, legend_labels, metric_names, selector_labels

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "llm-gateway.json"
RULES = REPO / "deploy" / "prometheus" / "alerts.yaml"
#: Series Prometheus makes itself, not the gateway; and the labels it adds to every series.
PROMETHEUS_OWN = {"up"}
TARGET_LABELS = {"instance", "job"}


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(where, expr, legend) for every panel target and template variable."""
    dashboard = json.loads(DASHBOARD.read_text())
    found: list[tuple[str, str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                found.append((f"panel {panel['title']!r}", target["expr"], target.get("legendFormat", "")))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append((f"variable {variable['name']}", query["query"] if isinstance(query, dict) else query, ""))
    return found


def rule_queries() -> list[tuple[str, str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    found = []
    for rule in (r for g in groups for r in g["rules"]):
        text = " ".join(str(v) for v in rule.get("annotations", {}).values())
        found.append((f"alert {rule['alert']}", rule["expr"], text))
    return found


@pytest.fixture(scope="module")
def live_metrics(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeHandle) -> Iterator[str]:
    root = tmp_path_factory.mktemp("dashboard-gateway")
    teams = {"teams": {"alpha": {"models": ["*"], "prompts": ["*"], "cache": {"enabled": True},
                                 "budget": {"limit_usd": 1000, "period": "daily", "hard": True}}}}
    # Tracing to a local Langfuse stand-in, so the tracing series are exported too.
    receiver = LangfuseReceiver().start()
    tracing = {"host": receiver.url, "public_key": receiver.public_key, "secret_key": receiver.secret_key,
               "flush_interval_ms": 20, "timeout_s": 0.5, "shutdown_timeout_s": 1.0}
    proc: GatewayProcess = make_gateway(root, fake_upstream.url, f"sqlite:///{root / 'gateway.db'}",
                                        models=default_models(fake_upstream.url), teams=teams,
                                        extra={"tracing": tracing})
    prompt = {"name": "ops-check", "type": "chat", "model": "mock", "messages": [{"role": "user", "content": "hi"}]}
    proc.start()
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    try:
        # Over the admin API rather than the CLI: a CLI process costs seconds to start.
        with httpx.Client(base_url=proc.url, timeout=30) as http:
            created = http.post("/admin/keys", headers=admin, json={"team": "alpha"})
            assert created.status_code == 201, created.text
            pushed = http.post("/admin/prompts", headers=admin,
                               json={"source": yaml.safe_dump(prompt), "message": "for the dashboard test"})
            assert pushed.status_code == 201, pushed.text
            headers = {"authorization": f"Bearer {created.json()['key']}"}

            def ask(model: str) -> int:
                body = {"model": model, "temperature": 0, "messages": [{"role": "user", "content": "ping"}]}
                return http.post("/v1/chat/completions", headers=headers, json=body).status_code

            for model in ("mock", "mock", "fake-chat", "dead-chat"):
                ask(model)
            deadline = time.monotonic() + 10  # replicas see a new label within a poll interval
            while ask("prompt:ops-check@latest") != 200:
                assert time.monotonic() < deadline, "the pushed prompt never resolved"
                time.sleep(0.1)
            text = http.get("/metrics").text
        yield text
    finally:
        proc.stop()
        receiver.stop()


def exported(text: str) -> tuple[set[str], dict[str, set[str]]]:
    """Every name a query may use (histogram and counter suffixes included), and per sample
    name the label names its samples carry."""
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        declared = re.match(r"# TYPE (\S+) (\S+)", line)
        if declared:
            name, kind = declared.groups()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            if kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
        elif line and not line.startswith("#"):
            sample = re.match(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s", line)
            assert sample, line
            names.add(sample.group(1))
            found = set(re.findall(r'([a-zA-Z_]\w*)="', sample.group(2) or ""))
            labels.setdefault(sample.group(1), set()).update(found)
    return names, labels


def test_the_queries_are_found() -> None:
    # The extraction itself: every query names at least one metric, and all of them are seen.
    queries = dashboard_queries() + rule_queries()
    assert len(dashboard_queries()) >= 40 and len(rule_queries()) >= 14
    for where, expr, _ in queries:
        assert metric_names(expr), f"{where}: no metric found in {expr!r}"


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_metric_and_label_is_exported(live_metrics: str, source: str) -> None:
    names, labels = exported(live_metrics)
    queries = dashboard_queries() if source == "dashboard" else rule_queries()
    problems = []
    for where, expr, legend in queries:
        used = metric_names(expr)
        for name in used - PROMETHEUS_OWN:
            if name not in names:
                problems.append(f"{where}: {name} is not in /metrics")
        # Labels: those matched in selectors must be on that metric's samples (when it has
        # any yet), and those grouped by or shown in a legend on one of the query's metrics.
        for name, matched in selector_labels(expr).items():
            if name in labels and name not in PROMETHEUS_OWN:
                missing = matched - labels[name] - TARGET_LABELS
                if missing:
                    problems.append(f"{where}: {name} has no label {sorted(missing)}")
        known = set(TARGET_LABELS) | {"le"}
        for name in used:
            known |= labels.get(name, set())
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            known |= {label for sample, found in labels.items() if sample.startswith(base) for label in found}
        if all(name in labels or name in PROMETHEUS_OWN for name in used):
            for label in grouping_labels(expr) | legend_labels(legend):
                if label not in known:
                    problems.append(f"{where}: no metric it reads has the label {label!r}")
    assert problems == []


def test_the_new_prompt_series_counts_by_version(live_metrics: str) -> None:
    assert 'gateway_prompt_requests_total{label="latest",prompt="ops-check",version="1"} 1.0' in live_metrics


def test_the_budget_use_gauge_reports_the_teams_spend(live_metrics: str) -> None:
    used = re.search(r'^gateway_budget_used_ratio\{scope="team",team="alpha"\} (\S+)$', live_metrics, re.M)
    assert used, "the team's settled spend is reported"
    assert 0 < float(used.group(1)) < 0.001, "a few requests' cost against a $1000 limit"


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        taken = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & taken, f"{panel['title']!r} overlaps another panel"
        cells |= taken
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    alert_names = {rule["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for rule in g["rules"]}
    for panel in panels:
        for named in re.findall(r"Alerts?: ([\w, ]+)\.", panel.get("description", "")):
            assert {n.strip() for n in named.split(",")} <= alert_names, panel["title"]
    assert {"team", "model", "deployment"} <= {v["name"] for v in dashboard["templating"]["list"]}


def test_every_exported_metric_is_documented(live_metrics: str) -> None:
    docs = (REPO / "docs" / "operations.md").read_text()
    # prometheus-client also exports each counter's start time as NAME_created: not documented.
    families = {name for name in re.findall(r"^# TYPE (gateway_\w+) ", live_metrics, re.M)
                if not name.endswith("_created")}
    assert len(families) >= 25
    undocumented = sorted(name for name in families if f"`{name}`" not in docs and f"`{name}_total`" not in docs)
    assert undocumented == []
