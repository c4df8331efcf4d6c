"""Promises that keep voices safe, each tested by trying to break it: crashes, concurrency, hostile input."""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import library_digest, list_json, run, run_fails, voicedb_process


def voices(home: Path) -> list[dict]:
    return list_json()


def assert_consistent_after_repair(home: Path) -> None:
    """The library opens, repair leaves no unrepaired problem, and a second check is clean."""
    repaired = run("check", "--repair", "--json")
    assert repaired.exit_code == 0, repaired.output
    assert run("check").exit_code == 0


def assert_fully_there(home: Path, name: str, clip: Path) -> None:
    details = json.loads(run("show", name, "--json").stdout)
    assert all((home / c["file"]).is_file() for c in details["clip_files"])
    assert all((home / c["file"]).is_file() for c in details["conditionals"])
    hits = json.loads(run("match", str(clip), "--json").stdout)["matches"]
    assert hits[0]["id"] == details["id"]


ADD_POINTS = ["add:clips-written", "add:conds-written", "add:before-commit", "add:committed", "index:written"]


@pytest.mark.parametrize("point", ADD_POINTS)
def test_add_killed_at_any_moment_leaves_the_voice_fully_there_or_absent(home: Path, speakers, point: str):
    clips = list(speakers.values())
    run("add", str(clips[0][0]), "--name", "before")
    new_clip = clips[1][0]
    # only the conditionals' crash point needs them computed; the others skip loading S3Gen
    quick = [] if point == "add:conds-written" else ["--no-conditionals"]
    killed = voicedb_process("add", str(new_clip), "--name", "victim", *quick, env={"VOICEDB_CRASH_AT": point})
    assert killed.returncode == -9, killed.stderr
    assert_consistent_after_repair(home)
    names = [v["name"] for v in voices(home)]
    assert "before" in names
    if "victim" in names:
        assert point in ("add:committed", "index:written")
        assert_fully_there(home, "victim", new_clip)
    else:
        assert point in ("add:clips-written", "add:conds-written", "add:before-commit")
        assert run("add", str(new_clip), "--name", "victim", *quick).exit_code == 0  # nothing half-there blocks a retry
        assert_fully_there(home, "victim", new_clip)


@pytest.mark.parametrize("point", ["rm:committed", "rm:file-deleted", "rename:before-commit"])
def test_rm_and_rename_killed_midway_leave_a_consistent_library(home: Path, speakers, point: str):
    clip = next(iter(speakers.values()))[0]
    run("add", str(clip), "--name", "target", "--no-conditionals")
    args = ["rm", "target"] if point.startswith("rm") else ["rename", "target", "renamed"]
    assert voicedb_process(*args, env={"VOICEDB_CRASH_AT": point}).returncode == -9
    assert_consistent_after_repair(home)
    names = [v["name"] for v in voices(home)]
    assert names == ([] if point.startswith("rm") else ["target"])
    if point.startswith("rm"):
        assert not any((home / "clips").iterdir())


def test_a_migration_killed_before_commit_rolls_back_and_reruns(home: Path):
    assert voicedb_process("list", env={"VOICEDB_CRASH_AT": "migrate:before-commit"}).returncode == -9
    assert run("list", "--json").exit_code == 0
    with sqlite3.connect(home / "voicedb.sqlite") as con:
        assert con.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)


def test_import_killed_midway_leaves_nothing_half_imported(home: Path, speakers, tmp_path: Path):
    clip = next(iter(speakers.values()))[0]
    run("add", str(clip), "--name", "original")
    bundle = tmp_path / "original.voicedb"
    assert run("export", "original", "--bundle", "-o", str(bundle)).exit_code == 0
    run("rm", "original")
    for point in ("import:clip-written", "import:conds-written"):
        assert voicedb_process("import", str(bundle), env={"VOICEDB_CRASH_AT": point}).returncode == -9
        assert_consistent_after_repair(home)
        assert voices(home) == []
    assert run("import", str(bundle)).exit_code == 0
    assert_fully_there(home, "original", clip)


WORKER = textwrap.dedent("""
    import sys
    from voicedb import VoiceDB
    db = VoiceDB()
    names = []
    for item in sys.argv[1:]:
        name, path = item.split("=", 1)
        db.add([path], name=name, conditionals=False)
        db.match(path, k=3, threshold=None)
        names.append(name)
    db.remove(names[0])
""")


