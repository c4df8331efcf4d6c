"""Which stored voices sound like a clip: embed the query, check the encoder, search, apply the threshold.

Every voice is matchable. Voices the library's matcher can compare (their clips were embedded by each of its
encoders) are searched in the main index; voices it cannot (no kept clips: a ``.pt`` import, an embedding-only
voice, a bundle without CAM++) in the fallback index, by the Chatterbox embedding every voice has. The two
kinds of score are put on one scale before they are ranked: each evidence has a log-likelihood ratio fitted
by logistic regression on the development set (``llr`` in ``shipped_thresholds.json``, written by
``scripts/eval_matching.py``), and a fallback score is reported as the matcher score with the same
log-likelihood ratio, so one threshold and one set of verdicts serve both. ``Match.evidence`` says which.

Where the development set measured it for the library's matcher and weights (``margin`` in
``shipped_thresholds.json``), a score is then a cohort margin (``voicedb.cohort``): the cosine less what the
query and the voice score with their nearest other voices, so recordings from a source of look-alike voices
are not taken for one speaker. ``Match.cosine`` keeps the cosine.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import config
from .audio import AudioInput, load_query
from .campplus import CAMPPLUS_FILE
from .catalog import Catalog, matcher_vector, stored_vectors
from .cohort import margins, shipped_cohort
from .context import LibraryContext
from .errors import LibraryError, NoMatch, VoiceDBError
from .flavours import DEFAULT_FLAVOUR, FLAVOURS
from .index import FALLBACK
from .matchers import (
    CAMPPLUS,
    CHATTERBOX,
    CHECKSUM_KEYS,
    DIMENSIONS,
    MATCHER_KEY,
    check_matcher,
    encoders_of,
    fuse,
    split,
)
from .records import Match, WeightsFile, WeightsReport
from .speakers import SpeakerEncoders
from .store import MetaRow, VoiceRow
from .weight_sources import Fetched, Progress, fetch

#: The evidence of a fallback score: a query's Chatterbox vector against a voice's conditionals embedding
#: (``conditionals:<sha16 of the voice encoder>`` is its identity in ``shipped_thresholds.json``).
CONDITIONALS_EVIDENCE = "conditionals"


#: What ``add`` and ``matcher`` say when a library takes the ``chatterbox`` matcher for want of CAM++'s weights.
MISSING_CAMPPLUS = (
    "CAM++'s weights are not on this machine, so this library matches with chatterbox alone, the weaker "
    "matcher; `voicedb weights fetch` gets them, then `voicedb matcher chatterbox+campplus` switches"
)


#: How scores are computed: the matcher's cosine, or the cohort margin of it (``voicedb.cohort``).
COSINE_SCORES, MARGIN_SCORES = "cosine", "cohort margin"

#: Voices whose cohort margin is computed per query, the nearest by cosine: a margin re-ranks only these.
MARGIN_CANDIDATES = 10


def calibration_key(identity: str) -> str:
    """The ``meta`` row holding the threshold calibrated for a matcher ``identity`` (``Matcher.identity``):
    a prefix of the identity's SHA-256, as keys hold 64 characters (the identity is kept in the value)."""
    return f"threshold:{hashlib.sha256(identity.encode()).hexdigest()[:48]}"


@dataclass(frozen=True)
class Margins:
    """Cohort-margin scoring as a library applies it: the cohort scores averaged per side, and the shipped
    cohort (the development set's voices in the matcher's space) that joins the library's other voices."""

    top: int
    shipped: np.ndarray


@dataclass(frozen=True)
class VoiceCohort:
    """A stored voice's side of a margin: its nearest other voices (pks and scores, best first, one more than
    the cohort needs) and its scores with the shipped cohort."""

    pks: np.ndarray
    nearest: np.ndarray
    shipped: np.ndarray

    def scores(self, top: int, exclude: int | None) -> np.ndarray:
        """The ``top`` nearest voices' scores but ``exclude``'s, and the shipped cohort's."""
        kept = self.nearest[self.pks != exclude][:top] if exclude is not None else self.nearest[:top]
        return np.concatenate([kept, self.shipped])


def check_threshold(threshold: float | None) -> None:
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise VoiceDBError(f"threshold {threshold} is not a cosine score; choose a value from -1 to 1.")


