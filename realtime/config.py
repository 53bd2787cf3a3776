"""A session's configuration and the client's say in it: `SessionConfig`, `TurnDetection`, and
`session.update` (and a response's own settings) validated field by field into them.

Pure: a payload in, a new frozen config and the fields refused out. `session_object` is the
config as `session.created` / `session.updated` report it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from audio.formats import DEFAULT_FORMAT, AudioFormat, parse
from audio.pcm import AudioFormatError
from dialogue.endofturn import EAGERNESS

from .errors import ClientError, collect

VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer",
          "verse", "marin", "cedar")



@dataclass(frozen=True)
class TurnDetection:
    type: str = "server_vad"  # or "semantic_vad" (an end-of-turn model, dialogue.endofturn)
    eagerness: str = "auto"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 600
    create_response: bool = True
    interrupt_response: bool = True
    speculative: bool = True  # extension: start transcribing (and answering) at a pause


@dataclass(frozen=True)
class SessionConfig:
    instructions: str  # the client's (what session.created / session.updated report)
    model: str
    # The course's locked frame (dialogue.prompts.tutor_prompt) in a student's session: the
    # client's instructions, a response's and its system items stay inside it, after it
    # (dialogue.prompts.framed). None: the instructions are the whole prompt (a teacher's or an
    # admin's session, or a core without courses).
    frame: str | None = None
    input_rate: int = 24000  # of the PCM16 the input decodes to (8000 for G.711)
    input_format: AudioFormat = DEFAULT_FORMAT  # audio/pcm (24 or 16 kHz), pcmu, pcma
    output_format: AudioFormat = DEFAULT_FORMAT  # audio/pcm at 24 kHz, pcmu, pcma
    turn_detection: TurnDetection | None = TurnDetection()
    default_turn_detection: TurnDetection = TurnDetection()  # what re-enabling VAD starts from
    transcription_model: str = "gpt-4o-mini-transcribe"
    transcription_language: str | None = None
    min_speech_ms: int = 200
    max_turn_ms: int = 30000
    history_messages: int = 20
    audio_burst_ms: int = 3000
    max_message_bytes: int = 256 * 1024
    output_audio: bool = False  # speak the answers (output_modalities ["audio"])
    voice: str = "alloy"
    audio_allowed: bool = True  # the plan includes spoken answers
    # Echo: speech detected within `echo_guard_ms` of the tutor starting to speak counts only if
    # it goes on for `echo_persist_ms` more (the tutor's own voice leaking into the microphone).
    echo_guard_ms: int = 400
    echo_persist_ms: int = 300
    audio_lead_ms: int = 300  # the tutor's audio is sent at playback pace, this far ahead
    # Speculation (dialogue.speculation): a pause this long starts the work of a turn end;
    # 0: not available (server setting or plan). At most half the silence threshold.
    speculative_pause_ms: int = 0
    speculative_max_per_turn: int = 2
    speculative_budget: float = 0.5
    # Semantic end of turn (dialogue.endofturn): the server has an end-of-turn model and the
    # plan allows it; a pause this long after the end of speech is judged by it.
    turn_model: bool = False
    semantic_pause_ms: int = 150
    tools: tuple[dict[str, Any], ...] = ()  # Realtime function tools ({type, name, ...})
    tool_choice: str | dict[str, Any] = "auto"
    max_output_tokens: int | None = None  # None: "inf"
    idle_timeout_s: float | None = None  # no client message this long ends the session

    def __post_init__(self) -> None:
        if self.input_format.type == "audio/pcm" and self.input_format.rate != self.input_rate:
            # configured by its rate alone (TUTOR_INPUT_SAMPLE_RATE, older resume state)
            object.__setattr__(self, "input_format", AudioFormat("audio/pcm", self.input_rate))

    @property
    def speculating(self) -> bool:
        """Speculative turn ends are on for this session."""
        td = self.turn_detection
        return td is not None and td.speculative and self.speculative_pause_ms > 0

    @property
    def semantic(self) -> bool:
        """Turn ends are judged by the end-of-turn model (semantic_vad, with a model)."""
        td = self.turn_detection
        return td is not None and td.type == "semantic_vad" and self.turn_model

    @property
    def pause_ms(self) -> int:
        """The pause (from the end of speech) at which speculation starts and the end-of-turn
        model judges: 0 when neither is on for this session."""
        td = self.turn_detection
        pauses = ([self.speculative_pause_ms] if self.speculating else []) + \
            ([self.semantic_pause_ms] if self.semantic else [])
        if td is None or not pauses:
            return 0
        return max(1, min(min(pauses), td.silence_duration_ms // 2))


def session_object(cfg: SessionConfig, session_id: str) -> dict[str, Any]:
    """The session as `session.created` and `session.updated` report it."""
    td = cfg.turn_detection
    transcription: dict[str, Any] = {"model": cfg.transcription_model}
    if cfg.transcription_language:
        transcription["language"] = cfg.transcription_language
    return {
        "type": "realtime", "object": "realtime.session", "id": session_id, "model": cfg.model,
        "output_modalities": ["audio"] if cfg.output_audio else ["text"],
        "instructions": cfg.instructions,
        "tools": list(cfg.tools), "tool_choice": cfg.tool_choice,
        "max_output_tokens": "inf" if cfg.max_output_tokens is None
        else cfg.max_output_tokens,
        "audio": {"input": {
            "format": cfg.input_format.to_json(),
            "transcription": transcription,
            "turn_detection": _turn_detection_object(td, cfg.speculating),
        }, "output": {"format": cfg.output_format.to_json(), "voice": cfg.voice}},
    }


def exported(cfg: SessionConfig) -> dict[str, Any]:
    """The settings a client chose, for a resumed session (`restored` reads them back).
    Instructions still equal to the course's frame are not the client's: the resumed session
    gets its course's frame afresh."""
    chosen = {} if cfg.frame is not None and cfg.instructions == cfg.frame \
        else {"instructions": cfg.instructions}
    return {**chosen,
            "input_format": cfg.input_format.to_json(),
            "output_format": cfg.output_format.to_json(), "output_audio": cfg.output_audio,
            "voice": cfg.voice, "tools": list(cfg.tools), "tool_choice": cfg.tool_choice,
            "turn_detection": None if cfg.turn_detection is None
            else vars(cfg.turn_detection)}


