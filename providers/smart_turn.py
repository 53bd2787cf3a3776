"""Pipecat's smart-turn v3: an end-of-turn model on the audio itself, run on CPU with onnxruntime.

The model (BSD-2-Clause, ~8.7 MB ONNX, Whisper-tiny encoder with a classifier head) reads the
last 8 s of a turn and says how likely it is complete: a falling pitch and a finished phrase
against a trailing "and..." or a held word. It ships inside the `pipecat-ai` wheel on PyPI,
which the Makefile installs without its dependencies (`pip install --no-deps`): we only read the
model file, located through the package's metadata, and never import `pipecat` (its import
logs a banner and patches asyncio on Python < 3.12). Nothing is downloaded at run time.

Inference takes ~50 ms of one core, so it runs in a small thread pool (onnxruntime releases the
GIL), one call per pause the endpointer reports, never on the frame path. One model is loaded
per process and shared by every session: about 55 MB of the process's memory with onnxruntime's
arena, none of it per session.

The features are Whisper's log-mel spectrogram (80 mel bins, 25 ms windows every 10 ms),
computed with numpy as in `pipecat.audio.turn.smart_turn._whisper_features` (BSD-2-Clause,
itself derived from Hugging Face Transformers' WhisperFeatureExtractor, Apache-2.0);
tests/test_turn_model.py checks that both give the same features.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .errors import ProviderError

MODEL_FILE = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
RATE = 16000
WINDOW_S = 8  # the model reads the last 8 s of the turn
N_FFT, HOP, N_MELS = 400, 160, 80


def model_path() -> Path | None:
    """Where the installed `pipecat-ai` wheel keeps the model, or None when it is not installed."""
    try:
        dist = importlib.metadata.distribution("pipecat-ai")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(MODEL_FILE)))
    return path if path.is_file() else None


def _mel_filters() -> np.ndarray:
    """Slaney-scale, area-normalised triangular filters, (N_FFT // 2 + 1, N_MELS)."""
    def to_mel(hz: np.ndarray) -> np.ndarray:
        mel = 3.0 * hz / 200.0
        log = hz >= 1000.0
        mel[log] = 15.0 + np.log(hz[log] / 1000.0) * (27.0 / np.log(6.4))
        return mel

    def to_hz(mel: np.ndarray) -> np.ndarray:
        hz = 200.0 * mel / 3.0
        log = mel >= 15.0
        hz[log] = 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel[log] - 15.0))
        return hz

    edges = to_hz(np.linspace(to_mel(np.array([0.0]))[0], to_mel(np.array([RATE / 2]))[0],
                              N_MELS + 2))
    bins = np.linspace(0, RATE // 2, N_FFT // 2 + 1)
    slopes = edges[None, :] - bins[:, None]
    down = -slopes[:, :-2] / np.diff(edges)[:-1]
    up = slopes[:, 2:] / np.diff(edges)[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (edges[2:N_MELS + 2] - edges[:N_MELS]))[None, :]


_FILTERS = _mel_filters()
_WINDOW = np.hanning(N_FFT + 1)[:-1]  # periodic Hann


def features(pcm: bytes) -> np.ndarray:
    """The model's input for a turn: its last 8 s (zero-padded in front when shorter),
    normalised, as a (1, 80, 800) float32 log-mel spectrogram."""
    audio = np.frombuffer(pcm, np.int16).astype(np.float32) / 32768.0
    n = RATE * WINDOW_S
    audio = audio[-n:]
    if audio.size < n:
        audio = np.pad(audio, (n - audio.size, 0))
    audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
    padded = np.pad(audio.astype(np.float64), (N_FFT // 2, N_FFT // 2), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=-1)) ** 2
    log_mel = np.log10(np.maximum(1e-10, _FILTERS.T @ power.T))[:, :-1]
    log_mel = np.maximum(log_mel, log_mel.max() - 8.0)
    return ((log_mel + 4.0) / 4.0).astype(np.float32)[None]


class SmartTurn:
    """`providers.protocols.TurnModel` on smart-turn v3."""

    name = "smart-turn-v3.2"

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort  # only when a model is used: a heavy import

        options = ort.SessionOptions()
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1  # parallel across calls (the pool), not inside one
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(path), sess_options=options,
                                             providers=["CPUExecutionProvider"])
        workers = threads or max(1, min(4, os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="turn-model")

    def predict(self, pcm: bytes) -> float:
        """Blocking: the probability that the turn whose audio is `pcm` is complete."""
        out = self._session.run(None, {"input_features": features(pcm)})
        return float(np.clip(np.asarray(out[0]).reshape(-1)[0], 0.0, 1.0))

    async def complete(self, pcm: bytes) -> float:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self.predict, pcm)
        except Exception as exc:  # onnxruntime's own errors have no common base
            raise ProviderError("turn_model_failed", f"the end-of-turn model failed: {exc}") \
                from exc

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


_loaded: dict[Path, SmartTurn] = {}
_lock = threading.Lock()


def load(path: Path | None = None) -> SmartTurn | None:
    """The process's one SmartTurn (loaded on first use), or None when no model is installed."""
    path = path or model_path()
    if path is None:
        return None
    with _lock:
        if path not in _loaded:
            model = _loaded[path] = SmartTurn(path)
            # one call at load: onnxruntime sizes its memory arena on the first run (~30 MB),
            # which then belongs to the process, not to the first session judged
            model.predict(b"\0\0" * RATE)
        return _loaded[path]
