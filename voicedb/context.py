"""What every part of an open library shares: its directory, store, writer lock, index and engine."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from . import config
from .errors import LibraryError
from .index import FALLBACK, IndexFiles, VoiceIndex, new_index
from .locks import FileWriterLock, WriterLock
from .store import MetaRow, Store, sqlite_url

if TYPE_CHECKING:
    from .engine import Engine

DB_FILE = "voicedb.sqlite"
LOCK_FILE = ".lock"
CLIPS_DIR = "clips"
CONDS_DIR = "conds"


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
        self.store = Store(sqlite_url(home / DB_FILE))
        self.writer: WriterLock = FileWriterLock(home / LOCK_FILE)
        self.index = VoiceIndex(IndexFiles(home), self.store, self.writer)
        #: The voices the matcher cannot compare, by their Chatterbox embedding (see ``index``).
        self.fallback_index = VoiceIndex(IndexFiles(home, FALLBACK), self.store, self.writer)
        self.indexes = (self.index, self.fallback_index)
        if self.store.needs_upgrade():
            self._upgrade()

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

    def path(self, relative: str) -> Path:
        """The absolute path of a file the store names relative to the library directory."""
        return self.home / relative

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
