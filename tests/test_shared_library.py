"""One library, two backends: SQLite with files in its directory, and PostgreSQL with S3 object storage
shared by several machines (real servers: ``services``). Every test here runs on both (``backend``)
unless it is about PostgreSQL alone. A second "machine" is a second ``VoiceDB`` with a directory of its
own, sharing only the database and the storage (on SQLite, where one machine is all there is, it
shares the directory too)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import Backend, list_json, run, run_fails

from voicedb import VoiceDB
from voicedb.errors import LibraryError
from voicedb.index import VoiceIndex


def add(*args: str) -> dict:
    result = run("add", *args, "--no-conditionals", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def other_machine(backend: Backend, tmp_path: Path) -> VoiceDB:
    home = tmp_path / "other-machine" if backend.database_url else backend.home
    return VoiceDB(home, database_url=backend.database_url, storage_url=backend.storage_url)


def test_what_one_machine_changes_every_other_sees(backend: Backend, speakers, tmp_path: Path):
    (first, *_), (second, *_) = list(speakers.values())[:2]
    alice = add(str(first), "--name", "alice", "--tag", "narrator")
    with other_machine(backend, tmp_path) as other:
        assert [v.name for v in other.list()] == ["alice"]
        assert other.get("alice").tags == ["narrator"]
        bob = other.add([second], name="bob", conditionals=False).voice
        assert [v["name"] for v in list_json()] == ["alice", "bob"]
        assert run("rename", "bob", "robert").exit_code == 0
        other.tag("alice", add=["en"])
        assert other.get(bob.id).name == "robert"
        assert [v["name"] for v in list_json("--tag", "en")] == ["alice"]
        assert run("rm", alice["id"]).exit_code == 0
        assert [v.name for v in other.list()] == ["robert"]


def test_another_machine_finds_a_new_voice_by_applying_only_the_change(
    backend: Backend, speakers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Its FAISS index follows the change log: a voice enrolled elsewhere is found, one removed elsewhere is
    not, and neither costs a rebuild from every voice."""
    clips = list(speakers.values())
    for n, (clip, *_) in enumerate(clips[:3]):
        add(str(clip), "--name", f"voice{n}")
    with VoiceDB() as here, other_machine(backend, tmp_path) as other:
        assert other.context.index.size() == 3  # its index is built once, here
        rebuilds: list[int] = []
        built = VoiceIndex._built
        monkeypatch.setattr(VoiceIndex, "_built", lambda self, *a: rebuilds.append(1) or built(self, *a))
        add(str(clips[3][0]), "--name", "newcomer")
        store = here.context.store
        with store.session() as session:
            pks, vectors = store.all_vectors(session)
        newcomer = int(pks[-1])
        assert here.context.index.search(vectors[-1], k=1)[0][0] == newcomer
        assert other.context.index.search(vectors[-1], k=1)[0][0] == newcomer
        assert run("rm", "newcomer").exit_code == 0
        assert newcomer not in [pk for pk, _ in other.context.index.search(vectors[-1], k=5)]
        assert other.context.index.size() == 3
        assert rebuilds == []


def test_another_machine_drops_the_loaded_conditionals_of_a_voice_changed_elsewhere(
    backend: Backend, speakers, tmp_path: Path
):
    clips = list(speakers.values())
    kept, removed = (add(str(clip), "--name", f"voice{n}") for n, (clip, *_) in enumerate(clips[:2]))
    with other_machine(backend, tmp_path) as other:
        cache = other._conditionals
        pks = {voice_id: pk for pk, (voice_id, _) in other._catalog.by_pks(range(1, 100)).items()}
        for voice in (kept, removed):  # as if each had been spoken with there
            cache._cache[(pks[voice["id"]], "english")] = (f"conds/{voice['id']}.english.pt", object())
        assert other.context.index.size() == 2
        assert run("rm", removed["id"]).exit_code == 0
        assert other.context.index.size() == 1  # what any search does first: catch up with the library
        assert list(cache._cache) == [(pks[kept["id"]], "english")]


def test_writers_on_two_machines_are_serialised_and_nothing_is_lost(backend: Backend, speakers, tmp_path: Path):
    clips = [clip for speaker in speakers.values() for clip in speaker][:8]
    with VoiceDB() as here, other_machine(backend, tmp_path) as other:
        errors: list[BaseException] = []

        def enroll(db: VoiceDB, n: int) -> None:
            try:
                db.add([clips[n]], name=f"writer{n}", conditionals=False)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=enroll, args=(here if n % 2 else other, n)) for n in range(len(clips))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        expected = {f"writer{n}" for n in range(len(clips))}
        for db in (here, other):
            assert {v.name for v in db.list()} == expected
            assert db.match(clips[5], k=1)[0].name == "writer5"
    assert run("check").exit_code == 0


