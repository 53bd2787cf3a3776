"""The email tool server shipped with the tutor: `tutor mcp-email` (MCP, stdio or streamable HTTP).

One tool, `send_email(to, subject, text, html, idempotency_key, sender=None, headers=None)`,
relays a message to SMTP (`notify.smtp.SmtpTransport`) and answers
`{"message_id": "<key@domain>", "duplicate": false}`. `message_id` is the message's Message-ID
header, derived from the idempotency key (`notify.message.Email.message_id`), so it is the same
for every call with that key.

Idempotent by key: a SQLite journal (`TUTOR_MCP_EMAIL_JOURNAL`, default `data/mcp-email.db`)
records each key once SMTP has accepted its message; a key already there is answered from the
journal with `duplicate: true` and nothing is sent. Calls with the same key are serialised by a
lock per key, so concurrent calls to this process send once. Limits, by design: two server
processes sharing a journal only dedupe keys already recorded (run one server per journal), and a
crash between SMTP's acceptance and the journal write forgets that one key.

Failures are tool errors (`isError` results) whose text follows one small grammar the client
(`notify.mcp_client`) parses, `"<what> permanent: <detail>"` or `"<what> temporary: <detail>"`:

    SMTP permanent: 550 5.1.1 no such user          550/551/553, at RCPT or DATA
    SMTP temporary: 451 4.3.0 try later             any other refusal
    SMTP temporary: server 127.0.0.1:25: SMTPConnectError: ...   SMTP unreachable
    message permanent: ...                          the message cannot be built (bad header, ...)
    config temporary: ...                           no sender and no TUTOR_EMAIL_FROM
    journal temporary: ...                          the journal cannot be read

Nothing is journaled for a failed call, so the same key can be sent again.

Settings, from the environment through `server.config.McpEmailSettings` (the settings module
stays the only reader of the environment): TUTOR_SMTP_HOST (127.0.0.1), TUTOR_SMTP_PORT (25),
TUTOR_SMTP_USERNAME, TUTOR_SMTP_PASSWORD, TUTOR_SMTP_STARTTLS (unset: upgrade when offered;
"true"/"false"), TUTOR_SMTP_TLS ("true": implicit TLS, port 465), TUTOR_SMTP_TIMEOUT_S (30),
TUTOR_EMAIL_FROM (the default sender), TUTOR_MCP_EMAIL_JOURNAL (data/mcp-email.db).

    tutor mcp-email                            # stdio (the tutor's McpEmailTransport spawns it)
    tutor mcp-email --http --host 127.0.0.1 --port 8790   # streamable HTTP, http://host:port/mcp
    python -m notify.mcp_server ...            # the same, without the console script

The HTTP endpoint has no authentication: whoever reaches it sends mail as TUTOR_EMAIL_FROM. Keep
it on loopback (the default; DNS-rebinding protection is then on) or on a private network.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from functools import partial
from pathlib import Path
from typing import Annotated, TypedDict

import aiosmtplib
import anyio
import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult, TextContent

from server.config import McpEmailSettings
from store.files import private_sqlite

from .message import Email, TransportError
from .smtp import SmtpTransport, mime

log = logging.getLogger("tutor.notify.mcp_server")

TOOL_NAME = "send_email"
DEFAULT_HTTP_PORT = 8790
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 field name: printable ASCII but ':'


class SendResult(TypedDict):
    message_id: str  # the Message-ID header, "<idempotency_key@sender-domain>"
    duplicate: bool  # true: this key was sent before; nothing was sent now


def smtp_transport(settings: McpEmailSettings) -> SmtpTransport:
    return SmtpTransport(settings.smtp_host, settings.smtp_port, username=settings.smtp_username,
                         password=settings.smtp_password, starttls=settings.smtp_starttls,
                         use_tls=settings.smtp_tls, timeout_s=settings.smtp_timeout_s)


class Journal:
    """Keys whose message SMTP accepted. Blocking sqlite3, one short connection per call: run the
    methods in a worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10.0)

    def create(self) -> None:
        private_sqlite(self.path)  # it holds recipients and subjects
        with closing(self._connect()) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("""CREATE TABLE IF NOT EXISTS sent (
                idempotency_key TEXT PRIMARY KEY,
                message_id TEXT NOT NULL,
                recipient TEXT NOT NULL,
                smtp_reply TEXT NOT NULL,
                sent_at REAL NOT NULL)""")

    def lookup(self, key: str) -> str | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT message_id FROM sent WHERE idempotency_key = ?",
                             (key,)).fetchone()
        return row[0] if row else None

    def record(self, key: str, message_id: str, recipient: str, smtp_reply: str) -> None:
        with closing(self._connect()) as db, db:
            db.execute("INSERT OR IGNORE INTO sent VALUES (?, ?, ?, ?, ?)",
                       (key, message_id, recipient, smtp_reply, time.time()))


