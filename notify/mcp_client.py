"""MCP email transport: the outbox sends through an email tool server's `send_email` tool.

    McpEmailTransport(url="http://127.0.0.1:8790/mcp")                    # streamable HTTP
    McpEmailTransport(command=["tutor", "mcp-email"])                     # stdio subprocess
    McpEmailTransport(command=[sys.executable, "-m", "notify.mcp_server"], env={...}, cwd=...)

`send(email)` calls the tool and returns its `message_id`; `submit(email)` also says whether the
server had already sent that key (`duplicate`). The server dedupes by idempotency key
(`notify.mcp_server`), hence `idempotent = True`: a message whose outcome is unknown can be sent
again. Every failure raises `TransportError`: server unreachable, subprocess gone, timeout, a
protocol error, or the tool's own error. `permanent` is set only when the tool said so: its error
text reads `"<what> permanent: <detail>"` (e.g. "SMTP permanent: 550 5.1.1 no such user") or
`"<what> temporary: <detail>"`; any other text counts as temporary.

One session, reused
-------------------
The outbox worker sends many messages, so one MCP session stays open and is shared by concurrent
sends (MCP correlates requests by id). A lock guards opening it. When a call finds the session
broken (connection closed, subprocess exited, server restarted) the session is retired and the
next send opens a new one; a call that failed that way on a session opened by an earlier send is
retried once on a fresh session at once, which is safe because the tool is idempotent per key.
A timeout is not retried; three in a row on one session retire it (a hung stdio server is
replaced).

Task affinity (why a background task owns the session)
------------------------------------------------------
The SDK's `Client` is an async context manager over anyio task groups and cancel scopes, which
must be exited by the task that entered them. Worse, when the transport fails (the HTTP server
goes away) the transport's task group *cancels the task that entered it* and re-raises as an
ExceptionGroup when it exits. Entering the client from whatever task happens to call `send` (an
outbox worker's loop, a request handler) would get that task cancelled, and `aclose()` from
another task (app shutdown) would break the scope rule.

So each session is owned by one dedicated asyncio task (`_Session`): it enters `Client`, hands the
connected client back through a future, waits for a stop signal and exits the context in the same
task. Callers only *use* the connected client, `client.call_tool(...)`, from their own tasks:
that path enters and leaves its own scopes within the caller's task, and the SDK's dispatcher
wakes every pending call with CONNECTION_CLOSED when the session dies, whatever the cause. A
transport failure therefore lands on the owner task (which records it and ends), never on the
caller; `aclose()` just signals the owners and waits for them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError
from mcp.types import CONNECTION_CLOSED, REQUEST_TIMEOUT, CallToolResult, Implementation

from .message import Email, TransportError

log = logging.getLogger("tutor.notify.mcp")

_VERDICT = re.compile(r"^(?P<what>[\w-]+) (?P<kind>permanent|temporary): ", re.ASCII)
# A timeout usually means a slow SMTP relay, and the server finishes that send anyway (a retry
# then finds its key); replacing a stdio server at once would start a second process that does
# not know about the send still under way. Several in a row mean the server is stuck.
_TIMEOUTS_BEFORE_RETIRING = 3


@dataclass(frozen=True)
class SendResult:
    message_id: str
    duplicate: bool  # the server had sent this key before and sent nothing now


class _ConnectionLost(Exception):
    pass


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _reason(exc: BaseException) -> str:
    """One line for an exception, looking through single-member exception groups."""
    exc = _leaf(exc)
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_reason(e) for e in exc.exceptions)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Session:
    """One MCP client session, entered and exited by its own task (see the module docstring)."""

    def __init__(self, client: Client, label: str) -> None:
        self._client = client
        self._label = label
        self._stop = asyncio.Event()
        self._ready: asyncio.Future[Client] | None = None
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None  # why the session ended, when it failed
        self.retired = False
        self.inflight = 0
        self.timeouts = 0  # in a row

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    @property
    def usable(self) -> bool:
        return not self.retired and self._task is not None and not self._task.done()

    async def open(self, timeout_s: float) -> Client:
        loop = asyncio.get_running_loop()
        self._ready = ready = loop.create_future()
        # Read the outcome even when nobody awaits it any more (timed out), so asyncio does not
        # log "exception was never retrieved".
        ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._task = loop.create_task(self._own(), name=f"mcp-session {self._label}")
        try:
            return await asyncio.wait_for(asyncio.shield(ready), timeout_s)
        except BaseException:
            self.retired = True
            self._stop.set()
            if not self._task.done():  # still connecting: nothing else will stop it
                # Not awaited here: a stdio server that ignores its closed stdin takes the SDK a
                # few seconds to kill. The transport keeps the task and aclose() waits for it.
                self._task.cancel()
            raise

    async def _own(self) -> None:
        assert self._ready is not None
        try:
            async with self._client as client:
                if not self._ready.done():
                    self._ready.set_result(client)
                await self._stop.wait()
        except Exception as exc:  # an ExceptionGroup when the transport failed
            self.error = exc
            if not self._ready.done():
                self._ready.set_exception(exc)
            log.debug("MCP session %s ended: %s", self._label, _reason(exc))
        except BaseException:
            if not self._ready.done():
                self._ready.cancel()
            raise
        finally:
            if not self._ready.done():  # exited cleanly before connecting: stopped early
                self._ready.set_exception(_ConnectionLost("closed before it connected"))

    async def call(self, tool: str, arguments: dict[str, Any], timeout_s: float) -> CallToolResult:
        self.inflight += 1
        try:
            # The SDK's own per-request timeout; fail_after is the backstop should it not fire.
            with anyio.fail_after(timeout_s + 5.0):
                return await self._client.call_tool(tool, arguments, read_timeout_seconds=timeout_s)
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                raise _ConnectionLost(str(exc)) from exc
            if exc.code == REQUEST_TIMEOUT:
                raise TimeoutError(str(exc)) from exc
            raise
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
            raise _ConnectionLost(_reason(exc)) from exc
        finally:
            self.inflight -= 1
            if self.retired and self.inflight == 0:
                self._stop.set()

    def retire(self) -> None:
        """No new calls; the session closes once the calls in flight are done."""
        self.retired = True
        if self.inflight == 0:
            self._stop.set()

    async def wait_closed(self, timeout_s: float) -> bool:
        if self._task is None:
            return True
        done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
        return bool(done)

    async def close(self, timeout_s: float) -> None:
        self.retired = True
        self._stop.set()  # calls still in flight end with "connection closed"
        if self._task is None or await self.wait_closed(timeout_s):
            return
        self._task.cancel()  # the owner is stuck exiting; stdio shutdown is bounded anyway
        await self.wait_closed(2.0)


class McpEmailTransport:
    """`Transport` over MCP: `send(email)` calls the tool server's `send_email`."""

    name = "mcp"
    idempotent = True  # the tool server dedupes by idempotency key

    def __init__(self, *, url: str | None = None, command: Sequence[str] | None = None,
                 env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
                 tool: str = "send_email", timeout_s: float = 60.0,
                 connect_timeout_s: float | None = None, errlog: TextIO | None = None) -> None:
        """`url`: the server's streamable HTTP endpoint (…/mcp). `command`: spawn the server
        and talk over its stdin/stdout; it gets HOME, PATH and the like, then `env` (the app
        passes `server.config.mcp_email_environment()`, its settings), and runs in `cwd`
        (default: this process's); its stderr goes to `errlog` (default sys.stderr).
        `timeout_s`: the longest wait for one tool call (keep it above the server's SMTP
        timeout, 30 s by default); `connect_timeout_s`: for opening a session (default
        `timeout_s`)."""
        if (url is None) == (command is None):
            raise ValueError("McpEmailTransport needs url= or command=, and only one of them")
        if command is not None and not command:
            raise ValueError("command= is empty")
        self.url = url
        self.command = list(command) if command is not None else None
        self.env = dict(env or {})
        self.cwd = cwd
        self.tool = tool
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s if connect_timeout_s is not None else timeout_s
        self.errlog = errlog
        self.target = url if url is not None else shlex.join(self.command or [])
        self._session: _Session | None = None
        self._retired: set[_Session] = set()
        self._lock = asyncio.Lock()
        self._closed = False

    def _client(self) -> Client:
        info = Implementation(name="voice-tutor", version="0.1.0")
        if self.url is not None:
            return Client(self.url, client_info=info, cache=None)
        assert self.command is not None
        params = StdioServerParameters(command=self.command[0], args=self.command[1:],
                                       env=self.env, cwd=self.cwd)
        # stdio_client(...) is a Transport for Client: passed this way, stderr is ours to route.
        return Client(stdio_client(params, errlog=self.errlog or sys.stderr), client_info=info,
                      cache=None)

    async def _connect(self) -> tuple[_Session, bool]:
        """The open session, or a new one; True when it was opened by this call."""
        async with self._lock:
            if self._closed:
                raise TransportError(f"MCP email transport ({self.target}) is closed")
            current = self._session
            if current is not None and current.usable:
                return current, False
            if current is not None:
                self._retire(current)
            session = _Session(self._client(), self.target)
            try:
                await session.open(self.connect_timeout_s)
            except BaseException as exc:
                self._retire(session)  # its owner may still be winding down: aclose() waits
                if isinstance(exc, TimeoutError):
                    raise TransportError(f"MCP server {self.target}: no session within "
                                         f"{self.connect_timeout_s:g} s") from None
                if not isinstance(exc, Exception):
                    raise  # cancelled
                why, leaf = _reason(exc), _leaf(exc)
                if isinstance(leaf, MCPError) and leaf.code == CONNECTION_CLOSED and self.command:
                    why = "the server process closed the connection (did it exit? see its stderr)"
                raise TransportError(f"MCP server {self.target}: cannot connect: {why}") from exc
            self._session = session
            return session, True

    def _retire(self, session: _Session) -> None:
        session.retire()
        if self._session is session:
            self._session = None
        if session.task is not None and not session.task.done():
            self._retired.add(session)  # aclose() waits for it
            session.task.add_done_callback(lambda _: self._retired.discard(session))

    async def submit(self, email: Email) -> SendResult:
        arguments: dict[str, Any] = {
            "to": email.to, "subject": email.subject, "text": email.text, "html": email.html,
            "idempotency_key": email.idempotency_key, "sender": email.sender,
            "headers": dict(email.headers)}
        for attempt in (1, 2):
            session, fresh = await self._connect()
            try:
                result = await session.call(self.tool, arguments, self.timeout_s)
            except _ConnectionLost as exc:
                self._retire(session)
                if not fresh and attempt == 1:
                    log.info("MCP session to %s was broken (%s); retrying on a new one",
                             self.target, exc)
                    continue
                await session.wait_closed(0.5)  # to learn why, when the owner saw it
                why = _reason(session.error) if session.error else str(exc)
                raise TransportError(f"MCP server {self.target}: connection lost: {why}") from exc
            except TimeoutError as exc:
                session.timeouts += 1
                if session.timeouts >= _TIMEOUTS_BEFORE_RETIRING:
                    self._retire(session)  # hung rather than slow: a new session next time
                raise TransportError(f"MCP server {self.target}: {self.tool} timed out after "
                                     f"{self.timeout_s:g} s") from exc
            except MCPError as exc:
                raise TransportError(f"MCP server {self.target}: {self.tool}: error {exc.code}: "
                                     f"{exc.message}") from exc
            except Exception as exc:  # an invalid result, a client-side bug: not this message's
                raise TransportError(f"MCP server {self.target}: {self.tool}: "
                                     f"{_reason(exc)}") from exc
            session.timeouts = 0
            return self._outcome(result)
        raise AssertionError("unreachable")

    def _outcome(self, result: CallToolResult) -> SendResult:
        text = "\n".join(block.text for block in result.content if block.type == "text").strip()
        if result.is_error:
            verdict = _VERDICT.match(text)
            raise TransportError(f"{self.tool}: {text or 'tool error without a message'}",
                                 permanent=bool(verdict and verdict["kind"] == "permanent"))
        data = result.structured_content or {}
        message_id = data.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            raise TransportError(f"MCP server {self.target}: {self.tool} answered without a "
                                 f"message_id: {text[:200]!r}")
        return SendResult(message_id=message_id, duplicate=bool(data.get("duplicate")))

    async def send(self, email: Email) -> str:
        outcome = await self.submit(email)
        if outcome.duplicate:
            log.info("email %s was already sent (the tool server remembered the key)",
                     outcome.message_id)
        return outcome.message_id

    async def aclose(self) -> None:
        async with self._lock:
            self._closed = True
            sessions = [s for s in (self._session, *self._retired) if s is not None]
            self._session = None
        await asyncio.gather(*(s.close(5.0) for s in sessions))
        self._retired.clear()


__all__ = ["McpEmailTransport", "SendResult"]
