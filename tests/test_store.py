"""Alembic owns the schema: an empty database upgrades to head, and the code expects that head."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic.script import ScriptDirectory

from voicedb.store import SCHEMA_HEAD, Store, migrations_dir, sqlite_url


def test_code_expects_the_head_revision_of_the_shipped_migrations():
    assert ScriptDirectory(str(migrations_dir())).get_current_head() == SCHEMA_HEAD


def test_migrations_upgrade_an_empty_database_to_head(tmp_path: Path):
    store = Store(sqlite_url(tmp_path / "fresh.sqlite"))
    assert store.needs_upgrade()
    store.upgrade()
    assert not store.needs_upgrade()
    with sqlite3.connect(tmp_path / "fresh.sqlite") as con:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        (version,) = con.execute("SELECT version_num FROM alembic_version").fetchone()
        (mode,) = con.execute("PRAGMA journal_mode").fetchone()
    assert {"voices", "clips", "conditionals", "meta"} <= tables
    assert version == SCHEMA_HEAD
    assert mode == "wal"


def test_the_built_wheel_ships_the_migrations(tmp_path: Path):
    """Opening a library runs the migrations, so an installed wheel (not the source tree) must carry them."""
    import shutil
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parent.parent
    source = tmp_path / "source"  # a clean copy of the tracked files: no stale build/ of earlier runs
    tracked = subprocess.run(["git", "ls-files"], cwd=root, check=True, capture_output=True, text=True).stdout
    for name in tracked.splitlines():
        if (root / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("voicedb-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "voicedb/migrations/env.py" in names
    assert any(n.startswith("voicedb/migrations/versions/0001_") for n in names)
    assert "voicedb/migrations/script.py.mako" in names


def test_a_library_created_at_0001_gets_the_language_column_when_opened(standin: Path):
    """An existing library upgrades on open: its voices keep everything and have no language yet."""
    import json

    from alembic import command
    from alembic.config import Config
    from conftest import list_json, run

    standin.mkdir(parents=True)
    old = Store(sqlite_url(standin / "voicedb.sqlite"))
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    with old.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001_initial")
    old.close()
    with sqlite3.connect(standin / "voicedb.sqlite") as con:
        con.execute(
            "INSERT INTO voices (id, name, tags, embedding, encoder, created_at, updated_at)"
            " VALUES ('0123abcd', 'olga', '[]', ?, 'enc', '2026-11-25 13:43:43.000000', '2026-11-25 13:43:43.000000')",
            (bytes(4 * 256),),
        )
        assert "language" not in {row[1] for row in con.execute("PRAGMA table_info(voices)")}

    listed = list_json()
    assert [(v["id"], v["name"], v["language"]) for v in listed] == [("0123abcd", "olga", None)]
    with sqlite3.connect(standin / "voicedb.sqlite") as con:
        assert "language" in {row[1] for row in con.execute("PRAGMA table_info(voices)")}
        assert con.execute("SELECT version_num FROM alembic_version").fetchone() == (SCHEMA_HEAD,)
        assert con.execute("SELECT language FROM voices").fetchall() == [(None,)]
    assert run("language", "olga", "sv").exit_code == 0
    assert json.loads(run("show", "olga", "--json").stdout)["language"] == "sv"


def test_the_same_migrations_build_the_schema_on_postgresql(postgres):
    """PostgreSQL gets the schema from the very migrations SQLite does, and nothing runs them on open."""
    from sqlalchemy import inspect

    store = Store(postgres.database())
    assert store.needs_upgrade() and store.revision() is None
    store.upgrade()
    assert not store.needs_upgrade() and store.revision() == SCHEMA_HEAD
    tables = set(inspect(store.engine).get_table_names())
    assert {"voices", "clips", "conditionals", "meta", "clip_vectors", "voice_vectors", "changes"} <= tables
    store.close()
