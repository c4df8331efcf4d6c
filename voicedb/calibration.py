"""Which threshold ``match`` applies, ``calibrate`` measuring one on the library's own voices, and the
words ``match`` puts a score in.

A threshold comes, in order, from the caller (``--threshold``, the API's argument); else from
``calibrate`` on this library, for the voice encoder its vectors come from; else from the value shipped
for that encoder (``config.SHIPPED_THRESHOLDS``); else ``config.DEFAULT_THRESHOLD``. Scores of two
encoders are not comparable, so a calibration is stored under its encoder's checksum and ignored once the
library is re-embedded with another.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
from sqlalchemy import func, select

from . import config
from .catalog import Catalog
from .context import LibraryContext
from .errors import VoiceDBError
from .matching import check_threshold, mean_embedding, normalised
from .records import Calibration, Threshold
from .store import ClipRow, MetaRow, VoiceRow, utcnow

#: Thresholds ``calibrate`` reports error rates at, besides the one it chooses.
CANDIDATES = tuple(round(0.50 + 0.05 * n, 2) for n in range(10))


def meta_key(encoder: str) -> str:
    """The ``meta`` row holding the threshold calibrated for ``encoder``: a prefix of its SHA-256, as keys
    hold 64 characters (the full checksum is kept in the value and compared)."""
    return f"threshold:{encoder[:48]}"


def verdict(score: float, threshold: float) -> str:
    """How sure a match is, in words: clear of the threshold by ``config.VERDICT_MARGIN`` it is "same
    speaker" above and "unknown speaker" below; within the margin "probably" (at or above the threshold,
    so it counts) or "possibly" (below it, so it does not)."""
    margin, above = config.VERDICT_MARGIN, distance(score, threshold)
    if above >= margin:
        return "same speaker"
    if above >= 0:
        return "probably the same speaker"
    if above >= -margin:
        return "possibly the same speaker, below the threshold"
    return "unknown speaker"


def distance(score: float, threshold: float) -> float:
    """How far a score lies above the threshold, to the precision scores are printed with (so that 0.85 is
    0.05 above 0.80, whatever binary floating point makes of the difference)."""
    return round(score - threshold, 6)


def near_threshold(score: float, threshold: float) -> bool:
    """Whether a score is too close to the threshold for a sure answer (what more enrolled audio helps)."""
    return abs(distance(score, threshold)) < config.VERDICT_MARGIN


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


def calibration_scores(clips: list[list[np.ndarray]], vectors: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(same-speaker, different-speaker) cosine scores of voices given as their clip embeddings and stored vectors.

    Same speaker, leave one out: each clip of a voice with two or more clips against the L2-normalised mean
    of that voice's other clips. Different speakers: each clip of every voice against every other voice's
    stored vector, the comparison ``match`` makes between a query clip and an enrolled voice.
    """
    same = [
        float(clip @ mean_embedding(own[:n] + own[n + 1 :]))
        for own in clips
        if len(own) >= 2
        for n, clip in enumerate(own)
    ]
    queries = np.stack([clip for own in clips for clip in own])
    owners = np.repeat(np.arange(len(clips)), [len(own) for own in clips])
    scores = queries @ np.stack(vectors).T
    different = scores[owners[:, None] != np.arange(len(clips))[None, :]]
    return np.asarray(same, dtype=np.float64), different.astype(np.float64)


def evenly(items: list[int], count: int) -> list[int]:
    """At most ``count`` of ``items``, spread evenly over the list."""
    if len(items) <= count:
        return items
    return [items[n * len(items) // count] for n in range(count)]


class Thresholds:
    def __init__(self, ctx: LibraryContext, catalog: Catalog) -> None:
        self.ctx = ctx
        self.catalog = catalog

    def encoder(self) -> str:
        """The checksum of the voice encoder the library's vectors come from (an empty library: the engine's)."""
        return self.ctx.library_encoder() or self.ctx.engine.encoder_checksum

    def resolve(self, given: float | None = None) -> Threshold:
        """The threshold ``match`` applies and where it comes from (see the module docstring)."""
        if given is not None:
            check_threshold(given)
            return Threshold(given, "argument", "given explicitly")
        encoder = self.encoder()
        with self.ctx.store.session() as session:
            row = session.get(MetaRow, meta_key(encoder))
            stored = row.value if row else None
        if stored is not None:
            data = json.loads(stored)
            if data["encoder"] == encoder:
                source = (
                    f"calibrated on {data['voices']} voices / {data['same']} same-speaker and "
                    f"{data['different']} different-speaker scores on {data['date']}"
                )
                return Threshold(data["threshold"], "calibrated", source)
        if encoder in config.SHIPPED_THRESHOLDS:
            return Threshold(config.SHIPPED_THRESHOLDS[encoder], "shipped", "shipped default for this voice encoder")
        return Threshold(config.DEFAULT_THRESHOLD, "default", "shipped default (not measured for this voice encoder)")

    def calibrate(self, dry_run: bool = False) -> Calibration:
        """Measure the library's same- and different-speaker scores from the stored clip embeddings (no audio
        is decoded), choose the equal-error-rate threshold, and store it for the library's encoder."""
        encoder = self.ctx.library_encoder()
        clips, vectors = self._voices()
        multi = sum(len(own) >= 2 for own in clips)
        if encoder is None or multi < config.MIN_CALIBRATION_VOICES:
            raise VoiceDBError(
                f"calibrating needs at least {config.MIN_CALIBRATION_VOICES} voices with two or more clips "
                f"(this library has {multi}); add clips with `voicedb add CLIP --voice ID`."
            )
        same, different = calibration_scores(clips, vectors)
        chosen = round(equal_error_threshold(same, different), 2)  # as people write thresholds
        rates = [(t, *error_rates(same, different, t)) for t in sorted({*CANDIDATES, chosen})]
        if not dry_run:
            record = {
                "encoder": encoder,
                "threshold": chosen,
                "voices": len(clips),
                "same": len(same),
                "different": len(different),
                "date": utcnow().date().isoformat(),
            }
            with self.catalog.write("calibrate") as change:
                change.session.merge(MetaRow(key=meta_key(encoder), value=json.dumps(record)))
        return Calibration(chosen, len(clips), len(same), len(different), rates, stored=not dry_run)

    def _voices(self) -> tuple[list[list[np.ndarray]], list[np.ndarray]]:
        """(clip embeddings, stored vector) of the voices that have clips: those with two or more first, at
        most ``config.MAX_CALIBRATION_VOICES`` in all."""
        with self.ctx.store.session() as session:
            counts = session.execute(
                select(ClipRow.voice_pk, func.count()).group_by(ClipRow.voice_pk).order_by(ClipRow.voice_pk)
            ).all()
            limit = config.MAX_CALIBRATION_VOICES
            chosen = evenly([pk for pk, n in counts if n >= 2], limit)
            chosen += evenly([pk for pk, n in counts if n < 2], limit - len(chosen))
            clips: dict[int, list[np.ndarray]] = defaultdict(list)
            for pk, embedding in session.execute(
                select(ClipRow.voice_pk, ClipRow.embedding).where(ClipRow.voice_pk.in_(chosen)).order_by(ClipRow.pk)
            ):
                clips[pk].append(normalised(np.frombuffer(embedding, dtype=np.float32)))
            vectors = dict(
                session.execute(select(VoiceRow.pk, VoiceRow.embedding).where(VoiceRow.pk.in_(chosen))).all()
            )
        return [clips[pk] for pk in chosen], [normalised(np.frombuffer(vectors[pk], dtype=np.float32)) for pk in chosen]
