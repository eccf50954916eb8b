"""deploy/grafana/relay.json and deploy/prometheus/alerts.yml: every metric they query is one
relay exports, and the rules file is Prometheus' rule format (a dashboard or an alert over a
metric that does not exist shows nothing, and says nothing about it)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from relay.delivery.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "relay.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_OWN = {"up"}
"""Series Prometheus makes itself for every scrape target."""
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def exported(registry: CollectorRegistry) -> set[str]:
    """Every series name the registry exposes, whether or not a sample was taken yet."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def metric_names(expr: str) -> set[str]:
    """The relay series and Prometheus' own that a PromQL expression reads."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", without_strings))
    return {w for w in words if w.startswith("relay_") or w in PROMETHEUS_OWN}


def unknown(exprs: list[str], names: set[str]) -> list[tuple[str, str]]:
    """(expression, name) for each metric an expression names that is not exported."""
    return [
        (expr, name)
        for expr in exprs
        for name in sorted(metric_names(expr))
        if name not in names and name not in PROMETHEUS_OWN
    ]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v.get("type") == "query"]
    return exprs


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    names = exported(Metrics().registry)
    assert "relay_webhook_pending" in names and "relay_deliveries_total" in names
    exprs = dashboard_exprs()
    assert len(exprs) >= 10 and all(metric_names(expr) for expr in exprs)
    assert unknown(exprs, names) == []
    # The check catches a name relay does not export (a typo, a metric renamed).
    assert unknown(["rate(relay_deliveries{webhook='x'}[5m])"], names) == [
        ("rate(relay_deliveries{webhook='x'}[5m])", "relay_deliveries")
    ]
    queried = {name for expr in exprs for name in metric_names(expr)}
    for wanted in (
        "relay_deliveries_total",  # throughput and failures
        "relay_attempt_duration_seconds_bucket",  # latency
        "relay_webhook_oldest_pending_seconds",  # age per webhook
        "relay_webhook_state",
    ):
        assert wanted in queried


def test_the_alerting_rules_are_prometheus_rule_format_over_relay_metrics() -> None:
    document = yaml.safe_load(ALERTS.read_text())
    assert set(document) == {"groups"}
    names = exported(Metrics().registry)
    alerts: dict[str, dict[str, Any]] = {}
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"} and group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
            assert isinstance(rule["alert"], str) and re.fullmatch(r"[A-Za-z_]\w*", rule["alert"])
            assert isinstance(rule["expr"], str) and metric_names(rule["expr"]), rule
            assert re.fullmatch(r"(\d+[smhdwy])+", str(rule["for"])), rule
            assert all(isinstance(v, str) for v in rule["labels"].values())
            assert rule["labels"]["severity"] in ("critical", "warning")
            assert {"summary", "description"} <= set(rule["annotations"])
            assert unknown([rule["expr"]], names) == [], rule
            alerts[rule["alert"]] = rule
    assert "up" in metric_names(alerts["RelayDown"]["expr"])
    assert 'state="dead"' in alerts["RelayWebhookDead"]["expr"]
    assert "relay_webhook_oldest_pending_seconds" in alerts["RelayBacklogOld"]["expr"]
