"""Bulk enrollment: one voice per subdirectory of a tree, or per name in a CSV manifest.

A pool of worker processes decodes, checks and embeds each voice's clips (the NumPy voice encoder
loads in every worker; no torch), a voice's partials through the network together. The parent
writes finished voices in groups, each group one change of the write protocol, so a crash or
Ctrl-C loses at most the group in flight, and a re-run skips every voice already enrolled (by
name) without decoding it again. Memory stays bounded: voices are read lazily and only a few per
worker are in flight; conditionals are derived on first use unless asked for now.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from .audio import AUDIO_EXTENSIONS, LoadedClip, load_clip, reference_rank
from .catalog import Catalog, KeptClip, check_name, existing_values, voice_record
from .conditionals import ConditionalsStore
from .context import LibraryContext
from .errors import AudioError, InvalidName, LibraryError, VoiceDBError
from .faults import crash_point
from .flavours import Flavour, flavour_named
from .matchers import CAMPPLUS, CHATTERBOX, ClipVectors, encoders_of, mean_embedding
from .matching import Matcher
from .records import Voice
from .speakers import speech_only
from .store import ClipRow, VoiceRow
from .voice_encoder import VoiceEncoder, load_state

#: Voices written per change: large enough that commits and index saves are rare, small enough
#: that a crash loses little.
GROUP_VOICES = 256
GROUP_SECONDS = 5.0
IN_FLIGHT_PER_WORKER = 4

#: ``progress(done, total, label)``: voices handled so far (enrolled, skipped or refused).
ProgressHook = Callable[[int, int, str], None]


@dataclass(frozen=True)
class BulkVoice:
    """One voice to enroll: its name, its clips, its tags."""

    name: str
    paths: tuple[Path, ...]
    tags: tuple[str, ...] = ()


@dataclass
class BulkResult:
    """What ``add_many`` did, voice by voice."""

    added: list[Voice] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # names already in the library
    refused: list[tuple[str, str]] = field(default_factory=list)  # (name, why)
    warnings: list[str] = field(default_factory=list)  # clips left out of a voice, and why
    quality: list[str] = field(default_factory=list)  # quality warnings of the clips enrolled

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": [v.to_dict() for v in self.added],
            "skipped": self.skipped,
            "refused": [{"name": name, "reason": why} for name, why in self.refused],
            "warnings": self.warnings,
            "quality": self.quality,
        }


class VoiceTree:
    """One voice per subdirectory of ``root``, named after it, holding the audio files inside it
    (searched recursively); hidden directories are left out. Sized, so progress has a total."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise AudioError(f"{root}: not a directory (--each takes a directory with one subdirectory per voice).")
        self.root = root
        self.names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        if not self.names:
            raise AudioError(f"{root}: holds no subdirectories; --each enrolls one voice per subdirectory.")

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[BulkVoice]:
        for name in self.names:
            inside = (self.root / name).rglob("*")
            yield BulkVoice(name, tuple(sorted(p for p in inside if p.suffix.lower() in AUDIO_EXTENSIONS)))


def read_manifest(path: Path) -> list[BulkVoice]:
    """Voices from a CSV with a header row and columns ``path``, ``name`` and (optional) ``tags``
    (separated by ``;`` or ``,``). Rows sharing a name are one voice; relative paths are relative to
    the CSV file's directory."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or ())
            rows = list(reader)
    except FileNotFoundError:
        raise AudioError(f"{path}: no such file.") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise AudioError(f"{path}: not a readable CSV file ({exc}).") from None
    if not {"path", "name"} <= columns:
        raise AudioError(f"{path}: the header must name the columns path and name (and optionally tags).")
    voices: dict[str, tuple[list[Path], set[str]]] = {}
    for line, row in enumerate(rows, start=2):
        name, clip = (row.get("name") or "").strip(), (row.get("path") or "").strip()
        if not name or not clip:
            raise AudioError(f"{path}, line {line}: path and name must both be given.")
        paths, tags = voices.setdefault(name, ([], set()))
        paths.append(path.parent / clip)
        tags.update(t.strip() for t in (row.get("tags") or "").replace(";", ",").split(",") if t.strip())
    if not voices:
        raise AudioError(f"{path}: lists no clips.")
    return [BulkVoice(name, tuple(paths), tuple(sorted(tags))) for name, (paths, tags) in voices.items()]


# -- in the worker processes ----------------------------------------------------------------------


@dataclass
class AnalysedClip:
    """A clip decoded, checked and embedded in a worker; its samples stay there."""

    path: Path
    kept: KeptClip
    rank: tuple[bool, float]
    warnings: list[str]


@dataclass
class Analysed:
    voice: BulkVoice
    clips: list[AnalysedClip]
    problems: list[str]


def _start_worker() -> None:
    """Ctrl-C is the parent's to handle (workers must not each print a traceback), and a worker ends
    with its parent, however that ends: a killed run leaves no workers behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: multiprocessing.process.BaseProcess) -> None:
    parent.join()
    os._exit(1)