def test_parallel_writers_lose_nothing_and_duplicate_nothing(home: Path, speakers, tmp_path: Path):
    clips = [clip for group in speakers.values() for clip in group][:12]
    jobs = [clips[i::4] for i in range(4)]  # 4 processes: 3 adds and matches each, then one removal
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, *(f"{c.stem}={c}" for c in job)],
            env=os.environ.copy(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for job in jobs
    ]
    for process in processes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    removed = {job[0].stem for job in jobs}
    kept = [clip for clip in clips if clip.stem not in removed]
    assert sorted(v["name"] for v in voices(home)) == sorted(c.stem for c in kept)
    assert run("check").exit_code == 0
    for clip in kept:
        hits = json.loads(run("match", str(clip), "--json").stdout)["matches"]
        assert hits[0]["name"] == clip.stem


# -- hostile and malformed imports --------------------------------------------------------------------


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/voicedb-pwned",))


def test_a_pickle_payload_is_never_executed_and_changes_nothing(home: Path, tmp_path: Path):
    run("init")
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"t3": Exploit(), "gen": {}}))
    before = library_digest(home)
    assert "not a safe Chatterbox conditionals file" in run_fails("import", str(evil), "--name", "evil")
    assert not Path("/tmp/voicedb-pwned").exists()
    assert library_digest(home) == before


def test_wrong_shapes_are_rejected(home: Path, speakers, tmp_path: Path):
    import torch

    clip = next(iter(speakers.values()))[0]
    run("add", str(clip), "--name", "good")
    good = tmp_path / "good.pt"
    run("export", "good", "-o", str(good))
    raw = torch.load(good, weights_only=True)
    raw["t3"]["speaker_emb"] = torch.zeros(1, 128)
    bad = tmp_path / "bad.pt"
    torch.save(raw, bad)
    before = library_digest(home)
    assert "speaker_emb" in run_fails("import", str(bad), "--name", "bad")
    assert library_digest(home) == before


def rewrite_bundle(source: Path, target: Path, edit) -> Path:
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members = edit(members)
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return target


@pytest.mark.parametrize("attack", ["path traversal", "tampered clip", "unlisted member", "not a zip"])
def test_hostile_bundles_are_refused_and_change_nothing(home: Path, speakers, tmp_path: Path, attack: str):
    clip = next(iter(speakers.values()))[0]
    run("add", str(clip), "--name", "alice")
    bundle = tmp_path / "alice.voicedb"
    run("export", "alice", "--bundle", "-o", str(bundle))
    run("rm", "alice")

    def traversal(m):
        return {**m, "../../escape.txt": b"x"}

    def tamper(m):
        name = next(n for n in m if n.startswith("clips/"))
        return {**m, name: m[name][:-10] + b"0" * 10}

    def unlisted(m):
        return {**m, "conds/turbo.pt": m["conds/english.pt"]}

    bad = tmp_path / "bad.voicedb"
    if attack == "not a zip":
        bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    else:
        rewrite_bundle(
            bundle, bad, {"path traversal": traversal, "tampered clip": tamper, "unlisted member": unlisted}[attack]
        )
    reasons = {
        "path traversal": "refusing unexpected member '../../escape.txt'",
        "tampered clip": "does not match its checksum",
        "unlisted member": "does not list exactly the bundle's members",
        "not a zip": "not a voicedb bundle",
    }
    before = library_digest(home)
    assert reasons[attack] in run_fails("import", str(bad), "--name", "mallory")
    assert library_digest(home) == before
    assert not (tmp_path.parent / "escape.txt").exists()


def test_export_loads_in_upstream_chatterbox_with_identical_tensors(home: Path, speakers, tmp_path: Path):
    import torch
    from chatterbox.tts import Conditionals

    clip = next(iter(speakers.values()))[0]
    run("add", str(clip), "--name", "alice")
    exported = tmp_path / "alice.pt"
    assert run("export", "alice", "-o", str(exported)).exit_code == 0
    stored = home / json.loads(run("show", "alice", "--json").stdout)["conditionals"][0]["file"]
    a, b = Conditionals.load(exported), Conditionals.load(stored)
    assert torch.equal(a.t3.speaker_emb, b.t3.speaker_emb)
    assert all(torch.equal(a.gen[k], b.gen[k]) for k in a.gen if torch.is_tensor(a.gen[k]))


