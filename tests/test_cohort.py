"""Cohort margins: a score less what the query and the voice score with their nearest other voices.

A source of look-alike voices (one telephone line's prompt voices) scores high with every voice of it; the
margin tells its strangers from its speakers where a fixed cosine threshold cannot (docs/matching.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import run
from sqlalchemy import select

from voicedb import VoiceDB
from voicedb.calibration import calibration_scores
from voicedb.campplus import CAMPPLUS_FILE
from voicedb.catalog import matcher_vector
from voicedb.cohort import TOP, margins, shipped_cohort, top_mean, top_means_without
from voicedb.files import sha256_file
from voicedb.matchers import fuse, mean_embedding
from voicedb.matching import Margins, VoiceCohort
from voicedb.store import VoiceRow

FUSED = "chatterbox+campplus"


def unit_rows(rng: np.random.Generator, count: int, dimension: int = 16) -> np.ndarray:
    rows = rng.normal(size=(count, dimension))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def margin(score: float, query_cohort: list[float], voice_cohort: list[float], top: int = TOP) -> float:
    """The definition, written out."""
    best = lambda scores: float(np.mean(sorted(scores, reverse=True)[:top]))  # noqa: E731
    return score - (best(query_cohort) + best(voice_cohort)) / 2


def test_top_means_without_leaves_each_voice_out_of_its_own_cohort():
    pool = np.random.default_rng(1).uniform(-1, 1, size=(7, 12))
    found = top_means_without(pool, width=5, top=3)
    for row in range(7):
        for left_out in range(5):
            kept = np.delete(pool[row], left_out)
            assert np.isclose(found[row, left_out], np.sort(kept)[::-1][:3].mean())


def test_top_mean_ignores_voices_outside_the_cohort_and_an_empty_cohort_gives_zero():
    assert top_mean(np.array([[0.5, -np.inf, 0.3, 0.1]]), top=2)[0] == 0.4
    assert top_mean(np.array([[-np.inf, 0.2]]), top=4)[0] == 0.2
    assert top_mean(np.full((1, 3), -np.inf))[0] == 0.0


def test_a_stranger_among_look_alike_voices_is_told_from_their_speaker():
    """Five voices of one telephone line score 0.70 with each other; a fixed 0.64 takes the stranger too."""
    look_alikes = np.full((5, 5), 0.70)
    np.fill_diagonal(look_alikes, -np.inf)
    genuine = np.array([0.85, 0.70, 0.70, 0.70, 0.70])  # a clip of voice 0
    stranger = np.array([0.72, 0.71, 0.71, 0.70, 0.70])  # another voice of the same line, not enrolled
    query_cohort = lambda scores: np.where(np.eye(5, dtype=bool), -np.inf, scores[None, :])  # noqa: E731
    ours = margins(genuine, query_cohort(genuine), look_alikes)
    theirs = margins(stranger, query_cohort(stranger), look_alikes)
    assert genuine.max() >= 0.64 and stranger.max() >= 0.64
    assert ours[0] - theirs.max() > 0.1  # 0.15 above the cohort against 0.012
    assert np.isclose(ours[0], margin(0.85, [0.70] * 4, [0.70] * 4))


def test_a_voice_s_cohort_leaves_out_the_voice_it_is_compared_with():
    """``similar`` compares two stored voices: neither is the other's cohort, or duplicates would hide each other."""
    cohort = VoiceCohort(np.array([7, 3, 9]), np.array([0.9, 0.5, 0.4]), np.array([0.1]))
    assert cohort.scores(2, exclude=7).tolist() == [0.5, 0.4, 0.1]
    assert cohort.scores(2, exclude=None).tolist() == [0.9, 0.5, 0.1]