def test_check_finds_orphans_and_missing_files_in_the_storage(backend: Backend, speakers):
    clip = next(iter(speakers.values()))[0]
    voice = add(str(clip), "--name", "alice")
    with VoiceDB() as db:
        objects = db.context.objects
        objects.put("clips/" + "0" * 64 + ".wav", lambda temp: temp.write_bytes(b"left by a killed upload"))
        (kept,) = db.details(voice["id"])["clip_files"]
    result = run("check", "--json")
    assert result.exit_code == 1
    assert [problem["kind"] for problem in json.loads(result.stdout)] == ["orphan-file"]
    assert run("check", "--repair").exit_code == 0
    assert run("check").exit_code == 0
    objects.delete(kept["file"])
    result = run("check", "--json")
    assert [problem["kind"] for problem in json.loads(result.stdout)] == ["missing-clip"]


def test_a_library_moves_from_sqlite_to_the_backend_by_export_and_import(
    backend: Backend, speakers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Moving a library from one machine's SQLite to PostgreSQL is ``export --all`` from the one and
    ``import --all`` into the other: ids, names, tags and files come along."""
    clips = list(speakers.values())
    source = ["--home", str(tmp_path / "sqlite-library")]
    with monkeypatch.context() as plain:
        for key in ("VOICEDB_DATABASE_URL", "VOICEDB_STORAGE_URL"):
            plain.delenv(key, raising=False)
        added = [
            json.loads(
                run(
                    *source, "add", str(clip), "--name", f"voice{n}", "--tag", "moved", "--no-conditionals", "--json"
                ).stdout
            )
            for n, (clip, *_) in enumerate(clips[:3])
        ]
        exported = run(*source, "export", "--all", str(tmp_path / "backup"))
        assert exported.exit_code == 0, exported.output
    result = run("import", "--all", str(tmp_path / "backup"))
    assert result.exit_code == 0, result.output
    moved = list_json()
    assert [(v["id"], v["name"], v["tags"]) for v in moved] == [(v["id"], v["name"], ["moved"]) for v in added]
    assert run("check").exit_code == 0
    assert run("match", str(clips[1][0]), "--json").exit_code == 0


# -- PostgreSQL alone ------------------------------------------------------------------------------------


def test_a_postgresql_database_is_migrated_on_purpose_and_refused_until_then(postgres, tmp_path: Path):
    url = postgres.database()
    with pytest.raises(LibraryError, match=r"has no voicedb schema yet; run `voicedb db upgrade`"):
        VoiceDB(tmp_path / "home", database_url=url)
    message = run_fails("--home", str(tmp_path / "home"), "--database-url", url, "list", code=2)
    assert "voicedb db upgrade" in message
    result = run("--home", str(tmp_path / "home"), "--database-url", url, "db", "upgrade")
    assert result.exit_code == 0 and result.stdout.startswith("schema upgraded from empty to ")
    result = run("--home", str(tmp_path / "home"), "--database-url", url, "db", "upgrade")
    assert result.stdout.startswith("schema already at ")
    status = json.loads(run("--home", str(tmp_path / "home"), "--database-url", url, "db", "status", "--json").stdout)
    assert status["database"] == url and status["schema"] != "none"


@pytest.mark.parametrize("backend", ["postgres+s3"], indirect=True)
def test_a_dead_writer_leaves_no_lock_behind(backend: Backend, speakers):
    """The writer lock of a PostgreSQL library is the server's: a writer killed while holding it (a machine that
    dies mid-change) releases it with its connection, and the next writer goes ahead at once."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from voicedb import VoiceDB; db = VoiceDB(); lock = db.context.writer.held(); "
            "lock.__enter__(); print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with VoiceDB() as db:
            with db.context.writer.try_held() as free:
                assert not free
            holder.send_signal(signal.SIGKILL)
            holder.wait(10)
            clip = next(iter(speakers.values()))[0]
            db.context.writer.timeout_s = 10
            assert db.add([clip], name="after", conditionals=False).voice.name == "after"
    finally:
        holder.kill()
        holder.wait()


def test_an_unreachable_database_or_storage_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from services import free_port

    home = ["--home", str(tmp_path / "home")]
    nowhere = f"postgresql+psycopg://voicedb@127.0.0.1:{free_port()}/voicedb"
    assert run_fails(*home, "--database-url", nowhere, "list").startswith(f"Error: cannot reach database {nowhere}: ")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    assert run_fails(*home, "--storage-url", "s3://voices/library", "list").startswith(
        "Error: cannot reach storage s3://voices/library: "
    )
