"""Finding, listing, renaming and removing voices, and the one write protocol every change goes through.

The write protocol (what makes a crash harmless): slow model work happens before it, outside any
lock. Inside ``Catalog.write``, holding the writer lock, files are written under temporary names,
fsynced and renamed into place, rows change, and one commit makes it all real. A crash before the
commit leaves unreferenced files (reported and removed by ``check --repair``), never a row
pointing at a missing file. After the commit nothing can fail: files the change dropped are
deleted (a failure leaves an orphan) and the index is updated (a failure leaves it stale, and it
is rebuilt from the store by the next reader).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Select, String, and_, exists, func, insert, select, type_coerce
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session, defer, selectinload

from .audio import LoadedClip
from .context import LibraryContext
from .errors import (
    AmbiguousVoice,
    DuplicateClip,
    InvalidName,
    LibraryError,
    NameTaken,
    VoiceDBError,
    VoiceNotFound,
)
from .faults import crash_point
from .flavours import languages
from .index import Space
from .matchers import CHATTERBOX, CHECKSUM_KEYS, ClipVectors, encoders_of, fuse, mean_embedding
from .objects import CLIPS_DIR, Objects
from .records import Voice
from .store import AliasRow, ClipRow, ClipVectorRow, MetaRow, VoiceRow, VoiceVectorRow, utcnow

ID_PATTERN = re.compile(r"^[0-9a-f]{8}$")
#: The shortest start of an id that ``resolve`` accepts (shorter prefixes are too often ambiguous).
MIN_PREFIX = 4
MAX_NAME = 100
#: Loads a voice's clips and conditionals with it: what every caller of a voice row reads.
WITH_FILES = (selectinload(VoiceRow.clips), selectinload(VoiceRow.conditionals), selectinload(VoiceRow.aliases))
#: Voices read per query when a listing is streamed; rows per INSERT of a bulk import.
PAGE_ROWS = 1000
BULK_ROWS = 10_000
#: Values per ``IN (...)`` query, well below SQLite's limit on bound parameters.
IN_CHUNK = 10_000

log = logging.getLogger(__name__)


def check_name(name: str) -> str:
    """Names must be typeable on a command line and never mistaken for an id."""
    name = name.strip()
    if not name:
        raise InvalidName("a voice name cannot be empty.")
    if len(name) > MAX_NAME:
        raise InvalidName(f"a voice name can be at most {MAX_NAME} characters.")
    if any(not ch.isprintable() for ch in name):
        raise InvalidName(f"voice name {name!r} contains control characters.")
    if ID_PATTERN.match(name):
        raise InvalidName(f"voice name {name!r} looks like a voice id; choose another.")
    return name


def check_language(language: str | None) -> str | None:
    """A voice's language: ``None``, or one of the multilingual model's language ids, stored lowercase."""
    if language is None:
        return None
    code = language.strip().lower()
    supported = languages()
    if code not in supported:
        raise VoiceDBError(f"unknown language {language!r}; choose one of: {', '.join(sorted(supported))}.")
    return code


def existing_values(session: Session, column: InstrumentedAttribute[str], values: Iterable[str]) -> list[str]:
    """Which of ``values`` the column already holds: one indexed ``IN`` query per ``IN_CHUNK`` values."""
    values = list(values)
    found: list[str] = []
    for start in range(0, len(values), IN_CHUNK):
        found += session.scalars(select(column).where(column.in_(values[start : start + IN_CHUNK])))
    return found


def like_literal(text: str) -> str:
    """``text`` in a LIKE pattern, its wildcards escaped with a backslash."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def like_glob(pattern: str) -> str:
    """A name pattern (``*`` any characters, ``?`` one) as a LIKE pattern, escaped with a backslash."""
    return like_literal(pattern).replace("*", "%").replace("?", "_")


