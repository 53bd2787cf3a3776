"""Assembles the ASGI app: routes from each package, shared clients created in `lifespan`.

`create_app(settings, providers=...)` lets tests and the benchmark build an app with their own
settings or providers; nothing here reads the environment except through `Settings`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from accounts import invitation_routes
from accounts import routes as account_routes
from accounts.google import google_oauth
from accounts.identity import Authenticator
from accounts.secrets import SecretBox
from accounts.supabase import SupabaseVerifier
from accounts.tickets import MemoryTickets, RedisTickets
from api.errors import HANDLERS
from api.services import Services, services
from billing import routes as billing_routes
from billing.middleware import RequestLimitMiddleware
from billing.quota import MemoryQuotas, RedisQuotas
from billing.ratelimit import RequestLimiter, storage_for
from billing.service import Billing
from billing.stripe import StripeBilling
from billing.tiers import TierCatalog
from notify import routes as email_routes
from notify.events import quota_notifier
from notify.message import LogTransport, Transport
from notify.render import Renderer
from notify.smtp import SmtpTransport
from notify.summary import last_full_week, queue_weekly_summaries
from notify.worker import OutboxWorker, WorkerConfig, utcnow
from rag import routes as rag_routes
from rag.grounding import Grounding, ground
from rag.ingest import IngestError, ingest_paths
from rag.mirror import CourseMirror
from rag.reader import SqliteReader
from rag.search import MemoryQueryCache, RedisQueryCache, Retriever
from rag.vectors import VectorIndex
from rag.worker import Limits, Parser
from store.db import Database, migrate
from store.models import Base, FlaggedTurn, Interaction, UsageEntry
from store.spool import Spool
from store.writer import InteractionWriter
from study import ai_routes as study_ai_routes
from study.notes_routes import routes as notes_routes
from study.tutor import CourseTutors
from study.tutor_routes import routes as tutor_routes
from study.report_routes import routes as report_routes

from audio.formats import AudioFormat
from dialogue.prompts import TUTOR_INSTRUCTIONS
from providers import Providers, smart_turn
from providers.protocols import TurnModel
from providers.openai import (OpenAIChatModel, OpenAIEmbedder, OpenAIModerator, OpenAISpeech,
                              OpenAITranscriber, make_client, warm_up)
from realtime import SessionConfig, TurnDetection
from realtime.moderation import Policy

from .chat import chat_endpoint
from .logs import route_to_stdlib
from .connections import SessionSlots
from .loopwatch import LoopWatch
from .metrics import Metrics, metrics_endpoint, readyz
from .moderation import Moderation, routes as moderation_routes
from .outage import OutageMiddleware
from .config import Settings, mcp_email_environment
from .resume import MemoryResume, RedisResume
from .static import client_folder, web_routes
from . import rights
from .voice import realtime_endpoint

log = logging.getLogger("tutor")
SAMPLE_COURSE = Path(__file__).resolve().parent.parent / "rag" / "sample_course"
SAMPLE_COURSE_NAME = "sample"


def session_config(settings: Settings, turn_model: bool = False) -> SessionConfig:
    """The server's default session config; `turn_model`: an end-of-turn model is loaded
    (semantic_vad, and the default turn detection `TUTOR_TURN_DETECTION` may be it)."""
    vad = TurnDetection(
        type="semantic_vad" if turn_model and settings.turn_detection == "semantic_vad"
        else "server_vad",
        threshold=settings.vad_threshold,
        prefix_padding_ms=settings.vad_prefix_padding_ms,
        silence_duration_ms=settings.vad_silence_ms,
    )
    return SessionConfig(
        instructions=settings.instructions or TUTOR_INSTRUCTIONS,
        model=settings.llm_model,
        input_rate=settings.input_sample_rate,
        input_format=AudioFormat("audio/pcm", settings.input_sample_rate),
        turn_detection=vad,
        default_turn_detection=vad,
        transcription_model=settings.transcription_model,
        min_speech_ms=settings.vad_min_speech_ms,
        max_turn_ms=settings.max_turn_ms,
        history_messages=settings.history_messages,
        voice=settings.tts_voice,
        echo_guard_ms=settings.echo_guard_ms,
        echo_persist_ms=settings.echo_persist_ms,
        audio_lead_ms=settings.audio_lead_ms,
        audio_burst_ms=settings.audio_burst_ms,
        max_message_bytes=settings.max_message_bytes,
        speculative_pause_ms=settings.speculative_pause_ms if settings.speculative else 0,
        speculative_max_per_turn=settings.speculative_max_per_turn,
        speculative_budget=settings.speculative_budget,
        semantic_pause_ms=settings.semantic_pause_ms,
        turn_model=turn_model,
        idle_timeout_s=settings.session_idle_timeout_s,
    )


def api_key(key: str | None, base_url: str | None) -> str | None:
    """A local OpenAI-compatible server needs no key, but the SDK wants a non-empty string."""
    return key or ("unused" if base_url else None)


def provider_client(settings: Settings, key: str, base_url: str | None):  # type: ignore[no-untyped-def]
    """One SDK client with the configured timeouts and retries (never the SDK's defaults)."""
    return make_client(api_key=key, base_url=base_url, timeout=settings.provider_timeout_s,
                       connect_timeout=settings.provider_connect_timeout_s,
                       max_retries=settings.provider_max_retries)


def build_providers(settings: Settings) -> tuple[Providers, list]:
    """OpenAI-compatible providers from settings; also returns the clients to close."""
    clients = []
    transcriber = chat = speech = None
    missing = []
    stt_key = api_key(settings.openai_api_key, settings.openai_base_url)
    if stt_key:
        stt_client = provider_client(settings, stt_key, settings.openai_base_url)
        clients.append(stt_client)
        transcriber = OpenAITranscriber(stt_client, settings.transcription_model)
        speech = OpenAISpeech(stt_client, settings.tts_model, settings.tts_voice)
    else:
        missing.append("transcription needs OPENAI_API_KEY (and OPENAI_BASE_URL for a "
                       "compatible server other than OpenAI)")
    if settings.chat_api_key:
        if settings.chat_base_url == settings.openai_base_url and transcriber is not None \
                and settings.chat_api_key == stt_key:
            chat_client = clients[0]  # same endpoint, same key: share the connection pool
        else:
            chat_client = provider_client(settings, settings.chat_api_key, settings.chat_base_url)
            clients.append(chat_client)
        chat = OpenAIChatModel(chat_client, settings.llm_model, settings.llm_max_tokens)
    else:
        missing.append("answers need OPENAI_API_KEY, or LLM_BASE_URL (+ LLM_API_KEY, LLM_MODEL) "
                       "for OpenRouter or a local OpenAI-compatible server")
    problem = ("No AI provider is configured: " + "; ".join(missing) + ".") if missing else None
    return Providers(transcriber, chat, problem, speech, moderator_for(settings, clients),
                     turn_model_for(settings)), clients


def turn_model_for(settings: Settings) -> TurnModel | None:
    """The end-of-turn model (`TUTOR_TURN_MODEL`), loaded once per process; None when it is
    off or not installed (semantic_vad then ends turns on silence, as its eagerness maps it)."""
    if settings.turn_model == "off":
        return None
    model = smart_turn.load()
    if model is None:
        log.warning("semantic_vad has no end-of-turn model: the pipecat-ai wheel that ships "
                    "smart-turn v3 is not installed (make installs it; see README)")
    return model


def moderator_for(settings: Settings, clients: list) -> OpenAIModerator | None:
    """The moderation provider when moderation is on (`Settings.moderation_on`); its client
    joins `clients` (to close)."""
    if not settings.moderation_on:
        return None
    base_url = settings.moderation_base_url or settings.openai_base_url
    key = api_key(settings.moderation_api_key or settings.openai_api_key, base_url)
    if key is None:
        log.warning("moderation is on but has no key (TUTOR_MODERATION_API_KEY or "
                    "OPENAI_API_KEY): it stays off")
        return None
    client = provider_client(settings, key, base_url)
    clients.append(client)
    return OpenAIModerator(client, settings.moderation_model, settings.moderation_timeout_s)


def open_moderation(settings: Settings, providers: Providers, db: Database, spool: Spool,
                    metrics: Metrics, stack: AsyncExitStack) -> Moderation | None:
    """Moderation, when a provider offers it: its flags go through their own background writer."""
    if providers.moderator is None:
        return None
    policy = Policy(fail_closed=settings.moderation_on_failure == "closed",
                    urgent=frozenset(settings.moderation_urgent_categories),
                    help_resources=settings.moderation_help_resources)
    moderation = Moderation(providers.moderator, policy, db=db, metrics=metrics,
                            flags=open_writer(db, spool, stack, FlaggedTurn))
    stack.push_async_callback(moderation.settle)
    return moderation


async def healthz(request: Request) -> JSONResponse:
    state = services(request)
    providers = state.providers
    return JSONResponse({
        "status": "ok",
        "transcription": providers.transcriber is not None,
        "chat": providers.chat is not None,
        "moderation": providers.moderator is not None,
        "turn_model": providers.turn_model.name if providers.turn_model is not None else None,
        # which process answered (one of `tutor serve --workers N`'s), and its voice sessions
        "pid": os.getpid(),
        "sessions": len(state.runners),
    })


async def open_storage(settings: Settings, stack: AsyncExitStack) -> Database:
    db = Database(settings.database, statement_timeout_s=settings.database_timeout_s,
                  connect_timeout_s=settings.database_connect_timeout_s,
                  pool_timeout_s=settings.database_pool_timeout_s,
                  **({} if settings.database.startswith("sqlite")
                     else {"pool_size": settings.database_pool_size}))
    stack.push_async_callback(db.close)
    if settings.auto_migrate:
        await asyncio.to_thread(migrate, db.url)  # Alembic is synchronous
    return db


def open_redis(settings: Settings, stack: AsyncExitStack):  # type: ignore[no-untyped-def]
    if not settings.redis_url:
        return None
    import redis.asyncio as redis

    client = redis.from_url(settings.redis_url, **redis_options(settings))
    stack.push_async_callback(client.aclose)
    return client


def redis_options(settings: Settings) -> dict:  # type: ignore[type-arg]
    """Every Redis client's bounds: a command or a connection that takes longer fails (the
    callers fail open, or refuse with a retryable error). One immediate retry on a broken
    connection (a restarted Redis), none on a timeout: redis-py's default of 10 retries with
    backoff would turn one hung Redis into a minute's wait."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    return dict(socket_timeout=settings.redis_timeout_s,
                socket_connect_timeout=settings.redis_connect_timeout_s,
                retry_on_timeout=False,
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))


async def open_accounts(settings: Settings, db: Database, redis_client,  # type: ignore[no-untyped-def]
                        stack: AsyncExitStack) -> Authenticator:
    tickets = RedisTickets(redis_client) if redis_client is not None else MemoryTickets()
    supabase = None
    if settings.supabase_url or settings.supabase_jwt_secret:
        supabase = (SupabaseVerifier.from_project_url(settings.supabase_url,
                                                      settings.supabase_jwt_secret)
                    if settings.supabase_url else
                    SupabaseVerifier(jwks_url=None, issuer=None,
                                     legacy_secret=settings.supabase_jwt_secret))
        stack.push_async_callback(supabase.aclose)
    if settings.guest_allowed:
        log.warning("DEV MODE: no sign-in is configured and the server listens on loopback only, "
                    "so every caller is the local guest user. Configure Google or Supabase "
                    "sign-in before exposing this server.")
    return Authenticator(db, supabase=supabase, tickets=tickets,
                         guest_allowed=settings.guest_allowed,
                         allowed_origins=settings.allowed_origins,
                         session_max_age_s=settings.session_max_age_s)


LEDGER_GATHER_S = 1.0  # the usage ledger's writer collects rows this long before an INSERT


def open_writer(db: Database, spool: Spool, stack: AsyncExitStack,
                model: type[Base] = Interaction, gather_s: float = 0.0) -> InteractionWriter:
    """A background writer through the spool; stopped (flushed) before the spool closes."""
    writer = InteractionWriter(db, model=model, spool=spool, gather_s=gather_s)
    writer.start()
    stack.push_async_callback(writer.stop)
    return writer


def open_billing(settings: Settings, db: Database, redis_client,  # type: ignore[no-untyped-def]
                 spool: Spool, stack: AsyncExitStack) -> tuple[Billing, InteractionWriter]:
    """The billing service, and the background writer of its usage ledger."""
    catalog = TierCatalog.load(settings.tiers_file, settings.stripe_prices)
    # the voice charges (one a second per session) reach the database in batches: each row
    # is durable in the spool at once, and the ledger is read later (usage, invoices)
    ledger = open_writer(db, spool, stack, UsageEntry, gather_s=LEDGER_GATHER_S)
    quotas = RedisQuotas(redis_client) if redis_client is not None else MemoryQuotas()
    limiter = RequestLimiter(storage_for(settings.redis_url, **redis_options(settings)))
    billing = Billing(db, catalog, quotas, limiter,
                      ledger=ledger.submit, anonymous_rpm=settings.anonymous_rpm,
                      meter_step_ms=settings.quota_step_ms, default_model=settings.llm_model,
                      large_model=settings.llm_model_large,
                      guest_tier=catalog.guest_plan(settings.guest_tier,
                                                    dev_mode=settings.guest_allowed))
    return billing, ledger


def open_payments(settings: Settings, billing: Billing,  # type: ignore[no-untyped-def]
                  stack: AsyncExitStack) -> StripeBilling | None:
    if not settings.stripe_api_key:
        return None
    payments = StripeBilling(billing, api_key=settings.stripe_api_key,
                             webhook_secret=settings.stripe_webhook_secret,
                             api_base=settings.stripe_api_base,
                             tolerance_s=settings.stripe_webhook_tolerance_s,
                             grace_days=settings.payment_grace_days,
                             timeout_s=settings.provider_timeout_s,
                             public_url=settings.public_url)
    stack.push_async_callback(payments.aclose)
    return payments


def email_transport(settings: Settings) -> Transport:
    if settings.email_transport == "smtp":
        return SmtpTransport(settings.smtp_host, settings.smtp_port,
                             username=settings.smtp_username, password=settings.smtp_password,
                             starttls=settings.smtp_starttls, use_tls=settings.smtp_tls,
                             timeout_s=settings.email_timeout_s)
    if settings.email_transport == "mcp":
        import shlex

        from notify.mcp_client import McpEmailTransport
        if not (settings.email_mcp_url or settings.email_mcp_command):
            raise ValueError("TUTOR_EMAIL_TRANSPORT=mcp needs TUTOR_EMAIL_MCP_URL or "
                             "TUTOR_EMAIL_MCP_COMMAND")
        return McpEmailTransport(
            url=settings.email_mcp_url,
            command=shlex.split(settings.email_mcp_command) if settings.email_mcp_command
            else None, env=mcp_email_environment(), tool=settings.email_mcp_tool,
            timeout_s=settings.email_timeout_s)
    if settings.email_transport != "log":
        raise ValueError(f"TUTOR_EMAIL_TRANSPORT must be log, smtp or mcp, "
                         f"not {settings.email_transport!r}")
    return LogTransport()


def public_base_url(settings: Settings) -> str:
    scheme = "https" if settings.ssl_certfile else "http"
    return (settings.public_url or f"{scheme}://{settings.host}:{settings.port}").rstrip("/")


def outbox_worker(settings: Settings, db: Database, link_secret: str, stack: AsyncExitStack,
                  *, summaries: bool = True) -> OutboxWorker:
    """The email outbox worker (not started), with its transport, and the weekly summaries as
    its periodic job unless `summaries` is off: the server's and `tutor worker`'s."""
    transport = email_transport(settings)
    stack.push_async_callback(transport.aclose)
    config = WorkerConfig(sender=settings.email_from, base_url=public_base_url(settings),
                          link_secret=link_secret, poll_s=settings.email_poll_s,
                          lease_s=settings.email_lease_s,
                          retry_base_s=settings.email_retry_base_s,
                          max_attempts=settings.email_max_attempts)

    async def weekly() -> None:
        start, _ = last_full_week(utcnow())
        await queue_weekly_summaries(db, start)

    return OutboxWorker(db, transport, Renderer(), config,
                        periodic=weekly if summaries else None)


def open_email(settings: Settings, db: Database, billing: Billing, link_secret: str,
               stack: AsyncExitStack) -> OutboxWorker:
    worker = outbox_worker(settings, db, link_secret, stack)
    billing.on_voice_threshold = quota_notifier(
        db, upgrade_url=public_base_url(settings) + "/?upgrade=1")
    billing.warning_percent = settings.email_quota_warning_percent
    if settings.email_worker:
        worker.start()
        stack.push_async_callback(worker.stop)
    return worker


def embedder_for(settings: Settings, stack: AsyncExitStack,
                 clients: list | None = None) -> OpenAIEmbedder | None:
    """`clients`: the providers' clients (`build_providers`); one with the same endpoint and
    key is shared (one connection pool per provider, not one per capability)."""
    base_url = settings.embedding_base_url or settings.openai_base_url
    key = api_key(settings.embedding_api_key or settings.openai_api_key, base_url)
    if not key:
        return None  # retrieval is then full-text only
    client = next((c for c in clients or () if _same_endpoint(c, key, base_url)), None)
    if client is None:
        client = provider_client(settings, key, base_url)
        stack.push_async_callback(client.close)
    return OpenAIEmbedder(client, settings.embedding_model, settings.embedding_batch_size)


def _same_endpoint(client, key: str, base_url: str | None) -> bool:  # type: ignore[no-untyped-def]
    """Whether an SDK client talks to `base_url` (None: OpenAI's) with `key`."""
    wanted = (base_url or "https://api.openai.com/v1").rstrip("/")
    return client.api_key == key and str(client.base_url).rstrip("/") == wanted


def parser_for(settings: Settings, stack: AsyncExitStack) -> Parser:
    """Where every ingestion reads documents: worker processes (started on first use) with the
    document caps, memory limit and timeout of the settings."""
    limits = Limits(max_bytes=settings.rag_max_document_bytes,
                    max_pages=settings.rag_max_pdf_pages,
                    max_chars=settings.rag_max_document_chars,
                    max_chunks=settings.rag_max_document_chunks,
                    chunk_chars=settings.rag_chunk_chars,
                    overlap_chars=settings.rag_chunk_overlap_chars)
    parser = Parser(limits, workers=settings.rag_ingest_workers,
                    memory_bytes=settings.rag_ingest_memory_mb * 1024 * 1024 or None,
                    timeout_s=settings.rag_ingest_timeout_s)
    stack.callback(parser.close)
    return parser


async def open_knowledge(settings: Settings, db: Database, redis_client,  # type: ignore[no-untyped-def]
                         parser: Parser, stack: AsyncExitStack,
                         clients: list | None = None) -> Retriever:
    cache = RedisQueryCache(redis_client) if redis_client is not None else MemoryQueryCache()
    mirror = None
    if settings.rag_course_mirror:
        mirror = CourseMirror(db, check_s=settings.rag_course_check_s)
        stack.push_async_callback(mirror.stop)
    reader = SqliteReader.for_url(db.url)
    if reader is not None:
        stack.callback(reader.close)
    retriever = Retriever(db, embedder_for(settings, stack, clients), vectors=VectorIndex(),
                          query_cache=cache, mirror=mirror, reader=reader)
    if settings.load_sample_course:
        await load_sample_course(retriever, parser)
    if mirror is not None:
        await mirror.refresh()  # built before the first turn, not by it
        mirror.start()
    return retriever


async def load_sample_course(retriever: Retriever, parser: Parser) -> None:
    """So a new server can answer about something at once; unchanged files cost nothing."""
    args = dict(parser=parser, paths=[SAMPLE_COURSE], course=SAMPLE_COURSE_NAME)
    results = await ingest_paths(retriever.db, retriever.embedder, **args)
    if retriever.embedder is not None and any(isinstance(r, IngestError) for r in results):
        log.warning("sample course: embedding failed; loading it for full-text search only")
        await ingest_paths(retriever.db, None, **args)
    await retriever.vectors.refresh(retriever.db, SAMPLE_COURSE_NAME)


def open_loopwatch(settings: Settings, metrics: Metrics, stack: AsyncExitStack
                   ) -> LoopWatch | None:
    """The event loop's lag, measured for the app's lifetime (off with an interval of 0)."""
    if settings.loop_watch_interval_ms <= 0:
        return None
    watch = LoopWatch(metrics.loop_lag, settings.loop_watch_interval_ms / 1000)
    watch.start()
    stack.push_async_callback(watch.stop)
    return watch


async def open_services(settings: Settings, providers: Providers | None, link_secret: str,
                        stack: AsyncExitStack) -> Services:
    """Everything the routes and sockets share, opened in order and closed by `stack` in
    reverse: `providers` given (tests, the benchmark) or built from the settings."""
    clients: list = []
    if providers is None:
        providers, clients = build_providers(settings)
        for client in clients:
            stack.push_async_callback(client.close)
        if clients:
            await warm_up()
    if providers.problem:
        # where a newcomer looks first: the log, before any turn has failed
        log.warning("%s Voice sessions open but cannot transcribe or answer until it is "
                    "set (in the environment or .env) and the server restarted.",
                    providers.problem)
    db = await open_storage(settings, stack)
    spool = await Spool.open(settings.spool)
    stack.push_async_callback(spool.close)
    writer = open_writer(db, spool, stack)
    redis_client = open_redis(settings, stack)
    auth = await open_accounts(settings, db, redis_client, stack)
    billing, usage_writer = open_billing(settings, db, redis_client, spool, stack)
    payments = open_payments(settings, billing, stack)
    email_worker = open_email(settings, db, billing, link_secret, stack)
    parser = parser_for(settings, stack)
    retriever = await open_knowledge(settings, db, redis_client, parser, stack, clients)

    def knowledge(course: str | None):  # type: ignore[no-untyped-def]
        async def lookup(question: str, user_id: str | None) -> Grounding:
            return await ground(retriever, question, course=course, user_id=user_id,
                                k=settings.rag_top_k, memory_k=settings.rag_memory_k,
                                wait_for_embedding=settings.rag_wait_for_embedding,
                                budget_s=settings.rag_retrieval_budget_s)
        return lookup

    metrics = Metrics()
    billing.on_store_failure = metrics.quota_store_failures.inc
    return Services(
        loopwatch=open_loopwatch(settings, metrics, stack),
        settings=settings, providers=providers,
        session_config=session_config(settings, providers.turn_model is not None),
        db=db, spool=spool, writer=writer, redis=redis_client, metrics=metrics,
        moderation=open_moderation(settings, providers, db, spool, metrics, stack),
        slots=SessionSlots(settings.max_sessions_per_address, settings.max_sessions_per_user),
        auth=auth,
        resume=RedisResume(redis_client) if redis_client is not None else MemoryResume(),
        billing=billing, usage_writer=usage_writer, payments=payments,
        email_link_secret=link_secret, email_worker=email_worker, parser=parser,
        retriever=retriever, knowledge=knowledge, tutors=CourseTutors(db),
        secret_box=SecretBox(settings.secret_keys) if settings.secret_keys else None,
        oauth=(google_oauth(client_id=settings.google_client_id,
                            client_secret=settings.google_client_secret or "",
                            discovery_url=settings.google_discovery_url)
               if settings.google_client_id else None))


def create_app(settings: Settings | None = None, *, providers: Providers | None = None) -> Starlette:
    settings = settings or Settings()
    route_to_stdlib()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            app.state.services = await open_services(settings, providers, link_secret, stack)
            yield

    session_secret = settings.session_secret or secrets.token_urlsafe(32)
    link_secret = settings.email_link_secret or session_secret
    if not settings.session_secret:
        log.info("TUTOR_SESSION_SECRET is not set: sign-in cookies last until the server restarts")
    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            Route("/api/ai/chat", chat_endpoint, methods=["POST"]),
            *study_ai_routes.routes,  # /api/ai/quiz (and its answers), /api/ai/summary
            WebSocketRoute("/api/voice", realtime_endpoint),
            WebSocketRoute("/v1/realtime", realtime_endpoint),
            *account_routes.routes,
            *invitation_routes.routes,
            *rights.routes,
            *moderation_routes,  # /api/classes/{id}/flags
            *rag_routes.routes,
            *billing_routes.routes,
            *email_routes.routes,
            *notes_routes,
            *tutor_routes,  # /api/courses/{course}/tutor
            *report_routes,  # /api/classes/{id}/report
            # last, so that every API route wins: the browser client
            *web_routes(client_folder(), watch=settings.loopback_only),  # `/` and `/web/...`, content-hashed (server/static.py)
        ],
        middleware=[Middleware(OutageMiddleware),  # outermost: sees every outage as it leaves
                    Middleware(SessionMiddleware, secret_key=session_secret,
                               session_cookie="tutor_session", max_age=settings.session_max_age_s,
                               same_site="lax", https_only=settings.cookie_secure),
                    Middleware(RequestLimitMiddleware)],
        exception_handlers=HANDLERS,
        lifespan=lifespan,
    )
