"""The FAISS index: derived data, rebuilt from SQLite whenever it is missing, stale or unreadable.

``index.faiss`` holds an inner-product index over L2-normalised 256-d float32 vectors (so scores are
cosine similarities) whose FAISS ids are the voices' integer primary keys. ``index.json`` beside it
records the library generation the index was built at; SQLite bumps that counter in the same
transaction as every change to a voice vector, so a mismatch means "stale: rebuild".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .faults import crash_point
from .files import atomic_path, atomic_write_bytes
from .store import EMBEDDING_DIM

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
