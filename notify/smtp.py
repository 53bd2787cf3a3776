"""SMTP transport (aiosmtplib): multipart/alternative (plain text + HTML), STARTTLS and login when
configured, a Message-ID derived from the outbox row's idempotency key."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib

from .message import Email, TransportError

PERMANENT = (550, 551, 553)  # no such mailbox, not local, bad address: this message will not go


def mime(email: Email) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = email.sender
    msg["To"] = email.to
    msg["Subject"] = email.subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = email.message_id
    for name, value in email.headers.items():
        msg[name] = value
    msg.set_content(email.text)
    msg.add_alternative(email.html, subtype="html")
    return msg


class SmtpTransport:
    name = "smtp"
    idempotent = False  # an SMTP server delivers a resent message again

    def __init__(self, host: str, port: int = 587, *, username: str | None = None,
                 password: str | None = None, starttls: bool | None = None,
                 use_tls: bool = False, timeout_s: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.starttls = starttls  # None: upgrade when the server offers it
        self.use_tls = use_tls  # implicit TLS (port 465)
        self.timeout_s = timeout_s

    async def send(self, email: Email) -> str:
        try:
            _, reply = await aiosmtplib.send(
                mime(email), hostname=self.host, port=self.port, username=self.username,
                password=self.password, use_tls=self.use_tls, start_tls=self.starttls,
                timeout=self.timeout_s)
        except aiosmtplib.SMTPRecipientsRefused as exc:  # refused at RCPT: the codes are inside
            codes = [r.code for r in exc.recipients]
            raise TransportError(f"SMTP recipients refused: {exc.recipients}",
                                 permanent=all(c in PERMANENT for c in codes)) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise TransportError(f"SMTP {exc.code}: {exc.message}",
                                 permanent=exc.code in PERMANENT) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise TransportError(f"SMTP server {self.host}:{self.port}: "
                                 f"{exc.__class__.__name__}: {exc}") from exc
        return reply.strip() or email.message_id

    async def aclose(self) -> None:
        return None
