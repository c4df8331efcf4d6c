#!/usr/bin/env python
"""What cohort margins cost ``match``: ``VoiceDB.match_vector`` on one fused library, scored both ways.

    python scripts/bench_cohort.py [--sizes 1000 10000 100000] [--queries 100] [--checkpoint DIR]

Each size is one ``chatterbox+campplus`` library of N voices with the test checkpoint's weight checksums (so
the shipped margin applies), its vectors sampled around the shipped cohort's real voices (each encoder's part
noised and normalised). The same queries are timed with cosine scores (the shipped ``margin`` entry hidden)
and with cohort margins: a margin adds, per query, a wider search and the shipped cohort's scores, and per
candidate voice its own nearest voices (a search each, kept until the library changes). ``first`` is the
margin's first pass over fresh queries, before its per-voice cache is warm; ``again`` repeats them.
Times are medians in milliseconds, one OpenMP thread; ratios are against cosine in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TEST_CHECKPOINT = ROOT / ".pytest_cache" / "d" / "voicedb-test-checkpoint"
FUSED = "chatterbox+campplus"


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def sample(centres: np.ndarray, count: int, rng: np.random.Generator, spread: float = 0.6) -> dict[str, np.ndarray]:
    """encoder -> (count, dimension) unit vectors around the fused ``centres`` (256 Chatterbox + 192 CAM++)."""
    picked = centres[rng.integers(len(centres), size=count)] * np.sqrt(2)
    parts = {"chatterbox": picked[:, :256], "campplus": picked[:, 256:]}
    return {
        e: unit(p + rng.normal(scale=spread / np.sqrt(p.shape[1]), size=p.shape)).astype(np.float32)
        for e, p in parts.items()
    }


def fill_library(home: Path, vectors: dict[str, np.ndarray], checksums: dict[str, str]) -> None:
    """N fused voices written straight through SQLAlchemy Core (setup only; not what is measured)."""
    from sqlalchemy import insert

    from voicedb import VoiceDB
    from voicedb.matchers import CHECKSUM_KEYS, MATCHER_KEY
    from voicedb.store import MetaRow, VoiceRow, VoiceVectorRow, utcnow

    db = VoiceDB(home)
    now = utcnow()
    count = len(vectors["chatterbox"])
    with db.context.store.session() as session:
        session.execute(
            insert(VoiceRow),
            [
                {
                    "pk": i + 1,
                    "id": f"{i:08x}",
                    "name": f"voice-{i}",
                    "tags": [],
                    "embedding": vectors["chatterbox"][i].tobytes(),
                    "encoder": checksums["chatterbox"],
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(count)
            ],
        )
        for encoder, rows in vectors.items():
            session.execute(
                insert(VoiceVectorRow),
                [
                    {"voice_pk": i + 1, "encoder": encoder, "checksum": checksums[encoder], "vector": v.tobytes()}
                    for i, v in enumerate(rows)
                ],
            )
        session.merge(MetaRow(key=MATCHER_KEY, value=FUSED))
        for encoder, checksum in checksums.items():
            session.merge(MetaRow(key=CHECKSUM_KEYS[encoder], value=checksum))
        session.merge(MetaRow(key="encoder", value=checksums["chatterbox"]))
        session.merge(MetaRow(key="generation", value="1"))
    db.close()


def median_ms(db, queries: np.ndarray) -> float:
    """Median time of ``db.match_vector`` (top 5) over ``queries``."""
    times = []
    for query in queries:
        start = time.perf_counter()
        db.match_vector(query, k=5)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--checkpoint", type=Path, default=TEST_CHECKPOINT)
    args = parser.parse_args()

    import faiss

    from voicedb import VoiceDB, config
    from voicedb.campplus import CAMPPLUS_FILE
    from voicedb.cohort import shipped_cohort
    from voicedb.files import sha256_file
    from voicedb.matchers import fuse

    faiss.omp_set_num_threads(1)
    checksums = {
        "chatterbox": sha256_file(args.checkpoint / "ve.safetensors"),
        "campplus": sha256_file(args.checkpoint / CAMPPLUS_FILE),
    }
    identity = ":".join([FUSED, checksums["chatterbox"][:16], checksums["campplus"][:16]])
    centres = shipped_cohort(identity)
    if centres is None or "margin" not in config.SHIPPED_THRESHOLDS.get(identity, {}):
        raise SystemExit(f"no shipped margin for {identity}: run with the test checkpoint's weights")
    measured = config.SHIPPED_THRESHOLDS[identity]
    cosine_only = {key: value for key, value in measured.items() if key != "margin"}
    rng = np.random.default_rng(0)
    print(f"match_vector, top-5, {args.queries} queries, median ms (one OpenMP thread)\n")
    print(f"{'voices':>9} | {'cosine':>7} | {'margin first':>12} | {'margin again':>12} | {'first':>6} | {'again':>6}")
    print(f"{'-' * 9}-|-{'-' * 7}-|-{'-' * 12}-|-{'-' * 12}-|-{'-' * 6}-|-{'-' * 6}")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            fill_library(Path(tmp), sample(centres, size, rng), checksums)
            db = VoiceDB(Path(tmp))
            queries = fuse(list(sample(centres, args.queries, rng).values()))
            db.match_vector(queries[0], k=5)  # loads the index
            config.SHIPPED_THRESHOLDS[identity] = cosine_only
            assert db.threshold().scores == "cosine"
            cosine = median_ms(db, queries)
            config.SHIPPED_THRESHOLDS[identity] = measured
            assert db.threshold().scores == "cohort margin"
            first = median_ms(db, queries)
            again = median_ms(db, queries)
            db.close()
        print(
            f"{size:>9,} | {cosine:>7.2f} | {first:>12.2f} | {again:>12.2f} | "
            f"{first / cosine:>5.1f}x | {again / cosine:>5.1f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
