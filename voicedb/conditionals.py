"""A voice's saved Chatterbox conditionals: derive, save, load, and tell when they are outdated.

Conditionals are saved with upstream ``Conditionals.save`` as ``conds/<id>.<flavour>.<sha12>.pt``:
the name carries the content hash, so re-deriving never overwrites the file a committed row points
at. Saved conditionals are current while they were made with this checkpoint and their
``t3.speaker_emb`` is still the voice's vector. A change that moves a voice's vector drops the
conditionals it does not re-derive (``forget``), so outdated ones exist only after damage or a
checkpoint change; ``load`` derives them again and ``check`` reports them.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cachetools import LRUCache

from .audio import BestReference, LoadedClip, load_clip
from .catalog import Catalog, Change
from .context import LibraryContext
from .errors import AudioError, LibraryError, NoClips
from .flavours import Flavour, flavour_named
from .objects import CONDS_DIR
from .store import ClipRow, ConditionalsRow, VoiceRow, utcnow

#: How far ``t3.speaker_emb`` may drift from the voice vector (float32 round trips) and still be current.
SPEAKER_TOLERANCE = 1e-4
IMPORTED = "imported"  # the checkpoint fingerprint of conditionals that came from a file
#: Loaded conditionals kept on the model's device; each is well under a megabyte.
CACHED_CONDITIONALS = 64


@dataclass(frozen=True)
class Prepared:
    """Conditionals computed and serialised, ready to be saved by a change."""

    flavour: str
    data: bytes  # upstream ``Conditionals.save`` output
    fingerprint: str
    clip_sha256: str | None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def serialise(conds: Any) -> bytes:
    buffer = io.BytesIO()
    conds.save(buffer)
    return buffer.getvalue()


def speaker_matches(conds: Any, vector: np.ndarray) -> bool:
    """Whether saved conditionals still carry the voice's vector as ``t3.speaker_emb``."""
    speaker = conds.t3.speaker_emb.detach().cpu().numpy().reshape(-1)
    return speaker.shape == vector.shape and bool(np.allclose(speaker, vector, atol=SPEAKER_TOLERANCE))


def best_reference(clips: Iterable[Path], flavour: Flavour, best: BestReference | None = None) -> LoadedClip | None:
    """The clip that conditions a voice best (see ``audio.reference_rank``) among ``clips`` and those
    already offered to ``best``; unreadable files are skipped."""
    best = best or BestReference()
    for path in clips:
        try:
            best.offer(load_clip(path, flavour.min_seconds))
        except AudioError:
            continue
    return best.clip


def shallow_copy(conds: Any) -> Any:
    """A ``Conditionals`` of its own sharing the tensors: upstream ``generate`` replaces ``conds.t3``,
    which must not reach the copy other callers hold."""
    return type(conds)(conds.t3, dict(conds.gen))


def kept_clip_files(ctx: LibraryContext, clips: Iterable[ClipRow]) -> list[Path]:
    """Local files holding a voice's kept clips (downloaded from object storage when that is where they
    are), skipping any that are missing or corrupt: ``check`` reports those."""
    return [path for clip in clips if (path := ctx.objects.fetch(clip.file, clip.sha256)) is not None]


