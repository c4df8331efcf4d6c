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
- leaving one *source* out (the threshold fitted on the other sources alone, then the held-out source's
  clips probed against the library): enrolled probes accepted with the right name and strangers rejected, with
  95% Wilson intervals, for cosines, AS-norm and the cohort margin ``match`` applies (``voicedb.cohort``),
  the margin also with a library of the held-out source alone and the other sources' voices as the cohort.
The plot (PNG) shows DET curves of the choices and the score distributions of the shipped matcher.
``--write-shipped`` writes the thresholds, ``llr`` calibrations and (for ``MARGIN_MATCHERS``) the margin's
threshold and rates to ``voicedb/shipped_thresholds.json`` and the development set's voices, the shipped
cohort, to ``voicedb/cohorts.npz``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEVSET = ROOT / "tests" / "devset"
SHIPPED = ROOT / "voicedb" / "shipped_thresholds.json"
SHIPPED_COHORTS = ROOT / "voicedb" / "cohorts.npz"
RATE = 16_000
#: Before this work ``match`` compared the conditionals embedding with a fixed 0.80.
OLD_THRESHOLD = 0.80


@dataclass(frozen=True)
class Clip:
    file: str
    speaker: str
    language: str
    condition: str
    source: str


def read_devset(directory: Path) -> list[Clip]:
    with (directory / "clips.csv").open() as handle:
        return [
            Clip(row["file"], row["speaker"], row["language"], row["condition"], row["source"])
            for row in csv.DictReader(handle)
        ]


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


#: The matchers ``match`` scores by cohort margin: where it accepted more enrolled speakers *and* rejected more
#: strangers leaving one source out (for one encoder alone it trades accepts for rejects; docs/matching.md).
MARGIN_MATCHERS = ("chatterbox+campplus",)

#: Where verdicts read the measured error rates: cosines, and cohort margins (``voicedb.cohort``).
COSINE_CUTS = np.arange(0.30, 0.981, 0.02)
MARGIN_CUTS = np.arange(-0.10, 0.501, 0.02)