def restored(cfg: SessionConfig, state: dict[str, Any]) -> SessionConfig:
    """`cfg` with the settings a dropped session had chosen (`exported`)."""
    td = state.get("turn_detection")
    input_format = parse(state["input_format"], "input") if "input_format" in state \
        else cfg.input_format
    return replace(
        cfg, instructions=state.get("instructions", cfg.instructions),
        input_format=input_format, input_rate=input_format.pcm_rate,
        tools=tuple(state.get("tools", ())), tool_choice=state.get("tool_choice", "auto"),
        output_format=parse(state["output_format"], "output") if "output_format" in state
        else cfg.output_format,
        output_audio=bool(state.get("output_audio")) and cfg.audio_allowed,
        voice=state.get("voice", cfg.voice),
        turn_detection=None if td is None else TurnDetection(**td))


def _turn_detection_object(td: TurnDetection | None, speculative: bool) -> dict[str, Any] | None:
    if td is None:
        return None
    if td.type == "semantic_vad":
        return {"type": "semantic_vad", "eagerness": td.eagerness,
                "create_response": td.create_response,
                "interrupt_response": td.interrupt_response, "speculative": speculative}
    fields = {k: v for k, v in vars(td).items() if k not in ("type", "eagerness")}
    return {"type": "server_vad", **fields, "speculative": speculative}


