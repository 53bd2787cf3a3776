"""The Pipecat 1.x side of `python -m bench.side_by_side`: one process, one pipeline per WebSocket.

Runs under bench/.venv-pipecat (bench/pipecat-requirements.txt), never under the project's venv,
and imports nothing from the project. The standard Pipecat pattern for many sessions in one
process: a FastAPI app whose WebSocket endpoint builds a `FastAPIWebsocketTransport` and a
`PipelineWorker` per connection and runs it with its own `WorkerRunner` (1.3+ names; what
Pipecat's development runner does for its /ws-client route):

    transport.input()              16 kHz PCM16 binary frames (BenchSerializer)
    → OpenAISTTService             segmented (Whisper-style upload) STT, at the fake provider
    → LLMUserAggregator            --turn vad (default): Silero VAD (stop_secs = --silence-ms),
                                   turn stop on VAD stop + transcript
                                   (SpeechTimeoutUserTurnStopStrategy with no extra wait)
                                   --turn smart-turn-v3: Pipecat's recommended turn-taking:
                                   Silero VAD with a short stop (--silence-ms 200), then
                                   TurnAnalyzerUserTurnStopStrategy(LocalSmartTurnAnalyzerV3)
                                   (the bundled smart-turn-v3.2-cpu.onnx, one per connection)
                                   decides whether the turn is over; the turn stops once it says
                                   complete and the (finalized, segmented) transcript is in; if
                                   it says incomplete, after its own 3 s of silence
    → OpenAILLMService             streaming chat completions, at the fake provider
    → DeltaRelay                   each LLMTextFrame → {"type": "response.output_text.delta"}
    → transport.output()           (no audio out, no TTS)
    → LLMAssistantAggregator

Metrics, usage metrics, RTVI and turn tracking are off; logging at WARNING (Pipecat logs at
DEBUG by default, which would cost it CPU that ours, run at --log-level warning, does not spend).

    bench/.venv-pipecat/bin/python bench/pipecat_bot.py --port 8766 \
        --base-url http://127.0.0.1:9100/v1 --silence-ms 600 [--turn vad]
    bench/.venv-pipecat/bin/python bench/pipecat_bot.py --port 8766 \
        --base-url http://127.0.0.1:9100/v1 --silence-ms 200 --turn smart-turn-v3
"""

from __future__ import annotations

import argparse
import json
import sys

import uvicorn
from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse
from loguru import logger

from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
    MetricsFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
)
from pipecat.metrics.metrics import TurnMetricsData
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.serializers.base_serializer import FrameSerializer
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.services.openai.stt import OpenAISTTService
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)
from pipecat.turns.user_stop.speech_timeout_user_turn_stop_strategy import (
    SpeechTimeoutUserTurnStopStrategy,
)
from pipecat.turns.user_stop.turn_analyzer_user_turn_stop_strategy import (
    TurnAnalyzerUserTurnStopStrategy,
)
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.workers.runner import WorkerRunner

SAMPLE_RATE = 16000
SYSTEM_PROMPT = "You are a patient tutor. Answer the student's question briefly."


class BenchSerializer(FrameSerializer):
    """Binary messages in: raw 16 kHz PCM16 mono. Transport messages out: their JSON.
    Text messages in (the client's `session.update`) are ignored."""

    async def serialize(self, frame: Frame) -> str | bytes | None:
        if isinstance(frame, (OutputTransportMessageFrame, OutputTransportMessageUrgentFrame)):
            return json.dumps(frame.message)
        return None

    async def deserialize(self, data: str | bytes) -> Frame | None:
        if isinstance(data, bytes):
            return InputAudioRawFrame(audio=data, sample_rate=SAMPLE_RATE, num_channels=1)
        return None


