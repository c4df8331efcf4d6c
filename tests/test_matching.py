"""Matching on real speech: the same speaker scores above the library's threshold, other speakers below."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import list_json, run, run_fails

from voicedb import VoiceDB


@pytest.fixture
def enrolled(home: Path, multi_clip_speakers) -> dict[str, str]:
    """Each multi-clip speaker enrolled from its first clip; returns speaker -> voice id."""
    ids = {}
    for speaker, clips in multi_clip_speakers.items():
        result = run("add", str(clips[0]), "--name", speaker, "--no-conditionals", "--json")
        assert result.exit_code == 0, result.output
        ids[speaker] = json.loads(result.stdout)["id"]
    return ids


def threshold() -> float:
    """The threshold ``match`` applies to the test library (shipped for its matcher with the test weights)."""
    applied = VoiceDB().threshold()
    assert applied.kind == "shipped"
    return applied.value


def test_another_clip_of_each_speaker_matches_that_speaker_above_the_threshold(enrolled, multi_clip_speakers):
    for speaker, clips in multi_clip_speakers.items():
        for query in clips[1:]:
            result = run("match", str(query), "--json")
            assert result.exit_code == 0, (speaker, query, result.output)
            hits = json.loads(result.stdout)["matches"]
            assert hits[0]["id"] == enrolled[speaker], (query.name, hits)
            assert hits[0]["score"] >= threshold()


def test_other_speakers_rank_below_and_under_the_threshold(enrolled, multi_clip_speakers):
    for speaker, clips in multi_clip_speakers.items():
        hits = json.loads(run("match", str(clips[1]), "--all", "-k", "10", "--json").stdout)["matches"]
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
        others = [h for h in hits if h["id"] != enrolled[speaker]]
        assert others and all(h["score"] < threshold() for h in others), (speaker, hits)


def test_unknown_speaker_gives_no_match_and_exit_code_1(home: Path, speakers, multi_clip_speakers):
    known = next(iter(multi_clip_speakers))
    stranger = next(s for s in speakers if s != known)
    assert run("add", str(multi_clip_speakers[known][0]), "--name", known, "--no-conditionals").exit_code == 0
    line = run_fails("match", str(speakers[stranger][-1]), code=1)
    assert "unknown speaker" in line


def test_match_json_shape_and_k(enrolled, multi_clip_speakers):
    query = next(iter(multi_clip_speakers.values()))[1]
    hits = json.loads(run("match", str(query), "--all", "-k", "2", "--json").stdout)["matches"]
    assert len(hits) == 2
    assert all(set(h) >= {"id", "name", "score"} for h in hits)
    listed = list_json()
    assert all(set(v) >= {"id", "name"} and "score" not in v for v in listed)


def test_text_output_lists_scores_best_first(enrolled, multi_clip_speakers):
    speaker, clips = next(iter(multi_clip_speakers.items()))
    result = run("match", str(clips[1]))
    first = result.stdout.splitlines()[0].split()
    assert float(first[0]) >= threshold() and first[1] == enrolled[speaker] and first[2] == speaker


def test_index_is_rebuilt_from_sqlite_when_deleted_or_corrupt(enrolled, multi_clip_speakers, home: Path):
    speaker, clips = next(iter(multi_clip_speakers.items()))
    expected = json.loads(run("match", str(clips[1]), "--json").stdout)["matches"]
    (home / "index.faiss").unlink()
    assert json.loads(run("match", str(clips[1]), "--json").stdout)["matches"] == expected
    assert (home / "index.faiss").exists()
    (home / "index.faiss").write_bytes(b"garbage")
    assert json.loads(run("match", str(clips[1]), "--json").stdout)["matches"] == expected


def test_a_stale_index_is_detected_by_its_generation(enrolled, multi_clip_speakers, home: Path):
    """An index file saved before a voice's vector moved names only existing voices, so only its
    generation stamp tells that it is stale: matching must not use the old vector."""
    speaker, clips = next(iter(multi_clip_speakers.items()))
    query = str(clips[1])
    stale = (home / "index.faiss").read_bytes(), (home / "index.json").read_bytes()
    before = json.loads(run("match", query, "--all", "--json").stdout)["matches"]
    assert run("add", str(clips[1]), "--voice", speaker, "--no-conditionals").exit_code == 0  # moves its vector
    (home / "index.faiss").unlink()
    fresh = json.loads(run("match", query, "--all", "--json").stdout)["matches"]  # rebuilt from SQLite
    assert fresh[0]["score"] > before[0]["score"] + 0.01  # the query clip is now part of the voice
    (home / "index.faiss").write_bytes(stale[0])
    (home / "index.json").write_bytes(stale[1])
    assert json.loads(run("match", query, "--all", "--json").stdout)["matches"] == fresh
