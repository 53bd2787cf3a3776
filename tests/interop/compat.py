"""The compatibility table of docs/protocol.md §10, written from the interop runs' reports.

`python -m tests.interop.compat` reads `tests/interop/results/*.json` (written by each interop
test, passed or failed) and rewrites the table between the `compat:start` / `compat:end` markers;
`--check` only says whether the table lists every client that has a report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tests.interop.conftest import REQUIRED_CHECKS, RESULTS

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
START, END = "<!-- compat:start -->", "<!-- compat:end -->"


def reports() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]


def table(runs: list[dict]) -> str:
    lines = ["| Client | Version | What was run | Result |", "| --- | --- | --- | --- |"]
    for run in runs:
        checks = run.get("checks", {})
        passed = [name for name in checks if checks[name].get("ok")]
        failed = [name for name in REQUIRED_CHECKS if not checks.get(name, {}).get("ok")]
        errors = len(run.get("errors") or [])
        if not failed and not errors:
            result = f"**passed**: {len(passed)} checks, 0 `error` events"
        else:
            result = "failed: " + ", ".join(failed) + (f"; {errors} `error` events" if errors else "")
        ran = ", ".join(f"`{name}`" for name in checks) or "nothing"
        lines.append(f"| {run['client']} | {run.get('version', '?')} | {ran} | {result} |")
    return "\n".join(lines)


def write(doc: Path = DOC) -> None:
    text = doc.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{START}\n{table(reports())}\n{END}{tail}")


def section(doc: Path = DOC) -> str:
    """The table as the docs have it (between the markers)."""
    return doc.read_text().split(START, 1)[1].split(END, 1)[0]


def missing(doc: Path = DOC) -> list[str]:
    """Clients with a report that the table in the docs does not list."""
    table_text = section(doc)
    return [run["client"] for run in reports() if f"| {run['client']} |" not in table_text]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if args.check:
        absent = missing()
        print("missing from docs/protocol.md:", absent or "none")
        sys.exit(1 if absent else 0)
    write()
    print(table(reports()))


if __name__ == "__main__":
    main()
