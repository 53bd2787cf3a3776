"""Assembles the ASGI app: routes from each package, shared clients created in `lifespan`.

`create_app(settings, providers=...)` lets tests and the benchmark build an app with their own
settings or providers; nothing here reads the environment except through `Settings`.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from dialogue.prompts import TUTOR_INSTRUCTIONS
from dialogue.providers import Providers
from dialogue.providers.openai import OpenAIChatModel, OpenAITranscriber, make_client, warm_up

from .chat import chat_endpoint
from .config import Settings
from .protocol import SessionConfig, TurnDetection
from .voice import realtime_endpoint


def session_config(settings: Settings) -> SessionConfig:
    vad = TurnDetection(
        threshold=settings.vad_threshold,
        prefix_padding_ms=settings.vad_prefix_padding_ms,
        silence_duration_ms=settings.vad_silence_ms,
    )
    return SessionConfig(
        instructions=settings.instructions or TUTOR_INSTRUCTIONS,
        model=settings.llm_model,
        input_rate=settings.input_sample_rate,
        turn_detection=vad,
        default_turn_detection=vad,
        transcription_model=settings.transcription_model,
        min_speech_ms=settings.vad_min_speech_ms,
        max_turn_ms=settings.max_turn_ms,
        history_messages=settings.history_messages,
        audio_burst_ms=settings.audio_burst_ms,
        max_message_bytes=settings.max_message_bytes,
    )


def build_providers(settings: Settings) -> tuple[Providers, list]:
    """OpenAI-compatible providers from settings; also returns the clients to close."""
    common = dict(timeout=settings.provider_timeout_s,
                  connect_timeout=settings.provider_connect_timeout_s,
                  max_retries=settings.provider_max_retries)
    clients = []
    transcriber = chat = None
    missing = []
    stt_key = settings.openai_api_key or ("unused" if settings.openai_base_url else None)
    if stt_key:
        stt_client = make_client(api_key=stt_key, base_url=settings.openai_base_url, **common)
        clients.append(stt_client)
        transcriber = OpenAITranscriber(stt_client, settings.transcription_model)
    else:
        missing.append("transcription needs OPENAI_API_KEY (and OPENAI_BASE_URL for a "
                       "compatible server other than OpenAI)")
    if settings.chat_api_key:
        if settings.chat_base_url == settings.openai_base_url and transcriber is not None \
                and settings.chat_api_key == stt_key:
            chat_client = clients[0]  # same endpoint, same key: share the connection pool
        else:
            chat_client = make_client(api_key=settings.chat_api_key,
                                      base_url=settings.chat_base_url, **common)
            clients.append(chat_client)
        chat = OpenAIChatModel(chat_client, settings.llm_model, settings.llm_max_tokens)
    else:
        missing.append("answers need OPENAI_API_KEY, or LLM_BASE_URL (+ LLM_API_KEY, LLM_MODEL) "
                       "for OpenRouter or a local OpenAI-compatible server")
    problem = ("No AI provider is configured: " + "; ".join(missing) + ".") if missing else None
    return Providers(transcriber, chat, problem), clients


async def healthz(request: Request) -> JSONResponse:
    providers: Providers = request.app.state.providers
    return JSONResponse({
        "status": "ok",
        "transcription": providers.transcriber is not None,
        "chat": providers.chat is not None,
    })


def create_app(settings: Settings | None = None, *, providers: Providers | None = None) -> Starlette:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        clients: list = []
        if providers is None:
            app.state.providers, clients = build_providers(settings)
            if clients:
                await warm_up()
        else:
            app.state.providers = providers
        app.state.settings = settings
        app.state.session_config = session_config(settings)
        try:
            yield
        finally:
            for client in clients:
                await client.close()

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/api/ai/chat", chat_endpoint, methods=["POST"]),
            WebSocketRoute("/api/voice", realtime_endpoint),
            WebSocketRoute("/v1/realtime", realtime_endpoint),
        ],
        lifespan=lifespan,
    )
