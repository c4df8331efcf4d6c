"""The FAISS index follows the library's size: exact up to ``VOICEDB_INDEX_EXACT_MAX`` voices, IVF above.

Libraries here run on the stand-in engine (each recording its own random unit vector), so a switch
size of a few voices exercises both kinds with real FAISS and real SQLite.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import SPEECH_DIR, run, run_fails

from voicedb import VoiceDB
from voicedb.index import FLAT, IVF, kind_for, kind_of, misfit, new_index, update

CLIP = SPEECH_DIR / "arctic_slt_1.flac"


def add_voices(db: VoiceDB, count: int, first: int = 0) -> list[str]:
    """``count`` voices, each one recording of the same clip at its own gain (so its own stand-in vector)."""
    wav, rate = soundfile.read(CLIP, dtype="float32")
    return [
        db.add([(wav * (0.9 - 0.01 * i), rate)], name=f"voice-{i}", conditionals=False).voice.id
        for i in range(first, first + count)
    ]


def saved_kind(home: Path) -> str:
    return json.loads((home / "index.json").read_text())["kind"]


def nearest_is_itself(db: VoiceDB, ids: list[str]) -> bool:
    """Every voice, queried with its own stored matching vector, comes back first with a cosine of 1."""
    from sqlalchemy import select

    from voicedb.store import VoiceRow

    store = db.context.store
    with store.session() as session:
        pks, vectors = store.all_vectors(session)
        id_of = dict(session.execute(select(VoiceRow.pk, VoiceRow.id)).all())
    assert sorted(id_of[pk] for pk in pks) == sorted(ids)
    for pk, vector in zip(pks, vectors):
        best = db.match_vector(vector, k=1)[0]
        if best.id != id_of[pk] or abs(best.score - 1) > 1e-5:
            return False
    return True


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The kind of every index built from scratch (rebuilds), in order."""
    import voicedb.index

    kinds: list[str] = []
    original = voicedb.index.new_index

    def counted(*args, **kwargs):
        index = original(*args, **kwargs)
        kinds.append(kind_of(index))
        return index

    monkeypatch.setattr(voicedb.index, "new_index", counted)
    return kinds


def test_the_index_turns_ivf_past_the_switch_size_and_exact_again_below_it(
    standin: Path, monkeypatch: pytest.MonkeyPatch, builds: list[str]
):
    monkeypatch.setenv("VOICEDB_INDEX_EXACT_MAX", "3")
    db = VoiceDB()
    ids = add_voices(db, 3)
    assert saved_kind(standin) == FLAT
    ids += add_voices(db, 1, first=3)
    assert saved_kind(standin) == IVF and builds[-1] == IVF
    assert nearest_is_itself(db, ids)
    db.remove(ids.pop())
    assert saved_kind(standin) == FLAT and builds[-1] == FLAT
    assert nearest_is_itself(db, ids)
    built = len(builds)
    assert nearest_is_itself(VoiceDB(), ids) and len(builds) == built  # a fresh process reads the saved file


@pytest.mark.parametrize("exact_max", ["0", "1000"], ids=["ivf", "flat"])
def test_adds_and_removals_update_each_kind_in_place(
    standin: Path, monkeypatch: pytest.MonkeyPatch, builds: list[str], exact_max: str
):
    monkeypatch.setenv("VOICEDB_INDEX_EXACT_MAX", exact_max)
    db = VoiceDB()
    ids = add_voices(db, 3)
    kind = saved_kind(standin)
    assert kind == (IVF if exact_max == "0" else FLAT)
    built = len(builds)
    ids += add_voices(db, 2, first=3)
    removed = ids.pop(1)
    db.remove(removed)
    assert len(builds) == built, "an add or a removal rebuilt the index"
    assert saved_kind(standin) == kind
    assert json.loads((standin / "index.json").read_text())["count"] == len(ids)
    assert nearest_is_itself(db, ids)
    assert removed not in [m.id for m in db.match_vector(db.vector(ids[0]), k=10)]
    assert nearest_is_itself(VoiceDB(), ids)  # a fresh process loads the updated file


@pytest.mark.parametrize("exact_max", ["0", "1000"], ids=["ivf", "flat"])
def test_another_processs_changes_reach_a_loaded_index_through_the_change_log(
    standin: Path, monkeypatch: pytest.MonkeyPatch, builds: list[str], exact_max: str
):
    """A reader whose index is loaded applies the voices another writer changed, in place, for either kind."""
    monkeypatch.setenv("VOICEDB_INDEX_EXACT_MAX", exact_max)
    writer, reader = VoiceDB(), VoiceDB()
    ids = add_voices(writer, 3)
    assert nearest_is_itself(reader, ids)
    built = len(builds)
    ids += add_voices(writer, 2, first=3)
    writer.remove(ids.pop(0))
    assert nearest_is_itself(reader, ids)
    assert len(builds) == built, "the reader rebuilt its index instead of applying the change log"
    assert kind_of(reader.context.index._index) == (IVF if exact_max == "0" else FLAT)


