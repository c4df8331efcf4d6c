"""The FAISS index: derived data, rebuilt from SQLite whenever it is missing, stale or unreadable.

``index.faiss`` holds an inner-product index over the voices' unit vectors by the library's matcher
(``matchers``: 256-d for the Chatterbox encoder, 192-d for CAM++, their fusion 448-d), so scores are
cosine similarities (or, fused, the mean of the encoders' cosines); its FAISS ids are the voices'
integer primary keys. Its kind follows the
library's size: exact (``IndexIDMap2(IndexFlatIP)``) up to ``config.index_exact_max()`` voices, IVF-Flat
above, whose lists keep the full vectors, so each candidate it visits gets its exact cosine and only
a voice in a list it does not visit can be missed. ``index.json`` beside it records the library
generation the index was built at (SQLite bumps that counter in the same transaction as every change
to a voice vector or to the matcher, so a mismatch means "stale: rebuild"), its size, kind and matcher.

A second index, ``index-chatterbox.faiss`` (the ``FALLBACK`` space), holds the voices the library's matcher
cannot compare (no kept clips, so no CAM++ vector: a ``.pt`` import, an embedding-only voice) by the
Chatterbox embedding every voice has; ``matching`` puts its scores on the matcher's scale before ranking.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import config
from .faults import crash_point
from .files import atomic_path, atomic_write_bytes
from .matchers import CHATTERBOX, DIMENSIONS, LEGACY_MATCHER, dimension, encoders_of

if TYPE_CHECKING:
    from .locks import WriterLock
    from .store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Space:
    """Which vectors an index holds: the library matcher's (``PRIMARY``), or Chatterbox's embedding of the
    voices the matcher cannot compare (``FALLBACK``; always empty for the ``chatterbox`` matcher, which
    compares every voice)."""

    #: The index files are ``<stem>.faiss`` and ``<stem>.json``.
    stem: str

    @property
    def fallback(self) -> bool:
        return self is FALLBACK

    def key(self, matcher: str) -> str:
        """What the index's stamp records, so that an index built for another matcher is never used."""
        return f"{CHATTERBOX} beside {matcher}" if self.fallback else matcher

    def dimension(self, matcher: str) -> int:
        return DIMENSIONS[CHATTERBOX] if self.fallback else dimension(matcher)

    def used(self, matcher: str) -> bool:
        """Whether this space can hold any voice under ``matcher``."""
        return not self.fallback or encoders_of(matcher) != (CHATTERBOX,)

    def vectors(
        self, store: Store, session: Any, matcher: str, voices: Collection[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The (pks, vectors) this space holds of every voice, or of ``voices`` only."""
        if self.fallback:
            return store.fallback_vectors(session, matcher, voices)
        return store.all_vectors(session, matcher, voices)


PRIMARY = Space("index")
FALLBACK = Space("index-chatterbox")

FLAT = "flat"
IVF = "ivf"

#: k-means wants this many training vectors per IVF list (FAISS warns on stderr below 39).
TRAINING_PER_LIST = 40
#: Ten k-means rounds instead of FAISS's 25: the same recall at a million voices, 2.5x less training.
TRAINING_ROUNDS = 10


def kind_for(count: int, exact_max: int) -> str:
    """The index kind a library of ``count`` voices should have."""
    return FLAT if count <= exact_max else IVF


def kind_of(index: Any) -> str:
    import faiss

    return IVF if isinstance(index, faiss.IndexIVF) else FLAT


def ivf_lists(count: int) -> int:
    """2 sqrt(N) lists: at a million voices, training and filling take 17 s (4 sqrt(N): 49 s, for a query
    20% faster) and a query scans about 7% of the vectors; never fewer than ``TRAINING_PER_LIST`` per list."""
    return max(1, min(round(2 * math.sqrt(count)), count // TRAINING_PER_LIST))


def ivf_probes(lists: int) -> int:
    """Lists visited per query: 2 sqrt(lists) gave recall@1 1.000 against exact search on clustered voices
    from 10k to 1M (``scripts/bench_match.py``); 1.5 sqrt(lists) lost recall@10 (0.97 at 1M)."""
    return min(lists, math.ceil(2 * math.sqrt(lists)))


def misfit(index: Any, exact_max: int) -> str | None:
    """Why ``index`` is not the kind its size calls for, or ``None`` when it is. An IVF index has
    outgrown its training once the size calls for twice its lists (four times the voices)."""
    count, kind = index.ntotal, kind_of(index)
    wanted = kind_for(count, exact_max)
    if kind != wanted:
        return f"is {kind} but {count} voices call for {wanted} (exact up to {exact_max})"
    if kind == IVF and 2 * index.nlist < ivf_lists(count):
        return f"was trained with {index.nlist} lists but {count} voices call for {ivf_lists(count)}"
    return None


def new_index(pks: np.ndarray, vectors: np.ndarray, exact_max: int | None = None) -> Any:
    """The index of the kind ``len(pks)`` calls for, over ``vectors`` with ids ``pks``; IVF is trained
    on these vectors. ``exact_max`` defaults to the configured switch size."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    ids = pks.astype(np.int64)
    if exact_max is None:
        exact_max = config.index_exact_max()
    if kind_for(len(pks), exact_max) == FLAT:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    else:
        lists = ivf_lists(len(pks))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = TRAINING_ROUNDS
        sample = np.random.default_rng(0).choice(len(pks), min(len(pks), lists * TRAINING_PER_LIST), replace=False)
        index.train(vectors[np.sort(sample)])
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # removal and reconstruction by id
        index.nprobe = ivf_probes(lists)
    if len(pks):
        index.add_with_ids(vectors, ids)
    return index


def update(index: Any, add: Iterable[tuple[int, np.ndarray]], remove: Iterable[int]) -> None:
    """Remove voices ``remove`` and put ``add``'s vectors in place: a voice already indexed (or named twice)
    keeps only its last vector. One call each for removing and adding, however many voices change."""
    latest = dict(add)
    added = np.fromiter(latest, dtype=np.int64, count=len(latest))
    gone = np.concatenate([np.fromiter(remove, dtype=np.int64), added])
    if len(gone):
        index.remove_ids(gone)
    if len(added):
        index.add_with_ids(np.stack([np.asarray(v, dtype=np.float32) for v in latest.values()]), added)


@dataclass
class IndexFiles:
    """The on-disk index of one space (``PRIMARY`` by default) of one library directory."""

    home: Path
    space: Space = PRIMARY

    @property
    def index_path(self) -> Path:
        return self.home / f"{self.space.stem}.faiss"

    @property
    def stamp_path(self) -> Path:
        return self.home / f"{self.space.stem}.json"

    def writable(self) -> bool:
        import os

        return os.access(self.home, os.W_OK)

    def stamp(self) -> dict[str, Any] | None:
        """Generation, count, kind and matcher of the saved index (older stamps: flat, Chatterbox)."""
        try:
            stamp = json.loads(self.stamp_path.read_text())
            return {
                "generation": int(stamp["generation"]),
                "count": int(stamp["count"]),
                "kind": str(stamp.get("kind", FLAT)),
                "matcher": str(stamp.get("matcher", LEGACY_MATCHER)),
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def load(self, generation: int, matcher: str) -> Any | None:
        """The saved index if it was built at ``generation`` for ``matcher`` and reads back whole, else ``None``."""
        saved = self.load_saved(matcher)
        return saved[0] if saved is not None and saved[1] == generation else None

    def load_saved(self, matcher: str) -> tuple[Any, int] | None:
        """(index, generation) of the saved index if it was built for ``matcher`` and reads back whole."""
        import faiss

        stamp = self.stamp()
        if stamp is None or stamp["matcher"] != self.space.key(matcher) or not self.index_path.exists():
            return None
        try:
            index = faiss.read_index(str(self.index_path))
        except (RuntimeError, OSError, ValueError):
            return None
        expected = (stamp["count"], self.space.dimension(matcher), stamp["kind"])
        if (index.ntotal, index.d, kind_of(index)) != expected:
            return None
        if kind_of(index) == IVF:
            index.nprobe = ivf_probes(index.nlist)  # this code's setting, not the one saved with the file
        return index, stamp["generation"]

    def save(self, index: Any, generation: int, matcher: str) -> None:
        """Write the index, then its stamp; a crash between the two only makes it look stale."""
        import faiss

        with atomic_path(self.index_path) as temp:
            faiss.write_index(index, str(temp))
        crash_point("index:written")
        stamp = {
            "generation": generation,
            "count": index.ntotal,
            "kind": kind_of(index),
            "matcher": self.space.key(matcher),
        }
        atomic_write_bytes(self.stamp_path, json.dumps(stamp).encode())


def search(index: Any, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
    """(primary key, cosine score) of the ``k`` nearest voices, best first.

    One query runs on one OpenMP thread (a per-thread setting, restored after): threads gain it nothing,
    and on a busy 2-core machine their barrier turned a 0.14 ms exact search of 10,000 voices into 12 ms.
    """
    import faiss

    if index.ntotal == 0 or k <= 0:
        return []
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        scores, ids = index.search(np.asarray(vector, dtype=np.float32).reshape(1, -1), min(k, index.ntotal))
    finally:
        faiss.omp_set_num_threads(threads)
    return [(int(pk), float(score)) for pk, score in zip(ids[0], scores[0]) if pk != -1]


class VoiceIndex:
    """The library's index as this process sees it: loaded once, reused while the generation holds, and
    brought forward when another writer (another process, another machine) moved it on, by applying only
    the voices the store's change log names since this index's generation; rebuilt from the store when
    the log cannot say (this process fell too far behind, or a change too big to list).

    One lock guards the loaded index, so searches never see it half-updated. Its kind is chosen when
    it is built from the store: a change that takes the library across ``exact_max`` voices, either
    way, or past what an IVF index was trained for, rebuilds it.
    """

    def __init__(
        self,
        files: IndexFiles,
        store: Store,
        writer: WriterLock,
        on_change: Callable[[set[int] | None], None] | None = None,
    ) -> None:
        """``on_change`` hears which voices another process changed (``None``: any of them) once this index
        catches up with it, so caches of their other data can be dropped."""
        self.files = files
        self.space = files.space
        self.store = store
        self.writer = writer
        self.exact_max = config.index_exact_max()
        self._on_change = on_change
        self._lock = threading.Lock()
        self._index: Any = None
        self._generation = -1
        self._matcher: str | None = None

    def _current(self, rebuild: bool) -> Any:
        """The index at the store's current generation (caller holds ``_lock``)."""
        with self.store.session() as session:
            generation = self.store.generation(session)
            matcher = self.store.matcher(session)
            if not rebuild and self._index is not None and (self._generation, self._matcher) == (generation, matcher):
                return self._index
            had_index = self._index is not None
            found = None if rebuild else self._caught_up(session, generation, matcher)
            if found is None:
                index, moved = self._built(session, matcher), True
                if had_index and self._on_change:
                    self._on_change(None)
            else:
                index, moved = found
        self._index, self._generation, self._matcher = index, generation, matcher
        if moved:
            self._save_if_possible(index, generation, matcher)
        return index

    def _caught_up(self, session: Any, generation: int, matcher: str) -> tuple[Any, bool] | None:
        """(index at ``generation``, whether it moved): the one in memory or on disk, brought forward by the
        change log; ``None`` when neither can be (then the caller rebuilds)."""
        if self._index is not None and self._matcher == matcher and self._generation <= generation:
            index, since = self._index, self._generation
        else:
            saved = self.files.load_saved(matcher)
            if saved is None or saved[1] > generation:
                return None
            index, since = saved
        if since == generation:
            return index, False
        changed = self.store.changed_since(session, since, generation)
        if changed is None:
            return None
        pks, vectors = self.space.vectors(self.store, session, matcher, changed)
        update(index, zip(pks.tolist(), vectors), changed)
        if misfit(index, self.exact_max):
            return None
        if self._on_change:
            self._on_change(changed)
        return index, True

    def _save_if_possible(self, index: Any, generation: int, matcher: str) -> None:
        """Persist a rebuilt index when no writer is busy; readers must not fail on a read-only library. An empty
        fallback index is not worth a file: a reader never adds one to a library (a refused change leaves
        the directory as it was)."""
        if not self.files.writable() or (self.space.fallback and index.ntotal == 0):
            return
        with self.writer.try_held() as free:
            if free:
                with self.store.session() as session:
                    if self.store.generation(session) == generation:
                        self.files.save(index, generation, matcher)

    def search(self, vector: np.ndarray, k: int, rebuild: bool = False) -> list[tuple[int, float]]:
        """(primary key, cosine score) of the ``k`` nearest voices, best first."""
        with self._lock:
            return search(self._current(rebuild), vector, k)

    def apply(
        self, generation: int, matcher: str, add: Iterable[tuple[int, np.ndarray]] = (), remove: Iterable[int] = ()
    ) -> None:
        """Apply one committed change (caller holds the writer lock); ``add`` holds ``matcher`` vectors.

        Never raises: the change is already committed, and an index that could not be updated only
        looks stale (its stamp lags the generation), so the next reader rebuilds it from the store.
        """
        try:
            with self._lock:
                self._apply(generation, matcher, add, remove)
        except Exception:  # noqa: BLE001 - derived data; the stamp makes the next reader rebuild it
            log.warning("could not update the index; it will be rebuilt", exc_info=True)
            with self._lock:
                self._index, self._generation, self._matcher = None, -1, None

    def _apply(
        self, generation: int, matcher: str, add: Iterable[tuple[int, np.ndarray]], remove: Iterable[int]
    ) -> None:
        if self._index is not None and (self._generation, self._matcher) == (generation - 1, matcher):
            index = self._index
            update(index, add, remove)
            if misfit(index, self.exact_max):  # no longer the kind its size calls for: rebuild from the truth
                with self.store.session() as session:
                    index = self._built(session, matcher)
        else:  # from the saved file and the change log (which holds this change too), or rebuilt
            with self.store.session() as session:
                found = self._caught_up(session, generation, matcher)
                index = found[0] if found is not None else self._built(session, matcher)
        self._index, self._generation, self._matcher = index, generation, matcher
        self.files.save(index, generation, matcher)

    def rebuild(self) -> None:
        """Rebuild from the store and save (caller holds the writer lock): ``check --repair``, a new matcher."""
        with self._lock, self.store.session() as session:
            generation = self.store.generation(session)
            matcher = self.store.matcher(session)
            index = self._built(session, matcher)
            self.files.save(index, generation, matcher)
            self._index, self._generation, self._matcher = index, generation, matcher

    def _built(self, session: Any, matcher: str) -> Any:
        """A new index of this space from the store (the truth)."""
        pks, vectors = self.space.vectors(self.store, session, matcher)
        return new_index(pks, vectors.reshape(len(pks), self.space.dimension(matcher)), self.exact_max)

    def size(self) -> int:
        """How many voices the index holds (loaded or rebuilt as ``search`` would)."""
        with self._lock:
            return self._current(rebuild=False).ntotal
