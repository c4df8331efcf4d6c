#!/usr/bin/env python
"""Try to break a library: kill ``voicedb add`` at random moments, and run writers in parallel.

    python scripts/stress.py CHECKPOINT_DIR [--runs 30] [--processes 4] [--adds 3]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres --storage s3://bucket/stress]

Each harness gets a fresh library: a directory with SQLite and files by default; with ``--postgres`` (a
server the script may create databases on) a fresh PostgreSQL database, migrated with ``voicedb db
upgrade``, and with ``--storage`` its files under a fresh prefix of that fsspec URL (S3: endpoint and
keys from ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``); every process then
has a home directory of its own, as separate machines would.

Crash harness: each run starts ``python -m voicedb add`` on a fresh clip and SIGKILLs it after a
random delay within the time an add normally takes; then ``voicedb check --repair`` must leave no
unrepaired problem, ``voicedb check`` must be clean, every add that finished must be found, and
every voice present must be complete and matchable.

Concurrency harness: N processes each add M voices and match after every add, all at once; then
every voice must be present exactly once and match itself.

Clips are real speech from tests/data/speech, made distinct per run by a small gain change (so no
two runs enroll the same bytes). Prints one table; "inconsistent after repair" must be 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import soundfile

SPEECH = Path(__file__).resolve().parent.parent / "tests" / "data" / "speech"
WORKER = """
import sys
from voicedb import VoiceDB
db = VoiceDB()
for item in sys.argv[1:]:
    name, path = item.split("=", 1)
    db.add([path], name=name, conditionals=False)
    db.match(path, k=3, threshold=None)
"""


def listed_voices(env: dict[str, str]) -> list[dict]:
    """``voicedb list --json``: JSON lines, one voice each."""
    return [json.loads(line) for line in voicedb("list", "--json", env=env).stdout.splitlines()]


def distinct_clips(directory: Path, count: int) -> list[Path]:
    """``count`` clips of real speech with distinct bytes: the test clips at slightly different gains."""
    sources = sorted(SPEECH.glob("*.flac"))
    clips = []
    for n in range(count):
        audio, rate = soundfile.read(str(sources[n % len(sources)]), dtype="float32")
        path = directory / f"clip{n:04d}.wav"
        soundfile.write(str(path), audio * (0.9 - 0.0005 * n), rate)
        clips.append(path)
    return clips


def voicedb(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "voicedb", *args], env=env, capture_output=True, text=True)


def machine(env: dict[str, str], work: Path, n: int) -> dict[str, str]:
    """The environment of process ``n``: with a shared database, a home of its own (another machine)."""
    if "VOICEDB_DATABASE_URL" not in env:
        return env
    return {**env, "VOICEDB_HOME": str(work / f"machine{n}")}


def consistency_failures(env: dict[str, str]) -> int:
    """Problems left after ``check --repair``, plus voices that are not complete and matchable."""
    failures = 0
    repaired = voicedb("check", "--repair", "--json", env=env)
    failures += sum(not p["repaired"] for p in json.loads(repaired.stdout or "[]"))
    failures += voicedb("check", env=env).returncode != 0
    return failures


def crash_harness(runs: int, env: dict[str, str], work: Path) -> dict[str, int]:
    clips = distinct_clips(work, runs + 1)
    start = time.perf_counter()
    assert voicedb("add", str(clips[-1]), "--name", "timing", "--no-conditionals", env=env).returncode == 0
    typical = time.perf_counter() - start
    kills = finished = 0
    rng = random.Random(1234)
    for n in range(runs):
        process = subprocess.Popen(
            [sys.executable, "-m", "voicedb", "add", str(clips[n]), "--name", f"v{n}", "--no-conditionals"],
            env=machine(env, work, n),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            process.wait(timeout=rng.uniform(0.3, 1.1) * typical)
            finished += process.returncode == 0
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            kills += 1
    failures = consistency_failures(env)
    present = {v["name"] for v in listed_voices(env)}
    expected_names = {f"v{n}" for n in range(runs)}
    for n in range(runs):
        if f"v{n}" in present:
            hits = json.loads(voicedb("match", str(clips[n]), "--json", "-k", "1", env=env).stdout or "{}").get(
                "matches"
            )
            failures += not hits or hits[0]["name"] != f"v{n}"
    return {
        "runs": runs,
        "kills": kills,
        "expected": finished,
        "found": len(present & expected_names),
        "lost": max(0, finished - len(present & expected_names)),
        "inconsistent": failures,
    }


def concurrency_harness(processes: int, adds: int, env: dict[str, str], work: Path) -> dict[str, int]:
    clips = distinct_clips(work, processes * adds)
    jobs = [clips[i::processes] for i in range(processes)]
    running = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, *(f"{c.stem}={c}" for c in job)],
            env=machine(env, work, n),
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, job in enumerate(jobs)
    ]
    errors = sum(p.wait() != 0 for p in running)
    listed = [v["name"] for v in listed_voices(env)]
    failures = errors + consistency_failures(env) + (len(listed) != len(set(listed)))
    return {
        "runs": processes,
        "kills": 0,
        "expected": len(clips),
        "found": len(set(listed) & {c.stem for c in clips}),
        "lost": len(clips) - len(set(listed) & {c.stem for c in clips}),
        "inconsistent": failures,
    }


def fresh_library(work: Path, checkpoint: Path, postgres: str | None, storage: str | None) -> dict[str, str]:
    """The environment of a new, empty library for one harness (see the module docstring)."""
    env = {**os.environ, "VOICEDB_HOME": str(work / "library"), "VOICEDB_CHECKPOINT": str(checkpoint)}
    env["VOICEDB_DEVICE"] = "cpu"
    name = f"stress_{uuid.uuid4().hex[:10]}"
    if storage:
        env["VOICEDB_STORAGE_URL"] = f"{storage.rstrip('/')}/{name}"
    if postgres:
        from sqlalchemy import create_engine, make_url, text

        server = create_engine(postgres, isolation_level="AUTOCOMMIT")
        with server.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {name}"))
        server.dispose()
        env["VOICEDB_DATABASE_URL"] = make_url(postgres).set(database=name).render_as_string(hide_password=False)
        upgraded = voicedb("db", "upgrade", env=env)
        assert upgraded.returncode == 0, upgraded.stderr
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--runs", type=int, default=30, help="crash-harness runs")
    parser.add_argument("--processes", type=int, default=4, help="parallel writer processes")
    parser.add_argument("--adds", type=int, default=3, help="adds per writer process")
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL server to make each harness's database on")
    parser.add_argument("--storage", metavar="URL", help="an fsspec URL (s3://bucket/prefix) for the files")
    args = parser.parse_args()
    print(
        f"{'harness':<12} | {'runs':>4} | {'kills':>5} | {'expected':>8} | {'found':>5} | {'lost':>4} | "
        f"{'inconsistent after repair':>25}"
    )
    for label, harness in (
        ("crash", lambda env, work: crash_harness(args.runs, env, work)),
        ("concurrency", lambda env, work: concurrency_harness(args.processes, args.adds, env, work)),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            row = harness(fresh_library(work, args.checkpoint, args.postgres, args.storage), work)
        print(
            f"{label:<12} | {row['runs']:>4} | {row['kills']:>5} | {row['expected']:>8} | {row['found']:>5} | "
            f"{row['lost']:>4} | {row['inconsistent']:>25}",
            flush=True,
        )


if __name__ == "__main__":
    main()
