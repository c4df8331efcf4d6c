"""Voices per minute: bulk ``voicedb add --each`` against one ``voicedb add`` process per voice, on
the same real clips, with each one's peak memory.

    python scripts/bench_enroll.py CHECKPOINT_DIR [--voices 40]

Every clip of tests/data and tests/devset becomes a voice of its own (one subdirectory each), so
the two ways enroll identical work; both leave conditionals for the first ``speak``. Peak memory
is the largest resident size of any one process (for ``--each``: the parent or a worker).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def clips() -> list[Path]:
    found = sorted((ROOT / "tests" / "data" / "speech").glob("*.flac"))
    return found + sorted((ROOT / "tests" / "devset" / "speech").glob("*.flac"))


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak MB of the largest child process) of one command, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr}")
    return seconds, max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint directory (make_test_checkpoint.py DIR)")
    parser.add_argument("--voices", type=int, default=40, help="voices to enroll each way")
    args = parser.parse_args()
    chosen = clips()[: args.voices]
    voicedb = [sys.executable, "-m", "voicedb"]
    with tempfile.TemporaryDirectory(prefix="voicedb-bench-enroll-") as scratch:
        tree = Path(scratch) / "tree"
        for clip in chosen:
            (tree / clip.stem).mkdir(parents=True)
            shutil.copy(clip, tree / clip.stem / clip.name)
        env = {**os.environ, "VOICEDB_CHECKPOINT": str(args.checkpoint)}

        env["VOICEDB_HOME"] = str(Path(scratch) / "one-by-one")
        started, peak_single = time.perf_counter(), 0.0
        for voice in sorted(tree.iterdir()):
            _, peak = timed([*voicedb, "add", str(voice), "--name", voice.name, "--no-conditionals"], env)
            peak_single = max(peak_single, peak)
        single = time.perf_counter() - started

        env["VOICEDB_HOME"] = str(Path(scratch) / "bulk")
        bulk, peak_bulk = timed([*voicedb, "add", "--each", str(tree)], env)

    rows = [("one `voicedb add` per voice", single, peak_single), ("`voicedb add --each`", bulk, peak_bulk)]
    print(f"{len(chosen)} voices of one real clip each, {os.cpu_count()} CPUs")
    print(f"{'way':<30} {'seconds':>8} {'voices/min':>11} {'peak MB':>8} {'speed-up':>9}")
    for way, seconds, peak in rows:
        rate = len(chosen) / seconds * 60
        print(f"{way:<30} {seconds:>8.1f} {rate:>11.0f} {peak:>8.0f} {single / seconds:>8.1f}x")


if __name__ == "__main__":
    main()
