"""The database through SQLAlchemy 2: the source of truth for voices, clips, conditionals and embeddings.

A ``Store`` is built from a SQLAlchemy URL: a SQLite file by default (``sqlite_url``), where the
SQLite pragmas, WAL mode and the immediate-transaction listener apply; other databases get none of
those, so a PostgreSQL store needs only its URL.

The schema is created and upgraded only by the Alembic migrations shipped as ``voicedb.migrations``
(top-level ``migrations/`` in the source tree). Alembic is imported only when the database is not
already at the head revision, so opening an up-to-date library stays fast.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from sqlalchemy import (
    JSON,
    ColumnElement,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, aliased, mapped_column, relationship, sessionmaker

from .errors import LibraryError
from .matchers import CHATTERBOX, DIMENSIONS, LEGACY_MATCHER, MATCHER_KEY, encoders_of, fuse

#: The Alembic revision this code expects; a test checks it is the head of ``migrations/versions``.
SCHEMA_HEAD = "0006_aliases_and_blends"
EMBEDDING_DIM = 256
BUSY_TIMEOUT_MS = 30_000
WAL_ATTEMPTS = 100
#: Generations the change log keeps: a process further behind than this rebuilds its index instead.
CHANGE_LOG_GENERATIONS = 1000
#: Connections a PostgreSQL store keeps open (a server's request threads share them), and how many more it may open.
POOL_SIZE = 10
POOL_OVERFLOW = 20


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


class Base(DeclarativeBase):
    pass


class VoiceRow(Base):
    """One speaker. ``pk`` doubles as the FAISS id; ``id`` is the short public id users type."""

    __tablename__ = "voices"
    #: ``list`` pages and filters in pk order over this narrow copy rather than the 1 KB-a-row table.
    __table_args__ = (Index("ix_voices_listing", "pk", "name", "tags"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(16), unique=True, index=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, index=True)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: Mean of the clips' embeddings, L2-normalised: float32 bytes of shape (256,).
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    #: SHA-256 of the voice-encoder weights that produced ``embedding``.
    encoder: Mapped[str] = mapped_column(String(64))
    #: The language id the voice speaks (one of ``flavours.languages()``, lowercase), if known.
    language: Mapped[str | None] = mapped_column(String(16), nullable=True, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    clips: Mapped[list[ClipRow]] = relationship(
        back_populates="voice", cascade="all, delete-orphan", order_by="ClipRow.pk"
    )
    conditionals: Mapped[list[ConditionalsRow]] = relationship(
        back_populates="voice", cascade="all, delete-orphan", order_by="ConditionalsRow.pk"
    )
    match_vectors: Mapped[list[VoiceVectorRow]] = relationship(cascade="all, delete-orphan")
    aliases: Mapped[list[AliasRow]] = relationship(cascade="all, delete-orphan", order_by="AliasRow.alias")
    #: For a blend: ``{"sources": [{"id", "name", "weight"}]}``, the voices it was interpolated from.
    blend: Mapped[dict | None] = mapped_column(JSON, nullable=True, default=None)

    @property
    def vector(self) -> np.ndarray:
        return np.frombuffer(self.embedding, dtype=np.float32)


class ClipRow(Base):
    """A reference recording, copied into the library under its content hash."""

    __tablename__ = "clips"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    voice_pk: Mapped[int] = mapped_column(ForeignKey("voices.pk", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    #: Path of the kept copy, relative to the library directory.
    file: Mapped[str] = mapped_column(String(500))
    source_name: Mapped[str] = mapped_column(String(500))
    duration_s: Mapped[float] = mapped_column(Float)
    speech_s: Mapped[float] = mapped_column(Float)
    sample_rate: Mapped[int] = mapped_column(Integer)
    #: This clip's own embedding (float32, 256), so the voice mean can be recomputed without audio.
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    added_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    voice: Mapped[VoiceRow] = relationship(back_populates="clips")
    match_vectors: Mapped[list[ClipVectorRow]] = relationship(cascade="all, delete-orphan")

    @property
    def vector(self) -> np.ndarray:
        return np.frombuffer(self.embedding, dtype=np.float32)


class EncoderVector:
    """One matching embedding by one speaker encoder (``matchers.ENCODERS``), computed from the speech only,
    unlike the conditionals' embeddings, which are exactly what upstream computes."""

    encoder: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: SHA-256 of the weights that produced ``vector``.
    checksum: Mapped[str] = mapped_column(String(64))
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class ClipVectorRow(EncoderVector, Base):
    """A clip's matching embedding by one encoder."""

    __tablename__ = "clip_vectors"

    clip_pk: Mapped[int] = mapped_column(ForeignKey("clips.pk", ondelete="CASCADE"), primary_key=True)


class VoiceVectorRow(EncoderVector, Base):
    """A voice's matching embedding by one encoder: the L2-normalised mean of its clips'.

    A voice without one for the Chatterbox encoder (imported as an embedding only, or enrolled before
    matching vectors existed) is matched by its conditionals embedding instead."""

    __tablename__ = "voice_vectors"

    voice_pk: Mapped[int] = mapped_column(ForeignKey("voices.pk", ondelete="CASCADE"), primary_key=True)


