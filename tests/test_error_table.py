"""One shape for every REST refusal, and docs/errors.md as the one table of their codes.

The table cannot drift: every code the source raises (an `ApiError`, a `QuotaError`, a Stripe
webhook rejection, Starlette's own refusals) must have its row, and every row must still be
raised somewhere (as a literal in the source: codes that come from a provider or the document
reader are passed through by the routes).
"""

from __future__ import annotations

import re

import httpx

from api.errors import STARLETTE_CODES, ApiError, error_response
from billing.service import quota_exceeded
from tests.conftest import ROOT

# Every package of the server (the tests, benchmarks and browser client raise nothing).
PACKAGES = sorted(init.parent.name for init in ROOT.glob("*/__init__.py")
                  if init.parent.name not in {"tests", "bench", "web"})
RAISED = re.compile(r'\b(?:ApiError|QuotaError|WebhookRejected)\(\s*(?:\d+,\s*)?"([a-z_]+)"')
ROW = re.compile(r"^\| `([a-z_]+)` \|", re.MULTILINE)


def source() -> str:
    return "\n".join(path.read_text() for package in PACKAGES
                     for path in sorted((ROOT / package).rglob("*.py")))


def table() -> list[str]:
    return ROW.findall((ROOT / "docs" / "errors.md").read_text())


def test_every_code_raised_has_a_row_in_the_table() -> None:
    raised = set(RAISED.findall(source())) | set(STARLETTE_CODES.values()) | {"http_error"}
    assert len(raised) > 30  # the pattern still finds the raises
    assert sorted(raised - set(table())) == []


def test_every_row_is_still_raised_somewhere() -> None:
    text = source()
    rows = table()
    assert len(rows) == len(set(rows)), "a code has two rows"
    assert [code for code in rows if f'"{code}"' not in text] == []


def test_the_body_has_code_message_and_field_only_when_one_is_at_fault() -> None:
    with_field = error_response(ApiError(400, "invalid_request", "'k' must be…", field="k"))
    without = error_response(ApiError(404, "not_found", "no such note"))
    assert with_field.body == (b'{"error":{"code":"invalid_request","message":"\'k\' must be\xe2'
                               b'\x80\xa6","field":"k"}}')
    assert without.body == b'{"error":{"code":"not_found","message":"no such note"}}'
    assert error_response(ApiError(401, "unauthorized", "sign in required")
                          ).headers["www-authenticate"] == "Bearer"
    spent = error_response(quota_exceeded("no minutes left", retry_after_s=60))
    assert spent.status_code == 402 and spent.headers["retry-after"] == "60"


async def test_routing_and_readers_refuse_in_the_same_shape(server: str) -> None:
    async with httpx.AsyncClient(base_url=f"http://{server}") as client:
        missing = await client.get("/api/no-such-route")
        wrong_method = await client.delete("/healthz")
        paging = await client.get("/api/notes", params={"before": "0"})
        chat = await client.post("/api/ai/chat", json={"message": "x", "history": "nope"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert "GET" in wrong_method.headers["allow"]
    assert paging.status_code == 400
    assert paging.json()["error"] | {"message": ""} == {"code": "invalid_request", "message": "",
                                                         "field": "before"}
    assert chat.status_code == 400 and chat.json()["error"]["field"] == "history"
