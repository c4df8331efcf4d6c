#!/usr/bin/env python
"""Index kinds at growing library sizes: query time, recall against exact search, build and load time, memory.

    python scripts/bench_match.py [--sizes 10000 100000 1000000] [--data clustered uniform] [--checkpoint DIR]

Two kinds of data, each with its own queries:

- ``clustered``: voices sampled around real voice embeddings (every clip in tests/data/speech, embedded by
  the checkpoint's voice encoder), as ReLU(centre + noise) normalised, like the encoder's non-negative
  outputs. The noise is calibrated so that two samples of one centre have the median cosine of two real
  clips of one speaker: the within-speaker spread. A library of N such voices is far more crowded than
  N real speakers (real different speakers score 0.39-0.75). Queries are new recordings of stored
  voices: a stored vector plus the same spread.
- ``uniform``: uniform random unit vectors and queries, the worst case for any approximate index.

Each size is searched by every index kind, built straight from the vectors with voicedb's own
parameters (``voicedb.index.new_index``):

- ``exact``: voicedb's exact kind, ``IndexIDMap2(IndexFlatIP)``; the reference for recall and speed;
- ``ivf``: voicedb's approximate kind, IVF-Flat (2 sqrt(N) lists, 2 sqrt(lists) probed);
- ``hnsw``: ``IndexHNSWFlat`` (M=32, efConstruction=40, efSearch=128), up to ``--hnsw-max`` voices;
- ``voicedb``: on clustered data, a library of N voices written to SQLite, its index rebuilt from there
  (the kind its size calls for), and ``VoiceDB.match_vector`` timed: search plus SQLite's checks and lookups.

``build s`` is building (and training) the index, from SQLite for ``voicedb``; ``load s`` is reading the
saved file in a fresh process's way (``faiss.read_index``); ``MB`` is the resident-set growth of loading it.
Query times are single top-10 queries through ``voicedb.index.search`` (one OpenMP thread); ``vs exact``
is exact's median over this one's, in the same run. With ``--checkpoint`` (default: the tests' cached
one) it also times speaker embedding per second of speech.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from benchutil import percentile, rss_mb

DIM = 256
ROOT = Path(__file__).resolve().parent.parent
SPEECH = ROOT / "tests" / "data" / "speech"
TEST_CHECKPOINT = ROOT / ".pytest_cache" / "d" / "voicedb-test-checkpoint"
K = 10
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 40, 128


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)


def around(centres: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    """One sample per row of ``centres``: ReLU(centre + spread * noise), normalised."""
    noisy = centres + spread * rng.standard_normal(centres.shape, dtype=np.float32)
    return unit(np.maximum(noisy, 0))


def real_embeddings(checkpoint: Path) -> tuple[np.ndarray, list[str], float]:
    """Embeddings of every clip under tests/data/speech, their speakers, and ms of compute per second of audio."""
    from voicedb.audio import load_clip
    from voicedb.engine import Checkpoint, Engine

    models = Engine(Checkpoint(checkpoint))
    paths = sorted(SPEECH.glob("*.flac"))
    clips = [load_clip(p) for p in paths]
    models.embed(clips[0].wav_16k)  # load and warm up
    start = time.perf_counter()
    vectors = np.stack([models.embed(c.wav_16k) for c in clips])
    per_second = (time.perf_counter() - start) / sum(len(c.wav_24k) / 24_000 for c in clips)
    return vectors, [p.stem.rsplit("_", 1)[0] for p in paths], per_second * 1000


def within_speaker_spread(vectors: np.ndarray, speakers: list[str]) -> tuple[float, float]:
    """(median same-speaker cosine of the real clips, the noise scale whose samples of one centre match it)."""
    same = [
        float(vectors[i] @ vectors[j])
        for i in range(len(speakers))
        for j in range(i + 1, len(speakers))
        if speakers[i] == speakers[j]
    ]
    target = statistics.median(same)
    centres = np.repeat(vectors, 200, axis=0)
    low, high = 0.0, 0.2
    for _ in range(20):  # the cosine falls as the noise grows: bisect
        spread = (low + high) / 2
        rng = np.random.default_rng(0)
        cosine = float(np.median(np.sum(around(centres, spread, rng) * around(centres, spread, rng), axis=1)))
        low, high = (spread, high) if cosine > target else (low, spread)
    return target, (low + high) / 2


def dataset(kind: str, n: int, queries: int, centres: np.ndarray, spread: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n)
    if kind == "uniform":
        return unit(rng.standard_normal((n, DIM), dtype=np.float32)), unit(rng.standard_normal((queries, DIM)))
    vectors = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):
        rows = np.arange(start, min(n, start + 100_000))
        vectors[rows] = around(centres[rows % len(centres)], spread, rng)
    return vectors, around(vectors[rng.integers(0, n, queries)], spread, rng)


def trimmed_rss_mb() -> float:
    """Resident memory after returning freed heap pages to the system, so that growth is not hidden."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_mb()


