"""Voices as embeddings alone: export and import an ``.npz``, clip-less voices, listing a big library.

Storage and naming only, so these run on the stand-in engine, except the one test that speaks.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import library_digest, list_json, run, run_fails
from standin import StandInEngine
from test_bombs import GIB, PEAK_LIMIT_KB, voicedb_with_peak_memory

from voicedb import VoiceDB

ENCODER = StandInEngine.encoder_checksum


def unit_vectors(count: int, seed: int = 0, dim: int = 256) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def npz(path: Path, names: list[str], vectors: np.ndarray, encoder: str = ENCODER, **extra: np.ndarray) -> Path:
    """An embeddings file written by hand, as another program would write one."""
    np.savez(path, names=np.array(names), vectors=vectors, encoder=np.array(encoder), **extra)
    return path


def imported(path: Path, *args: str) -> int:
    result = run("import", "--embeddings", str(path), "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["imported"]


# -- export and import ------------------------------------------------------------------------------
def test_exported_embeddings_import_into_another_library_with_the_same_ids_names_and_vectors(
    standin: Path, speakers, tmp_path: Path
):
    for name, clips in list(speakers.items())[:3]:
        assert run("add", str(clips[0]), "--name", name, "--no-conditionals").exit_code == 0
    out = tmp_path / "voices.npz"
    assert run("export", "--embeddings", str(out)).stdout == f"wrote {out} (3 voices)\n"

    with np.load(out, allow_pickle=False) as data:
        assert sorted(data.files) == ["encoder", "ids", "names", "vectors"]
        ids, names, vectors = data["ids"].tolist(), data["names"].tolist(), data["vectors"]
        assert data["encoder"].shape == () and str(data["encoder"]) == ENCODER
    assert vectors.dtype == np.float32 and vectors.shape == (3, 256)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    with VoiceDB(standin) as source:
        assert [(v.id, v.name) for v in source.list()] == list(zip(ids, names, strict=True))
        assert all(np.array_equal(source.vector(i), vector) for i, vector in zip(ids, vectors, strict=True))

    other = tmp_path / "other"
    assert run("--home", str(other), "import", "--embeddings", str(out)).stdout == (
        f"imported 3 voices without clips from {out}\n"
    )
    with VoiceDB(other) as copy:
        assert [(v.id, v.name, v.clips, v.models) for v in copy.list()] == [
            (i, n, 0, []) for i, n in zip(ids, names, strict=True)
        ]
        for voice_id, name, vector in zip(ids, names, vectors, strict=True):
            assert np.array_equal(copy.vector(voice_id), vector)
            best = copy.match_vector(vector, k=2)[0]
            assert (best.id, best.name) == (voice_id, name) and best.score == pytest.approx(1.0, abs=1e-5)


def test_a_file_without_ids_gets_fresh_ids_and_unnormalised_vectors_are_normalised(standin: Path, tmp_path: Path):
    vectors = unit_vectors(4) * np.float32(3.0)
    assert imported(npz(tmp_path / "e.npz", ["a", "b", "c", "d"], vectors)) == 4
    with VoiceDB(standin) as db:
        voices = db.list()
        assert [v.name for v in voices] == ["a", "b", "c", "d"] and len({v.id for v in voices}) == 4
        assert np.allclose(db.vector("c"), vectors[2] / 3.0, atol=1e-6)
        assert db.match_vector(vectors[1], k=1)[0].name == "b"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"encoder": "0" * 64}, "come from another voice encoder"),
        ({"vectors": unit_vectors(3, dim=192)}, "vectors must be float32 of shape (N, 256)"),
        ({"vectors": unit_vectors(3).astype(np.float64)}, "vectors must be float32"),
        ({"nan": 1}, "vector 1 is not finite"),
        ({"zero": 2}, "vector 2 is zero"),
        ({"names": ["x", "y", "x"]}, "the name 'x' appears more than once"),
        ({"names": ["x", "", "z"]}, "name 1: a voice name cannot be empty"),
        ({"names": ["x", "y"]}, "names must be 3 strings"),
        ({"ids": np.array(["0000aaaa", "0000bbbb", "0000aaaa"])}, "the id '0000aaaa' appears more than once"),
        ({"ids": np.array(["0000aaaa", "nothex!!", "0000cccc"])}, "id 1 ('nothex!!') is not 8 lowercase hex digits"),
        ({"taken": "name"}, "the library already has a voice with the name 'keep'"),
        ({"taken": "id"}, "the library already has a voice with the id"),
        ({"extra": np.zeros(3)}, "holds exactly"),
    ],
)
def test_a_bad_file_is_refused_whole_and_the_library_is_unchanged(
    standin: Path, speakers, tmp_path: Path, change: dict, message: str
):
    clip = next(iter(speakers.values()))[0]
    keep = json.loads(run("add", str(clip), "--name", "keep", "--no-conditionals", "--json").stdout)
    vectors = change.get("vectors", unit_vectors(3))
    if "nan" in change:
        vectors[change["nan"], 5] = np.nan
    if "zero" in change:
        vectors[change["zero"]] = 0.0
    names = change.get("names", ["keep" if change.get("taken") == "name" else "x", "y", "z"])
    extra = {key: change[key] for key in ("ids", "extra") if key in change}
    if change.get("taken") == "id":
        extra["ids"] = np.array([keep["id"], "0000bbbb", "0000cccc"])
    path = npz(tmp_path / "bad.npz", names, vectors, change.get("encoder", ENCODER), **extra)
    before = library_digest(standin)

    error = run_fails("import", "--embeddings", str(path))
    assert message in error, error
    assert library_digest(standin) == before
    assert [v["name"] for v in list_json()] == ["keep"]


def test_export_never_overwrites_without_force_and_an_empty_library_has_nothing_to_export(
    standin: Path, tmp_path: Path
):
    out = tmp_path / "voices.npz"
    assert "no voices to export" in run_fails("export", "--embeddings", str(out))
    imported(npz(tmp_path / "e.npz", ["a"], unit_vectors(1)))
    out.write_bytes(b"mine")
    assert "already exists" in run_fails("export", "--embeddings", str(out))
    assert run("export", "--embeddings", str(out), "--force").exit_code == 0
    assert out.read_bytes() != b"mine"


# -- voices without clips ---------------------------------------------------------------------------
def test_a_voice_without_clips_is_valid_shown_as_such_and_cannot_speak_until_clips_are_added(
    standin: Path, speakers, tmp_path: Path
):
    imported(npz(tmp_path / "e.npz", ["quiet"], unit_vectors(1)))
    voice_id = list_json()[0]["id"]
    assert run("check").stdout == "library is consistent\n"
    assert f"clips:      none (add clips with `voicedb add CLIP --voice {voice_id}`)\n" in run("show", "quiet").stdout
    assert list_json()[0]["clips"] == 0
    assert run("list").stdout.splitlines()[1].split()[2] == "none"

    error = run_fails("speak", "--voice", "quiet", "Hello.")
    assert error == (
        f"Error: voice {voice_id} has no clips (it was imported as an embedding): "
        f"add clips with `voicedb add CLIP --voice {voice_id}`."
    )
    clip = next(iter(speakers.values()))[0]
    assert run("add", str(clip), "--voice", "quiet", "--no-conditionals").exit_code == 0
    assert list_json()[0]["clips"] == 1
    assert run("check").stdout == "library is consistent\n"
    # the stand-in computes no conditionals: getting that far means the clips are used now
    assert "computes no conditionals" in run_fails("speak", "--voice", "quiet", "Hello.")


def test_a_voice_imported_as_an_embedding_speaks_once_a_clip_is_added(home: Path, speakers, tmp_path: Path):
    with VoiceDB() as db:
        encoder = db.engine.encoder_checksum
    imported(npz(tmp_path / "e.npz", ["late"], unit_vectors(1), encoder))
    assert "has no clips" in run_fails("speak", "--voice", "late", "Hello.", "--max-tokens", "5")
    clip = next(iter(speakers.values()))[0]
    assert run("add", str(clip), "--voice", "late").exit_code == 0
    result = run("speak", "--voice", "late", "Hello.", "-o", str(tmp_path / "late.wav"), "--max-tokens", "5")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "late.wav").stat().st_size > 44


# -- listing --------------------------------------------------------------------------------------
@pytest.fixture
def thirty(standin: Path, tmp_path: Path) -> list[str]:
    """30 clip-less voices named Voice-00 .. Voice-29; the multiples of 3 tagged "three", of 9 "nine" too."""
    names = [f"Voice-{n:02d}" for n in range(30)]
    imported(npz(tmp_path / "thirty.npz", names, unit_vectors(30)))
    with VoiceDB(standin) as db:
        for n in range(0, 30, 3):
            db.tag(names[n], add=["three", *(["nine"] if n % 9 == 0 else [])])
    return names


def test_list_pages_with_limit_and_offset(thirty: list[str]):
    assert [v["name"] for v in list_json("--limit", "5")] == thirty[:5]
    assert [v["name"] for v in list_json("--limit", "5", "--offset", "27")] == thirty[27:]
    assert [v["name"] for v in list_json("--offset", "12")] == thirty[12:]
    assert list_json("--offset", "30") == [] and list_json("--limit", "0") == []
    assert "no voices match" in run("list", "--offset", "30").stderr


def test_list_filters_by_tag_and_by_a_case_insensitive_name_pattern(thirty: list[str]):
    assert [v["name"] for v in list_json("--tag", "three")] == thirty[::3]
    assert [v["name"] for v in list_json("--tag", "nine")] == ["Voice-00", "Voice-09", "Voice-18", "Voice-27"]
    assert list_json("--tag", "thre") == []
    assert [v["name"] for v in list_json("--name", "voice-1*")] == thirty[10:20]
    assert [v["name"] for v in list_json("--name", "*-?5")] == ["Voice-05", "Voice-15", "Voice-25"]
    assert [v["name"] for v in list_json("--name", "VOICE-07")] == ["Voice-07"]
    assert list_json("--name", "Voice_07") == [] and list_json("--name", "Voice%") == []  # no SQL wildcards
    both = list_json("--tag", "three", "--name", "*2?", "--limit", "2", "--offset", "1")
    assert [v["name"] for v in both] == ["Voice-24", "Voice-27"]


def test_list_json_prints_one_object_per_line(thirty: list[str]):
    lines = run("list", "--json", "--limit", "3").stdout.splitlines()
    assert len(lines) == 3
    assert [json.loads(line)["name"] for line in lines] == thirty[:3]
    assert set(json.loads(lines[0])) >= {"id", "name", "tags", "clips", "models", "language", "created_at"}


def test_listing_streams_page_after_page_in_the_database(thirty: list[str], standin: Path, monkeypatch):
    import voicedb.catalog

    monkeypatch.setattr(voicedb.catalog, "PAGE_ROWS", 4)
    with VoiceDB(standin) as db:
        assert [v.name for v in db.voices()] == thirty
        assert [v.name for v in db.list(offset=3, limit=9)] == thirty[3:12]
        assert [v.name for v in db.list(tag="three", offset=2)] == thirty[6::3]
    assert [v["name"] for v in list_json("--offset", "5")] == thirty[5:]
    rows = run("list", "--offset", "25").stdout.splitlines()
    assert rows[0].split() == ["ID", "NAME", "CLIPS", "SECONDS", "MODELS", "TAGS"]
    assert [row.split()[1] for row in rows[1:]] == thirty[25:]


def test_a_voice_is_found_by_id_prefix_among_many(thirty: list[str], standin: Path):
    with VoiceDB(standin) as db:
        voice = db.get("Voice-17")
        assert db.get(voice.id[:5]).name == "Voice-17"
        assert run("show", voice.id[:6]).stdout.startswith(f"id:         {voice.id}\n")


# -- untrusted files --------------------------------------------------------------------------------
def npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def npz_bomb(path: Path) -> Path:
    """Honest headers and names, but a ``vectors.npy`` of 1 GiB of zeros deflated to about 1 MB."""
    count = GIB // (256 * 4)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("encoder.npy", npy_header((), "<U64") + ENCODER.encode("utf-32-le"))
        archive.writestr("names.npy", npy_header((count,), "<U1") + bytes(4 * count))
        with archive.open("vectors.npy", "w", force_zip64=True) as member:
            member.write(npy_header((count, 256), "<f4"))
            block = bytes(1 << 20)
            for _ in range(GIB // len(block)):
                member.write(block)
    return path


def test_an_npz_bomb_is_refused_in_one_line_with_bounded_memory(standin: Path, tmp_path: Path):
    path = npz_bomb(tmp_path / "bomb.npz")
    assert path.stat().st_size < 16 << 20
    done, peak_kb = voicedb_with_peak_memory(standin, "import", "--embeddings", str(path))
    assert peak_kb < PEAK_LIMIT_KB, f"peak {peak_kb / 1024:.0f} MB"
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "refusing" in lines[0], done.stderr
    assert list_json() == []


@pytest.mark.parametrize(
    ("member", "data", "message"),
    [
        ("names.npy", npy_header((1 << 24,), "<U64"), "another size than its header announces"),  # 4 GiB?
        ("names.npy", npy_header((3,), "<U1") + bytes(12), "names must be 2 strings"),
        ("names.npy", npy_header((2,), "|O") + bytes(16), "Python objects"),  # a pickle
        ("names.npy", npy_header((2,), "<U4") + bytes(8), "another size than its header announces"),
        ("names.npy", b"not an npy file at all", "not a plain .npy array"),
        ("../names.npy", b"", "holds exactly"),
    ],
)
def test_a_forged_member_is_refused_from_its_header(standin: Path, tmp_path: Path, member, data, message):
    honest = npz(tmp_path / "honest.npz", ["a", "b"], unit_vectors(2))
    path = tmp_path / "forged.npz"
    with zipfile.ZipFile(honest) as source, zipfile.ZipFile(path, "w") as forged:
        for info in source.infolist():
            if info.filename != "names.npy":
                forged.writestr(info.filename, source.read(info))
        forged.writestr(member, data)
    assert message in run_fails("import", "--embeddings", str(path))
    assert list_json() == []
    assert "no such file" in run_fails("import", "--embeddings", str(honest.with_name("missing.npz")))
