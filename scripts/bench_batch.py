#!/usr/bin/env python
"""Batched decoding against the same requests one after another, measured in the same run.

    python scripts/bench_batch.py [--checkpoint DIR] [--device cpu|cuda] [--clients 1 4 8 16]
                                  [--max-tokens 50]

For each client count N: N speech requests (different voices, texts and seeds) sent at once from N threads
through one ``Batcher`` (what ``voicedb serve --batch`` runs), against the same N requests spoken one after
another without it (what ``--batch 1`` does). Reports requests per second both ways and their ratio, time to
the first audio (median over the requests, counted from when all were sent), and whether every batched
answer has its sequential twin's length.

The offline test checkpoint (built into .pytest_cache when ``--checkpoint`` is not given) has a random T3
that never stops by itself, hence ``--max-tokens``. T3 is what is batched; S3Gen still renders row by row,
so where S3Gen dominates (a CPU) the ratio stays near 1. Machines are noisy: compare the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchutil import device_name

ROOT = Path(__file__).resolve().parent.parent
SPEECH = ROOT / "tests" / "data" / "speech"
CHECKPOINT_CACHE = ROOT / ".pytest_cache" / "d" / "voicedb-test-checkpoint"
TEXTS = [
    "The first listener asks for a sentence of ordinary length.",
    "Another listener wants something else said, a little longer than that.",
    "A third one is short.",
    "And the fourth request reads a line from a story about the sea.",
]


def speak(db, voice: str, text: str, seed: int, settings, batcher) -> tuple[float, float, int]:
    """(seconds to the first piece, seconds to the last, samples)."""
    start = time.perf_counter()
    first, samples = None, 0
    for piece in db.speak_stream(voice, text, settings=settings, seed=seed, batcher=batcher):
        first = first if first is not None else time.perf_counter() - start
        samples += len(piece)
    return first or 0.0, time.perf_counter() - start, samples


def at_once(db, requests: list[tuple[str, str, int]], settings, batcher) -> tuple[float, list]:
    results: list = [None] * len(requests)

    def client(index: int) -> None:
        results[index] = speak(db, *requests[index], settings, batcher)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--max-tokens", type=int, default=50)
    args = parser.parse_args()
    checkpoint = args.checkpoint or CHECKPOINT_CACHE
    if not (checkpoint / "ve.safetensors").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_test_checkpoint.py"), str(checkpoint)], check=True)

    from voicedb import Batcher, SynthesisSettings, VoiceDB

    clips = sorted(SPEECH.glob("*.flac"))[:4]
    with (
        tempfile.TemporaryDirectory(prefix="bench-batch-") as scratch,
        VoiceDB(Path(scratch) / "library", checkpoint=checkpoint, device=args.device) as db,
    ):
        voices = [db.add([clip], name=f"v{i}").voice.id for i, clip in enumerate(clips)]
        settings = SynthesisSettings(max_tokens=args.max_tokens)
        batcher = Batcher(db.engine, max_batch=max(args.clients))
        speak(db, voices[0], TEXTS[0], 0, settings, None)  # warm-up: loading and first-use costs
        rows = []
        for count in args.clients:
            requests = [(voices[i % len(voices)], TEXTS[i % len(TEXTS)], i) for i in range(count)]
            start = time.perf_counter()
            sequential = [speak(db, *request, settings, None) for request in requests]
            sequential_s = time.perf_counter() - start
            batched_s, batched = at_once(db, requests, settings, batcher)
            same = all(a[2] == b[2] for a, b in zip(sequential, batched, strict=True))
            rows.append((count, sequential_s, batched_s, sequential, batched, same))
        batcher.close()
    print(f"device: {device_name(args.device)}; {args.max_tokens} speech tokens per request, one sentence each")
    print()
    print(
        "| clients | one after another req/s | batched req/s | throughput ratio | first audio s (one after another, "
        "median) | first audio s (batched, median) | same lengths |"
    )
    print("|---|---|---|---|---|---|---|")
    for count, sequential_s, batched_s, sequential, batched, same in rows:
        print(
            f"| {count} | {count / sequential_s:.2f} | {count / batched_s:.2f} | {sequential_s / batched_s:.2f}x "
            f"| {statistics.median(r[0] + sum(s[1] for s in sequential[:i]) for i, r in enumerate(sequential)):.2f} "
            f"| {statistics.median(r[0] for r in batched):.2f} | {'yes' if same else 'NO'} |"
        )


if __name__ == "__main__":
    main()