class ConditionalsStore:
    """Conditionals loaded once stay in a bounded LRU on the model's device, keyed by (voice pk, flavour)
    and holding the file they came from; the file name carries its content hash, so a re-derived or
    replaced file no longer matches and is read again. Entries of voices another process changed are
    dropped as soon as this one sees the change (``LibraryContext.on_voices_changed``)."""

    def __init__(self, ctx: LibraryContext, catalog: Catalog, cache_size: int = CACHED_CONDITIONALS) -> None:
        self.ctx = ctx
        self.catalog = catalog
        self._cache: LRUCache[tuple[int, str], tuple[str, Any]] = LRUCache(maxsize=cache_size)
        self._cache_lock = threading.Lock()
        ctx.on_voices_changed.append(self.drop)

    def drop(self, voice_pks: set[int] | None) -> None:
        """Forget the loaded conditionals of these voices (``None``: of every voice)."""
        with self._cache_lock:
            for key in [key for key in self._cache if voice_pks is None or key[0] in voice_pks]:
                del self._cache[key]

    @property
    def cached(self) -> int:
        """How many loaded conditionals are kept now (bounded by ``cache_size``)."""
        with self._cache_lock:
            return len(self._cache)

    def compute(self, flavour: Flavour, reference: LoadedClip, vector: np.ndarray) -> Prepared:
        """The slow part, done before any lock: run the model and serialise the result."""
        engine = self.ctx.engine
        value = engine.conditionals(flavour, reference.wav_24k, vector)
        return Prepared(flavour.name, serialise(value), engine.fingerprint(flavour), reference.sha256)

    def save(self, change: Change, row: VoiceRow, prepared: Prepared) -> None:
        """Within a change: write the file and point the voice's row for that flavour at it."""
        checksum = prepared.sha256
        relative = f"{CONDS_DIR}/{row.id}.{prepared.flavour}.{checksum[:12]}.pt"
        change.put_file(relative, lambda temp: temp.write_bytes(prepared.data))
        existing = next((c for c in row.conditionals if c.flavour == prepared.flavour), None)
        if existing is None:
            existing = ConditionalsRow(flavour=prepared.flavour)
            row.conditionals.append(existing)
        elif existing.file != relative:
            change.drop_file(existing.file)
        existing.file, existing.sha256, existing.checkpoint = relative, checksum, prepared.fingerprint
        existing.clip_sha256, existing.created_at = prepared.clip_sha256, utcnow()

    @staticmethod
    def forget(change: Change, row: VoiceRow, keep: str | None = None) -> None:
        """Within a change that moves the voice's vector: drop its conditionals (except ``keep``'s,
        which the change saves anew), so no outdated conditionals stay behind; they are derived
        again on first use."""
        for saved in [c for c in row.conditionals if c.flavour != keep]:
            change.drop_file(saved.file)
            row.conditionals.remove(saved)

    def derive(self, ref: str, model: str) -> None:
        """(Re)compute a voice's conditionals for ``model`` from its kept reference audio and save them."""
        flavour = flavour_named(model)
        with self.ctx.store.session() as session:
            row = self.catalog.row(session, ref)
            voice_id, vector = row.id, row.vector.copy()
            kept = kept_clip_files(self.ctx, row.clips)
        if not kept:
            raise LibraryError(f"voice {voice_id} has no kept reference audio to derive {model} conditionals from.")
        reference = best_reference(kept, flavour)
        if reference is None:
            raise LibraryError(f"the kept reference audio of voice {voice_id} is unreadable; re-add the voice's clips.")
        prepared = self.compute(flavour, reference, vector)
        with self.catalog.write("derive") as change:
            row = self.catalog.row(change.session, voice_id)
            if not np.array_equal(row.vector, vector):
                raise LibraryError(f"voice {voice_id} changed while its conditionals were derived; try again.")
            self.save(change, row, prepared)

    def load(self, ref: str, model: str = "english") -> Any:
        """A voice's saved Chatterbox ``Conditionals`` for ``model``, derived first if missing or outdated."""
        flavour = flavour_named(model)
        with self.ctx.store.session() as session:
            row = self.catalog.row(session, ref)
            voice_pk, voice_id, vector, has_clips = row.pk, row.id, row.vector.copy(), bool(row.clips)
            saved = next((c for c in row.conditionals if c.flavour == flavour.name), None)
            embedding_only = not row.clips and not row.conditionals
        if saved is None:
            self._derive_or_explain(voice_id, flavour, has_clips, embedding_only)
            return self.load(voice_id, model)
        key = (voice_pk, flavour.name)
        with self._cache_lock:
            cached = self._cache.get(key)
        if cached is not None and cached[0] == saved.file:
            return shallow_copy(cached[1])
        conds = self.read(saved)
        derived = saved.clip_sha256 is not None
        outdated = derived and saved.checkpoint != self.ctx.engine.fingerprint(flavour)
        if (outdated or not speaker_matches(conds, vector)) and has_clips:
            self.derive(voice_id, flavour.name)
            return self.load(voice_id, model)
        conds = conds.to(self.ctx.engine.device)
        with self._cache_lock:
            self._cache[key] = (saved.file, conds)
        return shallow_copy(conds)

    def _derive_or_explain(self, voice_id: str, flavour: Flavour, has_clips: bool, embedding_only: bool) -> None:
        add_clips = f"add clips with `voicedb add CLIP --voice {voice_id}`"
        if embedding_only:
            raise NoClips(f"voice {voice_id} has no clips (it was imported as an embedding): {add_clips}.")
        if not has_clips:
            raise NoClips(
                f"voice {voice_id} has no {flavour.name} conditionals and no clips to derive them from; {add_clips}."
            )
        self.derive(voice_id, flavour.name)

    def read(self, saved: ConditionalsRow) -> Any:
        """Load one saved file after verifying its checksum."""
        from .engine import conditionals_class

        path = self.ctx.objects.fetch(saved.file, saved.sha256)
        if path is None:
            raise LibraryError(
                f"the {saved.flavour} conditionals of a voice ({saved.file}) are missing or corrupt; "
                "run `voicedb check --repair`."
            )
        import torch

        with torch.inference_mode():  # saved tensors never carry autograd state
            return conditionals_class().load(path, map_location="cpu")
