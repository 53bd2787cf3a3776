"""Prometheus metrics (`GET /metrics`) and the readiness check (`GET /readyz`).

One registry per app (tests run several apps in a process). What is recorded, by whom:
- `tutor_stage_seconds{stage}`: per-turn stage latencies, from the figures `server.session_runner` already
  measures for `tutor.response.metrics` (transcription, retrieval, first token, end of turn to
  first delta, first audio after first delta, the server's own share);
- `tutor_sessions_total`, `tutor_sessions_connected`, `tutor_turns_total{kind,status}`,
  `tutor_barge_ins_total`, `tutor_errors_total{code}` (every `error` event sent);
- `tutor_quota_store_failures_total` (Redis unreachable: quotas fail open),
  `tutor_email_outbox{status}`, `tutor_spool_pending` (accepted rows the database has not
  committed yet) and `tutor_spool_dead_letters` (rows it refused for good) (read at scrape time);
- `tutor_vad_frame_seconds` (one audio chunk in SAMPLE_EVERY timed, per 30 ms frame) and
  `tutor_endpoint_decision_seconds` (the chunks that ended a turn), timed by `server.session_runner`;
- `tutor_provider_failures_total{provider,code}` (stt, llm, tts, moderation, turn: the
  end-of-turn model; voice, /api/ai/*);
- `tutor_speculations_total{outcome}` and `tutor_speculative_calls_total{kind,result}`;
- `tutor_turn_model_seconds` (one end-of-turn verdict, semantic_vad) and
  `tutor_turn_verdicts_total{verdict}` (complete: probability ≥ 0.5, else incomplete);
- prometheus-client's `process_*` (resident memory, open file descriptors, CPU; Linux), so
  growth of memory or descriptors shows (the soak benchmark samples the same figures);
- how busy the process is, said by itself (docs/operations.md, "How busy is a process"):
  `tutor_event_loop_lag_seconds` (how late the event loop wakes, `server.loopwatch`),
  `tutor_session_cpu_seconds_total` and `tutor_session_audio_seconds_total` (the CPU time the
  voice sessions' own work took on the loop, and the audio they received: live sessions' figures
  are read at scrape time, so the frame path observes nothing), and
  `tutor_session_cpu_ms_per_audio_second` (one observation per session with at least a second of
  audio, when it ends).
The frame path costs two clock reads and two thread-CPU reads per chunk; histograms are observed
only on sampled chunks.

With `tutor serve --workers N` (server.workers) every worker writes its metrics to files in
prometheus-client's multiprocess folder (PROMETHEUS_MULTIPROC_DIR), and /metrics, whichever
worker answers, shows all of them: counters and histograms summed, `tutor_sessions_connected`
summed over the live workers, the spool figures over every worker's spool file, and the
`process_*` figures summed over the live workers (their start time and descriptor limit: the
smallest).
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               generate_latest)
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select, text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.services import services
from store.db import revisions
from store.models import EmailNotification

STAGES = {"stt_ms": "transcription", "retrieval_ms": "retrieval",
          "llm_first_token_ms": "first_token",
          "end_of_turn_to_first_delta_ms": "end_of_speech_to_first_delta",
          "first_audio_after_first_delta_ms": "first_audio", "server_ms": "server_own",
          "transcript_wait_ms": "transcript_wait"}
FRAME_BUCKETS = (0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                 0.005, 0.01)
SAMPLE_EVERY = 50  # one audio chunk in this many is timed for tutor_vad_frame_seconds
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CPU_PER_AUDIO_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
MIN_AUDIO_S = 1.0  # a session with less audio than this is not observed per audio second
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_open_fds, ...
        self.stage = Histogram("tutor_stage_seconds", "Latency of each stage of a turn",
                               ["stage"], buckets=BUCKETS, registry=r)
        self.sessions = Counter("tutor_sessions", "Voice sessions opened", registry=r)
        self.connected = Gauge("tutor_sessions_connected", "Voice sessions open now",
                               registry=r, multiprocess_mode="livesum")
        self.turns = Counter("tutor_turns", "Answers finished", ["kind", "status"], registry=r)
        self.barge_ins = Counter("tutor_barge_ins", "Answers cut off by the student speaking",
                                 registry=r)
        self.errors = Counter("tutor_errors", "Error events sent to clients", ["code"],
                              registry=r)
        self.vad_frame = Histogram(
            "tutor_vad_frame_seconds", "Compute time of VAD and endpointing per 30 ms audio "
            "frame (one chunk in SAMPLE_EVERY is timed)", buckets=FRAME_BUCKETS, registry=r)
        self.endpoint = Histogram(
            "tutor_endpoint_decision_seconds", "Compute time of the audio chunk that ended a "
            "turn (VAD, endpointing, cutting out the turn's audio)", buckets=FRAME_BUCKETS,
            registry=r)
        self.provider_failures = Counter(
            "tutor_provider_failures", "Provider calls that failed, by provider (stt, llm, tts) "
            "and error code (provider_timeout, provider_error, ...)", ["provider", "code"],
            registry=r)
        self.speculations = Counter(
            "tutor_speculations", "Speculative turn ends, by outcome: hit (the transcript "
            "started at the pause was used), miss (the student went on: work discarded)",
            ["outcome"], registry=r)
        self.quota_store_failures = Counter(
            "tutor_quota_store_failures", "Quota or rate-limit store unreachable (failed open)",
            registry=r)
        self.speculative_calls = Counter(
            "tutor_speculative_calls", "Provider calls started speculatively, by kind (stt, "
            "llm) and result (used, wasted)", ["kind", "result"], registry=r)
        self.loop_lag = Histogram(
            "tutor_event_loop_lag_seconds", "How late the event loop woke from a fixed sleep "
            "(server.loopwatch): grows when the process has more work than one core does",
            buckets=LAG_BUCKETS, registry=r)
        self.session_cpu_per_audio = Histogram(
            "tutor_session_cpu_ms_per_audio_second", "Per voice session, at its end: CPU ms "
            "its own work took on the event loop per second of audio it received",
            buckets=CPU_PER_AUDIO_BUCKETS, registry=r)
        self.turn_model = Histogram(
            "tutor_turn_model_seconds", "End-of-turn model calls (semantic_vad), queue included",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0), registry=r)
        self.turn_verdicts = Counter(
            "tutor_turn_verdicts", "End-of-turn verdicts, by verdict (complete: the model's "
            "probability ≥ 0.5)", ["verdict"], registry=r)
        # of the sessions that ended; the live ones' are added at scrape time (metrics_endpoint)
        self.ended_cpu_s = 0.0
        self.ended_audio_s = 0.0
        # with several workers a scrape cannot read the other workers' live sessions: each
        # worker counts its sessions as they end, in counters the multiprocess files sum
        self.session_counters = (
            Counter("tutor_session_cpu_seconds", "CPU time the voice sessions' own work took "
                    "on the event loop, sessions that ended", registry=r),
            Counter("tutor_session_audio_seconds", "Seconds of audio the voice sessions "
                    "received, sessions that ended", registry=r),
        ) if multiprocess_folder() is not None else None

    def session_ended(self, cpu_s: float, audio_s: float) -> None:
        """A voice session ended: its CPU and audio join the totals (it leaves the live set
        in the same step, so that the counters never go back)."""
        self.ended_cpu_s += cpu_s
        self.ended_audio_s += audio_s
        if self.session_counters is not None:
            self.session_counters[0].inc(cpu_s)
            self.session_counters[1].inc(audio_s)
        if audio_s >= MIN_AUDIO_S:
            self.session_cpu_per_audio.observe(cpu_s * 1000 / audio_s)

    def turn_verdict(self, seconds: float, probability: float) -> None:
        self.turn_model.observe(seconds)
        self.turn_verdicts.labels("complete" if probability >= 0.5 else "incomplete").inc()

    def observe_turn(self, kind: str, status: str, stages: dict[str, float]) -> None:
        self.turns.labels(kind, status).inc()
        for key, stage in STAGES.items():
            value = stages.get(key)
            if value is not None and value >= 0:
                self.stage.labels(stage).observe(value / 1000)

    def provider_failed(self, provider: str, code: str) -> None:
        if code != "provider_not_configured":  # a setting missing, not a provider failing
            self.provider_failures.labels(provider, code).inc()

    def event_sent(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "error":
            self.errors.labels(event["error"].get("code") or "unknown").inc()
        elif kind == "response.done":
            details = event["response"].get("status_details") or {}
            if details.get("reason") == "turn_detected":
                self.barge_ins.inc()


class _AtScrape:
    """Figures read when scraped: the email outbox by status and the write-ahead spool's rows
    (`store.spool`)."""

    def __init__(self, outbox: dict[str, int], spool: dict[str, int],
                 sessions: tuple[float, float] | None = None) -> None:
        self.outbox = outbox
        self.spool = spool
        # (CPU seconds, audio seconds) of all voice sessions so far; None: counted by
        # Metrics.session_counters instead (several workers)
        self.sessions = sessions

    def collect(self):  # type: ignore[no-untyped-def]
        family = GaugeMetricFamily("tutor_email_outbox", "Email outbox messages by status",
                                   labels=["status"])
        for status, n in sorted(self.outbox.items()):
            family.add_metric([status], n)
        yield family
        yield GaugeMetricFamily("tutor_spool_pending", "Accepted turns and usage rows in the "
                                "local spool, not yet committed by the database",
                                value=self.spool["pending"])
        yield GaugeMetricFamily("tutor_spool_dead_letters", "Rows the database refused for "
                                "good, kept in the spool's dead letters (tutor dead-letters)",
                                value=self.spool["dead_letters"])
        if self.sessions is None:
            return
        cpu_s, audio_s = self.sessions
        yield CounterMetricFamily("tutor_session_cpu_seconds", "CPU time the voice sessions' "
                                  "own work took on the event loop (core, actions, events), "
                                  "ended and live sessions", value=cpu_s)
        yield CounterMetricFamily("tutor_session_audio_seconds", "Seconds of audio the voice "
                                  "sessions received, ended and live sessions", value=audio_s)


async def metrics_endpoint(request: Request) -> Response:
    state = services(request)
    metrics = state.metrics

    registry = CollectorRegistry()
    counts: dict[str, int] = {}
    try:
        async with state.db.session() as s:
            rows = await s.execute(select(EmailNotification.status, func.count())
                                   .group_by(EmailNotification.status))
            counts = {status: n for status, n in rows}
    except Exception:  # the database is down: /readyz says so; metrics still answer
        counts = {}
    folder = multiprocess_folder()
    if folder is None:
        spool = await state.spool.counts()
        # after the awaits: the live set and the ended totals are read in one step
        sessions = (metrics.ended_cpu_s + sum(r.cpu_s for r in state.runners),
                    metrics.ended_audio_s + sum(r.audio_s for r in state.runners))
        registry.register(_AtScrape(counts, spool, sessions))  # type: ignore[arg-type]
        body = generate_latest(metrics.registry) + generate_latest(registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
    # several workers (server.workers): everyone's figures, whichever worker answers
    from prometheus_client.multiprocess import MultiProcessCollector
    from store.spool import base_spool, counts_of, worker_spools

    spool = await asyncio.to_thread(counts_of, worker_spools(base_spool(state.spool.path)))
    registry.register(_AtScrape(counts, spool))  # type: ignore[arg-type]
    MultiProcessCollector(registry, path=str(folder))
    registry.register(_WorkersProcesses(folder))  # type: ignore[arg-type]
    body = await asyncio.to_thread(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def multiprocess_folder() -> Path | None:
    """prometheus-client's multiprocess folder, when this process writes its metrics there."""
    from prometheus_client import values

    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(folder) if folder and values.ValueClass is not values.MutexValue else None