def updated_config(config: SessionConfig, session: dict[str, Any]
                   ) -> tuple[SessionConfig, list[ClientError]]:
    """Apply a `session.update` payload field by field: the new config, and the fields refused
    (each left as it was). Fields of OpenAI's session that this server does not use (tracing,
    noise reduction, prompt, ...) are accepted and ignored."""
    problems: list[ClientError] = []
    changes: dict[str, Any] = {}
    with collect(problems):
        if session.get("type", "realtime") != "realtime":
            raise ClientError("invalid_value", "only 'realtime' sessions are supported "
                              "(not transcription sessions)", "session.type")
    with collect(problems):
        if "instructions" in session:
            instructions = session["instructions"]
            if not isinstance(instructions, str):
                raise ClientError("invalid_value", "instructions must be a string",
                                  "session.instructions")
            changes["instructions"] = instructions
    audio: dict[str, Any] = {}
    with collect(problems):
        audio = sub_object(session, "audio", "session.audio")
    audio_out: dict[str, Any] = {}
    with collect(problems):
        audio_out = sub_object(audio, "output", "session.audio.output")
    changes.update(answer_settings(session, audio_out, "session", config.audio_allowed,
                                   problems))
    with collect(problems):
        if "format" in audio_out:
            changes["output_format"] = _format(audio_out["format"], "output")
    audio_in: dict[str, Any] = {}
    with collect(problems):
        audio_in = sub_object(audio, "input", "session.audio.input")
    with collect(problems):
        if "format" in audio_in:
            fmt = changes["input_format"] = _format(audio_in["format"], "input")
            changes["input_rate"] = fmt.pcm_rate
    with collect(problems):
        if "transcription" in audio_in:
            tr = audio_in["transcription"] or {}
            if not isinstance(tr, dict):
                raise ClientError("invalid_value", "transcription must be an object",
                                  "session.audio.input.transcription")
            for key, name in (("model", "transcription_model"),
                              ("language", "transcription_language")):
                if key in tr:
                    if not isinstance(tr[key], str) and not (key == "language" and tr[key] is None):
                        raise ClientError("invalid_value", f"transcription.{key} must be a string",
                                          f"session.audio.input.transcription.{key}")
                    changes[name] = tr[key]
    with collect(problems):
        if "turn_detection" in audio_in:
            td = audio_in["turn_detection"]
            if isinstance(td, dict) and td.get("speculative") is True \
                    and config.speculative_pause_ms <= 0:
                raise ClientError("feature_not_available", "speculative turn ends are not part "
                                  "of this plan (or are off on this server)",
                                  "session.audio.input.turn_detection.speculative")
            changes["turn_detection"] = _turn_detection(
                td, config.turn_detection or config.default_turn_detection,
                config.default_turn_detection)
    return replace(config, **changes), problems


def _format(value: Any, direction: str) -> AudioFormat:
    try:
        return parse(value, direction)  # type: ignore[arg-type]
    except AudioFormatError as exc:
        raise ClientError(exc.code, str(exc), getattr(exc, "param", None))


def answer_settings(obj: dict[str, Any], audio_out: dict[str, Any], prefix: str,
                    audio_allowed: bool, problems: list[ClientError]) -> dict[str, Any]:
    """What a session and a response both set about an answer, as SessionConfig fields: the
    modality, the voice, the tools and the token cap (only those present; refusals noted)."""
    settings: dict[str, Any] = {}
    with collect(problems):
        if obj.get("output_modalities") is not None:
            settings["output_audio"] = _modalities(obj["output_modalities"], audio_allowed,
                                                   f"{prefix}.output_modalities")
    with collect(problems):
        if "tools" in obj:
            settings["tools"] = _tools(obj["tools"], f"{prefix}.tools")
    with collect(problems):
        if "tool_choice" in obj:
            settings["tool_choice"] = _tool_choice(obj["tool_choice"], f"{prefix}.tool_choice")
    with collect(problems):
        if "max_output_tokens" in obj:
            settings["max_output_tokens"] = _max_tokens(obj["max_output_tokens"],
                                                        f"{prefix}.max_output_tokens")
    with collect(problems):
        if "voice" in audio_out:
            settings["voice"] = _voice(audio_out["voice"], f"{prefix}.audio.output.voice")
    return settings


def _modalities(value: Any, audio_allowed: bool, param: str) -> bool:
    """`output_modalities`: True for spoken answers (["audio"], with their transcript)."""
    if value not in (["text"], ["audio"]):  # compared, never hashed: [[]] is no TypeError
        raise ClientError("invalid_value", "output_modalities must be [\"text\"] or "
                          "[\"audio\"] (audio comes with its transcript)", param)
    if value == ["audio"] and not audio_allowed:
        raise ClientError("feature_not_available", "spoken answers are not part of this "
                          "plan; answers stay text", param)
    return value == ["audio"]


def _voice(value: Any, param: str) -> str:
    if not isinstance(value, str) or value not in VOICES:
        raise ClientError("invalid_value", f"voice must be one of {', '.join(VOICES)}", param)
    return value


def response_metadata(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > 16 or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
            for k, v in value.items()):
        raise ClientError("invalid_value", "metadata must be at most 16 string keys (64 "
                          "characters) with string values (512 characters)", "response.metadata")
    return dict(value)