def test_a_reader_further_behind_than_the_change_log_rebuilds(
    standin: Path, monkeypatch: pytest.MonkeyPatch, builds: list[str]
):
    import voicedb.store

    monkeypatch.setattr(voicedb.store, "CHANGE_LOG_GENERATIONS", 2)
    writer, reader = VoiceDB(), VoiceDB()
    ids = add_voices(writer, 1)
    assert nearest_is_itself(reader, ids)
    ids += add_voices(writer, 3, first=1)
    built = len(builds)
    assert nearest_is_itself(reader, ids)
    assert len(builds) > built


@pytest.mark.parametrize("exact_max", ["0", "1000"], ids=["ivf", "flat"])
def test_an_index_deleted_after_removals_is_rebuilt_without_the_removed_voices(
    standin: Path, monkeypatch: pytest.MonkeyPatch, exact_max: str
):
    monkeypatch.setenv("VOICEDB_INDEX_EXACT_MAX", exact_max)
    db = VoiceDB()
    ids = add_voices(db, 5)
    gone = [ids.pop(0), ids.pop(1)]
    db.remove(*gone)
    (standin / "index.faiss").unlink()
    fresh = VoiceDB()
    hits = [m.id for m in fresh.match_vector(fresh.vector(ids[0]), k=10)]
    assert sorted(hits) == sorted(ids)
    assert saved_kind(standin) == kind_for(3, int(exact_max))
    assert nearest_is_itself(fresh, ids)


def clustered(count: int, rng: np.random.Generator, centres: np.ndarray, spread: float = 0.03) -> np.ndarray:
    """Non-negative unit vectors around ``centres``, like speaker embeddings (ReLU outputs, normalised)."""
    picked = centres[rng.integers(0, len(centres), count)]
    vectors = np.maximum(picked + spread * rng.standard_normal(picked.shape), 0).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_ivf_finds_the_exact_nearest_voice_of_clustered_queries_with_exact_scores():
    rng = np.random.default_rng(7)
    centres = clustered(8, rng, np.abs(rng.standard_normal((1, 256))), spread=1.0)
    vectors = clustered(4000, rng, centres)
    pks = np.arange(4000, dtype=np.int64) * 3 + 1
    queries = clustered(200, rng, vectors[rng.integers(0, 4000, 200)])  # new recordings of stored voices
    exact, ivf = new_index(pks, vectors, exact_max=4000), new_index(pks, vectors, exact_max=1000)
    assert (kind_of(exact), kind_of(ivf)) == (FLAT, IVF) and ivf.nlist > 1 and ivf.nprobe < ivf.nlist
    exact_scores, exact_ids = exact.search(queries, 1)
    scores, found = ivf.search(queries, 1)
    assert np.mean(found[:, 0] == exact_ids[:, 0]) >= 0.99
    same = found[:, 0] == exact_ids[:, 0]
    assert np.allclose(scores[same, 0], exact_scores[same, 0], atol=1e-5)


def test_an_ivf_index_that_outgrew_its_training_no_longer_fits():
    rng = np.random.default_rng(3)
    vectors = clustered(4100, rng, clustered(8, rng, np.abs(rng.standard_normal((1, 256))), spread=1.0))
    index = new_index(np.arange(2000), vectors[:2000], exact_max=1000)
    assert misfit(index, 1000) is None
    update(index, [(pk, vectors[pk]) for pk in range(2000, 4100)], remove=())
    assert index.ntotal == 4100 and "trained with" in misfit(index, 1000)


def test_check_reports_an_index_whose_kind_does_not_fit_and_repair_rebuilds_it(
    standin: Path, monkeypatch: pytest.MonkeyPatch
):
    add_voices(VoiceDB(), 4)
    assert saved_kind(standin) == FLAT and run("check").exit_code == 0
    monkeypatch.setenv("VOICEDB_INDEX_EXACT_MAX", "3")  # the switch size is lowered under an existing library
    report = json.loads(run("check", "--json").stdout)
    assert [p["kind"] for p in report] == ["index"]
    assert "is flat but 4 voices call for ivf" in report[0]["message"]
    assert run("check", "--repair").exit_code == 0
    assert saved_kind(standin) == IVF and run("check").exit_code == 0


def test_a_switch_size_that_is_not_a_count_is_refused_in_one_line(standin: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VOICEDB_INDEX_EXACT_MAX", "lots")
    assert "VOICEDB_INDEX_EXACT_MAX must be a whole number" in run_fails("list")