@dataclass(frozen=True)
class Scale:
    """How a fallback score becomes a matcher score: ``slope * cosine + offset``, the matcher score whose
    log-likelihood ratio is the fallback score's."""

    slope: float
    offset: float

    def __call__(self, cosine: float) -> float:
        return self.slope * cosine + self.offset


def fallback_scale(matcher_identity: str, fallback_identity: str) -> Scale:
    """The ``Scale`` from the shipped logistic calibrations (``llr = a * score + b``) of both evidences;
    weights nobody measured keep the cosine as it is (both then face the default threshold)."""
    primary = config.SHIPPED_THRESHOLDS.get(matcher_identity, {}).get("llr")
    fallback = config.SHIPPED_THRESHOLDS.get(fallback_identity, {}).get("llr")
    if primary is None or fallback is None:
        return Scale(1.0, 0.0)
    (a_p, b_p), (a_f, b_f) = primary, fallback
    return Scale(a_f / a_p, (b_f - b_p) / a_p)


class Matcher:
    def __init__(self, ctx: LibraryContext, catalog: Catalog) -> None:
        self.ctx = ctx
        self.catalog = catalog
        # (generation, matcher) -> voice pk -> the voice's cohort scores: a voice's nearest voices change only
        # with the library, and a query needs them for every candidate
        self._voice_cohorts: tuple[tuple[int, str], dict[int, VoiceCohort]] = ((-1, ""), {})
        self._voice_cohorts_lock = threading.Lock()

    @property
    def encoders(self) -> SpeakerEncoders:
        return SpeakerEncoders(self.ctx.engine)

    def name(self, session: Session | None = None) -> str:
        """The library's matcher: the one it recorded; for a library that never recorded one, the
        recommended matcher while it is empty, else the Chatterbox encoder (what it was built with)."""
        if session is None:
            with self.ctx.store.session() as session:
                return self.name(session)
        row = session.get(MetaRow, MATCHER_KEY)
        if row is not None:
            return row.value
        if session.scalar(select(VoiceRow.pk).limit(1)) is None:
            return self.encoders.recommended_matcher()
        return self.ctx.store.matcher(session)

    def settle(self, session: Session) -> str:
        """Record the library's matcher inside a change that adds voices (so a new library keeps the one it
        started with), and return it."""
        name = self.name(session)
        session.merge(MetaRow(key=MATCHER_KEY, value=check_matcher(name)))
        return name

    def fallback_notice(self) -> str | None:
        """The one line a user reads when a library is about to record the weaker ``chatterbox`` matcher only
        because CAM++'s weights are missing (None otherwise): what fixes it."""
        with self.ctx.store.session() as session:
            if session.get(MetaRow, MATCHER_KEY) is not None or self.encoders.available(CAMPPLUS):
                return None
        return MISSING_CAMPPLUS

    def weights(self) -> WeightsReport:
        """Which speaker-encoder weights this machine uses, from where, their checksums, and the matchers."""
        engine = self.ctx.engine
        ve_path, ve_source = engine.voice_encoder_location()
        if ve_path is None:
            voice_encoder = WeightsFile(FLAVOURS[DEFAULT_FLAVOUR].ve_file, ve_source, None, None)
        else:
            voice_encoder = WeightsFile(ve_path.name, ve_source, ve_path, engine.encoder_checksum)
        found = engine.campplus_source()
        if found is None:
            campplus = WeightsFile(CAMPPLUS_FILE, "no source on this machine", None, None)
        else:
            campplus = WeightsFile(CAMPPLUS_FILE, found[1], found[0], engine.campplus_checksum)
        return WeightsReport(voice_encoder, campplus, self.encoders.recommended_matcher(), self.name())

    def fetch_weights(self, local: Path | None = None, progress: Progress | None = None) -> Fetched:
        """Put CAM++'s official weights where this machine looks for them (see ``weight_sources``)."""
        fetched = fetch(local, progress)
        self.ctx.engine.forget_campplus()
        return fetched

    def identity(self, evidence: str | None = None) -> str:
        """The identity of the library's matcher (or of ``evidence``: a matcher name or
        ``CONDITIONALS_EVIDENCE``) with the weights of its encoders, ``name:sha16[:sha16]``: scores are
        comparable only within one identity. Checksums come from the library, else from the engine."""
        with self.ctx.store.session() as session:
            evidence = evidence or self.name(session)
            encoders = (CHATTERBOX,) if evidence == CONDITIONALS_EVIDENCE else encoders_of(evidence)
            sums = []
            for encoder in encoders:
                row = session.get(MetaRow, CHECKSUM_KEYS[encoder])
                sums.append(row.value if row else self.encoders.checksum(encoder))
        return ":".join([evidence, *(checksum[:16] for checksum in sums)])

    def calibration(self, identity: str | None = None) -> dict | None:
        """What ``voicedb calibrate`` stored for the library's matcher identity (or ``identity``), if anything."""
        identity = identity or self.identity()
        with self.ctx.store.session() as session:
            row = session.get(MetaRow, calibration_key(identity))
        stored = json.loads(row.value) if row else None
        return stored if stored is not None and stored.get("identity") == identity else None

    def margins_measured(self, identity: str | None = None) -> Margins | None:
        """Cohort-margin scoring for the matcher's weights where the development set measured it, else None."""
        identity = identity or self.identity()
        measured = config.SHIPPED_THRESHOLDS.get(identity, {}).get("margin")
        shipped = shipped_cohort(identity)
        if measured is None or shipped is None:
            return None
        return Margins(int(measured["top"]), shipped)

    def margins(self, identity: str | None = None, calibrated: dict | None = None) -> Margins | None:
        """How this library scores: by cohort margin where it was measured for its matcher and weights, unless
        the library was calibrated on cosines (a calibration from before margins keeps the scores it measured).
        A caller that has read the ``identity`` and its ``calibration`` already passes both."""
        if identity is None:
            identity = self.identity()
            calibrated = self.calibration(identity)
        if calibrated is not None and calibrated.get("scores", COSINE_SCORES) != MARGIN_SCORES:
            return None
        return self.margins_measured(identity)

    def scale(self) -> Scale:
        """How the fallback index's scores join the matcher's (see the module docstring)."""
        return fallback_scale(self.identity(), self.identity(CONDITIONALS_EVIDENCE))

    def check_checksums(self, matcher: str) -> None:
        """Refuse to compare vectors with a query from other weights than the stored vectors' (cheap: no network)."""
        self.encoders.require(matcher)
        self.ctx.check_encoder(self.ctx.engine.encoder_checksum)
        if CAMPPLUS in encoders_of(matcher):
            with self.ctx.store.session() as session:
                stored = session.get(MetaRow, CHECKSUM_KEYS[CAMPPLUS])
            if stored is not None and stored.value != self.encoders.checksum(CAMPPLUS):
                raise LibraryError(
                    "the library's CAM++ vectors come from other weights than this checkpoint's; "
                    "run `voicedb check --repair` to re-embed them."
                )

    def embed(self, audio: AudioInput) -> np.ndarray:
        """The speaker embedding of one clip as the conditionals hold it (float32, (256,), L2-normalised)."""
        return self.ctx.engine.embed(load_query(audio))

    def _fallback_in_use(self, matcher: str) -> bool:
        return FALLBACK.used(matcher) and self.ctx.fallback_index.size() > 0

    def query_parts(self, audio: AudioInput) -> dict[str, np.ndarray]:
        """The clip's unit vector by each encoder ``match`` needs: the matcher's, and Chatterbox's when voices
        the matcher cannot compare are waiting in the fallback index."""
        matcher = self.name()
        self.check_checksums(matcher)  # before decoding anything
        encoders = encoders_of(matcher)
        if CHATTERBOX not in encoders and self._fallback_in_use(matcher):
            encoders = (*encoders, CHATTERBOX)
        return {encoder: vector for encoder, (_, vector) in self.encoders.embed(load_query(audio), encoders).items()}

    def match(self, audio: AudioInput, k: int = 5, threshold: float | None = config.DEFAULT_THRESHOLD) -> list[Match]:
        """The ``k`` stored voices nearest to the speaker in ``audio``, best first.

        With a ``threshold``, voices scoring below it are left out, and ``NoMatch`` (carrying the
        nearest voices in ``.nearest``) is raised when none is left: the clip is an unknown speaker.
        """
        check_threshold(threshold)
        return self.match_parts(self.query_parts(audio), k=k, threshold=threshold)

    def match_vector(self, vector: np.ndarray, k: int = 5, threshold: float | None = None) -> list[Match]:
        """Like ``match`` for a vector in the library's matching space already computed (normalised here)."""
        return self.match_parts(split(vector, self.name()), k=k, threshold=threshold)

    def similar(self, ref: str, k: int = 5) -> list[Match]:
        """The ``k`` other stored voices nearest to voice ``ref``, scored as ``match`` scores a clip of it: by
        its matcher vector when it has one, else by its Chatterbox embedding (a voice without clips)."""
        matcher = self.name()
        with self.ctx.store.session() as session:
            row = self.catalog.row(session, ref)
            pk, parts = row.pk, self._voice_parts(row, matcher)
        return self.match_parts(parts, k=k, exclude=pk)

    def match_parts(
        self, parts: dict[str, np.ndarray], k: int = 5, threshold: float | None = None, exclude: int | None = None
    ) -> list[Match]:
        """Like ``match`` for a query given as its encoders' unit vectors; ``exclude`` leaves one voice (by
        primary key) out. Both indexes are searched and their scores ranked on the matcher's scale."""
        if k < 1:
            raise VoiceDBError("k must be at least 1.")
        check_threshold(threshold)
        matcher = self.name()
        hits = self._ranked(parts, matcher, k, exclude, rebuild=False)
        found = self.catalog.by_pks([pk for pk, *_ in hits])
        if len(found) < len(hits):  # an index names voices the store does not have: rebuild it from the truth
            hits = self._ranked(parts, matcher, k, exclude, rebuild=True)
            found = self.catalog.by_pks([pk for pk, *_ in hits])
        matches = [Match(*found[pk], score, evidence, cosine) for pk, score, cosine, evidence in hits if pk in found]
        if threshold is not None:
            kept = [m for m in matches if m.score >= threshold]
            if not kept:
                best = f" (best: {matches[0].name} at {matches[0].score:.3f})" if matches else " (the library is empty)"
                raise NoMatch(f"no voice scores {threshold:.2f} or more: unknown speaker{best}.", nearest=matches)
            matches = kept
        return matches

    def _ranked(
        self, parts: dict[str, np.ndarray], matcher: str, k: int, exclude: int | None, rebuild: bool
    ) -> list[tuple[int, float, float, str]]:
        """(pk, score, cosine, evidence) of the ``k`` best voices: ``_nearest``'s, or their cohort margins
        (the ``MARGIN_CANDIDATES`` nearest by cosine, re-ranked) where the library scores by margin."""
        scoring = self.margins()
        if scoring is None:
            return self._nearest(parts, matcher, k, exclude, rebuild)
        wanted = max(k, MARGIN_CANDIDATES)
        pool = self._nearest(parts, matcher, wanted + scoring.top + 1, exclude, rebuild)
        candidates = pool[:wanted]
        if not candidates:
            return []
        scores = np.array([score for _, score, _, _ in pool])
        shipped = self._shipped_scores(parts, matcher, scoring)
        query_cohort = np.stack([np.concatenate([np.delete(scores, j), shipped]) for j in range(len(candidates))])
        voice_cohort = self._voice_cohort_scores([pk for pk, *_ in candidates], matcher, scoring, exclude, rebuild)
        found = margins(scores[: len(candidates)], query_cohort, voice_cohort, scoring.top)
        hits = [(pk, float(m), cosine, evidence) for (pk, _, cosine, evidence), m in zip(candidates, found)]
        return sorted(hits, key=lambda hit: -hit[1])[:k]

    def _shipped_scores(self, parts: dict[str, np.ndarray], matcher: str, scoring: Margins) -> np.ndarray:
        """A query's scores on the matcher's scale with the shipped cohort's voices (as ``_nearest`` scores)."""
        encoders = encoders_of(matcher)
        if set(encoders) <= set(parts):
            return scoring.shipped @ fuse([parts[encoder] for encoder in encoders])
        zeros = {encoder: np.zeros(DIMENSIONS[encoder], np.float32) for encoder in encoders}
        vector = fuse([parts.get(encoder, zeros[encoder]) for encoder in encoders])
        return np.asarray(self.scale()(scoring.shipped @ vector * len(encoders)))

    def _voice_cohort_scores(
        self, pks: list[int], matcher: str, scoring: Margins, exclude: int | None, rebuild: bool
    ) -> np.ndarray:
        """Row per voice of ``pks``: its ``top`` best scores with the library's other voices (``exclude``, the
        voice a ``similar`` query is, left out: a pair is not its own cohort, or duplicates would hide each
        other) and its scores with the shipped cohort, the other side of a margin. A voice's nearest voices
        are kept until the library changes."""
        with self.ctx.store.session() as session:
            key = (self.ctx.store.generation(session), matcher)
            with self._voice_cohorts_lock:
                if self._voice_cohorts[0] != key:
                    self._voice_cohorts = (key, {})
                known = dict(self._voice_cohorts[1])
            missing = [pk for pk in pks if pk not in known]
            rows = session.scalars(select(VoiceRow).where(VoiceRow.pk.in_(missing))) if missing else []
            voices = {row.pk: self._voice_parts(row, matcher) for row in rows}
        for pk, parts in voices.items():
            nearest = self._nearest(parts, matcher, scoring.top + 1, pk, rebuild)
            known[pk] = VoiceCohort(
                np.array([hit[0] for hit in nearest], dtype=np.int64),
                np.array([hit[1] for hit in nearest], dtype=np.float64),
                self._shipped_scores(parts, matcher, scoring),
            )
        with self._voice_cohorts_lock:
            if self._voice_cohorts[0] == key:
                self._voice_cohorts[1].update({pk: known[pk] for pk in voices})
        # a voice the index names but the store lacks has no side: ``match_parts`` rebuilds the index for it
        rows = [known[pk].scores(scoring.top, exclude) if pk in known else np.empty(0) for pk in pks]
        width = max(len(row) for row in rows)
        return np.stack([np.pad(row, (0, width - len(row)), constant_values=-np.inf) for row in rows])

    @staticmethod
    def _voice_parts(row: VoiceRow, matcher: str) -> dict[str, np.ndarray]:
        """A stored voice as a query: its matcher vector's parts, else its Chatterbox embedding (no clips)."""
        vector = matcher_vector(row, matcher)
        return split(vector, matcher) if vector is not None else {CHATTERBOX: stored_vectors(row)[CHATTERBOX]}

    def _nearest(
        self, parts: dict[str, np.ndarray], matcher: str, k: int, exclude: int | None, rebuild: bool
    ) -> list[tuple[int, float, float, str]]:
        """(pk, score on the matcher's scale, cosine, evidence) of the ``k`` best voices of both indexes.

        A query with only Chatterbox's vector (a voice without clips, looking for its duplicates) searches the
        matcher's index with the other encoders' parts left at zero: the inner product is then the Chatterbox
        cosine over the number of encoders, which is scaled back and put on the matcher's scale."""
        wanted = k + (exclude is not None)
        encoders = encoders_of(matcher)
        if CHATTERBOX not in parts and not set(encoders) <= set(parts):
            raise VoiceDBError(f"a query for {matcher} needs a vector by {' and '.join(encoders)}.")
        complete = set(encoders) <= set(parts)
        fallback = CHATTERBOX in parts and self._fallback_in_use(matcher)
        scale = self.scale() if fallback or not complete else None
        if complete:
            vector = fuse([parts[encoder] for encoder in encoders])
            found = self.ctx.index.search(vector, wanted, rebuild=rebuild)
            hits = [(pk, score, score, matcher) for pk, score in found]
        else:
            zeros = {encoder: np.zeros(DIMENSIONS[encoder], np.float32) for encoder in encoders}
            vector = fuse([parts.get(encoder, zeros[encoder]) for encoder in encoders])
            found = self.ctx.index.search(vector, wanted, rebuild=rebuild)
            hits = [(pk, scale(score * len(encoders)), score * len(encoders), CHATTERBOX) for pk, score in found]
        if fallback:
            found = self.ctx.fallback_index.search(parts[CHATTERBOX], wanted, rebuild=rebuild)
            hits += [(pk, scale(cosine), cosine, CHATTERBOX) for pk, cosine in found]
        return sorted((hit for hit in hits if hit[0] != exclude), key=lambda hit: -hit[1])[:k]
