"""Which speaker encoders a library matches with: the matching vectors kept per encoder beside the conditionals'
embedding, the default where CAM++'s weights are available, switching without re-enrolling, and the clear lines
when weights are missing or vectors cannot be compared."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import run, run_fails

from voicedb import VoiceDB
from voicedb.audio import load_query
from voicedb.campplus import CAMPPLUS_FILE
from voicedb.embeddings import Embeddings, read_npz, write_npz
from voicedb.matchers import fuse

FUSED = "chatterbox+campplus"


def enroll(clips: list[Path], name: str) -> str:
    result = run("add", *map(str, clips), "--name", name, "--no-conditionals", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["id"]


def best(clip: Path, *args: str) -> dict:
    result = run(*args, "match", str(clip), "--all", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def rows(home: Path, query: str) -> list[tuple]:
    with sqlite3.connect(home / "voicedb.sqlite") as db:
        return db.execute(query).fetchall()


@pytest.fixture
def without_campplus(tmp_path: Path, checkpoint: Path) -> Path:
    """The test checkpoint without CAM++'s weights (the hub is never reached: ``HF_HUB_OFFLINE``)."""
    directory = tmp_path / "no-campplus"
    directory.mkdir()
    for item in checkpoint.iterdir():
        if item.name != CAMPPLUS_FILE:
            (directory / item.name).symlink_to(item)
    return directory


def test_fusing_unit_vectors_gives_unit_vectors_whose_inner_product_is_the_mean_cosine():
    rng = np.random.default_rng(0)
    a, b, c, d = (v / np.linalg.norm(v) for v in rng.standard_normal((4, 8)))
    x, y = fuse([a, b]), fuse([c, d])
    assert np.linalg.norm(x) == pytest.approx(1.0) and float(x @ y) == pytest.approx((a @ c + b @ d) / 2)


def test_a_new_library_with_campplus_weights_matches_with_both_encoders(home: Path, multi_clip_speakers):
    (speaker, clips), (other, other_clips) = list(multi_clip_speakers.items())[:2]
    voice = enroll(clips[:1], speaker)
    enroll(other_clips[:1], other)
    assert run("matcher").stdout.strip() == FUSED
    answer = best(clips[1])
    assert answer["matcher"] == FUSED and answer["matches"][0]["name"] == speaker
    assert f"matcher:    {FUSED}" in run("show", voice).stdout.splitlines()


def test_the_conditionals_keep_upstreams_embedding_and_matching_vectors_are_kept_per_encoder(
    home: Path, multi_clip_speakers
):
    clips = next(iter(multi_clip_speakers.values()))
    enroll(clips[:2], "alice")
    db = VoiceDB()
    upstream = np.mean([db.engine.embed(load_query(c)) for c in clips[:2]], axis=0)
    assert np.allclose(db.vector("alice"), upstream / np.linalg.norm(upstream), atol=1e-6)
    per_clip = rows(home, "SELECT encoder, count(*) FROM clip_vectors GROUP BY encoder ORDER BY encoder")
    assert per_clip == [("campplus", 2), ("chatterbox", 2)]
    stored = dict(rows(home, "SELECT encoder, length(vector) FROM voice_vectors"))
    assert stored == {"campplus": 192 * 4, "chatterbox": 256 * 4}
    (matching,) = rows(home, "SELECT vector FROM voice_vectors WHERE encoder = 'chatterbox'")[0]
    # the matching vector comes from the speech only, so it is not the conditionals' embedding
    assert not np.allclose(np.frombuffer(matching, dtype=np.float32), db.vector("alice"), atol=1e-3)


def test_switching_matchers_embeds_nothing_already_kept_and_still_finds_each_speaker(home: Path, multi_clip_speakers):
    for speaker, clips in multi_clip_speakers.items():
        enroll(clips[:1], speaker)
    for matcher in ("campplus", "chatterbox", FUSED):
        switched = run("matcher", matcher)
        assert switched.exit_code == 0 and switched.stdout.strip() == f"matching with {matcher} (0 clips embedded)"
        for speaker, clips in multi_clip_speakers.items():
            answer = best(clips[1])
            assert answer["matcher"] == matcher and answer["matches"][0]["name"] == speaker, (matcher, answer)


