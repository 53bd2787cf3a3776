"""`Services`: what the app builds once in its lifespan and every route and socket reaches, typed.

`server.app`'s lifespan builds one `Services` and keeps it on the app; a route asks for it with
`services(request)` (a WebSocket endpoint with `services(websocket)`) and reads
`services(request).billing`, `.db`, `.settings`... Tests build an app with their own settings or
providers, so nothing here is a global. The types are imported for the type checker only: at run
time this module imports nothing of the project's, so every package may use it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    from authlib.integrations.starlette_client import OAuth
    from redis.asyncio import Redis

    from accounts.identity import Authenticator
    from accounts.secrets import SecretBox
    from billing.service import Billing
    from billing.stripe import StripeBilling
    from notify.worker import OutboxWorker
    from providers import Providers
    from rag.grounding import Grounding
    from rag.search import Retriever
    from rag.worker import Parser
    from realtime import SessionConfig
    from server.config import Settings
    from server.connections import SessionSlots
    from server.loopwatch import LoopWatch
    from server.metrics import Metrics
    from server.moderation import Moderation
    from server.resume import ResumeStore
    from store.db import Database
    from store.spool import Spool
    from store.writer import InteractionWriter
    from study.tutor import CourseTutors

    # what a voice turn or a typed question asks of the course: (question, user id) → grounding
    Lookup = Callable[[str, str | None], Awaitable[Grounding]]


@dataclass
class Services:
    settings: Settings
    providers: Providers
    session_config: SessionConfig  # a new voice session's defaults
    db: Database
    spool: Spool
    writer: InteractionWriter  # the interactions, written off the request's path
    redis: Redis | None  # None: counters, tickets, resume tokens and caches in memory
    metrics: Metrics
    slots: SessionSlots  # the voice session caps per address and per user
    auth: Authenticator
    resume: ResumeStore
    billing: Billing
    usage_writer: InteractionWriter  # the usage ledger's writer
    payments: StripeBilling | None  # None: Stripe is not configured
    email_link_secret: str  # signs unsubscribe links
    email_worker: OutboxWorker
    parser: Parser  # the document-reading worker processes
    retriever: Retriever
    knowledge: Callable[[str | None], Lookup]  # the course's lookup, by course name
    tutors: CourseTutors  # each course's tutor settings (cached briefly)
    secret_box: SecretBox | None  # None: no TUTOR_SECRET_KEYS, refresh tokens are not kept
    oauth: OAuth | None  # None: Google sign-in is not configured
    moderation: Moderation | None = None  # None: off (no provider offers it, or turned off)
    loopwatch: LoopWatch | None = None  # None: the event loop's lag is not measured
    runners: set[Any] = field(default_factory=set)  # the open voice sessions, drained on SIGTERM
    draining: bool = False  # set on SIGTERM: new sessions are refused, /readyz fails


def services(conn: HTTPConnection) -> Services:
    """The app's services, from a request or a WebSocket."""
    return conn.app.state.services
