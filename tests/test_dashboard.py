"""The Grafana dashboard in docs/grafana/ is importable and queries only metrics the server
really exports: every metric name in its PromQL is checked against the `/metrics` output of a
running app (after one sample of every metric, so that labelled metrics and histogram buckets
appear), and so is every label it filters or groups by."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.conftest import make_settings
from tests.promql import (balanced, exported_metrics, grouping_labels, metric_names,
                          query_problems, selectors)

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana" / "tutor-dashboard.json"
DATASOURCE = "${datasource}"


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return out


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    out = [(f"panel {p['id']} {p['title']!r} {t['refId']}", t["expr"])
           for p in panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            inner = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
            assert inner, f"variable {var['name']}: expected label_values(selector, label)"
            out.append((f"variable {var['name']}", inner.group(1)))
    return out


def test_the_metric_extraction_finds_names_and_only_names():
    expr = ('histogram_quantile(0.95, sum by (le, stage) (rate(tutor_stage_seconds_bucket'
            '{job=~"$job", stage="end_of_speech_to_first_delta"}[$__rate_interval]))) / '
            'on (instance) group_left sum(tutor_sessions_connected offset 5m) > bool 0')
    assert metric_names(expr) == {"tutor_stage_seconds_bucket", "tutor_sessions_connected"}
    assert grouping_labels(expr) == {"le", "stage", "instance"}
    assert dict(selectors(expr))["tutor_stage_seconds_bucket"]["stage"] == \
        ("=", "end_of_speech_to_first_delta")
    assert metric_names("sum(rate(tutor_sesions_total[5m]))") == {"tutor_sesions_total"}
    assert balanced(expr) and not balanced("sum(rate(x[5m])")


def test_the_dashboard_is_an_importable_grafana_dashboard():
    d = load()
    assert d["title"] and d["uid"] and len(d["uid"]) <= 40
    assert 36 <= d["schemaVersion"] <= 41
    assert d.get("id") is None  # Grafana assigns its own on import
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["datasource"]["uid"] == DATASOURCE

    all_panels = panels(d)
    ids = [p["id"] for p in all_panels]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids)), ids
    boxes = []
    for p in all_panels:
        assert p["type"] and p["title"], p
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        boxes.append((p["title"], g))
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, p["title"]
        assert p["targets"], f"panel {p['title']!r} has no queries"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and balanced(t["expr"]), (p["title"], t["expr"])
            assert t["datasource"]["uid"] == DATASOURCE
    for i, (title_a, a) in enumerate(boxes):  # no two panels overlap
        for title_b, b in boxes[i + 1:]:
            apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
                     or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"])
            assert apart, f"{title_a!r} overlaps {title_b!r}"


def test_the_dashboard_shows_what_the_issue_asks_for():
    used = {name for _, expr in queries(load()) for name in metric_names(expr)}
    for name in ("tutor_sessions_connected", "tutor_sessions_total", "tutor_turns_total",
                 "tutor_stage_seconds_bucket", "tutor_vad_frame_seconds_bucket",
                 "tutor_endpoint_decision_seconds_bucket", "tutor_speculations_total",
                 "tutor_speculative_calls_total", "tutor_barge_ins_total", "tutor_errors_total",
                 "tutor_quota_store_failures_total", "tutor_email_outbox",
                 "tutor_event_loop_lag_seconds_bucket", "tutor_session_cpu_seconds_total",
                 "tutor_session_audio_seconds_total"):
        assert name in used, f"no panel shows {name}"
    exprs = [expr for _, expr in queries(load())]
    e2e = [e for e in exprs if 'stage="end_of_speech_to_first_delta"' in e
           and e.startswith("histogram_quantile(")]
    assert {re.match(r"histogram_quantile\(([\d.]+)", e).group(1) for e in e2e} >= \
        {"0.5", "0.95", "0.99"}
    assert any("histogram_quantile(0.95" in e and "by (le, stage)" in e for e in exprs)


async def test_every_metric_and_label_in_the_dashboard_is_exported(fake, start_server):
    address = await start_server(make_settings(fake, email_worker=False))
    exported = await exported_metrics(start_server.apps[-1], address)  # sample name → labels
    problems = query_problems(queries(load()), exported)
    assert not problems, "\n".join(problems)
