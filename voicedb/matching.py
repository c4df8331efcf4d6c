"""Which stored voices sound like a clip: embed the query, check the encoder, search, apply the threshold."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import config
from .audio import AudioInput, load_query
from .catalog import Catalog
from .context import LibraryContext
from .errors import LibraryError, NoMatch, VoiceDBError
from .matchers import CAMPPLUS, CHECKSUM_KEYS, MATCHER_KEY, check_matcher, encoders_of, normalised
from .records import Match
from .speakers import SpeakerEncoders
from .store import MetaRow, VoiceRow


def check_threshold(threshold: float | None) -> None:
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise VoiceDBError(f"threshold {threshold} is not a cosine score; choose a value from -1 to 1.")


class Matcher:
    def __init__(self, ctx: LibraryContext, catalog: Catalog) -> None:
        self.ctx = ctx
        self.catalog = catalog

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

    def query_vector(self, audio: AudioInput) -> np.ndarray:
        """The clip's vector in the library's matching space (see ``matchers``)."""
        matcher = self.name()
        self.check_checksums(matcher)  # before decoding anything
        return self.encoders.query(load_query(audio), matcher)

    def match(self, audio: AudioInput, k: int = 5, threshold: float | None = config.DEFAULT_THRESHOLD) -> list[Match]:
        """The ``k`` stored voices nearest to the speaker in ``audio``, best first.

        With a ``threshold``, voices scoring below it are left out, and ``NoMatch`` (carrying the
        nearest voices in ``.nearest``) is raised when none is left: the clip is an unknown speaker.
        """
        check_threshold(threshold)
        return self.match_vector(self.query_vector(audio), k=k, threshold=threshold)

    def match_vector(self, vector: np.ndarray, k: int = 5, threshold: float | None = None) -> list[Match]:
        """Like ``match`` for a vector in the library's matching space already computed (normalised here)."""
        if k < 1:
            raise VoiceDBError("k must be at least 1.")
        check_threshold(threshold)
        vector = normalised(vector)
        matches = self._search(vector, k, rebuild=False)
        if matches is None:  # the saved index names voices the store does not have: rebuild it from the truth
            matches = self._search(vector, k, rebuild=True) or []
        if threshold is not None:
            kept = [m for m in matches if m.score >= threshold]
            if not kept:
                best = f" (best: {matches[0].name} at {matches[0].score:.3f})" if matches else " (the library is empty)"
                raise NoMatch(f"no voice scores {threshold:.2f} or more: unknown speaker{best}.", nearest=matches)
            matches = kept
        return matches

    def _search(self, vector: np.ndarray, k: int, rebuild: bool) -> list[Match] | None:
        """The ``k`` nearest voices, or ``None`` when a hit is missing from the store (an inconsistent index)."""
        hits = self.ctx.index.search(vector, k, rebuild=rebuild)
        found = self.catalog.by_pks([pk for pk, _ in hits])
        if any(pk not in found for pk, _ in hits):
            return None
        return [Match(*found[pk], score) for pk, score in hits]