def rebuild_quietly(ctx: LibraryContext) -> None:
    """Rebuild the indexes after a committed bulk change; a failure leaves one stale, for the next reader to rebuild."""
    for index in ctx.indexes:
        try:
            index.rebuild()
        except Exception:  # noqa: BLE001 - derived data, and the change is already committed
            log.warning("could not rebuild the index; the next reader will", exc_info=True)


def voice_record(row: VoiceRow) -> Voice:
    return Voice(
        id=row.id,
        name=row.name,
        tags=list(row.tags or []),
        clips=len(row.clips),
        seconds=round(sum(clip.duration_s for clip in row.clips), 2),
        models=sorted(c.flavour for c in row.conditionals),
        language=row.language,
        created_at=row.created_at,
        updated_at=row.updated_at,
        aliases=[alias.alias for alias in row.aliases],
        blend=row.blend,
    )


@dataclass
class Change:
    """One change in progress inside ``Catalog.write``: its session, the files it writes, and what
    must follow the commit."""

    session: Session
    objects: Objects
    reindexed: list[VoiceRow] = field(default_factory=list)
    unindexed: list[int] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    generation: int | None = None
    rebuild_index: bool = False

    def put_file(self, relative: str, write: Callable[[Path], None]) -> None:
        """Store a library file whole (``write(temp_path)`` writes it), before the commit that refers to it.

        A file the change creates is removed again if the change fails before its commit.
        """
        if self.objects.put(relative, write):
            self.written.append(relative)

    def reindex(self, row: VoiceRow) -> None:
        """The voice's vector is new or changed: index it after the commit."""
        self.reindexed.append(row)

    def unindex(self, pk: int) -> None:
        self.unindexed.append(pk)

    def reindex_all(self) -> None:
        """So many vectors change that one rebuild after the commit beats updating the index voice by voice."""
        self.rebuild_index = True

    def drop_file(self, relative: str) -> None:
        """Delete a library file once the commit no longer refers to it."""
        self.dropped.append(relative)

    def new_voice_id(self) -> str:
        while True:
            candidate = secrets.token_hex(4)
            taken = self.session.scalar(select(VoiceRow.pk).where(VoiceRow.id == candidate))
            if ID_PATTERN.match(candidate) and not taken:
                return candidate

    def new_voice_ids(self, count: int) -> list[str]:
        """``count`` fresh ids not in the library, drawn in bulk and checked by ``IN`` queries (among a
        million voices a few draws in a thousand collide); sorted, so the id index takes them in order."""
        fresh: set[str] = set()
        while len(fresh) < count:
            candidates = {secrets.token_hex(4) for _ in range(count - len(fresh))} - fresh
            fresh |= candidates - set(existing_values(self.session, VoiceRow.id, candidates))
        return sorted(fresh)

    def add_voices(
        self,
        ids: Sequence[str],
        names: Sequence[str],
        vectors: np.ndarray,
        encoder: str,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Many new voices without clips, by bulk INSERTs; the index is rebuilt once after the commit.

        Every id and name must already be checked and free (``check_name``, ``existing_values``)."""
        now = utcnow()
        table = VoiceRow.__table__
        for start in range(0, len(ids), BULK_ROWS):
            stop = min(start + BULK_ROWS, len(ids))
            rows = [
                {
                    "id": ids[n],
                    "name": names[n],
                    "tags": [],
                    "embedding": vectors[n].tobytes(),
                    "encoder": encoder,
                    "language": None,
                    "created_at": now,
                    "updated_at": now,
                }
                for n in range(start, stop)
            ]
            self.session.execute(insert(table), rows)
            if progress:
                progress(stop, len(ids))
        self.session.merge(MetaRow(key="encoder", value=encoder))
        self.reindex_all()

    def new_voice(
        self,
        name: str,
        tags: Sequence[str],
        vector: np.ndarray,
        encoder: str,
        language: str | None = None,
        voice_id: str | None = None,
    ) -> VoiceRow:
        """A new voice row, indexed after the commit; the library records its encoder. It gets ``voice_id``
        where that is a valid id no voice has (a restored backup keeps its ids), else a fresh one.

        ``language`` must already be checked (``check_language``)."""
        now = utcnow()
        taken = (
            voice_id is None
            or not ID_PATTERN.match(voice_id)
            or self.session.scalar(select(VoiceRow.pk).where(VoiceRow.id == voice_id))
        )
        row = VoiceRow(
            id=self.new_voice_id() if taken else voice_id,
            name=name,
            tags=sorted(set(tags)),
            embedding=np.asarray(vector, dtype=np.float32).tobytes(),
            encoder=encoder,
            language=language,
            created_at=now,
            updated_at=now,
        )
        self.session.add(row)
        self.session.merge(MetaRow(key="encoder", value=encoder))
        self.reindex(row)
        return row

    def keep_clip(self, row: VoiceRow, clip: KeptClip, write: Callable[[Path], None]) -> None:
        """Keep a clip's audio under its content hash (``write(temp_path)`` writes it) and add its row."""
        relative = f"{CLIPS_DIR}/{clip.sha256}{clip.suffix}"
        if not self.objects.exists(relative):
            self.put_file(relative, write)
        row.clips.append(
            ClipRow(
                sha256=clip.sha256,
                file=relative,
                source_name=clip.source_name,
                duration_s=clip.duration_s,
                speech_s=clip.speech_s,
                sample_rate=clip.sample_rate,
                embedding=np.asarray(clip.vector, dtype=np.float32).tobytes(),
                added_at=utcnow(),
                match_vectors=clip_vector_rows(clip.match),
            )
        )


@dataclass(frozen=True)
class KeptClip:
    """What the store records of a reference clip, whether enrolled from audio or imported."""

    sha256: str
    suffix: str  # of the kept copy's file name, with the dot
    source_name: str
    duration_s: float
    speech_s: float
    sample_rate: int
    vector: np.ndarray
    #: Its matching vectors (``speakers.SpeakerEncoders.embed``); none for a clip imported without them.
    match: ClipVectors = field(default_factory=dict)

    @classmethod
    def of(cls, clip: LoadedClip, vector: np.ndarray, match: ClipVectors) -> KeptClip:
        """What the store keeps of a clip decoded here, with its embeddings."""
        suffix = clip.source.suffix
        return cls(clip.sha256, suffix, clip.name, clip.duration_s, clip.speech_s, clip.sample_rate, vector, match)


def clip_vector_rows(vectors: ClipVectors) -> list[ClipVectorRow]:
    """The rows that store one clip's matching vectors."""
    return [
        ClipVectorRow(encoder=encoder, checksum=checksum, vector=np.asarray(vector, np.float32).tobytes())
        for encoder, (checksum, vector) in vectors.items()
    ]


def refresh_match_vectors(row: VoiceRow) -> dict[str, str]:
    """Set a voice's matching vectors to the mean of its clips' by each encoder that embedded every clip
    with the same weights (others are dropped: ``check`` reports the gap); returns encoder -> weights."""
    by_encoder: dict[tuple[str, str], list[np.ndarray]] = {}
    for clip in row.clips:
        for found in clip.match_vectors:
            by_encoder.setdefault((found.encoder, found.checksum), []).append(
                np.frombuffer(found.vector, dtype=np.float32)
            )
    complete = {enc: (sum_, vecs) for (enc, sum_), vecs in by_encoder.items() if len(vecs) == len(row.clips)}
    current = {found.encoder: found for found in row.match_vectors}
    for encoder, found in current.items():
        if encoder not in complete:
            row.match_vectors.remove(found)
    for encoder, (checksum, vectors) in complete.items():
        vector = mean_embedding(vectors).tobytes()
        if encoder in current:
            current[encoder].checksum, current[encoder].vector = checksum, vector
        else:
            row.match_vectors.append(VoiceVectorRow(encoder=encoder, checksum=checksum, vector=vector))
    return {encoder: checksum for encoder, (checksum, _) in complete.items()}


def stored_vectors(row: VoiceRow) -> dict[str, np.ndarray]:
    """encoder -> the voice's vector by it (a voice without a Chatterbox matching vector is represented by
    its conditionals embedding, which every voice has)."""
    stored = {found.encoder: np.frombuffer(found.vector, dtype=np.float32) for found in row.match_vectors}
    stored.setdefault(CHATTERBOX, row.vector)
    return stored


def matcher_vector(row: VoiceRow, matcher: str) -> np.ndarray | None:
    """The voice's vector in the index of ``matcher``, or ``None`` when it lacks one of its encoders."""
    stored = stored_vectors(row)
    parts = [stored.get(encoder) for encoder in encoders_of(matcher)]
    return None if any(part is None for part in parts) else fuse(parts)


def space_vector(row: VoiceRow, matcher: str, space: Space) -> np.ndarray | None:
    """The voice's vector in the index of ``space`` (``index.PRIMARY``: ``matcher_vector``; ``FALLBACK``: its
    Chatterbox vector, only when the matcher cannot compare it), or ``None`` when that index leaves it out."""
    primary = matcher_vector(row, matcher)
    if not space.fallback:
        return primary
    return stored_vectors(row)[CHATTERBOX] if primary is None and space.used(matcher) else None


class Catalog:
    """Voices by id, name or id prefix; listing, renaming, removing; the write protocol."""

    def __init__(self, ctx: LibraryContext) -> None:
        self.ctx = ctx

    # -- the write protocol ----------------------------------------------------------------
    @contextmanager
    def write(self, phase: str) -> Iterator[Change]:
        """Hold the writer lock around one transaction; see the module docstring.

        ``phase`` names the crash points ``<phase>:before-commit`` and ``<phase>:committed``.
        """
        ctx = self.ctx
        ctx.require_writable()
        with ctx.writer.held():
            change: Change | None = None
            try:
                with ctx.store.session() as session:
                    change = Change(session, ctx.objects)
                    yield change
                    session.flush()
                    weights = {}
                    for row in change.reindexed:
                        weights.update(refresh_match_vectors(row))
                    for encoder, checksum in weights.items():  # the library records what its vectors come from
                        session.merge(MetaRow(key=CHECKSUM_KEYS[encoder], value=checksum))
                    if change.reindexed or change.unindexed or change.rebuild_index:
                        changed = (
                            None if change.rebuild_index else [*change.unindexed, *(r.pk for r in change.reindexed)]
                        )
                        change.generation = ctx.store.bump_generation(session, changed)
                    matcher = ctx.store.matcher(session)
                    session.flush()
                    crash_point(f"{phase}:before-commit")
            except BaseException as exc:
                for relative in change.written if change else ():
                    with suppress(VoiceDBError, OSError):  # what cannot be removed is an orphan for `check`
                        ctx.objects.delete(relative)
                if isinstance(exc, IntegrityError):
                    raise LibraryError(
                        "another change to the same voice got there first; nothing was changed."
                    ) from exc
                raise
            crash_point(f"{phase}:committed")
            for relative in change.dropped:
                with suppress(VoiceDBError, OSError):  # a file left behind is an orphan for `check --repair`
                    ctx.objects.delete(relative)
                crash_point(f"{phase}:file-deleted")
            if change.rebuild_index:
                rebuild_quietly(ctx)
            elif change.generation is not None:
                for index in (index for index in ctx.indexes if index.space.used(matcher)):
                    vectors = [(row.pk, space_vector(row, matcher, index.space)) for row in change.reindexed]
                    index.apply(
                        change.generation,
                        matcher,
                        add=[(pk, vector.copy()) for pk, vector in vectors if vector is not None],
                        remove=[*change.unindexed, *(pk for pk, vector in vectors if vector is None)],
                    )

    # -- reading -----------------------------------------------------------------------------
    def row(self, session: Session, ref: str) -> VoiceRow:
        """A voice by exact id, exact name, or unique id prefix (at least ``MIN_PREFIX`` characters)."""
        ref = ref.strip()
        for column in (VoiceRow.id, VoiceRow.name):
            row = session.scalars(select(VoiceRow).where(column == ref).options(*WITH_FILES)).first()
            if row is not None:
                return row
        aliased = select(AliasRow.voice_pk).where(AliasRow.alias == ref)
        row = session.scalars(select(VoiceRow).where(VoiceRow.pk.in_(aliased)).options(*WITH_FILES)).first()
        if row is not None:
            return row
        if len(ref) >= MIN_PREFIX and re.fullmatch(r"[0-9a-f]+", ref):
            # a range, not LIKE: SQLite's case-insensitive LIKE cannot use the id index
            within = (VoiceRow.id >= ref, VoiceRow.id < ref + "g")  # "g" sorts after every hex digit
            prefixed = select(VoiceRow).where(*within).options(*WITH_FILES).limit(2)
            rows = session.scalars(prefixed).all()
            if len(rows) == 1:
                return rows[0]
            if len(rows) > 1:
                raise AmbiguousVoice(f"{ref!r} is the start of several voice ids; type more of it.")
        raise VoiceNotFound(f"no voice with id or name {ref!r} (see `voicedb list`).")

    def rows(self, session: Session) -> list[VoiceRow]:
        return list(session.scalars(select(VoiceRow).order_by(VoiceRow.pk).options(*WITH_FILES)))

    def list(
        self, *, limit: int | None = None, offset: int = 0, tag: str | None = None, name: str | None = None
    ) -> list[Voice]:
        """The voices passing the filters, oldest first; see ``voices``."""
        return list(self.voices(limit=limit, offset=offset, tag=tag, name=name))

    def voices(
        self, *, limit: int | None = None, offset: int = 0, tag: str | None = None, name: str | None = None
    ) -> Iterator[Voice]:
        """The voices passing the filters (``tag``: carries it; ``name``: matches the pattern, see
        ``like_glob``), oldest first, skipping ``offset`` and stopping after ``limit``.

        Filtering and paging happen in the database, ``PAGE_ROWS`` voices per query (each page after
        the first continues from the last primary key seen), so a million voices stream in bounded memory.
        """
        if (limit is not None and limit < 0) or offset < 0:
            raise VoiceDBError("limit and offset cannot be negative.")
        filtered = self._filtered(tag, name).order_by(VoiceRow.pk)
        last_pk, left = None, limit
        while left is None or left > 0:
            size = PAGE_ROWS if left is None else min(PAGE_ROWS, left)
            pks = filtered.limit(size)
            pks = pks.offset(offset) if last_pk is None else pks.where(VoiceRow.pk > last_pk)
            page = select(VoiceRow).where(VoiceRow.pk.in_(pks)).order_by(VoiceRow.pk)
            with self.ctx.store.session() as session:
                rows = session.scalars(page.options(*WITH_FILES, defer(VoiceRow.embedding))).all()
                found = [voice_record(row) for row in rows]
            yield from found
            if len(rows) < size:
                return
            last_pk = rows[-1].pk
            left = None if left is None else left - len(rows)

    def _filtered(self, tag: str | None, name: str | None) -> Select[tuple[int]]:
        """The primary keys of the voices passing the filters: SQLite finds them in ``ix_voices_listing``."""
        query = select(VoiceRow.pk)
        if tag is not None:
            query = query.where(self._has_tag(tag))
        if name is not None:
            pattern = like_glob(name)
            if self.ctx.store.engine.dialect.name == "sqlite":  # SQLite's LIKE ignores case already
                query = query.where(VoiceRow.name.like(pattern, escape="\\"))
            else:
                query = query.where(VoiceRow.name.ilike(pattern, escape="\\"))
        return query

    def _has_tag(self, tag: str) -> ColumnElement[bool]:
        """Whether a voice's JSON list of tags holds ``tag``, tested by the database."""
        sqlite = self.ctx.store.engine.dialect.name == "sqlite"
        elements = (func.json_each if sqlite else func.json_array_elements_text)(VoiceRow.tags).table_valued("value")
        holds = exists(select(1).select_from(elements).where(elements.c.value == tag))
        if not sqlite:
            return holds
        # a cheap text test first (the list is stored as json.dumps writes it): json_each runs on few rows
        stored = type_coerce(VoiceRow.tags, String)
        return and_(stored.like(f"%{like_literal(json.dumps(tag))}%", escape="\\"), holds)

    def get(self, ref: str) -> Voice:
        with self.ctx.store.session() as session:
            return voice_record(self.row(session, ref))

    def by_pks(self, pks: Sequence[int]) -> dict[int, tuple[str, str]]:
        """pk -> (id, name) for the given primary keys that exist."""
        with self.ctx.store.session() as session:
            found = session.execute(select(VoiceRow.pk, VoiceRow.id, VoiceRow.name).where(VoiceRow.pk.in_(pks)))
            return {pk: (voice_id, name) for pk, voice_id, name in found}

    def details(self, ref: str) -> dict[str, Any]:
        """Everything stored about a voice: what ``voicedb show`` prints."""
        with self.ctx.store.session() as session:
            row = self.row(session, ref)
            return {
                **voice_record(row).to_dict(),
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
                    {
                        "model": c.flavour,
                        "file": c.file,
                        "sha256": c.sha256,
                        "checkpoint": c.checkpoint,
                        "reference_clip": c.clip_sha256,
                    }
                    for c in row.conditionals
                ],
                "encoder": row.encoder,
            }

    def kept_clip(self, ref: str, sha256: str) -> Path:
        """A local file holding one of a voice's kept clips (by its SHA-256, as ``details`` lists them), to play."""
        with self.ctx.store.session() as session:
            row = self.row(session, ref)
            clip = next((c for c in row.clips if c.sha256 == sha256), None)
            if clip is None:
                raise VoiceNotFound(f"voice {row.id} has no kept clip {sha256[:12]!r}.")
            voice_id, relative = row.id, clip.file
        path = self.ctx.objects.fetch(relative, sha256)
        if path is None:
            raise LibraryError(f"kept clip {relative} of voice {voice_id} is missing or corrupt; run `voicedb check`.")
        return path

    def vector(self, ref: str) -> np.ndarray:
        """A voice's stored embedding (float32, (256,))."""
        with self.ctx.store.session() as session:
            return self.row(session, ref).vector.copy()

    def holder_of_clip(self, sha256: str, session: Session | None = None) -> str | None:
        """The id of the voice that already has this exact recording (one indexed lookup), if any."""
        if session is None:
            with self.ctx.store.session() as session:
                return self.holder_of_clip(sha256, session)
        return session.scalar(select(VoiceRow.id).join(ClipRow).where(ClipRow.sha256 == sha256))

    def refuse_duplicate_clips(self, shas: dict[str, str], session: Session | None = None) -> None:
        """``shas``: sha256 -> what to call the clip in the message. Raises ``DuplicateClip`` for the first held."""
        for sha, label in shas.items():
            if holder := self.holder_of_clip(sha, session):
                raise DuplicateClip(f"{label}: this exact recording is already enrolled in voice {holder}.")

    def check_name_free(self, name: str, session: Session | None = None) -> None:
        if session is None:
            with self.ctx.store.session() as session:
                return self.check_name_free(name, session)
        if session.scalar(select(func.count()).select_from(VoiceRow).where(VoiceRow.name == name)):
            raise NameTaken(
                f"a voice named {name!r} already exists; choose another name or use --voice to add clips to it."
            )
        if session.get(AliasRow, name) is not None:
            raise NameTaken(f"{name!r} is an alias of another voice; choose another name or `voicedb alias rm {name}`.")
        return None

    # -- changing ----------------------------------------------------------------------------
    def rename(self, ref: str, new_name: str) -> Voice:
        """Give a voice a new unique name; its id never changes."""
        new_name = check_name(new_name)
        with self.write("rename") as change:
            row = self.row(change.session, ref)
            if row.name != new_name:
                self.check_name_free(new_name, change.session)
                row.name, row.updated_at = new_name, utcnow()
            renamed = voice_record(row)
        return renamed

    def add_alias(self, alias: str, ref: str) -> Voice:
        """Make ``alias`` another name of voice ``ref`` (an alias already held by another voice moves to this
        one); refused where it is a voice's name, since a name must mean one voice."""
        alias = check_name(alias)
        with self.write("alias") as change:
            row = self.row(change.session, ref)
            if change.session.scalar(select(VoiceRow.id).where(VoiceRow.name == alias)) is not None:
                raise NameTaken(f"{alias!r} is the name of a voice; an alias cannot hide it.")
            held = change.session.get(AliasRow, alias)
            if held is None:
                row.aliases.append(AliasRow(alias=alias))
            elif held.voice_pk != row.pk:
                held.voice_pk = row.pk
                change.session.flush()
                change.session.expire(row, ["aliases"])
            aliased_voice = voice_record(row)
        return aliased_voice

    def remove_alias(self, alias: str) -> Voice:
        """Forget an alias; returns the voice it named."""
        with self.write("alias") as change:
            held = change.session.get(AliasRow, alias.strip())
            if held is None:
                raise VoiceNotFound(f"no alias {alias.strip()!r} (see `voicedb alias list`).")
            row = change.session.get(VoiceRow, held.voice_pk)
            row.aliases.remove(held)
            change.session.flush()
            voice = voice_record(row)
        return voice

    def aliases(self) -> dict[str, Voice]:
        """Every alias and the voice it names, by alias."""
        with self.ctx.store.session() as session:
            found = session.execute(
                select(AliasRow.alias, VoiceRow)
                .join(VoiceRow, VoiceRow.pk == AliasRow.voice_pk)
                .options(*WITH_FILES)
                .order_by(AliasRow.alias)
            ).all()
            return {alias: voice_record(row) for alias, row in found}

    def update_tags(self, ref: str, add: Sequence[str] = (), remove: Sequence[str] = ()) -> Voice:
        """Add and remove tags of a voice."""
        with self.write("tags") as change:
            row = self.row(change.session, ref)
            row.tags = sorted((set(row.tags or []) | set(add)) - set(remove))
            row.updated_at = utcnow()
            updated = voice_record(row)
        return updated

    def set_language(self, ref: str, language: str | None) -> Voice:
        """Set the language a voice speaks (a language id of ``flavours.languages()``); ``None`` clears it."""
        language = check_language(language)
        with self.write("language") as change:
            row = self.row(change.session, ref)
            if row.language != language:
                row.language, row.updated_at = language, utcnow()
            updated = voice_record(row)
        return updated

    def remove(self, refs: Sequence[str]) -> list[Voice]:
        """Delete voices -- rows, index entries, kept clips and conditionals -- all or none.

        Every reference is resolved before anything is deleted, so a typo removes nothing.
        """
        with self.write("rm") as change:
            rows = {}
            for ref in refs:
                row = self.row(change.session, ref)
                rows[row.pk] = row
            removed = []
            for row in rows.values():
                removed.append(voice_record(row))
                for stored in [*row.clips, *row.conditionals]:
                    change.drop_file(stored.file)
                change.unindex(row.pk)
                change.session.delete(row)
        return removed
