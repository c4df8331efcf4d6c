#!/usr/bin/env python
"""Token-level streaming against whole-chunk rendering, measured in the same run.

    python scripts/bench_stream.py [--checkpoint DIR] [--device cpu|cuda] [--tokens-per-sentence 75]
                                   [--windows 0 12,50,0 12,50 12,50,5 8,25 25,100] [--runs 3]

Speaks a 3-sentence request (one sentence chunk: chunks hold up to 300 characters) with one voice
through ``VoiceDB.speak_stream``, the path ``voicedb serve`` streams from, once per run and window
setting, the same seed every time. ``0`` is the baseline: each chunk rendered whole once T3 has
generated it (upstream's way). For each setting:

- time to the first audio and to the last, and the first as a share of the total (the goal: within 25%);
- whether the audio has the baseline's length (it must: T3 samples the same tokens, see
  ``voicedb.streaming``), and how far it is from the baseline: the level difference in 20 ms frames at the
  seams between windows and elsewhere (dB, median and worst), and the log-spectrum distance of the whole
  (dB, mean over 1024-sample frames), against that of two baseline runs with different seeds for scale.

The offline test checkpoint (built into .pytest_cache when ``--checkpoint`` is not given) has a random T3
that never stops by itself, so the chunk is capped at ``--tokens-per-sentence`` for each of its three
sentences (75 tokens: 3 s of speech a sentence, 9 s in all; a real T3 speaks these about that long).
Machines are noisy: compare the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchutil import device_name

ROOT = Path(__file__).resolve().parent.parent
SPEECH = ROOT / "tests" / "data" / "speech"
CHECKPOINT_CACHE = ROOT / ".pytest_cache" / "d" / "voicedb-test-checkpoint"
TEXT = (
    "The first sentence of this request is long enough to take a while. "
    "Then a second sentence follows it, about as long as the first one was. "
    "And a third sentence closes the request, so there are three chunks to speak."
)
SENTENCES = 3
SEED = 3
FRAME = 480  # 20 ms at 24 kHz


def timed_speech(db, voice: str, settings, seed: int) -> tuple[float, float, np.ndarray, list[int]]:
    """(seconds to the first piece, seconds to the last, the audio, where each piece starts)."""
    start = time.perf_counter()
    first = None
    pieces, starts, at = [], [], 0
    for piece in db.speak_stream(voice, TEXT, settings=settings, seed=seed):
        if first is None:
            first = time.perf_counter() - start
        pieces.append(piece)
        starts.append(at)
        at += len(piece)
    return first or 0.0, time.perf_counter() - start, np.concatenate(pieces), starts[1:]


def frame_levels(audio: np.ndarray) -> np.ndarray:
    frames = audio[: len(audio) // FRAME * FRAME].reshape(-1, FRAME)
    return 10 * np.log10(np.mean(frames**2, axis=1) + 1e-10)


def spectral_distance(a: np.ndarray, b: np.ndarray, size: int = 1024) -> float:
    """Mean absolute difference of log-magnitude spectra (dB) over aligned frames."""
    n = min(len(a), len(b)) // size * size
    spectra = [
        20 * np.log10(np.abs(np.fft.rfft(x[:n].reshape(-1, size) * np.hanning(size), axis=1)) + 1e-6) for x in (a, b)
    ]
    return float(np.mean(np.abs(spectra[0] - spectra[1])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens-per-sentence", type=int, default=75)
    parser.add_argument("--windows", nargs="+", default=["0", "12,50,0", "12,50", "12,50,5", "8,25", "25,100"])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    checkpoint = args.checkpoint or CHECKPOINT_CACHE
    if not (checkpoint / "ve.safetensors").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_test_checkpoint.py"), str(checkpoint)], check=True)

    from voicedb import SynthesisSettings, VoiceDB
    from voicedb.streaming import TokenWindows

    clip = sorted(SPEECH.glob("*.flac"))[0]
    with (
        tempfile.TemporaryDirectory(prefix="bench-stream-") as scratch,
        VoiceDB(Path(scratch) / "library", checkpoint=checkpoint, device=args.device) as db,
    ):
        voice = db.add([clip], name="bench").voice.id
        max_tokens = SENTENCES * args.tokens_per_sentence  # the three sentences are one chunk
        plain = SynthesisSettings(max_tokens=max_tokens)
        timed_speech(db, voice, plain, SEED)  # warm-up: loading and first-use costs
        baseline = None
        rows = []
        for spec in args.windows:
            windows = TokenWindows.parse(spec)
            settings = SynthesisSettings(max_tokens=max_tokens, windows=windows)
            runs = [timed_speech(db, voice, settings, SEED) for _ in range(args.runs)]
            first = statistics.median(r[0] for r in runs)
            total = statistics.median(r[1] for r in runs)
            audio, seams = runs[0][2], runs[0][3]
            if baseline is None:
                baseline = (total, audio)
                other_seed = timed_speech(db, voice, settings, SEED + 1)[2]
                scale = spectral_distance(audio, other_seed)
            rows.append((spec, first, total, audio, seams))
        print(
            f"device: {device_name(args.device)}; {args.tokens_per_sentence} speech tokens per sentence, "
            f"{SENTENCES} sentences in one chunk, median of {args.runs} runs"
        )
        print()
        print(
            "| windows (first, later tokens, prompt s) | first audio s | total s | first / total "
            "| total vs whole chunks | same length | level at seams dB (median, worst) "
            "| level elsewhere dB (median) | spectrum dB |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        whole_total, whole_audio = baseline
        for spec, first, total, audio, seams in rows:
            same = len(audio) == len(whole_audio)
            if same and spec != "0":
                diff = np.abs(frame_levels(audio) - frame_levels(whole_audio))
                at = sorted({s // FRAME for s in seams if s // FRAME < len(diff)})
                near = diff[at] if at else np.zeros(1)
                elsewhere = np.delete(diff, at)
                levels = f"{np.median(near):.2f}, {near.max():.2f} | {np.median(elsewhere):.2f}"
                spectrum = f"{spectral_distance(audio, whole_audio):.2f}"
            else:
                levels, spectrum = "— | —", "—"
            label = "0 (whole chunks, baseline)" if spec == "0" else spec
            print(
                f"| {label} | {first:.2f} | {total:.2f} | {first / total:.0%} | {total / whole_total:.2f}x "
                f"| {'yes' if same else 'NO'} | {levels} | {spectrum} |"
            )
        print()
        print(f"For scale: the spectrum distance between two whole-chunk runs with different seeds is {scale:.2f} dB.")


if __name__ == "__main__":
    main()
