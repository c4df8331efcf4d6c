#!/usr/bin/env python
"""How well speaker matching separates voices on the development set, for each preprocessing choice.

    python scripts/eval_matching.py                       # tests/devset, the Resemblyzer-weights voice encoder
    python scripts/eval_matching.py --threshold 0.75 --plot scores.png

The set (``tests/devset``, rebuilt by ``scripts/build_devset.py``) is never the clips the tests assert on, so
a threshold chosen from these numbers is not tuned to the tests. The encoder is Chatterbox's ``VoiceEncoder``
with the test checkpoint's weights (Resemblyzer's trained ``pretrained.pt``, ``linear.*`` renamed ``proj.*``),
built here from the ``resemblyzer`` package so no checkpoint directory is needed; ``--checkpoint DIR`` uses a
directory in the official layout instead (the official weights give different scores).

Printed for each preprocessing choice:
- closed-set top-1: every speaker with two or more clips is enrolled with its first clip; each of their
  other clips must score highest against its own speaker;
- EER over all clip pairs (same speaker vs different speakers) and the threshold where it is reached;
- at ``--threshold`` (default: ``voicedb.config.DEFAULT_THRESHOLD``): false rejects over same-speaker pairs,
  false accepts over different-speaker pairs, and as ``voicedb match`` answers: probes of enrolled speakers
  accepted with the right name, and probes of speakers with one clip only (strangers) wrongly accepted.
A PNG of the same- and different-speaker score distributions is written beside.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEVSET = ROOT / "tests" / "devset"
RATE = 16_000

Preprocess = Callable[[np.ndarray], list[np.ndarray]]


@dataclass(frozen=True)
class Clip:
    file: str
    speaker: str
    language: str
    condition: str


def read_devset(directory: Path) -> list[Clip]:
    with (directory / "clips.csv").open() as handle:
        return [Clip(row["file"], row["speaker"], row["language"], row["condition"]) for row in csv.DictReader(handle)]


# -- preprocessing -------------------------------------------------------------------------------------


def vad_trim(wav: np.ndarray) -> np.ndarray:
    """Drop non-speech with WebRTC VAD (mode 3, 30 ms frames, smoothed over 8 frames, gaps dilated by 6),
    as Resemblyzer's ``trim_long_silences`` does; the clip is kept whole if nothing is judged speech."""
    import webrtcvad
    from scipy.ndimage import binary_dilation

    frame = RATE * 30 // 1000
    wav = wav[: len(wav) - len(wav) % frame]
    pcm = (np.clip(wav, -1, 1) * 32767).astype(np.int16).tobytes()
    vad = webrtcvad.Vad(3)
    flags = np.array([vad.is_speech(pcm[i * 2 : (i + frame) * 2], RATE) for i in range(0, len(wav), frame)])
    if not flags.any():
        return wav
    width = 8
    padded = np.concatenate((np.zeros((width - 1) // 2), flags.astype(float), np.zeros(width // 2)))
    smoothed = np.convolve(padded, np.ones(width) / width, mode="valid") > 0.5
    mask = np.repeat(binary_dilation(smoothed, np.ones(6 + 1)), frame)
    return wav[mask] if mask.any() else wav


def level_normalise(wav: np.ndarray, target_dbfs: float = -30.0) -> np.ndarray:
    """Raise quiet clips to ``target_dbfs`` RMS (never lower loud ones), as Resemblyzer does."""
    rms = np.sqrt(np.mean(wav**2)) if len(wav) else 0.0
    if rms <= 0:
        return wav
    gain_db = target_dbfs - 20 * np.log10(rms)
    return wav * 10 ** (gain_db / 20) if gain_db > 0 else wav


def windows(wav: np.ndarray, seconds: float = 3.0, hop: float = 1.5) -> list[np.ndarray]:
    """Overlapping windows of a long clip, each embedded alone and averaged (a short clip stays whole)."""
    size, step = int(seconds * RATE), int(hop * RATE)
    if len(wav) < size + step:
        return [wav]
    return [wav[start : start + size] for start in range(0, len(wav) - size + 1, step)]


PREPROCESSING: dict[str, Preprocess] = {
    "whole clip (today)": lambda wav: [wav],
    "level norm": lambda wav: [level_normalise(wav)],
    "VAD trim": lambda wav: [vad_trim(wav)],
    "VAD + level norm": lambda wav: [vad_trim(level_normalise(wav))],
    "VAD + norm + 3 s windows": lambda wav: windows(vad_trim(level_normalise(wav))),
}


# -- embeddings ----------------------------------------------------------------------------------------


def load_encoder(checkpoint: Path | None):
    """Upstream's ``VoiceEncoder`` (the network voicedb embeds with) with Resemblyzer's weights, as in the test
    checkpoint's ``ve.safetensors``, or with a checkpoint directory's ``ve.safetensors``."""
    import torch
    from chatterbox.models.voice_encoder.voice_encoder import VoiceEncoder

    if checkpoint is not None:
        from safetensors.torch import load_file

        state = load_file(str(checkpoint / "ve.safetensors"))
    else:
        sys.path.insert(0, str(ROOT / "scripts"))
        from make_test_checkpoint import voice_encoder_state

        state = voice_encoder_state()
    encoder = VoiceEncoder()
    encoder.load_state_dict(state)
    torch.set_num_threads(2)
    return encoder.eval()


def embed_all(encoder, wavs: list[np.ndarray], preprocess: Preprocess) -> np.ndarray:
    """One L2-normalised embedding per clip: Engine.embed's call on each piece, the pieces' mean renormalised.

    All pieces go through the encoder in one batched call (each still embedded on its own).
    """
    import torch

    pieces = [[piece.astype(np.float32) for piece in preprocess(wav)] for wav in wavs]
    with torch.inference_mode():
        flat = encoder.embeds_from_wavs([p for group in pieces for p in group], sample_rate=RATE, batch_size=64)
    out, start = [], 0
    for group in pieces:
        mean = np.mean(flat[start : start + len(group)], axis=0)
        out.append(mean / np.linalg.norm(mean))
        start += len(group)
    return np.stack(out)


# -- metrics -------------------------------------------------------------------------------------------


def eer(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """Equal error rate and the threshold where false rejects and false accepts cross."""
    candidates = np.unique(np.concatenate((genuine, impostor)))
    frr = np.array([(genuine < t).mean() for t in candidates])
    far = np.array([(impostor >= t).mean() for t in candidates])
    i = int(np.argmin(np.abs(frr - far)))
    return float((frr[i] + far[i]) / 2), float(candidates[i])


@dataclass
class Result:
    name: str
    top1: tuple[int, int]
    eer: float
    eer_threshold: float
    false_rejects: tuple[int, int]
    false_accepts: tuple[int, int]
    accepted_right: tuple[int, int]
    strangers_accepted: tuple[int, int]
    genuine: np.ndarray
    impostor: np.ndarray


def evaluate(name: str, clips: list[Clip], emb: np.ndarray, threshold: float) -> Result:
    speakers = np.array([clip.speaker for clip in clips])
    scores = emb @ emb.T
    upper = np.triu_indices(len(clips), k=1)
    same = speakers[upper[0]] == speakers[upper[1]]
    genuine, impostor = scores[upper][same], scores[upper][~same]

    counts = {s: int((speakers == s).sum()) for s in set(speakers)}
    enrolled = sorted(s for s, n in counts.items() if n >= 2)
    enrol_index = [int(np.flatnonzero(speakers == s)[0]) for s in enrolled]
    gallery = emb[enrol_index]
    probes = [i for i, s in enumerate(speakers) if counts[s] >= 2 and i not in enrol_index]
    strangers = [i for i, s in enumerate(speakers) if counts[s] == 1]
    top1 = right = 0
    for i in probes:
        row = gallery @ emb[i]
        best = int(np.argmax(row))
        top1 += enrolled[best] == speakers[i]
        right += enrolled[best] == speakers[i] and row[best] >= threshold
    wrongly = sum(float(np.max(gallery @ emb[i])) >= threshold for i in strangers)
    rate, at = eer(genuine, impostor)
    return Result(
        name,
        (top1, len(probes)),
        rate,
        at,
        (int((genuine < threshold).sum()), len(genuine)),
        (int((impostor >= threshold).sum()), len(impostor)),
        (right, len(probes)),
        (wrongly, len(strangers)),
        genuine,
        impostor,
    )


def frac(pair: tuple[int, int]) -> str:
    return f"{pair[0]}/{pair[1]}"


def print_table(results: list[Result], threshold: float) -> None:
    head = (
        f"| preprocessing | top-1 | EER | EER threshold | FR @ {threshold:.2f} | FA @ {threshold:.2f} "
        f"| enrolled accepted @ {threshold:.2f} | strangers accepted @ {threshold:.2f} |"
    )
    print(head)
    print("|" + "---|" * 8)
    for r in results:
        print(
            f"| {r.name} | {frac(r.top1)} | {r.eer:.1%} | {r.eer_threshold:.3f} | {frac(r.false_rejects)} "
            f"| {frac(r.false_accepts)} | {frac(r.accepted_right)} | {frac(r.strangers_accepted)} |"
        )


def plot(results: list[Result], threshold: float, path: Path) -> None:
    """Same- and different-speaker score histograms, one panel per preprocessing choice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(7, 2.1 * len(results)), sharex=True)
    bins = np.linspace(0.2, 1.0, 65)
    for ax, r in zip(np.atleast_1d(axes), results):
        ax.hist(r.impostor, bins=bins, density=True, alpha=0.55, label=f"different speakers ({len(r.impostor)})")
        ax.hist(r.genuine, bins=bins, density=True, alpha=0.55, label=f"same speaker ({len(r.genuine)})")
        ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label=f"default threshold {threshold:.2f}")
        ax.axvline(
            r.eer_threshold, color="r", linestyle=":", linewidth=1, label=f"EER {r.eer:.1%} at {r.eer_threshold:.2f}"
        )
        ax.set_title(r.name, fontsize=9, loc="left")
        ax.legend(fontsize=7, loc="upper left")
        ax.set_yticks([])
    np.atleast_1d(axes)[-1].set_xlabel("cosine similarity (Chatterbox voice encoder, Resemblyzer weights)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    from voicedb import config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devset", type=Path, default=DEVSET)
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint directory (default: Resemblyzer's weights)")
    parser.add_argument("--threshold", type=float, default=config.DEFAULT_THRESHOLD)
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "eval_matching.png")
    parser.add_argument("--only", nargs="*", help="preprocessing names to run (default: all)")
    args = parser.parse_args()

    from voicedb.audio import load_query

    clips = read_devset(args.devset)
    # decoded as `voicedb match` decodes a query (24 kHz, then 16 kHz for the encoder)
    wavs = [load_query(args.devset / "speech" / clip.file) for clip in clips]
    n_speakers = len({clip.speaker for clip in clips})
    print(f"{len(clips)} clips of {n_speakers} speakers from {args.devset}")

    encoder = load_encoder(args.checkpoint)
    results = []
    for name, preprocess in PREPROCESSING.items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        emb = embed_all(encoder, wavs, preprocess)
        results.append(evaluate(name, clips, emb, args.threshold))
        print(f"  {name}: embedded in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    print_table(results, args.threshold)
    plot(results, args.threshold, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
