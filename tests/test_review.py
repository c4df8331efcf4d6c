"""Review tests: one behaviour each, through the CLI (``run``) or the Python API, on real speech.

The random test T3 never emits its stop token, so every synthesis caps speech tokens.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import library_digest, list_json, run, run_fails, voicedb_process

from voicedb import VoiceDB

TOKENS = "8"


def add(clip: Path, name: str, *extra: str) -> dict:
    result = run("add", str(clip), "--name", name, "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def show(ref: str) -> dict:
    result = run("show", ref, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def names() -> list[str]:
    return [v["name"] for v in list_json()]


def assert_usage_error(*args: str) -> str:
    """Click usage errors exit 2 with an ``Error:`` line (after the usage lines) and no traceback."""
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def unit_vector(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(256).astype(np.float32)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def rewrite_bundle(source: Path, target: Path, edit_voice, drop_clips: bool = False, embedding=None) -> Path:
    """Copy a bundle with its manifest's ``voice`` edited; members removed or replaced get their
    checksums in the manifest's sha256 map updated (the map covers the members, not the manifest)."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    manifest = json.loads(members.pop("manifest.json"))
    if drop_clips:
        manifest["voice"]["clips"] = []
        members = {name: data for name, data in members.items() if not name.startswith("clips/")}
    if embedding is not None:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(embedding, dtype=np.float32), allow_pickle=False)
        members["embedding.npy"] = buffer.getvalue()
    edit_voice(manifest["voice"])
    manifest["sha256"] = {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
        for name, data in members.items():
            archive.writestr(name, data)
    return target


# 1 ------------------------------------------------------------------------------------------------
def test_rm_with_one_unknown_name_removes_nothing(home: Path, speakers):
    clip = speakers["librivox_ss01"][0]
    voice = add(clip, "x", "--no-conditionals")
    kept = [home / c["file"] for c in show("x")["clip_files"]]
    assert kept and all(p.is_file() for p in kept)
    line = run_fails("rm", "x", "typo", code=2)
    assert "typo" in line
    assert names() == ["x"]
    assert show("x")["id"] == voice["id"]
    assert all(p.is_file() for p in kept)


# 2 ------------------------------------------------------------------------------------------------
def test_match_json_of_an_unknown_speaker_prints_no_matches_and_exits_1(home: Path, speakers):
    add(speakers["librivox_ss01"][0], "reader", "--no-conditionals")
    stranger = speakers["arctic_slt"][0]
    result = run("match", str(stranger), "--json")
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["matches"] == []
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("Error: "), result.stderr
    threshold = VoiceDB().threshold().value
    assert f"{threshold:.2f} or more" in errors[0] and "unknown speaker" in errors[0]
    for bad in ("5", "-1.5"):
        assert_usage_error("match", str(stranger), "--threshold", bad)


# 3 ------------------------------------------------------------------------------------------------
@pytest.fixture
def spoken_voice(home: Path, speakers) -> str:
    add(speakers["arctic_slt"][0], "narrator")  # a short reference: S3Gen's CPU time grows with it
    return "narrator"


@pytest.mark.parametrize("suffix, fmt", [(".mp3", "MP3"), (".flac", "FLAC")])
def test_speak_writes_the_format_the_suffix_names(spoken_voice: str, tmp_path: Path, suffix: str, fmt: str):
    out = tmp_path / f"out{suffix}"
    result = run("speak", "--voice", spoken_voice, "Hello.", "-o", str(out), "--max-tokens", TOKENS, "--seed", "1")
    assert result.exit_code == 0, result.output
    info = soundfile.info(str(out))
    assert (info.format, info.samplerate, info.channels) == (fmt, 24_000, 1)
    assert info.frames > 0


def test_speak_refuses_an_unknown_suffix_before_synthesis_and_writes_nothing(
    spoken_voice: str, tmp_path: Path, monkeypatch
):
    from voicedb.engine import Engine

    synthesized = []
    monkeypatch.setattr(Engine, "synthesize", lambda *args, **kwargs: synthesized.append(args))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    line = run_fails("speak", "--voice", spoken_voice, "Hello.", "-o", str(out_dir / "out.xyz"), "--max-tokens", TOKENS)
    assert "out.xyz" in line
    assert synthesized == []
    assert list(out_dir.iterdir()) == []


def test_speak_with_text_and_file_is_a_usage_error(spoken_voice: str, tmp_path: Path):
    text = tmp_path / "text.txt"
    text.write_text("From a file.", encoding="utf-8")
    out = tmp_path / "out.wav"
    line = assert_usage_error(
        "speak", "Hello.", "--voice", spoken_voice, "--file", str(text), "-o", str(out), "--max-tokens", TOKENS
    )
    assert "not both" in line
    assert not out.exists()


# 4 ------------------------------------------------------------------------------------------------
def test_export_names_differing_in_non_ascii_letters_get_their_own_files_and_never_overwrite(
    home: Path, speakers, tmp_path: Path, monkeypatch
):
    add(speakers["librivox_ss01"][0], "Zoë", "--no-conditionals")
    add(speakers["arctic_slt"][0], "Zoé", "--no-conditionals")
    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    monkeypatch.chdir(out_dir)
    for name in ("Zoë", "Zoé"):
        result = run("export", name)
        assert result.exit_code == 0, result.output
    files = sorted(out_dir.iterdir())
    assert len(files) == 2, files
    first, second = files
    assert first.read_bytes() != second.read_bytes()
    written = out_dir / run("export", "Zoë", "--force").stdout.split(maxsplit=1)[1].strip()
    assert written in files
    before = written.read_bytes()
    assert "--force" in run_fails("export", "Zoë")
    assert written.read_bytes() == before
    assert run("export", "Zoë", "--force").exit_code == 0
    assert sorted(out_dir.iterdir()) == files


# 5 ------------------------------------------------------------------------------------------------
def test_python_speak_returns_audio_and_writes_no_file(home: Path, speakers, tmp_path: Path, monkeypatch):
    from voicedb import SpeakResult, SynthesisSettings, VoiceDB

    add(speakers["arctic_slt"][0], "api")
    empty = tmp_path / "cwd"
    empty.mkdir()
    monkeypatch.chdir(empty)
    with VoiceDB() as db:
        result = db.speak("api", "Hi.", max_tokens=8, seed=1)
        assert isinstance(result, SpeakResult)
        assert result.audio.dtype == np.float32 and result.audio.ndim == 1 and result.audio.size > 0
        assert result.sample_rate == 24_000
        assert result.output is None
        via_settings = db.speak("api", "Hi.", settings=SynthesisSettings(max_tokens=8), seed=1)
        assert via_settings.output is None and via_settings.sample_rate == 24_000
        assert 0 < via_settings.seconds < 2.0  # the settings' 8-token cap was applied
    assert list(empty.iterdir()) == []


# 6 ------------------------------------------------------------------------------------------------
def test_an_unreadable_audio_file_is_one_plain_error_line(home: Path, tmp_path: Path):
    bad = tmp_path / "noise.wav"
    bad.write_bytes(np.random.default_rng(0).bytes(64_000))
    for args in (["add", str(bad), "--name", "noise"], ["match", str(bad)]):
        line = run_fails(*args)
        message = line[len("Error: ") :]
        assert "not a readable audio file" in message
        assert not re.search(r"[A-Za-z]+(Error|Exception)\b", message), message
        assert "Error)" not in message
    assert names() == []


# 7 ------------------------------------------------------------------------------------------------
def test_importing_a_pt_of_a_stored_voice_warns_it_nearly_duplicates_it(home: Path, speakers, tmp_path: Path):
    original = add(speakers["librivox_ss01"][0], "A")
    pt = tmp_path / "a.pt"
    assert run("export", "A", "-o", str(pt)).exit_code == 0
    for matcher, name in (("chatterbox+campplus", "copy"), ("chatterbox", "second copy")):
        assert run("matcher", matcher).exit_code == 0
        result = run("import", str(pt), "--name", name)  # a .pt holds only the Chatterbox embedding
        assert result.exit_code == 0, result.output
        warnings = [line for line in result.stderr.splitlines() if "nearly duplicates voice" in line]
        assert any(original["id"] in line for line in warnings), result.stderr
        assert "imported voice" in result.stdout
    assert names() == ["A", "copy", "second copy"]


# 8 ------------------------------------------------------------------------------------------------
def test_list_aligns_columns_for_wide_names(home: Path, speakers):
    from rich.cells import cell_len

    add(speakers["librivox_ss01"][0], "声音", "--no-conditionals")
    add(speakers["arctic_slt"][0], "bob", "--no-conditionals")
    lines = run("list").stdout.splitlines()
    header, rows = lines[0], lines[1:]
    assert len(rows) == 2
    header_end = cell_len(header[: header.index("CLIPS") + len("CLIPS")])
    starts, ends = set(), set()
    for row, name in zip(rows, ("声音", "bob")):
        after_name = row.index(name) + len(name)
        value = re.compile(r"\s+(\d+)").match(row, after_name)
        assert value, row
        starts.add(cell_len(row[: value.start(1)]))
        ends.add(cell_len(row[: value.end(1)]))
    assert len(starts) == 1, rows  # both voices have 1 clip: the values start in the same column
    assert ends == {header_end}, (header, rows)  # right-aligned under the CLIPS heading


# 9 ------------------------------------------------------------------------------------------------
def test_a_bundle_from_another_encoder_is_embedded_again_or_refused_without_clips(home: Path, speakers, tmp_path: Path):
    clip = speakers["librivox_ss01"][0]
    other = add(speakers["arctic_slt"][0], "other", "--no-conditionals")
    add(clip, "traveller")
    bundle = tmp_path / "b.voicedb"
    assert run("export", "traveller", "--bundle", "-o", str(bundle)).exit_code == 0
    assert run("rm", "traveller").exit_code == 0

    def foreign(voice: dict) -> None:
        voice["encoder"] = "0" * 64
        for listed in voice["clips"]:  # what another encoder would have computed: not this library's vectors
            listed["embedding"] = unit_vector(7).tolist()

    # the other encoder's vector is meaningless here: a re-embedding from the clips must replace it
    moved = rewrite_bundle(bundle, tmp_path / "foreign.voicedb", foreign, embedding=unit_vector(7))
    result = run("import", str(moved), "--json")
    assert result.exit_code == 0, result.output
    imported = json.loads(result.stdout)[0]
    hits = json.loads(run("match", str(clip), "--json").stdout)["matches"]
    assert hits[0]["id"] == imported["id"] and hits[0]["cosine"] > 0.99, hits  # its own clip
    library_encoder = show(other["id"])["encoder"]
    assert library_encoder != "0" * 64
    assert show(imported["id"])["encoder"] == library_encoder

    bare = rewrite_bundle(bundle, tmp_path / "bare.voicedb", foreign, drop_clips=True)
    with zipfile.ZipFile(bare) as archive:
        assert not any(name.startswith("clips/") for name in archive.namelist())
    before = library_digest(home)
    assert "another voice encoder" in run_fails("import", str(bare), "--name", "fresh")
    assert library_digest(home) == before


# 10 -----------------------------------------------------------------------------------------------
def test_add_to_a_voice_drops_or_derives_its_conditionals_and_a_missing_model_changes_nothing(
    home: Path, speakers, derivations
):
    first, second, third = speakers["librivox_ss01"][:3]
    voice = add(first, "V")
    old_conds = [home / c["file"] for c in show("V")["conditionals"]]
    assert voice["models"] == ["english"] and all(p.is_file() for p in old_conds)
    derivations.clear()

    assert run("add", str(second), "--voice", "V", "--no-conditionals").exit_code == 0
    assert derivations == []
    details = show("V")
    assert details["models"] == [] and details["conditionals"] == []
    assert not any(p.exists() for p in old_conds)
    assert list((home / "conds").iterdir()) == []

    assert run("add", str(third), "--voice", "V").exit_code == 0
    assert derivations == ["english"]
    assert show("V")["models"] == ["english"]

    before = library_digest(home)
    line = run_fails("add", str(speakers["ami_mee009"][0]), "--voice", "V", "--model", "turbo")
    assert "missing" in line
    assert library_digest(home) == before


# 11 -----------------------------------------------------------------------------------------------
def test_outdated_conditionals_are_reported_and_derived_again(home: Path, speakers):
    from voicedb import VoiceDB
    from voicedb.store import VoiceRow

    voice = add(speakers["librivox_ss01"][0], "V")
    moved = unit_vector(11)
    with sqlite3.connect(home / "voicedb.sqlite") as con:
        (pk,) = con.execute("SELECT pk FROM voices WHERE id = ?", (voice["id"],)).fetchone()
        con.execute("UPDATE voices SET embedding = ? WHERE pk = ?", (moved.tobytes(), pk))
        # the clip's vector moves too, so the voice's embedding stays the mean of its clips: the
        # conditionals are then the only thing outdated and no other repair can put the old vector back
        con.execute("UPDATE clips SET embedding = ? WHERE voice_pk = ?", (moved.tobytes(), pk))
    con.close()

    report = run("check", "--json")
    assert report.exit_code == 1, report.output
    problems = json.loads(report.stdout)
    assert any(p["kind"] == "conditionals" and "outdated" in p["message"] for p in problems), problems
    repaired = run("check", "--repair")
    assert repaired.exit_code == 0, repaired.output
    again = run("check")
    assert again.exit_code == 0, again.output

    with VoiceDB() as db:
        with db.context.store.session() as session:
            vector = session.get(VoiceRow, pk).vector.copy()
        conds = db.load_conditionals("V")
    assert np.allclose(vector, moved, atol=1e-6)
    assert np.allclose(conds.t3.speaker_emb.reshape(-1).numpy(), vector, atol=1e-5)


# 12 -----------------------------------------------------------------------------------------------
def test_check_without_repair_takes_no_writer_lock(home: Path, speakers):
    from filelock import FileLock, Timeout

    add(speakers["librivox_ss01"][0], "reader", "--no-conditionals")
    holder = FileLock(str(home / ".lock"))
    with holder.acquire(timeout=5):
        with pytest.raises(Timeout):  # the lock really is held against anyone else
            FileLock(str(home / ".lock")).acquire(timeout=0.1)
        checked = voicedb_process("check", timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert "library is consistent" in checked.stdout


def run_on_read_only_library(home: Path, *args: str) -> subprocess.CompletedProcess:
    """``voicedb ARGS`` in a fresh process that cannot write the library: file modes for a normal user;
    for root (whom modes do not stop) a read-only bind mount in a private mount namespace."""
    if os.geteuid() != 0:
        paths = [home, *home.rglob("*")]
        modes = {p: p.stat().st_mode for p in paths}
        try:
            for p in paths:
                p.chmod(modes[p] & ~0o222)
            return voicedb_process(*args, timeout=60)
        finally:
            for p in reversed(paths):
                p.chmod(modes[p])
    remount = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && shift && exec "$@"'
    in_namespace = ["unshare", "--mount", "--propagation", "private", "sh", "-c", remount, "sh", str(home)]
    mounted = shutil.which("unshare") and subprocess.run([*in_namespace, "true"], capture_output=True, text=True)
    if not mounted or mounted.returncode != 0:
        pytest.skip(f"cannot make a read-only view of the library here: {mounted and mounted.stderr.strip()}")
    probe = subprocess.run([*in_namespace, "touch", str(home / "probe")], capture_output=True, text=True)
    assert probe.returncode != 0 and "Read-only" in probe.stderr, probe.stderr  # the view really is read-only
    command = [*in_namespace, sys.executable, "-m", "voicedb", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_check_without_repair_works_on_a_read_only_library(home: Path, speakers):
    add(speakers["librivox_ss01"][0], "reader", "--no-conditionals")
    con = sqlite3.connect(home / "voicedb.sqlite")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    # as a library is at rest: the last connection gone, no -wal or -shm file beside the database
    assert not (home / "voicedb.sqlite-wal").exists() and not (home / "voicedb.sqlite-shm").exists()
    checked = run_on_read_only_library(home, "check")
    assert checked.returncode == 0, checked.stderr
    assert "library is consistent" in checked.stdout
    repair = run_on_read_only_library(home, "check", "--repair")
    assert repair.returncode == 2 and "not writable" in repair.stderr, repair.stderr


# 13 -----------------------------------------------------------------------------------------------
def test_match_refuses_another_encoder_before_loading_the_encoder(home: Path, speakers, checkpoint: Path):
    from voicedb import VoiceDB, VoiceDBError
    from voicedb.engine import Checkpoint, Engine

    add(speakers["librivox_ss01"][0], "reader", "--no-conditionals")
    with sqlite3.connect(home / "voicedb.sqlite") as con:
        con.execute("UPDATE meta SET value = ? WHERE key = 'encoder'", ("0" * 64,))
    con.close()
    engine = Engine(Checkpoint(checkpoint), "cpu")
    with VoiceDB(engine=engine) as db:
        with pytest.raises(VoiceDBError, match="another voice-encoder"):
            db.match(speakers["librivox_ss01"][1])
    assert "ve" not in engine.loaded()
