"""Which threshold ``match`` applies, ``calibrate`` measuring one on the library's own voices, and the
words ``match`` puts a score in.

A threshold comes, in order, from the caller (``--threshold``, the API's argument); else from
``calibrate`` on this library, for its matcher and encoder weights; else from the value shipped for them
(``config.SHIPPED_THRESHOLDS``, measured on the development set); else ``config.DEFAULT_THRESHOLD``.
Scores of two matchers or two checkpoints are not comparable, so a calibration is stored under the
matcher's identity and ignored once the library matches with another. The error rates measured with the
threshold (by ``calibrate``, else shipped) turn scores into words: see ``verdict``.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
from sqlalchemy import func, select

from . import config
from .catalog import Catalog, matcher_vector
from .cohort import top_mean, top_means_without
from .context import LibraryContext
from .errors import VoiceDBError
from .matchers import encoders_of, fuse, mean_embedding
from .matching import COSINE_SCORES, MARGIN_SCORES, Margins, Matcher, calibration_key, check_threshold
from .records import Calibration, Threshold
from .store import ClipRow, MetaRow, VoiceRow, utcnow

#: Thresholds ``calibrate`` reports error rates at, besides the one it chooses (and stores, for verdicts):
#: for cosines and for cohort margins (``voicedb.cohort``).
CANDIDATES = {
    COSINE_SCORES: tuple(round(0.30 + 0.05 * n, 2) for n in range(14)),
    MARGIN_SCORES: tuple(round(-0.10 + 0.05 * n, 2) for n in range(13)),
}


Rates = tuple[tuple[float, float, float], ...]


def rates_at(score: float, rates: Rates) -> tuple[float, float]:
    """(false-reject rate, false-accept rate) had the threshold been ``score``: the measured rates, interpolated."""
    cuts = [t for t, _, _ in rates]
    return (
        float(np.interp(score, cuts, [frr for _, frr, _ in rates])),
        float(np.interp(score, cuts, [far for _, _, far in rates])),
    )


def verdict(score: float, threshold: float, rates: Rates | None = None) -> str:
    """How sure a match is, in words. At or above the threshold: "same speaker" when at most
    ``config.SURE_FALSE_ACCEPT`` of different-speaker pairs were measured to score as high, else "probably
    the same speaker". Below it: "unknown speaker" when at most ``config.SURE_FALSE_REJECT`` of same-speaker
    pairs score as low, else "possibly the same speaker, below the threshold". Without measured rates, a
    fixed ``config.VERDICT_MARGIN`` around the threshold stands in for them."""
    above = distance(score, threshold)
    if rates is not None:
        false_reject, false_accept = rates_at(score, rates)
        sure = false_accept <= config.SURE_FALSE_ACCEPT if above >= 0 else false_reject <= config.SURE_FALSE_REJECT
    else:
        sure = abs(above) >= config.VERDICT_MARGIN
    if above >= 0:
        return "same speaker" if sure else "probably the same speaker"
    return "unknown speaker" if sure else "possibly the same speaker, below the threshold"


def distance(score: float, threshold: float) -> float:
    """How far a score lies above the threshold, to the precision scores are printed with (so that 0.85 is
    0.05 above 0.80, whatever binary floating point makes of the difference)."""
    return round(score - threshold, 6)


def near_threshold(score: float, threshold: float, rates: Rates | None = None) -> bool:
    """Whether a score is too close to the threshold for a sure answer (what more enrolled audio helps)."""
    return verdict(score, threshold, rates).startswith(("probably", "possibly"))


def describe_rates(score: float, rates: Rates) -> str:
    """What the measured rates say about a score, for a person."""
    false_reject, false_accept = rates_at(score, rates)
    return (
        f"{false_accept:.1%} of different-speaker pairs and {1 - false_reject:.0%} of same-speaker pairs "
        "were measured to score this high"
    )


def error_rates(same: np.ndarray, different: np.ndarray, threshold: float) -> tuple[float, float]:
    """(false-reject rate, false-accept rate) at ``threshold``: same-speaker scores below it, and
    different-speaker scores at or above it (``match`` accepts ``score >= threshold``)."""
    return float(np.mean(same < threshold)), float(np.mean(different >= threshold))


def equal_error_threshold(same: np.ndarray, different: np.ndarray) -> float:
    """The threshold at which the larger of the two error rates is smallest (the equal-error-rate point).

    Candidates lie midway between neighbouring scores, so a threshold never sits on a measured score;
    where several do equally well (distributions that do not overlap) the middle of their range is taken.
    """
    scores = np.unique(np.concatenate([same, different]))
    cuts = np.concatenate([[scores[0] - 1e-3], (scores[:-1] + scores[1:]) / 2, [scores[-1] + 1e-3]])
    false_reject = np.searchsorted(np.sort(same), cuts, side="left") / len(same)
    false_accept = (len(different) - np.searchsorted(np.sort(different), cuts, side="left")) / len(different)
    worst = np.maximum(false_reject, false_accept)
    best = np.flatnonzero(np.isclose(worst, worst.min(), rtol=0.0, atol=1e-12))
    return float((cuts[best[0]] + cuts[best[-1]]) / 2)


def calibration_scores(
    clips: list[list[np.ndarray]], vectors: list[np.ndarray], scoring: Margins | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(same-speaker, different-speaker) scores of voices given as their clip embeddings and stored vectors.

    Same speaker, leave one out: each clip of a voice with two or more clips against the L2-normalised mean
    of that voice's other clips (for a fused matcher, the mean of fused vectors, close to what the index
    holds: the encoders' means, fused). Different speakers: each clip of every voice against every other voice's
    stored vector, the comparison ``match`` makes between a query clip and an enrolled voice. With ``scoring``
    the scores are cohort margins, the cohort being the other voices and the shipped cohort, as ``match``'s.
    """
    voices = np.stack(vectors).astype(np.float64)
    queries = np.stack([clip for own in clips for clip in own]).astype(np.float64)
    owners = np.repeat(np.arange(len(clips)), [len(own) for own in clips])
    scores = queries @ voices.T
    pairs = owners[:, None] != np.arange(len(clips))[None, :]
    left_out = [mean_embedding(own[:n] + own[n + 1 :]) for own in clips if len(own) >= 2 for n in range(len(own))]
    tested = np.array([len(own) >= 2 for own in clips])[owners]
    same = np.einsum("ij,ij->i", queries[tested], np.stack(left_out)) if left_out else np.empty(0)
    if scoring is None:
        return same, scores[pairs]
    shipped = scoring.shipped.astype(np.float64)
    among = voices @ voices.T
    np.fill_diagonal(among, -np.inf)
    voice_means = top_mean(np.hstack([among, voices @ shipped.T]), scoring.top)
    query_means = top_means_without(np.hstack([scores, queries @ shipped.T]), len(clips), scoring.top)
    different = (scores - 0.5 * (query_means + voice_means[None, :]))[pairs]
    if not left_out:
        return same, different
    means = np.stack(left_out)
    own = owners[tested]
    mean_pool = means @ voices.T
    mean_pool[np.arange(len(own)), own] = -np.inf
    left_out_means = top_mean(np.hstack([mean_pool, means @ shipped.T]), scoring.top)
    same = same - 0.5 * (query_means[tested][np.arange(len(own)), own] + left_out_means)
    return same, different


