"""Settings, from environment variables and `.env`; the only module that reads the environment.

Our own settings use the `TUTOR_` prefix. The provider keys follow the conventions people already
have set: `OPENAI_API_KEY` / `OPENAI_BASE_URL` for everything, and `LLM_BASE_URL` /
`LLM_API_KEY` / `LLM_MODEL` to send chat (only) elsewhere, e.g. OpenRouter or a local server.
"""

from __future__ import annotations

import os
from typing import Literal

from ipaddress import ip_address
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated


def _split(value: object) -> object:
    return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TUTOR_", env_file=".env", extra="ignore", populate_by_name=True
    )

    host: str = "127.0.0.1"
    port: int = 8000
    # TLS in uvicorn itself, so wss:// and https:// work without a proxy (also --ssl-certfile/-keyfile)
    ssl_certfile: Path | None = None  # PEM certificate chain
    ssl_keyfile: Path | None = None  # PEM private key (omit if it is in the certificate file)
    log_format: str = "auto"  # json | console | auto (console on a terminal, else JSON lines)

    # Providers
    openai_api_key: str | None = Field(None, validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key"))
    openai_base_url: str | None = Field(None, validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url"))
    llm_api_key: str | None = Field(None, validation_alias=AliasChoices("LLM_API_KEY", "llm_api_key"))
    llm_base_url: str | None = Field(None, validation_alias=AliasChoices("LLM_BASE_URL", "llm_base_url"))
    llm_model: str = Field("gpt-4o-mini", validation_alias=AliasChoices("LLM_MODEL", "llm_model"))
    llm_max_tokens: int | None = 400
    transcription_model: str = "gpt-4o-mini-transcribe"
    tts_model: str = "gpt-4o-mini-tts"  # spoken answers (audio.speech, PCM), on OPENAI_BASE_URL
    tts_voice: str = "alloy"  # a plan's tts_voice, then the session's audio.output.voice, win
    echo_guard_ms: int = 400  # speech starting this soon after the tutor starts speaking...
    echo_persist_ms: int = 300  # ...counts only if it goes on this much longer
    audio_lead_ms: int = 300  # spoken answers go out at playback pace, this far ahead
    shutdown_drain_s: float = 30.0  # on SIGTERM, answers in progress get this long to finish
    resume_ttl_s: float = 120.0  # a dropped session can be resumed this long (tutor.session.resumable)
    provider_timeout_s: float = 20.0  # per request; for a stream, the longest wait for the next bytes
    provider_connect_timeout_s: float = 3.0
    provider_max_retries: int = 1

    # Sessions
    instructions: str | None = None  # None: dialogue.prompts.TUTOR_INSTRUCTIONS
    history_messages: int = 20
    input_sample_rate: int = 24000  # the Realtime default; clients may choose 16000
    vad_threshold: float = 0.5
    vad_silence_ms: int = 600
    vad_prefix_padding_ms: int = 300
    vad_min_speech_ms: int = 200
    # Speculative turn ends (docs/protocol.md §9): a pause this long (at most half of
    # vad_silence_ms) starts transcription, and a held answer, before the turn is surely over.
    # Plans without the "speculative" feature, and sessions that turn it off, never speculate.
    speculative: bool = True
    # A session's answers before the client says (`output_modalities`): "auto" speaks them when
    # the plan includes spoken answers and a speech provider is configured (OpenAI's default),
    # "text" writes them unless a client asks for audio.
    output_modalities: Literal["auto", "text"] = "auto"
    speculative_pause_ms: int = 200
    speculative_max_per_turn: int = 2  # guesses per turn
    speculative_budget: float = 0.5  # discarded guesses per session ≤ budget × turns + 2
    max_turn_ms: int = 30000
    # Audio may arrive ahead of real time by this much (network jitter, client buffering); more
    # than that is refused, so one client cannot make the server do minutes of VAD per second.
    audio_burst_ms: int = 3000
    max_message_bytes: int = 256 * 1024  # larger messages get a `message_too_large` error event
    ws_max_size: int = 1024 * 1024  # hard cap in the WebSocket layer: larger closes with 1009
    # a REST request's JSON body: larger is refused (413 body_too_large) before it is read in full
    max_json_bytes: int = 1024 * 1024
    # events of one session waiting for a client that does not read: past this, the session
    # ends (`slow_consumer`, close 1008) and its backlog is freed
    ws_outbox_max_bytes: int = 4 * 1024 * 1024
    # Connection limits (docs/operations.md "Timeouts and connection caps")
    http_head_timeout_s: float = 10.0  # a connection's request head must be complete this soon
    http_keep_alive_s: int = 5  # an idle kept-alive HTTP connection is closed after this
    http_max_connections_per_address: int | None = 256  # open HTTP connections of one peer
    ws_ping_interval_s: float | None = 20.0  # WebSocket pings (None: off)...
    ws_ping_timeout_s: float | None = 20.0  # ...and a peer that does not answer one is dropped
    session_idle_timeout_s: float | None = 300.0  # no client message this long ends a session
    max_sessions_per_address: int | None = 200  # open voice sessions from one client address
    # Of one account, on top of its plan's max_concurrent_sessions; off by default, because the
    # plans with no cap (staff, load tests, the shared dev guest) are meant to have none.
    max_sessions_per_user: int | None = None

    # Storage
    data_dir: Path = Path("data")
    database_url: str | None = None  # default: SQLite file data_dir/tutor.db
    # the write-ahead spool of accepted turns and usage rows (store/spool.py); default
    # data_dir/spool.db. Local disk, kept across restarts, one per server process.
    spool_file: Path | None = None
    auto_migrate: bool = True  # bring the schema up to date at startup
    redis_url: str | None = None  # shared tickets (and later caches, quotas) across processes
    # Bounds on every wait for the database and Redis (docs/operations.md, "Timeouts"): a service
    # that stops answering fails the call (a live turn answers without retrieval, a socket open
    # is refused with `service_unavailable` and close 1013, a REST call gets 503) instead of
    # holding it for good.
    database_timeout_s: float = 5.0  # one PostgreSQL statement; a hung connection costs ≤ 2×
    database_connect_timeout_s: float = 5.0  # opening a PostgreSQL connection
    database_pool_timeout_s: float = 5.0  # waiting for a free pooled connection (any database)
    redis_timeout_s: float = 1.0  # one Redis command (tickets, quotas, limits, resume, cache)
    redis_connect_timeout_s: float = 1.0  # opening a Redis connection

    # Sign-in
    session_secret: str | None = None  # signs the session cookie; random per process if unset
    cookie_secure: bool = False  # set true behind HTTPS
    session_max_age_s: int = 14 * 24 * 3600
    secret_keys: str | None = None  # comma-separated Fernet keys for secrets at rest; first encrypts
    google_client_id: str | None = None
    google_client_secret: str | None = None
    google_discovery_url: str = "https://accounts.google.com/.well-known/openid-configuration"
    public_url: str | None = None  # e.g. https://tutor.example.com, for OAuth redirect URIs
    supabase_url: str | None = None  # https://<project>.supabase.co: JWKS and issuer
    supabase_jwt_secret: str | None = None  # legacy HS256 shared secret, if the project uses it
    api_token_ttl_days: int = 90
    ticket_ttl_s: float = 60.0
    # Origins allowed to open the voice socket with a ticket (browsers); empty: same host only
    allowed_origins: Annotated[list[str], NoDecode] = []
    dev_guest: bool | None = None  # None: on when no sign-in is configured and bound to loopback

    # Course knowledge (RAG)
    embedding_model: str = "text-embedding-3-small"
    embedding_base_url: str | None = None  # default: OPENAI_BASE_URL
    embedding_api_key: str | None = None  # default: OPENAI_API_KEY
    embedding_batch_size: int = 64
    rag_max_document_bytes: int = 10 * 1024 * 1024
    # Caps on what one document may become (docs/rag.md): refused with document_too_large
    rag_max_pdf_pages: int = 1000  # counted before any page is read
    rag_max_document_chars: int = 2_000_000  # of extracted text
    rag_max_document_chunks: int = 4000
    # Documents are read in worker processes (rag/worker.py), each with this much address space
    # and this long per document; past either, the worker is replaced and the upload refused.
    rag_ingest_workers: int = 1
    rag_ingest_memory_mb: int = 1024
    rag_ingest_timeout_s: float = 60.0
    rag_chunk_chars: int = 900
    rag_chunk_overlap_chars: int = 150
    rag_top_k: int = 4
    rag_memory_k: int = 3  # the student's own earlier turns retrieved with each question
    # False: a question whose embedding is not cached yet is ranked by full-text alone and
    # embedded just after (an embedding is a provider round trip, often 100-300 ms, and ~2 ms of
    # SDK work on the event loop: far more than the few ms retrieval may add to a turn).
    rag_wait_for_embedding: bool = False
    # A live turn waits this long for its retrieval (passages and memory, from the database and
    # Redis); what has not come by then is left out of that answer, and `tutor.response.metrics`
    # says `"retrieval": "timed_out"`
    rag_retrieval_budget_s: float = 1.0
    default_course: str | None = None  # course a session uses when it names none
    load_sample_course: bool = True  # ingest rag/sample_course at startup (skipped if unchanged)

    # Tiers, quotas and payments (billing/; docs/billing.md)
    tiers_file: Path | None = None  # JSON plans; default: billing.tiers.DEFAULT_TIERS
    llm_model_large: str = Field("gpt-4o", validation_alias=AliasChoices("LLM_MODEL_LARGE",
                                                                         "llm_model_large"))
    guest_tier: str | None = None  # the dev guest's plan; None: the plan with every feature
    anonymous_rpm: int | None = 60  # requests a minute per address before sign-in
    quota_step_ms: int = 1000  # voice is charged to the shared counters in steps of this much
    stripe_api_key: str | None = Field(None, validation_alias=AliasChoices(
        "STRIPE_API_KEY", "STRIPE_SECRET_KEY", "stripe_api_key"))
    stripe_webhook_secret: str | None = Field(None, validation_alias=AliasChoices(
        "STRIPE_WEBHOOK_SECRET", "stripe_webhook_secret"))
    stripe_api_base: str | None = None  # default: Stripe's; tests point it at a loopback fake
    # tier=price pairs, e.g. "pro=price_123,school=price_456"
    stripe_prices: Annotated[dict[str, str], NoDecode] = {}
    stripe_webhook_tolerance_s: int = 300
    payment_grace_days: float = 7.0  # a paid plan survives a failed payment this long

    # Email (notify/; docs/email.md)
    email_transport: str = "log"  # log | smtp | mcp
    email_from: str = "Tutor <tutor@localhost>"
    email_link_secret: str | None = None  # signs unsubscribe links; default: TUTOR_SESSION_SECRET
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool | None = None  # None: upgrade when the server offers it
    smtp_tls: bool = False  # implicit TLS (port 465)
    email_mcp_url: str | None = None  # the email tool server, streamable HTTP (…/mcp)
    email_mcp_command: str | None = None  # or spawned over stdio, e.g. "tutor mcp-email"
    email_mcp_tool: str = "send_email"
    email_timeout_s: float = 60.0  # one send (SMTP or the MCP tool call)
    email_worker: bool = True  # run the outbox worker in this process
    email_poll_s: float = 2.0
    email_max_attempts: int = 8
    email_retry_base_s: float = 30.0
    email_lease_s: float = 120.0
    email_quota_warning_percent: int = 80

    @property
    def sign_in_configured(self) -> bool:
        return bool(self.google_client_id or self.supabase_url or self.supabase_jwt_secret)

    @property
    def loopback_only(self) -> bool:
        try:
            return ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    @property
    def guest_allowed(self) -> bool:
        if self.dev_guest is not None:
            return self.dev_guest and self.loopback_only
        return not self.sign_in_configured and self.loopback_only

    @property
    def database(self) -> str:
        """The database to use: TUTOR_DATABASE_URL, else the SQLite file in the data dir."""
        from store.db import sqlite_url

        return self.database_url or sqlite_url(self.data_dir)

    @property
    def spool(self) -> Path:
        return self.spool_file or self.data_dir / "spool.db"

    @property
    def chat_api_key(self) -> str | None:
        # A local server (Ollama, vLLM) needs no key, but the SDK wants a non-empty string.
        key = self.llm_api_key or self.openai_api_key
        return key or ("unused" if self.llm_base_url else None)

    @property
    def chat_base_url(self) -> str | None:
        return self.llm_base_url or self.openai_base_url


    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        return _split(value)

    @field_validator("stripe_prices", mode="before")
    @classmethod
    def _prices(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        pairs = [item.split("=", 1) for item in _split(value)]  # type: ignore[union-attr]
        if any(len(p) != 2 for p in pairs):
            raise ValueError("TUTOR_STRIPE_PRICES must be tier=price pairs separated by commas")
        return {k.strip(): v.strip() for k, v in pairs}


class McpEmailSettings(BaseSettings):
    """`tutor mcp-email`'s settings (notify.mcp_server): the SMTP server it relays to, the
    default sender and its journal. The same variables as the tutor's, with the tool server's own
    defaults (port 25, no default sender); read from the environment only, as the tutor passes
    them to the process it spawns. A variable set but empty counts as unset."""

    model_config = SettingsConfigDict(env_prefix="TUTOR_", extra="ignore", env_ignore_empty=True)

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool | None = None  # None: upgrade when the server offers it
    smtp_tls: bool = False  # implicit TLS (port 465)
    smtp_timeout_s: float = 30.0
    email_from: str | None = None  # the sender when a call names none
    mcp_email_journal: Path = Path("data/mcp-email.db")  # the keys already sent


# The variables McpEmailSettings reads.
MCP_EMAIL_VARIABLES = ("TUTOR_SMTP_", "TUTOR_EMAIL_FROM", "TUTOR_MCP_EMAIL_")


def mcp_email_environment() -> dict[str, str]:
    """What a `tutor mcp-email` spawned over stdio is given of this process's environment: the
    variables of `McpEmailSettings` (the MCP SDK passes only HOME, PATH and the like on)."""
    return {k: v for k, v in os.environ.items() if k.startswith(MCP_EMAIL_VARIABLES)}