def query_times_ms(search, queries: np.ndarray) -> list[float]:
    search(queries[0])  # warm up
    times = []
    for query in queries:
        start = time.perf_counter()
        search(query)
        times.append((time.perf_counter() - start) * 1000)
    return times


def recall(found: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """(recall@1, recall@10): the share of exact top-1 found first, and of exact top-10 found in the top 10."""
    at_1 = float(np.mean(found[:, 0] == exact[:, 0]))
    at_k = float(np.mean([len(set(f) & set(e)) / K for f, e in zip(found, exact)]))
    return at_1, at_k


def measure_kind(index_of, queries: np.ndarray, scratch: Path) -> tuple[dict[str, float], np.ndarray]:
    """Build, save and reload one index; time its queries. Returns the figures and its top-10 ids per query."""
    import faiss

    from voicedb.index import search

    start = time.perf_counter()
    index = index_of()
    row = {"build_s": time.perf_counter() - start}
    faiss.write_index(index, str(scratch))
    del index
    base = trimmed_rss_mb()
    start = time.perf_counter()
    index = faiss.read_index(str(scratch))
    row["load_s"] = time.perf_counter() - start
    row["mb"] = trimmed_rss_mb() - base
    scratch.unlink()
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = HNSW_EF_SEARCH
    elif isinstance(index, faiss.IndexIVF):
        from voicedb.index import ivf_probes

        index.nprobe = ivf_probes(index.nlist)  # as voicedb sets it when it loads the file
    times = query_times_ms(lambda q: search(index, q, K), queries)
    row["median_ms"], row["p95_ms"] = statistics.median(times), percentile(times, 95)
    return row, index.search(queries, K)[1]


def fill_library(home: Path, vectors: np.ndarray) -> None:
    """Write N voice rows straight through SQLAlchemy Core (setup only; not what is measured).
    Voice ``i`` gets primary key ``i + 1`` and id ``f"{i:08x}"``."""
    from sqlalchemy import insert

    from voicedb import VoiceDB
    from voicedb.store import MetaRow, VoiceRow, utcnow

    db = VoiceDB(home)
    now = utcnow()
    with db.context.store.session() as session:
        for start in range(0, len(vectors), 50_000):
            chunk = vectors[start : start + 50_000]
            session.execute(
                insert(VoiceRow),
                [
                    {
                        "pk": start + i + 1,
                        "id": f"{start + i:08x}",
                        "name": f"voice-{start + i}",
                        "tags": [],
                        "embedding": v.tobytes(),
                        "encoder": "bench",
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i, v in enumerate(chunk)
                ],
            )
        session.merge(MetaRow(key="generation", value="1"))
    db.close()


def measure_voicedb(vectors: np.ndarray, queries: np.ndarray) -> tuple[dict[str, float], np.ndarray, str]:
    """The library end to end: rebuild from SQLite, load in a fresh ``VoiceDB``, ``match_vector``."""
    from voicedb import VoiceDB

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        fill_library(home, vectors)
        db = VoiceDB(home)
        start = time.perf_counter()
        with db.context.writer.held():
            db.context.index.rebuild()
        row = {"build_s": time.perf_counter() - start}
        kind = db.context.index.files.stamp()["kind"]
        db.close()
        db = VoiceDB(home)
        base = trimmed_rss_mb()
        start = time.perf_counter()
        db.context.index.search(queries[0], 1)  # the first search loads index.faiss
        row["load_s"] = time.perf_counter() - start
        row["mb"] = trimmed_rss_mb() - base
        times = query_times_ms(lambda q: db.match_vector(q, k=K), queries)
        row["median_ms"], row["p95_ms"] = statistics.median(times), percentile(times, 95)
        found = np.array([[int(m.id, 16) for m in db.match_vector(q, k=K)] for q in queries])
        db.close()
    return row, found, kind


def print_row(
    data: str, n: int, kind: str, row: dict[str, float], exact_ms: float, recalls: tuple[float, float]
) -> None:
    print(
        f"{data:>9} | {n:>9,} | {kind:>12} | {row['build_s']:>7.2f} | {row['load_s']:>6.2f} | {row['mb']:>7.0f} | "
        f"{row['mb'] / n * 1e6:>6.0f} | {row['median_ms']:>9.3f} | {row['p95_ms']:>7.3f} | "
        f"{exact_ms / row['median_ms']:>7.1f}x | {recalls[0]:>8.3f} | {recalls[1]:>9.3f}",
        flush=True,
    )


def bench(data: str, n: int, args: argparse.Namespace, centres: np.ndarray, spread: float, scratch: Path) -> None:
    import faiss

    from voicedb.index import new_index

    vectors, queries = dataset(data, n, args.queries, centres, spread)
    pks = np.arange(n, dtype=np.int64)
    exact_row, exact = measure_kind(lambda: new_index(pks, vectors, exact_max=n), queries, scratch)
    exact_ms = exact_row["median_ms"]
    print_row(data, n, "exact", exact_row, exact_ms, (1.0, 1.0))
    row, found = measure_kind(lambda: new_index(pks, vectors, exact_max=0), queries, scratch)
    print_row(data, n, "ivf", row, exact_ms, recall(found, exact))
    if n <= args.hnsw_max:

        def hnsw() -> object:
            index = faiss.IndexHNSWFlat(DIM, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            index.add(vectors)
            return index

        row, found = measure_kind(hnsw, queries, scratch)
        print_row(data, n, "hnsw", row, exact_ms, recall(found, exact))
    if data == "clustered":
        row, found, kind = measure_voicedb(vectors, queries)
        print_row(data, n, f"voicedb:{kind}", row, exact_ms, recall(found, exact))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--data", nargs="+", choices=["clustered", "uniform"], default=["clustered", "uniform"])
    parser.add_argument("--queries", type=int, default=200, help="queries per size (default 200)")
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="largest size to build HNSW for")
    parser.add_argument("--checkpoint", type=Path, default=TEST_CHECKPOINT, help="checkpoint dir with ve.safetensors")
    args = parser.parse_args()
    import faiss

    from voicedb.config import index_exact_max

    embeddings, speakers, embed_ms = real_embeddings(args.checkpoint)
    same_cosine, spread = within_speaker_spread(embeddings, speakers)
    print(
        f"faiss {faiss.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} (faiss uses {faiss.omp_get_max_threads()}), "
        f"top-{K}, {args.queries} queries; voicedb switches to IVF above {index_exact_max():,} voices\n"
        f"clustered: around {len(embeddings)} real clip embeddings of {len(set(speakers))} speakers, spread "
        f"{spread:.4f} per dimension (two samples of one centre: median cosine {same_cosine:.3f}, as two real "
        f"clips of one speaker)"
    )
    print(
        f"{'data':>9} | {'voices':>9} | {'index':>12} | {'build s':>7} | {'load s':>6} | {'MB':>7} | {'MB/1M':>6} | "
        f"{'median ms':>9} | {'p95 ms':>7} | {'vs exact':>8} | {'recall@1':>8} | {'recall@10':>9}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.data:
            for n in args.sizes:
                bench(data, n, args, embeddings, spread, Path(tmp) / "index.faiss")
    print(
        f"\nspeaker embedding: {embed_ms:.1f} ms of compute per second of audio "
        f"({len(embeddings)} clips of real speech, {1000 / embed_ms:.0f}x real time)"
    )


if __name__ == "__main__":
    main()
