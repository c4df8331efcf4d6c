#!/usr/bin/env python
"""Match latency and memory at growing library sizes, against baselines measured in the same run.

    python scripts/bench_match.py [--sizes 1000 10000 100000 1000000] [--checkpoint DIR]

For each size N, a library of N voices with random unit vectors is written to a temp directory
(SQLite rows, then the FAISS index rebuilt from them), and one query is timed three ways:

- ``voicedb``: ``VoiceDB.match_vector`` -- FAISS search plus the SQLite lookup of ids and names;
- ``faiss``: a bare ``faiss.IndexFlatIP.search`` over the same vectors;
- ``numpy``: ``vectors @ query`` and ``argpartition``, the hand-written alternative.

Memory is the resident-set growth of holding the index (voicedb) or matrix (numpy). With
``--checkpoint`` it also times speaker embedding per second of real speech (tests/data/speech).
Times are medians over repeated queries; ratios are what to compare, since machines are noisy.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from benchutil import median_seconds, rss_mb

DIM = 256
SPEECH = Path(__file__).resolve().parent.parent / "tests" / "data" / "speech"


def random_unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def fill_library(home: Path, vectors: np.ndarray) -> None:
    """Write N voice rows straight through SQLAlchemy Core (setup only; not what is measured)."""
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


def bench_size(n: int, repeats: int) -> dict[str, float]:
    import faiss

    from voicedb import VoiceDB

    vectors = random_unit_vectors(n)
    query = random_unit_vectors(1, seed=1)[0]
    row: dict[str, float] = {"n": n}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        fill_library(home, vectors)
        base = rss_mb()
        db = VoiceDB(home)
        start = time.perf_counter()
        with db.context.writer.held():
            db.context.index.rebuild()  # from SQLite, then saved
        row["rebuild_s"] = time.perf_counter() - start
        row["voicedb_mb"] = rss_mb() - base
        db.close()
        db = VoiceDB(home)  # a fresh process's view: the first search loads index.faiss
        start = time.perf_counter()
        db.context.index.search(query, 1)
        row["load_s"] = time.perf_counter() - start
        row["voicedb_ms"] = median_seconds(lambda: db.match_vector(query, k=5), repeats) * 1000
        db.close()

    flat = faiss.IndexFlatIP(DIM)
    flat.add(vectors)
    row["faiss_ms"] = median_seconds(lambda: flat.search(query.reshape(1, -1), 5), repeats) * 1000

    def numpy_top5() -> np.ndarray:
        scores = vectors @ query
        top = np.argpartition(-scores, 5)[:5]
        return top[np.argsort(-scores[top])]

    row["numpy_ms"] = median_seconds(numpy_top5, repeats) * 1000
    row["numpy_mb"] = vectors.nbytes / 1e6
    return row


def bench_embedding(checkpoint: Path) -> tuple[float, float]:
    """(seconds of audio embedded, compute seconds per second of audio), models already loaded."""
    from voicedb.audio import load_clip
    from voicedb.engine import Checkpoint, Engine

    models = Engine(Checkpoint(checkpoint))
    clips = [load_clip(p) for p in sorted(SPEECH.glob("*.flac"))]
    models.embed(clips[0].wav_16k)  # load and warm up
    audio_s = sum(len(c.wav_24k) / 24_000 for c in clips)
    start = time.perf_counter()
    for clip in clips:
        models.embed(clip.wav_16k)
    return audio_s, (time.perf_counter() - start) / audio_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--checkpoint", type=Path, help="checkpoint dir, to time speaker embedding too")
    args = parser.parse_args()
    import faiss

    print(
        f"faiss {faiss.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs, top-5 query, "
        f"median of {args.repeats}"
    )
    print(
        f"{'voices':>9} | {'voicedb ms':>10} | {'faiss ms':>8} | {'numpy ms':>8} | {'vs faiss':>8} | "
        f"{'vs numpy':>8} | {'index MB':>8} | {'numpy MB':>8} | {'rebuild s':>9} | {'load s':>6}"
    )
    for n in args.sizes:
        r = bench_size(n, args.repeats)
        print(
            f"{n:>9,} | {r['voicedb_ms']:>10.3f} | {r['faiss_ms']:>8.3f} | {r['numpy_ms']:>8.3f} | "
            f"{r['voicedb_ms'] / r['faiss_ms']:>7.2f}x | {r['voicedb_ms'] / r['numpy_ms']:>7.2f}x | "
            f"{r['voicedb_mb']:>8.1f} | {r['numpy_mb']:>8.1f} | {r['rebuild_s']:>9.2f} | {r['load_s']:>6.2f}",
            flush=True,
        )
    if args.checkpoint:
        audio_s, per_second = bench_embedding(args.checkpoint)
        print(
            f"\nspeaker embedding: {per_second * 1000:.1f} ms of compute per second of audio "
            f"({audio_s:.0f} s of real speech, {1 / per_second:.0f}x real time)"
        )


if __name__ == "__main__":
    main()
