"""A real SMTP server on loopback (aiosmtpd, in its own thread) that keeps what it receives.

The edge of the internet for email tests: everything up to the socket is the real thing. It can
refuse the next messages with a given reply (at RCPT or at DATA), hold each message a while before
answering (to make concurrent sends overlap), and be stopped and started again on the same port
("SMTP is down", "SMTP is back").

    def test_x(smtp_sink):            # from tests.smtp_sink import smtp_sink  # noqa: F401
        smtp_sink.fail_next(1, "451 4.3.0 try later")
        ...
        [received] = smtp_sink.messages
        received.message["Subject"], received.rcpt_tos
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Literal

import pytest
from aiosmtpd.controller import Controller

from tests.processes import free_port

Stage = Literal["rcpt", "data"]


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    raw: bytes


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        refusal = self.sink._take_refusal("rcpt")
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.sink.delay_s:
            await asyncio.sleep(self.sink.delay_s)
        refusal = self.sink._take_refusal("data")
        if refusal:
            return refusal
        raw = envelope.original_content or envelope.content
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        with self.sink._lock:
            self.sink.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                               parsed, raw))
            number = len(self.sink.messages)
        return f"250 2.0.0 Ok: queued as SINK{number}"


class SmtpSink:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port()
        self.messages: list[Received] = []
        self.delay_s = 0.0  # wait this long before answering DATA
        self._refusals: list[tuple[Stage, str]] = []
        self._lock = threading.Lock()
        self._handler = _Handler(self)
        self._controller: Controller | None = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> None:
        """Listen (again) on the same port."""
        assert self._controller is None, "already running"
        # A stopped Controller's loop is closed: every start gets a new one.
        controller = Controller(self._handler, hostname=self.host, port=self.port,
                                server_hostname="sink.test", ready_timeout=5.0)
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        """Close the listener: connections are refused until `start`."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def fail_next(self, count: int, reply: str, *, stage: Stage = "data") -> None:
        """Answer the next `count` messages with `reply` (e.g. "550 5.1.1 no such user") at
        `stage`: "rcpt" refuses the recipient, "data" refuses the message once it is sent."""
        with self._lock:
            self._refusals.extend([(stage, reply)] * count)

    def _take_refusal(self, stage: Stage) -> str | None:
        with self._lock:
            if self._refusals and self._refusals[0][0] == stage:
                return self._refusals.pop(0)[1]
        return None

    def env(self) -> dict[str, str]:
        """What the email tool server needs to relay here."""
        return {"TUTOR_SMTP_HOST": self.host, "TUTOR_SMTP_PORT": str(self.port),
                "TUTOR_SMTP_STARTTLS": "false"}

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[Received]:
        """Blocking: until `count` messages arrived (for a test that runs no event loop)."""
        deadline = time.monotonic() + timeout_s
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.messages)} message(s) arrived, not {count}")
            time.sleep(0.02)
        return list(self.messages)

    async def until(self, count: int, timeout_s: float = 5.0) -> list[Received]:
        """Until `count` messages arrived, without blocking the event loop."""
        deadline = time.monotonic() + timeout_s
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.messages)} message(s) arrived, not {count}")
            await asyncio.sleep(0.02)
        return list(self.messages)


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()
