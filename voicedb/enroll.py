"""Enrolling voices: decode and embed clips (slow, before any lock), judge them, then one change.

A new voice's embedding is the mean of its clips' embeddings (``matchers.mean_embedding``); adding
clips to a voice moves its embedding, so the same change re-derives the conditionals of the model
asked for (unless ``conditionals=False``) and drops the voice's other conditionals, which are
derived again on their first use.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from . import config
from .audio import AudioInput, AudioSource, BestReference, LoadedClip, audio_source, expand_audio_paths, load_clip
from .calibration import Thresholds
from .catalog import Catalog, KeptClip, check_language, check_name, clip_vector_rows, voice_record
from .conditionals import ConditionalsStore, best_reference, kept_clip_files
from .context import LibraryContext
from .errors import AudioError, LibraryError, QualityError
from .faults import crash_point
from .flavours import flavour_named
from .matchers import MATCHER_KEY, ClipVectors, check_matcher, encoders_of, fuse_clips, mean_embedding, voice_parts
from .matching import Matcher
from .records import AddResult, Voice
from .store import ClipRow, MetaRow, utcnow

#: ``progress(done, total, label)`` is called as multi-step work advances.
ProgressHook = Callable[[int, int, str], None]


def audio_sources(audio: Sequence[AudioInput]) -> list[AudioSource]:
    """Paths (directories expanded to the audio files inside), bytes and arrays, as sources; a file
    given twice counts once."""
    sources: dict[object, AudioSource] = {}
    for n, item in enumerate(audio):
        if isinstance(item, (str, os.PathLike)):
            for path in expand_audio_paths([Path(item)]):
                sources.setdefault(path.resolve(), audio_source(path))
        else:
            source = audio_source(item, name=f"audio-{n + 1}")
            sources[id(source)] = source
    if not sources:
        raise AudioError("no audio given.")
    return list(sources.values())


def default_name(audio: Sequence[AudioInput], sources: Sequence[AudioSource]) -> str:
    """A directory's name when one directory was given, else the first file's stem."""
    if len(audio) == 1 and isinstance(audio[0], (str, os.PathLike)) and Path(audio[0]).is_dir():
        return Path(audio[0]).resolve().name
    first = sources[0]
    if first.path is None:
        raise AudioError("give a name for a voice enrolled from bytes or arrays.")
    return first.path.stem


class Enrollment:
    def __init__(
        self,
        ctx: LibraryContext,
        catalog: Catalog,
        conditionals: ConditionalsStore,
        matcher: Matcher,
        thresholds: Thresholds,
    ) -> None:
        self.ctx = ctx
        self.catalog = catalog
        self.conditionals = conditionals
        self.matcher = matcher
        self.thresholds = thresholds

    def add(
        self,
        audio: Sequence[AudioInput],
        *,
        name: str | None = None,
        tags: Sequence[str] = (),
        voice: str | None = None,
        model: str = "english",
        language: str | None = None,
        conditionals: bool = True,
        strict: bool = False,
        dry_run: bool = False,
        progress: ProgressHook | None = None,
    ) -> AddResult:
        """Enroll clips as a new voice, or (``voice=``) add them to an existing one; see ``VoiceDB.add``."""
        flavour = flavour_named(model)
        language = check_language(language)
        sources = audio_sources(audio)
        if voice is None:
            name = check_name(default_name(audio, sources) if name is None else name)
            self.catalog.check_name_free(name)
            existing: list[np.ndarray] = []
            stored: list[ClipVectors] = []
            voice_id = None
        else:
            with self.ctx.store.session() as session:
                row = self.catalog.row(session, voice)
                voice_id, existing = row.id, [c.vector.copy() for c in row.clips]
                stored = [
                    {v.encoder: (v.checksum, np.frombuffer(v.vector, np.float32).copy()) for v in c.match_vectors}
                    for c in row.clips
                ]
                kept = kept_clip_files(self.ctx, row.clips)
        encoder = self.ctx.engine.encoder_checksum
        self.ctx.check_encoder(encoder)  # before any embedding work
        matcher = self.matcher.name()
        self.matcher.check_checksums(matcher)
        clips, embeddings, match, reference = self._embed_all(sources, flavour.min_seconds, matcher, progress)
        mean = mean_embedding(existing + embeddings)
        warnings = [w for clip in clips for w in clip.warnings]
        warnings += self.similarity_warnings(clips, match, stored, matcher)
        if voice is None:
            warnings += self.duplicate_warnings(voice_parts(match, matcher), voice_id)
        if strict and warnings:
            raise QualityError("refused (--strict): " + "; ".join(warnings) + ".")
        if notice := self.matcher.fallback_notice():
            warnings.append(notice)
        if dry_run:
            return AddResult(
                self._preview(voice, name, tags, language, clips), voice is None, [c.name for c in clips], warnings
            )
        prepared = None
        if conditionals:
            if progress:
                progress(len(sources), len(sources), f"{flavour.name} conditionals")
            best = best_reference(kept if voice is not None else (), flavour, reference)  # new and kept clips
            prepared = self.conditionals.compute(flavour, best, mean)
        with self.catalog.write("add") as change:
            self.catalog.refuse_duplicate_clips({c.sha256: c.name for c in clips}, change.session)
            if self.matcher.settle(change.session) != matcher:
                raise LibraryError("the library's matcher changed while the clips were analysed; try again.")
            if voice_id is None:
                self.catalog.check_name_free(name, change.session)
                row = change.new_voice(name, tags, mean, encoder, language)
            else:
                row = self.catalog.row(change.session, voice_id)
                if len(row.clips) != len(existing):
                    raise LibraryError(f"voice {voice_id} changed while its clips were analysed; try again.")
                row.tags = sorted(set(row.tags or []) | set(tags))
                if language is not None:
                    row.language = language
                row.updated_at = utcnow()
                row.embedding = mean.tobytes()
                change.reindex(row)
            for clip, vector, vectors in zip(clips, embeddings, match, strict=True):
                change.keep_clip(row, KeptClip.of(clip, vector, vectors), clip.source.write_copy)
            crash_point("add:clips-written")
            self.conditionals.forget(change, row, keep=prepared.flavour if prepared else None)
            if prepared is not None:
                self.conditionals.save(change, row, prepared)
                crash_point("add:conds-written")
            change.session.flush()
            result = AddResult(voice_record(row), voice_id is None, [c.name for c in clips], warnings)
        return result

    def _preview(
        self, voice: str | None, name: str | None, tags: Sequence[str], language: str | None, clips: list[LoadedClip]
    ) -> Voice:
        """The voice as ``add`` would leave it, for a dry run: a new one has no id yet."""
        seconds = sum(clip.duration_s for clip in clips)
        if voice is None:
            now = utcnow()
            return Voice("", name or "", sorted(set(tags)), len(clips), round(seconds, 2), [], language, now, now)
        current = self.catalog.get(voice)
        return replace(
            current,
            tags=sorted({*current.tags, *tags}),
            clips=current.clips + len(clips),
            seconds=round(current.seconds + seconds, 2),
            language=language or current.language,
        )

    def _embed_all(
        self, sources: Sequence[AudioSource], min_seconds: float, matcher: str, progress: ProgressHook | None
    ) -> tuple[list[LoadedClip], list[np.ndarray], list[ClipVectors], BestReference]:
        """Decode, check and embed every clip (for the conditionals and for ``matcher``), keeping one clip's
        samples at a time: the best reference's, returned with the clips."""
        clips: list[LoadedClip] = []
        embeddings: list[np.ndarray] = []
        match: list[ClipVectors] = []
        encoders = encoders_of(matcher)
        reference = BestReference()
        for done, source in enumerate(sources):
            if progress:
                progress(done, len(sources), source.name)
            clip = load_clip(source, min_seconds)
            if any(c.sha256 == clip.sha256 for c in clips):
                continue  # the same recording given twice
            self.catalog.refuse_duplicate_clips({clip.sha256: str(source.path or source.name)})
            embeddings.append(self.ctx.engine.embed(clip.wav_16k))
            match.append(self.matcher.encoders.embed(clip.wav_16k, encoders))
            clips.append(clip)
            reference.offer(clip)
        return clips, embeddings, match, reference

    def similarity_warnings(
        self, clips: Sequence[LoadedClip], match: list[ClipVectors], stored: list[ClipVectors], matcher: str
    ) -> list[str]:
        """New clips that sound like another speaker than the voice's other clips (its ``stored`` ones that
        have the matcher's vectors, and the other new ones): their cosine against the matcher's cosine threshold
        (two clips of one voice have no cohort to take a margin against)."""
        encoders = set(encoders_of(matcher))
        stored = [clip for clip in stored if encoders <= set(clip)]
        if len(stored) + len(match) < 2:
            return []
        threshold = self.thresholds.cosine_threshold()
        found = []
        for n, (clip, vectors) in enumerate(zip(clips, match, strict=True)):
            others = fuse_clips([*stored, *(m for k, m in enumerate(match) if k != n)], matcher)
            score = float(fuse_clips([vectors], matcher) @ others)
            if score < threshold:
                found.append(f"{clip.name}: scores only {score:.2f} against the other clips (another speaker?)")
        return found

    def duplicate_warnings(self, parts: dict[str, np.ndarray], exclude_id: str | None = None) -> list[str]:
        """Stored voices that a new voice (``parts``: its unit vector by each encoder it has) nearly duplicates,
        scored as ``match`` scores: clear of the library's threshold by the verdict margin, where a match would
        say "same speaker"."""
        line = self.thresholds.resolve().value + config.VERDICT_MARGIN
        return [
            f"nearly duplicates voice {hit.id} ({hit.name}) with score {hit.score:.2f}"
            for hit in self.matcher.match_parts(parts, k=2)
            if hit.id != exclude_id and hit.score >= line
        ]

    def reembed(self, ref: str) -> None:
        """Embed a voice's kept clips again with the current encoders (after an encoder change): the
        conditionals embedding and the matcher's vectors, in one change."""
        with self.ctx.store.session() as session:
            row = self.catalog.row(session, ref)
            voice_id = row.id
            clips = [(c.sha256, c.file) for c in row.clips]
        if not clips:
            raise LibraryError(f"voice {voice_id} has no kept clips to re-embed (it was imported); re-import it.")
        clips = [(sha, self._kept_file(file, sha)) for sha, file in clips]
        engine = self.ctx.engine
        matcher = self.matcher.name()
        self.matcher.encoders.require(matcher)
        vectors, match = {}, {}
        for sha, path in clips:
            wav = load_clip(path).wav_16k
            vectors[sha] = engine.embed(wav)
            match[sha] = self.matcher.encoders.embed(wav, encoders_of(matcher))
        with self.catalog.write("reembed") as change:
            row = self.catalog.row(change.session, voice_id)
            for clip in row.clips:
                clip.embedding = vectors[clip.sha256].tobytes()
                clip.match_vectors = clip_vector_rows(match[clip.sha256])
            row.embedding = mean_embedding(list(vectors.values())).tobytes()
            row.encoder = engine.encoder_checksum
            self.conditionals.forget(change, row)
            change.reindex(row)

    def remean(self, ref: str) -> None:
        """Set a voice's vector back to the mean of its clips' vectors."""
        with self.catalog.write("remean") as change:
            row = self.catalog.row(change.session, ref)
            row.embedding = mean_embedding([c.vector for c in row.clips]).tobytes()
            self.conditionals.forget(change, row)
            change.reindex(row)

    def _kept_file(self, relative: str, sha256: str) -> Path:
        """A local copy of one kept clip, or a clear error naming it."""
        path = self.ctx.objects.fetch(relative, sha256)
        if path is None:
            raise LibraryError(f"kept clip {relative} is missing or corrupt; run `voicedb check`.")
        return path

    def missing_match_vectors(self, matcher: str) -> list[tuple[int, str, str, tuple[str, ...]]]:
        """(clip pk, kept file, its sha256, encoders) of the kept clips lacking ``matcher``'s vectors by the
        current weights."""
        encoders = encoders_of(matcher)
        sums = {encoder: self.matcher.encoders.checksum(encoder) for encoder in encoders}
        with self.ctx.store.session() as session:
            clips = session.scalars(select(ClipRow).options(selectinload(ClipRow.match_vectors)).order_by(ClipRow.pk))
            missing = []
            for clip in clips:
                have = {(found.encoder, found.checksum) for found in clip.match_vectors}
                lacking = tuple(encoder for encoder in encoders if (encoder, sums[encoder]) not in have)
                if lacking:
                    missing.append((clip.pk, clip.file, clip.sha256, lacking))
        return missing

    def fill_match_vectors(self, matcher: str, progress: ProgressHook | None = None) -> int:
        """Embed the kept clips that lack ``matcher``'s vectors (decoding outside the lock), store them and their
        voices' vectors in one change; returns how many clips were embedded. What switching matchers costs."""
        self.matcher.encoders.require(matcher)
        missing = self.missing_match_vectors(matcher)
        found: dict[int, ClipVectors] = {}
        for done, (clip_pk, relative, sha256, encoders) in enumerate(missing):
            if progress:
                progress(done, len(missing), Path(relative).name)
            wav = load_clip(self._kept_file(relative, sha256)).wav_16k
            found[clip_pk] = self.matcher.encoders.embed(wav, encoders)
        if progress:
            progress(len(missing), len(missing), "saving")
        if found:
            with self.catalog.write("embed-clips") as change:
                for clip_pk, vectors in found.items():
                    clip = change.session.get(ClipRow, clip_pk)
                    if clip is None:  # removed meanwhile
                        continue
                    kept = [v for v in clip.match_vectors if v.encoder not in vectors]
                    clip.match_vectors = kept + clip_vector_rows(vectors)
                    change.reindex(clip.voice)
        return len(found)

    def switch_matcher(self, matcher: str, progress: ProgressHook | None = None) -> int:
        """Make ``matcher`` the library's: embed what its kept clips lack, record it, rebuild the index."""
        check_matcher(matcher)
        embedded = self.fill_match_vectors(matcher, progress)
        with self.catalog.write("matcher") as change:
            change.session.merge(MetaRow(key=MATCHER_KEY, value=matcher))
            change.reindex_all()
        return embedded
