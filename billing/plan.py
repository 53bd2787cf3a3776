"""A voice session's plan, turned into the session: the one step between a signed-in user and
an open, metered voice session.

`open_voice_session` counts the request against the plan's per-minute limit, gives back the slot
of a dropped session it replaces, opens the metered session (refusing with `QuotaError`), and
returns the grant with the `SessionConfig` the tier allows: its chat model, spoken answers only
on a plan that has them (and with a speech provider), its voice (unless the course chose one),
and speculative turn ends only where the plan has them. The config type is the protocol core's
(`realtime.config`); this module only replaces fields of the server's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from store.models import User

from .service import Billing, VoiceGrant
from .tiers import Tier

if TYPE_CHECKING:
    from realtime.config import SessionConfig


@dataclass(frozen=True)
class VoiceSession:
    """An opened voice session: what its plan granted and the config it runs with."""

    grant: VoiceGrant
    config: SessionConfig


async def open_voice_session(billing: Billing, user: User, *, address: str, session_id: str,
                             config: SessionConfig, speech: bool, speak_by_default: bool,
                             replacing: str | None = None,
                             course_voice: str | None = None) -> VoiceSession:
    """`config`: the server's defaults with the course's prompt; `speech`: a text-to-speech
    provider is set; `course_voice`: the spoken answers' voice the course's teachers chose;
    `speak_by_default`: answers are spoken until the client says otherwise (when the plan
    allows); `replacing`: the dropped session this one resumes. The caller closes the session
    (`Billing.close_voice`) when it ends. Raises `QuotaError`."""
    await billing.check_request("voice", user, address)
    if replacing:
        # the dropped session's slot may still look live (its socket not timed out yet):
        # the resumed one takes its place rather than counting twice
        await billing.close_voice(user.id, replacing)
    grant = await billing.open_voice(user, session_id)
    return VoiceSession(grant, planned(config, grant.tier, billing.chat_model(grant.tier),
                                       speech=speech, speak_by_default=speak_by_default,
                                       course_voice=course_voice))


def planned(config: SessionConfig, tier: Tier, chat_model: str | None, *, speech: bool,
            speak_by_default: bool, course_voice: str | None = None) -> SessionConfig:
    """The server's default config as `tier` allows it (pure); the course's voice, when it
    chose one, over the plan's."""
    if chat_model and chat_model != config.model:
        config = replace(config, model=chat_model)
    audio_allowed = tier.allows("tts") and speech
    config = replace(config, audio_allowed=audio_allowed,
                     output_audio=audio_allowed and speak_by_default,
                     voice=course_voice or tier.tts_voice or config.voice)
    if not tier.allows("speculative"):
        config = replace(config, speculative_pause_ms=0)
    if not tier.allows("semantic_turns") and config.turn_model:
        server_vad = replace(config.default_turn_detection, type="server_vad", eagerness="auto")
        config = replace(config, turn_model=False, default_turn_detection=server_vad,
                         turn_detection=None if config.turn_detection is None else server_vad)
    return config
