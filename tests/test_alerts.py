"""The Prometheus alerting rules in deploy/prometheus/alerts.yml: a valid rule file (checked by
`promtool check rules` too), whose every metric, label and label value is one the server really
exports (against a live app's `/metrics`, as tests/test_dashboard.py does for the dashboard),
whose runbook links point at sections of docs/operations.md, and whose alerts behave: the promtool
unit tests in deploy/prometheus/alerts.test.yml make each one fire on a bad series and stay quiet
on a good one.

promtool comes from Debian's `prometheus` package (`make test` installs it when missing). Without
it the promtool tests skip, and fail under CI=true."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import make_settings
from tests.promql import (TARGET_LABELS, balanced, exported_metrics, grouping_labels, metric_names,
                          query_problems, selectors)

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
PROTOCOL = ROOT / "docs" / "protocol.md"

SEVERITIES = {"warning", "critical"}
SYNTHETIC = {"up": set()}  # series Prometheus makes itself for every target: not in /metrics
# label values the server really uses, where a rule matches on one
TURN_STATUSES = {"completed", "cancelled", "failed"}  # server.voice, docs/operations.md
OUTBOX_STATUSES = {"pending", "sending", "sent", "failed", "suppressed", "unknown"}  # notify/
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_PROMTOOL_HELP = "make test installs it: Debian's prometheus package"


def load() -> dict[str, Any]:
    return yaml.safe_load(RULES.read_text())


def rules() -> list[dict[str, Any]]:
    return [rule for group in load()["groups"] for rule in group["rules"]]


def alert_queries() -> list[tuple[str, str]]:
    return [(f"alert {r['alert']}", r["expr"]) for r in rules()]


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in markdown.splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            text = heading.group(1).strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return out


def protocol_error_codes() -> set[str]:
    """Every `code` in docs/protocol.md §6 (the authority on error codes)."""
    section = PROTOCOL.read_text().split("## 6. Error codes", 1)[1].split("\n## ", 1)[0]
    codes = set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))
    assert {"internal_error", "provider_error", "invalid_json"} <= codes, "§6 table not found"
    return codes


def alternatives(op: str, value: str) -> list[str]:
    """The literal values an `=`/`=~` matcher accepts; rules keep regexes to plain alternations
    of whole values, so that each can be checked."""
    if op in ("=", "!="):
        return [value]
    assert re.fullmatch(r"[\w|]+", value), f"use a plain alternation of values, not {value!r}"
    return value.split("|")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = f"promtool not found ({_PROMTOOL_HELP})"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def test_the_rule_file_has_the_structure_prometheus_reads():
    document = load()
    assert set(document) == {"groups"}
    groups = document["groups"]
    names = [g["name"] for g in groups]
    assert len(names) == len(set(names)), names
    alerts = []
    links = anchors(OPERATIONS.read_text())
    for group in groups:
        assert set(group) <= {"name", "interval", "rules", "limit"}, group["name"]
        assert group["rules"], f"group {group['name']} has no rules"
        for rule in group["rules"]:
            name = rule.get("alert")
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels",
                                 "annotations"}, name
            assert isinstance(name, str) and re.fullmatch(r"Tutor[A-Z][A-Za-z]+", name), name
            alerts.append(name)
            expr = rule["expr"]
            assert isinstance(expr, str) and expr.strip() and balanced(expr), name
            assert _DURATION.match(str(rule.get("for", ""))), f"{name}: `for` missing or invalid"
            assert rule["labels"]["severity"] in SEVERITIES, name
            notes = rule["annotations"]
            assert {"summary", "description", "runbook_url"} <= set(notes), name
            for key, text in notes.items():
                assert text.count("{{") == text.count("}}"), (name, key)
                kept = grouping_labels(expr) if re.search(r"\bby\s*\(", expr) else TARGET_LABELS
                for label in re.findall(r"\$labels\.(\w+)", text):
                    assert label in kept, f"{name}: {key} uses $labels.{label}, which is gone"
            page, _, anchor = notes["runbook_url"].partition("#")
            assert page == "docs/operations.md", f"{name}: runbook outside docs/operations.md"
            assert anchor in links, f"{name}: docs/operations.md has no section #{anchor}"
    assert len(alerts) == len(set(alerts)), alerts


def test_the_rules_cover_what_the_issue_asks_for():
    used: dict[str, list[dict[str, tuple[str, str]]]] = {}
    for _, expr in alert_queries():
        for name in metric_names(expr):
            used.setdefault(name, [])
        for name, matchers in selectors(expr):
            used.setdefault(name, []).append(matchers)
    exprs = {r["alert"]: r["expr"] for r in rules()}

    # error rate: failed answers over all answers
    assert {"status": ("=", "failed")} in used["tutor_turns_total"]
    # p95 of end of speech → first delta
    assert any(e.lstrip().startswith("histogram_quantile(0.95,")
               and 'stage="end_of_speech_to_first_delta"' in e for e in exprs.values())
    # provider failures (every provider and code: the counter is not filtered), a provider
    # missing, and the server's own failures
    assert "tutor_provider_failures_total" in used
    assert "by (job, provider, code)" in exprs["TutorProviderFailures"]
    codes = {v for m in used["tutor_errors_total"] if "code" in m
             for v in alternatives(*m["code"])}
    assert {"provider_not_configured", "internal_error"} <= codes
    # the outbox backlog, the quota store, the processes themselves
    assert {"status": ("=", "pending")} in used["tutor_email_outbox"]
    assert "tutor_quota_store_failures_total" in used
    # rows the database refused for good (dead letters), and a spool that does not drain
    assert {"tutor_spool_dead_letters", "tutor_spool_pending"} <= set(used)
    assert "up" in used and "tutor_sessions_connected" in used


async def test_every_metric_label_and_value_in_the_rules_is_exported(fake, start_server):
    address = await start_server(make_settings(fake, email_worker=False))
    exported = await exported_metrics(start_server.apps[-1], address)  # sample name → labels
    problems = query_problems(alert_queries(), exported, synthetic=SYNTHETIC)

    values = {("tutor_errors_total", "code"): protocol_error_codes(),
              ("tutor_turns_total", "status"): TURN_STATUSES,
              ("tutor_email_outbox", "status"): OUTBOX_STATUSES}
    for where, expr in alert_queries():
        for name, matchers in selectors(expr):
            for label, (op, value) in matchers.items():
                known = values.get((name, label))
                if known is None:
                    continue
                for v in alternatives(op, value):
                    if v not in known:
                        problems.append(f"{where}: {name} never has {label}={v!r}")
    assert not problems, "\n".join(problems)


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_is_quiet():
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {r["alert"] for r in rules()}
    assert alerts - fires == set(), "no unit test makes these fire"
    assert alerts - quiet == set(), "no unit test shows these quiet"
    assert (fires | quiet) - alerts == set(), "unit tests of alerts that do not exist"


def test_promtool_accepts_the_rules():
    result = subprocess.run([promtool(), "check", "rules", str(RULES)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout + result.stderr


def test_promtool_unit_tests_pass():
    result = subprocess.run([promtool(), "test", "rules", RULE_TESTS.name],
                            cwd=RULE_TESTS.parent, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
