"""Enrolling, addressing, renaming and removing voices through the CLI, on real speech files.

These are about storage and naming, so they run on the instant stand-in engine (``standin`` fixture).
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import library_digest, list_json, run, run_fails


def add(*args: str) -> dict:
    result = run("add", *args, "--no-conditionals", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_add_prints_a_short_id_and_the_name(standin: Path, speakers):
    clip = next(iter(speakers.values()))[0]
    result = run("add", str(clip), "--name", "alice", "--no-conditionals")
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"added voice [0-9a-f]{8} alice \(1 clip, \d+\.\d s\)\n", result.stdout)


def test_a_dry_run_prints_the_warnings_and_changes_nothing(standin: Path, speakers, tmp_path: Path):
    clip = next(iter(speakers.values()))[0]
    short = tmp_path / "short.wav"
    samples, rate = soundfile.read(str(clip), dtype="float32")
    soundfile.write(str(short), samples[: 2 * rate], rate)
    run("init")
    before = library_digest(standin)
    result = run("add", str(short), "--name", "alice", "--dry-run")
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"would enroll new voice alice \(1 clip, 2\.0 s\): nothing changed\n", result.stdout)
    assert "short.wav: 2.0 s is shorter than" in result.stderr
    assert library_digest(standin) == before and list_json() == []

    voice = add(str(clip), "--name", "bob")
    preview = json.loads(run("add", str(short), "--voice", "bob", "--tag", "new", "--dry-run", "--json").stdout)
    assert preview["id"] == voice["id"] and preview["clips"] == 2 and preview["tags"] == ["new"]
    assert [v["clips"] for v in list_json()] == [1]


def test_several_clips_make_one_voice_and_tags_are_kept(standin: Path, multi_clip_speakers):
    clips = next(iter(multi_clip_speakers.values()))
    voice = add(*map(str, clips[:2]), "--name", "bob", "--tag", "narrator", "--tag", "en")
    assert voice["clips"] == 2 and voice["created"] is True
    assert sorted(voice["tags"]) == ["en", "narrator"]
    listed = list_json()
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
    assert [v["name"] for v in list_json()] == ["keep"]
    assert len(list((standin / "clips").iterdir())) == 1
    hits = json.loads(run("match", str(b), "--all", "--json").stdout)["matches"]
    assert [h["id"] for h in hits] == [keep["id"]]


def test_list_is_empty_on_a_new_library(standin: Path):
    assert list_json() == []


# -- a voice's language ------------------------------------------------------------------------------


def test_add_language_is_stored_lowercase_and_listed_and_shown(standin: Path, speakers):
    clip = next(iter(speakers.values()))[0]
    voice = add(str(clip), "--name", "gisele", "--language", "FR")
    assert voice["language"] == "fr"
    assert [v["language"] for v in list_json()] == ["fr"]
    assert json.loads(run("show", "gisele", "--json").stdout)["language"] == "fr"
    assert "language:   fr\n" in run("show", "gisele").stdout
    other = add(str(list(speakers.values())[1][0]), "--name", "hugo")
    assert other["language"] is None
    assert "language" not in run("show", "hugo").stdout


def test_an_unknown_language_is_refused_before_anything_is_stored(standin: Path, speakers):
    clip = next(iter(speakers.values()))[0]
    assert run("init").exit_code == 0
    before = library_digest(standin)
    error = run_fails("add", str(clip), "--name", "ivan", "--language", "klingon", "--no-conditionals")
    assert "unknown language 'klingon'" in error and " fr, " in error and " ja, " in error
    assert library_digest(standin) == before
    assert list_json() == []


def test_adding_clips_with_a_language_updates_the_voice(standin: Path, multi_clip_speakers):
    first, second, *_ = next(iter(multi_clip_speakers.values()))
    voice = add(str(first), "--name", "jules", "--language", "fr")
    assert add(str(second), "--voice", "jules")["language"] == "fr"  # no --language: kept
    third = list(multi_clip_speakers.values())[1][0]
    assert add(str(third), "--voice", voice["id"], "--language", "de")["language"] == "de"


def test_language_command_prints_sets_and_clears(standin: Path, speakers):
    clip = next(iter(speakers.values()))[0]
    voice = add(str(clip), "--name", "karin")
    unset = run("language", "karin")
    assert unset.exit_code == 0 and unset.stdout == "" and "has no language" in unset.stderr
    result = run("language", "karin", "JA")
    assert result.exit_code == 0 and result.stdout == f"voice {voice['id']} karin speaks ja\n"
    assert run("language", voice["id"]).stdout == "ja\n"
    assert json.loads(run("language", "karin", "--json").stdout)["language"] == "ja"
    assert "unknown language 'xx'" in run_fails("language", "karin", "xx")
    assert json.loads(run("show", "karin", "--json").stdout)["language"] == "ja"
    cleared = run("language", "karin", "--clear", "--json")
    assert cleared.exit_code == 0 and json.loads(cleared.stdout)["language"] is None
    assert json.loads(run("show", "karin", "--json").stdout)["language"] is None
    assert run("language", "karin", "fr", "--clear").exit_code == 2  # a usage error
    run_fails("language", "nobody", "fr")


def test_set_language_from_python(standin: Path, speakers):
    from voicedb import VoiceDB
    from voicedb.errors import VoiceDBError

    clip = next(iter(speakers.values()))[0]
    with VoiceDB() as db:
        voice = db.add([clip], name="lena", language="es", conditionals=False).voice
        assert voice.language == "es" and db.get("lena").language == "es"
        assert db.set_language("lena", " PT ").language == "pt"
        with pytest.raises(VoiceDBError, match="unknown language"):
            db.set_language("lena", "")
        assert db.set_language("lena", None).language is None


def test_a_bundle_carries_the_language(standin: Path, speakers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    clip = next(iter(speakers.values()))[0]
    add(str(clip), "--name", "marta", "--language", "it")
    bundle = tmp_path / "marta.voicedb"
    assert run("export", "marta", "--bundle", "-o", str(bundle)).exit_code == 0
    monkeypatch.setenv("VOICEDB_HOME", str(tmp_path / "other"))
    imported = json.loads(run("import", str(bundle), "--json").stdout)
    assert [(v["name"], v["language"]) for v in imported] == [("marta", "it")]
    assert json.loads(run("show", "marta", "--json").stdout)["language"] == "it"


def edit_manifest(source: Path, target: Path, edit) -> Path:
    """A copy of a bundle whose manifest's voice entry went through ``edit`` (checksums stay valid)."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    manifest = json.loads(members["manifest.json"])
    edit(manifest["voice"])
    members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return target