def rates(genuine: np.ndarray, impostor: np.ndarray, cuts: np.ndarray = COSINE_CUTS) -> list[list[float]]:
    """[threshold, false-reject rate, false-accept rate] at each of ``cuts``: what verdicts quote."""
    return [
        [round(float(t), 2), round(float(np.mean(genuine < t)), 5), round(float(np.mean(impostor >= t)), 5)]
        for t in cuts
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
    """The shipped thresholds as JSON a reviewer can read: a list of numbers (a measured rate, an ``llr``) on
    one line."""
    text = json.dumps(dict(sorted(shipped.items())), indent=1)
    numbers = re.compile(r"\[\s*(-?[0-9.e-]+(?:,\s*-?[0-9.e-]+)*)\s*\]")
    return numbers.sub(lambda found: "[" + ", ".join(found.group(1).split()).replace(",,", ",") + "]", text) + "\n"


# -- AS-norm: adaptive symmetric score normalisation, the library as cohort ----------------------------
#
# Adaptive symmetric score normalisation (AS-norm) against a cohort of other voices, as speaker-verification
# toolkits (WeSpeaker, 3D-Speaker) apply it: a score is judged against how high each side scores with the voices
# closest to it among people it is not.
#
# Recordings from a source nobody tuned to (a telephone line, one studio's voices) score high with *every*
# voice of that source, which a fixed threshold mistakes for the same speaker. AS-norm subtracts, per side, the
# mean of its ``TOP`` best cohort scores and divides by their spread::
#
#     z = ((s - mean_q) / std_q + (s - mean_v) / std_v) / 2
#
# For a fused matcher each encoder's cosine is normalised on its own and the ``z`` are averaged. The cohort is
# the library's own voices (all but the voice being scored), which holds recordings of the user's sources;
# measured below leave-one-source-out against the plain cosine and against the cohort margin ``match`` applies
# (``voicedb.cohort``: the same without the division by the spread).

#: Cohort scores averaged per side in AS-norm: the closest voices, where the confusions are.
TOP = 20
#: A cohort spread below this is taken as this (identical cohort scores would divide by zero).
MIN_SPREAD = 1e-3


def cohort_stats(scores: np.ndarray, top: int = TOP) -> tuple[np.ndarray, np.ndarray]:
    """(mean, standard deviation) of each row's ``top`` highest scores: ``scores`` float (n, c) of n vectors
    against a cohort of c; both float64 (n,)."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    top = min(top, scores.shape[1])
    best = -np.partition(-scores, top - 1, axis=1)[:, :top]
    return best.mean(axis=1), np.maximum(best.std(axis=1), MIN_SPREAD)


def as_norm(
    score: np.ndarray, query: tuple[np.ndarray, np.ndarray], voice: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """The normalised ``score`` (any shape broadcasting with the stats) given the query's and the voice's
    cohort stats (``cohort_stats``)."""
    return 0.5 * ((score - query[0]) / query[1] + (score - voice[0]) / voice[1])


# -- out of sample: leave one source out -------------------------------------------------------------


def source_of(clip: Clip) -> str:
    """The recording source a clip comes from: its package family (Asterisk's prompt packages are one source,
    recorded for one telephone system; the two Fish Fillets dubs are one game; the MFA test recordings one set)."""
    name = clip.source.split()[0]
    for family in ("asterisk", "fillets-ng"):
        if name.startswith(family):
            return family
    return name


#: encoder -> (enrolled voices' unit vectors, probes' unit vectors), one row per clip.
Evidence = dict[str, tuple[np.ndarray, np.ndarray]]


#: How a probe's scores against a library are computed (``library_scores``).
COSINE, AS_NORM, MARGIN = "cosine", "AS-norm, the library as cohort", "cohort margin"


@dataclass(frozen=True)
class Mixed:
    """A library some of whose voices have no clips (``clip_less``, per clip row): such a voice is its
    ``conditionals`` embedding, scored with the Chatterbox ``speech`` vector of a query or of another voice
    and put on the matcher's scale as ``voicedb.matching.Scale`` does (``slope * cosine + offset``)."""

    clip_less: np.ndarray
    conditionals: np.ndarray
    speech: np.ndarray
    slope: float
    offset: float

    def rescaled(self, cosines: np.ndarray) -> np.ndarray:
        return self.slope * cosines + self.offset


def library_scores(
    evidence: Evidence,
    enrolled: np.ndarray,
    probe: int,
    scoring: str,
    shipped: np.ndarray | None = None,
    mixed: Mixed | None = None,
) -> np.ndarray:
    """One probe's scores against the voices enrolled from clips ``enrolled``: the mean of the encoders'
    cosines (``COSINE``); their AS-norm scores averaged (``AS_NORM``), the other enrolled voices being the
    cohort; or that mean cosine less the cohort margin voicedb applies (``MARGIN``, ``voicedb.cohort``), the
    cohort being the other enrolled voices and the voices of clips ``shipped`` (a shipped cohort). With
    ``mixed`` (no shipped cohort) the clip-less voices among them are scored as ``match`` scores them: the
    cosine with their conditionals embedding put on the matcher's cosine scale, then (``MARGIN``) the margin
    of every score, with the voices' scores with each other rescaled alike where one of the two has no clips."""
    if mixed is not None:  # clip-less voices: their cosine put on the matcher's scale, then as any other
        bare = mixed.clip_less[enrolled]
        chatterbox = np.where(bare[:, None], mixed.conditionals[enrolled], mixed.speech[enrolled])
        fused = library_scores(evidence, enrolled, probe, COSINE)
        scores = np.where(bare, mixed.rescaled(mixed.conditionals[enrolled] @ mixed.speech[probe]), fused)
        if scoring == COSINE:
            return scores
        from voicedb.cohort import margins

        among = np.mean([voices[enrolled] @ voices[enrolled].T for voices, _ in evidence.values()], axis=0)
        among = np.where(bare[:, None] | bare[None, :], mixed.rescaled(chatterbox @ chatterbox.T), among)
        np.fill_diagonal(among, -np.inf)
        return margins(scores, np.where(np.eye(len(enrolled), dtype=bool), -np.inf, scores[None, :]), among)
    if scoring == MARGIN:
        from voicedb.cohort import margins

        def mean_cosines(rows: np.ndarray, columns: np.ndarray, query: bool) -> np.ndarray:
            return np.mean(
                [voices[rows] @ (probes if query else voices)[columns].T for voices, probes in evidence.values()],
                axis=0,
            )

        extra = np.empty(0, dtype=int) if shipped is None else shipped
        scores = mean_cosines(enrolled, np.array([probe]), query=True)[:, 0]
        among = mean_cosines(enrolled, enrolled, query=False)
        np.fill_diagonal(among, -np.inf)  # a voice is not its own cohort
        query_cohort = np.where(np.eye(len(enrolled), dtype=bool), -np.inf, scores[None, :])
        query_extra = np.tile(mean_cosines(extra, np.array([probe]), query=True)[:, 0], (len(enrolled), 1))
        voice_extra = mean_cosines(enrolled, extra, query=False).reshape(len(enrolled), len(extra))
        return margins(
            scores, np.concatenate([query_cohort, query_extra], axis=1), np.concatenate([among, voice_extra], axis=1)
        )
    per_encoder = []
    for voices, probes in evidence.values():
        library = voices[enrolled]
        scores = library @ probes[probe]
        if scoring == AS_NORM:
            among = library @ library.T
            others = ~np.eye(len(enrolled), dtype=bool)
            cohort_q = np.where(others, scores[None, :], -np.inf)  # row j: the query against all voices but j
            cohort_v = np.where(others, among, -np.inf)
            scores = as_norm(scores, finite_stats(cohort_q), finite_stats(cohort_v))
        per_encoder.append(scores)
    return np.mean(per_encoder, axis=0)


def finite_stats(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``cohort_stats`` of rows padded with -inf where a voice is not its own cohort (one voice per row left out)."""
    width = scores.shape[1] - 1
    kept = np.sort(scores, axis=1)[:, ::-1][:, :width]
    return cohort_stats(kept, min(TOP, width))


@dataclass
class Trials:
    """Open-set identification over one library: enrolled probes (best voice right?, its score), strangers'
    best scores (their own voice left out), and every (probe, voice) score split into same / different speaker."""

    genuine: list[tuple[bool, float]]
    strangers: np.ndarray
    same: np.ndarray
    different: np.ndarray


def open_set_trials(
    evidence: Evidence,
    speakers: np.ndarray,
    library: list[str],
    probes: np.ndarray,
    scoring: str,
    shipped: np.ndarray | None = None,
    mixed: Mixed | None = None,
) -> Trials:
    """Every speaker of ``library`` enrolled with its first clip; each clip of ``probes`` (indices) scored: an
    enrolled speaker's other clips must find their voice, and every probe, with its own voice taken out of
    the library, is a stranger who must be rejected (``shipped``, ``mixed``: see ``library_scores``)."""
    first = np.array([int(np.flatnonzero(speakers == s)[0]) for s in library])
    owners = np.array(library)
    genuine, strangers, same, different = [], [], [], []
    for i in probes:
        own = owners == speakers[i]
        if own.any() and i in first:
            continue  # an enrolment clip is not its own probe
        if own.any():
            scores = library_scores(evidence, first, int(i), scoring, shipped, mixed)
            best = int(np.argmax(scores))
            genuine.append((bool(own[best]), float(scores[best])))
            same.append(float(scores[own][0]))
            different.extend(scores[~own].tolist())
        keep = ~own
        if not keep.any():  # nobody else enrolled: nothing to confuse the stranger with
            strangers.append(-np.inf)
            continue
        scores = library_scores(evidence, first[keep], int(i), scoring, shipped, mixed)
        strangers.append(float(scores.max()))
    return Trials(genuine, np.array(strangers), np.array(same), np.array(different))


def stranger_threshold(strangers: np.ndarray, target: float) -> float:
    """The lowest threshold (to 0.001) that rejects all but ``target`` of the strangers' best scores."""
    return float(np.ceil((np.quantile(strangers, 1 - target, method="higher") + 1e-9) * 1000) / 1000)


def wilson(successes: int, trials: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    from scipy.stats import binomtest

    if trials == 0:
        return (0.0, 1.0)
    interval = binomtest(successes, trials).proportion_ci(confidence_level=0.95, method="wilson")
    return float(interval.low), float(interval.high)


@dataclass
class SourceResult:
    accepted: tuple[int, int]
    rejected: tuple[int, int]
    #: enrolled probes whose best voice is their own, whatever its score (closed-set top-1)
    ranked: tuple[int, int] = (0, 0)


def pair_threshold(evidence: Evidence, speakers: np.ndarray, clips: np.ndarray, target_far: float) -> float:
    """The shipped rule on the clips ``clips``: the threshold at which ``target_far`` of their different-speaker
    pairs (an enrolled clip's vector against another clip's probe vector, encoders' cosines averaged) pass."""
    scores = np.mean([voices[clips] @ probes[clips].T for voices, probes in evidence.values()], axis=0)
    owners = speakers[clips]
    different = scores[owners[:, None] != owners[None, :]]
    return threshold_at_far(different, target_far)


def leave_one_source_out(
    evidence: Evidence,
    speakers: np.ndarray,
    sources: np.ndarray,
    scoring: str,
    target: float,
    cohort_voices: np.ndarray | None = None,
) -> dict[str, SourceResult]:
    """For each source: the threshold fitted on the other sources alone -- cosines by the shipped rule (``target``
    of their different-speaker pairs accepted); normalised scores, which have no pairs without a library, with
    the other sources' speakers as the library, all but ``target`` of their strangers rejected -- then the
    held-out source's clips probed against the library of every speaker with two or more clips (the cohort,
    when normalising, is that library: the user's own voices).

    With ``cohort_voices`` (the row of each speaker's voice vector in ``evidence``, past the clips' rows) the
    library is the held-out source's speakers alone and the cohort margin's cohort adds the other sources'
    voices, as a small library's is padded by the shipped cohort."""
    multi = sorted(s for s in set(speakers) if (speakers == s).sum() >= 2)
    results = {}
    for held_out in sorted(set(sources)):
        train = np.flatnonzero(sources != held_out)
        if scoring == COSINE:
            threshold = pair_threshold(evidence, speakers, train, target)
        else:
            train_library = [s for s in multi if s in set(speakers[train])]
            fitted = open_set_trials(evidence, speakers, train_library, train, scoring)
            threshold = stranger_threshold(fitted.strangers, target)
        tested_clips = np.flatnonzero(sources == held_out)
        library, shipped = multi, None
        if cohort_voices is not None:
            library = [s for s in multi if s in set(speakers[tested_clips])]
            shipped = np.array([cohort_voices[s] for s in sorted(set(speakers[train]))])
        tested = open_set_trials(evidence, speakers, library, tested_clips, scoring, shipped)
        accepted = sum(right and score >= threshold for right, score in tested.genuine)
        rejected = int((tested.strangers < threshold).sum())
        results[held_out] = SourceResult((accepted, len(tested.genuine)), (rejected, len(tested.strangers)))
    return results


def mixed_library_loso(
    fused: Evidence, conditionals: Evidence, speakers: np.ndarray, sources: np.ndarray, scoring: str, target: float
) -> dict[str, SourceResult]:
    """``leave_one_source_out`` of a library that mixes voices with and without clips: every other speaker
    (in name order) is enrolled clip-less, by the conditionals embedding of its first clip. Per held-out
    source the threshold is the all-clips library's, and the rescaling of clip-less cosines onto the matcher's
    cosine scale comes from logistic fits (``fit_llr``) on the other sources alone, as ``match`` uses the
    shipped ones. The genuine probes whose best voice is the right one are counted too (closed-set top-1)."""
    multi = sorted(s for s in set(speakers) if (speakers == s).sum() >= 2)
    clip_less = np.isin(speakers, multi[1::2])
    (cond_voices, cond_probes) = conditionals[next(iter(conditionals))]
    results = {}
    for held_out in sorted(set(sources)):
        train = np.flatnonzero(sources != held_out)
        train_library = [s for s in multi if s in set(speakers[train])]
        if scoring == COSINE:
            threshold = pair_threshold(fused, speakers, train, target)
        else:
            threshold = stranger_threshold(
                open_set_trials(fused, speakers, train_library, train, scoring).strangers, target
            )
        fits = [open_set_trials(e, speakers, train_library, train, COSINE) for e in (fused, conditionals)]
        (a_p, b_p), (a_f, b_f) = (fit_llr(fit.same, fit.different) for fit in fits)
        mixed = Mixed(clip_less, cond_voices, cond_probes, a_f / a_p, (b_f - b_p) / a_p)
        tested = open_set_trials(fused, speakers, multi, np.flatnonzero(sources == held_out), scoring, mixed=mixed)
        accepted = sum(right and score >= threshold for right, score in tested.genuine)
        rejected = int((tested.strangers < threshold).sum())
        ranked = (sum(right for right, _ in tested.genuine), len(tested.genuine))
        results[held_out] = SourceResult((accepted, len(tested.genuine)), (rejected, len(tested.strangers)), ranked)
    return results


def with_voices(evidence: Evidence, speakers: np.ndarray, everyone: list[str]) -> Evidence:
    """``evidence`` with one more row per speaker of ``everyone`` (in that order) after the clips' rows: the
    speaker's voice vector, the normalised mean of its clips' (what a shipped cohort holds)."""
    extended = {}
    for encoder, (voices, probes) in evidence.items():
        means = np.stack([unit(list(voices[speakers == s])) for s in everyone])
        extended[encoder] = (np.vstack([voices, means]), np.vstack([probes, means]))
    return extended


def with_interval(pair: tuple[int, int]) -> str:
    low, high = wilson(*pair)
    return f"{pair[0]}/{pair[1]} ({pair[0] / max(pair[1], 1):.1%}, {low:.0%}–{high:.0%})"


def print_loso(rows: dict[str, dict[str, SourceResult]], target_far: float, target_reject: float) -> None:
    sources = sorted(next(iter(rows.values())))
    print(
        f"\nleave one source out ({len(sources)} sources; threshold fitted on the others: cosines at "
        f"{target_far:.1%} of different-speaker pairs accepted, AS-norm rejecting all but {target_reject:.1%} "
        "of their strangers):"
    )
    print("| matcher, scores | enrolled accepted, right name (95% CI) | strangers rejected (95% CI) | per source |")
    print("|---|---|---|---|")
    for name, results in rows.items():
        accepted = tuple(map(sum, zip(*(r.accepted for r in results.values()))))
        rejected = tuple(map(sum, zip(*(r.rejected for r in results.values()))))
        per = "; ".join(
            f"{s} {r.accepted[0]}/{r.accepted[1]}, {r.rejected[0]}/{r.rejected[1]}" for s, r in results.items()
        )
        print(f"| {name} | {with_interval(accepted)} | {with_interval(rejected)} | {per} |")


def fit_llr(same: np.ndarray, different: np.ndarray) -> list[float]:
    """[a, b] of ``llr = a * score + b``: logistic regression of same-speaker odds on the score, both classes
    weighted equally (so ``b`` carries no prior), as fusion toolkits calibrate scores."""
    from scipy.optimize import minimize

    scores = np.concatenate([same, different])
    sign = np.concatenate([np.ones(len(same)), -np.ones(len(different))])
    weight = np.concatenate([np.full(len(same), 0.5 / len(same)), np.full(len(different), 0.5 / len(different))])

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        margin = sign * (params[0] * scores + params[1])
        value = float(np.sum(weight * np.logaddexp(0.0, -margin)))
        slope = -weight * sign / (1.0 + np.exp(margin))
        return value, np.array([np.sum(slope * scores), np.sum(slope)])

    found = minimize(loss, np.array([10.0, -5.0]), jac=True, method="BFGS")
    return [round(float(found.x[0]), 4), round(float(found.x[1]), 4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devset", type=Path, default=DEVSET)
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint directory (default: the offline test checkpoint)")
    parser.add_argument(
        "--target-far", type=float, default=0.001, help="share of different-speaker pairs the threshold accepts"
    )
    parser.add_argument("--also-far", type=float, nargs="*", default=(), help="other shares to print tables for")
    parser.add_argument(
        "--target-reject",
        type=float,
        default=0.01,
        help="share of strangers an AS-norm threshold may accept (leave one source out)",
    )
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "eval_matching.png")
    parser.add_argument("--write-shipped", action="store_true", help=f"record the chosen thresholds in {SHIPPED.name}")
    args = parser.parse_args()

    from voicedb.audio import load_query
    from voicedb.campplus import CAMPPLUS_FILE, load_campplus
    from voicedb.cohort import TOP as COHORT_TOP
    from voicedb.files import sha256_file
    from voicedb.matchers import CAMPPLUS, CHATTERBOX, fuse
    from voicedb.matching import CONDITIONALS_EVIDENCE
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
    speech = {CHATTERBOX: choices[matchers[CHATTERBOX]], CAMPPLUS: choices[matchers[CAMPPLUS]]}
    conditionals = choices["chatterbox, whole clip (the conditionals embedding)"]
    evidences: dict[str, Evidence] = {
        matcher: {encoder: (speech[encoder], speech[encoder]) for encoder in matcher.split("+")} for matcher in matchers
    }
    # a voice without clips (a .pt) holds the conditionals embedding; the query is embedded from its speech
    evidences[CONDITIONALS_EVIDENCE] = {CHATTERBOX: (conditionals, speech[CHATTERBOX])}
    sources = np.array([source_of(clip) for clip in clips])
    everyone = sorted(set(speakers))
    voice_rows = {speaker: len(clips) + n for n, speaker in enumerate(everyone)}
    loso = {}
    for name, evidence in evidences.items():
        for scoring in (COSINE, AS_NORM, MARGIN):
            target = args.target_far if scoring == COSINE else args.target_reject
            loso[f"{name}, {scoring}"] = leave_one_source_out(evidence, speakers, sources, scoring, target)
        # a library of the new source's voices alone, the other sources' voices padding the cohort (as shipped)
        padded = with_voices(evidence, speakers, everyone)
        loso[f"{name}, {MARGIN}, a library of that source alone + shipped cohort"] = leave_one_source_out(
            padded, speakers, sources, MARGIN, args.target_reject, voice_rows
        )
    fused_evidence = evidences[f"{CHATTERBOX}+{CAMPPLUS}"]
    for scoring in (COSINE, MARGIN):
        target = args.target_far if scoring == COSINE else args.target_reject
        loso[f"chatterbox+campplus, {scoring}, every other speaker clip-less"] = mixed_library_loso(
            fused_evidence, evidences[CONDITIONALS_EVIDENCE], speakers, sources, scoring, target
        )
    print_loso(loso, args.target_far, args.target_reject)
    for name, results in loso.items():
        if "clip-less" in name:
            ranked = tuple(map(sum, zip(*(r.ranked for r in results.values()))))
            print(f"{name}: closed-set top-1 {ranked[0]}/{ranked[1]}")

    multi = sorted(s for s in set(speakers) if (speakers == s).sum() >= 2)
    measured_on = f"tests/devset, {len(set(speakers))} speakers, {len(clips)} clips, {dt.date.today()}"
    shipped, cohorts = {}, {}
    print("\nshipped (fitted on the whole set: threshold, llr = a * score + b; cohort margin threshold):")
    for name, evidence in evidences.items():
        encoders = (CHATTERBOX,) if name == CONDITIONALS_EVIDENCE else tuple(name.split("+"))
        identity = ":".join([name, *(sums[e] for e in encoders)])
        trials = open_set_trials(evidence, speakers, multi, np.arange(len(clips)), COSINE)
        threshold = pair_threshold(evidence, speakers, np.arange(len(clips)), args.target_far)
        entry = {"threshold": threshold, "llr": fit_llr(trials.same, trials.different), "measured_on": measured_on}
        if name in matchers:
            r = by_name[matchers[name]]
            entry["rates"] = rates(r.genuine, r.impostor)
        if name in MARGIN_MATCHERS:
            normed = open_set_trials(evidence, speakers, multi, np.arange(len(clips)), MARGIN)
            entry["margin"] = {
                "top": COHORT_TOP,
                "threshold": math.ceil(round(stranger_threshold(normed.strangers, args.target_reject) * 100, 6)) / 100,
                "rates": rates(normed.same, normed.different, MARGIN_CUTS),
            }
            voices = with_voices(evidence, speakers, everyone)
            cohorts[identity] = fuse([voices[e][0][len(clips) :] for e in encoders]).astype(np.float32)
        shipped[identity] = entry
        margin = f", margin {entry['margin']['threshold']:.3f}" if "margin" in entry else ""
        print(f"  {identity}: {entry['threshold']:.2f}, llr {entry['llr']}{margin}")
    if args.write_shipped:  # entries for other weights (another checkpoint's) stay
        current = json.loads(SHIPPED.read_text()) if SHIPPED.exists() else {}
        SHIPPED.write_text(shipped_json({**current, **shipped}))
        if SHIPPED_COHORTS.exists():
            with np.load(SHIPPED_COHORTS) as stored:
                cohorts = {**{key: stored[key] for key in stored.files}, **cohorts}
        np.savez_compressed(SHIPPED_COHORTS, **cohorts)
        print(f"written: {SHIPPED}, {SHIPPED_COHORTS}")
    fused = by_name[matchers[f"{CHATTERBOX}+{CAMPPLUS}"]]
    plot(results, fused, fused.far_threshold, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
