"""Speaking text in a stored voice: chunks of text in, one float32 array out. Files are written only
when the caller names one."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .audio import AudioInput, load_clip
from .batching import Batcher
from .blends import Blending, is_blend
from .catalog import Catalog
from .conditionals import ConditionalsStore
from .context import LibraryContext
from .engine import S3GEN_SR
from .errors import VoiceDBError, VoiceNotFound
from .flavours import Flavour, SynthesisSettings, flavour_named
from .records import Attempt, SpeakResult, Voice
from .speech import output_format, pause, split_text, write_audio
from .store import utcnow

ProgressHook = Callable[[int, int, str], None]


class Synthesizer:
    def __init__(
        self, ctx: LibraryContext, catalog: Catalog, conditionals: ConditionalsStore, blending: Blending
    ) -> None:
        self.ctx = ctx
        self.catalog = catalog
        self.conditionals = conditionals
        self.blending = blending

    def speak(
        self,
        ref: str,
        text: str,
        *,
        model: str,
        settings: SynthesisSettings,
        seed: int | None,
        output: str | os.PathLike[str] | None,
        progress: ProgressHook | None,
        verify: bool = False,
        min_similarity: float | None = None,
        attempts: int = 1,
    ) -> SpeakResult:
        """Synthesise, and with ``verify`` score the audio against the voice; with ``min_similarity`` try
        consecutive seeds until one reaches it or ``attempts`` are made, keeping the best (see ``VoiceDB.speak``)."""
        if output is not None:
            output_format(Path(output))  # refuse an unknown suffix before the slow part
        seeds = self._seeds(seed, min_similarity, attempts)
        verify = verify or min_similarity is not None
        if verify:  # a score against another encoder's vector would mean nothing
            self.ctx.check_encoder(self.ctx.engine.encoder_checksum)
        made: list[tuple[float | None, int, np.ndarray]] = []  # (similarity, attempt, audio)
        for number, attempt_seed in enumerate(seeds, 1):
            stream = self.stream(ref, text, model=model, settings=settings, seed=attempt_seed, progress=progress)
            audio = np.concatenate(list(stream))  # split_text never returns no chunks
            similarity = self.similarity(stream.speaker, audio) if verify else None
            made.append((similarity, number, audio))
            if similarity is None or min_similarity is None or similarity >= min_similarity:
                break
        similarity, number, audio = max(made, key=lambda one: one[0] or 0.0)  # the first of equals
        written = None
        if output is not None:
            if progress:
                progress(len(stream.chunks), len(stream.chunks), "writing")
            written = Path(output)
            write_audio(written, audio, S3GEN_SR)
        if similarity is None:
            return SpeakResult(stream.voice, audio, S3GEN_SR, len(stream.chunks), written)
        tries = [Attempt(tried, score) for tried, (score, _, _) in zip(seeds, made, strict=False) if score is not None]
        return SpeakResult(stream.voice, audio, S3GEN_SR, len(stream.chunks), written, similarity, number, tries)

    @staticmethod
    def _seeds(seed: int | None, min_similarity: float | None, attempts: int) -> list[int | None]:
        """The seed of each attempt: one attempt with ``seed`` as given, or, to retry below ``min_similarity``,
        consecutive seeds from ``seed`` (a random one when none is given, so the result names its seed)."""
        if attempts < 1:
            raise VoiceDBError("attempts must be at least 1.")
        if min_similarity is None:
            if attempts > 1:
                raise VoiceDBError("more attempts than one need a minimum similarity to retry below.")
            return [seed]
        if not -1.0 <= min_similarity <= 1.0:
            raise VoiceDBError(f"minimum similarity {min_similarity} is not a cosine score; choose one from -1 to 1.")
        start = secrets.randbelow(2**31) if seed is None else seed
        return [start + n for n in range(attempts)]

    def similarity(self, speaker: np.ndarray, audio_24k: np.ndarray) -> float:
        """Cosine between the voice encoder's embedding of synthesised audio and the speaker embedding it was
        conditioned on (the voice's stored vector)."""
        from .audio import to_16k

        embedding = self.ctx.engine.embed(to_16k(audio_24k))
        return float(np.clip(embedding @ speaker, -1.0, 1.0))

    def one_off(self, reference: AudioInput, flavour: Flavour) -> tuple[Voice, Any]:
        """A voice from a clip that is not enrolled: conditionals computed as upstream's
        ``prepare_conditionals`` does, kept nowhere."""
        clip = load_clip(reference, flavour.min_seconds)
        engine = self.ctx.engine
        conds = engine.conditionals(flavour, clip.wav_24k, engine.embed(clip.wav_16k)).to(engine.device)
        now = utcnow()
        return Voice("", clip.name, [], 1, round(clip.duration_s, 2), [flavour.name], None, now, now), conds

    def voice_and_conditionals(self, ref: str, model: str) -> tuple[Voice, Any]:
        """A stored voice (by id, name, alias or prefix) and its conditionals; else, where ``ref`` is written as
        a blend (``a(2)+b(1)``), the blend of the voices it names, spoken without storing it."""
        try:
            voice = self.catalog.get(ref)
        except VoiceNotFound:
            if not is_blend(ref):
                raise
            voices, weights = self.blending.sources(ref)
            if len(voices) == 1:
                return voices[0], self.conditionals.load(voices[0].id, model)
            conds, _ = self.blending.blended(voices, weights, model)
            return self.blending.unstored(ref, voices, weights, model), conds
        return voice, self.conditionals.load(voice.id, model)

    def stream(
        self,
        ref: str,
        text: str,
        *,
        model: str,
        settings: SynthesisSettings,
        seed: int | None = None,
        progress: ProgressHook | None = None,
        reference: AudioInput | None = None,
        batcher: Batcher | None = None,
    ) -> SpeechStream:
        """Check the request and load the voice now (with ``reference``: a one-off voice from that clip,
        enrolled nowhere, ``ref`` unused); the returned iterable synthesises chunk by chunk (through
        ``batcher``, with other requests, when given; ``progress`` is then not called)."""
        flavour = flavour_named(model)
        chunks = split_text(text)
        if reference is not None:
            voice, conds = self.one_off(reference, flavour)
        else:
            voice, conds = self.voice_and_conditionals(ref, flavour.name)
        # a voice's language is what the multilingual model speaks unless told otherwise; English models ignore it
        language = flavour.check_language(settings.language or (voice.language if flavour.multilingual else None))
        settings = replace(settings, language=language)
        engine = self.ctx.engine
        speaker = conds.t3.speaker_emb.detach().cpu().numpy().reshape(-1).astype(np.float32)
        if batcher is not None:
            audio = batcher.submit(flavour, conds, chunks, settings, seed, pause(S3GEN_SR))
            return SpeechStream(voice, chunks, audio, speaker)

        def pieces() -> Iterator[np.ndarray]:
            with engine.sampling(seed):
                for done, chunk in enumerate(chunks):
                    if progress:
                        progress(done, len(chunks), chunk[:40])
                    if done:
                        yield pause(S3GEN_SR)
                    if settings.windows is None:
                        yield engine.synthesize(flavour, conds, chunk, settings)
                    else:
                        yield from engine.synthesize_stream(flavour, conds, chunk, settings, settings.windows)

        return SpeechStream(voice, chunks, pieces(), speaker)


@dataclass
class SpeechStream:
    """Speech for ``chunks`` of text in ``voice``: iterating yields float32 24 kHz audio (each chunk,
    with the pause before it) as soon as it is synthesised; the same seed gives what ``speak`` gives."""

    voice: Voice
    chunks: list[str]
    pieces: Iterator[np.ndarray]
    #: The speaker embedding T3 is conditioned on: the voice's vector, or a blend's.
    speaker: np.ndarray

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.pieces

    def close(self) -> None:
        """Stop early (a client went away): releases the sampler at once."""
        self.pieces.close()  # type: ignore[attr-defined]