class _KeyLocks:
    """One lock per idempotency key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (anyio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


def _error(what: str, permanent: bool, detail: str) -> CallToolResult:
    kind = "permanent" if permanent else "temporary"
    return CallToolResult(content=[TextContent(type="text", text=f"{what} {kind}: {detail}")],
                          is_error=True)


def _smtp_failure(exc: TransportError) -> CallToolResult:
    cause = exc.__cause__
    if isinstance(cause, aiosmtplib.SMTPRecipientsRefused) and cause.recipients:
        # Refused at RCPT: notify.smtp decided `permanent` from the codes; say them all.
        refused = cause.recipients
        return _error("SMTP", exc.permanent,
                      "; ".join(f"{r.code} {r.message} ({r.recipient})" for r in refused))
    if isinstance(cause, aiosmtplib.SMTPResponseException):
        return _error("SMTP", exc.permanent, f"{cause.code} {cause.message}")
    return _error("SMTP", exc.permanent, str(exc).removeprefix("SMTP "))


def create_server(settings: McpEmailSettings | None = None, *,
                  log_level: str = "INFO") -> MCPServer:
    settings = settings or McpEmailSettings()
    journal = Journal(settings.mcp_email_journal)
    journal.create()  # fail at start, not at the first message, when the path is unusable
    smtp = smtp_transport(settings)
    locks = _KeyLocks()
    server = MCPServer("tutor-email", instructions=(
        "Sends email through the tutor's SMTP relay. send_email is idempotent per "
        "idempotency_key: a key already sent is not sent again (duplicate: true)."),
        log_level=log_level.upper())  # type: ignore[arg-type]

    @server.tool(name=TOOL_NAME)
    async def send_email(to: str, subject: str, text: str, html: str, idempotency_key: str,
                         sender: str | None = None, headers: dict[str, str] | None = None,
                         ) -> Annotated[CallToolResult, SendResult]:
        """Send one email (plain text and HTML alternatives) through SMTP, once per
        idempotency_key. Returns the Message-ID and whether the key had already been sent.
        Errors read "<what> permanent: ..." (retrying cannot succeed) or "<what> temporary: ..."."""
        key = idempotency_key
        if not key or any(c in "<>" or not c.isprintable() or c.isspace() for c in key):
            return _error("message", True, f"unusable idempotency_key {idempotency_key!r}")
        sender = sender or settings.email_from
        if not sender:
            return _error("config", False, "no sender given and TUTOR_EMAIL_FROM is not set")
        for name in headers or {}:
            if not _HEADER_NAME.match(name):
                return _error("message", True, f"invalid header name {name!r}")
        email = Email(to=to, sender=sender, subject=subject, text=text, html=html,
                      idempotency_key=key, headers=dict(headers or {}))
        try:
            mime(email)  # what SmtpTransport will build: refuse what it would crash on
        except (ValueError, TypeError) as exc:
            return _error("message", True, str(exc))

        async with locks.hold(key):
            try:
                known = await anyio.to_thread.run_sync(journal.lookup, key)
            except sqlite3.Error as exc:
                return _error("journal", False, f"{settings.mcp_email_journal}: {exc}")
            if known is not None:
                log.info("duplicate %s to %s: already sent", known, to)
                return _result(known, duplicate=True)
            # Shielded: a caller that gives up (timeout, cancel) must not cut the SMTP dialogue
            # between "accepted" and "journaled", or its retry would send the message again.
            # The retry waits for the lock instead and finds the key. Bounded by the SMTP timeout.
            with anyio.CancelScope(shield=True):
                try:
                    reply = await smtp.send(email)
                except TransportError as exc:
                    return _smtp_failure(exc)
                try:
                    await anyio.to_thread.run_sync(journal.record, key, email.message_id, to,
                                                   reply)
                except sqlite3.Error:
                    # SMTP took it: report the success, or the caller would send it again.
                    log.exception("sent %s but could not journal it", email.message_id)
            log.info("sent %s to %s (%s)", email.message_id, to, reply)
            return _result(email.message_id, duplicate=False)

    return server


def _result(message_id: str, *, duplicate: bool) -> CallToolResult:
    data = SendResult(message_id=message_id, duplicate=duplicate)
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(data))],
                          structured_content=dict(data))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="tutor mcp-email",
        description="Email tool server (MCP): send_email relays to SMTP, idempotent per key. "
                    "Settings from TUTOR_SMTP_*, TUTOR_EMAIL_FROM, TUTOR_MCP_EMAIL_JOURNAL.")
    parser.add_argument("--http", action="store_true",
                        help="serve streamable HTTP at /mcp instead of stdio")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address (127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_HTTP_PORT,
                        help=f"HTTP port ({DEFAULT_HTTP_PORT})")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    args = parser.parse_args(argv)

    # MCPServer logs to stderr: on stdio, stdout carries the protocol and nothing else.
    server = create_server(log_level=args.log_level)
    if args.http:
        anyio.run(partial(server.run_streamable_http_async, host=args.host, port=args.port,
                          streamable_http_path="/mcp"))
    else:
        anyio.run(server.run_stdio_async)


if __name__ == "__main__":
    main()
