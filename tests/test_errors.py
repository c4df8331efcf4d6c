"""Every error a user can cause ends in one clear line and a non-zero exit, and changes nothing.

Errors that involve no model run on the stand-in engine; checkpoint errors use real weights files.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import library_digest, run, run_fails


@pytest.fixture
def enrolled(standin: Path, speakers) -> Path:
    clip = next(iter(speakers.values()))[0]
    assert run("add", str(clip), "--name", "alice", "--no-conditionals").exit_code == 0
    return clip


def write_wav(path: Path, samples: np.ndarray, rate: int = 16_000, subtype: str = "PCM_16") -> Path:
    soundfile.write(str(path), samples, rate, subtype=subtype)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def make_dir(path: Path) -> Path:
    path.mkdir()
    return path


BAD_CLIPS = {
    "missing": (lambda d: d / "nope.wav", "no such file"),
    "empty": (lambda d: write_bytes(d / "empty.wav", b""), "file is empty"),
    "not audio": (lambda d: write_bytes(d / "notes.wav", b"hello, I am text"), "not a readable audio file"),
    "truncated": (lambda d: write_bytes(d / "cut.wav", b"RIFF\x24\x00\x00\x00WAVEfmt "), "not a readable audio file"),
    "silent": (lambda d: write_wav(d / "silence.wav", np.zeros(16_000 * 3, np.float32)), "is silent"),
    "too short": (
        lambda d: write_wav(d / "blip.wav", 0.3 * np.sin(np.arange(8_000) / 5).astype(np.float32)),
        "too short",
    ),
    "nan": (lambda d: write_wav(d / "nan.wav", np.full(16_000 * 2, np.nan, np.float32), subtype="FLOAT"), "NaN"),
    "empty directory": (lambda d: make_dir(d / "nothing"), "holds no audio files"),
}


@pytest.mark.parametrize("case", BAD_CLIPS)
def test_bad_clips_are_refused_with_one_line_and_change_nothing(enrolled, standin: Path, tmp_path: Path, case: str):
    make, message = BAD_CLIPS[case]
    path = make(tmp_path)
    before = library_digest(standin)
    line = run_fails("add", str(path), "--name", "bob")
    assert message in line
    assert library_digest(standin) == before
    if case != "empty directory":
        assert message in run_fails("match", str(path))


def test_unknown_voice(enrolled: Path):
    for command in (["show", "nobody"], ["rm", "nobody"], ["rename", "nobody", "x"]):
        assert "no voice with id or name 'nobody'" in run_fails(*command)


def test_duplicate_name_is_refused(enrolled: Path, speakers, standin: Path):
    other = list(speakers.values())[1][0]
    before = library_digest(standin)
    assert "already exists" in run_fails("add", str(other), "--name", "alice", "--no-conditionals")
    assert library_digest(standin) == before


def test_identical_clip_is_detected_not_duplicated(enrolled: Path, standin: Path, tmp_path: Path):
    copy = tmp_path / "renamed-copy.wav"
    copy.write_bytes(enrolled.read_bytes())
    before = library_digest(standin)
    assert "already enrolled" in run_fails("add", str(copy), "--name", "bob", "--no-conditionals")
    assert library_digest(standin) == before


@pytest.mark.parametrize("name", ["", "   ", "tab\there", "a" * 101, "0123abcd"])
def test_names_that_cannot_be_typed_back_are_refused(standin: Path, speakers, name: str):
    clip = next(iter(speakers.values()))[0]
    run_fails("add", str(clip), "--name", name, "--no-conditionals")


def test_names_with_unicode_and_spaces_work(standin: Path, speakers):
    clip = next(iter(speakers.values()))[0]
    assert run("add", str(clip), "--name", "Zoë O'Brien (take 2)", "--no-conditionals").exit_code == 0
    assert run("show", "Zoë O'Brien (take 2)").exit_code == 0


def test_missing_checkpoint_directory(home: Path, speakers, tmp_path: Path):
    clip = next(iter(speakers.values()))[0]
    line = run_fails("--checkpoint", str(tmp_path / "no-such-dir"), "add", str(clip))
    assert "does not exist" in line


def test_corrupt_checkpoint(home: Path, speakers, tmp_path: Path, checkpoint: Path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "ve.safetensors").write_bytes(b"\x00" * 64)
    clip = next(iter(speakers.values()))[0]
    assert "corrupt" in run_fails("--checkpoint", str(broken), "add", str(clip))


def test_wrong_checkpoint(home: Path, speakers, tmp_path: Path):
    import torch
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    save_file({"weight": torch.zeros(3, 3)}, str(wrong / "ve.safetensors"))
    clip = next(iter(speakers.values()))[0]
    assert "does not fit VoiceEncoder" in run_fails("--checkpoint", str(wrong), "add", str(clip))


def test_library_directory_that_cannot_be_created(tmp_path: Path, standin: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert "cannot create library directory" in run_fails("--home", str(blocker / "lib"), "list")


def test_library_from_a_newer_voicedb_is_refused_not_downgraded(enrolled: Path, standin: Path):
    with sqlite3.connect(standin / "voicedb.sqlite") as con:
        con.execute("UPDATE alembic_version SET version_num = '9999_future'")
    before = library_digest(standin)
    assert "newer voicedb" in run_fails("list")
    assert library_digest(standin) == before


def test_a_file_that_is_not_a_database(standin: Path):
    standin.mkdir(parents=True)
    (standin / "voicedb.sqlite").write_text("garbage " * 100)
    assert "not a readable voicedb database" in run_fails("list")