@cache
def _encoder(path: Path) -> VoiceEncoder:
    return VoiceEncoder(load_state(path), path)


@cache
def _campplus(path: Path) -> Any:
    from .campplus import load_campplus

    return load_campplus(path)


@dataclass(frozen=True)
class Encoders:
    """The weights a worker embeds with: the voice encoder's, and those of the matcher's encoders."""

    voice_encoder: Path
    matching: tuple[tuple[str, Path, str], ...]  # (encoder, weights, checksum)

    def match_vectors(self, wavs_16k: list[np.ndarray]) -> list[ClipVectors]:
        if not wavs_16k:
            return []
        speech = [speech_only(wav) for wav in wavs_16k]
        found: list[ClipVectors] = [{} for _ in wavs_16k]
        for encoder, path, checksum in self.matching:
            if encoder == CHATTERBOX:
                vectors = list(_encoder(path).embed_many(speech))
            else:
                vectors = [_campplus(path).embed(wav) for wav in speech]
            for clip, vector in zip(found, vectors, strict=True):
                clip[encoder] = (checksum, vector)
        return found


def analyse(voice: BulkVoice, encoders: Encoders, min_seconds: float) -> Analysed:
    """Decode, check and embed one voice's clips; unusable clips become problems, not failures."""
    loaded: list[LoadedClip] = []
    problems: list[str] = []
    if not voice.paths:
        problems.append("no audio files")
    for path in voice.paths:
        try:
            clip = load_clip(path, min_seconds)
        except AudioError as exc:
            problems.append(str(exc))
            continue
        if all(c.sha256 != clip.sha256 for c in loaded):  # the same recording twice counts once
            loaded.append(clip)
    wavs = [c.wav_16k for c in loaded]
    vectors = _encoder(encoders.voice_encoder).embed_many(wavs) if wavs else []
    match = encoders.match_vectors(wavs)
    clips = [
        AnalysedClip(
            clip.source.path,
            KeptClip.of(clip, vector, vectors_of_clip),
            reference_rank(clip),
            clip.warnings,
        )
        for clip, vector, vectors_of_clip in zip(loaded, vectors, match, strict=True)
    ]
    return Analysed(voice, clips, problems)


# -- in the parent ---------------------------------------------------------------------------------


