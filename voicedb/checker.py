"""``voicedb check``: find every inconsistency between SQLite, the files and the index; repair what can be.

SQLite is the truth. Files it does not mention are orphans (left by a crash before a commit) and
may go; rows whose files are missing or corrupt are re-derived from the kept reference audio when
possible and otherwise reported -- a voice is never deleted here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from .audio import load_clip
from .errors import VoiceDBError
from .files import leftover_temp_files, sha256_file
from .library import mean_embedding
from .records import Problem
from .store import MetaRow, VoiceRow

if TYPE_CHECKING:
    from .library import VoiceDB

LIBRARY_DIRS = ("clips", "conds")


class Checker:
    """One check run over a library whose write lock the caller holds."""

    def __init__(self, db: VoiceDB) -> None:
        self.db = db
        self.home = db.home
        self.problems: list[Problem] = []

    def run(self, repair: bool) -> list[Problem]:
        self.repair = repair
        self._orphans()
        self._clip_files()
        self._conditionals()
        self._embeddings()
        self._index()
        return self.problems

    def _report(self, kind: str, message: str, repaired: bool = False) -> None:
        self.problems.append(Problem(kind, message, repaired))

    def _voices(self) -> list[VoiceRow]:
        with self.db.store.session() as session:
            return list(
                session.scalars(
                    select(VoiceRow)
                    .order_by(VoiceRow.pk)
                    .options(selectinload(VoiceRow.clips), selectinload(VoiceRow.conditionals))
                )
            )

    def _orphans(self) -> None:
        referenced = {Path(c.file) for v in self._voices() for c in [*v.clips, *v.conditionals]}
        temps = leftover_temp_files(self.home)
        for temp in temps:
            if self.repair:
                temp.unlink(missing_ok=True)
            self._report("temp-file", f"unfinished write left behind: {temp.relative_to(self.home)}", self.repair)
        for folder in LIBRARY_DIRS:
            directory = self.home / folder
            if not directory.is_dir():
                continue
            for path in sorted(directory.iterdir()):
                relative = path.relative_to(self.home)
                if relative in referenced or path in temps or not path.exists():
                    continue
                if self.repair:
                    path.unlink()
                self._report(
                    "orphan-file", f"{relative} belongs to no voice (left by an interrupted write)", self.repair
                )

    def _clip_files(self) -> None:
        for voice in self._voices():
            for clip in voice.clips:
                path = self.home / clip.file
                if not path.exists():
                    self._report("missing-clip", f"voice {voice.id} ({voice.name}): kept clip {clip.file} is missing")
                elif sha256_file(path) != clip.sha256:
                    self._report(
                        "corrupt-clip",
                        f"voice {voice.id} ({voice.name}): kept clip {clip.file} does not match its checksum",
                    )

    def _conditionals(self) -> None:
        for voice in self._voices():
            for conds in voice.conditionals:
                path = self.home / conds.file
                if path.exists() and sha256_file(path) == conds.sha256:
                    continue
                what = "missing" if not path.exists() else "corrupt"
                message = f"voice {voice.id} ({voice.name}): {conds.flavour} conditionals {conds.file} are {what}"
                repaired = self._try(self.db._derive_conditionals, voice.id, conds.flavour)
                self._report("conditionals", message, repaired)

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

    def _embeddings(self) -> None:
        voices = self._voices()
        with self.db.store.session() as session:
            library_encoder = session.get(MetaRow, "encoder")
        current = library_encoder.value if library_encoder else None
        if self.repair and voices:
            try:
                current = self.db.models.encoder_checksum
            except VoiceDBError as exc:
                self._report("unrepaired", f"cannot load the voice encoder to verify embeddings: {exc}")
        for voice in voices:
            if current is not None and voice.encoder != current:
                message = f"voice {voice.id} ({voice.name}) was embedded with another voice-encoder checkpoint"
                self._report("encoder", message, self._try(self._reembed, voice.id))
            elif voice.clips and not np.allclose(
                mean_embedding([c.vector for c in voice.clips]), voice.vector, atol=1e-4
            ):
                message = f"voice {voice.id} ({voice.name}): embedding is not the mean of its clips"
                self._report("embedding", message, self._try(self._set_vector, voice.id, None))
        if self.repair and current is not None and not any(p.kind == "unrepaired" for p in self.problems):
            with self.db.store.session() as session:
                session.merge(MetaRow(key="encoder", value=current))

    def _reembed(self, voice_id: str) -> None:
        """Embed a voice's kept clips again with the current encoder."""
        from .errors import LibraryError

        with self.db.store.session() as session:
            voice = self.db._row(session, voice_id)
            clips = [(c.pk, self.home / c.file) for c in voice.clips]
        if not clips:
            raise LibraryError(f"voice {voice_id} has no kept clips to re-embed (it was imported); re-import it.")
        vectors = {pk: self.db.models.embed(load_clip(path).wav_16k) for pk, path in clips}
        self._set_vector(voice_id, vectors)

    def _set_vector(self, voice_id: str, clip_vectors: dict[int, np.ndarray] | None) -> None:
        with self.db.store.session() as session:
            voice = self.db._row(session, voice_id)
            for clip in voice.clips if clip_vectors is not None else ():
                clip.embedding = clip_vectors[clip.pk].tobytes()
            voice.embedding = mean_embedding([c.vector for c in voice.clips]).tobytes()
            if clip_vectors is not None:
                voice.encoder = self.db.models.encoder_checksum
            self.db.store.bump_generation(session)

    def _index(self) -> None:
        from .index import new_index

        with self.db.store.session() as session:
            generation = self.db.store.generation(session)
            index = self.db.index_files.load(generation)
            pks, vectors = self.db.store.all_vectors(session)
        if index is not None:
            if index_matches(index, pks, vectors):
                return
            reason = "holds other voices or vectors than SQLite"
        elif not self.db.index_files.index_path.exists():
            reason = "is missing"
        else:
            reason = "is stale or unreadable"
        if self.repair:
            self.db.index_files.save(new_index(pks, vectors), generation)
        self._report("index", f"the FAISS index {reason}", self.repair)


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
