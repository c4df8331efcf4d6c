"""Shared fixtures: the offline test checkpoint (built once), a fresh library per test, real speech."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from voicedb.cli import cli

ROOT = Path(__file__).resolve().parent.parent
SPEECH_DIR = Path(__file__).resolve().parent / "data" / "speech"


@pytest.fixture(scope="session")
def checkpoint(request: pytest.FixtureRequest) -> Path:
    """The offline Chatterbox test checkpoint, built by ``scripts/make_test_checkpoint.py`` once and cached
    in pytest's cache directory (a fresh CI clone builds it once per run)."""
    directory = Path(request.config.cache.mkdir("voicedb-test-checkpoint"))
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_test_checkpoint.py"), str(directory)],
        check=True,
        capture_output=True,
    )
    return directory


@pytest.fixture(scope="session")
def turbo_checkpoint(request: pytest.FixtureRequest) -> Path:
    """The Turbo model's offline test checkpoint: a repository layout of its own, like the official one."""
    directory = Path(request.config.cache.mkdir("voicedb-test-checkpoint-turbo"))
    script = str(ROOT / "scripts" / "make_test_checkpoint.py")
    subprocess.run([sys.executable, script, "--turbo", str(directory)], check=True, capture_output=True)
    return directory


@pytest.fixture
def home(tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty library for each test, with the test checkpoint configured through the environment."""
    library = tmp_path / "library"
    monkeypatch.setenv("VOICEDB_HOME", str(library))
    monkeypatch.setenv("VOICEDB_CHECKPOINT", str(checkpoint))
    monkeypatch.setenv("VOICEDB_DEVICE", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return library


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (``services.postgres_server``)."""
    from services import postgres_server

    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def s3():
    """A real S3-compatible server (moto's) for the session."""
    from services import s3_server

    with s3_server() as server:
        yield server


@dataclass
class Backend:
    """Where a test's library keeps its truth and its files; ``home`` is this machine's directory."""

    kind: str
    home: Path
    database_url: str | None = None
    storage_url: str | None = None

    def machine(self, home: Path) -> dict[str, str | Path | None]:
        """``VoiceDB`` keyword arguments of another machine sharing this library (its own directory)."""
        return {"home": home, "database_url": self.database_url, "storage_url": self.storage_url}


BACKENDS = ["sqlite+files", "postgres+s3"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, standin: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """A fresh library (on the stand-in engine) for each backend: SQLite and files in its directory, or a fresh
    PostgreSQL database (migrated with ``voicedb db upgrade``) and a fresh S3 bucket. The CLI and ``VoiceDB()``
    find it through the environment, as a user's shell would."""
    if request.param == "sqlite+files":
        return Backend(request.param, standin)
    postgres, s3 = request.getfixturevalue("postgres"), request.getfixturevalue("s3")
    for key, value in s3.environment().items():
        monkeypatch.setenv(key, value)
    found = Backend(request.param, standin, postgres.database(), s3.bucket())
    monkeypatch.setenv("VOICEDB_DATABASE_URL", found.database_url)
    monkeypatch.setenv("VOICEDB_STORAGE_URL", found.storage_url)
    assert run("db", "upgrade").exit_code == 0
    return found


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh library whose engine is the instant, deterministic ``StandInEngine``: for tests of
    storage, naming, locking and errors that need no model. Returns the library directory."""
    from standin import StandInEngine

    import voicedb.engine

    engine = StandInEngine()
    library = tmp_path / "library"
    monkeypatch.setenv("VOICEDB_HOME", str(library))
    monkeypatch.delenv("VOICEDB_CHECKPOINT", raising=False)
    monkeypatch.setenv("VOICEDB_DEVICE", "cpu")
    monkeypatch.setattr(voicedb.engine, "shared_engine", lambda directory, device: engine)
    return library


@pytest.fixture
def derivations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records the flavour of every conditionals derivation (``Engine.conditionals`` still runs)."""
    from voicedb.engine import Engine

    calls: list[str] = []
    original = Engine.conditionals

    def counted(self, flavour, *args, **kwargs):
        calls.append(flavour.name)
        return original(self, flavour, *args, **kwargs)

    monkeypatch.setattr(Engine, "conditionals", counted)
    return calls


def speech_by_speaker() -> dict[str, list[Path]]:
    """Real recordings under ``tests/data/speech``, named ``<speaker>_<n>.<ext>``."""
    found: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(SPEECH_DIR.iterdir()):
        if path.suffix in {".wav", ".flac", ".ogg"}:
            found[path.stem.rsplit("_", 1)[0]].append(path)
    return dict(found)


@pytest.fixture(scope="session")
def speakers() -> dict[str, list[Path]]:
    found = speech_by_speaker()
    assert len(found) >= 3, "tests need real speech of at least three speakers in tests/data/speech"
    return found


@pytest.fixture(scope="session")
def multi_clip_speakers(speakers: dict[str, list[Path]]) -> dict[str, list[Path]]:
    """Speakers with at least two clips: enough to enroll with one clip and query with another."""
    found = {name: clips for name, clips in speakers.items() if len(clips) >= 2}
    assert len(found) >= 3
    return found


def run(*args: str, input: str | None = None) -> Result:
    """Invoke the CLI in-process, as a user would type ``voicedb ARGS``."""
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def list_json(*args: str) -> list[dict]:
    """``voicedb list --json ARGS``: one JSON object per voice, a line each."""
    result = run("list", "--json", *args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def run_fails(*args: str, code: int = 2) -> str:
    """Invoke the CLI expecting a clean failure: exit ``code``, one ``Error:`` line, no traceback."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def voicedb_process(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m voicedb ARGS`` in a fresh process (for import-cost and crash tests)."""
    return subprocess.run(
        [sys.executable, "-m", "voicedb", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        **kwargs,
    )


def library_digest(home: Path) -> dict[str, str]:
    """Byte-level fingerprint of every file in the library (WAL checkpointed first)."""
    if (home / "voicedb.sqlite").exists():
        with sqlite3.connect(home / "voicedb.sqlite") as con:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return {
        str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(home.rglob("*"))
        if p.is_file() and p.name != ".lock" and not p.name.endswith(("-wal", "-shm"))
    }