class BulkEnrollment:
    def __init__(
        self, ctx: LibraryContext, catalog: Catalog, conditionals: ConditionalsStore, matcher: Matcher
    ) -> None:
        self.ctx = ctx
        self.catalog = catalog
        self.conditionals = conditionals
        self.matcher = matcher

    def add_many(
        self,
        voices: Iterable[BulkVoice],
        *,
        model: str = "english",
        conditionals: bool = False,
        workers: int | None = None,
        progress: ProgressHook | None = None,
    ) -> BulkResult:
        """Enroll many voices; see ``VoiceDB.add_many``."""
        flavour = flavour_named(model)
        engine = self.ctx.engine
        encoder = engine.encoder_checksum
        self.ctx.check_encoder(encoder)
        matcher = self.matcher.name()
        self.matcher.check_checksums(matcher)
        weights = {CHATTERBOX: engine.voice_encoder_path(), CAMPPLUS: engine.campplus_path()}
        encoders = Encoders(
            weights[CHATTERBOX],
            tuple((e, weights[e], self.matcher.encoders.checksum(e)) for e in encoders_of(matcher)),
        )
        total = len(voices) if hasattr(voices, "__len__") else 0
        result = BulkResult()
        if notice := self.matcher.fallback_notice():
            result.warnings.append(notice)
        ready: list[Analysed] = []
        last_write = time.monotonic()
        workers = workers or os.cpu_count() or 1
        context = multiprocessing.get_context("spawn")  # no inherited locks, threads or connections
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker) as pool:
            in_flight: set[Future[Analysed]] = set()
            pending = self._new_voices(iter(voices), result)
            try:
                while True:
                    for voice in pending:
                        in_flight.add(pool.submit(analyse, voice, encoders, flavour.min_seconds))
                        if len(in_flight) >= workers * IN_FLIGHT_PER_WORKER:
                            break
                    if not in_flight:
                        break
                    finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    ready += [future.result() for future in finished]
                    now = time.monotonic()
                    if len(ready) >= GROUP_VOICES or now - last_write > GROUP_SECONDS or not in_flight:
                        self._write_group(ready, encoder, matcher, flavour if conditionals else None, result)
                        ready, last_write = [], now
                    if progress:
                        handled = len(result.added) + len(result.skipped) + len(result.refused)
                        progress(handled, total, f"{handled} voices")
            finally:
                for future in in_flight:
                    future.cancel()
        return result

    def _new_voices(self, voices: Iterator[BulkVoice], result: BulkResult) -> Iterator[BulkVoice]:
        """The voices not enrolled yet; names that are taken are skipped, invalid ones refused."""
        for voice in voices:
            try:
                check_name(voice.name)
            except InvalidName as exc:
                result.refused.append((voice.name, str(exc)))
                continue
            with self.ctx.store.session() as session:
                if existing_values(session, VoiceRow.name, [voice.name]):
                    result.skipped.append(voice.name)
                    continue
            yield voice

    def _write_group(
        self, group: Sequence[Analysed], encoder: str, matcher: str, flavour: Flavour | None, result: BulkResult
    ) -> None:
        """Enroll a group of analysed voices in one change; a voice that cannot be enrolled is refused
        alone, with its reason."""
        usable = []
        for analysed in group:
            name = analysed.voice.name
            result.warnings += [f"{name}: {problem}" for problem in analysed.problems]
            if not analysed.clips:
                result.refused.append((name, "no usable clips"))
            else:
                usable.append(analysed)
        prepared = {id(a): self._conditionals(a, flavour) for a in usable} if flavour else {}
        added: list[VoiceRow] = []
        with self.catalog.write("add-many") as change:
            if self.matcher.settle(change.session) != matcher:
                raise LibraryError("the library's matcher changed during the bulk enrollment; run it again.")
            taken_names = set(existing_values(change.session, VoiceRow.name, [a.voice.name for a in usable]))
            shas = [clip.kept.sha256 for a in usable for clip in a.clips]
            held = set(existing_values(change.session, ClipRow.sha256, shas))
            for analysed in usable:
                name = analysed.voice.name
                clip_shas = {clip.kept.sha256 for clip in analysed.clips}
                if name in taken_names:
                    result.skipped.append(name)
                    continue
                if clip_shas & held:
                    result.refused.append((name, "holds a clip that is already enrolled"))
                    continue
                held |= clip_shas
                taken_names.add(name)
                mean = mean_embedding([clip.kept.vector for clip in analysed.clips])
                row = change.new_voice(name, analysed.voice.tags, mean, encoder)
                for clip in analysed.clips:
                    change.keep_clip(row, clip.kept, lambda temp, source=clip.path: shutil.copyfile(source, temp))
                    result.quality += clip.warnings
                if (conditionals := prepared.get(id(analysed))) is not None:
                    self.conditionals.save(change, row, conditionals)
                added.append(row)
            crash_point("add-many:group-written")
            change.session.flush()
            records = [voice_record(row) for row in added]
        result.added += records

    def _conditionals(self, analysed: Analysed, flavour: Flavour):
        """Conditionals from the voice's best clip, decoded again here (workers keep no samples)."""
        best = max(analysed.clips, key=lambda clip: clip.rank)
        mean = mean_embedding([clip.kept.vector for clip in analysed.clips])
        try:
            return self.conditionals.compute(flavour, load_clip(best.path, flavour.min_seconds), mean)
        except VoiceDBError:
            return None
