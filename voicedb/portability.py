"""Voices in and out: upstream conditionals ``.pt`` files, ``.voicedb`` bundles and whole-library backups.

Everything imported is untrusted: validated completely before the library is touched, then added
by one change. A bundle's embeddings are used only when they come from this library's voice
encoder; otherwise the voice is embedded again from the bundle's clips, or refused when it has none.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .audio import audio_source, load_clip
from .catalog import ID_PATTERN, Catalog, KeptClip, check_language, check_name, existing_values, voice_record
from .conditionals import IMPORTED, ConditionalsStore, Prepared, serialise
from .context import LibraryContext
from .enroll import Enrollment
from .errors import AudioError, DuplicateClip, ImportRejected, LibraryError, VoiceDBError
from .faults import crash_point
from .files import atomic_path, atomic_write_bytes, sha256_file
from .flavours import FLAVOURS, flavour_named
from .matchers import CHATTERBOX, MATCHER_KEY, encoders_of, mean_embedding, normalised, voice_parts
from .records import AddResult, Voice
from .store import EMBEDDING_DIM, MetaRow, VoiceRow

BACKUP_INDEX = "backup.json"
#: ``progress(done, total, label)`` is called as multi-step work advances.
ProgressHook = Callable[[int, int, str], None]
#: A vector whose length is this close to 1 counts as normalised already (float32 rounding).
UNIT_TOLERANCE = 1e-5


def file_stem(voice_name: str) -> str:
    """A voice name made safe as a file name: letters of any script, digits, ``_.-``; no separators."""
    return re.sub(r"[^\w.-]+", "-", voice_name).strip("-.") or "voice"


def refuse_overwrite(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise VoiceDBError(f"{path} already exists; choose another name or pass --force to overwrite it.")


def bundle_language(path: Path, manifest: dict[str, Any]) -> str | None:
    """The language a bundle's manifest records, checked like user input (older bundles have none)."""
    language = manifest.get("language")
    if language is not None and not isinstance(language, str):
        raise ImportRejected(f"{path}: malformed language in the manifest.")
    try:
        return check_language(language)
    except VoiceDBError as exc:
        raise ImportRejected(f"{path}: {exc}") from None


