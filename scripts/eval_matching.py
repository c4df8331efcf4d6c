#!/usr/bin/env python
"""How well speaker matching separates voices on the development set, for each encoder and preprocessing.

    python scripts/eval_matching.py                     # tests/devset with the test checkpoint's weights
    python scripts/eval_matching.py --checkpoint DIR    # other weights (the official ve.safetensors ...)
    python scripts/eval_matching.py --write-shipped     # record the chosen thresholds (voicedb/shipped_thresholds.json)

The set (``tests/devset``, rebuilt by ``scripts/build_devset.py``) is never the clips the tests assert on, so
the thresholds chosen here are not tuned to the tests. Embeddings come from voicedb's own code: Chatterbox's
voice encoder (``voicedb.voice_encoder``, equal to upstream's) and CAM++ (``voicedb.campplus``), with the
weights of ``--checkpoint`` (default: the offline test checkpoint, whose voice encoder carries Resemblyzer's
trained weights and whose CAM++ file is the official one).

Printed for each encoder and preprocessing choice:
- closed-set top-1: every speaker with two or more clips enrolled with its first clip, each other clip of
  theirs must score highest against its own speaker;
- over all clip pairs (same speaker vs different speakers): the equal error rate (EER) and its threshold, the
  threshold where 0.1% of different-speaker pairs are accepted (``--target-far``: a library compares a query
  with every voice, so one pair in a thousand is already a stranger accepted now and then), and the false
  rejects there;
- as ``voicedb match`` answers with a threshold chosen on *other* speakers (two-fold cross-validation over
  speakers: the threshold is chosen on one half, the other half is enrolled -- every other speaker with its
  first clip -- and probed with the enrolled speakers' other clips and every clip of the rest, who are
  strangers): enrolled probes accepted with the right name, and strangers rejected.
The plot (PNG) shows DET curves of the choices and the score distributions of the shipped matcher.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEVSET = ROOT / "tests" / "devset"
SHIPPED = ROOT / "voicedb" / "shipped_thresholds.json"
RATE = 16_000
#: Before this work ``match`` compared the conditionals embedding with a fixed 0.80.
OLD_THRESHOLD = 0.80


@dataclass(frozen=True)
class Clip:
    file: str
    speaker: str
    language: str
    condition: str


def read_devset(directory: Path) -> list[Clip]:
    with (directory / "clips.csv").open() as handle:
        return [Clip(row["file"], row["speaker"], row["language"], row["condition"]) for row in csv.DictReader(handle)]


# -- preprocessing ---------------------------------------------------------------------------------


def webrtc_speech(wav: np.ndarray) -> np.ndarray:
    """Non-speech dropped by WebRTC VAD (mode 3, 30 ms frames, smoothed over 8, dilated by 6) and the level
    raised, as Resemblyzer's preprocessing does: the reference voicedb's own ``speech_only`` is compared with."""
    import webrtcvad
    from scipy.ndimage import binary_dilation

    from voicedb.speakers import SPEECH_LEVEL_DBFS

    rms = np.sqrt(np.mean(wav**2))
    if rms > 0 and (gain := SPEECH_LEVEL_DBFS - 20 * np.log10(rms)) > 0:
        wav = wav * 10 ** (gain / 20)
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


def level_only(wav: np.ndarray) -> np.ndarray:
    from voicedb.speakers import SPEECH_LEVEL_DBFS

    rms = np.sqrt(np.mean(wav**2))
    gain = SPEECH_LEVEL_DBFS - 20 * np.log10(rms) if rms > 0 else 0.0
    return wav * 10 ** (gain / 20) if gain > 0 else wav


def windows(wav: np.ndarray, seconds: float = 3.0, hop: float = 1.5) -> list[np.ndarray]:
    """Overlapping windows of a long clip, each embedded alone and averaged (a short clip stays whole)."""
    size, step = int(seconds * RATE), int(hop * RATE)
    if len(wav) < size + step:
        return [wav]
    return [wav[start : start + size] for start in range(0, len(wav) - size + 1, step)]


# -- embeddings ------------------------------------------------------------------------------------


def unit(vectors: list[np.ndarray]) -> np.ndarray:
    mean = np.mean(vectors, axis=0)
    return mean / np.linalg.norm(mean)


def embed_with(embed: Callable[[np.ndarray], np.ndarray], wavs: list[np.ndarray], pieces) -> np.ndarray:
    return np.stack([unit([embed(piece.astype(np.float32)) for piece in pieces(wav)]) for wav in wavs])


def test_checkpoint() -> Path:
    """The offline test checkpoint, built once into the user's cache by ``scripts/make_test_checkpoint.py``."""
    directory = Path.home() / ".cache" / "voicedb-test-checkpoint"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_test_checkpoint.py"), str(directory)], check=True)
    return directory


