"""Decompression bombs: files that would cost far more than they look are refused before they are read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

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


def import_with_peak_memory(home: Path, path: Path) -> tuple[subprocess.CompletedProcess, int]:
    """``voicedb import PATH`` in a fresh process; returns it and its peak resident memory in KB."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stderr.write(done.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(done.returncode)\n"
    )
    env = {**os.environ, "VOICEDB_HOME": str(home)}
    command = [sys.executable, "-c", wrapper, sys.executable, "-m", "voicedb", "import", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    return done, int(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("bomb", ["bomb_bundle", "bomb_pt"])
def test_a_bomb_is_refused_in_one_line_with_bounded_memory(bomb: str, tmp_path: Path, request):
    path: Path = request.getfixturevalue(bomb)
    assert path.stat().st_size < 16 << 20
    done, peak_kb = import_with_peak_memory(tmp_path / "library", path)
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
