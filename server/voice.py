"""The Realtime WebSocket endpoint (`/api/voice`, `/v1/realtime`): one voice session per socket.

It refuses what must be refused before anything is read (the caps per address and user,
sign-in, a draining server, the plan), opens the session with its course's tutor settings
(`study.tutor`: the prompt, locked for a student, and the voice) and its plan (`billing.plan`), and
hands the socket to a `SessionRunner` (`server.session_runner`), the loop around the protocol
core (`realtime`).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

import structlog
from starlette.websockets import WebSocket

from accounts.errors import AuthError
from api.request import text_problem
from api.services import Services, services
from billing.plan import open_voice_session
from billing.service import CLOSE_TOO_MANY, Billing, QuotaError
from realtime import Ids, RealtimeSession
from realtime import events as ev
from realtime.beta import is_beta
from store.models import COURSE_CHARS

from .connections import SessionSlots
from .resume import ResumeStore
from .session_runner import SessionRunner

log = logging.getLogger("tutor.voice")
slog = structlog.get_logger("tutor.voice")


def subprotocol(websocket: WebSocket) -> str | None:
    """`realtime` when the client offers it (OpenAI's browser clients do, with the key as a
    second subprotocol): a browser fails the handshake unless one it offered is chosen."""
    offered = websocket.scope.get("subprotocols") or []
    return "realtime" if "realtime" in offered else None


async def refuse(websocket: WebSocket, code: str, message: str, error_type: str,
                 close_code: int) -> None:
    """Accepted only to say why, in the protocol's own terms, then closed: no audio is read."""
    await websocket.accept(subprotocol=subprotocol(websocket))
    await websocket.send_text(json.dumps(ev.refusal(code, message, error_type)))
    await websocket.close(code=close_code, reason=code)


async def realtime_endpoint(websocket: WebSocket) -> None:
    """One voice session, within this process's caps per client address and per user
    (`SessionSlots`; the address is the one uvicorn trusts, X-Forwarded-For from a trusted
    proxy). A socket past a cap is refused: `error` and close 4429, like the plan's cap."""
    state = services(websocket)
    slots: SessionSlots = state.slots
    address = websocket.client.host if websocket.client else "unknown"
    with slots.address(address) as refusal:  # before sign-in: holding sockets needs no account
        if refusal is not None:
            await refuse(websocket, refusal.code, refusal.message, "invalid_request_error",
                         CLOSE_TOO_MANY)
            return
        await _signed_in_session(websocket, state, slots, address)


async def _signed_in_session(websocket: WebSocket, state: Services, slots: SessionSlots,
                             address: str) -> None:
    # A database or Redis outage before accept (here, or in the plan's checks below) leaves as
    # an exception: server.outage.OutageMiddleware refuses with `service_unavailable`, 1013.
    try:
        user = await state.auth.socket_user(websocket)
    except AuthError as exc:
        await refuse(websocket, exc.code, exc.message, "authentication_error", 1008)
        return
    with slots.user(user.id) as refusal:
        if refusal is not None:
            await refuse(websocket, refusal.code, refusal.message, "invalid_request_error",
                         CLOSE_TOO_MANY)
            return
        await _session(websocket, state, user, address)


async def _session(websocket: WebSocket, state: Services, user: Any, address: str) -> None:
    if state.draining:
        await refuse(websocket, "server_shutting_down", "the server is restarting; connect "
                     "again in a moment", "server_error", 1012)
        return
    course = websocket.query_params.get("course") or state.settings.default_course
    problem = course and text_problem(course, COURSE_CHARS)
    if problem:  # the turn's row could not be stored (PostgreSQL refuses NUL and long text)
        await refuse(websocket, "invalid_course", f"course {problem}", "invalid_request_error",
                     1008)
        return
    billing: Billing = state.billing
    ids = Ids.random()  # the core's id factory: the session's id is its first
    session_id = ids.session
    resumed = await take_resume(state.resume, websocket.query_params.get("resume"), user.id)
    tutor = await state.tutors.current(course)  # the course's settings, read once per session
    config = tutor.session_config(state.session_config, state.settings.instructions,
                                  locked=await state.tutors.locked(tutor, user),
                                  weak_sections=await state.tutors.weak_sections(user.id, course))
    try:
        opened = await open_voice_session(
            billing, user, address=address, session_id=session_id, config=config,
            speech=state.providers.speech is not None,
            speak_by_default=state.settings.output_modalities == "auto",
            replacing=resumed.get("session_id") if resumed else None,
            course_voice=tutor.settings.voice)
    except QuotaError as exc:
        await refuse(websocket, exc.code, exc.message, "invalid_request_error", exc.close_code)
        return
    grant = opened.grant
    try:
        binary = websocket.query_params.get("audio") == "binary"
        session = RealtimeSession(opened.config, provider_problem=state.providers.problem,
                                  meter=grant.meter, binary_audio=binary, ids=ids)
        await websocket.accept(subprotocol=subprotocol(websocket))
        runner = SessionRunner(websocket, session, state.providers, user_id=user.id,
                               beta=is_beta(websocket.headers, websocket.query_params),
                               outbox_max_bytes=state.settings.ws_outbox_max_bytes,
                               record=state.writer.submit, durable=state.writer.durable,
                               course=course,
                               knowledge=state.knowledge(course), billing=billing, grant=grant,
                               resume=state.resume, resume_ttl_s=state.settings.resume_ttl_s,
                               metrics=state.metrics, moderation=state.moderation,
                               loopwatch=state.loopwatch)
        state.metrics.sessions.inc()
        state.metrics.connected.inc()
        state.runners.add(runner)
        structlog.contextvars.bind_contextvars(session_id=session_id, user_id=user.id)
        slog.info("session opened", course=course, tier=grant.tier.name,
                  resumed=bool(resumed), audio=binary and "binary" or "events")
        try:
            await runner.run(resume=resumed)
        finally:
            state.metrics.session_ended(runner.cpu_s, runner.audio_s)  # with the discard: one step
            state.runners.discard(runner)
            state.metrics.connected.dec()
            slog.info("session closed")
            structlog.contextvars.clear_contextvars()
    finally:
        await billing.close_voice(user.id, session_id)


async def take_resume(store: ResumeStore | None, token: str | None, user_id: str
                      ) -> dict[str, Any] | Literal[False] | None:
    """The dropped session's state for `?resume=`: None without a token, False when the token
    is unknown, used, expired or another user's (or the store cannot be reached)."""
    if not token or store is None:
        return None
    try:
        state = await store.take(token)
    except Exception as exc:
        log.warning("resume store unavailable (%s); starting afresh", exc)
        return False
    return state if state is not None and state.get("user_id") == user_id else False