# -- metrics ---------------------------------------------------------------------------------------


def pair_scores(speakers: np.ndarray, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = emb @ emb.T
    upper = np.triu_indices(len(speakers), k=1)
    same = speakers[upper[0]] == speakers[upper[1]]
    return scores[upper][same], scores[upper][~same]


def threshold_at_far(impostor: np.ndarray, target: float) -> float:
    """The lowest threshold (to 0.01) at which at most ``target`` of the different-speaker pairs score as high."""
    for t in np.arange(-1.0, 1.0001, 0.01):
        if np.mean(impostor >= t) <= target:
            return round(float(t), 2)
    return 1.0


def rates(genuine: np.ndarray, impostor: np.ndarray) -> list[list[float]]:
    """[threshold, false-reject rate, false-accept rate] every 0.02 from 0.30 to 0.98: what verdicts quote."""
    return [
        [round(t, 2), round(float(np.mean(genuine < t)), 5), round(float(np.mean(impostor >= t)), 5)]
        for t in np.arange(0.30, 0.981, 0.02)
    ]


@dataclass
class Result:
    name: str
    top1: tuple[int, int]
    eer: float
    eer_threshold: float
    far_threshold: float
    frr_at_far: float
    accepted: tuple[int, int]  # enrolled probes accepted with the right name, cross-validated
    rejected: tuple[int, int]  # strangers' probes rejected, cross-validated
    old_accepted: tuple[int, int]  # the same at the old fixed 0.80
    old_rejected: tuple[int, int]
    genuine: np.ndarray
    impostor: np.ndarray


def eer(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    from voicedb.calibration import equal_error_threshold

    at = equal_error_threshold(genuine, impostor)
    return float((np.mean(genuine < at) + np.mean(impostor >= at)) / 2), at


def closed_set_top1(speakers: np.ndarray, emb: np.ndarray) -> tuple[int, int]:
    counts = {s: int((speakers == s).sum()) for s in set(speakers)}
    enrolled = sorted(s for s, n in counts.items() if n >= 2)
    first = [int(np.flatnonzero(speakers == s)[0]) for s in enrolled]
    probes = [i for i, s in enumerate(speakers) if counts[s] >= 2 and i not in first]
    right = sum(enrolled[int(np.argmax(emb[first] @ emb[i]))] == speakers[i] for i in probes)
    return right, len(probes)


def open_set(speakers: np.ndarray, emb: np.ndarray, chosen: list[str], threshold: float) -> tuple[list[int], list[int]]:
    """Among speakers ``chosen``: every other one (with two or more clips) enrolled with its first clip, the rest
    strangers. Returns ([accepted right, enrolled probes], [rejected, stranger probes])."""
    multi = [s for s in chosen if (speakers == s).sum() >= 2]
    enrolled = multi[::2]
    strangers = [s for s in chosen if s not in enrolled]
    first = [int(np.flatnonzero(speakers == s)[0]) for s in enrolled]
    accepted, probes, rejected, stranger_probes = 0, 0, 0, 0
    for i, s in enumerate(speakers):
        if s in enrolled and i not in first:
            row = emb[first] @ emb[i]
            best = int(np.argmax(row))
            accepted += enrolled[best] == s and row[best] >= threshold
            probes += 1
        elif s in strangers:
            rejected += float(np.max(emb[first] @ emb[i])) < threshold
            stranger_probes += 1
    return [accepted, probes], [rejected, stranger_probes]


def evaluate(name: str, speakers: np.ndarray, emb: np.ndarray, target_far: float) -> Result:
    genuine, impostor = pair_scores(speakers, emb)
    rate, at = eer(genuine, impostor)
    far_t = threshold_at_far(impostor, target_far)
    everyone = sorted(set(speakers))
    folds = [everyone[0::2], everyone[1::2]]
    accepted, rejected, old_accepted, old_rejected = [0, 0], [0, 0], [0, 0], [0, 0]
    for tune, test in ((folds[0], folds[1]), (folds[1], folds[0])):
        mask = np.isin(speakers, tune)
        _, tune_impostor = pair_scores(speakers[mask], emb[mask])
        for totals, got in zip(
            (accepted, rejected), open_set(speakers, emb, test, threshold_at_far(tune_impostor, target_far))
        ):
            totals[0] += got[0]
            totals[1] += got[1]
        for totals, got in zip((old_accepted, old_rejected), open_set(speakers, emb, test, OLD_THRESHOLD)):
            totals[0] += got[0]
            totals[1] += got[1]
    return Result(
        name,
        closed_set_top1(speakers, emb),
        rate,
        at,
        far_t,
        float(np.mean(genuine < far_t)),
        tuple(accepted),
        tuple(rejected),
        tuple(old_accepted),
        tuple(old_rejected),
        genuine,
        impostor,
    )


def pct(pair: tuple[int, int]) -> str:
    return f"{pair[0]}/{pair[1]} ({pair[0] / max(pair[1], 1):.0%})"


def print_table(results: list[Result], target_far: float) -> None:
    far = f"{target_far:.1%}"
    print(
        f"| encoder, preprocessing | top-1 | EER (threshold) | threshold at FA {far} | FR there "
        f"| enrolled accepted, right name* | strangers rejected* "
        f"| the same at {OLD_THRESHOLD:.2f}: accepted | rejected |"
    )
    print("|" + "---|" * 9)
    for r in results:
        print(
            f"| {r.name} | {pct(r.top1)} | {r.eer:.1%} ({r.eer_threshold:.2f}) | {r.far_threshold:.2f} "
            f"| {r.frr_at_far:.1%} | {pct(r.accepted)} | {pct(r.rejected)} | {pct(r.old_accepted)} "
            f"| {pct(r.old_rejected)} |"
        )
    print(f"* threshold at FA {far} chosen on the other half of the speakers (two-fold cross-validation)")


def plot(results: list[Result], shipped: Result, threshold: float, path: Path) -> None:
    """DET curves of every choice, and the shipped matcher's score distributions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (det, hist) = plt.subplots(1, 2, figsize=(12, 4.8))
    for r in results:
        cuts = np.linspace(-0.2, 1.0, 241)
        frr = [max(np.mean(r.genuine < t), 1e-4) for t in cuts]
        far = [max(np.mean(r.impostor >= t), 1e-4) for t in cuts]
        det.plot(np.array(far) * 100, np.array(frr) * 100, label=f"{r.name} (EER {r.eer:.1%})", linewidth=1.2)
    det.set_xscale("log")
    det.set_yscale("log")
    det.set_xlim(0.05, 60)
    det.set_ylim(0.5, 80)
    det.set_xlabel("false accepts (% of different-speaker pairs)")
    det.set_ylabel("false rejects (% of same-speaker pairs)")
    det.set_title("DET curves on the development set (lower left is better)", fontsize=10)
    det.legend(fontsize=7)
    det.grid(True, which="both", alpha=0.3)
    bins = np.linspace(-0.1, 1.0, 89)
    different = f"different speakers ({len(shipped.impostor)})"
    hist.hist(shipped.impostor, bins=bins, density=True, alpha=0.55, label=different)
    hist.hist(shipped.genuine, bins=bins, density=True, alpha=0.55, label=f"same speaker ({len(shipped.genuine)})")
    hist.axvline(threshold, color="k", linestyle="--", linewidth=1, label=f"shipped threshold {threshold:.2f}")
    hist.set_title(f"scores: {shipped.name}", fontsize=10)
    hist.set_xlabel("score (cosine; fused: the mean of the two cosines)")
    hist.set_yticks([])
    hist.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def shipped_json(shipped: dict[str, dict]) -> str:
    """The shipped thresholds as JSON a reviewer can read: one line per measured rate."""
    entries = []
    for identity, entry in sorted(shipped.items()):
        rows = ",\n".join(f"    {json.dumps(row)}" for row in entry["rates"])
        entries.append(
            f'  {json.dumps(identity)}: {{\n   "threshold": {entry["threshold"]},\n'
            f'   "measured_on": {json.dumps(entry["measured_on"])},\n   "rates": [\n{rows}\n   ]\n  }}'
        )
    return "{\n" + ",\n".join(entries) + "\n}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devset", type=Path, default=DEVSET)
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint directory (default: the offline test checkpoint)")
    parser.add_argument(
        "--target-far", type=float, default=0.001, help="share of different-speaker pairs the threshold accepts"
    )
    parser.add_argument("--also-far", type=float, nargs="*", default=(), help="other shares to print tables for")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "eval_matching.png")
    parser.add_argument("--write-shipped", action="store_true", help=f"record the chosen thresholds in {SHIPPED.name}")
    args = parser.parse_args()

    from voicedb.audio import load_query
    from voicedb.campplus import CAMPPLUS_FILE, load_campplus
    from voicedb.files import sha256_file
    from voicedb.matchers import CAMPPLUS, CHATTERBOX, fuse
    from voicedb.speakers import speech_only
    from voicedb.voice_encoder import VoiceEncoder, load_state

    checkpoint = args.checkpoint or test_checkpoint()
    ve_path, cam_path = checkpoint / "ve.safetensors", checkpoint / CAMPPLUS_FILE
    ve = VoiceEncoder(load_state(ve_path), ve_path)
    cam = load_campplus(cam_path)
    sums = {CHATTERBOX: sha256_file(ve_path)[:16], CAMPPLUS: sha256_file(cam_path)[:16]}

    clips = read_devset(args.devset)
    wavs = [load_query(args.devset / "speech" / clip.file) for clip in clips]  # as `voicedb match` decodes them
    speakers = np.array([clip.speaker for clip in clips])
    multi = sum((speakers == s).sum() >= 3 for s in set(speakers))
    print(f"{len(clips)} clips of {len(set(speakers))} speakers ({multi} with 3 or more clips) from {args.devset}")

    whole = lambda wav: [wav]  # noqa: E731
    choices: dict[str, np.ndarray] = {
        "chatterbox, whole clip (the conditionals embedding)": embed_with(ve.embed, wavs, whole),
        "chatterbox, level raised": embed_with(ve.embed, wavs, lambda w: [level_only(w)]),
        "chatterbox, WebRTC VAD + level": embed_with(ve.embed, wavs, lambda w: [webrtc_speech(w)]),
        "chatterbox, speech only (voicedb)": embed_with(ve.embed, wavs, lambda w: [speech_only(w)]),
        "chatterbox, speech only, 3 s windows": embed_with(ve.embed, wavs, lambda w: windows(speech_only(w))),
        "campplus, whole clip": embed_with(cam.embed, wavs, whole),
        "campplus, speech only (voicedb)": embed_with(cam.embed, wavs, lambda w: [speech_only(w)]),
    }
    choices["chatterbox+campplus, speech only (voicedb)"] = fuse(
        [choices["chatterbox, speech only (voicedb)"], choices["campplus, speech only (voicedb)"]]
    )
    choices["chatterbox speech only + campplus whole clip"] = fuse(
        [choices["chatterbox, speech only (voicedb)"], choices["campplus, whole clip"]]
    )
    for target in args.also_far:
        print_table([evaluate(name, speakers, emb, target) for name, emb in choices.items()], target)
        print()
    results = [evaluate(name, speakers, emb, args.target_far) for name, emb in choices.items()]
    print_table(results, args.target_far)

    matchers = {
        CHATTERBOX: "chatterbox, speech only (voicedb)",
        CAMPPLUS: "campplus, speech only (voicedb)",
        f"{CHATTERBOX}+{CAMPPLUS}": "chatterbox+campplus, speech only (voicedb)",
    }
    by_name = {r.name: r for r in results}
    shipped = {}
    print("\nshipped thresholds (chosen on the whole set):")
    for matcher, name in matchers.items():
        r = by_name[name]
        identity = ":".join([matcher, *(sums[e] for e in matcher.split("+"))])
        shipped[identity] = {
            "threshold": r.far_threshold,
            "rates": rates(r.genuine, r.impostor),
            "measured_on": f"tests/devset, {len(set(speakers))} speakers, {len(clips)} clips, {dt.date.today()}",
        }
        print(f"  {identity}: {r.far_threshold:.2f}")
    if args.write_shipped:
        current = json.loads(SHIPPED.read_text()) if SHIPPED.exists() else {}
        SHIPPED.write_text(shipped_json({**current, **shipped}))
        print(f"written: {SHIPPED}")
    fused = by_name[matchers[f"{CHATTERBOX}+{CAMPPLUS}"]]
    plot(results, fused, fused.far_threshold, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
