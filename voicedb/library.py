"""``VoiceDB``: the library API behind every CLI command.

Write protocol (what makes a crash harmless): slow model work happens first, outside any lock;
then, holding ``.lock``, files are written under temporary names, fsynced and renamed into place,
and only then is the SQLite transaction that refers to them committed. A crash before the commit
leaves unreferenced files (reported and removed by ``check --repair``), never a row pointing at a
missing file. The FAISS index is updated last and is rebuilt from SQLite whenever it is stale.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from . import config
from .audio import BestReference, LoadedClip, expand_audio_paths, load_clip
from .errors import (
    AmbiguousVoice,
    DuplicateClip,
    InvalidName,
    LibraryError,
    NameTaken,
    NoMatch,
    QualityError,
    VoiceNotFound,
)
from .faults import crash_point
from .files import atomic_copy, atomic_path, publish, sha256_file, temp_path_for
from .index import IndexFiles, new_index, search
from .records import AddResult, Match, Problem, SpeakResult, Voice
from .store import ClipRow, ConditionalsRow, MetaRow, Store, VoiceRow, utcnow

DB_FILE = "voicedb.sqlite"
LOCK_FILE = ".lock"
CLIPS_DIR = "clips"
CONDS_DIR = "conds"
ID_PATTERN = re.compile(r"^[0-9a-f]{8}$")
LOCK_TIMEOUT_S = 120

#: ``progress(done, total, label)`` is called as multi-step work advances.
ProgressHook = Callable[[int, int, str], None]


def normalised(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError("cannot normalise a zero or non-finite vector")
    return (vector / norm).astype(np.float32)


def mean_embedding(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """The speaker embedding of several clips: their mean, L2-normalised (float32, (256,))."""
    return normalised(np.mean(np.stack(vectors), axis=0))


def check_name(name: str) -> str:
    """Names must be typeable on a command line and never mistaken for an id."""
    name = name.strip()
    if not name:
        raise InvalidName("a voice name cannot be empty.")
    if len(name) > 100:
        raise InvalidName("a voice name can be at most 100 characters.")
    if any(not ch.isprintable() for ch in name):
        raise InvalidName(f"voice name {name!r} contains control characters.")
    if ID_PATTERN.match(name):
        raise InvalidName(f"voice name {name!r} looks like a voice id; choose another.")
    return name


class VoiceDB:
    """A voice library in one directory: ``voicedb.sqlite`` (truth), ``index.faiss`` (derived),
    ``clips/`` (kept reference audio) and ``conds/`` (saved Chatterbox conditionals).

    >>> db = VoiceDB("~/voices")                        # doctest: +SKIP
    >>> db.add(["alice.wav"], name="alice").voice.id    # doctest: +SKIP
    >>> db.match("unknown.wav", k=3)                    # doctest: +SKIP
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        checkpoint: str | os.PathLike[str] | None = None,
        device: str | None = None,
    ) -> None:
        self.home = config.library_home(home)
        self._checkpoint_dir = config.checkpoint_dir(checkpoint)
        self._device = device
        self._models: Any = None
        self._index: Any = None
        self._index_generation = -1
        self._open()

    # -- opening ------------------------------------------------------------------------------
    def _open(self) -> None:
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LibraryError(f"cannot create library directory {self.home}: {exc.strerror}.") from exc
        if not self.home.is_dir():
            raise LibraryError(f"{self.home} is not a directory.")
        from filelock import FileLock

        self.store = Store(self.home / DB_FILE)
        self.index_files = IndexFiles(self.home)
        # One reentrant lock object per library: nested writes in one process must not deadlock.
        self._lock = FileLock(str(self.home / LOCK_FILE), timeout=LOCK_TIMEOUT_S)
        if self.store.needs_upgrade():
            with self._writing():
                if self.store.needs_upgrade():
                    self.store.upgrade()
                if not self.index_files.index_path.exists():
                    with self.store.session() as session:
                        pks, vectors = self.store.all_vectors(session)
                        self.index_files.save(new_index(pks, vectors), self.store.generation(session))

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Serialise writers across processes with a lock file beside the database."""
        from filelock import Timeout

        if not os.access(self.home, os.W_OK):
            raise LibraryError(f"library directory {self.home} is not writable.")
        try:
            with self._lock:
                yield
        except Timeout:
            raise LibraryError(
                f"another voicedb process has held {self.home} for {LOCK_TIMEOUT_S} s; try again."
            ) from None

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> VoiceDB:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def models(self):
        """Chatterbox models, loaded lazily (listing voices never imports torch) and shared by every
        ``VoiceDB`` of this process that uses the same checkpoint and device."""
        if self._models is None:
            from .chatterbox import shared_models

            self._models = shared_models(self._checkpoint_dir, self._device or config.torch_device())
        return self._models

    # -- reading ------------------------------------------------------------------------------
    def _row(self, session: Session, ref: str) -> VoiceRow:
        """A voice by exact id, exact name, or unique id prefix (at least 4 characters)."""
        ref = ref.strip()
        options = (selectinload(VoiceRow.clips), selectinload(VoiceRow.conditionals))
        for column in (VoiceRow.id, VoiceRow.name):
            row = session.scalars(select(VoiceRow).where(column == ref).options(*options)).first()
            if row is not None:
                return row
        if len(ref) >= 4 and re.fullmatch(r"[0-9a-f]+", ref):
            rows = session.scalars(select(VoiceRow).where(VoiceRow.id.startswith(ref)).options(*options).limit(2)).all()
            if len(rows) == 1:
                return rows[0]
            if len(rows) > 1:
                raise AmbiguousVoice(f"{ref!r} is the start of several voice ids; type more of it.")
        raise VoiceNotFound(f"no voice with id or name {ref!r} (see `voicedb list`).")

    @staticmethod
    def _voice(row: VoiceRow) -> Voice:
        return Voice(
            id=row.id,
            name=row.name,
            tags=list(row.tags or []),
            clips=len(row.clips),
            seconds=round(sum(clip.duration_s for clip in row.clips), 2),
            models=sorted(c.flavour for c in row.conditionals),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def list(self) -> list[Voice]:
        """Every voice, oldest first."""
        with self.store.session() as session:
            rows = session.scalars(
                select(VoiceRow)
                .order_by(VoiceRow.pk)
                .options(selectinload(VoiceRow.clips), selectinload(VoiceRow.conditionals))
            ).all()
            return [self._voice(row) for row in rows]

    def get(self, ref: str) -> Voice:
        """One voice by id, name or unique id prefix."""
        with self.store.session() as session:
            return self._voice(self._row(session, ref))

    def details(self, ref: str) -> dict[str, Any]:
        """Everything stored about a voice: what ``voicedb show`` prints."""
        with self.store.session() as session:
            row = self._row(session, ref)
            return {
                **self._voice(row).to_dict(),
                "clip_files": [
                    {
                        "file": c.file,
                        "source": c.source_name,
                        "seconds": round(c.duration_s, 2),
                        "speech_seconds": round(c.speech_s, 2),
                        "sample_rate": c.sample_rate,
                        "sha256": c.sha256,
                    }
                    for c in row.clips
                ],
                "conditionals": [
                    {"model": c.flavour, "file": c.file, "sha256": c.sha256, "checkpoint": c.checkpoint}
                    for c in row.conditionals
                ],
                "encoder": row.encoder,
            }

    # -- index --------------------------------------------------------------------------------
    def _current_index(self, rebuild: bool = False) -> Any:
        """The FAISS index at the library's current generation: reused, reloaded or (``rebuild``) rebuilt."""
        with self.store.session() as session:
            generation = self.store.generation(session)
            if not rebuild and self._index is not None and self._index_generation == generation:
                return self._index
            index = None if rebuild else self.index_files.load(generation)
            if index is None:
                index = new_index(*self.store.all_vectors(session))
                self._save_index_if_possible(index, generation)
        self._index, self._index_generation = index, generation
        return index

    def _save_index_if_possible(self, index: Any, generation: int) -> None:
        """Persist a rebuilt index when the directory is writable; readers must not fail on a read-only library."""
        from filelock import Timeout

        if not os.access(self.home, os.W_OK):
            return
        try:
            with self._lock.acquire(timeout=0):
                with self.store.session() as session:
                    if self.store.generation(session) == generation:
                        self.index_files.save(index, generation)
        except Timeout:
            pass  # a writer is busy and will save its own index

    def _update_index(
        self, generation: int, add: Iterable[tuple[int, np.ndarray]] = (), remove: Iterable[int] = ()
    ) -> None:
        """Apply one committed change to the saved index (caller holds the write lock)."""
        if self._index is not None and self._index_generation == generation - 1:
            index = self._index  # already loaded, e.g. by the near-duplicate check of this add
        else:
            index = self.index_files.load(generation - 1)
        if index is None:  # stale or missing: rebuild from the truth
            with self.store.session() as session:
                index = new_index(*self.store.all_vectors(session))
        else:
            remove = np.fromiter(remove, dtype=np.int64)
            if len(remove):
                index.remove_ids(remove)
            for pk, vector in add:
                index.remove_ids(np.array([pk], dtype=np.int64))
                index.add_with_ids(vector.reshape(1, -1), np.array([pk], dtype=np.int64))
        self.index_files.save(index, generation)
        self._index, self._index_generation = index, generation

    # -- matching -----------------------------------------------------------------------------
    def embed_file(self, path: str | os.PathLike[str]) -> np.ndarray:
        """The speaker embedding of one clip (float32, (256,), L2-normalised)."""
        clip = load_clip(Path(path))
        return self.models.embed(clip.wav_16k)

    def match(
        self, path: str | os.PathLike[str], k: int = 5, threshold: float | None = config.DEFAULT_THRESHOLD
    ) -> list[Match]:
        """The ``k`` stored voices nearest to the speaker in ``path``, best first.

        With a ``threshold``, voices scoring below it are left out, and ``NoMatch`` is raised when none
        is left: the clip is an unknown speaker.
        """
        vector = self.embed_file(path)
        self._check_encoder(self.models.encoder_checksum)
        return self.match_vector(vector, k=k, threshold=threshold)

    def match_vector(self, vector: np.ndarray, k: int = 5, threshold: float | None = None) -> list[Match]:
        """Like ``match`` for an embedding already computed."""
        if k < 1:
            raise ValueError("k must be at least 1")
        vector = normalised(vector)
        matches = self._search(self._current_index(), vector, k)
        if matches is None:  # the saved index names voices SQLite does not have: rebuild it from the truth
            matches = self._search(self._current_index(rebuild=True), vector, k) or []
        if threshold is not None:
            kept = [m for m in matches if m.score >= threshold]
            if not kept:
                best = f" (best: {matches[0].name} at {matches[0].score:.3f})" if matches else " (the library is empty)"
                raise NoMatch(f"no voice scores above {threshold:.2f}: unknown speaker{best}.")
            matches = kept
        return matches

    def _search(self, index: Any, vector: np.ndarray, k: int) -> list[Match] | None:
        """The ``k`` nearest voices, or ``None`` when a hit is missing from SQLite (an inconsistent index)."""
        hits = search(index, vector, k)
        with self.store.session() as session:
            pks = [pk for pk, _ in hits]
            rows = {row.pk: row for row in session.scalars(select(VoiceRow).where(VoiceRow.pk.in_(pks)))}
        if any(pk not in rows for pk in pks):
            return None
        return [Match(rows[pk].id, rows[pk].name, score) for pk, score in hits]

    def _check_encoder(self, encoder: str) -> None:
        """Refuse to compare or mix embeddings from two different voice encoders (``encoder``: its SHA-256)."""
        with self.store.session() as session:
            stored = session.get(MetaRow, "encoder")
        if stored is not None and stored.value != encoder:
            raise LibraryError(
                "the library's embeddings come from another voice-encoder checkpoint; "
                "run `voicedb check --repair` to re-embed them with this one."
            )

    # -- adding -------------------------------------------------------------------------------
    def add(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        name: str | None = None,
        tags: Sequence[str] = (),
        voice: str | None = None,
        model: str = "english",
        conditionals: bool = True,
        strict: bool = False,
        progress: ProgressHook | None = None,
    ) -> AddResult:
        """Enroll clips as a new voice, or (``voice=``) add them to an existing one.

        The embedding is the mean of the per-clip voice-encoder embeddings, L2-normalised, as
        ``ChatterboxTTS.prepare_conditionals`` computes it. With ``conditionals`` the voice's
        Chatterbox conditionals for ``model`` are computed from the best clip and saved.
        ``strict`` turns quality warnings into a ``QualityError``.
        """
        from .chatterbox import flavour_named

        flavour = flavour_named(model)
        files = expand_audio_paths(Path(p) for p in paths)
        if voice is None:
            name = check_name(default_name(paths, files) if name is None else name)
            self._check_name_free(name)
        clips: list[LoadedClip] = []
        embeddings: list[np.ndarray] = []
        reference = BestReference()
        for done, file in enumerate(files):
            if progress:
                progress(done, len(files), file.name)
            clip = load_clip(file, flavour.min_seconds)
            if holder := self._voice_holding_clip(clip.sha256):
                raise DuplicateClip(f"{file}: this exact recording is already enrolled in voice {holder}.")
            if any(c.sha256 == clip.sha256 for c in clips):
                continue  # the same file given twice
            embeddings.append(self.models.embed(clip.wav_16k))
            clips.append(clip)
            reference.offer(clip)
        if progress:
            progress(len(files), len(files), "saving")
        encoder = self.models.encoder_checksum
        warnings = [w for clip in clips for w in clip.warnings]
        if voice is None:
            result = self._create_voice(
                name,
                list(tags),
                clips,
                embeddings,
                encoder,
                flavour,
                reference.clip if conditionals else None,
                warnings,
                strict,
            )
        else:
            result = self._extend_voice(voice, list(tags), clips, embeddings, encoder, warnings, strict)
        return result

    def _voice_holding_clip(self, sha256: str) -> str | None:
        """The id of the voice that already has this exact recording (one indexed lookup), if any."""
        with self.store.session() as session:
            return session.scalar(select(VoiceRow.id).join(ClipRow).where(ClipRow.sha256 == sha256))

    def _check_name_free(self, name: str, session: Session | None = None) -> None:
        if session is None:
            with self.store.session() as session:
                return self._check_name_free(name, session)
        if session.scalar(select(func.count()).select_from(VoiceRow).where(VoiceRow.name == name)):
            raise NameTaken(
                f"a voice named {name!r} already exists; choose another name or use --voice to add clips to it."
            )
        return None

    def _similarity_warnings(
        self,
        clips: Sequence[LoadedClip],
        embeddings: Sequence[np.ndarray],
        mean: np.ndarray,
        stored: Sequence[np.ndarray] = (),
        exclude_id: str | None = None,
    ) -> list[str]:
        """New clips that sound like another speaker than the voice's other clips (``stored`` ones and the
        other new ones), and stored voices the resulting voice nearly duplicates."""
        found = []
        if len(stored) + len(embeddings) > 1:
            for n, (clip, embedding) in enumerate(zip(clips, embeddings, strict=True)):
                others = mean_embedding([*stored, *(e for m, e in enumerate(embeddings) if m != n)])
                score = float(embedding @ others)
                if score < config.DEFAULT_THRESHOLD:
                    found.append(
                        f"{clip.path.name}: scores only {score:.2f} against the other clips (another speaker?)"
                    )
        for hit in self.match_vector(mean, k=2):
            if hit.id != exclude_id and hit.score >= config.DEFAULT_THRESHOLD:
                found.append(f"nearly duplicates voice {hit.id} ({hit.name}) with score {hit.score:.2f}")
        return found

    def _create_voice(
        self,
        name: str,
        tags: list[str],
        clips: list[LoadedClip],
        embeddings: list[np.ndarray],
        encoder: str,
        flavour,
        reference: LoadedClip | None,
        warnings: list[str],
        strict: bool,
    ) -> AddResult:
        """Commit a new voice; with a ``reference`` clip its conditionals are computed from it and saved."""
        mean = mean_embedding(embeddings)
        self._check_encoder(encoder)
        warnings = warnings + self._similarity_warnings(clips, embeddings, mean)
        if strict and warnings:
            raise QualityError("refused (--strict): " + "; ".join(warnings) + ".")
        conds = None
        if reference is not None:
            conds = self.models.conditionals(flavour, reference.wav_24k, mean), self.models.fingerprint(flavour)

        def attach(row: VoiceRow) -> None:
            written = self._write_clip_files(clips)
            crash_point("add:clips-written")
            row.clips = [self._clip_row(clip, vector, written[clip.sha256]) for clip, vector in zip(clips, embeddings)]
            if conds is not None:
                value, fingerprint = conds
                row.conditionals = [
                    self._write_conditionals(row.id, flavour.name, value, fingerprint, reference.sha256)
                ]
                crash_point("add:conds-written")

        voice_id = self._insert_voice(name, tags, mean, encoder, attach, "add")
        return AddResult(self.get(voice_id), True, [c.path.name for c in clips], warnings)

    def _extend_voice(
        self,
        ref: str,
        tags: list[str],
        clips: list[LoadedClip],
        embeddings: list[np.ndarray],
        encoder: str,
        warnings: list[str],
        strict: bool,
    ) -> AddResult:
        with self.store.session() as session:
            row = self._row(session, ref)
            pk, voice_id = row.pk, row.id
            old = [clip.vector for clip in row.clips]
            flavours = [c.flavour for c in row.conditionals]
        mean = mean_embedding(old + embeddings)
        self._check_encoder(encoder)
        warnings = warnings + self._similarity_warnings(clips, embeddings, mean, stored=old, exclude_id=voice_id)
        if strict and warnings:
            raise QualityError("refused (--strict): " + "; ".join(warnings) + ".")
        with self._writing():
            written = self._write_clip_files(clips)
            with self.store.session() as session:
                row = self._row(session, voice_id)
                row.clips.extend(
                    self._clip_row(clip, embedding, written[clip.sha256]) for clip, embedding in zip(clips, embeddings)
                )
                row.embedding = mean.tobytes()
                row.tags = sorted(set(row.tags or []) | set(tags))
                row.updated_at = utcnow()
                generation = self.store.bump_generation(session)
            self._update_index(generation, add=[(pk, mean)])
            for flavour in flavours:  # the mean moved and the best clip may have changed
                self._derive_conditionals(voice_id, flavour)
        return AddResult(self.get(voice_id), False, [c.path.name for c in clips], warnings)

    @staticmethod
    def _new_id(session: Session) -> str:
        while True:
            candidate = secrets.token_hex(4)
            if not ID_PATTERN.match(candidate) or session.scalar(select(VoiceRow.pk).where(VoiceRow.id == candidate)):
                continue
            return candidate

    def _write_clip_files(self, clips: Sequence[LoadedClip]) -> dict[str, str]:
        """Copy clips into ``clips/`` under their content hash; returns sha256 -> relative path."""
        written = {}
        for clip in clips:
            relative = f"{CLIPS_DIR}/{clip.sha256}{clip.path.suffix.lower()}"
            target = self.home / relative
            if not target.exists():
                atomic_copy(clip.path, target)
            written[clip.sha256] = relative
        return written

    @staticmethod
    def _clip_row(clip: LoadedClip, embedding: np.ndarray, relative: str) -> ClipRow:
        return ClipRow(
            sha256=clip.sha256,
            file=relative,
            source_name=clip.path.name,
            duration_s=clip.duration_s,
            speech_s=clip.speech_s,
            sample_rate=clip.sample_rate,
            embedding=embedding.tobytes(),
            added_at=utcnow(),
        )

    def _write_conditionals(
        self, voice_id: str, flavour: str, conds: Any, fingerprint: str, clip_sha256: str | None
    ) -> ConditionalsRow:
        """Save conditionals with upstream ``Conditionals.save``, atomically; returns the row to commit.

        The file name carries the content hash, so re-deriving never overwrites the file the committed
        row points at: a crash before the new row commits leaves the old conditionals intact.
        """
        temp = temp_path_for(self.home / CONDS_DIR / f"{voice_id}.{flavour}.pt")
        try:
            conds.save(temp)
            checksum = sha256_file(temp)
            relative = f"{CONDS_DIR}/{voice_id}.{flavour}.{checksum[:12]}.pt"
            publish(temp, self.home / relative)
        finally:
            temp.unlink(missing_ok=True)
        return ConditionalsRow(
            flavour=flavour,
            file=relative,
            sha256=checksum,
            checkpoint=fingerprint,
            clip_sha256=clip_sha256,
            created_at=utcnow(),
        )

    # -- conditionals -------------------------------------------------------------------------
    def _derive_conditionals(self, ref: str, model: str) -> None:
        """(Re)compute a voice's conditionals for ``model`` from its kept reference audio and store them."""
        from .chatterbox import flavour_named
        from .errors import AudioError

        flavour = flavour_named(model)
        with self.store.session() as session:
            row = self._row(session, ref)
            voice_id, mean = row.id, row.vector.copy()
            available = [self.home / c.file for c in row.clips if (self.home / c.file).exists()]
        if not available:
            raise LibraryError(f"voice {voice_id} has no kept reference audio to derive {model} conditionals from.")
        best = BestReference()
        for path in available:
            try:
                best.offer(load_clip(path, flavour.min_seconds))
            except AudioError:
                continue
        reference = best.clip
        if reference is None:
            raise LibraryError(f"the kept reference audio of voice {voice_id} is unreadable; re-add the voice's clips.")
        value = self.models.conditionals(flavour, reference.wav_24k, mean)
        fingerprint = self.models.fingerprint(flavour)
        with self._writing():
            with self.store.session() as session:
                row = self._row(session, voice_id)
                new = self._write_conditionals(voice_id, flavour.name, value, fingerprint, reference.sha256)
                existing = next((c for c in row.conditionals if c.flavour == flavour.name), None)
                replaced = existing.file if existing is not None and existing.file != new.file else None
                if existing is None:
                    row.conditionals.append(new)
                else:
                    existing.file, existing.sha256, existing.checkpoint = new.file, new.sha256, new.checkpoint
                    existing.clip_sha256, existing.created_at = new.clip_sha256, new.created_at
            if replaced:  # after the commit, like every deletion
                (self.home / replaced).unlink(missing_ok=True)

    def load_conditionals(self, ref: str, model: str = "english"):
        """A voice's saved Chatterbox ``Conditionals`` for ``model``, derived first if missing or outdated."""
        from .chatterbox import conditionals_class, flavour_named

        flavour = flavour_named(model)
        with self.store.session() as session:
            row = self._row(session, ref)
            voice_id = row.id
            saved = next((c for c in row.conditionals if c.flavour == flavour.name), None)
        # Derived conditionals made with another checkpoint are outdated; imported ones (no clip) are kept.
        derived = saved is not None and saved.clip_sha256 is not None
        if saved is None or derived and saved.checkpoint != self.models.fingerprint(flavour):
            self._derive_conditionals(voice_id, flavour.name)
            return self.load_conditionals(voice_id, model)
        path = self.home / saved.file
        if not path.exists() or sha256_file(path) != saved.sha256:
            raise LibraryError(
                f"the {model} conditionals of voice {voice_id} are missing or corrupt; run `voicedb check --repair`."
            )
        return conditionals_class().load(path, map_location="cpu")

    # -- changing -----------------------------------------------------------------------------
    def rename(self, ref: str, new_name: str) -> Voice:
        """Give a voice a new unique name; its id never changes."""
        new_name = check_name(new_name)
        with self._writing(), self.store.session() as session:
            row = self._row(session, ref)
            if row.name != new_name:
                self._check_name_free(new_name, session)
                row.name, row.updated_at = new_name, utcnow()
                session.flush()
                crash_point("rename:before-commit")
            voice_id = row.id
        return self.get(voice_id)

    def remove(self, ref: str) -> Voice:
        """Delete a voice: its row, index entry, kept clips and conditionals files."""
        with self._writing():
            with self.store.session() as session:
                row = self._row(session, ref)
                removed, pk = self._voice(row), row.pk
                files = [self.home / c.file for c in row.clips] + [self.home / c.file for c in row.conditionals]
                session.delete(row)
                generation = self.store.bump_generation(session)
            crash_point("rm:committed")
            for path in files:  # after the commit: a crash here leaves orphans, never dangling rows
                path.unlink(missing_ok=True)
                crash_point("rm:file-deleted")
            self._update_index(generation, remove=[pk])
        return removed

    # -- speaking -----------------------------------------------------------------------------
    def speak(
        self,
        ref: str,
        text: str,
        output: str | os.PathLike[str] | None = None,
        *,
        model: str = "english",
        settings: Any = None,
        seed: int | None = None,
        progress: ProgressHook | None = None,
    ) -> SpeakResult:
        """Synthesise ``text`` with a voice's saved conditionals and write a 24 kHz WAV.

        Long text is split at sentence boundaries into chunks Chatterbox handles, each spoken with the
        same conditionals and joined with short pauses.
        """
        from .chatterbox import S3GEN_SR, SynthesisSettings, flavour_named
        from .speech import join_with_pauses, split_text, write_wav

        flavour = flavour_named(model)
        settings = settings or SynthesisSettings()
        check_language(flavour.name, settings.language)
        chunks = split_text(text)
        voice = self.get(ref)
        conds = self.load_conditionals(voice.id, flavour.name)
        if seed is not None:
            seed_everything(seed)
        pieces = []
        for done, chunk in enumerate(chunks):
            if progress:
                progress(done, len(chunks), chunk[:40])
            pieces.append(self.models.synthesize(flavour, conds, chunk, settings))
        if progress:
            progress(len(chunks), len(chunks), "writing")
        audio = join_with_pauses(pieces, S3GEN_SR)
        target = Path(output) if output else default_output_name(voice.name)
        write_wav(target, audio, S3GEN_SR)
        return SpeakResult(voice, target, len(audio) / S3GEN_SR, S3GEN_SR, len(chunks))

    # -- exchange -----------------------------------------------------------------------------
    def export(self, ref: str, output: str | os.PathLike[str], *, model: str = "english", bundle: bool = False) -> Path:
        """Write a voice out: its conditionals ``.pt`` (loadable by upstream ``Conditionals.load`` and
        usable as ``model.conds``), or with ``bundle`` a ``.voicedb`` archive of everything stored."""
        output = Path(output)
        if not bundle:
            conds = self.load_conditionals(ref, model)
            with atomic_path(output.resolve()) as temp:
                conds.save(temp)
            return output
        from .bundle import npy_bytes, write_bundle

        with self.store.session() as session:
            row = self._row(session, ref)
            members = {"embedding.npy": npy_bytes(row.vector)}
            clips = []
            for clip in row.clips:
                name = f"clips/{clip.sha256}{Path(clip.file).suffix}"
                members[name] = self._read_kept(clip.file)
                clips.append(
                    {
                        "file": name,
                        "source_name": clip.source_name,
                        "duration_s": clip.duration_s,
                        "speech_s": clip.speech_s,
                        "sample_rate": clip.sample_rate,
                        "embedding": clip.vector.tolist(),
                    }
                )
            for conds in row.conditionals:
                members[f"conds/{conds.flavour}.pt"] = self._read_kept(conds.file, conds.sha256)
            voice = {
                "id": row.id,
                "name": row.name,
                "tags": list(row.tags or []),
                "encoder": row.encoder,
                "clips": clips,
            }
        write_bundle(output, voice, members)
        return output

    def _read_kept(self, relative: str, sha256: str | None = None) -> bytes:
        path = self.home / relative
        try:
            data = path.read_bytes()
        except OSError:
            raise LibraryError(f"{relative} is missing from the library; run `voicedb check`.") from None
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise LibraryError(f"{relative} is corrupt; run `voicedb check --repair`.")
        return data

    def import_file(self, path: str | os.PathLike[str], *, name: str | None = None, model: str = "english") -> Voice:
        """Add a voice from a conditionals ``.pt`` or a ``.voicedb`` bundle (untrusted input).

        A ``.pt``'s ``t3.speaker_emb`` becomes the index vector. Everything is validated before the
        library is touched; on any problem it is left unchanged.
        """
        from .bundle import is_bundle
        from .chatterbox import flavour_named, read_conditionals
        from .errors import AudioError

        path = Path(path)
        if not path.is_file():
            raise AudioError(f"{path}: no such file.")
        if is_bundle(path):
            return self._import_bundle(path, name)
        flavour = flavour_named(model)
        conds = read_conditionals(path.read_bytes(), str(path))
        name = check_name(name or path.stem)
        self._check_name_free(name)
        mean = normalised(conds.t3.speaker_emb.reshape(-1).numpy())
        return self._insert_imported(name, [], mean, {flavour.name: conds}, [], None)

    def _import_bundle(self, path: Path, name: str | None) -> Voice:
        from .bundle import read_bundle
        from .chatterbox import FLAVOURS, read_conditionals
        from .errors import ImportRejected

        bundle = read_bundle(path)
        voice = bundle.manifest["voice"]
        name = check_name(name or voice["name"])
        self._check_name_free(name)
        conds = {}
        for member, data in bundle.members.items():
            if member.startswith("conds/"):
                flavour = member[len("conds/") : -len(".pt")]
                if flavour not in FLAVOURS:
                    raise ImportRejected(f"{path}: unknown model {flavour!r}.")
                conds[flavour] = read_conditionals(data, f"{path}:{member}")
        clips = voice.get("clips", [])
        try:
            for clip in clips:
                if clip["file"] not in bundle.members:
                    raise ImportRejected(f"{path}: clip {clip['file']} is listed but missing.")
                sha = Path(clip["file"]).stem
                if holder := self._voice_holding_clip(sha):
                    raise DuplicateClip(f"{path}: clip {sha[:12]} is already enrolled in voice {holder}.")
                vector = np.asarray(clip["embedding"], dtype=np.float32)
                if vector.shape != (256,) or not np.isfinite(vector).all():
                    raise ImportRejected(f"{path}: clip {clip['file']} has a bad embedding.")
                float(clip["duration_s"]), float(clip["speech_s"]), int(clip["sample_rate"]), str(clip["source_name"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ImportRejected(f"{path}: malformed clip metadata ({exc}).") from exc
        tags = [str(tag) for tag in voice.get("tags", []) if isinstance(tag, str)]
        return self._insert_imported(name, tags, normalised(bundle.embedding), conds, clips, bundle.members)

    def _insert_imported(
        self,
        name: str,
        tags: list[str],
        mean: np.ndarray,
        conds: dict[str, Any],
        clips: list[dict[str, Any]],
        members: dict[str, bytes] | None,
    ) -> Voice:
        from .files import atomic_write_bytes

        with self.store.session() as session:
            stored = session.get(MetaRow, "encoder")
        encoder = stored.value if stored else self.models.encoder_checksum

        def attach(row: VoiceRow) -> None:
            for clip in clips:
                relative = f"{CLIPS_DIR}/{Path(clip['file']).name}"
                atomic_write_bytes(self.home / relative, members[clip["file"]])
                crash_point("import:clip-written")
                row.clips.append(
                    ClipRow(
                        sha256=Path(clip["file"]).stem,
                        file=relative,
                        source_name=str(clip["source_name"]),
                        duration_s=float(clip["duration_s"]),
                        speech_s=float(clip["speech_s"]),
                        sample_rate=int(clip["sample_rate"]),
                        embedding=np.asarray(clip["embedding"], dtype=np.float32).tobytes(),
                        added_at=utcnow(),
                    )
                )
            row.conditionals = [
                self._write_conditionals(row.id, flavour, value, "imported", None) for flavour, value in conds.items()
            ]
            crash_point("import:conds-written")

        return self.get(self._insert_voice(name, tags, mean, encoder, attach, "import"))

    def _insert_voice(
        self, name: str, tags: list[str], mean: np.ndarray, encoder: str, attach: Callable[[VoiceRow], None], phase: str
    ) -> str:
        """Commit a new voice and index it; returns its id.

        Under the write lock, ``attach`` writes the voice's files and adds its clip and conditionals
        rows before the single commit that makes the voice exist.
        """
        with self._writing():
            with self.store.session() as session:
                self._check_name_free(name, session)
                now = utcnow()
                row = VoiceRow(
                    id=self._new_id(session),
                    name=name,
                    tags=tags,
                    embedding=mean.tobytes(),
                    encoder=encoder,
                    created_at=now,
                    updated_at=now,
                )
                attach(row)
                session.add(row)
                session.merge(MetaRow(key="encoder", value=encoder))
                generation = self.store.bump_generation(session)
                session.flush()
                pk, voice_id = row.pk, row.id
                crash_point(f"{phase}:before-commit")
            crash_point(f"{phase}:committed")
            self._update_index(generation, add=[(pk, mean)])
        return voice_id

    def export_all(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Back up every voice as a bundle in ``directory``, plus a ``backup.json`` of their checksums."""
        import json

        from .files import atomic_write_bytes

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = [self.export(voice.id, directory / f"{voice.id}.voicedb", bundle=True) for voice in self.list()]
        index = {
            "format": "voicedb-backup",
            "version": 1,
            "bundles": {path.name: sha256_file(path) for path in written},
        }
        atomic_write_bytes(directory / "backup.json", json.dumps(index, indent=2).encode())
        return written

    def import_all(self, directory: str | os.PathLike[str]) -> list[Voice]:
        """Restore a backup made by ``export_all``: every checksum and name is verified before any import,
        and if one import still fails, the voices already restored are removed again."""
        import json

        from .errors import ImportRejected

        directory = Path(directory)
        try:
            index = json.loads((directory / "backup.json").read_text())
            bundles = index["bundles"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ImportRejected(f"{directory}: no readable backup.json ({exc}).") from exc
        from .bundle import read_bundle

        names = []
        for file_name, checksum in bundles.items():
            path = directory / Path(file_name).name
            if not path.is_file() or sha256_file(path) != checksum:
                raise ImportRejected(f"{path}: missing or does not match backup.json.")
            names.append(read_bundle(path).manifest["voice"]["name"])
        for name in names:
            self._check_name_free(check_name(name))
        imported: list[Voice] = []
        try:
            for file_name in bundles:
                imported.append(self.import_file(directory / Path(file_name).name))
        except BaseException:
            for voice in imported:  # all or nothing: take back what this restore added
                self.remove(voice.id)
            raise
        return imported

    # -- checking -----------------------------------------------------------------------------
    def check(self, repair: bool = False) -> list[Problem]:
        """Every inconsistency between SQLite, the index and the files; ``repair`` fixes what it can.

        Nothing here ever deletes a voice: voices whose data cannot be recovered are reported.
        """
        from .checker import Checker

        with self._writing():
            return Checker(self).run(repair)


def check_language(flavour: str, language: str | None) -> None:
    """The multilingual model needs one of its languages; the others speak English only."""
    from .errors import VoiceDBError

    if flavour != "multilingual":
        if language and language.lower() != "en":
            raise VoiceDBError(f"the {flavour} model speaks English only; use --model multilingual for {language!r}.")
        return
    from chatterbox.mtl_tts import SUPPORTED_LANGUAGES

    if not language or language.lower() not in SUPPORTED_LANGUAGES:
        raise VoiceDBError(
            f"the multilingual model needs --language, one of: {', '.join(sorted(SUPPORTED_LANGUAGES))}."
        )


def seed_everything(seed: int) -> None:
    """Same seed, same audio: torch's generators (CPU and CUDA), NumPy's and Python's."""
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_name(paths: Sequence[str | os.PathLike[str]], files: Sequence[Path]) -> str:
    """A directory's name when one directory was given, else the first file's stem."""
    if len(paths) == 1 and Path(paths[0]).is_dir():
        return Path(paths[0]).resolve().name
    return files[0].stem


def file_stem(voice_name: str) -> str:
    """A voice name made safe as a file name: no separators, no leading dot."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", voice_name).strip("-.") or "voice"


def default_output_name(voice_name: str) -> Path:
    """``<voice>-<UTC time>.wav`` in the working directory, never overwriting a file."""
    slug = file_stem(voice_name)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    candidate, n = Path(f"{slug}-{stamp}.wav"), 1
    while candidate.exists():
        n += 1
        candidate = Path(f"{slug}-{stamp}-{n}.wav")
    return candidate
