"""The MCP email path end to end: McpEmailTransport → the real tool server (`python -m
notify.mcp_server`, spawned over stdio or run as a streamable HTTP process) → SMTP on loopback
(tests.smtp_sink, a real aiosmtpd server). Nothing in between is faked."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from notify.mcp_client import McpEmailTransport, SendResult
from notify.message import Email, TransportError
from tests.smtp_sink import SmtpSink, free_port, smtp_sink  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
SENDER = "Tutor <tutor@example.org>"
SERVER = [sys.executable, "-m", "notify.mcp_server", "--log-level", "WARNING"]


def make_email(key: str, to: str = "ada@example.com", **overrides: object) -> Email:
    values: dict = dict(
        to=to, sender=SENDER, subject="Willkommen, Ada — los geht’s",
        text="Hallo Ada,\nschön, dass du da bist.\n",
        html="<p>Hallo Ada,<br>schön, dass du da bist.</p>", idempotency_key=key,
        headers={"List-Unsubscribe": "<https://tutor.example.org/u/abc>",
                 "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"})
    values.update(overrides)
    return Email(**values)


def journaled(journal: Path) -> dict[str, str]:
    """The tool server's journal, read directly: idempotency key → message id."""
    if not journal.exists():
        return {}
    with sqlite3.connect(journal) as db:
        return dict(db.execute("SELECT idempotency_key, message_id FROM sent"))


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "mcp-email.db"


def server_env(sink: SmtpSink, journal: Path) -> dict[str, str]:
    return sink.env() | {"TUTOR_MCP_EMAIL_JOURNAL": str(journal), "PYTHONPATH": str(ROOT)}


@pytest.fixture
async def stdio(smtp_sink: SmtpSink, journal: Path) -> AsyncIterator[McpEmailTransport]:
    transport = McpEmailTransport(command=SERVER, env=server_env(smtp_sink, journal), cwd=ROOT,
                                  timeout_s=10)
    try:
        yield transport
    finally:
        await transport.aclose()


