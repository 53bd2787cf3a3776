"""The Realtime protocol core: one session of the OpenAI Realtime (GA) protocol, sans I/O.

It owns everything the protocol decides: validation and error codes, the session config
(`config`), the student's audio through VAD and endpointing (`input`), the conversation's items
(`items`), the answers with their items, tool calls and speech (`responses`, `spoken`), the
events (`events`), ids (`ids`) and the turn-taker, speculation and end-of-turn judge it drives
(`dialogue`).
It is pure: it never awaits, reads a clock, or touches a socket or a provider. Client messages
and provider results go in with the time as a parameter, `actions` come out; the shell
(`server.session_runner`) carries them out. Tests drive it with plain calls.
"""

from .actions import (Abandon, Action, Adopt, Cancel, Charge, Close, Generate, JudgeTurn, Record,
                      Release, ReportLimits, Send, SendBinary, Synthesize, Transcribe)
from .config import SessionConfig, TurnDetection
from .ids import Ids
from .session import RealtimeSession

__all__ = ["Abandon", "Action", "Adopt", "Cancel", "Charge", "Close", "Generate", "Ids", "JudgeTurn",
           "RealtimeSession", "Record", "Release", "ReportLimits", "Send", "SendBinary",
           "SessionConfig", "Synthesize", "Transcribe", "TurnDetection"]