def bundle_blend(path: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """A blend's provenance as a bundle records it, checked like user input (most bundles have none)."""
    blend = manifest.get("blend")
    if blend is None:
        return None
    try:
        sources = [{"id": str(s["id"]), "name": str(s["name"]), "weight": float(s["weight"])} for s in blend["sources"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ImportRejected(f"{path}: malformed blend in the manifest ({type(exc).__name__}).") from exc
    return {"sources": sources}


def refuse_repeats(path: Path, label: str, values: list[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ImportRejected(f"{path}: the {label} {value!r} appears more than once.")
        seen.add(value)


def unit_rows(path: Path, vectors: np.ndarray) -> np.ndarray:
    """The vectors L2-normalised, in place (those of unit length already kept bit for bit); a vector
    that is not finite, or zero, is refused. No temporary as large as the vectors is made."""
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))  # NaN or inf anywhere: not finite
    if not (finite := np.isfinite(norms)).all():
        raise ImportRejected(f"{path}: vector {int(np.argmin(finite))} is not finite (NaN or infinity).")
    if (zero := norms == 0).any():
        raise ImportRejected(f"{path}: vector {int(np.argmax(zero))} is zero and has no direction.")
    off = np.flatnonzero(np.abs(norms - 1) > UNIT_TOLERANCE)
    vectors[off] /= norms[off, None].astype(np.float32)
    return vectors


class Portability:
    def __init__(
        self, ctx: LibraryContext, catalog: Catalog, conditionals: ConditionalsStore, enrollment: Enrollment
    ) -> None:
        self.ctx = ctx
        self.catalog = catalog
        self.conditionals = conditionals
        self.enrollment = enrollment

    # -- out ------------------------------------------------------------------------------------
    def export(
        self, ref: str, output: Path, *, model: str = "english", bundle: bool = False, force: bool = False
    ) -> Path:
        refuse_overwrite(output, force)
        if not bundle:
            conds = self.conditionals.load(ref, model)
            with atomic_path(output.resolve()) as temp:
                conds.save(temp)
            return output
        from .bundle import npy_bytes, write_bundle

        with self.ctx.store.session() as session:
            row = self.catalog.row(session, ref)
            members = {"embedding.npy": npy_bytes(row.vector)}
            clips = []
            for clip in row.clips:
                name = f"clips/{clip.sha256}{Path(clip.file).suffix}"
                members[name] = self._read_kept(clip.file, clip.sha256)
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
                "language": row.language,
                "encoder": row.encoder,
                "clips": clips,
                **({"blend": row.blend} if row.blend else {}),
            }
        write_bundle(output, voice, members)
        return output

    def _read_kept(self, relative: str, sha256: str) -> bytes:
        path = self.ctx.objects.fetch(relative, sha256)
        if path is None:
            raise LibraryError(f"{relative} is missing from the library or corrupt; run `voicedb check`.")
        return path.read_bytes()

    def export_all(self, directory: Path, force: bool = False) -> list[Path]:
        """Back up every voice as ``<id>.voicedb`` in ``directory``, plus a ``backup.json`` of their checksums."""
        refuse_overwrite(directory / BACKUP_INDEX, force)
        directory.mkdir(parents=True, exist_ok=True)
        written = [
            self.export(v.id, directory / f"{v.id}.voicedb", bundle=True, force=force) for v in self.catalog.list()
        ]
        index = {"format": "voicedb-backup", "version": 1, "bundles": {p.name: sha256_file(p) for p in written}}
        atomic_write_bytes(directory / BACKUP_INDEX, json.dumps(index, indent=2).encode())
        return written

    def export_embeddings(self, output: Path, force: bool = False) -> int:
        """Write every voice's id, name and vector to an embeddings ``.npz``; returns how many."""
        from sqlalchemy import func, select

        from .embeddings import Embeddings, write_npz

        refuse_overwrite(output, force)
        encoder = self.ctx.library_encoder()
        with self.ctx.store.session() as session:
            mixed = session.scalar(select(func.count()).where(VoiceRow.encoder != encoder))
            rows = session.execute(select(VoiceRow.id, VoiceRow.name, VoiceRow.embedding).order_by(VoiceRow.pk)).all()
        if encoder is None or not rows:
            raise VoiceDBError("the library has no voices to export.")
        if mixed:
            raise LibraryError(
                f"{mixed} voices were embedded with another voice-encoder checkpoint; "
                "run `voicedb check --repair` first."
            )
        vectors = np.frombuffer(b"".join(blob for *_, blob in rows), dtype=np.float32).reshape(-1, EMBEDDING_DIM)
        ids, names = [voice_id for voice_id, *_ in rows], [name for _, name, _ in rows]
        write_npz(output, Embeddings(names, vectors, encoder, ids))
        return len(rows)

    # -- in -------------------------------------------------------------------------------------
    def import_embeddings(self, path: Path, progress: ProgressHook | None = None) -> int:
        """Add a voice without clips for every vector of an embeddings ``.npz``: all of them, or none
        when anything is wrong. Returns how many were added."""
        from .embeddings import read_npz

        if not path.is_file():
            raise ImportRejected(f"{path}: no such file.")
        found = read_npz(path, EMBEDDING_DIM)
        if not found.names:
            raise ImportRejected(f"{path}: holds no vectors.")
        encoder = self.ctx.library_encoder() or self.ctx.engine.encoder_checksum
        if found.encoder != encoder:
            raise ImportRejected(
                f"{path}: its vectors come from another voice encoder ({found.encoder[:12]}, "
                f"this library's is {encoder[:12]}); nothing was imported."
            )
        names = [self._checked_name(path, n, name) for n, name in enumerate(found.names)]
        refuse_repeats(path, "name", names)
        if found.ids is not None:
            for n, voice_id in enumerate(found.ids):
                if not ID_PATTERN.match(voice_id):
                    raise ImportRejected(f"{path}: id {n} ({voice_id!r}) is not 8 lowercase hex digits.")
            refuse_repeats(path, "id", found.ids)
        vectors = unit_rows(path, found.vectors)
        with self.catalog.write("import-embeddings") as change:
            matcher = self.ctx.store.matcher(change.session)  # a library that never chose one takes Chatterbox's
            change.session.merge(MetaRow(key=MATCHER_KEY, value=matcher))
            for label, column, values in (("name", VoiceRow.name, names), ("id", VoiceRow.id, found.ids or ())):
                if taken := existing_values(change.session, column, values):
                    raise ImportRejected(f"{path}: the library already has a voice with the {label} {taken[0]!r}.")
            ids = found.ids if found.ids is not None else change.new_voice_ids(len(names))
            hook = (lambda done, total: progress(done, total, "importing voices")) if progress else None
            change.add_voices(ids, names, vectors, encoder, hook)
        return len(names)

    def _duplicates(self, clips: list[dict[str, Any]], vector: np.ndarray) -> list[str]:
        """Stored voices an imported voice nearly duplicates, scored as ``match`` scores: by its clips'
        matching vectors, else (no clips) by its conditionals embedding, Chatterbox's evidence."""
        matcher = self.enrollment.matcher.name()
        if clips:
            return self.enrollment.duplicate_warnings(voice_parts([c["match"] for c in clips], matcher))
        return self.enrollment.duplicate_warnings({CHATTERBOX: vector})

    def _embed_clips(self, clips: list[dict[str, Any]], reembed: bool) -> None:
        """Embed the bundle's own audio, decoding each clip once: for the library's matcher, and with ``reembed``
        for the conditionals too (the bundle's embedding came from another voice encoder)."""
        matcher = self.enrollment.matcher
        name = matcher.name()
        matcher.check_checksums(name)
        for clip in clips:
            wav = load_clip(audio_source(clip["data"], clip["file"])).wav_16k
            if reembed:
                clip["embedding"] = self.ctx.engine.embed(wav)
            clip["match"] = matcher.encoders.embed(wav, encoders_of(name))

    @staticmethod
    def _checked_name(path: Path, n: int, name: str) -> str:
        try:
            return check_name(name)
        except VoiceDBError as exc:
            raise ImportRejected(f"{path}: name {n}: {exc}") from None

    def import_file(self, path: Path, *, name: str | None = None, model: str = "english") -> AddResult:
        from .bundle import is_bundle

        if not path.is_file():
            raise AudioError(f"{path}: no such file.")
        if is_bundle(path):
            return self._import_bundle(path, name)
        from .engine import read_conditionals

        flavour = flavour_named(model)
        conds = read_conditionals(path.read_bytes(), str(path))
        name = check_name(name or path.stem)
        self.catalog.check_name_free(name)
        vector = normalised(conds.t3.speaker_emb.reshape(-1).numpy())
        encoder = self.ctx.library_encoder() or self.ctx.engine.encoder_checksum
        prepared = {flavour.name: Prepared(flavour.name, serialise(conds), IMPORTED, None)}
        warnings = self._duplicates([], vector)
        voice = self.insert(name, [], vector, encoder, prepared, [])
        return AddResult(voice, True, [], warnings)

    def _import_bundle(self, path: Path, name: str | None, keep_id: bool = False) -> AddResult:
        from .bundle import read_bundle
        from .engine import read_conditionals

        bundle = read_bundle(path)
        manifest = bundle.manifest["voice"]
        name = check_name(name or manifest["name"])
        self.catalog.check_name_free(name)
        language = bundle_language(path, manifest)
        clips = self._bundle_clips(path, manifest.get("clips", []), bundle.members)
        encoder = self.ctx.library_encoder() or self.ctx.engine.encoder_checksum
        vector = normalised(bundle.embedding)
        prepared: dict[str, Prepared] = {}
        reembed = manifest.get("encoder") != encoder
        if reembed and not clips:
            raise ImportRejected(
                f"{path}: its embedding comes from another voice encoder and it holds no clips to embed again."
            )
        self._embed_clips(clips, reembed)
        if reembed:
            vector = mean_embedding([c["embedding"] for c in clips])
            # the bundle's conditionals carry the other encoder's vector: they are derived again on first use
        else:
            for member, data in bundle.members.items():
                if member.startswith("conds/"):
                    flavour = member[len("conds/") : -len(".pt")]
                    if flavour not in FLAVOURS:
                        raise ImportRejected(f"{path}: unknown model {flavour!r}.")
                    conds = read_conditionals(data, f"{path}:{member}")
                    prepared[flavour] = Prepared(flavour, serialise(conds), IMPORTED, None)
        tags = [str(tag) for tag in manifest.get("tags", []) if isinstance(tag, str)]
        warnings = self._duplicates(clips, vector)
        voice_id = manifest.get("id") if keep_id else None
        blend = bundle_blend(path, manifest)
        voice = self.insert(name, tags, vector, encoder, prepared, clips, language, voice_id, blend)
        return AddResult(voice, True, [], warnings)

    def _bundle_clips(self, path: Path, listed: Any, members: dict[str, bytes]) -> list[dict[str, Any]]:
        """The bundle's clips, validated: each present, not yet enrolled, with sane metadata."""
        clips = []
        try:
            for clip in listed:
                if clip["file"] not in members:
                    raise ImportRejected(f"{path}: clip {clip['file']} is listed but missing.")
                sha = Path(clip["file"]).stem
                if holder := self.catalog.holder_of_clip(sha):
                    raise DuplicateClip(f"{path}: clip {sha[:12]} is already enrolled in voice {holder}.")
                vector = np.asarray(clip["embedding"], dtype=np.float32)
                if vector.shape != (256,) or not np.isfinite(vector).all():
                    raise ImportRejected(f"{path}: clip {clip['file']} has a bad embedding.")
                clips.append(
                    {
                        "file": clip["file"],
                        "sha256": sha,
                        "data": members[clip["file"]],
                        "source_name": str(clip["source_name"]),
                        "duration_s": float(clip["duration_s"]),
                        "speech_s": float(clip["speech_s"]),
                        "sample_rate": int(clip["sample_rate"]),
                        "embedding": vector,
                    }
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise ImportRejected(f"{path}: malformed clip metadata ({type(exc).__name__}).") from exc
        return clips

    def insert(
        self,
        name: str,
        tags: list[str],
        vector: np.ndarray,
        encoder: str,
        prepared: dict[str, Prepared],
        clips: list[dict[str, Any]],
        language: str | None = None,
        voice_id: str | None = None,
        blend: dict[str, Any] | None = None,
    ) -> Voice:
        """Add a voice with its clips and conditionals in one change. ``voice_id``: the id to keep (a restored
        backup), where it is a valid id no other voice has; ``blend``: a blend's provenance."""
        with self.catalog.write("import") as change:
            self.catalog.check_name_free(name, change.session)
            if clips:
                self.enrollment.matcher.settle(change.session)
            self.catalog.refuse_duplicate_clips({c["sha256"]: c["file"] for c in clips}, change.session)
            row = change.new_voice(name, tags, vector, encoder, language, voice_id)
            row.blend = blend
            for clip in clips:
                kept = KeptClip(
                    clip["sha256"],
                    Path(clip["file"]).suffix,
                    clip["source_name"],
                    clip["duration_s"],
                    clip["speech_s"],
                    clip["sample_rate"],
                    clip["embedding"],
                    clip.get("match", {}),
                )
                change.keep_clip(row, kept, lambda temp, data=clip["data"]: temp.write_bytes(data))
                crash_point("import:clip-written")
            for value in prepared.values():
                self.conditionals.save(change, row, value)
            crash_point("import:conds-written")
            change.session.flush()
            voice = voice_record(row)
        return voice

    def import_all(self, directory: Path) -> list[Voice]:
        """Restore a backup made by ``export_all`` (into this library, or another: how a library moves from
        SQLite to PostgreSQL): every checksum and name is verified before any import, voices keep their ids
        where no other voice has them, and if one import still fails, the voices already restored are
        removed again."""
        from .bundle import read_bundle

        try:
            bundles = json.loads((directory / BACKUP_INDEX).read_text())["bundles"]
            files = {str(k): str(v) for k, v in bundles.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ImportRejected(f"{directory}: no readable {BACKUP_INDEX} ({type(exc).__name__}).") from exc
        names = []
        for file_name, checksum in files.items():
            path = directory / Path(file_name).name
            if not path.is_file() or sha256_file(path) != checksum:
                raise ImportRejected(f"{path}: missing or does not match {BACKUP_INDEX}.")
            manifest = read_bundle(path).manifest["voice"]
            bundle_language(path, manifest)
            names.append(manifest["name"])
        for name in names:
            self.catalog.check_name_free(check_name(name))
        imported: list[Voice] = []
        try:
            for file_name in files:
                imported.append(self._import_bundle(directory / Path(file_name).name, None, keep_id=True).voice)
        except BaseException:
            if imported:  # all or nothing: take back what this restore added
                self.catalog.remove([v.id for v in imported])
            raise
        return imported