def evenly(items: list[int], count: int) -> list[int]:
    """At most ``count`` of ``items``, spread evenly over the list."""
    if len(items) <= count:
        return items
    return [items[n * len(items) // count] for n in range(count)]


class Thresholds:
    def __init__(self, ctx: LibraryContext, catalog: Catalog, matcher: Matcher) -> None:
        self.ctx = ctx
        self.catalog = catalog
        self.matcher = matcher

    def identity(self) -> str:
        """The library's matcher and the weights of its encoders (``matcher:sha16[:sha16]``)."""
        return self.matcher.identity()

    def resolve(self, given: float | None = None) -> Threshold:
        """The threshold ``match`` applies, where it comes from, and the matcher's measured error rates (see
        the module docstring): a calibration's, else the shipped ones, whichever threshold applies. Where the
        library scores by cohort margin the shipped ones are the margin's."""
        identity = self.identity()
        matcher = identity.split(":")[0]
        calibrated = self.matcher.calibration(identity)
        scores = MARGIN_SCORES if self.matcher.margins(identity, calibrated) is not None else COSINE_SCORES
        shipped = config.SHIPPED_THRESHOLDS.get(identity)
        measured_on = shipped["measured_on"] if shipped else ""
        if shipped is not None and scores == MARGIN_SCORES:
            shipped = shipped["margin"]
        measured = calibrated or shipped
        rates = tuple(tuple(r) for r in measured["rates"]) if measured and "rates" in measured else None
        if given is not None:
            check_threshold(given)
            return Threshold(given, "argument", "given explicitly", matcher, rates, scores)
        if calibrated is not None:
            source = (
                f"calibrated on {calibrated['voices']} voices / {calibrated['same']} same-speaker and "
                f"{calibrated['different']} different-speaker scores on {calibrated['date']}"
            )
            return Threshold(calibrated["threshold"], "calibrated", source, matcher, rates, scores)
        if shipped is not None:
            what = f"{matcher} cohort margins" if scores == MARGIN_SCORES else matcher
            source = f"shipped default for {what} with these weights, measured on {measured_on}"
            return Threshold(shipped["threshold"], "shipped", source, matcher, rates, scores)
        source = "shipped default (not measured for these encoder weights)"
        return Threshold(config.DEFAULT_THRESHOLD, "default", source, matcher, None, scores)

    def cosine_threshold(self) -> float:
        """The threshold on plain cosines of the library's matcher: ``resolve``'s where the library scores by
        cosine, else the one shipped for the matcher's cosines (for checks that compare two clips, with no
        cohort to take a margin against)."""
        applied = self.resolve()
        if applied.scores == COSINE_SCORES:
            return applied.value
        return float(config.SHIPPED_THRESHOLDS[self.identity()]["threshold"])

    def calibrate(self, dry_run: bool = False) -> Calibration:
        """Measure the library's same- and different-speaker scores from the stored clip embeddings (no audio
        is decoded), choose the equal-error-rate threshold, and store it for the library's encoder. The scores
        are cohort margins where those were measured for the matcher's weights (``match`` then scores so)."""
        clips, vectors = self._voices()
        multi = sum(len(own) >= 2 for own in clips)
        if multi < config.MIN_CALIBRATION_VOICES:
            raise VoiceDBError(
                f"calibrating needs at least {config.MIN_CALIBRATION_VOICES} voices with two or more clips "
                f"(this library has {multi}); add clips with `voicedb add CLIP --voice ID`."
            )
        identity = self.identity()
        scoring = self.matcher.margins_measured(identity)
        scores = MARGIN_SCORES if scoring is not None else COSINE_SCORES
        same, different = calibration_scores(clips, vectors, scoring)
        chosen = round(equal_error_threshold(same, different), 2)  # as people write thresholds
        candidates = CANDIDATES[scores]
        rates = [(t, *error_rates(same, different, t)) for t in sorted({*candidates, chosen})]
        if not dry_run:
            record = {
                "identity": identity,
                "scores": scores,
                "rates": [[t, round(frr, 4), round(far, 4)] for t, frr, far in rates if t in candidates],
                "threshold": chosen,
                "voices": len(clips),
                "same": len(same),
                "different": len(different),
                "date": utcnow().date().isoformat(),
            }
            with self.catalog.write("calibrate") as change:
                key = calibration_key(identity)
                change.session.merge(MetaRow(key=key, value=json.dumps(record, separators=(",", ":"))))
        return Calibration(chosen, len(clips), len(same), len(different), rates, stored=not dry_run, scores=scores)

    def _voices(self) -> tuple[list[list[np.ndarray]], list[np.ndarray]]:
        """(clip vectors, voice vector) in the library's matching space of the voices whose every clip has
        them: those with two or more clips first, at most ``config.MAX_CALIBRATION_VOICES`` in all."""
        matcher = self.matcher.name()
        encoders = encoders_of(matcher)
        with self.ctx.store.session() as session:
            counts = session.execute(
                select(ClipRow.voice_pk, func.count()).group_by(ClipRow.voice_pk).order_by(ClipRow.voice_pk)
            ).all()
            limit = config.MAX_CALIBRATION_VOICES
            chosen = evenly([pk for pk, n in counts if n >= 2], limit)
            chosen += evenly([pk for pk, n in counts if n < 2], limit - len(chosen))
            clips: dict[int, list[np.ndarray]] = defaultdict(list)
            vectors: dict[int, np.ndarray] = {}
            for row in session.scalars(select(VoiceRow).where(VoiceRow.pk.in_(chosen))):
                voice = matcher_vector(row, matcher)
                found = [{v.encoder: np.frombuffer(v.vector, np.float32) for v in c.match_vectors} for c in row.clips]
                if voice is None or any(set(encoders) - set(clip) for clip in found):
                    continue
                clips[row.pk] = [fuse([clip[encoder] for encoder in encoders]) for clip in found]
                vectors[row.pk] = voice
        kept = [pk for pk in chosen if pk in vectors]
        return [clips[pk] for pk in kept], [vectors[pk] for pk in kept]