class DeltaRelay(FrameProcessor):
    """Sends every LLM text frame to the client at once, as ours sends its text deltas; and each
    smart-turn verdict (the TurnMetricsData the turn stop strategy pushes whether or not metrics
    are enabled) as {"type": "bench.turn_verdict", "is_complete", "probability",
    "inference_ms"}, so the benchmark can count the model's live verdicts."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMTextFrame):
            await self.push_frame(OutputTransportMessageUrgentFrame(
                message={"type": "response.output_text.delta", "delta": frame.text}))
        elif isinstance(frame, LLMFullResponseEndFrame):
            await self.push_frame(OutputTransportMessageUrgentFrame(
                message={"type": "response.done"}))
        elif isinstance(frame, MetricsFrame):
            for d in frame.data:
                if isinstance(d, TurnMetricsData):
                    await self.push_frame(OutputTransportMessageUrgentFrame(message={
                        "type": "bench.turn_verdict", "is_complete": d.is_complete,
                        "probability": round(d.probability, 3),
                        "inference_ms": round(d.e2e_processing_time_ms, 1)}))
        await self.push_frame(frame, direction)


TURNS = ("vad", "smart-turn-v3")


def turn_strategies(turn: str) -> UserTurnStrategies:
    """How a connection's user turns stop (start: the default, VAD or transcript)."""
    if turn == "smart-turn-v3":
        # as Pipecat's smart-turn docs configure it (and what UserTurnStrategies() defaults to
        # in 1.14): the model decides once the VAD reports its short silence
        return UserTurnStrategies(stop=[TurnAnalyzerUserTurnStopStrategy(
            turn_analyzer=LocalSmartTurnAnalyzerV3())])
    # the turn ends when the VAD has heard stop_secs of silence and the transcript is in: no
    # further wait on top (ours: the silence threshold, then transcription)
    return UserTurnStrategies(stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.0)])


def build_app(base_url: str, silence_ms: int, api_key: str, turn: str = "vad") -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"ok": True, "chat": True})

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        transport = FastAPIWebsocketTransport(websocket, FastAPIWebsocketParams(
            audio_in_enabled=True, audio_in_sample_rate=SAMPLE_RATE,
            audio_out_enabled=False, serializer=BenchSerializer()))
        stt = OpenAISTTService(api_key=api_key, base_url=base_url)
        llm = OpenAILLMService(api_key=api_key, base_url=base_url,
                               settings=OpenAILLMService.Settings(system_instruction=SYSTEM_PROMPT))
        context = LLMContext()
        user, assistant = LLMContextAggregatorPair(context, user_params=LLMUserAggregatorParams(
            vad_analyzer=SileroVADAnalyzer(params=VADParams(stop_secs=silence_ms / 1000)),
            user_turn_strategies=turn_strategies(turn)))
        pipeline = Pipeline([transport.input(), stt, user, llm, DeltaRelay(), transport.output(),
                             assistant])
        worker = PipelineWorker(pipeline, params=PipelineParams(
            audio_in_sample_rate=SAMPLE_RATE, enable_metrics=False, enable_usage_metrics=False),
            enable_rtvi=False, enable_turn_tracking=False)

        @transport.event_handler("on_client_disconnected")
        async def on_client_disconnected(_transport, _websocket) -> None:
            await worker.cancel()

        # one runner per connection, as Pipecat's own development runner does (its /ws-client
        # route calls the bot's entry point per connection, which runs its own WorkerRunner)
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await runner.run()

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Pipecat 1.x voice bot for bench.side_by_side")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--base-url", required=True, help="OpenAI-compatible API, e.g. the fake")
    parser.add_argument("--api-key", default="bench")
    parser.add_argument("--silence-ms", type=int, default=600, help="Silero's stop_secs (ms)")
    parser.add_argument("--turn", choices=TURNS, default="vad",
                        help="vad: the turn ends after --silence-ms of silence; smart-turn-v3: "
                             "then the smart-turn v3 model decides (use --silence-ms 200)")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level=args.log_level.upper())
    uvicorn.run(build_app(args.base_url, args.silence_ms, args.api_key, args.turn),
                host=args.host, port=args.port, log_level=args.log_level.lower())


if __name__ == "__main__":
    main()
