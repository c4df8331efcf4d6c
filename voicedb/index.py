"""The FAISS index: derived data, rebuilt from SQLite whenever it is missing, stale or unreadable.

``index.faiss`` holds an inner-product index over L2-normalised 256-d float32 vectors (so scores are
cosine similarities) whose FAISS ids are the voices' integer primary keys. ``index.json`` beside it
records the library generation the index was built at; SQLite bumps that counter in the same
transaction as every change to a voice vector, so a mismatch means "stale: rebuild".
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .faults import crash_point
from .files import atomic_path, atomic_write_bytes
from .store import EMBEDDING_DIM

if TYPE_CHECKING:
    from .locks import WriterLock
    from .store import Store

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
STAMP_FILE = "index.json"


def new_index(pks: np.ndarray, vectors: np.ndarray) -> Any:
    """An exact inner-product index (``IndexIDMap2(IndexFlatIP)``) over ``vectors`` with ids ``pks``."""
    import faiss

    index = faiss.IndexIDMap2(faiss.IndexFlatIP(EMBEDDING_DIM))
    if len(pks):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), pks.astype(np.int64))
    return index


@dataclass
class IndexFiles:
    """The on-disk index of one library directory."""

    home: Path

    @property
    def index_path(self) -> Path:
        return self.home / INDEX_FILE

    @property
    def stamp_path(self) -> Path:
        return self.home / STAMP_FILE

    def writable(self) -> bool:
        import os

        return os.access(self.home, os.W_OK)

    def stamp(self) -> dict[str, int] | None:
        try:
            stamp = json.loads(self.stamp_path.read_text())
            return {"generation": int(stamp["generation"]), "count": int(stamp["count"])}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def load(self, generation: int) -> Any | None:
        """The saved index if it was built at ``generation`` and reads back whole, else ``None``."""
        import faiss

        stamp = self.stamp()
        if stamp is None or stamp["generation"] != generation or not self.index_path.exists():
            return None
        try:
            index = faiss.read_index(str(self.index_path))
        except (RuntimeError, OSError, ValueError):
            return None
        if index.ntotal != stamp["count"] or index.d != EMBEDDING_DIM:
            return None
        return index

    def save(self, index: Any, generation: int) -> None:
        """Write the index, then its stamp; a crash between the two only makes it look stale."""
        import faiss

        with atomic_path(self.index_path) as temp:
            faiss.write_index(index, str(temp))
        crash_point("index:written")
        atomic_write_bytes(self.stamp_path, json.dumps({"generation": generation, "count": index.ntotal}).encode())


def search(index: Any, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
    """(primary key, cosine score) of the ``k`` nearest voices, best first."""
    if index.ntotal == 0 or k <= 0:
        return []
    scores, ids = index.search(np.asarray(vector, dtype=np.float32).reshape(1, -1), min(k, index.ntotal))
    return [(int(pk), float(score)) for pk, score in zip(ids[0], scores[0]) if pk != -1]


class VoiceIndex:
    """The library's index as this process sees it: loaded once, reused while the generation holds,
    reloaded or rebuilt from the store when another writer moved it on.

    One lock guards the loaded index, so searches never see it half-updated.
    """

    def __init__(self, files: IndexFiles, store: Store, writer: WriterLock) -> None:
        self.files = files
        self.store = store
        self.writer = writer
        self._lock = threading.Lock()
        self._index: Any = None
        self._generation = -1

    def _current(self, rebuild: bool) -> Any:
        """The index at the store's current generation (caller holds ``_lock``)."""
        with self.store.session() as session:
            generation = self.store.generation(session)
            if not rebuild and self._index is not None and self._generation == generation:
                return self._index
            index = None if rebuild else self.files.load(generation)
            if index is None:
                index = new_index(*self.store.all_vectors(session))
                self._save_if_possible(index, generation)
        self._index, self._generation = index, generation
        return index

    def _save_if_possible(self, index: Any, generation: int) -> None:
        """Persist a rebuilt index when no writer is busy; readers must not fail on a read-only library."""
        if not self.files.writable():
            return
        with self.writer.try_held() as free:
            if free:
                with self.store.session() as session:
                    if self.store.generation(session) == generation:
                        self.files.save(index, generation)

    def search(self, vector: np.ndarray, k: int, rebuild: bool = False) -> list[tuple[int, float]]:
        """(primary key, cosine score) of the ``k`` nearest voices, best first."""
        with self._lock:
            return search(self._current(rebuild), vector, k)

    def apply(self, generation: int, add: Iterable[tuple[int, np.ndarray]] = (), remove: Iterable[int] = ()) -> None:
        """Apply one committed change (caller holds the writer lock).

        Never raises: the change is already committed, and an index that could not be updated only
        looks stale (its stamp lags the generation), so the next reader rebuilds it from the store.
        """
        try:
            with self._lock:
                self._apply(generation, add, remove)
        except Exception:  # noqa: BLE001 - derived data; the stamp makes the next reader rebuild it
            log.warning("could not update the index; it will be rebuilt", exc_info=True)
            with self._lock:
                self._index, self._generation = None, -1

    def _apply(self, generation: int, add: Iterable[tuple[int, np.ndarray]], remove: Iterable[int]) -> None:
        if self._index is not None and self._generation == generation - 1:
            index = self._index
        else:
            index = self.files.load(generation - 1)
        if index is None:  # stale or missing: rebuild from the truth
            with self.store.session() as session:
                index = new_index(*self.store.all_vectors(session))
        else:
            removed = np.fromiter(remove, dtype=np.int64)
            if len(removed):
                index.remove_ids(removed)
            for pk, vector in add:
                index.remove_ids(np.array([pk], dtype=np.int64))
                index.add_with_ids(np.asarray(vector, dtype=np.float32).reshape(1, -1), np.array([pk], dtype=np.int64))
        self._index, self._generation = index, generation
        self.files.save(index, generation)

    def rebuild(self) -> None:
        """Rebuild from the store and save (caller holds the writer lock): ``check --repair``."""
        with self._lock, self.store.session() as session:
            generation = self.store.generation(session)
            index = new_index(*self.store.all_vectors(session))
            self.files.save(index, generation)
            self._index, self._generation = index, generation
