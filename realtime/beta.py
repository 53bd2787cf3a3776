"""The beta Realtime dialect (`OpenAI-Beta: realtime=v1`), translated to and from GA, sans I/O.

The core (`realtime.session`) speaks only the GA protocol. For a client that announced the beta
protocol (`is_beta`), the shell passes each client event through `client_to_ga` and each server
event through `ga_to_client`. Both are pure and stateless and never mutate their input; the
renames live in the tables below, one row per field or event, taken from the SDK's beta
(`openai.types.beta.realtime`) and GA (`openai.types.realtime`) types that tests/test_beta.py
validates against. Fields a table does not name pass through unchanged; the core decides
what it accepts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Callable

Event = dict[str, Any]
Convert = Callable[[Any], Any]

# -- which clients speak beta -------------------------------------------------------------------

BETA_HEADER_VALUE = "realtime=v1"  # `OpenAI-Beta: realtime=v1`, possibly among other betas
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"  # how browsers say it (they cannot set headers)


def is_beta(headers: Mapping[str, str] | Iterable[tuple[Any, Any]],
            query: Mapping[str, str] | None = None) -> bool:
    """Whether the client at this handshake speaks the beta protocol: the `OpenAI-Beta` header
    names `realtime=v1`, or the offered subprotocols include `openai-beta.realtime-v1` (the
    browser form), or the query asks for an Azure preview `api-version` (those speak beta).
    `headers` is a Starlette `Headers`, a plain dict, or raw ASGI `(name, value)` pairs."""
    for name, value in _pairs(headers):
        if name == "openai-beta" and BETA_HEADER_VALUE in _tokens(value):
            return True
        if name == "sec-websocket-protocol" and BETA_SUBPROTOCOL in _tokens(value):
            return True
    version = (query or {}).get("api-version") or ""
    return isinstance(version, str) and version.endswith("-preview")


def _pairs(headers: Mapping[str, str] | Iterable[tuple[Any, Any]]) -> Iterable[tuple[str, str]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        yield str(name).lower(), str(value)


def _tokens(value: str) -> set[str]:
    return {part.strip().lower() for part in value.split(",")}


# -- values that differ -------------------------------------------------------------------------

FORMATS = {  # beta audio format name -> GA audio format object
    "pcm16": {"type": "audio/pcm", "rate": 24000},  # beta PCM is always 24 kHz
    "g711_ulaw": {"type": "audio/pcmu"},
    "g711_alaw": {"type": "audio/pcma"},
}
_FORMAT_NAMES = {fmt["type"]: name for name, fmt in FORMATS.items()}

# The beta protocol is frozen; its session type names exactly these models. Another model name
# (ours are whatever the chat provider serves) is left out of a beta session rather than sent
# as a value the beta types do not allow.
BETA_MODELS = (
    "gpt-realtime", "gpt-realtime-2025-08-28", "gpt-4o-realtime-preview",
    "gpt-4o-realtime-preview-2024-10-01", "gpt-4o-realtime-preview-2024-12-17",
    "gpt-4o-realtime-preview-2025-06-03", "gpt-4o-mini-realtime-preview",
    "gpt-4o-mini-realtime-preview-2024-12-17",
)


def _format_to_ga(name: Any) -> Any:
    """`pcm16` -> `{type: audio/pcm, rate: 24000}`; an unknown name goes on, for the core to
    refuse."""
    return dict(FORMATS[name]) if isinstance(name, str) and name in FORMATS else name


def _format_to_beta(fmt: Any) -> Any:
    """Any PCM rate reads `pcm16` (beta has no other; a GA client's 16 kHz is not a beta one's)."""
    return _FORMAT_NAMES.get(fmt.get("type"), fmt) if isinstance(fmt, dict) else fmt


def _modalities_to_ga(modalities: Any) -> Any:
    """Beta answered in audio with `["text", "audio"]`; GA says `["audio"]` (the transcript
    comes with it) and allows one modality only."""
    if isinstance(modalities, list) and "audio" in modalities:
        return ["audio"]
    return modalities


def _modalities_to_beta(modalities: Any) -> Any:
    return ["text", "audio"] if modalities == ["audio"] else modalities


def _voice_to_beta(voice: Any) -> Any:
    return voice.get("id") if isinstance(voice, dict) else voice  # GA custom voice `{id}`


def _tool_choice_to_ga(choice: Any) -> Any:
    """A forced function: beta's `{type: function, function: {name}}` is GA's `{type, name}`."""
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"type": "function", "name": choice["function"].get("name")}
    return choice


def _tools_to_beta(tools: Any) -> Any:
    """Beta sessions had function tools only (GA's MCP servers have no beta form)."""
    if not isinstance(tools, list):
        return tools
    return [t for t in tools if not isinstance(t, dict) or t.get("type", "function") == "function"]


# -- field tables: (beta field, GA path, to GA, to beta) -----------------------------------------

Row = tuple[str, tuple[str, ...], Convert | None, Convert | None]

SESSION: tuple[Row, ...] = (
    ("modalities", ("output_modalities",), _modalities_to_ga, _modalities_to_beta),
    ("max_response_output_tokens", ("max_output_tokens",), None, None),
    ("tool_choice", ("tool_choice",), _tool_choice_to_ga, None),
    ("tools", ("tools",), None, _tools_to_beta),
    ("input_audio_format", ("audio", "input", "format"), _format_to_ga, _format_to_beta),
    ("input_audio_transcription", ("audio", "input", "transcription"), None, None),
    ("turn_detection", ("audio", "input", "turn_detection"), None, None),
    ("input_audio_noise_reduction", ("audio", "input", "noise_reduction"), None, None),
    ("output_audio_format", ("audio", "output", "format"), _format_to_ga, _format_to_beta),
    ("voice", ("audio", "output", "voice"), None, _voice_to_beta),
    ("speed", ("audio", "output", "speed"), None, None),
)

RESPONSE: tuple[Row, ...] = (  # the response object of `response.created` / `response.done`
    ("modalities", ("output_modalities",), _modalities_to_ga, _modalities_to_beta),
    ("output_audio_format", ("audio", "output", "format"), _format_to_ga, _format_to_beta),
    ("voice", ("audio", "output", "voice"), None, _voice_to_beta),
)

RESPONSE_CREATE: tuple[Row, ...] = RESPONSE + (  # the client's `response.create` parameters
    ("max_response_output_tokens", ("max_output_tokens",), None, None),
    ("tool_choice", ("tool_choice",), _tool_choice_to_ga, None),
)

# Content part types of conversation items: beta's assistant `text` / `audio`.
PARTS_TO_GA = {"text": "output_text", "audio": "output_audio"}
PARTS_TO_BETA = {ga: beta for beta, ga in PARTS_TO_GA.items()}


def _to_ga(beta: Mapping[str, Any], rows: tuple[Row, ...]) -> Event:
    """Move each beta field to its GA path (merging into GA-style fields already there)."""
    moved = {row[0] for row in rows}
    out: Event = {k: v for k, v in beta.items() if k not in moved}
    for beta_key, path, convert, _ in rows:
        if beta_key not in beta:
            continue
        value = beta[beta_key] if convert is None else convert(beta[beta_key])
        parent = out
        for key in path[:-1]:
            child = parent.get(key)
            parent[key] = dict(child) if isinstance(child, dict) else {}
            parent = parent[key]
        parent[path[-1]] = value
    return out


def _to_beta(ga: Mapping[str, Any], rows: tuple[Row, ...]) -> Event:
    """Pull each GA path back to its beta field; the GA-only containers (`audio`) go."""
    tops = {row[1][0] for row in rows}
    out: Event = {k: v for k, v in ga.items() if k not in tops}
    for beta_key, path, _, convert in rows:
        node: Any = ga
        for key in path:
            if not isinstance(node, dict) or key not in node:
                break
            node = node[key]
        else:
            out[beta_key] = node if convert is None else convert(node)
    return out


def _session_to_ga(session: Any) -> Any:
    if not isinstance(session, dict):
        return session
    out = _to_ga(session, SESSION)
    out.setdefault("type", "realtime")  # beta sessions were all conversations
    return out


def _session_to_beta(session: Any) -> Any:
    if not isinstance(session, dict):
        return session
    out = _to_beta(session, SESSION)
    if out.get("type") == "realtime":
        del out["type"]
    if "model" in out and out["model"] not in BETA_MODELS:
        del out["model"]
    return out


def _item(item: Any, parts: Mapping[str, str]) -> Any:
    if not isinstance(item, dict) or not isinstance(item.get("content"), list):
        return item
    return {**item, "content": [_part(p, parts) for p in item["content"]]}


def _part(part: Any, parts: Mapping[str, str]) -> Any:
    if isinstance(part, dict) and part.get("type") in parts:
        return {**part, "type": parts[part["type"]]}
    return part


def _response_create_to_ga(response: Any) -> Any:
    if not isinstance(response, dict):
        return response
    out = _to_ga(response, RESPONSE_CREATE)
    if isinstance(out.get("input"), list):
        out["input"] = [_item(i, PARTS_TO_GA) for i in out["input"]]
    return out


def _response_to_beta(response: Any) -> Any:
    if not isinstance(response, dict):
        return response
    out = _to_beta(response, RESPONSE)
    if isinstance(out.get("output"), list):
        out["output"] = [_item(i, PARTS_TO_BETA) for i in out["output"]]
    return out


# Error `param`s the core names by GA path, renamed to the beta field the client sent.
# (GA prefix, beta path, whether what follows the prefix is kept)
PARAMS: tuple[tuple[str, str, bool], ...] = (
    ("session.output_modalities", "session.modalities", True),
    ("session.max_output_tokens", "session.max_response_output_tokens", True),
    ("session.audio.input.format", "session.input_audio_format", False),
    ("session.audio.input.transcription", "session.input_audio_transcription", True),
    ("session.audio.input.turn_detection", "session.turn_detection", True),
    ("session.audio.input.noise_reduction", "session.input_audio_noise_reduction", True),
    ("session.audio.output.format", "session.output_audio_format", False),
    ("session.audio.output.voice", "session.voice", True),
    ("session.audio.output.speed", "session.speed", True),
    ("response.output_modalities", "response.modalities", True),
    ("response.max_output_tokens", "response.max_response_output_tokens", True),
    ("response.audio.output.format", "response.output_audio_format", False),
    ("response.audio.output.voice", "response.voice", True),
)


def _param_to_beta(param: Any) -> Any:
    if not isinstance(param, str):
        return param
    for ga, beta, keep_rest in PARAMS:
        if param == ga or param.startswith(ga + "."):
            return beta + param[len(ga):] if keep_rest else beta
    return param


def _error_to_beta(error: Any) -> Any:
    if isinstance(error, dict) and "param" in error:
        return {**error, "param": _param_to_beta(error["param"])}
    return error


# -- events ------------------------------------------------------------------------------------

# Client events whose payload differs: type -> (field, translation). The others (audio buffer,
# truncate, delete, cancel, ...) are the same in both protocols. `transcription_session.update`
# has no GA counterpart here (GA folds it into `session.update` with type `transcription`, which
# this server does not serve); it goes on unchanged and the core refuses it as unsupported.
CLIENT_FIELDS: dict[str, tuple[str, Convert]] = {
    "session.update": ("session", _session_to_ga),
    "response.create": ("response", _response_create_to_ga),
    "conversation.item.create": ("item", lambda item: _item(item, PARTS_TO_GA)),
}

# GA server event names -> their beta names.
SERVER_NAMES = {
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "conversation.item.added": "conversation.item.created",
}

# GA server events a beta client has no name for: not sent. (`conversation.item.done` repeats an
# item the client already has from `conversation.item.created` or `response.output_item.done`.)
GA_ONLY = frozenset({
    "conversation.item.done",
    "conversation.item.input_audio_transcription.segment",
    "input_audio_buffer.timeout_triggered",
    "input_audio_buffer.dtmf_event_received",
    "mcp_list_tools.in_progress", "mcp_list_tools.completed", "mcp_list_tools.failed",
    "response.mcp_call_arguments.delta", "response.mcp_call_arguments.done",
    "response.mcp_call.in_progress", "response.mcp_call.completed", "response.mcp_call.failed",
})

# Server event payload fields that differ, whatever the event carrying them.
SERVER_FIELDS: dict[str, Convert] = {
    "session": _session_to_beta,
    "response": _response_to_beta,
    "item": lambda item: _item(item, PARTS_TO_BETA),
    "part": lambda part: _part(part, PARTS_TO_BETA),
    "error": _error_to_beta,
}


def client_to_ga(message: dict[str, Any]) -> dict[str, Any]:
    """A beta client event, as the GA core expects it (a new dict; the input is untouched)."""
    translation = CLIENT_FIELDS.get(message.get("type"))  # type: ignore[arg-type]
    if translation is None:
        return message
    field, convert = translation
    if field not in message:
        return message
    return {**message, field: convert(message[field])}


# The client events whose beta form differs from GA (the only ones worth parsing here).
TRANSLATED = tuple(CLIENT_FIELDS)


def client_text_to_ga(text: str) -> str:
    """`client_to_ga` for a raw text frame; what is not a JSON object goes on as it came, so
    the core answers it exactly as it answers a GA client."""
    if not any(kind in text for kind in TRANSLATED):
        return text  # audio appends and the rest: the same in both protocols, parsed once
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return text
    if not isinstance(message, dict):
        return text
    translated = client_to_ga(message)
    return text if translated is message else json.dumps(translated)


def ga_to_client(event: dict[str, Any]) -> dict[str, Any] | None:
    """A GA server event, as a beta client expects it; None: beta has no such event, send
    nothing. `tutor.*` events are ours in both dialects and go unchanged."""
    kind = event.get("type")
    if not isinstance(kind, str) or kind.startswith("tutor."):
        return event
    if kind in GA_ONLY:
        return None
    out = {**event, "type": SERVER_NAMES.get(kind, kind)}
    for field, convert in SERVER_FIELDS.items():
        if field in out:
            out[field] = convert(out[field])
    return out
