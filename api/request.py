"""Reading what a REST request sends, and refusing what the route or the database cannot take.

Every route reads its input through these, so that a hostile or broken request is a clear 4xx,
never a 500 from deep inside the JSON parser or the database driver:

- `json_body`: the JSON object body, at most `TUTOR_MAX_JSON_BYTES` (413 `body_too_large`,
  refused from `Content-Length` or as soon as the stream passes the limit, never read whole),
  nested at most `MAX_JSON_DEPTH` deep (400 `invalid_json`, found by `json_depth` before the
  parser recurses), strict JSON (no `NaN`/`Infinity`, no lone surrogates); `body_bytes` (the
  bounded read) and `parse_json` are its steps, for routes that validate their own way (pydantic
  models) or keep the raw bytes (Stripe's signed payload).
- `page_args` (`?limit=&before=`), `offset_arg` (`?offset=`): 400 `invalid_request`.
- `path_id` (an integer id in the path), `path_key` (a string id): 404, as for any missing row.
- `text_field`, `query_text`, `text_value`: strings bound for a column of `String(n)`/`Text`,
  refused when longer than the column, or holding a NUL (PostgreSQL refuses it) or an unpaired
  surrogate (no UTF-8 for it): 400 `invalid_request` naming the field. `text_problem` and
  `unstorable` say why, for routes that refuse with their own codes.

Each refusal is an `ApiError` with its code, naming the `field` (or query parameter) at fault
where there is one.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
from starlette.requests import Request

from .errors import ApiError
from .services import services

MAX_ID = 2**63 - 1  # ids are BIGINT: anything larger would fail in the database driver
MAX_JSON_DEPTH = 32  # no route takes more than a few levels; json.loads recurses per level

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # as int8: +1 opens, -1 closes
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


# --- pure checks -------------------------------------------------------------------------------

def json_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in JSON text, found without parsing it (brackets inside
    strings do not count): cheap enough to run before `json.loads`, whose recursion per level is
    what a deeply nested document attacks. Text that is not JSON gets some number; the parser
    refuses it afterwards."""
    steps = _STRING.sub(b"", raw).translate(_STEP, _NOT_BRACKET)
    if not steps:
        return 0
    return int(np.cumsum(np.frombuffer(steps, dtype=np.int8), dtype=np.int64).max())


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_json_text(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse (400 `invalid_json`) JSON text nested deeper than `max_depth`."""
    if json_depth(raw) > max_depth:
        raise ApiError(400, "invalid_json", f"the JSON body is nested more than {max_depth} "
                       "levels deep")


def parse_json(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value in `raw`, or a 400 `invalid_json` saying what is wrong with it."""
    check_json_text(raw, max_depth)
    try:
        value = json.loads(raw, parse_constant=_no_constant)
        if _SURROGATE_ESCAPE.search(raw):  # "\ud800" alone decodes to what UTF-8 cannot hold
            json.dumps(value, ensure_ascii=False).encode()
    except ValueError as exc:  # also Unicode{Decode,Encode}Error: not UTF-8, a lone surrogate
        raise ApiError(400, "invalid_json", f"the body is not JSON text: {exc}") from exc
    return value


def text_problem(value: str, max_chars: int) -> str | None:
    """Why `value` cannot be stored in a text column of `max_chars` characters, or None."""
    if len(value) > max_chars:
        return f"has {len(value)} characters; at most {max_chars}"
    return unstorable(value)


def unstorable(value: str) -> str | None:
    """Why no database column can hold `value` (any length), or None."""
    if "\x00" in value:
        return "contains a NUL character"
    if _SURROGATE.search(value):
        return "contains an unpaired surrogate (not valid Unicode text)"
    return None


def text_value(value: Any, name: str, max_chars: int, *, required: bool = True) -> str | None:
    """`value` (a JSON field or query parameter called `name`) stripped, as a non-empty string
    a `max_chars` column takes; None when it is absent (null, missing) and not `required`."""
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, "invalid_request", f"'{name}' must be a non-empty string",
                       field=name)
    value = value.strip()
    problem = text_problem(value, max_chars)
    if problem:
        raise ApiError(400, "invalid_request", f"'{name}' {problem}", field=name)
    return value


# --- reading the request -------------------------------------------------------------------------

async def body_bytes(request: Request, max_bytes: int) -> bytes:
    """The raw body, refused (413 `body_too_large`) once it is known to exceed `max_bytes`:
    from its Content-Length before reading anything, else as soon as the stream passes it."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise _too_large(max_bytes)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > max_bytes:
            raise _too_large(max_bytes)
    return bytes(data)


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the body is larger than {max_bytes} bytes, the "
                    "most this route reads")


def max_json_bytes(request: Request) -> int:
    return services(request).settings.max_json_bytes


async def json_body(request: Request, *, empty_ok: bool = False,
                    max_bytes: int | None = None) -> dict[str, Any]:
    """The request's JSON object body (`empty_ok`: no body is {}), bounded in size and depth."""
    raw = await body_bytes(request, max_bytes or max_json_bytes(request))
    if empty_ok and not raw.strip():
        return {}
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return body


def text_field(body: dict[str, Any], name: str, max_chars: int, *,
               required: bool = True) -> str | None:
    """`body[name]` checked by `text_value`."""
    return text_value(body.get(name), name, max_chars, required=required)


def query_text(request: Request, name: str, max_chars: int) -> str | None:
    """`?name=`, stripped; None when absent or blank; 400 when a column could not take it."""
    value = request.query_params.get(name)
    return text_value(value, name, max_chars) if value and value.strip() else None


def page_args(request: Request, *, max_page: int = 200) -> tuple[int, int | None]:
    """`?limit=&before=` of a keyset-paged list: the page size (1 to `max_page`, default 50) and
    the id to continue below; 400 when they are not integers or `before` is not an id."""
    try:
        limit = min(max_page, max(1, int(request.query_params.get("limit", 50))))
        before = request.query_params.get("before")
        below = int(before) if before else None
    except ValueError as exc:
        raise ApiError(400, "invalid_request", "limit and before must be integers") from exc
    if below is not None and not 0 < below <= MAX_ID:
        raise ApiError(400, "invalid_request", f"before must be an id (1 to {MAX_ID})",
                       field="before")
    return limit, below


def offset_arg(request: Request) -> int:
    """`?offset=`: a whole number of rows (default 0), 400 otherwise."""
    offset = request.query_params.get("offset", "0") or "0"
    if not (offset.isascii() and offset.isdigit()) or int(offset) > MAX_ID:  # no sign, no "²"
        raise ApiError(400, "invalid_request", "offset must be a whole number of rows",
                       field="offset")
    return int(offset)


def path_id(request: Request, name: str, what: str) -> int:
    """The integer id `{name}` of the path; 404 (no such `what`) when it cannot be one."""
    raw = str(request.path_params[name])
    if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) <= MAX_ID:
        raise ApiError(404, "not_found", f"no such {what}")
    return int(raw)


def path_key(request: Request, name: str, what: str, max_chars: int = 32) -> str:
    """The string id `{name}` of the path (ids are String(32)); 404 when it cannot be one."""
    raw = request.path_params[name]
    if text_problem(raw, max_chars):
        raise ApiError(404, "not_found", f"no such {what}")
    return raw
