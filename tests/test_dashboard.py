"""The Grafana dashboard in docs/grafana/ is importable and queries only metrics the server
really exports: every metric name in its PromQL is checked against the `/metrics` output of a
running app (after one sample of every metric, so that labelled metrics and histogram buckets
appear), and so is every label it filters or groups by."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import httpx
from prometheus_client.parser import text_string_to_metric_families

from server.metrics import STAGES
from tests.conftest import make_settings

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana" / "tutor-dashboard.json"
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
DATASOURCE = "${datasource}"

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w:$.])([a-zA-Z_:][\w:]*)(\s*\()?")
_SELECTOR = re.compile(r"(?<![\w:$.])([a-zA-Z_:][\w:]*)\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
             "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions or
    aggregations (followed by `(`), keywords, label names (in `{...}` or `by (...)`), strings,
    numbers or range durations (`[$__rate_interval]`)."""
    bare = _STRING.sub('""', expr)
    bare = _MATCHERS.sub(" ", bare)
    bare = _RANGE.sub(" ", bare)
    bare = _GROUPING.sub(" ", bare)
    return {name for name, call in _IDENT.findall(bare)
            if not call and name.lower() not in _KEYWORDS}


def selectors(expr: str) -> Iterator[tuple[str, dict[str, tuple[str, str]]]]:
    """(metric, {label: (operator, value)}) for each `metric{...}` in the expression."""
    for name, body in _SELECTOR.findall(expr):
        yield name, {label: (op, value) for label, op, value in _MATCHER.findall(body)}


def grouping_labels(expr: str) -> set[str]:
    return {label.strip() for group in _GROUPING.findall(_STRING.sub('""', expr))
            for label in group.split(",") if label.strip()}


def balanced(expr: str) -> bool:
    stack, pairs = [], {")": "(", "]": "[", "}": "{"}
    for ch in _STRING.sub('""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack


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
                 "tutor_quota_store_failures_total", "tutor_email_outbox"):
        assert name in used, f"no panel shows {name}"
    exprs = [expr for _, expr in queries(load())]
    e2e = [e for e in exprs if 'stage="end_of_speech_to_first_delta"' in e
           and e.startswith("histogram_quantile(")]
    assert {re.match(r"histogram_quantile\(([\d.]+)", e).group(1) for e in e2e} >= \
        {"0.5", "0.95", "0.99"}
    assert any("histogram_quantile(0.95" in e and "by (le, stage)" in e for e in exprs)


async def test_every_metric_and_label_in_the_dashboard_is_exported(fake, start_server):
    from store import queries as store_queries

    address = await start_server(make_settings(fake, email_worker=False))
    app = start_server.apps[-1]
    touch_every_metric(app.state.metrics)
    async with app.state.db.session() as s, s.begin():  # so the outbox gauge has a series
        await store_queries.enqueue_email(s, recipient="s@example.com", template="welcome",
                                          payload={"name": "S"}, transactional=True)
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://{address}/metrics")
    assert response.status_code == 200
    exported: dict[str, set[str]] = {}  # sample name → its label names
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    assert "tutor_stage_seconds_bucket" in exported  # the scrape is the one we think

    problems = []
    for where, expr in queries(load()):
        names = metric_names(expr)
        if not names:
            problems.append(f"{where}: no metric in {expr!r}")
        for name in sorted(names - exported.keys()):
            problems.append(f"{where}: {name} is not in /metrics")
        for name, matchers in selectors(expr):
            known = exported.get(name, set()) | TARGET_LABELS
            for label, (op, value) in matchers.items():
                if label not in known:
                    problems.append(f"{where}: {name} has no label {label!r}")
                if label == "stage" and op == "=" and value not in STAGES.values():
                    problems.append(f"{where}: no stage {value!r} (server.metrics.STAGES)")
        labels = set().union(*(exported.get(n, set()) for n in names)) | TARGET_LABELS
        for label in sorted(grouping_labels(expr) - labels):
            problems.append(f"{where}: groups by {label!r}, which none of {sorted(names)} has")
    assert not problems, "\n".join(problems)


def touch_every_metric(metrics: Any) -> None:
    """One sample on every metric of the app's registry (labelled ones with placeholder label
    values; the turn stages with their real names), so that each appears in /metrics."""
    from prometheus_client.metrics import MetricWrapperBase

    metrics.observe_turn("voice", "completed", {key: 100.0 for key in STAGES})
    found = [m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
    assert found, "server.metrics.Metrics no longer keeps its metrics as attributes"
    for metric in found:
        labelnames = getattr(metric, "_labelnames", ())
        child = metric.labels(*["test"] * len(labelnames)) if labelnames else metric
        if hasattr(child, "observe"):
            child.observe(0.001)
        else:
            child.inc()