def _tools(value: Any, param: str) -> tuple[dict[str, Any], ...]:
    """Function tools, as Realtime declares them: {type: "function", name, description,
    parameters}. Other tool types (MCP servers) are not run by this server."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > 128:
        raise ClientError("invalid_value", "tools must be a list (at most 128)", param)
    tools = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise ClientError("unsupported_tool_type", "only function tools are supported "
                              "(type 'function'); MCP tools are not", f"{param}[{i}].type")
        name = tool.get("name")
        if not isinstance(name, str) or not name or len(name) > 64:
            raise ClientError("invalid_value", "a function tool needs a 'name' (1-64 "
                              "characters)", f"{param}[{i}].name")
        parameters = tool.get("parameters")
        if parameters is not None and (not isinstance(parameters, dict)
                                       or _depth(parameters) > MAX_SCHEMA_DEPTH):
            raise ClientError("invalid_value", "parameters must be a JSON schema object (at "
                              f"most {MAX_SCHEMA_DEPTH} levels deep)", f"{param}[{i}].parameters")
        description = tool.get("description")
        if description is not None and not isinstance(description, str):
            raise ClientError("invalid_value", "description must be a string",
                              f"{param}[{i}].description")
        tools.append({"type": "function", "name": name,
                      **({"description": description} if description else {}),
                      "parameters": parameters or {"type": "object", "properties": {}}})
    return tuple(tools)


MAX_SCHEMA_DEPTH = 32  # a tool's parameters are echoed and sent on: no hostile nesting


def _depth(value: Any, limit: int = MAX_SCHEMA_DEPTH + 1) -> int:
    """How deep a JSON value nests (counting stops past `limit`)."""
    if limit <= 0 or not isinstance(value, (dict, list)):
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(child, limit - 1) for child in children), default=0)


def _tool_choice(value: Any, param: str) -> str | dict[str, Any]:
    if value in ("auto", "none", "required"):
        return str(value)
    if isinstance(value, dict) and value.get("type") == "function" \
            and isinstance(value.get("name"), str):
        return {"type": "function", "name": value["name"]}
    raise ClientError("invalid_value", "tool_choice must be 'auto', 'none', 'required' or "
                      "{type: 'function', name}", param)


def _max_tokens(value: Any, param: str) -> int | None:
    if value == "inf" or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise ClientError("invalid_value", "max_output_tokens must be 1-4096 or 'inf'", param)
    return value


def sub_object(parent: dict[str, Any], key: str, param: str) -> dict[str, Any]:
    value = parent.get(key) or {}
    if not isinstance(value, dict):
        raise ClientError("invalid_value", f"{param} must be an object", param)
    return value


def _turn_detection(value: Any, current: TurnDetection, default: TurnDetection
                    ) -> TurnDetection | None:
    """`server_vad` with its settings, or `semantic_vad` with an eagerness (its silence without
    a verdict: dialogue.endofturn.EAGERNESS)."""
    param = "session.audio.input.turn_detection"
    if value is None:
        return None
    kind = value.get("type", current.type) if isinstance(value, dict) else None
    if kind not in ("server_vad", "semantic_vad"):
        raise ClientError("unsupported_turn_detection", "turn_detection must be {type: "
                          "'server_vad' or 'semantic_vad', ...} or null", param)
    base = current
    fields: dict[str, Any] = {"type": kind}
    if kind == "semantic_vad":
        eagerness = value.get("eagerness") or "auto"
        if not isinstance(eagerness, str) or eagerness not in EAGERNESS:
            raise ClientError("invalid_value", "eagerness must be low, medium, high or auto",
                              f"{param}.eagerness")
        fields["eagerness"] = eagerness
        fallback = EAGERNESS[eagerness].fallback_ms
        fields["silence_duration_ms"] = default.silence_duration_ms if fallback is None \
            else fallback
        fields["threshold"], fields["prefix_padding_ms"] = default.threshold, \
            default.prefix_padding_ms
    else:
        fields["eagerness"] = "auto"
        for name, types, lo, hi in (("threshold", (int, float), 0.0, 1.0),
                                    ("prefix_padding_ms", int, 0, 5000),
                                    ("silence_duration_ms", int, 30, 10000)):
            if value.get(name) is not None:
                v = value[name]
                if isinstance(v, bool) or not isinstance(v, types) or not lo <= v <= hi:
                    raise ClientError("invalid_value", f"{name} must be a number in [{lo}, {hi}]",
                                      f"{param}.{name}")
                fields[name] = v
    for name in ("create_response", "interrupt_response", "speculative"):
        if value.get(name) is not None:
            if not isinstance(value[name], bool):
                raise ClientError("invalid_value", f"{name} must be a boolean", f"{param}.{name}")
            fields[name] = value[name]
    return replace(base, **fields)