class _WorkersProcesses:
    """prometheus-client's `process_*` figures of every live worker, summed (multiprocess mode
    has no process collector). The live workers are those whose live gauge file is in the
    folder: the supervisor removes a worker's when it exits (`mark_process_dead`)."""

    SMALLEST = {"process_start_time_seconds", "process_max_fds"}

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def collect(self):  # type: ignore[no-untyped-def]
        pids = sorted({int(m.group(1)) for f in self.folder.glob("gauge_livesum_*.db")
                       if (m := re.fullmatch(r"gauge_livesum_(\d+)\.db", f.name))})
        families: dict[str, Any] = {}
        for pid in pids:
            if not Path(f"/proc/{pid}").exists():
                continue
            for family in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():
                kept = families.setdefault(family.name, family)
                if kept is family:
                    continue
                for i, sample in enumerate(family.samples):
                    old = kept.samples[i]
                    value = (min(old.value, sample.value) if sample.name in self.SMALLEST
                             else old.value + sample.value)
                    kept.samples[i] = old._replace(value=value)
        yield from families.values()


async def readyz(request: Request) -> Response:
    """Ready to take traffic: the database answers and is migrated at least to this code's head
    (a revision this code does not know is a newer release's, migrated ahead during a rolling
    deploy: migrations only add, so this code still works), Redis answers (when configured).
    503 with the failing checks otherwise. `/healthz` stays a cheap liveness check."""
    state = services(request)
    checks: dict[str, str] = {}
    try:
        async with state.db.session() as s:
            await asyncio.wait_for(s.execute(text("SELECT 1")), 2.0)
            current = (await s.execute(text("SELECT version_num FROM alembic_version"))
                       ).scalar_one_or_none()
        head, known = revisions()
        checks["database"] = "ok"
        behind = current is None or (current != head and current in known)
        checks["migrations"] = f"at {current}, head is {head}" if behind else "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {exc.__class__.__name__}"
    if state.redis is not None:
        try:
            await asyncio.wait_for(state.redis.ping(), 2.0)
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unreachable: {exc.__class__.__name__}"
    if state.draining:
        checks["draining"] = "the server is stopping: send new sessions elsewhere"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks},
                        status_code=200 if ready else 503)
