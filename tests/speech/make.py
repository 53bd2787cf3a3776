"""Makes the project's own speech corpus: hesitations, complete and incomplete endings.

Each file is spoken segments (espeak-ng, several voices) joined by silences of known length,
so where every stretch of speech really ends is known from the construction, not guessed from
the audio: the manifest gives, per file, the turns a correct endpointer must find, what was
said, and `speech_ms` ([start, end] of each voiced segment, trimmed of espeak's own leading and
trailing silence by sox to -45 dBFS). Deterministic: the same espeak-ng and sox make the same
files. Regenerate (Debian: apt-get install espeak-ng sox) with

    python tests/speech/make.py
"""

from __future__ import annotations

import json
import subprocess
import wave
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RATE = 16000
LEAD_MS = 500
TAIL_MS = 1500

# name → (voice, kind, [segment text or pause in ms, ...], turns expected, note)
# A pause inside a turn is a hesitation: the file is one turn whatever the endpointer hears.
FILES: dict[str, tuple[str, str, list[str | int], int, str]] = {
    "hes_apples.wav": ("en-us", "hesitation",
                       ["So if I have three apples", 400, "and I eat one, how many are left?"],
                       1, "a 0.4 s pause after a clause, before 'and'"),
    "hes_answer_um.wav": ("en-gb", "hesitation",
                          ["I think the answer is", 450, "um", 350, "twelve."],
                          1, "a trailing 'is', a filler, then the answer"),
    "hes_derivative.wav": ("en-us+f3", "hesitation",
                           ["What is the", 350, "derivative of sine?"],
                           1, "a 0.35 s pause after an article"),
    "hes_explain.wav": ("en-us+m3", "hesitation",
                        ["Can you explain", 500, "why the sky is blue?"],
                        1, "a 0.5 s pause after a verb that needs its object"),
    "hes_because.wav": ("en", "hesitation",
                        ["It rains because", 450, "the clouds get too heavy."],
                        1, "a 0.45 s pause after 'because'"),
    "end_photosynthesis.wav": ("en-gb", "complete",
                               ["What do plants need for photosynthesis?"],
                               1, "one complete question"),
    "end_triangle.wav": ("en-us+f3", "complete",
                         ["How many degrees are in a triangle?"],
                         1, "one complete question"),
    "end_statement.wav": ("en-us", "complete",
                          ["I finished the first exercise."],
                          1, "one complete statement"),
    "two_questions.wav": ("en-us+m3", "complete",
                          ["What is a prime number?", 1200, "Is nine a prime number?"],
                          2, "two complete questions, 1.2 s apart: two turns"),
}


def speak(text: str, voice: str) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", "155", "--stdout", text],
                         capture_output=True, check=True).stdout
    raw = subprocess.run(  # 16 kHz mono PCM16, espeak's own silence trimmed at both ends
        ["sox", "-t", "wav", "-", "-r", str(RATE), "-c", "1", "-b", "16", "-t", "raw", "-",
         "silence", "1", "0.01", "-45d", "reverse", "silence", "1", "0.01", "-45d", "reverse"],
        input=wav, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.int16)


def silence(ms: int) -> np.ndarray:
    return np.zeros(RATE * ms // 1000, np.int16)


def make() -> dict[str, object]:
    files: dict[str, object] = {}
    for name, (voice, kind, parts, turns, note) in FILES.items():
        pieces, speech, texts, at = [silence(LEAD_MS)], [], [], LEAD_MS
        for part in parts:
            if isinstance(part, int):
                pieces.append(silence(part))
                at += part
                continue
            audio = speak(part, voice)
            ms = len(audio) * 1000 // RATE
            pieces.append(audio)
            speech.append([at, at + ms])
            texts.append(part)
            at += ms
        pieces.append(silence(TAIL_MS))
        with wave.open(str(HERE / name), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(np.concatenate(pieces).tobytes())
        files[name] = {"utterances": turns, "kind": kind, "texts": texts, "voice": voice,
                       "speech_ms": speech, "note": note}
    return {"sample_rate": RATE, "format": "PCM16 mono WAV", "files": files}


if __name__ == "__main__":
    manifest = make()
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{len(manifest['files'])} files in {HERE}")  # type: ignore[arg-type]
