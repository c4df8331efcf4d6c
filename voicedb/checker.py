"""``voicedb check``: find every inconsistency between the store, the files and the index; repair what can be.

The store is the truth. Files it does not mention are orphans (left by a crash before a commit) and
may go; rows whose files are missing, corrupt or outdated are re-derived from the kept reference
audio when possible and otherwise reported -- a voice is never deleted here. Without ``repair``
nothing is written and no lock is taken, so a read-only library can be checked. Repairs go
through the same write protocol as every other change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .catalog import Catalog
from .conditionals import ConditionalsStore, speaker_matches
from .context import LibraryContext
from .enroll import Enrollment
from .errors import VoiceDBError
from .index import VoiceIndex, misfit
from .matchers import mean_embedding
from .records import Problem


class Checker:
    """One check run over an open library."""

    def __init__(
        self, ctx: LibraryContext, catalog: Catalog, conditionals: ConditionalsStore, enrollment: Enrollment
    ) -> None:
        self.ctx = ctx
        self.catalog = catalog
        self.conditionals = conditionals
        self.enrollment = enrollment
        self.problems: list[Problem] = []
        self.repair = False

    def run(self, repair: bool) -> list[Problem]:
        self.repair = repair
        if repair:
            self.ctx.require_writable()
        self._orphans()
        self._clip_files()
        self._conditionals()
        self._embeddings()
        self._match_vectors()
        self._index()
        return self.problems

    def _report(self, kind: str, message: str, repaired: bool = False) -> None:
        self.problems.append(Problem(kind, message, repaired))

    def _try(self, action: Callable[..., object], *args: object) -> bool:
        """Run a repair when asked to; a repair that cannot succeed stays reported, not fatal."""
        if not self.repair:
            return False
        try:
            action(*args)
        except VoiceDBError as exc:
            self._report("unrepaired", str(exc))
            return False
        return True

    def _voices(self) -> list[Any]:
        with self.ctx.store.session() as session:
            return self.catalog.rows(session)

    def _orphans(self) -> None:
        if self.repair:  # no writer may be between writing its files and committing them
            with self.ctx.writer.held():
                self._find_orphans()
        else:
            self._find_orphans()

    def _find_orphans(self) -> None:
        """Files in the library's storage (its directory, or object storage) that no row refers to."""
        objects = self.ctx.objects
        referenced = {c.file for v in self._voices() for c in [*v.clips, *v.conditionals]}
        temps = objects.leftovers()
        for temp in temps:
            if self.repair:
                objects.delete(temp)
            self._report("temp-file", f"unfinished write left behind: {temp}", self.repair)
        for relative in objects.names():
            if relative in referenced or relative in temps:
                continue
            if self.repair:
                objects.delete(relative)
            self._report("orphan-file", f"{relative} belongs to no voice (left by an interrupted write)", self.repair)

    def _clip_files(self) -> None:
        for voice in self._voices():
            for clip in voice.clips:
                found = self.ctx.objects.sha256(clip.file)
                if found is None:
                    self._report("missing-clip", f"voice {voice.id} ({voice.name}): kept clip {clip.file} is missing")
                elif found != clip.sha256:
                    self._report(
                        "corrupt-clip",
                        f"voice {voice.id} ({voice.name}): kept clip {clip.file} does not match its checksum",
                    )

    def _conditionals(self) -> None:
        for voice in self._voices():
            for saved in voice.conditionals:
                found = self.ctx.objects.sha256(saved.file)
                if found != saved.sha256:
                    what = "missing" if found is None else "corrupt"
                    message = f"voice {voice.id} ({voice.name}): {saved.flavour} conditionals {saved.file} are {what}"
                elif not speaker_matches(self.conditionals.read(saved), voice.vector):
                    message = (
                        f"voice {voice.id} ({voice.name}): {saved.flavour} conditionals carry another speaker "
                        "embedding than the voice (outdated)"
                    )
                else:
                    continue
                self._report("conditionals", message, self._try(self.conditionals.derive, voice.id, saved.flavour))

    def _embeddings(self) -> None:
        voices = self._voices()
        current = self.ctx.library_encoder()
        if self.repair and voices:
            try:
                current = self.ctx.engine.encoder_checksum
            except VoiceDBError as exc:
                self._report("unrepaired", f"cannot load the voice encoder to verify embeddings: {exc}")
        for voice in voices:
            if current is not None and voice.encoder != current:
                message = f"voice {voice.id} ({voice.name}) was embedded with another voice-encoder checkpoint"
                self._report("encoder", message, self._try(self.enrollment.reembed, voice.id))
            elif voice.clips and not np.allclose(
                mean_embedding([c.vector for c in voice.clips]), voice.vector, atol=1e-4
            ):
                message = f"voice {voice.id} ({voice.name}): embedding is not the mean of its clips"
                self._report("embedding", message, self._try(self.enrollment.remean, voice.id))
        if self.repair and current is not None and not any(p.kind == "unrepaired" for p in self.problems):
            from .store import MetaRow

            with self.catalog.write("check") as change:
                change.session.merge(MetaRow(key="encoder", value=current))

    def _match_vectors(self) -> None:
        """Kept clips without the matcher's vectors (enrolled before matchers existed, or by other weights):
        embedded on repair. (Voices without clips are matched by their Chatterbox embedding: see ``index``.)"""
        matcher = self.enrollment.matcher.name()
        try:
            missing = self.enrollment.missing_match_vectors(matcher)
        except VoiceDBError as exc:
            self._report("unrepaired", f"cannot check matching vectors: {exc}")
            return
        if missing:
            message = f"{len(missing)} kept clips lack matching vectors for the matcher {matcher}"
            self._report("matching", message, self._try(self.enrollment.fill_match_vectors, matcher))

    def _index(self) -> None:
        for voice_index in self.ctx.indexes:
            self._one_index(voice_index)

    def _one_index(self, voice_index: VoiceIndex) -> None:
        files = voice_index.files
        with self.ctx.store.session() as session:
            generation = self.ctx.store.generation(session)
            matcher = self.ctx.store.matcher(session)
            index = files.load(generation, matcher)
            pks, vectors = voice_index.space.vectors(self.ctx.store, session, matcher)
        if voice_index.space.fallback and not len(pks):
            return  # nothing to find there: a reader builds it (empty) when it needs it
        name = "the FAISS index of clip-less voices" if voice_index.space.fallback else "the FAISS index"
        if index is not None:
            if not index_matches(index, pks, vectors):
                reason = "holds other voices or vectors than the database"
            elif (wrong_kind := misfit(index, voice_index.exact_max)) is None:
                return
            else:
                reason = wrong_kind
        elif not files.index_path.exists():
            if not self.ctx.store.is_sqlite:
                return  # a shared library: the index is this machine's cache, built when it first searches
            reason = "is missing"
        else:
            reason = "is stale or unreadable"
        if self.repair:
            with self.ctx.writer.held():
                voice_index.rebuild()
        self._report("index", f"{name} {reason}", self.repair)


def index_matches(index: Any, pks: np.ndarray, vectors: np.ndarray) -> bool:
    """Whether ``index`` holds exactly the voices ``pks`` with these ``vectors``."""
    if index.ntotal != len(pks):
        return False
    if not len(pks):
        return True
    try:
        stored = index.reconstruct_batch(pks)
    except RuntimeError:  # FAISS raises for an id the index does not hold
        return False
    return bool(np.allclose(stored, vectors, atol=1e-5))
