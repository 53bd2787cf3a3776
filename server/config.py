"""Settings, from environment variables and `.env`; the only module that reads the environment.

Our own settings use the `TUTOR_` prefix. The provider keys follow the conventions people already
have set: `OPENAI_API_KEY` / `OPENAI_BASE_URL` for everything, and `LLM_BASE_URL` /
`LLM_API_KEY` / `LLM_MODEL` to send chat (only) elsewhere, e.g. OpenRouter or a local server.
"""

from __future__ import annotations

import os
from ipaddress import ip_address
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated


def _split(value: object) -> object:
    return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value


class Settings(BaseSettings):
    """The settings of `tutor serve` and of the other `tutor` commands.

    Each attribute's docstring is its description: the configuration reference
    (docs/configuration.md) is generated from this class (`tutor config --markdown`)."""

    model_config = SettingsConfigDict(
        env_prefix="TUTOR_", env_file=".env", extra="ignore", populate_by_name=True,
        use_attribute_docstrings=True,
    )

    host: str = "127.0.0.1"
    """Address to listen on (also `tutor serve --host`); off loopback, the dev guest is off."""
    port: int = 8000
    """Port to listen on (also `tutor serve --port`)."""
    workers: str = "1"
    """Server processes sharing the port (also `tutor serve --workers`): a number, or `auto`, one
    per usable CPU. More than 1 needs `TUTOR_REDIS_URL` and PostgreSQL, like several machines
    (docs/deploy.md, "Several processes on one machine")."""
    ssl_certfile: Path | None = None
    """PEM certificate chain: serve `https://` and `wss://` from uvicorn itself, no proxy needed
    (also `tutor serve --ssl-certfile`)."""
    ssl_keyfile: Path | None = None
    """PEM private key; omit it when the key is in the certificate file (also `--ssl-keyfile`)."""
    log_format: str = "auto"
    """`json` lines, `console`, or `auto` (console on a terminal, else JSON lines)."""

    # Providers
    openai_api_key: str | None = Field(None, validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key"))
    """Key for transcription, chat, speech and embeddings (chat: unless `LLM_API_KEY`)."""
    openai_base_url: str | None = Field(None, validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url"))
    """Any OpenAI-compatible endpoint; default: OpenAI's. Transcription needs
    `/audio/transcriptions` (OpenAI, or a local Whisper server such as speaches)."""
    llm_api_key: str | None = Field(None, validation_alias=AliasChoices("LLM_API_KEY", "llm_api_key"))
    """Key for chat only, e.g. OpenRouter's (a local server needs none)."""
    llm_base_url: str | None = Field(None, validation_alias=AliasChoices("LLM_BASE_URL", "llm_base_url"))
    """Send chat (only) elsewhere: OpenRouter, or a local Ollama, vLLM or llama.cpp server."""
    llm_model: str = Field("gpt-4o-mini", validation_alias=AliasChoices("LLM_MODEL", "llm_model"))
    """The chat model."""
    llm_max_tokens: int | None = 400
    """Cap per answer (answers are meant to be spoken)."""
    transcription_model: str = "gpt-4o-mini-transcribe"
    """Per session: `audio.input.transcription.model`."""
    tts_model: str = "gpt-4o-mini-tts"
    """Spoken answers (`audio.speech`, PCM 24 kHz), on `OPENAI_BASE_URL`."""
    tts_voice: str = "alloy"
    """The voice; a plan's `tts_voice`, then the session's `audio.output.voice`, win."""
    echo_guard_ms: int = 400
    """Speech starting this soon after the tutor starts speaking..."""
    echo_persist_ms: int = 300
    """...counts only if it goes on this much longer (the echo guard)."""
    audio_lead_ms: int = 300
    """Spoken answers go out at playback pace, this far ahead."""
    shutdown_drain_s: float = 30.0
    """On SIGTERM, how long answers in progress get to finish (docs/operations.md)."""
    resume_ttl_s: float = 120.0
    """How long a dropped session can be resumed (`?resume=`, `tutor.session.resumable`)."""
    provider_timeout_s: float = 20.0
    """Per provider request; for a stream, the longest wait for the next bytes."""
    provider_connect_timeout_s: float = 3.0
    """Opening a connection to a provider."""
    provider_max_retries: int = 1
    """The SDK's default (2 retries, 10 min timeout) is far too patient for a live turn."""

    # Moderation (docs/tutoring.md, "Moderation")
    moderation: bool | None = None
    """Check the student's words and the tutor's answers. Unset: on when the moderation endpoint
    is OpenAI's own (a key, and no `OPENAI_BASE_URL`) or
    `TUTOR_MODERATION_BASE_URL` is set; compatible servers (Ollama, vLLM) have no
    `/moderations`, so it is off with them unless set to `true`. `false`: off."""
    moderation_model: str = "omni-moderation-latest"
    """The moderation model (`moderations.create`)."""
    moderation_base_url: str | None = None
    """Any OpenAI-compatible server with `/moderations`; default: `OPENAI_BASE_URL`."""
    moderation_api_key: str | None = None
    """Default: `OPENAI_API_KEY`."""
    moderation_timeout_s: float = 2.0
    """The longest wait for one check; past it the check has failed (`moderation_on_failure`)."""
    moderation_on_failure: Literal["open", "closed"] = "closed"
    """When a check fails (provider down, timeout): `closed` refuses the text with a neutral
    line (the student's turn is not answered, the answer stops); `open` lets it through
    unchecked."""
    moderation_urgent_categories: Annotated[list[str], NoDecode] = ["self-harm", "sexual/minors"]
    """Categories (comma-separated; a family name covers its subcategories) whose flags email the
    student's teachers at once."""
    moderation_help_resources: str = ""
    """What the tutor adds when a student's words are flagged for self-harm: the school's help
    (the counsellor, a helpline number)."""

    # Sessions
    instructions: str | None = None
    """The tutor's system prompt on courses whose teachers saved no tutor settings; default: the
    built-in Socratic one (`dialogue.prompts`). Per session: `instructions` (docs/tutoring.md)."""
    history_messages: int = 20
    """Conversation window sent with each answer."""
    input_sample_rate: int = 24000
    """16000 or 24000 (the Realtime default); per session: `audio.input.format.rate`."""
    vad_threshold: float = 0.5
    """Turn detection: maps to webrtcvad's aggressiveness (`int(threshold * 4)`, 0..3)."""
    vad_silence_ms: int = 600
    """Turn detection: silence that ends a turn (500 would split a hesitation in two)."""
    vad_prefix_padding_ms: int = 300
    """Turn detection: audio kept before the speech started."""
    vad_min_speech_ms: int = 200
    """Turn detection: continuous voiced audio needed to start a turn."""
    speculative: bool = True
    """Speculative turn ends (docs/protocol.md §9): at a pause, transcribe (and answer, held)
    before the turn is surely over, and use it if the pause becomes the end. Plans without the
    `speculative` feature, and sessions that turn it off, never speculate."""
    turn_model: Literal["smart-turn", "off"] = "smart-turn"
    """The end-of-turn model behind `semantic_vad` (dialogue/endofturn.py, docs/protocol.md §5.4):
    `smart-turn` is Pipecat's smart-turn v3 (from the `pipecat-ai` wheel the Makefile
    installs; without it, or with `off`, `semantic_vad` ends turns on silence alone, as its
    eagerness maps it). Plans need the `semantic_turns` feature."""
    turn_detection: Literal["server_vad", "semantic_vad"] = "server_vad"
    """A session's turn detection before its client chooses: `semantic_vad` (eagerness `auto`)
    where the plan has `semantic_turns` and a turn model is loaded, else `server_vad`. Not
    `semantic_vad` by default: smart-turn misjudges synthetic speech (docs/protocol.md §5.4)."""
    semantic_pause_ms: int = 150
    """The pause, counted from where the speech really ended, at which the turn model judges
    whether the turn is complete (at most half of `vad_silence_ms`)."""
    output_modalities: Literal["auto", "text"] = "auto"
    """A session's answers before its client says (`output_modalities`): `auto` speaks them when
    the plan has spoken answers and a speech provider is set (OpenAI's default), `text` writes
    them unless a client asks for audio."""
    speculative_pause_ms: int = 200
    """The pause that starts a guess (at most half of `vad_silence_ms`)."""
    speculative_max_per_turn: int = 2
    """Guesses per turn."""
    speculative_budget: float = 0.5
    """Discarded guesses per session ≤ budget × turns + 2."""
    max_turn_ms: int = 30000
    """Longer turns are cut (and still answered)."""
    audio_burst_ms: int = 3000
    """How far audio may run ahead of real time (network jitter, client buffering); more is
    refused, so one client cannot make the server do minutes of VAD per second."""
    max_message_bytes: int = 256 * 1024
    """Soft limit: larger messages get a `message_too_large` error event."""
    ws_max_size: int = 1024 * 1024
    """Hard cap in the WebSocket layer: larger frames close the socket with 1009."""
    max_json_bytes: int = 1024 * 1024
    """A REST request's JSON body: larger is refused (413 `body_too_large`) before it is read in
    full (docs/operations.md, REST request limits)."""
    ws_outbox_max_bytes: int = 4 * 1024 * 1024
    """Events of one session waiting for a client that does not read: past this, the session
    ends (`slow_consumer`, close 1008) and its backlog is freed."""
    # Connection limits (docs/operations.md "Timeouts and connection caps")
    http_head_timeout_s: float = 10.0
    """A connection's request head must be complete this soon (half-open and slowloris
    connections are closed)."""
    http_keep_alive_s: int = 5
    """An idle kept-alive HTTP connection is closed after this."""
    http_max_connections_per_address: int | None = 256
    """Open HTTP connections of one peer address (not counting trusted proxies,
    `FORWARDED_ALLOW_IPS`); more are closed at once."""
    ws_ping_interval_s: float | None = 20.0
    """WebSocket pings (None: off)..."""
    ws_ping_timeout_s: float | None = 20.0
    """...and a peer that does not answer one in time is dropped (1011)."""
    loop_watch_interval_ms: int = 100
    """How often the event loop's lag is measured (`tutor_event_loop_lag_seconds`, and
    `loop_lag_ms` in `tutor.response.metrics`); 0 turns the measurement off."""
    session_idle_timeout_s: float | None = 300.0
    """A voice session with no client message this long ends (`idle_timeout`, close 4408)."""
    max_sessions_per_address: int | None = 200
    """Open voice sessions from one client address, per process (`too_many_connections`, close
    4429)."""
    max_sessions_per_user: int | None = None
    """Open voice sessions of one account, per process, on top of its plan's
    `max_concurrent_sessions` (`too_many_sessions`, close 4429); off by default, because the plans
    with no cap (staff, load tests, the shared dev guest) are meant to have none."""

    # Storage
    data_dir: Path = Path("data")
    """Where the SQLite database and the spool live."""
    database_url: str | None = None
    """`postgresql+asyncpg://…` (or a plain `postgresql://` URL, e.g. Supabase's); default: the
    SQLite file `data_dir/tutor.db`."""
    spool_file: Path | None = None
    """The write-ahead spool of accepted turns and usage rows, and its dead letters
    (`store/spool.py`; docs/operations.md, durability of turns); default `data_dir/spool.db`.
    Local disk, kept across restarts, one per server process."""
    auto_migrate: bool = True
    """Bring the schema up to date at startup (else `tutor migrate`)."""
    redis_url: str | None = None
    """What several server processes share: WebSocket tickets, query caches, quota counters,
    request limits, resume tokens; default: in-process."""
    # Bounds on every wait for the database and Redis (docs/operations.md, "Timeouts"): a service
    # that stops answering fails the call (a live turn answers without retrieval, a socket open
    # is refused with `service_unavailable` and close 1013, a REST call gets 503) instead of
    # holding it for good.
    database_timeout_s: float = 5.0
    """One PostgreSQL statement; a hung connection costs at most twice this."""
    database_connect_timeout_s: float = 5.0
    """Opening a PostgreSQL connection."""
    database_pool_timeout_s: float = 5.0
    """Waiting for a free pooled connection (any database)."""
    database_pool_size: int = 10
    """PostgreSQL connections each server process keeps open; a burst beyond them opens up to 30
    more, closed again after use. A class of 50 whose turns end together: 40 kept took the
    student-memory lookups from 170-210 ms to 73-87 ms (docs/benchmarks.md, "bursts"). Mind the
    database's connection limit times the number of processes. (SQLite: 10, fixed.)"""
    redis_timeout_s: float = 1.0
    """One Redis command (tickets, quotas, limits, resume, cache); no retry after a timeout."""
    redis_connect_timeout_s: float = 1.0
    """Opening a Redis connection."""

    # Sign-in
    session_secret: str | None = None
    """Signs the session cookie; random per process if unset."""
    cookie_secure: bool = False
    """Set true behind HTTPS."""
    session_max_age_s: int = 14 * 24 * 3600
    """A browser session's lifetime (14 days)."""
    secret_keys: str | None = None
    """Fernet keys (comma-separated, newest first) encrypting secrets at rest; the first
    encrypts."""
    google_client_id: str | None = None
    """Google sign-in (OpenID Connect); docs/accounts.md."""
    google_client_secret: str | None = None
    """Google sign-in's client secret."""
    google_discovery_url: str = "https://accounts.google.com/.well-known/openid-configuration"
    """Google's OpenID Connect discovery document (tests point it at a loopback provider)."""
    public_url: str | None = None
    """Base of the OAuth redirect URI behind a proxy, e.g. `https://tutor.example.com`; default:
    from the request."""
    supabase_url: str | None = None
    """`https://<project>.supabase.co`: accept Supabase access tokens (JWKS and issuer)."""
    supabase_jwt_secret: str | None = None
    """The legacy HS256 shared secret, if the Supabase project uses it."""
    api_token_ttl_days: int = 90
    """Lifetime of an API token (`POST /api/auth/token`)."""
    invitation_ttl_days: float = 14.0
    """Lifetime of an invitation to a role (`POST /api/invitations`): its link stops working
    after this many days, used or not."""
    ticket_ttl_s: float = 60.0
    """Lifetime of a single-use WebSocket ticket."""
    allowed_origins: Annotated[list[str], NoDecode] = []
    """Extra origins (comma-separated) allowed to open the voice socket with a ticket; empty: the
    server's own only."""
    dev_guest: bool | None = None
    """Unset: on when no sign-in is configured and the server is bound to loopback; `false`
    forces it off. It is never on off loopback."""

    # Course knowledge (RAG)
    embedding_model: str = "text-embedding-3-small"
    """Embeddings; without an embedding provider, retrieval is full-text only."""
    embedding_base_url: str | None = None
    """Default: `OPENAI_BASE_URL`."""
    embedding_api_key: str | None = None
    """Default: `OPENAI_API_KEY`."""
    embedding_batch_size: int = 64
    """Texts per embedding request."""
    rag_max_document_bytes: int = 10 * 1024 * 1024
    """The upload limit."""
    rag_max_pdf_pages: int = 1000
    """Cap on one PDF, counted before any page is read; over it: 413 `document_too_large`
    (docs/rag.md)."""
    rag_max_document_chars: int = 2_000_000
    """Cap on one document's extracted text."""
    rag_max_document_chunks: int = 4000
    """Cap on one document's chunks."""
    rag_ingest_workers: int = 1
    """Documents are read in worker processes (`rag/worker.py`): how many."""
    rag_ingest_memory_mb: int = 1024
    """The address space of each reading worker (`RLIMIT_AS`; 0: none); past it, the worker is
    replaced and the upload refused."""
    rag_ingest_timeout_s: float = 60.0
    """Time a worker gets per document; past it, the worker is replaced and the upload refused."""
    rag_chunk_chars: int = 900
    """Chunk length."""
    rag_chunk_overlap_chars: int = 150
    """Overlap between consecutive chunks."""
    rag_top_k: int = 4
    """Course passages put in each prompt."""
    rag_memory_k: int = 3
    """The student's own earlier turns retrieved with each question."""
    rag_wait_for_embedding: bool = False
    """`false`: a question whose embedding is not cached yet is ranked by full-text alone and
    embedded just after (an embedding is a provider round trip, often 100-300 ms, far more than
    the few ms retrieval may add to a turn); `true` waits for it."""
    rag_retrieval_budget_s: float = 1.0
    """A live turn waits this long for its retrieval (passages and memory); what has not come by
    then is left out of that answer, and `tutor.response.metrics` says
    `"retrieval": "timed_out"`."""
    rag_course_mirror: bool = True
    """Search course passages in an in-memory copy of them and of their full-text index, so a
    live turn makes no database round trip for the course (docs/rag.md); `false`: query the
    database each time."""
    rag_course_check_s: float = 2.0
    """How often each server process checks whether another process (`tutor ingest`, another
    server) changed the courses, and reloads its in-memory copy if so. Changes made through
    this process's own routes are seen by the next turn at once. 0: never checked."""
    default_course: str | None = None
    """The course a session uses when it names none; default: every course."""
    load_sample_course: bool = True
    """Ingest `rag/sample_course` at startup (skipped if unchanged)."""

    # Tiers, quotas and payments (billing/; docs/billing.md)
    tiers_file: Path | None = None
    """The plans (JSON; docs/billing.md); default: the built-in `free`, `school`, `pro`,
    `unlimited` (`billing.tiers.DEFAULT_TIERS`)."""
    llm_model_large: str = Field("gpt-4o", validation_alias=AliasChoices("LLM_MODEL_LARGE",
                                                                         "llm_model_large"))
    """The model of plans whose `chat_model` is `"large"`."""
    guest_tier: str | None = None
    """The dev guest's plan, e.g. `free` to try the free plan; default: the plan with every
    feature (`unlimited`)."""
    anonymous_rpm: int | None = 60
    """Requests a minute per address and route group before sign-in."""
    quota_step_ms: int = 1000
    """Voice is charged to the shared counters in steps of this much."""
    stripe_api_key: str | None = Field(None, validation_alias=AliasChoices(
        "STRIPE_API_KEY", "STRIPE_SECRET_KEY", "stripe_api_key"))
    """Payments: Stripe's secret key."""
    stripe_webhook_secret: str | None = Field(None, validation_alias=AliasChoices(
        "STRIPE_WEBHOOK_SECRET", "stripe_webhook_secret"))
    """The webhook signing secret."""
    stripe_api_base: str | None = None
    """Default: Stripe's; tests point it at a loopback fake."""
    stripe_prices: Annotated[dict[str, str], NoDecode] = {}
    """`tier=price_id` pairs, comma-separated, e.g. `pro=price_123,school=price_456`."""
    stripe_webhook_tolerance_s: int = 300
    """Age of a webhook signature still accepted."""
    payment_grace_days: float = 7.0
    """A paid plan survives a failed payment this long."""

    # Email (notify/; docs/email.md)
    email_transport: str = "log"
    """`log`, `smtp` (the `smtp_*` settings) or `mcp` (`email_mcp_url` or `email_mcp_command`)."""
    email_from: str = "Tutor <tutor@localhost>"
    """The sender."""
    email_link_secret: str | None = None
    """Signs unsubscribe links; default: `TUTOR_SESSION_SECRET`."""
    smtp_host: str = "127.0.0.1"
    """SMTP server."""
    smtp_port: int = 587
    """SMTP port."""
    smtp_username: str | None = None
    """SMTP login."""
    smtp_password: str | None = None
    """SMTP password."""
    smtp_starttls: bool | None = None
    """Unset: upgrade when the server offers it."""
    smtp_tls: bool = False
    """Implicit TLS (port 465)."""
    email_mcp_url: str | None = None
    """The email tool server, streamable HTTP (`…/mcp`)..."""
    email_mcp_command: str | None = None
    """...or spawned over stdio, e.g. `tutor mcp-email`."""
    email_mcp_tool: str = "send_email"
    """The MCP tool that sends."""
    email_timeout_s: float = 60.0
    """One send (SMTP or the MCP tool call)."""
    email_worker: bool = True
    """Run the outbox worker in this process."""
    email_poll_s: float = 2.0
    """How often the worker looks for mail due."""
    email_max_attempts: int = 8
    """Attempts before a message is marked failed (at most 3 when the server refuses it for good)."""
    email_retry_base_s: float = 30.0
    """First retry delay; it doubles with each attempt, up to a cap."""
    email_lease_s: float = 120.0
    """How long a worker holds a message it is sending before another may take it."""
    email_quota_warning_percent: int = 80
    """Mail a notice when this percentage of a plan's voice minutes is used (and at 100 %)."""

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


    @property
    def moderation_on(self) -> bool:
        """Whether moderation runs (see `moderation`)."""
        if self.moderation is not None:
            return self.moderation
        base_url = self.moderation_base_url or self.openai_base_url
        return bool(self.moderation_api_key or self.openai_api_key) and (
            base_url is None or self.moderation_base_url is not None)

    @field_validator("moderation_urgent_categories", mode="before")
    @classmethod
    def _urgent(cls, value: object) -> object:
        return _split(value)

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

    model_config = SettingsConfigDict(env_prefix="TUTOR_", extra="ignore", env_ignore_empty=True,
                                      use_attribute_docstrings=True)

    smtp_host: str = "127.0.0.1"
    """The SMTP server the tool server relays to."""
    smtp_port: int = 25
    """Its port."""
    smtp_username: str | None = None
    """SMTP login, if the server asks for one."""
    smtp_password: str | None = None
    """SMTP password."""
    smtp_starttls: bool | None = None
    """Unset: upgrade to TLS when the server offers it; `true` / `false` to require or refuse."""
    smtp_tls: bool = False
    """Implicit TLS (port 465)."""
    smtp_timeout_s: float = 30.0
    """Seconds before an SMTP conversation is given up."""
    email_from: str | None = None
    """The sender when a call names none."""
    mcp_email_journal: Path = Path("data/mcp-email.db")
    """The journal of idempotency keys already sent."""


# The variables McpEmailSettings reads.
MCP_EMAIL_VARIABLES = ("TUTOR_SMTP_", "TUTOR_EMAIL_FROM", "TUTOR_MCP_EMAIL_")


def mcp_email_environment() -> dict[str, str]:
    """What a `tutor mcp-email` spawned over stdio is given of this process's environment: the
    variables of `McpEmailSettings` (the MCP SDK passes only HOME, PATH and the like on)."""
    return {k: v for k, v in os.environ.items() if k.startswith(MCP_EMAIL_VARIABLES)}