def test_a_library_enrolled_without_campplus_gets_its_vectors_from_the_kept_clips_when_switching(
    home: Path, multi_clip_speakers, without_campplus: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bare = ("--checkpoint", str(without_campplus))
    speakers = list(multi_clip_speakers.items())[:3]
    for speaker, clips in speakers:
        assert run(*bare, "add", str(clips[0]), "--name", speaker, "--no-conditionals").exit_code == 0
    assert run(*bare, "matcher").stdout.strip() == "chatterbox"
    assert rows(home, "SELECT DISTINCT encoder FROM clip_vectors") == [("chatterbox",)]
    line = run_fails(*bare, "matcher", "campplus")
    assert "CAM++ weights (campplus_cn_en_common.pt) are not in the checkpoint directory" in line

    switched = run("matcher", "campplus")  # with the full test checkpoint
    assert switched.stdout.strip() == f"matching with campplus ({len(speakers)} clips embedded)"
    for speaker, clips in speakers:
        assert best(clips[1])["matches"][0]["name"] == speaker


def test_a_library_matching_with_campplus_says_how_to_go_on_when_its_weights_are_missing(
    home: Path, multi_clip_speakers, without_campplus: Path, monkeypatch: pytest.MonkeyPatch
):
    speaker, clips = next(iter(multi_clip_speakers.items()))
    enroll(clips[:1], speaker)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = run_fails("--checkpoint", str(without_campplus), "match", str(clips[1]))
    assert f"this library matches with {FUSED}" in line and "`voicedb matcher chatterbox`" in line
    run("--checkpoint", str(without_campplus), "matcher", "chatterbox")
    assert best(clips[1], "--checkpoint", str(without_campplus))["matches"][0]["name"] == speaker


def test_a_library_mixing_clip_pt_and_embedding_only_voices_ranks_each_probe_to_its_own_voice(
    home: Path, multi_clip_speakers, tmp_path: Path
):
    speakers = list(multi_clip_speakers.items())[:6]
    for speaker, clips in speakers:
        enroll(clips[:1], speaker)
    everyone = tmp_path / "all.npz"
    assert run("export", "--embeddings", str(everyone)).exit_code == 0
    with_pt, embedding_only = [s for s, _ in speakers[2:4]], [s for s, _ in speakers[4:]]
    for speaker in with_pt:
        assert run("export", speaker, "-o", str(tmp_path / f"{speaker}.pt")).exit_code == 0
    run("rm", *with_pt, *embedding_only)
    for speaker in with_pt:
        assert run("import", str(tmp_path / f"{speaker}.pt"), "--name", speaker).exit_code == 0
    found = read_npz(everyone, 256)
    keep = [n for n, name in enumerate(found.names) if name in embedding_only]
    some = tmp_path / "some.npz"
    write_npz(some, Embeddings([found.names[n] for n in keep], found.vectors[keep], found.encoder, None))
    assert run("import", "--embeddings", str(some)).exit_code == 0

    for speaker, clips in speakers:
        answer = best(clips[1])
        top = answer["matches"][0]
        assert top["name"] == speaker, (speaker, answer["matches"][:3])
        assert top["evidence"] == (FUSED if speaker not in with_pt + embedding_only else "chatterbox")
    report = run("check", "--json")
    assert report.exit_code == 0 and json.loads(report.stdout) == [], report.output


def test_a_clip_less_voice_moves_to_the_matchers_index_once_it_has_a_clip_and_leaves_with_rm(
    home: Path, multi_clip_speakers, tmp_path: Path
):
    (speaker, clips), (other, other_clips) = list(multi_clip_speakers.items())[:2]
    enroll(other_clips[:1], other)
    enroll(clips[:1], speaker)
    exported = tmp_path / "voices.npz"
    assert run("export", "--embeddings", str(exported)).exit_code == 0
    run("rm", speaker)
    found = read_npz(exported, 256)
    write_npz(
        exported,
        Embeddings(
            [speaker], found.vectors[found.names.index(speaker) : found.names.index(speaker) + 1], found.encoder, None
        ),
    )
    assert run("import", "--embeddings", str(exported)).exit_code == 0
    assert best(clips[1])["matches"][0] == {**best(clips[1])["matches"][0], "name": speaker, "evidence": "chatterbox"}
    assert run("add", str(clips[0]), "--voice", speaker, "--no-conditionals").exit_code == 0
    assert best(clips[1])["matches"][0]["evidence"] == FUSED
    run("rm", speaker)
    assert [m["name"] for m in best(clips[1])["matches"]] == [other]


def test_voices_enrolled_before_matching_vectors_existed_are_matched_then_repaired_by_check(
    home: Path, multi_clip_speakers
):
    speakers = list(multi_clip_speakers.items())[:3]
    for speaker, clips in speakers:
        enroll(clips[:1], speaker)
    with sqlite3.connect(home / "voicedb.sqlite") as db:  # what a library from before schema 0004 holds
        db.execute("DELETE FROM clip_vectors")
        db.execute("DELETE FROM voice_vectors")
        db.execute("DELETE FROM meta WHERE key IN ('matcher', 'encoder:campplus')")
        db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
    assert run("matcher").stdout.strip() == "chatterbox"  # as it always matched: the conditionals' embedding
    for speaker, clips in speakers:
        assert best(clips[1])["matches"][0]["name"] == speaker
    report = json.loads(run("check", "--json").stdout)
    assert [p["kind"] for p in report] == ["matching"] and "3 kept clips lack matching vectors" in report[0]["message"]
    assert run("check", "--repair").exit_code == 0
    assert run("check").exit_code == 0
    assert rows(home, "SELECT count(*) FROM voice_vectors WHERE encoder = 'chatterbox'") == [(3,)]


def test_a_clip_of_another_speaker_in_a_voice_is_flagged_as_match_would_score_it(home: Path, multi_clip_speakers):
    (_, own), (_, other) = list(multi_clip_speakers.items())[:2]
    flagged = "against the other clips (another speaker?)"
    pure = run("add", str(own[0]), str(own[1]), "--name", "pure", "--no-conditionals")
    assert pure.exit_code == 0 and flagged not in pure.stderr
    mixed = run("add", str(other[0]), "--voice", "pure", "--no-conditionals")
    assert mixed.exit_code == 0 and f"warning: {other[0].name}: scores only" in mixed.stderr
    assert flagged in mixed.stderr


def test_similar_lists_a_voices_likely_duplicates_on_matchs_scale_with_verdicts(
    home: Path, multi_clip_speakers, tmp_path: Path
):
    (speaker, clips), (other, other_clips), (third, third_clips) = list(multi_clip_speakers.items())[:3]
    voice = enroll(clips[:1], speaker)
    enroll(clips[1:2], f"{speaker} again")
    enroll(other_clips[:1], other)
    enroll(third_clips[:1], third)
    result = run("similar", speaker, "-k", "2", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["voice"] == {"id": voice, "name": speaker} and len(answer["similar"]) == 2
    assert answer["similar"][0]["name"] == f"{speaker} again" and answer["similar"][0]["evidence"] == FUSED
    assert answer["similar"][0]["score"] >= answer["threshold"]  # the pair is not its own cohort
    assert speaker not in [m["name"] for m in answer["similar"]]
    scores = [m["score"] for m in answer["similar"]]
    assert scores == sorted(scores, reverse=True)
    again = best(clips[1])["matches"]  # what `match` says of the same comparison
    assert again[0]["name"] == f"{speaker} again"
    plain = run("similar", voice[:6]).stdout.splitlines()
    assert len(plain) == 3 and f"{speaker} again" in plain[0] and plain[0].split()[-1] in ("speaker", "threshold")
    assert "no voice with id or name 'nobody'" in run_fails("similar", "nobody")
