"""Which threshold ``match`` applies, ``voicedb calibrate``, the verdicts ``match`` prints, and ``speak --verify``.

A threshold comes from the caller, else from ``calibrate`` on the library, else from the value shipped for the
library's matcher and encoder weights, else ``DEFAULT_THRESHOLD``; verdicts follow the error rates measured with
it. The offline test checkpoint's synthesised audio is noise, so
the ``--verify`` tests check the mechanics: the score, the retries, the attempt kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import library_digest, run, run_fails

from voicedb import VoiceDB, config
from voicedb.calibration import equal_error_threshold, verdict
from voicedb.campplus import CAMPPLUS_FILE
from voicedb.files import sha256_file
from voicedb.matching import calibration_key
from voicedb.store import MetaRow

FUSED = "chatterbox+campplus"
TOKENS = "8"  # the random test T3 never stops: a few speech tokens keep each synthesis short


def enroll(name: str, clips: list[Path], *extra: str) -> str:
    result = run("add", *map(str, clips), "--name", name, "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["id"]


@pytest.fixture
def library(home: Path, multi_clip_speakers) -> dict[str, str]:
    """Every speaker with two or more real clips enrolled from all of them; returns name -> voice id."""
    return {name: enroll(name, clips, "--no-conditionals") for name, clips in multi_clip_speakers.items()}


@pytest.fixture
def identity(checkpoint: Path) -> str:
    """What the test library matches with: both encoders, with the test checkpoint's weights."""
    sums = [sha256_file(checkpoint / name)[:16] for name in ("ve.safetensors", CAMPPLUS_FILE)]
    return ":".join([FUSED, *sums])


def match_json(*args: str) -> dict:
    result = run("match", *args, "--json")
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


# -- where the threshold comes from ---------------------------------------------------------------------
def test_a_library_that_was_never_calibrated_uses_the_margin_threshold_shipped_for_its_matcher(
    library, speakers, identity
):
    shipped = config.SHIPPED_THRESHOLDS[identity]
    applied = VoiceDB().threshold()
    assert (applied.value, applied.kind, applied.matcher) == (shipped["margin"]["threshold"], "shipped", FUSED)
    assert applied.source == (
        f"shipped default for {FUSED} cohort margins with these weights, measured on {shipped['measured_on']}"
    )
    assert applied.rates == tuple(tuple(rate) for rate in shipped["margin"]["rates"])
    query = next(iter(speakers.values()))[0]
    assert {k: v for k, v in match_json(str(query)).items() if k != "matches"} == {
        "threshold": shipped["margin"]["threshold"],
        "threshold_source": applied.source,
        "matcher": FUSED,
        "scores": "cohort margin",
    }


def test_a_library_calibrated_on_cosines_keeps_scoring_by_cosine(library, speakers, identity):
    """A calibration from before cohort margins measured cosines: the library goes on scoring as it measured."""
    db = VoiceDB()
    record = {"identity": identity, "threshold": 0.61, "voices": 9, "same": 9, "different": 9, "date": "2026-11-01"}
    with db.context.store.session() as session:
        session.merge(MetaRow(key=calibration_key(identity), value=json.dumps(record)))
        session.commit()
    assert (db.threshold().value, db.threshold().scores) == (0.61, "cosine")
    query = next(iter(speakers.values()))[0]
    best = db.match(query, k=1, threshold=None)[0]
    assert best.cosine == best.score  # a cosine, not a margin


