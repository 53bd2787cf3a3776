"""PromQL checks shared by the dashboard and alert tests: the metric names, label matchers and
grouping labels an expression uses, and the live `/metrics` of a running app (after one sample of
every metric) to check them against."""

from __future__ import annotations

import re
from typing import Any, Iterable, Iterator

import httpx
from prometheus_client.parser import text_string_to_metric_families

from server.metrics import STAGES

TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series

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


async def exported_metrics(app: Any, address: str) -> dict[str, set[str]]:
    """Sample name → its label names, as `GET /metrics` of the running `app` (at `address`)
    answers after one sample of every metric and one message in the email outbox."""
    from store import queries as store_queries

    touch_every_metric(app.state.services.metrics)
    async with app.state.services.db.session() as s, s.begin():  # so the outbox gauge has a series
        await store_queries.enqueue_email(s, recipient="s@example.com", template="welcome",
                                          payload={"name": "S"}, transactional=True)
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://{address}/metrics")
    assert response.status_code == 200
    exported: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    assert "tutor_stage_seconds_bucket" in exported  # the scrape is the one we think
    return exported


def query_problems(queries: Iterable[tuple[str, str]], exported: dict[str, set[str]], *,
                   synthetic: dict[str, set[str]] | None = None) -> list[str]:
    """What is wrong with each (where, PromQL): no metric at all, a metric or a label that
    `exported` lacks, a stage that server.metrics.STAGES does not name, a grouping label that none
    of its metrics has. `synthetic`: series Prometheus makes itself (`up`), with their labels."""
    known_series = {**exported, **(synthetic or {})}
    problems = []
    for where, expr in queries:
        names = metric_names(expr)
        if not names:
            problems.append(f"{where}: no metric in {expr!r}")
        for name in sorted(names - known_series.keys()):
            problems.append(f"{where}: {name} is not in /metrics")
        for name, matchers in selectors(expr):
            known = known_series.get(name, set()) | TARGET_LABELS
            for label, (op, value) in matchers.items():
                if label not in known:
                    problems.append(f"{where}: {name} has no label {label!r}")
                if label == "stage" and op == "=" and value not in STAGES.values():
                    problems.append(f"{where}: no stage {value!r} (server.metrics.STAGES)")
        labels = set().union(*(known_series.get(n, set()) for n in names)) | TARGET_LABELS
        for label in sorted(grouping_labels(expr) - labels):
            problems.append(f"{where}: groups by {label!r}, which none of {sorted(names)} has")
    return problems
