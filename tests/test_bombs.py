"""Hostile inputs: files that would cost far more than they look are refused before they are read, and
audio is read only as far as it is analysed, whatever its header claims."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
from conftest import ROOT, SPEECH_DIR, run_fails

GIB = 1 << 30
PEAK_LIMIT_KB = 1 << 20  # 1 GB


def deflated_zeros(path: Path, members: list[str], size: int = GIB, extra: dict[str, bytes] | None = None) -> Path:
    """A small zip whose members each expand to ``size`` bytes of zeros."""
    block = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
        for name in members:
            with archive.open(name, "w", force_zip64=True) as member:
                for _ in range(size // len(block)):
                    member.write(block)
    return path


@pytest.fixture(scope="module")
def bomb_bundle(tmp_path_factory) -> Path:
    """The bundle from the issue: 4 members of 1 GiB of zeros each (about 4 MB), names of the accepted shape."""
    manifest = {"format": "voicedb-bundle", "version": 1, "voice": {"name": "bomb"}, "sha256": {}}
    clips = [f"clips/{n:064x}.wav" for n in range(4)]
    path = tmp_path_factory.mktemp("bombs") / "bomb.voicedb"
    return deflated_zeros(path, clips, extra={"manifest.json": json.dumps(manifest).encode()})


@pytest.fixture(scope="module")
def bomb_pt(tmp_path_factory) -> Path:
    """A ``.pt`` laid out as torch saves one, whose data member expands to 1 GiB."""
    path = tmp_path_factory.mktemp("bombs") / "bomb.pt"
    return deflated_zeros(path, ["archive/data/0"], extra={"archive/data.pkl": b"\x80\x02}q\x00."})


def with_peak_memory(command: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, int]:
    """Run ``command``; return it (its stdout, stderr and exit code) and its peak resident memory in KB.

    A small wrapper process starts it and reads ``RUSAGE_CHILDREN``: on Linux a process started
    straight from this one would report this (large) test process's peak as its own."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stderr.write(done.stderr)\n"
        "print(done.stdout)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(done.returncode)\n"
    )
    wrapped = [sys.executable, "-c", wrapper, *command]
    done = subprocess.run(wrapped, capture_output=True, text=True, env=env, timeout=300)
    *output, peak = done.stdout.strip().splitlines()
    done.stdout = "\n".join(output)
    return done, int(peak)


def voicedb_with_peak_memory(home: Path, *args: str) -> tuple[subprocess.CompletedProcess, int]:
    """``voicedb ARGS`` in a fresh process; returns it and its peak resident memory in KB."""
    env = {**os.environ, "VOICEDB_HOME": str(home)}
    return with_peak_memory([sys.executable, "-m", "voicedb", *args], env)


@pytest.mark.parametrize("bomb", ["bomb_bundle", "bomb_pt"])
def test_a_bomb_is_refused_in_one_line_with_bounded_memory(bomb: str, tmp_path: Path, request):
    path: Path = request.getfixturevalue(bomb)
    assert path.stat().st_size < 16 << 20
    done, peak_kb = voicedb_with_peak_memory(tmp_path / "library", "import", str(path))
    assert peak_kb < PEAK_LIMIT_KB, f"peak {peak_kb / 1024:.0f} MB"
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "refusing" in lines[0], done.stderr


def test_a_bomb_uploaded_to_the_server_is_refused_and_the_server_stays_healthy(standin: Path, bomb_bundle: Path):
    import psutil
    from test_server import running

    from voicedb import VoiceDB

    with VoiceDB(standin) as db, running(db) as url:
        before = psutil.Process().memory_info().rss
        files = {"file": ("bomb.voicedb", bomb_bundle.read_bytes())}
        response = httpx.post(f"{url}/v1/voices/import", files=files, timeout=120)
        grown = psutil.Process().memory_info().rss - before
        assert response.status_code == 400 and "refusing" in response.json()["error"]["message"]
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}
        assert db.list() == []
    assert grown < 256 << 20


# -- audio headers -----------------------------------------------------------------------------------


def wav_claiming(path: Path, rate: int, channels: int, claimed_bytes: int, payload: bytes, bits: int = 16) -> Path:
    """A PCM WAV whose header says ``rate``, ``channels`` and ``claimed_bytes`` of samples, followed by
    ``payload`` whatever it says."""
    block = channels * bits // 8
    fmt = struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, bits)
    header = (
        b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " + fmt + b"data" + struct.pack("<I", claimed_bytes)
    )
    path.write_bytes(header + payload)
    return path


def speech_pcm16(channels: int = 1) -> bytes:
    samples, _ = soundfile.read(SPEECH_DIR / "arctic_awb_1.flac", dtype="int16")
    return np.repeat(samples[:, None], channels, axis=1).tobytes()


@pytest.mark.parametrize(
    ("rate", "channels", "refusal"),
    [(768_000, 1, "a sample rate of 768000 Hz is outside"), (16_000, 300, "300 channels; voicedb reads at most 64")],
)
def test_audio_whose_header_no_recording_has_is_refused_in_one_line(
    standin: Path, tmp_path: Path, rate: int, channels: int, refusal: str
):
    path = wav_claiming(tmp_path / "odd.wav", rate, channels, 1 << 20, bytes(1 << 20))
    assert refusal in run_fails("add", str(path), "--no-conditionals")


def test_a_header_claiming_billions_of_samples_costs_only_what_is_analysed(tmp_path: Path):
    """4 GiB of samples announced over 64 channels, 4 s present: read as announced (the 5 minutes
    analysed), that claim cost 1.2 GB before the reader went by blocks."""
    path = wav_claiming(tmp_path / "claims.wav", 16_000, 64, 0xFFFFFFF0, speech_pcm16(64))
    probe = "import sys\nfrom voicedb.audio import load_clip\nprint(load_clip(sys.argv[1]).wav_24k.shape[0] / 24000)\n"
    done, peak_kb = with_peak_memory([sys.executable, "-c", probe, str(path)])
    assert done.returncode == 0, done.stderr
    present = soundfile.info(SPEECH_DIR / "arctic_awb_1.flac").duration
    assert abs(float(done.stdout) - present) < 0.01 and peak_kb < 512 << 10, (done.stdout, peak_kb)


def test_aac_in_mp4_is_read_through_ffmpeg(standin: Path, tmp_path: Path):
    import av

    samples, rate = soundfile.read(SPEECH_DIR / "arctic_awb_1.flac", dtype="int16")
    path = tmp_path / "phone-memo.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in (*stream.encode(frame), *stream.encode(None)):
            container.mux(packet)
    from conftest import run

    added = run("add", str(path), "--no-conditionals", "--json")
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["name"] == "phone-memo"


# -- fuzzing -------------------------------------------------------------------------------------------


def test_a_short_seeded_fuzzing_run_ends_every_input_cleanly(checkpoint: Path):
    script = ROOT / "scripts" / "fuzz_inputs.py"
    command = [sys.executable, str(script), "--examples", "25", "--seed", "1", "--checkpoint", str(checkpoint)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[1:] if line[:1].isalpha()}
    assert {"audio", "pt", "bundle", "npz", "server"} <= set(rows), done.stdout
    for target in ("audio", "pt", "bundle", "npz", "server"):
        tried, _accepted, _refused, unclean = (int(n) for n in rows[target][:4])
        assert tried == 25 and unclean == 0, done.stdout
