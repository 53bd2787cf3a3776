"""docs/protocol.md §10 lists every client the interop tests run, and says for each what ran."""

from __future__ import annotations

from tests.interop.compat import section
from tests.interop.conftest import CLIENTS


def test_the_compatibility_table_lists_every_client_tested():
    rows = [line for line in section().splitlines() if line.startswith("| ") and "---" not in line]
    listed = {row.split("|")[1].strip() for row in rows[1:]}
    assert listed == set(CLIENTS)
    for row in rows[1:]:
        client, version, ran, result = (cell.strip() for cell in row.strip("|").split("|"))
        assert version and version != "?", row
        assert "`session_setup`" in ran and "`function_call`" in ran, row
        assert result.startswith(("**passed**", "failed")), row