class HttpToolServer:
    """`python -m notify.mcp_server --http --port N`, a process the test can kill and restart."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.env = os.environ | env
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([*SERVER, "--http", "--port", str(self.port)],
                                        cwd=ROOT, env=self.env)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the tool server exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the tool server did not listen within 15 s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def http_server(smtp_sink: SmtpSink, journal: Path) -> Iterator[HttpToolServer]:
    server = HttpToolServer(server_env(smtp_sink, journal))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def http(http_server: HttpToolServer) -> AsyncIterator[McpEmailTransport]:
    transport = McpEmailTransport(url=http_server.url, timeout_s=10, connect_timeout_s=5)
    try:
        yield transport
    finally:
        await transport.aclose()


async def test_stdio_relays_a_complete_message(stdio: McpEmailTransport, smtp_sink: SmtpSink,
                                               journal: Path) -> None:
    email = make_email("welcome-42")
    message_id = await stdio.send(email)

    assert message_id == email.message_id == "<welcome-42@example.org>"
    [received] = smtp_sink.messages
    assert received.mail_from == "tutor@example.org"
    assert received.rcpt_tos == ["ada@example.com"]
    msg = received.message
    assert msg["Subject"] == email.subject
    assert msg["From"] == SENDER and msg["To"] == "ada@example.com"
    assert msg["Message-ID"] == message_id
    assert msg["List-Unsubscribe"] == "<https://tutor.example.org/u/abc>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg.get_content_type() == "multipart/alternative"
    # (SMTP carries CRLF line ends)
    assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n") == email.text
    assert msg.get_body(("html",)).get_content().strip() == email.html
    assert journaled(journal) == {"welcome-42": message_id}

    # The same session carries the next message.
    second = make_email("welcome-43", to="grace@example.com")
    assert await stdio.send(second) == second.message_id
    assert [m.rcpt_tos for m in smtp_sink.messages] == [["ada@example.com"],
                                                        ["grace@example.com"]]


async def test_same_key_twice_and_concurrently_sends_once(http: McpEmailTransport,
                                                          http_server: HttpToolServer,
                                                          smtp_sink: SmtpSink,
                                                          journal: Path) -> None:
    smtp_sink.delay_s = 0.3  # the three calls overlap while SMTP holds the first one
    email = make_email("quota80-7-2026-05")
    results = await asyncio.gather(*(http.submit(email) for _ in range(3)))

    assert {r.message_id for r in results} == {email.message_id}
    assert sorted(r.duplicate for r in results) == [False, True, True]
    assert len(smtp_sink.messages) == 1

    # Later, and from another client with its own session: still the same answer, nothing sent.
    other = McpEmailTransport(url=http_server.url, timeout_s=10)
    try:
        assert await other.submit(email) == SendResult(email.message_id, duplicate=True)
    finally:
        await other.aclose()
    assert await http.submit(email) == SendResult(email.message_id, duplicate=True)
    await asyncio.sleep(0.2)
    assert len(smtp_sink.messages) == 1
    assert journaled(journal) == {"quota80-7-2026-05": email.message_id}


async def test_smtp_down_then_back_sends_once(stdio: McpEmailTransport, smtp_sink: SmtpSink,
                                              journal: Path) -> None:
    email = make_email("welcome-down")
    smtp_sink.stop()
    with pytest.raises(TransportError) as refused:
        await stdio.send(email)
    assert not refused.value.permanent
    assert "SMTP temporary" in str(refused.value)
    assert f"127.0.0.1:{smtp_sink.port}" in str(refused.value)
    assert journaled(journal) == {}  # nothing recorded: the key is still sendable

    smtp_sink.start()  # same port
    assert await stdio.submit(email) == SendResult(email.message_id, duplicate=False)
    assert await stdio.submit(email) == SendResult(email.message_id, duplicate=True)
    assert len(smtp_sink.messages) == 1
    assert journaled(journal) == {"welcome-down": email.message_id}


async def test_transient_refusal_is_retryable(stdio: McpEmailTransport, smtp_sink: SmtpSink,
                                              journal: Path) -> None:
    email = make_email("welcome-451")
    smtp_sink.fail_next(1, "451 4.3.0 try later")
    with pytest.raises(TransportError) as refused:
        await stdio.send(email)
    assert not refused.value.permanent
    assert "SMTP temporary: 451 4.3.0 try later" in str(refused.value)
    assert journaled(journal) == {} and smtp_sink.messages == []

    assert await stdio.send(email) == email.message_id
    assert len(smtp_sink.messages) == 1


@pytest.mark.parametrize("stage", ["rcpt", "data"])
async def test_550_is_permanent(stdio: McpEmailTransport, smtp_sink: SmtpSink, journal: Path,
                                stage: str) -> None:
    smtp_sink.fail_next(1, "550 5.1.1 no such user", stage=stage)  # type: ignore[arg-type]
    with pytest.raises(TransportError) as refused:
        await stdio.send(make_email(f"welcome-550-{stage}", to="nobody@example.com"))
    assert refused.value.permanent
    assert "SMTP permanent: 550 5.1.1 no such user" in str(refused.value)
    assert journaled(journal) == {} and smtp_sink.messages == []

    # A message the tool cannot even build is permanent too; the session goes on regardless.
    with pytest.raises(TransportError) as invalid:
        await stdio.send(make_email("welcome-bad-header", headers={"Bad Header": "x"}))
    assert invalid.value.permanent and "message permanent" in str(invalid.value)
    assert await stdio.send(make_email("welcome-ok")) == "<welcome-ok@example.org>"


async def test_http_server_gone_then_back(http: McpEmailTransport, http_server: HttpToolServer,
                                          smtp_sink: SmtpSink, journal: Path) -> None:
    first = make_email("weekly-1")
    assert await http.send(first) == first.message_id

    http_server.kill()
    with pytest.raises(TransportError) as gone:
        await http.send(make_email("weekly-2"))
    assert not gone.value.permanent
    assert http_server.url in str(gone.value)

    await asyncio.to_thread(http_server.start)
    # The transport reconnects by itself; the journal outlived the server process.
    assert await http.submit(make_email("weekly-2")) == SendResult("<weekly-2@example.org>",
                                                                   duplicate=False)
    assert await http.submit(first) == SendResult(first.message_id, duplicate=True)
    assert [m.message["Message-ID"] for m in smtp_sink.messages] == [first.message_id,
                                                                     "<weekly-2@example.org>"]
    assert set(journaled(journal)) == {"weekly-1", "weekly-2"}


async def test_stdio_server_gone_is_replaced(smtp_sink: SmtpSink, journal: Path,
                                             tmp_path: Path) -> None:
    pid_file = tmp_path / "server.pid"
    # exec keeps the pid: the test can kill the very process the transport talks to.
    command = ["sh", "-c", f'echo $$ > "{pid_file}"; exec "$@"', "sh", *SERVER]
    transport = McpEmailTransport(command=command, env=server_env(smtp_sink, journal), cwd=ROOT,
                                  timeout_s=10)
    try:
        await transport.send(make_email("welcome-a"))
        first_pid = int(pid_file.read_text())
        os.kill(first_pid, signal.SIGKILL)

        # The broken session is noticed on the next send, which runs on a new server process.
        await transport.send(make_email("welcome-b"))
        assert int(pid_file.read_text()) != first_pid
    finally:
        await transport.aclose()
    assert len(smtp_sink.messages) == 2
    assert set(journaled(journal)) == {"welcome-a", "welcome-b"}


async def test_unreachable_servers_are_transport_errors(tmp_path: Path) -> None:
    closed_port = free_port()
    cases = [
        McpEmailTransport(url=f"http://127.0.0.1:{closed_port}/mcp", timeout_s=5),
        McpEmailTransport(command=[sys.executable, "-c", "pass"], timeout_s=5),  # exits at once
        McpEmailTransport(command=[str(tmp_path / "no-such-server")], timeout_s=5),
    ]
    for transport in cases:
        try:
            with pytest.raises(TransportError) as failed:
                await transport.send(make_email("welcome-x"))
            assert not failed.value.permanent
            assert transport.target in str(failed.value)
        finally:
            await transport.aclose()


async def test_timeout_then_retry_finds_the_send(http: McpEmailTransport, smtp_sink: SmtpSink,
                                                 journal: Path) -> None:
    email = make_email("welcome-slow")
    smtp_sink.delay_s = 1.2
    http.timeout_s = 0.3
    with pytest.raises(TransportError) as slow:
        await http.send(email)
    assert not slow.value.permanent and "timed out" in str(slow.value)

    # The server finished that SMTP dialogue although the caller gave up: the retry waits for
    # it and gets its result instead of sending a second copy.
    http.timeout_s = 10
    assert await http.submit(email) == SendResult(email.message_id, duplicate=True)
    assert len(smtp_sink.messages) == 1
    assert journaled(journal) == {"welcome-slow": email.message_id}


async def test_message_id_survives_keys_with_colons(stdio: McpEmailTransport,
                                                    smtp_sink: SmtpSink) -> None:
    email = make_email("welcome:42")
    message_id = await stdio.send(email)
    assert message_id == email.message_id == "<welcome=3A42@example.org>"  # ":" escaped
    assert smtp_sink.messages[0].message["Message-ID"] == message_id
