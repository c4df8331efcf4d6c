"""Speaking from saved conditionals, end to end through the CLI with the offline test checkpoint.

The random T3 never emits its stop token, so every call caps speech tokens with ``--max-tokens``.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import list_json, run, run_fails

TOKENS = "12"  # 12 speech tokens ~ 0.5 s of audio: quick on a CPU


@pytest.fixture
def two_voices(home: Path, multi_clip_speakers, tmp_path: Path) -> dict[str, Path]:
    """Two voices enrolled from copies of real clips, with conditionals; returns name -> copied clip.

    The shortest clips of at least 4 s are used: S3Gen's cost grows with the reference length, and
    these tests are about where the conditionals come from, not about sound.
    """
    shortest = {
        name: min(
            (c for c in clips if soundfile.info(str(c)).duration >= 4.0), key=lambda c: soundfile.info(str(c)).duration
        )
        for name, clips in multi_clip_speakers.items()
        if any(soundfile.info(str(c)).duration >= 4.0 for c in clips)
    }
    chosen = sorted(shortest, key=lambda name: soundfile.info(str(shortest[name])).duration)[:2]
    voices = {}
    for name in chosen:
        clip = shortest[name]
        copy = tmp_path / f"{name}{clip.suffix}"
        copy.write_bytes(clip.read_bytes())
        result = run("add", str(copy), "--name", name)
        assert result.exit_code == 0, result.output
        voices[name] = copy
    return voices


def speak(voice: str, out: Path, *extra: str) -> np.ndarray:
    result = run("speak", "--voice", voice, "Hello there.", "-o", str(out), "--max-tokens", TOKENS, *extra)
    assert result.exit_code == 0, result.output
    audio, rate = soundfile.read(str(out), dtype="float32")
    assert rate == 24_000
    return audio


def assert_speaker_is_the_voice_vector(name: str, model: str, checkpoint: Path | None = None) -> None:
    from voicedb import VoiceDB

    db = VoiceDB(checkpoint=checkpoint)
    speaker = db.load_conditionals(name, model).t3.speaker_emb.numpy().reshape(-1)
    assert np.allclose(speaker, db.vector(name), atol=1e-6)


def test_add_saves_upstream_loadable_conditionals(two_voices, home: Path):
    from chatterbox.tts import Conditionals

    name = next(iter(two_voices))
    shown = json.loads(run("show", name, "--json").stdout)
    assert shown["models"] == ["english"]
    conds = Conditionals.load(home / shown["conditionals"][0]["file"])
    assert tuple(conds.t3.speaker_emb.shape) == (1, 256)
    assert conds.t3.cond_prompt_speech_tokens.shape[0] == 1
    assert set(conds.gen) >= {"prompt_token", "prompt_feat", "embedding"}


def test_speak_writes_a_24khz_wav_of_plausible_length_from_stored_conditionals(two_voices, tmp_path: Path, derivations):
    name = next(iter(two_voices))
    audio = speak(name, tmp_path / "out.wav", "--seed", "1")
    assert derivations == []  # the saved conditionals reached the model; nothing was extracted again
    assert 0.2 < len(audio) / 24_000 < 2.0
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0


def test_same_seed_same_audio_and_different_voices_differ(two_voices, tmp_path: Path):
    first, second = list(two_voices)
    a1 = speak(first, tmp_path / "a1.wav", "--seed", "7")
    a2 = speak(first, tmp_path / "a2.wav", "--seed", "7")
    b = speak(second, tmp_path / "b.wav", "--seed", "7")
    assert np.array_equal(a1, a2)
    assert len(a1) != len(b) or not np.allclose(a1, b, atol=1e-3)


def test_long_text_is_spoken_in_sentence_chunks(two_voices, tmp_path: Path):
    name = next(iter(two_voices))
    text = " ".join(f"This is sentence number {n} of a long text, which keeps going for a while." for n in range(8))
    result = run("speak", "--voice", name, "-o", str(tmp_path / "long.wav"), "--max-tokens", "5", "--json", input=text)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["chunks"] >= 2


def test_speak_without_output_picks_a_file_name_and_prints_it(two_voices, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = next(iter(two_voices))
    result = run("speak", "--voice", name, "Hi.", "--max-tokens", "5")
    assert result.exit_code == 0, result.output
    written = result.stdout.split()[1]
    assert written.startswith(name) and (tmp_path / written).is_file()


def test_conditionals_are_derived_lazily_when_add_skipped_them(home: Path, speakers, tmp_path: Path):
    clip = next(iter(speakers.values()))[0]
    assert run("add", str(clip), "--name", "lazy", "--no-conditionals").exit_code == 0
    speak("lazy", tmp_path / "lazy.wav")
    assert json.loads(run("show", "lazy", "--json").stdout)["models"] == ["english"]


def test_corrupt_conditionals_give_a_clear_error_and_check_repairs_them(two_voices, home: Path, tmp_path: Path):
    name = next(iter(two_voices))
    conds = home / json.loads(run("show", name, "--json").stdout)["conditionals"][0]["file"]
    conds.write_bytes(b"not a torch file")
    assert "check --repair" in run_fails("speak", "--voice", name, "Hi.", "--max-tokens", TOKENS)
    assert run("check", "--repair").exit_code == 0
    speak(name, tmp_path / "after.wav")


def test_match_then_speak_in_one_go(two_voices, multi_clip_speakers, tmp_path: Path):
    name = next(iter(two_voices))
    query = next(c for c in multi_clip_speakers[name] if c.name != two_voices[name].name)
    out = tmp_path / "reply.wav"
    result = run("match", str(query), "--speak", "Nice to meet you.", "-o", str(out), "--max-tokens", TOKENS)
    assert result.exit_code == 0, result.output
    assert out.is_file() and name in result.stdout


def test_other_models_get_their_own_conditionals_derived_from_the_kept_audio(two_voices, tmp_path: Path, derivations):
    name, original = next(iter(two_voices.items()))
    original.unlink()  # only the library's kept copy is left to derive from
    out = tmp_path / "fr.wav"
    args = ["speak", "--voice", name, "Bonjour.", "-o", str(out), "--max-tokens", TOKENS, "--model", "multilingual"]
    assert "needs --language" in run_fails(*args)
    result = run(*args, "--language", "fr")
    assert result.exit_code == 0, result.output
    assert soundfile.info(str(out)).samplerate == 24_000
    assert json.loads(run("show", name, "--json").stdout)["models"] == ["english", "multilingual"]
    assert derivations == ["multilingual"]
    assert_speaker_is_the_voice_vector(name, "multilingual")  # ve.safetensors' vector, where upstream reads ve.pt
    assert "English only" in run_fails("speak", "--voice", name, "Bonjour.", "--language", "fr")


def test_turbo_speaks_from_its_own_checkpoint_with_conditionals_derived_for_it(
    two_voices, turbo_checkpoint: Path, tmp_path: Path
):
    name = next(iter(two_voices))
    out = tmp_path / "turbo.wav"
    result = run(
        "--checkpoint",
        str(turbo_checkpoint),
        "speak",
        "--voice",
        name,
        "Hi there.",
        "--model",
        "turbo",
        "-o",
        str(out),
        "--max-tokens",
        TOKENS,
        "--seed",
        "3",
    )
    assert result.exit_code == 0, result.output
    audio, rate = soundfile.read(str(out), dtype="float32")
    assert rate == 24_000 and np.isfinite(audio).all() and len(audio) > 0
    assert json.loads(run("show", name, "--json").stdout)["models"] == ["english", "turbo"]
    # upstream embeds Turbo's loudness-normalised reference; voicedb keeps the voice's one vector (docs/library.md)
    assert_speaker_is_the_voice_vector(name, "turbo", checkpoint=turbo_checkpoint)


# -- sampling options, re-derivation and the choice of reference ------------------------------------------------


def test_the_sampling_options_reach_the_model(two_voices, tmp_path: Path, monkeypatch):
    """The random test T3 samples the same tokens whatever the exaggeration, so what T3 is handed is checked."""
    from chatterbox.models.t3 import T3

    received: list[dict] = []
    original = T3.inference

    def recording(self, **kwargs):
        received.append(
            {
                "exaggeration": round(float(kwargs["t3_cond"].emotion_adv.flatten()[0]), 4),
                "cfg_weight": kwargs["cfg_weight"],
                "temperature": kwargs["temperature"],
            }
        )
        return original(self, **kwargs)

    monkeypatch.setattr(T3, "inference", recording)
    name = next(iter(two_voices))
    speak(name, tmp_path / "default.wav", "--seed", "5")
    speak(
        name,
        tmp_path / "changed.wav",
        "--seed",
        "5",
        "--exaggeration",
        "1.5",
        "--cfg-weight",
        "0.2",
        "--temperature",
        "0.3",
    )
    assert received == [
        {"exaggeration": 0.5, "cfg_weight": 0.5, "temperature": 0.8},
        {"exaggeration": 1.5, "cfg_weight": 0.2, "temperature": 0.3},
    ]


@pytest.mark.parametrize("sampled", [[2057, 6562, 6563], [6562]], ids=["one valid token", "none valid"])
def test_a_chunk_sampled_to_almost_nothing_still_speaks(two_voices, tmp_path: Path, monkeypatch, sampled):
    """A model may sample (nearly) only special tokens for a chunk; upstream S3Gen then raised a shape error."""
    import torch
    from chatterbox.models.t3 import T3

    monkeypatch.setattr(T3, "inference", lambda self, **kwargs: torch.tensor([sampled]))
    audio = speak(next(iter(two_voices)), tmp_path / "short.wav")
    assert 0 < len(audio) < 24_000


def test_english_models_speak_a_voice_whatever_language_it_is_tagged_with(two_voices, tmp_path: Path):
    name = next(iter(two_voices))
    assert run("language", name, "fr").exit_code == 0
    assert len(speak(name, tmp_path / "english.wav")) > 0
    assert "English only" in run_fails("speak", "--voice", name, "Bonjour.", "--language", "fr")


def test_conditionals_made_with_another_checkpoint_are_derived_again(two_voices, home: Path, tmp_path, derivations):
    import sqlite3

    name = next(iter(two_voices))
    with sqlite3.connect(home / "voicedb.sqlite") as con:
        con.execute("UPDATE conditionals SET checkpoint = 'english:ve=old:s3gen=old'")
    speak(name, tmp_path / "a.wav")
    speak(name, tmp_path / "b.wav")
    assert derivations == ["english"]  # once, then the new ones are current
    (shown,) = json.loads(run("show", name, "--json").stdout)["conditionals"]
    assert shown["checkpoint"] != "english:ve=old:s3gen=old"


def test_the_reference_is_the_clip_with_most_speech_and_a_clipped_clip_loses(home: Path, multi_clip_speakers, tmp_path):
    import hashlib

    from voicedb.audio import load_clip

    clips = next(iter(multi_clip_speakers.values()))[:2]
    speech = {clip: load_clip(clip).speech_s for clip in clips}
    quiet_one, rich_one = sorted(clips, key=speech.get)
    result = run("add", str(quiet_one), str(rich_one), "--name", "ref", "--json")
    assert result.exit_code == 0, result.output
    (conds,) = json.loads(run("show", "ref", "--json").stdout)["conditionals"]
    assert conds["reference_clip"] == hashlib.sha256(rich_one.read_bytes()).hexdigest()

    audio, rate = soundfile.read(str(rich_one), dtype="float32")
    clipped = tmp_path / "clipped.wav"
    soundfile.write(str(clipped), np.clip(audio * 50, -1, 1), rate)  # same speech, badly clipped
    run("rm", "ref")
    result = run("add", str(quiet_one), str(clipped), "--name", "ref2", "--json")
    assert result.exit_code == 0, result.output
    (conds,) = json.loads(run("show", "ref2", "--json").stdout)["conditionals"]
    assert conds["reference_clip"] == hashlib.sha256(quiet_one.read_bytes()).hexdigest()


def test_add_loads_the_voice_encoder_and_s3gen_but_never_t3(home: Path, speakers, checkpoint: Path):
    from voicedb import VoiceDB
    from voicedb.engine import Checkpoint, Engine

    engine = Engine(Checkpoint(checkpoint), "cpu")
    VoiceDB(engine=engine).add([next(iter(speakers.values()))[0]], name="no-t3")
    loaded = engine.loaded()
    assert "ve" in loaded and any(key.startswith("s3gen:") for key in loaded)
    assert not any(key.startswith(("t3:", "tok:")) for key in loaded), loaded


def test_speak_reads_text_from_a_file(two_voices, tmp_path: Path):
    name = next(iter(two_voices))
    text = tmp_path / "script.txt"
    text.write_text("First sentence here. " * 20 + "And the end.", encoding="utf-8")
    out = tmp_path / "from-file.wav"
    result = run("speak", "--voice", name, "--file", str(text), "-o", str(out), "--max-tokens", "4", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["chunks"] >= 2 and out.is_file()


def test_an_imported_pt_belongs_to_the_model_named_on_import(two_voices, tmp_path: Path, derivations):
    name = next(iter(two_voices))
    exported = tmp_path / "voice.pt"
    assert run("export", name, "-o", str(exported)).exit_code == 0
    result = run("import", str(exported), "--name", "as-multilingual", "--model", "multilingual")
    assert result.exit_code == 0, result.output
    assert json.loads(run("show", "as-multilingual", "--json").stdout)["models"] == ["multilingual"]
    out = tmp_path / "ml.wav"
    args = ["speak", "--voice", "as-multilingual", "Hola.", "--model", "multilingual", "--language", "es"]
    assert run(*args, "-o", str(out), "--max-tokens", TOKENS).exit_code == 0
    assert derivations == []  # spoken from the imported conditionals, as they were
    assert "no english conditionals and no clips" in run_fails("speak", "--voice", "as-multilingual", "Hi.")


def test_turbo_enrollment_warns_on_short_clips_and_strict_refuses(home: Path, speakers, turbo_checkpoint: Path):
    from voicedb.audio import load_clip

    short = next(c for group in speakers.values() for c in group if load_clip(c).duration_s <= 5.0)
    long = next(c for group in speakers.values() for c in group if load_clip(c).duration_s > 6.0)
    turbo = ["--checkpoint", str(turbo_checkpoint), "add", "--model", "turbo"]
    assert "too short for this model" in run_fails(*turbo, str(short), "--name", "brief", "--strict")
    assert list_json() == []
    result = run(*turbo, str(short), "--name", "brief")
    assert result.exit_code == 0 and "too short for this model" in result.stderr
    result = run(*turbo, str(long), "--name", "long", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["models"] == ["turbo"]


STREAMED = ("Hello there. And a second sentence.", "--max-tokens", "30", "--seed", "5", "--stream-window", "8,12")


def spoken_in_windows(name: str) -> np.ndarray:
    """What ``VoiceDB.speak_stream`` (the server's path) says for ``STREAMED``, whole."""
    from voicedb import SynthesisSettings, TokenWindows, VoiceDB

    settings = SynthesisSettings(max_tokens=30, windows=TokenWindows(8, 12))
    return np.concatenate(list(VoiceDB().speak_stream(name, STREAMED[0], settings=settings, seed=5)))


def test_speak_streams_to_stdout_the_audio_the_server_streams(two_voices):
    name = next(iter(two_voices))
    result = run("speak", "--voice", name, *STREAMED, "-o", "-", "--format", "pcm")
    assert result.exit_code == 0, result.stderr
    pcm = np.frombuffer(result.stdout_bytes, dtype="<i2")
    expected = np.rint(np.clip(spoken_in_windows(name), -1, 1) * 32767).astype("<i2")
    assert np.array_equal(pcm, expected)
    assert result.stderr.startswith(f"streamed {len(pcm) / 24_000:.1f} s (1 chunk, voice {name})")

    wav = run("speak", "--voice", name, *STREAMED, "-o", "-")
    assert wav.stdout_bytes[:4] == b"RIFF" and wav.stdout_bytes[44:] == result.stdout_bytes


def test_speak_play_hands_each_window_to_the_sound_card_as_it_comes(two_voices, monkeypatch):
    """The sound card is the one part faked: PortAudio has no device here."""

    class Speakers:
        opened: list[dict] = []
        blocks: list[np.ndarray] = []

        def __init__(self, **stream):
            self.opened.append(stream)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, block: np.ndarray) -> None:
            self.blocks.append(block.copy())

    monkeypatch.setitem(
        sys.modules, "sounddevice", types.SimpleNamespace(OutputStream=Speakers, PortAudioError=OSError)
    )
    name = next(iter(two_voices))
    result = run("speak", "--voice", name, *STREAMED, "--play")
    assert result.exit_code == 0, result.stderr
    assert Speakers.opened == [{"samplerate": 24_000, "channels": 1, "dtype": "float32"}]
    assert len(Speakers.blocks) > 1 and all(b.dtype == np.float32 and b.shape[1] == 1 for b in Speakers.blocks)
    played = np.concatenate(Speakers.blocks)[:, 0]
    assert np.array_equal(played, spoken_in_windows(name))
    assert result.stdout.startswith(f"played {len(played) / 24_000:.1f} s (1 chunk, voice {name})")


def test_speak_play_without_a_sound_library_says_what_to_install(two_voices, monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as when it is not installed
    error = run_fails("speak", "--voice", next(iter(two_voices)), "Hi.", "--max-tokens", "5", "--play")
    assert "pip install 'voicedb[play]'" in error


def test_streamed_speech_refuses_what_needs_a_whole_file(two_voices):
    name = next(iter(two_voices))
    for options, said in (
        (("--play", "-o", "x.wav"), "give one"),
        (("-o", "-", "--verify"), "not with --play or -o -"),
    ):
        result = run("speak", "--voice", name, "Hi.", *options)
        assert result.exit_code == 2 and "Error: " in result.stderr and said in result.stderr, result.stderr