def test_an_imported_pt_is_found_by_match_with_the_chatterbox_encoder(home: Path, speakers, tmp_path: Path):
    clip = next(iter(speakers.values()))[0]
    run("add", str(clip), "--name", "alice")
    exported = tmp_path / "alice.pt"
    run("export", "alice", "-o", str(exported))
    run("rm", "alice")
    assert run("matcher", "chatterbox").exit_code == 0  # a .pt carries the Chatterbox embedding only
    assert run("import", str(exported), "--name", "alice-again").exit_code == 0
    hits = json.loads(run("match", str(clip), "--json").stdout)["matches"]
    assert hits[0]["name"] == "alice-again" and hits[0]["score"] > 0.9


def test_whole_library_backup_round_trips(home: Path, speakers, tmp_path: Path, monkeypatch):
    for name, group in list(speakers.items())[:3]:
        run("add", str(group[0]), "--name", name)
    backup = tmp_path / "backup"
    assert run("export", "--all", str(backup)).exit_code == 0
    original = {v["name"]: v for v in voices(home)}
    monkeypatch.setenv("VOICEDB_HOME", str(tmp_path / "restored"))
    assert run("import", "--all", str(backup)).exit_code == 0
    restored = {v["name"]: v for v in voices(tmp_path / "restored")}
    assert set(restored) == set(original)
    assert all(restored[n]["clips"] == original[n]["clips"] and restored[n]["models"] == ["english"] for n in original)
    assert run("check").exit_code == 0
    (backup / next(p.name for p in backup.glob("*.voicedb"))).write_bytes(b"damaged")
    monkeypatch.setenv("VOICEDB_HOME", str(tmp_path / "third"))
    assert "does not match backup.json" in run_fails("import", "--all", str(backup))


# -- awkward but valid audio, and the quality gate -----------------------------------------------------


def resampled(source: Path, target: Path, rate: int, channels: int = 1) -> Path:
    import librosa

    audio, _ = librosa.load(str(source), sr=rate)
    soundfile.write(str(target), np.stack([audio] * channels, axis=1) if channels > 1 else audio, rate)
    return target


@pytest.mark.parametrize("rate,channels", [(8_000, 1), (192_000, 1), (44_100, 6)])
def test_unusual_rates_and_channel_counts_enroll_and_match(
    home: Path, multi_clip_speakers, tmp_path: Path, rate: int, channels: int
):
    speaker, clips = next(iter(multi_clip_speakers.items()))
    odd = resampled(clips[0], tmp_path / "odd.wav", rate, channels)
    result = run("add", str(odd), "--name", speaker, "--no-conditionals")
    assert result.exit_code == 0, result.output
    assert ("8000 Hz" in result.stderr) == (rate == 8_000)
    hits = json.loads(run("match", str(clips[1]), "--json").stdout)["matches"]
    assert hits[0]["name"] == speaker


def test_only_the_first_minutes_of_a_long_file_are_analysed(home: Path, speakers, tmp_path: Path, monkeypatch):
    import voicedb.audio

    clip = next(iter(speakers.values()))[0]
    audio, rate = soundfile.read(str(clip))
    long = tmp_path / "long.wav"
    soundfile.write(str(long), np.tile(audio, 4), rate)
    monkeypatch.setattr(voicedb.audio, "MAX_ANALYSED_SECONDS", 5.0)
    loaded = voicedb.audio.load_clip(long)
    assert len(loaded.wav_24k) == 5 * 24_000
    assert loaded.duration_s == pytest.approx(4 * len(audio) / rate, rel=0.01)


def test_strict_refuses_short_clips_and_changes_nothing(home: Path, speakers):
    clip = next(iter(speakers.values()))[0]
    run("init")
    before = library_digest(home)
    assert "refused (--strict)" in run_fails("add", str(clip), "--name", "x", "--strict", "--no-conditionals")
    assert library_digest(home) == before


def test_warns_when_clips_sound_like_different_speakers(home: Path, speakers):
    a, b = [group[0] for group in list(speakers.values())[:2]]
    result = run("add", str(a), str(b), "--name", "mixed", "--no-conditionals")
    assert result.exit_code == 0
    assert "another speaker" in result.stderr


def test_warns_when_a_new_voice_nearly_duplicates_a_stored_one(home: Path, multi_clip_speakers):
    first, second = next(iter(multi_clip_speakers.values()))[:2]
    run("add", str(first), "--name", "original", "--no-conditionals")
    result = run("add", str(second), "--name", "copycat", "--no-conditionals")
    assert result.exit_code == 0
    assert "nearly duplicates voice" in result.stderr and "original" in result.stderr


