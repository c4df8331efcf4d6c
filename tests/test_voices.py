"""Enrolling, addressing, renaming and removing voices through the CLI, on real speech files.

These are about storage and naming, so they run on the instant stand-in engine (``standin`` fixture).
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import numpy as np
from conftest import run, run_fails


def add(*args: str) -> dict:
    result = run("add", *args, "--no-conditionals", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_add_prints_a_short_id_and_the_name(standin: Path, speakers):
    clip = next(iter(speakers.values()))[0]
    result = run("add", str(clip), "--name", "alice", "--no-conditionals")
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"added voice [0-9a-f]{8} alice \(1 clip, \d+\.\d s\)\n", result.stdout)


def test_several_clips_make_one_voice_and_tags_are_kept(standin: Path, multi_clip_speakers):
    clips = next(iter(multi_clip_speakers.values()))
    voice = add(*map(str, clips[:2]), "--name", "bob", "--tag", "narrator", "--tag", "en")
    assert voice["clips"] == 2 and voice["created"] is True
    assert sorted(voice["tags"]) == ["en", "narrator"]
    listed = json.loads(run("list", "--json").stdout)
    assert [(v["id"], v["name"]) for v in listed] == [(voice["id"], "bob")]


def test_a_directory_adds_its_audio_files_under_the_directory_name(standin: Path, multi_clip_speakers, tmp_path: Path):
    clips = next(iter(multi_clip_speakers.values()))
    folder = tmp_path / "carol"
    folder.mkdir()
    for clip in clips[:2]:
        (folder / clip.name).write_bytes(clip.read_bytes())
    (folder / "notes.txt").write_text("not audio, skipped")
    voice = add(str(folder))
    assert voice["name"] == "carol" and voice["clips"] == 2


def stored_vectors(home: Path) -> dict[str, np.ndarray]:
    """Each voice's stored embedding, read straight from SQLite."""
    with sqlite3.connect(home / "voicedb.sqlite") as con:
        rows = con.execute("SELECT name, embedding FROM voices").fetchall()
    return {name: np.frombuffer(blob, dtype=np.float32).copy() for name, blob in rows}


def test_voice_option_adds_clips_to_an_existing_voice_and_moves_its_embedding(standin: Path, multi_clip_speakers):
    from voicedb import VoiceDB

    first, second = next(iter(multi_clip_speakers.values()))[:2]
    voice = add(str(first), "--name", "dave")
    before = stored_vectors(standin)["dave"]
    result = run("add", str(second), "--voice", voice["id"], "--no-conditionals", "--json")
    assert result.exit_code == 0, result.output
    after = json.loads(result.stdout)
    assert after["created"] is False and after["clips"] == 2 and after["id"] == voice["id"]
    moved = stored_vectors(standin)["dave"]
    db = VoiceDB()
    both = db.embed(first) + db.embed(second)
    assert not np.allclose(moved, before, atol=1e-3)
    assert np.allclose(moved, both / np.linalg.norm(both), atol=1e-5)  # the normalised mean of the two clips
    assert np.allclose(before, db.embed(first), atol=1e-5)


def test_voices_are_addressed_by_id_name_or_id_prefix(standin: Path, speakers):
    clip = next(iter(speakers.values()))[0]
    voice = add(str(clip), "--name", "erin")
    for ref in (voice["id"], "erin", voice["id"][:5]):
        shown = json.loads(run("show", ref, "--json").stdout)
        assert shown["id"] == voice["id"]


def test_rename_keeps_the_id(standin: Path, speakers):
    clip = next(iter(speakers.values()))[0]
    voice = add(str(clip), "--name", "frank")
    assert run("rename", "frank", "francis").exit_code == 0
    shown = json.loads(run("show", voice["id"], "--json").stdout)
    assert shown["name"] == "francis"
    run_fails("show", "frank")


def test_rm_removes_row_index_entry_and_files(standin: Path, speakers):
    a, b = [clips[0] for clips in list(speakers.values())[:2]]
    keep = add(str(a), "--name", "keep")
    gone = add(str(b), "--name", "gone")
    result = run("rm", "gone")
    assert result.exit_code == 0 and gone["id"] in result.stdout
    assert [v["name"] for v in json.loads(run("list", "--json").stdout)] == ["keep"]
    assert len(list((standin / "clips").iterdir())) == 1
    hits = json.loads(run("match", str(b), "--all", "--json").stdout)
    assert [h["id"] for h in hits] == [keep["id"]]


def test_list_is_empty_on_a_new_library(standin: Path):
    assert json.loads(run("list", "--json").stdout) == []
