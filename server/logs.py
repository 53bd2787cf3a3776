"""Logging: structured (structlog), JSON lines in production, readable on a terminal.

Every record, from our modules, uvicorn or a library, goes through one formatter that adds the
time (UTC), level, logger and the context bound for the current connection: a voice session binds
`session_id` and `user_id`, so each line it causes carries them (spawned tasks inherit the
context). Audio and transcripts are never logged at info level: a turn is logged with its ids,
status and latencies only.

Credentials never reach a log line: `Scrub`, a filter on that one handler (and on uvicorn's
access and error loggers, for programs that run the app under their own uvicorn logging),
rewrites every record's message and arguments with `scrub`: the values of secret-bearing query
parameters (`?ticket=`, `?token=`, `access_token`, `?resume=`, OAuth's `code` and `state`, …),
`Bearer …` credentials, JWTs and our API tokens become `[redacted]`.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

SHARED = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


REDACTED = "[redacted]"
_SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:[\w.\-]*(?:token|ticket|secret|password|passwd|key)|resume|code|state|"
    r"sig|signature)=)[^&\s\"'#]*")
_SECRETS = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[\w\-.~+/]+=*"), rf"\1 {REDACTED}"),
    (re.compile(r"\beyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*"), REDACTED),  # a JWT (header "{...")
    (re.compile(r"\btt_[\w-]{16,}"), REDACTED),  # our API tokens (store.queries)
    (re.compile(r"(openai-insecure-api-key\.)[^\s,\"']+"), rf"\1{REDACTED}"),
]


def scrub(text: str) -> str:
    """`text` with every credential in it replaced by [redacted]."""
    text = _SECRET_PARAM.sub(rf"\1{REDACTED}", text)
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrubbed(v) for v in value)
    return value  # numbers stay numbers, for %d


class Scrub(logging.Filter):
    """Scrubs a record's message (a string, or structlog's event dict) and arguments in place,
    keeping their shape (uvicorn's access formatter unpacks its five arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _scrubbed(record.msg)
        if isinstance(record.args, (tuple, dict)):
            record.args = _scrubbed(record.args)
        return True


SCRUB = Scrub()


def scrub_uvicorn() -> None:
    """uvicorn logs request paths (query strings included) on these two loggers."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(SCRUB)  # once: addFilter skips a filter it has


def configure(level: str = "info", fmt: str = "auto") -> None:
    """`fmt`: json, console, or auto (console on a terminal, JSON otherwise)."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer = (structlog.processors.JSONRenderer() if fmt == "json"
                else structlog.dev.ConsoleRenderer(colors=False))
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=SHARED,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer])
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    handler.addFilter(SCRUB)  # every record, ours or a library's
    scrub_uvicorn()
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers = []  # one handler, at the root
        logging.getLogger(name).propagate = True
    structlog.configure(
        processors=[*SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger, cache_logger_on_first_use=True)


def route_to_stdlib() -> None:
    """When the app is used without `tutor serve` (tests, an embedding program): structlog's
    events become ordinary stdlib records (message = event, fields as `extra`), handled however
    the program set up logging. uvicorn's loggers are scrubbed either way."""
    scrub_uvicorn()
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars,
                    structlog.stdlib.render_to_log_kwargs],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger, cache_logger_on_first_use=True)