def degraded(source: Path, target: Path, kind: str) -> Path:
    audio, rate = soundfile.read(str(source), dtype="float32")
    if kind == "clipped":
        audio = np.clip(audio * 20, -1.0, 1.0)
    else:  # mostly silence: the speech, then three times as long of nothing
        audio = np.concatenate([audio, np.zeros(3 * len(audio), np.float32)])
    soundfile.write(str(target), audio, rate)
    return target


@pytest.mark.parametrize("kind,warning", [("clipped", "clipped"), ("silent", "mostly silence")])
def test_clipped_or_mostly_silent_clips_warn_and_strict_refuses(home: Path, speakers, tmp_path: Path, kind, warning):
    clip = degraded(next(iter(speakers.values()))[0], tmp_path / f"{kind}.wav", kind)
    run("init")
    before = library_digest(home)
    assert warning in run_fails("add", str(clip), "--name", "x", "--strict", "--no-conditionals")
    assert library_digest(home) == before
    result = run("add", str(clip), "--name", "x", "--no-conditionals")
    assert result.exit_code == 0 and warning in result.stderr


@pytest.mark.parametrize("library_kind", ["sqlite+files", "postgres+s3"])
def test_stress_script_kills_adds_at_random_moments_and_loses_nothing(
    library_kind: str, checkpoint: Path, request: pytest.FixtureRequest
):
    script = Path(__file__).resolve().parent.parent / "scripts" / "stress.py"
    args = [sys.executable, str(script), str(checkpoint), "--runs", "8", "--processes", "2", "--adds", "2"]
    env = dict(os.environ)
    if library_kind == "postgres+s3":
        postgres, s3 = request.getfixturevalue("postgres"), request.getfixturevalue("s3")
        args += ["--postgres", postgres.url("postgres"), "--storage", s3.bucket()]
        env.update(s3.environment())
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {
        line.split("|")[0].strip(): [cell.strip() for cell in line.split("|")[1:]]
        for line in done.stdout.splitlines()
        if line.startswith(("crash", "concurrency"))
    }
    runs, kills, expected, found, lost, inconsistent = map(int, rows["crash"])
    assert runs == 8 and lost == 0 and inconsistent == 0 and found >= expected, done.stdout
    assert rows["concurrency"][-2:] == ["0", "0"], done.stdout


def test_adding_another_speakers_clip_to_a_voice_warns_and_strict_refuses(home: Path, multi_clip_speakers, speakers):
    (speaker, clips), (other, other_clips) = list(multi_clip_speakers.items())[:2]
    assert run("add", str(clips[0]), "--name", speaker, "--no-conditionals").exit_code == 0
    same = run("add", str(clips[1]), "--voice", speaker)
    assert same.exit_code == 0 and "another speaker" not in same.stderr
    before = library_digest(home)
    line = run_fails("add", str(other_clips[0]), "--voice", speaker, "--strict")
    assert other_clips[0].name in line and "another speaker" in line
    assert library_digest(home) == before


def test_a_restore_that_fails_halfway_takes_back_what_it_restored(home: Path, speakers, tmp_path: Path):
    import hashlib

    clip = next(iter(speakers.values()))[0]
    run("add", str(clip), "--name", "alice", "--no-conditionals")
    backup = tmp_path / "backup"
    assert run("export", "--all", str(backup)).exit_code == 0
    original = next(backup.glob("*.voicedb"))

    def rename_voice(members: dict) -> dict:
        manifest = json.loads(members["manifest.json"])
        manifest["voice"]["name"] = "alice-copy"
        return {**members, "manifest.json": json.dumps(manifest).encode()}

    copy = rewrite_bundle(original, backup / "zz-copy.voicedb", rename_voice)  # same clip: fails on import
    index = json.loads((backup / "backup.json").read_text())
    index["bundles"][copy.name] = hashlib.sha256(copy.read_bytes()).hexdigest()
    (backup / "backup.json").write_text(json.dumps(index))

    run("rm", "alice")
    run("check", "--repair")
    before = library_digest(home)
    assert "already enrolled" in run_fails("import", "--all", str(backup))
    assert voices(home) == []
    assert run("check").exit_code == 0
    assert library_digest(home).keys() == before.keys()