def test_an_encoder_nobody_measured_falls_back_to_the_default(library, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(config, "SHIPPED_THRESHOLDS", {})
    applied = VoiceDB().threshold()
    assert (applied.value, applied.kind) == (config.DEFAULT_THRESHOLD, "default")
    assert applied.source.startswith("shipped default (not measured")


def test_a_calibrated_threshold_beats_the_shipped_one_and_a_given_one_beats_both(library):
    db = VoiceDB()
    calibrated = db.calibrate().threshold
    assert (db.threshold().value, db.threshold().kind) == (calibrated, "calibrated")
    given = db.threshold(0.42)
    assert (given.value, given.kind, given.source) == (0.42, "argument", "given explicitly")


def test_a_calibration_stored_for_other_encoder_weights_is_ignored(library, identity):
    db = VoiceDB()
    other = f"{FUSED}:{'0' * 16}:{'0' * 16}"
    record = {"identity": other, "threshold": 0.1, "voices": 9, "same": 9, "different": 9, "date": "2020-01-01"}
    with db.context.store.session() as session:
        session.merge(MetaRow(key=calibration_key(other), value=json.dumps(record)))
        session.commit()
    shipped = config.SHIPPED_THRESHOLDS[identity]["margin"]["threshold"]
    assert (db.threshold().value, db.threshold().kind) == (shipped, "shipped")


# -- calibrate ------------------------------------------------------------------------------------------
def test_calibrate_on_real_voices_stores_a_threshold_that_match_and_show_report(library, multi_clip_speakers):
    result = run("calibrate", "--json")
    assert result.exit_code == 0, result.output
    measured = json.loads(result.stdout)
    clips = sum(len(c) for c in multi_clip_speakers.values())
    assert measured["voices"] == len(library) and measured["stored"] is True
    assert measured["same_speaker_scores"] == clips  # every clip left out once
    assert measured["different_speaker_scores"] == clips * (len(library) - 1)  # every clip against every other voice
    rates = measured["rates"]
    chosen = measured["threshold"]
    assert measured["scores"] == "cohort margin"  # as the shipped margin was measured for these weights
    candidates = {round(-0.10 + 0.05 * n, 2) for n in range(13)}
    assert [r["threshold"] for r in rates] == sorted(candidates | {chosen})
    rejects, accepts = [r["false_reject"] for r in rates], [r["false_accept"] for r in rates]
    assert rejects == sorted(rejects) and accepts == sorted(accepts, reverse=True)
    at_chosen = next(r for r in rates if r["threshold"] == chosen)
    worst = max(at_chosen["false_reject"], at_chosen["false_accept"])
    assert all(worst <= max(r["false_reject"], r["false_accept"]) for r in rates)  # the equal-error point

    source = f"calibrated on {len(library)} voices / {clips} same-speaker and {clips * (len(library) - 1)}"
    query = next(iter(multi_clip_speakers.values()))[1]
    answer = match_json(str(query))
    assert answer["threshold"] == chosen and answer["threshold_source"].startswith(source)
    shown = json.loads(run("show", next(iter(library)), "--json").stdout)
    assert shown["threshold"] == chosen and shown["threshold_source"] == answer["threshold_source"]
    text = run("show", next(iter(library))).stdout.splitlines()
    assert f"threshold:  {chosen:.2f} ({answer['threshold_source']})" in text


def test_calibrate_dry_run_prints_the_table_and_changes_nothing(library, home: Path):
    before = library_digest(home)
    result = run("calibrate", "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["threshold", "false", "reject", "false", "accept"]
    assert sum(line.endswith("<- chosen") for line in lines) == 1
    assert lines[-1].endswith("not stored (--dry-run)")
    assert library_digest(home) == before
    assert VoiceDB().threshold().kind == "shipped"


def test_too_few_voices_with_several_clips_is_refused_in_one_line_and_nothing_is_stored(
    home: Path, multi_clip_speakers, speakers
):
    assert "at least 3 voices with two or more clips (this library has 0)" in run_fails("calibrate")
    names = list(multi_clip_speakers)[:2]
    for name in names:
        enroll(name, multi_clip_speakers[name], "--no-conditionals")
    single = next(s for s in speakers if s not in names)
    enroll(single, speakers[single][:1], "--no-conditionals")
    before = library_digest(home)
    assert "(this library has 2)" in run_fails("calibrate", "--dry-run")
    assert "(this library has 2)" in run_fails("calibrate")
    assert library_digest(home) == before


def test_the_equal_error_threshold_lies_midway_between_separate_distributions_and_in_the_tied_range():
    assert equal_error_threshold(np.array([0.9, 0.85]), np.array([0.6, 0.7])) == pytest.approx(0.775)
    # 0.7 same and 0.75 different overlap: one error either way anywhere from 0.65 to 0.8
    same, different = np.array([0.9, 0.85, 0.7]), np.array([0.6, 0.75, 0.5])
    assert equal_error_threshold(same, different) == pytest.approx(0.725)


# -- the words match prints -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("score", "words"),
    [
        (0.95, "same speaker"),
        (0.85, "same speaker"),
        (0.84, "probably the same speaker"),
        (0.80, "probably the same speaker"),
        (0.79, "possibly the same speaker, below the threshold"),
        (0.76, "possibly the same speaker, below the threshold"),
        (0.74, "unknown speaker"),
        (0.30, "unknown speaker"),
    ],
)
def test_without_measured_rates_verdicts_take_a_margin_around_a_threshold_of_080(score: float, words: str):
    assert verdict(score, 0.80) == words


#: Measured (threshold, false-reject rate, false-accept rate): different speakers reach 0.70 in 1 pair of 10,000,
#: same-speaker pairs fall below 0.60 in 1 of 200.
RATES = ((0.5, 0.0, 0.01), (0.6, 0.005, 0.001), (0.7, 0.02, 0.0001), (0.8, 0.10, 0.0))


@pytest.mark.parametrize(
    ("score", "threshold", "words"),
    [
        (0.75, 0.60, "same speaker"),  # 0.005% of different-speaker pairs score this high
        (0.70, 0.60, "same speaker"),  # 0.01%: the most a sure "same speaker" allows
        (0.65, 0.60, "probably the same speaker"),  # 0.055% do
        (0.60, 0.60, "probably the same speaker"),
        (0.59, 0.60, "unknown speaker"),  # 0.45% of same-speaker pairs score this low
        (0.65, 0.70, "possibly the same speaker, below the threshold"),  # 1.25% of same-speaker pairs do
        (0.62, 0.70, "unknown speaker"),  # 0.8%
    ],
)
def test_with_measured_rates_verdicts_follow_the_error_rates_at_the_score(score, threshold, words):
    assert verdict(score, threshold, RATES) == words


def test_near_the_threshold_the_hint_quotes_the_measured_rates(home: Path, multi_clip_speakers, identity, monkeypatch):
    speaker, clips = next(iter(multi_clip_speakers.items()))
    enroll(speaker, clips[:1], "--no-conditionals")
    query = str(clips[1])
    monkeypatch.setitem(config.SHIPPED_THRESHOLDS, identity, {"threshold": 0.5, "measured_on": "a test"})  # cosines
    score = match_json(query, "--all")["matches"][0]["score"]
    rates = [[round(score - 0.1, 4), 0.0, 0.05], [round(score + 0.1, 4), 0.2, 0.0]]  # at the score: FA 2.5%, FR 10%
    entry = {"threshold": round(score - 0.02, 4), "measured_on": "a test", "rates": rates}
    monkeypatch.setitem(config.SHIPPED_THRESHOLDS, identity, entry)
    answer = run("match", query)
    assert answer.exit_code == 0 and answer.stdout.rstrip().endswith("probably the same speaker")
    assert "2.5% of different-speaker pairs and 90% of same-speaker pairs were measured to score this high" in (
        answer.stderr
    )


def test_match_words_its_answer_and_hints_at_more_audio_near_the_threshold(
    home: Path, multi_clip_speakers, monkeypatch
):
    monkeypatch.setattr(config, "SHIPPED_THRESHOLDS", {})  # no measured rates: the margin decides
    speaker, clips = next(iter(multi_clip_speakers.items()))
    voice = enroll(speaker, clips[:1], "--no-conditionals")
    query = str(clips[1])
    score = match_json(query, "--all")["matches"][0]["score"]

    clear = run("match", query, "--threshold", f"{score - 0.2:.3f}")
    assert clear.exit_code == 0 and clear.stdout.split(maxsplit=3)[3].strip() == "same speaker"
    assert clear.stderr == ""

    just_above = run("match", query, "--threshold", f"{score - 0.02:.3f}")
    assert just_above.exit_code == 0 and just_above.stdout.rstrip().endswith("probably the same speaker")
    assert f"`voicedb add CLIP --voice {voice}`" in just_above.stderr and "hint:" in just_above.stderr

    just_below = run_fails("match", query, "--threshold", f"{score + 0.02:.3f}", code=1)
    assert "unknown speaker" in just_below and "enroll more and longer clips" in just_below
    assert match_json(query, "--all", "--threshold", f"{score + 0.02:.3f}")["matches"][0]["verdict"] == (
        "possibly the same speaker, below the threshold"
    )
    far_below = run_fails("match", query, "--threshold", f"{score + 0.08:.3f}", code=1)
    assert "enroll more" not in far_below


# -- speak --verify ---------------------------------------------------------------------------------------
@pytest.fixture
def voice(home: Path, multi_clip_speakers) -> str:
    """One voice with conditionals, from the shortest real clip of at least 4 s (S3Gen's cost grows with it)."""
    clips = [c for cs in multi_clip_speakers.values() for c in cs if soundfile.info(str(c)).duration >= 4.0]
    shortest = min(clips, key=lambda c: soundfile.info(str(c)).duration)
    enroll("speaker", [shortest])
    return "speaker"


def speak_json(out: Path, *extra: str) -> dict:
    result = run(
        "speak", "--voice", "speaker", "Hello there.", "-o", str(out), "--max-tokens", TOKENS, "--json", *extra
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def similarity_of_file(path: Path) -> float:
    """The written audio's voice-encoder cosine to the voice, computed here independently."""
    from voicedb.audio import to_16k

    audio, rate = soundfile.read(str(path), dtype="float32")
    assert rate == 24_000
    db = VoiceDB()
    return float(db.engine.embed(to_16k(audio)) @ db.vector("speaker"))


def test_verify_reports_the_similarity_of_what_was_written(voice, tmp_path: Path):
    spoken = speak_json(tmp_path / "out.wav", "--verify", "--seed", "3")
    assert -1.0 <= spoken["similarity"] <= 1.0
    assert spoken["attempt"] == 1 and spoken["attempts"] == [{"seed": 3, "similarity": spoken["similarity"]}]
    assert spoken["similarity"] == pytest.approx(similarity_of_file(tmp_path / "out.wav"), abs=0.01)


def test_a_bar_never_reached_tries_consecutive_seeds_up_to_the_attempts_and_keeps_the_best(voice, tmp_path: Path):
    spoken = speak_json(tmp_path / "out.wav", "--min-similarity", "1.0", "--attempts", "3", "--seed", "10")
    tried = spoken["attempts"]
    assert [t["seed"] for t in tried] == [10, 11, 12]
    best = max(range(3), key=lambda n: tried[n]["similarity"])
    assert spoken["attempt"] == best + 1 and spoken["similarity"] == tried[best]["similarity"]
    assert spoken["similarity"] == pytest.approx(similarity_of_file(tmp_path / "out.wav"), abs=0.01)


def test_retries_stop_once_the_bar_is_met_and_a_random_start_seed_is_named(voice, tmp_path: Path):
    result = run(
        "speak", "--voice", "speaker", "Hi.", "-o", str(tmp_path / "out.wav"), "--max-tokens", TOKENS,
        "--min-similarity", "-1.0", "--attempts", "3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    said = result.stdout.splitlines()[-1]
    assert said.startswith("similarity to the voice: ") and "(attempt 1 of 1, reached -1.00; seed " in said
    assert int(said.rsplit("seed ", 1)[1].split(":")[0]) >= 0


def test_attempts_without_a_minimum_similarity_is_a_usage_error(voice, tmp_path: Path):
    result = run("speak", "--voice", "speaker", "Hi.", "-o", str(tmp_path / "out.wav"), "--attempts", "2")
    assert result.exit_code == 2 and "--attempts retries below --min-similarity" in result.output
    assert not (tmp_path / "out.wav").exists()