def test_bundles_without_a_language_import_and_a_bad_one_is_refused(
    standin: Path, speakers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    clip = next(iter(speakers.values()))[0]
    add(str(clip), "--name", "nina", "--language", "fr")
    bundle = tmp_path / "nina.voicedb"
    assert run("export", "nina", "--bundle", "-o", str(bundle)).exit_code == 0
    monkeypatch.setenv("VOICEDB_HOME", str(tmp_path / "other"))
    assert run("init").exit_code == 0
    before = library_digest(tmp_path / "other")
    for bad in ("klingon", 7, ["fr"]):
        hostile = edit_manifest(bundle, tmp_path / "hostile.voicedb", lambda voice, bad=bad: voice.update(language=bad))
        assert "language" in run_fails("import", str(hostile))
    assert library_digest(tmp_path / "other") == before
    old = edit_manifest(bundle, tmp_path / "old.voicedb", lambda voice: voice.pop("language"))
    imported = json.loads(run("import", str(old), "--json").stdout)
    assert imported[0]["language"] is None


def test_the_language_list_is_upstream_s_and_naming_one_never_imports_torch(standin: Path):
    from chatterbox.mtl_tts import SUPPORTED_LANGUAGES

    from voicedb.flavours import LANGUAGE_NAMES, languages

    assert languages() == set(SUPPORTED_LANGUAGES)
    assert LANGUAGE_NAMES == SUPPORTED_LANGUAGES
    code = "import sys; from voicedb.flavours import languages; languages(); print('torch' in sys.modules)"
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "False"
