"""Settings, from environment variables and `.env`; the only module that reads the environment.

Our own settings use the `TUTOR_` prefix. The provider keys follow the conventions people already
have set: `OPENAI_API_KEY` / `OPENAI_BASE_URL` for everything, and `LLM_BASE_URL` /
`LLM_API_KEY` / `LLM_MODEL` to send chat (only) elsewhere, e.g. OpenRouter or a local server.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TUTOR_", env_file=".env", extra="ignore", populate_by_name=True
    )

    host: str = "127.0.0.1"
    port: int = 8000

    # Providers
    openai_api_key: str | None = Field(None, validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key"))
    openai_base_url: str | None = Field(None, validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url"))
    llm_api_key: str | None = Field(None, validation_alias=AliasChoices("LLM_API_KEY", "llm_api_key"))
    llm_base_url: str | None = Field(None, validation_alias=AliasChoices("LLM_BASE_URL", "llm_base_url"))
    llm_model: str = Field("gpt-4o-mini", validation_alias=AliasChoices("LLM_MODEL", "llm_model"))
    llm_max_tokens: int | None = 400
    transcription_model: str = "gpt-4o-mini-transcribe"
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
    max_turn_ms: int = 30000
    # Audio may arrive ahead of real time by this much (network jitter, client buffering); more
    # than that is refused, so one client cannot make the server do minutes of VAD per second.
    audio_burst_ms: int = 3000
    max_message_bytes: int = 256 * 1024  # larger messages get a `message_too_large` error event
    ws_max_size: int = 1024 * 1024  # hard cap in the WebSocket layer: larger closes with 1009

    @property
    def chat_api_key(self) -> str | None:
        # A local server (Ollama, vLLM) needs no key, but the SDK wants a non-empty string.
        key = self.llm_api_key or self.openai_api_key
        return key or ("unused" if self.llm_base_url else None)

    @property
    def chat_base_url(self) -> str | None:
        return self.llm_base_url or self.openai_base_url
