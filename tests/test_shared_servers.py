"""Two ``voicedb serve`` processes over one library in PostgreSQL and S3 (real servers: ``services``), with
the offline test checkpoint: what one is told, the other knows within a second, and a server killed in the
middle of an upload leaves nothing that ``voicedb check`` cannot explain and repair."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import soundfile
from conftest import run
from services import free_port, wait_until_ready

TOKENS = 8  # speech tokens per sentence chunk: quick on a CPU
START_TIMEOUT_S = 180


@pytest.fixture
def shared(postgres, s3, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of every machine of one fresh shared library (migrated), each adding its own home."""
    env = {
        **s3.environment(),
        "VOICEDB_DATABASE_URL": postgres.database(),
        "VOICEDB_STORAGE_URL": s3.bucket(),
        "VOICEDB_CHECKPOINT": str(checkpoint),
        "VOICEDB_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
    }
    for key, value in {**env, "VOICEDB_HOME": str(tmp_path / "operator")}.items():
        monkeypatch.setenv(key, value)
    assert run("db", "upgrade").exit_code == 0
    return env


@contextmanager
def server(env: dict[str, str], home: Path, crash_at: str | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """``voicedb serve --preload`` in a process of its own (a machine), on a free loopback port."""
    port = free_port()
    process_env = {**os.environ, **env, "VOICEDB_HOME": str(home)}
    if crash_at:
        process_env["VOICEDB_CRASH_AT"] = crash_at
    command = [sys.executable, "-m", "voicedb", "serve", "--port", str(port), "--preload", "--max-tokens", str(TOKENS)]
    process = subprocess.Popen(command, env=process_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, START_TIMEOUT_S)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def upload(url: str, clip: Path, name: str) -> dict:
    with open(clip, "rb") as handle:
        response = httpx.post(
            f"{url}/v1/voices", files={"file": (clip.name, handle.read())}, data={"name": name}, timeout=300
        )
    assert response.status_code == 201, response.text
    return response.json()


def names(url: str) -> list[str]:
    return [voice["name"] for voice in httpx.get(f"{url}/v1/voices", timeout=30).json()["voices"]]


def seen_within(seconds: float, condition) -> float:
    """Poll ``condition`` until it holds; returns how long that took (fails after ``seconds``)."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, f"not seen within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - start


def test_a_voice_uploaded_through_one_server_is_listed_matched_and_spoken_by_the_other(
    shared: dict[str, str], multi_clip_speakers, tmp_path: Path
):
    (alice, alice_probe, *_), (bob, *_) = list(multi_clip_speakers.values())[:2]
    with server(shared, tmp_path / "machine-a") as (a, _), server(shared, tmp_path / "machine-b") as (b, _):
        assert names(b) == []
        uploaded = upload(a, alice, "alice")
        seen_within(1.0, lambda: names(b) == ["alice"])
        upload(a, bob, "bob")
        seen_within(1.0, lambda: names(b) == ["alice", "bob"])

        with open(alice_probe, "rb") as handle:
            matched = httpx.post(f"{b}/v1/match", files={"file": ("probe.flac", handle.read())}, timeout=120).json()
        assert matched["nearest"][0]["name"] == "alice"

        spoken = httpx.post(
            f"{b}/v1/audio/speech",
            json={"model": "tts-1", "voice": "alice", "input": "Hello there.", "response_format": "wav"},
            timeout=300,
        )
        assert spoken.status_code == 200, spoken.text
        audio, rate = soundfile.read(io.BytesIO(spoken.content))
        assert rate == 24_000 and len(audio) > 0

        assert httpx.delete(f"{a}/v1/voices/{uploaded['id']}", timeout=30).status_code == 200
        seen_within(1.0, lambda: httpx.get(f"{b}/v1/voices/{uploaded['id']}", timeout=30).status_code == 404)
        gone = httpx.post(f"{b}/v1/audio/speech", json={"model": "tts-1", "voice": "alice", "input": "Hi."}, timeout=60)
        assert gone.status_code == 404
    checked = run("check")
    assert checked.exit_code == 0, checked.output


def test_a_server_killed_mid_upload_leaves_only_what_check_explains_and_repairs(
    shared: dict[str, str], speakers, tmp_path: Path
):
    """Killed after its files reached the storage and before the commit: the other server never sees the voice,
    and the files are orphans that ``check`` names and ``check --repair`` removes."""
    (clip, *_), (survivor, *_) = list(speakers.values())[:2]
    with server(shared, tmp_path / "machine-b") as (b, _):
        with server(shared, tmp_path / "machine-a", crash_at="add:before-commit") as (a, doomed):
            with pytest.raises(httpx.TransportError):
                upload(a, clip, "lost")
            assert doomed.wait(30) < 0  # SIGKILLed
        assert names(b) == []
        checked = run("check")
        assert checked.exit_code == 1
        assert "belongs to no voice (left by an interrupted write)" in checked.stdout
        assert run("check", "--repair").exit_code == 0
        assert run("check").exit_code == 0
        upload(b, survivor, "survivor")
        assert names(b) == ["survivor"]
