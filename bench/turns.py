"""Turn-taking quality on speech whose turns are known: how soon each turn ends after the speech
really ended, and how many hesitations are wrongly cut, for server_vad and for semantic_vad at
each eagerness with the real end-of-turn model (smart-turn v3). Figures, not assertions.

Both corpora are replayed through the protocol core (`realtime.RealtimeSession`, 20 ms chunks):
tests/speech (espeak-ng with known pauses: where each stretch of speech ends is in its manifest)
and ../shared/audio (where a single question really ends is taken from the audio, as
bench.side_by_side finds it). Each end-of-turn check is answered by the model at once (inference is
timed apart, per call), so what is measured is the decision, not this machine's load. With
`--text`, each pause's speculative transcript is the corpus text spoken so far (what a real
transcriber returns; the loopback fake's placeholder text carries no words). Writes
bench/results/turns.json.

    python -m bench.turns [--text]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import wave
from pathlib import Path

from bench.side_by_side import true_speech_ends_ms
from providers import smart_turn
from realtime import JudgeTurn, RealtimeSession, Send, SessionConfig, Transcribe, TurnDetection

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
OURS = ROOT / "tests" / "speech"
SHARED = Path(os.environ.get("TUTOR_SPEECH_CORPUS", ROOT.parent / "shared" / "audio"))
TAIL_MS = 4000  # silence appended, so that even the longest wait ends the last turn


def read(path: Path) -> bytes:
    with wave.open(str(path)) as w:
        return w.readframes(w.getnframes()) + b"\0\0" * (16 * TAIL_MS)


def true_end(pcm: bytes) -> int:
    """Where the last speech of `pcm` (a file with TAIL_MS of silence appended) really ends,
    found from the audio as bench.side_by_side does."""
    return int(true_speech_ends_ms(pcm[: len(pcm) - 32 * TAIL_MS])[-1])


def corpus() -> list[dict]:
    """Every file: its audio, the turns expected, the true end of its last speech (ms, or None),
    and the texts of its segments with where each ends (for --text)."""
    files = []
    manifest = json.loads((OURS / "manifest.json").read_text())["files"]
    for name, f in manifest.items():
        files.append({"name": name, "pcm": read(OURS / name), "turns": f["utterances"],
                      "kind": f["kind"], "end": f["speech_ms"][-1][1],
                      "segments": list(zip([s[1] for s in f["speech_ms"]], f["texts"]))})
    if (SHARED / "manifest.json").exists():
        for name, f in json.loads((SHARED / "manifest.json").read_text())["files"].items():
            pcm = read(SHARED / name)
            single = f["utterances"] == 1
            kind = "hesitation" if "pause" in f.get("note", "") else \
                "complete" if f["utterances"] else "silence"
            files.append({"name": "shared/" + name, "pcm": pcm, "turns": f["utterances"],
                          "kind": kind, "end": true_end(pcm) if single else None,
                          "segments": [(true_end(pcm), " ".join(f["texts"]))] if single
                          else []})
    return files


def config(kind: str, eagerness: str, text: bool) -> SessionConfig:
    td = TurnDetection(type=kind, eagerness=eagerness)
    return SessionConfig(instructions="tutor", model="m", input_rate=16000, turn_detection=td,
                         default_turn_detection=td, turn_model=True, semantic_pause_ms=150,
                         speculative_pause_ms=150 if text else 0)


def spoken_so_far(segments: list[tuple[int, str]], pcm: bytes) -> str:
    """The corpus text whose speech ends inside `pcm` (a turn's audio from 0 ms)."""
    upto = len(pcm) // 32
    return " ".join(t for end, t in segments if end <= upto)


def replay(f: dict, cfg: SessionConfig, model, costs: list[float], text: bool) -> dict:
    s = RealtimeSession(cfg)
    s.open(0.0)
    stops, pcm = [], f["pcm"]
    starts: list[int] = []
    for i in range(0, len(pcm), 640):
        actions = s.receive_audio(pcm[i:i + 640], i / 32000)
        while actions:
            a = actions.pop(0)
            if isinstance(a, JudgeTurn):
                t = time.perf_counter()
                p = model.predict(a.pcm)
                costs.append((time.perf_counter() - t) * 1000)
                actions += s.turn_judged(a.serial, p)
            elif isinstance(a, Transcribe) and a.speculative:
                # the pause's audio starts at the turn's start: offset it to the file's timeline
                heard = pcm[: (starts[-1] * 32 if starts else 0) + (len(a.wav) - 44)]
                words = spoken_so_far(f["segments"], heard) if text else "[audio]"
                actions += s.speculative_transcribed(a.speculative, words, 1.0)
            elif isinstance(a, Send):
                if a.event["type"] == "input_audio_buffer.speech_started":
                    starts.append(a.event["audio_start_ms"])
                elif a.event["type"] == "input_audio_buffer.speech_stopped":
                    stops.append(a.event["audio_end_ms"])
    return {"turns": len(stops), "after_end_ms": stops[-1] - f["end"]
            if f["end"] is not None and stops else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", action="store_true",
                        help="speculative transcripts carry the corpus words")
    args = parser.parse_args()
    path = smart_turn.model_path()
    if path is None:
        raise SystemExit("smart-turn v3 is not installed: make turn-model")
    model = smart_turn.load(path)
    files = corpus()
    runs = [("server_vad", "auto")] + [("semantic_vad", e) for e in ("high", "auto", "low")]
    costs: list[float] = []
    table = {}
    print(f"{len(files)} files; speculative transcripts "
          f"{'carry the corpus words' if args.text else 'carry no words'}")
    print(f"{'run':22s} {'wrong turn counts':>18s} {'hesitations cut':>16s} "
          f"{'after end p50/max (ms)':>24s}")
    for kind, eagerness in runs:
        results = {f["name"]: replay(f, config(kind, eagerness, args.text), model, costs,
                                     args.text) for f in files}
        wrong = [n for f in files for n in [f["name"]] if results[n]["turns"] != f["turns"]]
        cut = [f["name"] for f in files if f["kind"] == "hesitation"
               and results[f["name"]]["turns"] > f["turns"]]
        after = [r["after_end_ms"] for r in results.values() if r["after_end_ms"] is not None]
        name = kind if kind == "server_vad" else f"{kind} {eagerness}"
        table[name] = {"wrong_turn_counts": wrong, "hesitations_cut": cut,
                       "after_end_ms_p50": statistics.median(after),
                       "after_end_ms_max": max(after), "per_file": results}
        print(f"{name:22s} {len(wrong):>18d} {len(cut):>16d} "
              f"{statistics.median(after):>15.0f} / {max(after):.0f}")
    print(f"model: {len(costs)} calls, {statistics.median(costs):.1f} ms p50 "
          f"(one thread, {platform.machine()})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("turns-text.json" if args.text else "turns.json")
    out.write_text(json.dumps({"text": args.text, "runs": table,
                               "model_ms_p50": statistics.median(costs),
                               "machine": platform.platform()}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
