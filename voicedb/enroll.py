"""Enrolling voices: decode and embed clips (slow, before any lock), judge them, then one change.

A new voice's embedding is the mean of its clips' embeddings (``matching.mean_embedding``); adding
clips to a voice moves its embedding, so the same change re-derives the conditionals of the model
asked for (unless ``conditionals=False``) and drops the voice's other conditionals, which are
derived again on their first use.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from . import config
from .audio import AudioInput, AudioSource, BestReference, LoadedClip, audio_source, expand_audio_paths, load_clip
from .catalog import Catalog, KeptClip, check_language, check_name, voice_record
from .conditionals import ConditionalsStore, best_reference
from .context import LibraryContext
from .errors import AudioError, LibraryError, QualityError
from .faults import crash_point
from .flavours import flavour_named
from .matching import Matcher, mean_embedding
from .records import AddResult
from .store import utcnow

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
        self, ctx: LibraryContext, catalog: Catalog, conditionals: ConditionalsStore, matcher: Matcher
    ) -> None:
        self.ctx = ctx
        self.catalog = catalog
        self.conditionals = conditionals
        self.matcher = matcher

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
            voice_id = None
        else:
            with self.ctx.store.session() as session:
                row = self.catalog.row(session, voice)
                voice_id, existing = row.id, [c.vector.copy() for c in row.clips]
                kept = [self.ctx.path(c.file) for c in row.clips]
        encoder = self.ctx.engine.encoder_checksum
        self.ctx.check_encoder(encoder)  # before any embedding work
        clips, embeddings, reference = self._embed_all(sources, flavour.min_seconds, progress)
        mean = mean_embedding(existing + embeddings)
        warnings = [w for clip in clips for w in clip.warnings]
        warnings += self.similarity_warnings(clips, embeddings, mean, existing, voice_id)
        if strict and warnings:
            raise QualityError("refused (--strict): " + "; ".join(warnings) + ".")
        prepared = None
        if conditionals:
            if progress:
                progress(len(sources), len(sources), f"{flavour.name} conditionals")
            best = best_reference(kept if voice is not None else (), flavour, reference)  # new and kept clips
            prepared = self.conditionals.compute(flavour, best, mean)
        with self.catalog.write("add") as change:
            self.catalog.refuse_duplicate_clips({c.sha256: c.name for c in clips}, change.session)
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
            for clip, vector in zip(clips, embeddings, strict=True):
                kept = KeptClip(
                    clip.sha256, clip.source.suffix, clip.name, clip.duration_s, clip.speech_s, clip.sample_rate, vector
                )
                change.keep_clip(row, kept, clip.source.write_copy)
            crash_point("add:clips-written")
            self.conditionals.forget(change, row, keep=prepared.flavour if prepared else None)
            if prepared is not None:
                self.conditionals.save(change, row, prepared)
                crash_point("add:conds-written")
            change.session.flush()
            result = AddResult(voice_record(row), voice_id is None, [c.name for c in clips], warnings)
        return result

    def _embed_all(
        self, sources: Sequence[AudioSource], min_seconds: float, progress: ProgressHook | None
    ) -> tuple[list[LoadedClip], list[np.ndarray], BestReference]:
        """Decode, check and embed every clip, keeping one clip's samples at a time: the best reference's,
        returned with the clips."""
        clips: list[LoadedClip] = []
        embeddings: list[np.ndarray] = []
        reference = BestReference()
        for done, source in enumerate(sources):
            if progress:
                progress(done, len(sources), source.name)
            clip = load_clip(source, min_seconds)
            if any(c.sha256 == clip.sha256 for c in clips):
                continue  # the same recording given twice
            self.catalog.refuse_duplicate_clips({clip.sha256: str(source.path or source.name)})
            embeddings.append(self.ctx.engine.embed(clip.wav_16k))
            clips.append(clip)
            reference.offer(clip)
        return clips, embeddings, reference

    def similarity_warnings(
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
                    found.append(f"{clip.name}: scores only {score:.2f} against the other clips (another speaker?)")
        found += self.duplicate_warnings(mean, exclude_id)
        return found

    def duplicate_warnings(self, vector: np.ndarray, exclude_id: str | None = None) -> list[str]:
        """Stored voices that ``vector`` nearly duplicates."""
        return [
            f"nearly duplicates voice {hit.id} ({hit.name}) with score {hit.score:.2f}"
            for hit in self.matcher.match_vector(vector, k=2)
            if hit.id != exclude_id and hit.score >= config.DEFAULT_THRESHOLD
        ]

    def reembed(self, ref: str) -> None:
        """Embed a voice's kept clips again with the current encoder (after an encoder change)."""
        with self.ctx.store.session() as session:
            row = self.catalog.row(session, ref)
            voice_id = row.id
            clips = [(c.sha256, self.ctx.path(c.file)) for c in row.clips]
        if not clips:
            raise LibraryError(f"voice {voice_id} has no kept clips to re-embed (it was imported); re-import it.")
        engine = self.ctx.engine
        vectors = {sha: engine.embed(load_clip(path).wav_16k) for sha, path in clips}
        with self.catalog.write("reembed") as change:
            row = self.catalog.row(change.session, voice_id)
            for clip in row.clips:
                clip.embedding = vectors[clip.sha256].tobytes()
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