def test_calibration_margins_are_the_ones_match_would_give():
    rng = np.random.default_rng(7)
    clips = [list(unit_rows(rng, n)) for n in (3, 2, 1, 2)]
    vectors = [mean_embedding(own) for own in clips]
    shipped = unit_rows(rng, 6)
    same, different = calibration_scores(clips, vectors, Margins(2, shipped))
    expected_same, expected_different = [], []
    for a, own in enumerate(clips):
        others = [v for b, v in enumerate(vectors) if b != a]
        for n, clip in enumerate(own):
            if len(own) >= 2:
                left_out = mean_embedding(own[:n] + own[n + 1 :])
                query_cohort = [clip @ v for v in others] + list(shipped @ clip)
                voice_cohort = [left_out @ v for v in others] + list(shipped @ left_out)
                expected_same.append(margin(clip @ left_out, query_cohort, voice_cohort, top=2))
            for b, voice in enumerate(vectors):
                if b == a:
                    continue
                query_cohort = [clip @ v for c, v in enumerate(vectors) if c != b] + list(shipped @ clip)
                voice_cohort = [voice @ v for c, v in enumerate(vectors) if c != b] + list(shipped @ voice)
                expected_different.append(margin(clip @ voice, query_cohort, voice_cohort, top=2))
    assert np.allclose(same, expected_same) and np.allclose(different, expected_different)


def voice_vectors(db: VoiceDB) -> dict[str, np.ndarray]:
    with db.context.store.session() as session:
        return {row.id: matcher_vector(row, FUSED) for row in session.scalars(select(VoiceRow))}


def first_clip_vector(db: VoiceDB, voice_id: str) -> np.ndarray:
    with db.context.store.session() as session:
        row = session.scalars(select(VoiceRow).where(VoiceRow.id == voice_id)).one()
        parts = {v.encoder: np.frombuffer(v.vector, np.float32) for v in row.clips[0].match_vectors}
    return fuse([parts["chatterbox"], parts["campplus"]])


def expected_margins(
    db: VoiceDB, query: np.ndarray, shipped: np.ndarray, itself: str | None = None
) -> dict[str, float]:
    """Every voice's margin for ``query`` from the definition: the library's other voices and the shipped cohort
    (``itself``: the stored voice the query is, which is neither scored nor in any cohort)."""
    stored = {i: v for i, v in voice_vectors(db).items() if i != itself}
    found = {}
    for voice_id, vector in stored.items():
        others = [v for other, v in stored.items() if other != voice_id]
        query_cohort = [float(query @ v) for v in others] + list(shipped @ query)
        voice_cohort = [float(vector @ v) for v in others] + list(shipped @ vector)
        found[voice_id] = margin(float(query @ vector), query_cohort, voice_cohort)
    return found


def test_match_scores_are_cohort_margins_and_follow_the_library_as_it_changes(
    home: Path, checkpoint: Path, multi_clip_speakers
):
    sums = [sha256_file(checkpoint / name)[:16] for name in ("ve.safetensors", CAMPPLUS_FILE)]
    shipped = shipped_cohort(":".join([FUSED, *sums]))
    assert shipped is not None
    ids = []
    for speaker, clips in list(multi_clip_speakers.items())[:-1]:
        ids.append(json.loads(run("add", *map(str, clips), "--name", speaker, "--json").stdout)["id"])
    db = VoiceDB()
    assert db.threshold().scores == "cohort margin"
    query = first_clip_vector(db, ids[0])
    for _ in range(2):  # the second time, each voice's cohort scores come from the cache
        hits = db.match_vector(query, k=len(ids))
        expected = expected_margins(db, query, shipped)
        assert {hit.id: round(hit.score, 5) for hit in hits} == {i: round(s, 5) for i, s in expected.items()}
        assert all(hit.cosine is not None and hit.cosine > hit.score for hit in hits)
    similar = db.similar(ids[0], k=len(ids))
    expected = expected_margins(db, voice_vectors(db)[ids[0]], shipped, itself=ids[0])
    assert {hit.id: round(hit.score, 5) for hit in similar} == {i: round(s, 5) for i, s in expected.items()}
    last, clips = list(multi_clip_speakers.items())[-1]
    run("add", *map(str, clips), "--name", last)  # every voice's cohort changes with it
    hits = db.match_vector(query, k=len(ids) + 1)
    assert {hit.id: round(hit.score, 5) for hit in hits} == {
        i: round(s, 5) for i, s in expected_margins(db, query, shipped).items()
    }
