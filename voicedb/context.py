"""What every part of an open library shares: its directory, store, objects, writer lock, index and engine.

A library is its database (the truth) plus its objects (kept clips and conditionals). By default both
live in one directory: ``voicedb.sqlite`` and ``clips/``, ``conds/`` beside it, writers serialised by a
lock file. Beyond one machine the database is PostgreSQL (``database_url``: writers serialised by an
advisory lock, the schema migrated by ``voicedb db upgrade`` rather than on open) and the objects live
in object storage (``storage_url``); the directory then holds only this machine's derived data (its
FAISS index and its cache of downloaded objects), so no machine's disk is special.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import config
from .errors import LibraryError
from .index import FALLBACK, IndexFiles, VoiceIndex, new_index
from .locks import AdvisoryWriterLock, FileWriterLock, WriterLock
from .objects import Objects, open_objects
from .store import SCHEMA_HEAD, MetaRow, Store, sqlite_url

if TYPE_CHECKING:
    from .engine import Engine

DB_FILE = "voicedb.sqlite"
LOCK_FILE = ".lock"


class LibraryContext:
    """One open library. Thread-safe: the store hands each session its own connection, the writer
    lock serialises writers, the index and the engine guard their own caches."""

    def __init__(
        self,
        home: Path,
        *,
        checkpoint: Path | None = None,
        device: str | None = None,
        engine: Engine | None = None,
        database_url: str | None = None,
        storage_url: str | None = None,
    ) -> None:
        self.home = home
        self._checkpoint = checkpoint
        self._device = device
        self._engine = engine
        self._engine_lock = threading.Lock()
        try:
            home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LibraryError(f"cannot create library directory {home}: {exc.strerror}.") from exc
        if not home.is_dir():
            raise LibraryError(f"{home} is not a directory.")
        self.objects: Objects = open_objects(home, storage_url)
        self.store = Store(database_url or sqlite_url(home / DB_FILE))
        self.writer: WriterLock = (
            FileWriterLock(home / LOCK_FILE) if self.store.is_sqlite else AdvisoryWriterLock(self.store.engine)
        )
        #: Called with the primary keys of voices another process changed (``None``: any), once this one sees it.
        self.on_voices_changed: list[Callable[[set[int] | None], None]] = []
        self.index = VoiceIndex(IndexFiles(home), self.store, self.writer, self._voices_changed)
        #: The voices the matcher cannot compare, by their Chatterbox embedding (see ``index``).
        self.fallback_index = VoiceIndex(IndexFiles(home, FALLBACK), self.store, self.writer)
        self.indexes = (self.index, self.fallback_index)
        if self.store.needs_upgrade():
            if not self.store.is_sqlite:
                self.store.close()
                raise LibraryError(self.schema_behind())
            self._upgrade()

    def schema_behind(self) -> str:
        """Why a database whose schema is behind this voicedb cannot be used yet, and what to run."""
        revision = self.store.revision()
        state = "has no voicedb schema yet" if revision is None else f"has schema {revision}, not {SCHEMA_HEAD}"
        return f"database {self.store.name} {state}; run `voicedb db upgrade` (with the same --database-url) first."

    def _voices_changed(self, pks: set[int] | None) -> None:
        for listener in self.on_voices_changed:
            listener(pks)

    @property
    def description(self) -> dict[str, str]:
        """Where this library's parts are and its schema revision: what ``voicedb db status`` prints."""
        return {
            "database": self.store.name,
            "storage": self.objects.name,
            "home": str(self.home),
            "schema": self.store.revision() or "none",
        }

    @classmethod
    def upgrade_schema(cls, home: Path, database_url: str | None) -> tuple[str | None, str]:
        """Run the pending migrations (``voicedb db upgrade``): (revision before, revision after).
        On SQLite opening the library does it; on PostgreSQL only this does, under the writer lock."""
        store = Store(database_url or sqlite_url(home / DB_FILE))
        try:
            before = store.revision()
            if not store.is_sqlite and store.needs_upgrade():
                with AdvisoryWriterLock(store.engine).held():
                    if store.needs_upgrade():
                        store.upgrade()
        finally:
            store.close()
        if store.is_sqlite:
            cls(home).close()  # opening a SQLite library migrates it
        return before, SCHEMA_HEAD

    def _upgrade(self) -> None:
        self.require_writable()
        with self.writer.held():
            if self.store.needs_upgrade():
                self.store.upgrade()
            if not self.index.files.index_path.exists():
                with self.store.session() as session:
                    matcher = self.store.matcher(session)
                    pks, vectors = self.store.all_vectors(session, matcher)
                    self.index.files.save(new_index(pks, vectors), self.store.generation(session), matcher)

    @property
    def engine(self) -> Engine:
        """Chatterbox's networks, created lazily (listing voices never imports torch) and shared by
        every library of this process that uses the same checkpoint and device."""
        if self._engine is None:
            with self._engine_lock:
                if self._engine is None:
                    from .engine import shared_engine

                    self._engine = shared_engine(self._checkpoint, self._device or config.device_override())
        return self._engine

    def require_writable(self) -> None:
        if not os.access(self.home, os.W_OK):
            raise LibraryError(f"library directory {self.home} is not writable.")

    def library_encoder(self) -> str | None:
        """Checksum of the voice encoder the library's vectors come from (``None`` while empty)."""
        with self.store.session() as session:
            row = session.get(MetaRow, "encoder")
            return row.value if row else None

    def check_encoder(self, encoder: str) -> None:
        """Refuse to compare or mix embeddings from two different voice encoders (``encoder``: its SHA-256)."""
        stored = self.library_encoder()
        if stored is not None and stored != encoder:
            raise LibraryError(
                "the library's embeddings come from another voice-encoder checkpoint; "
                "run `voicedb check --repair` to re-embed them with this one."
            )

    def close(self) -> None:
        self.store.close()
