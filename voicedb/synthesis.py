"""Speaking text in a stored voice: chunks of text in, one float32 array out. Files are written only
when the caller names one."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .catalog import Catalog
from .conditionals import ConditionalsStore
from .context import LibraryContext
from .engine import S3GEN_SR
from .flavours import SynthesisSettings, flavour_named
from .records import SpeakResult, Voice
from .speech import output_format, pause, split_text, write_audio

ProgressHook = Callable[[int, int, str], None]


class Synthesizer:
    def __init__(self, ctx: LibraryContext, catalog: Catalog, conditionals: ConditionalsStore) -> None:
        self.ctx = ctx
        self.catalog = catalog
        self.conditionals = conditionals

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
    ) -> SpeakResult:
        if output is not None:
            output_format(Path(output))  # refuse an unknown suffix before the slow part
        stream = self.stream(ref, text, model=model, settings=settings, seed=seed, progress=progress)
        audio = np.concatenate(list(stream))  # split_text never returns no chunks
        written = None
        if output is not None:
            if progress:
                progress(len(stream.chunks), len(stream.chunks), "writing")
            written = Path(output)
            write_audio(written, audio, S3GEN_SR)
        return SpeakResult(stream.voice, audio, S3GEN_SR, len(stream.chunks), written)

    def stream(
        self,
        ref: str,
        text: str,
        *,
        model: str,
        settings: SynthesisSettings,
        seed: int | None = None,
        progress: ProgressHook | None = None,
    ) -> SpeechStream:
        """Check the request and load the voice now; the returned iterable synthesises chunk by chunk."""
        flavour = flavour_named(model)
        voice = self.catalog.get(ref)
        # a voice's language is what the multilingual model speaks unless told otherwise; English models ignore it
        language = flavour.check_language(settings.language or (voice.language if flavour.multilingual else None))
        chunks = split_text(text)
        conds = self.conditionals.load(voice.id, flavour.name)
        settings = replace(settings, language=language)
        engine = self.ctx.engine

        def pieces() -> Iterator[np.ndarray]:
            with engine.sampling(seed):
                for done, chunk in enumerate(chunks):
                    if progress:
                        progress(done, len(chunks), chunk[:40])
                    if done:
                        yield pause(S3GEN_SR)
                    yield engine.synthesize(flavour, conds, chunk, settings)

        return SpeechStream(voice, chunks, pieces())


@dataclass
class SpeechStream:
    """Speech for ``chunks`` of text in ``voice``: iterating yields float32 24 kHz audio (each chunk,
    with the pause before it) as soon as it is synthesised; the same seed gives what ``speak`` gives."""

    voice: Voice
    chunks: list[str]
    pieces: Iterator[np.ndarray]

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.pieces

    def close(self) -> None:
        """Stop early (a client went away): releases the sampler at once."""
        self.pieces.close()  # type: ignore[attr-defined]
