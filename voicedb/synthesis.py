"""Speaking text in a stored voice: chunks of text in, one float32 array out. Files are written only
when the caller names one."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .catalog import Catalog
from .conditionals import ConditionalsStore
from .context import LibraryContext
from .engine import S3GEN_SR
from .flavours import SynthesisSettings, flavour_named
from .records import SpeakResult
from .speech import join_with_pauses, output_format, split_text, write_audio

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
        flavour = flavour_named(model)
        language = flavour.check_language(settings.language)
        if output is not None:
            output_format(Path(output))  # refuse an unknown suffix before the slow part
        chunks = split_text(text)
        voice = self.catalog.get(ref)
        conds = self.conditionals.load(voice.id, flavour.name)
        engine = self.ctx.engine
        pieces = []
        with engine.sampling(seed):
            for done, chunk in enumerate(chunks):
                if progress:
                    progress(done, len(chunks), chunk[:40])
                pieces.append(engine.synthesize(flavour, conds, chunk, replace(settings, language=language)))
        audio = join_with_pauses(pieces, S3GEN_SR)
        written = None
        if output is not None:
            if progress:
                progress(len(chunks), len(chunks), "writing")
            written = Path(output)
            write_audio(written, audio, S3GEN_SR)
        return SpeakResult(voice, audio, S3GEN_SR, len(chunks), written)
