"""Bulk enrollment: ``add --each DIR`` and ``add --manifest FILE.csv`` enroll many voices in worker
processes, in groups, and a re-run after a crash or a kill finishes the job without duplicates."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run, run_fails, voicedb_process

from voicedb import VoiceDB


@pytest.fixture
def tree(tmp_path: Path, speakers) -> Path:
    """speakers/<speaker>/<clips>: one subdirectory per real speaker of tests/data."""
    root = tmp_path / "speakers"
    for speaker, clips in speakers.items():
        (root / speaker).mkdir(parents=True)
        for clip in clips:
            shutil.copy(clip, root / speaker / clip.name)
    return root


def names_and_clips(home: Path) -> dict[str, int]:
    with VoiceDB(home) as db:
        return {v.name: v.clips for v in db.list()}


def test_each_enrolls_one_voice_per_subdirectory_like_add_does(home: Path, tree: Path, speakers):
    done = run("add", "--each", str(tree), "--json")
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert sorted(v["name"] for v in result["added"]) == sorted(speakers)
    assert names_and_clips(home) == {speaker: len(clips) for speaker, clips in speakers.items()}
    speaker, clips = next((s, c) for s, c in speakers.items() if len(c) >= 2)
    with VoiceDB(home) as db:
        bulk_vector = db.vector(speaker)
        db.remove(speaker)
        single = db.add(clips, name=speaker, conditionals=False)
        assert np.allclose(db.vector(single.voice.id), bulk_vector, atol=1e-6)
    assert run("check").exit_code == 0


def test_a_manifest_groups_rows_by_name_with_tags_and_relative_paths(home: Path, tree: Path, speakers):
    speaker, clips = next((s, c) for s, c in speakers.items() if len(c) >= 2)
    other = next(s for s in speakers if s != speaker)
    manifest = tree / "voices.csv"
    rows = [f"{speaker}/{clip.name},narrator,en;calm" for clip in clips]
    rows.append(f"{tree / other / speakers[other][0].name},guest,")
    manifest.write_text("path,name,tags\n" + "\n".join(rows) + "\n")
    assert run("add", "--manifest", str(manifest)).exit_code == 0
    with VoiceDB(home) as db:
        assert db.get("narrator").clips == len(clips) and db.get("narrator").tags == ["calm", "en"]
        assert db.get("guest").clips == 1


def test_a_manifest_without_the_path_and_name_columns_is_refused_in_one_line(home: Path, tmp_path: Path):
    manifest = tmp_path / "voices.csv"
    manifest.write_text("file,speaker\na.wav,alice\n")
    assert "path and name" in run_fails("add", "--manifest", str(manifest))


def test_a_rerun_skips_voices_already_enrolled_and_unusable_voices_are_refused_alone(home: Path, tree: Path):
    broken = tree / "broken"
    broken.mkdir()
    (broken / "noise.wav").write_bytes(b"not audio at all")
    first = run("add", "--each", str(tree), "--json")
    assert first.exit_code == 0
    result = json.loads(first.stdout)
    assert [r["name"] for r in result["refused"]] == ["broken"]
    assert "noise.wav" in " ".join(result["warnings"])
    again = json.loads(run("add", "--each", str(tree), "--json").stdout)
    assert again["added"] == [] and sorted(again["skipped"]) == sorted(v["name"] for v in result["added"])


def count_voices(home: Path) -> int:
    try:
        with sqlite3.connect(f"file:{home / 'voicedb.sqlite'}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT count(*) FROM voices").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.fixture
def many_voices(tmp_path: Path, speakers) -> Path:
    """One voice per clip of tests/data and tests/devset, so that a run spans several groups."""
    root = tmp_path / "many"
    clips = [c for group in speakers.values() for c in group]
    clips += sorted((Path(__file__).parent / "devset" / "speech").glob("*.flac"))
    for clip in clips:
        (root / clip.stem).mkdir(parents=True)
        shutil.copy(clip, root / clip.stem / clip.name)
    return root


def test_a_run_killed_before_a_commit_or_at_random_is_finished_by_the_next_without_duplicates(
    home: Path, many_voices: Path
):
    killed = voicedb_process("add", "--each", str(many_voices), env={"VOICEDB_CRASH_AT": "add-many:before-commit"})
    assert killed.returncode == -signal.SIGKILL and count_voices(home) == 0
    env = {**os.environ, "VOICEDB_CRASH_AT": ""}
    command = [sys.executable, "-m", "voicedb", "add", "--each", str(many_voices), "--workers", "1"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while count_voices(home) == 0 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # mid-run, after the first group landed (or at the end)
    process.wait()
    assert voicedb_process("add", "--each", str(many_voices)).returncode == 0
    enrolled = names_and_clips(home)
    assert sorted(enrolled) == sorted(p.name for p in many_voices.iterdir())
    assert set(enrolled.values()) == {1}
    checked = voicedb_process("check", "--repair")
    assert checked.returncode == 0, checked.stdout + checked.stderr
