"""The message handed to a transport, and what every transport promises."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("tutor.notify")
# RFC 5322 dot-atom text, less '=' (our escape character)
_UNSAFE = re.compile(r"[^A-Za-z0-9.!#$%&'*+/?^_`{|}~-]")


@dataclass(frozen=True)
class Email:
    to: str
    sender: str
    subject: str
    text: str
    html: str
    idempotency_key: str  # one per outbox row; the Message-ID is derived from it
    headers: dict[str, str] = field(default_factory=dict)  # e.g. List-Unsubscribe

    @property
    def message_id(self) -> str:
        """`<key@domain>`, the same for every attempt of one outbox row. Characters a Message-ID
        may not hold (such as the ':' in `welcome:<user id>`) are escaped reversibly as =XX."""
        domain = self.sender.rpartition("@")[2].strip("> ") or "tutor.local"
        left = _UNSAFE.sub(lambda m: "".join(f"={b:02X}" for b in m.group().encode()),
                           self.idempotency_key)
        return f"<{left}@{domain}>"


class TransportError(Exception):
    """The message was not accepted. `permanent`: retrying the same message cannot succeed."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Transport(Protocol):
    name: str
    # True when sending the same idempotency key twice delivers once (the receiver dedupes), so a
    # message whose outcome is unknown after a crash can safely be sent again.
    idempotent: bool

    async def send(self, email: Email) -> str:
        """Deliver one message; returns the provider's message id, or raises TransportError."""
        ...

    async def aclose(self) -> None: ...


class LogTransport:
    """Development: the message goes to the log (subject, recipient, text part), not the network."""

    name = "log"
    idempotent = True

    def __init__(self) -> None:
        self.sent: list[Email] = []

    async def send(self, email: Email) -> str:
        self.sent.append(email)
        log.info("email (log transport) to %s: %s\n%s", email.to, email.subject, email.text)
        return f"log-{email.idempotency_key}"

    async def aclose(self) -> None:
        return None
