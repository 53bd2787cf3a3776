"""The end-of-turn model as shipped: smart-turn v3 from the pipecat-ai wheel, run by
providers.smart_turn, and a semantic_vad session through the real socket with it.

How well it judges is a measurement (`python -m bench.turns`), not a test: on espeak's synthetic
speech it is close to chance (docs/protocol.md §5.4)."""

from __future__ import annotations

import asyncio
import importlib.util
import os

import httpx
import numpy as np
import pytest
import websockets

from providers import smart_turn
from tests.conftest import make_settings
from tests.realtime_client import Conversation, session_update
from tests.test_endofturn import pcm_of
from tests.test_metrics import samples

PATH = smart_turn.model_path()
if PATH is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError("smart-turn v3 is not installed (make turn-model)")
    pytest.skip("smart-turn v3 is not installed (make turn-model)", allow_module_level=True)


def pipecat_features():
    """Pipecat's own feature extractor, loaded from its file (importing pipecat would need
    its dependencies, which we do not install)."""
    path = PATH.parent.parent / "_whisper_features.py"
    spec = importlib.util.spec_from_file_location("pipecat_whisper_features", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.compute_whisper_log_mel_features


@pytest.mark.parametrize("name", ["end_statement.wav", "hes_apples.wav"])
def test_our_features_are_pipecats(name):
    pcm = pcm_of(name)
    audio = np.frombuffer(pcm, np.int16).astype(np.float32) / 32768.0
    audio = np.pad(audio[-128000:], (max(0, 128000 - len(audio)), 0))
    theirs = pipecat_features()(audio, do_normalize=True)
    ours = smart_turn.features(pcm)[0]
    assert ours.shape == theirs.shape == (80, 800)
    assert np.abs(ours - theirs).max() < 1e-4


async def test_verdicts_are_probabilities_and_the_pool_gives_the_same_as_one_call():
    model = smart_turn.load()
    assert model is not None and smart_turn.load() is model  # one per process
    clips = [pcm_of(n)[: 16000 * 2 * k] for n, k in (("end_statement.wav", 3),
                                                     ("hes_apples.wav", 2),
                                                     ("hes_explain.wav", 2))]
    one_by_one = [model.predict(c) for c in clips]
    together = await asyncio.gather(*(model.complete(c) for c in clips))
    assert all(0.0 <= p <= 1.0 for p in one_by_one)
    assert together == pytest.approx(one_by_one, abs=1e-6)
    assert len({round(p, 3) for p in one_by_one}) > 1  # it does read the audio


async def test_a_semantic_vad_session_is_judged_by_the_model(fake, start_server):
    address = await start_server(make_settings(fake, turn_detection="semantic_vad",
                                               speculative=False))
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"http://{address}/healthz")).json()["turn_model"] \
            == smart_turn.SmartTurn.name
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        conv = Conversation(ws)
        created = await conv.until("session.created")
        td = created["session"]["audio"]["input"]["turn_detection"]
        assert td["type"] == "semantic_vad" and td["eagerness"] == "auto"
        await ws.send(session_update(16000))
        await conv.until("session.updated")
        await conv.stream(pcm_of("end_statement.wav", 2000), 16000)  # waits for the answer
    assert conv.count("input_audio_buffer.speech_stopped") == conv.count("response.done") == 1
    async with httpx.AsyncClient() as http:
        m = samples((await http.get(f"http://{address}/metrics")).text)
    verdicts = sum(v for (n, labels), v in m.items() if n == "tutor_turn_verdicts_total")
    assert verdicts >= 1
    assert m[("tutor_turn_model_seconds_count", ())] == verdicts