class ConditionalsRow(Base):
    """Saved Chatterbox conditionals of one voice for one model flavour."""

    __tablename__ = "conditionals"
    __table_args__ = (UniqueConstraint("voice_pk", "flavour"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    voice_pk: Mapped[int] = mapped_column(ForeignKey("voices.pk", ondelete="CASCADE"), index=True)
    flavour: Mapped[str] = mapped_column(String(32))
    file: Mapped[str] = mapped_column(String(500))
    sha256: Mapped[str] = mapped_column(String(64))
    #: Fingerprint of the checkpoint the conditionals were computed with.
    checkpoint: Mapped[str] = mapped_column(String(200))
    #: The clip the speech prompt and S3Gen reference came from (``None`` when imported).
    clip_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    voice: Mapped[VoiceRow] = relationship(back_populates="conditionals")


class AliasRow(Base):
    """Another name a voice answers to, such as ``alloy`` for clients that only send OpenAI's voice names."""

    __tablename__ = "aliases"

    alias: Mapped[str] = mapped_column(String(200), primary_key=True)
    voice_pk: Mapped[int] = mapped_column(ForeignKey("voices.pk", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class MetaRow(Base):
    """Small key/value facts about the library, such as the index generation counter."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(500))


class ChangeRow(Base):
    """One voice whose vectors a generation changed; ``voice_pk`` NULL means "too many: rebuild"."""

    __tablename__ = "changes"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    generation: Mapped[int] = mapped_column(Integer, index=True)
    voice_pk: Mapped[int | None] = mapped_column(Integer, nullable=True)


def _configure_sqlite(dbapi_connection, _record) -> None:
    # Let SQLAlchemy's BEGIN (below) start every transaction: pysqlite's own implicit transactions
    # leave DDL outside them, so a migration killed halfway would not roll back.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous = FULL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def migrations_dir() -> Path:
    from . import migrations

    return Path(migrations.__file__).parent


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _switch_to_wal(engine: Engine) -> None:
    """WAL mode is a persistent property of a SQLite file, set once under the caller's write lock:
    switching it on every connection races when several processes open a new library at once."""
    raw = engine.raw_connection()
    try:
        for _ in range(WAL_ATTEMPTS):  # a reader opening the new library at this moment makes the switch fail
            if raw.cursor().execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal":
                break
            time.sleep(0.1)
    finally:
        raw.close()


def upgrade_to_head(engine: Engine) -> None:
    """Run every pending Alembic migration in one transaction (SQLite: switched to WAL mode first)."""
    from alembic import command
    from alembic.config import Config

    from .faults import crash_point

    if engine.dialect.name == "sqlite":
        _switch_to_wal(engine)
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        crash_point("migrate:before-commit")


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {script.revision for script in ScriptDirectory(str(migrations_dir())).walk_revisions()}


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite database file.

    An existing database in a directory this process cannot write (a read-only library), with no
    ``-wal`` file beside it (so no writer has it open), is opened read-only and immutable: SQLite
    cannot open a WAL-mode database otherwise, since it would have to create its ``-shm`` file.
    """
    if path.is_file() and not os.access(path.parent, os.W_OK) and not path.with_name(f"{path.name}-wal").exists():
        from sqlalchemy.engine import URL

        query = {"mode": "ro", "immutable": "1", "uri": "true"}
        return URL.create("sqlite", database=path.resolve().as_uri(), query=query).render_as_string(False)
    return f"sqlite:///{path}"


class Store:
    """An open database: sessions, the schema check, and the generation counter.

    Safe to share between threads: every ``session()`` takes its own pooled connection.
    """

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.engine = create_engine(self.url, **self._engine_options())
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _configure_sqlite)
            event.listen(self.engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN"))
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _engine_options(self) -> dict:
        if self.url.get_backend_name() == "sqlite":
            return {"connect_args": {"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}}
        return {"pool_pre_ping": True, "pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW, "pool_recycle": 1800}

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def revision(self) -> str | None:
        """The schema revision the database is at (``None``: no voicedb schema yet)."""
        try:
            return current_revision(self.engine)
        except (DatabaseError, OperationalError) as exc:
            reason = " ".join(str(exc.orig).split())  # drivers write several lines; errors here are one
            if isinstance(exc, OperationalError) and not self.is_sqlite:
                raise LibraryError(f"cannot reach database {self.name}: {reason}") from exc
            raise LibraryError(f"{self.name} is not a readable voicedb database ({reason}).") from exc

    @property
    def name(self) -> str:
        """What error messages call this database: the file for SQLite, the URL without password otherwise."""
        if self.url.get_backend_name() == "sqlite":
            return str(self.url.database)
        return self.url.render_as_string(hide_password=True)

    def needs_upgrade(self) -> bool:
        """True when migrations must run; refuses a database written by a newer voicedb."""
        revision = self.revision()
        if revision == SCHEMA_HEAD:
            return False
        if revision is not None and revision not in known_revisions():
            raise LibraryError(
                f"{self.name} was created by a newer voicedb (schema {revision}); upgrade voicedb to open it."
            )
        return True

    def upgrade(self) -> None:
        try:
            upgrade_to_head(self.engine)
        except (DatabaseError, OperationalError) as exc:
            raise LibraryError(f"cannot upgrade {self.name}: {' '.join(str(exc.orig).split())}") from exc

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose work is committed on success and rolled back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    def generation(self, session: Session) -> int:
        row = session.get(MetaRow, "generation")
        return int(row.value) if row else 0

    def bump_generation(self, session: Session, voice_pks: Iterable[int] | None = None) -> int:
        """Mark the vectors of ``voice_pks`` (``None``: of any voice) as changed, inside the caller's
        transaction, and log which, so other processes can update their index in place."""
        new = self.generation(session) + 1
        session.merge(MetaRow(key="generation", value=str(new)))
        pks = sorted(set(voice_pks)) if voice_pks is not None else []
        rows = [{"generation": new, "voice_pk": pk} for pk in pks] or [{"generation": new, "voice_pk": None}]
        session.execute(insert(ChangeRow), rows)
        session.execute(delete(ChangeRow).where(ChangeRow.generation <= new - CHANGE_LOG_GENERATIONS))
        return new

    def changed_since(self, session: Session, generation: int, current: int) -> set[int] | None:
        """The voices whose vectors changed after ``generation`` up to ``current``, or ``None`` when the log
        cannot say (pruned, from before the log existed, or a change too big to list): rebuild then."""
        rows = session.execute(
            select(ChangeRow.generation, ChangeRow.voice_pk).where(
                ChangeRow.generation > generation, ChangeRow.generation <= current
            )
        ).all()
        if len({found for found, _ in rows}) != current - generation or any(pk is None for _, pk in rows):
            return None
        return {pk for _, pk in rows}

    def matcher(self, session: Session) -> str:
        """The library's matcher (``matchers.MATCHERS``): what its index and ``match`` compare voices with."""
        row = session.get(MetaRow, MATCHER_KEY)
        return row.value if row else LEGACY_MATCHER

    def encoder_vectors(
        self,
        session: Session,
        encoder: str,
        where: ColumnElement[bool] | None = None,
        voices: Collection[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(pks int64 (n,), unit vectors float32 (n, d)) of the voices (of ``voices`` only, if given) that
        have a matching vector by ``encoder``; for the Chatterbox encoder, a voice without one is represented
        by its conditionals embedding (and ``where`` may narrow the voices)."""
        if encoder == CHATTERBOX:
            query = (
                select(VoiceRow.pk, func.coalesce(VoiceVectorRow.vector, VoiceRow.embedding))
                .outerjoin(
                    VoiceVectorRow, (VoiceVectorRow.voice_pk == VoiceRow.pk) & (VoiceVectorRow.encoder == encoder)
                )
                .where(true() if where is None else where)
                .order_by(VoiceRow.pk)
            )
            owner = VoiceRow.pk
        else:
            query = (
                select(VoiceVectorRow.voice_pk, VoiceVectorRow.vector)
                .where(VoiceVectorRow.encoder == encoder)
                .order_by(VoiceVectorRow.voice_pk)
            )
            owner = VoiceVectorRow.voice_pk
        if voices is not None:
            query = query.where(owner.in_(list(voices)))
        rows = session.execute(query).all()
        pks = np.fromiter((pk for pk, _ in rows), dtype=np.int64, count=len(rows))
        vectors = np.frombuffer(b"".join(blob for _, blob in rows), dtype=np.float32).reshape(-1, DIMENSIONS[encoder])
        return pks, vectors

    def all_vectors(
        self, session: Session, matcher: str | None = None, voices: Collection[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(pks int64 (n,), vectors float32 (n, d)) of every voice (of ``voices``, if given) the library's matcher
        (or ``matcher``) can compare: what the FAISS index is built from. With several encoders, voices lacking
        one are left out."""
        encoders = encoders_of(matcher or self.matcher(session))
        found = [self.encoder_vectors(session, encoder, voices=voices) for encoder in encoders]
        pks = found[0][0]
        for other, _ in found[1:]:
            pks = np.intersect1d(pks, other, assume_unique=True)
        parts = [vectors[np.searchsorted(own, pks)] for own, vectors in found]
        return pks, fuse(parts).reshape(len(pks), sum(DIMENSIONS[encoder] for encoder in encoders))

    def fallback_vectors(
        self, session: Session, matcher: str, voices: Collection[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like ``all_vectors`` for the voices ``matcher`` cannot compare (lacking a vector by one of its
        encoders other than Chatterbox's), by the Chatterbox embedding every voice has."""
        other = aliased(VoiceVectorRow)  # the query below joins VoiceVectorRow itself
        lacking = [
            ~exists().where(other.voice_pk == VoiceRow.pk, other.encoder == encoder)
            for encoder in encoders_of(matcher)
            if encoder != CHATTERBOX
        ]
        if not lacking:
            return np.empty(0, np.int64), np.empty((0, DIMENSIONS[CHATTERBOX]), np.float32)
        return self.encoder_vectors(session, CHATTERBOX, where=or_(*lacking), voices=voices)

    def close(self) -> None:
        self.engine.dispose()
