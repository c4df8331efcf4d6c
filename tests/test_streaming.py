"""Token-level streaming: S3Gen renders windows of speech tokens while T3 samples them, with the tokens,
length and seeds of unstreamed speech, and seams that do not click."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import run

from voicedb import SynthesisSettings, VoiceDB
from voicedb.flavours import FLAVOURS
from voicedb.streaming import TokenWindows, prompt_tail, t3_tokens

TOKENS = 40  # per chunk: enough for several windows
TEXT = "Hello there, this is a test of streaming."


@pytest.fixture(scope="module")
def library(tmp_path_factory, checkpoint: Path, speakers) -> Iterator[VoiceDB]:
    with VoiceDB(tmp_path_factory.mktemp("streaming") / "library", checkpoint=checkpoint, device="cpu") as db:
        db.add([next(iter(speakers.values()))[0]], name="ann")
        yield db


def spoken(db: VoiceDB, windows: TokenWindows | None, seed: int = 5) -> list[np.ndarray]:
    settings = SynthesisSettings(max_tokens=TOKENS, windows=windows)
    return list(db.speak_stream("ann", TEXT, settings=settings, seed=seed))


@pytest.mark.parametrize("model", ["english", "multilingual"])
def test_the_streaming_sampler_draws_upstream_s_tokens(library: VoiceDB, model: str):
    import torch

    engine, flavour = library.engine, FLAVOURS[model]
    settings = SynthesisSettings(max_tokens=TOKENS, language="en")
    t3, tokenizer = engine.t3(flavour), engine.tokenizer(flavour)
    conds = library.load_conditionals("ann", model)
    for seed in (1, 2):
        with engine.sampling(seed), torch.inference_mode():
            cond = engine._t3_cond(conds, settings)
            upstream = engine._t3_tokens(flavour, t3, tokenizer, cond, TEXT, settings).tolist()
        with engine.sampling(seed):
            streamed = t3_tokens(
                t3,
                engine._t3_cond(conds, settings),
                engine._t3_text_tokens(flavour, t3, tokenizer, TEXT, settings),
                **engine._t3_sampling(flavour, settings),
            )
            assert [t for t in streamed if t < 6561] == upstream


def test_without_a_window_before_the_end_it_is_the_unstreamed_audio(library: VoiceDB):
    whole = spoken(library, None)
    late = spoken(library, TokenWindows(TOKENS, TOKENS))
    assert len(late) == len(whole) == 1 and np.array_equal(late[0], whole[0])


def test_windows_arrive_early_with_the_unstreamed_length_and_level(library: VoiceDB):
    whole = np.concatenate(spoken(library, None))
    pieces = spoken(library, TokenWindows(8, 8))
    streamed = np.concatenate(pieces)
    assert len(pieces) >= 4  # audio starts after 8 + 3 of the 40 tokens
    assert len(pieces[0]) < len(whole) / 3
    assert len(streamed) == len(whole)  # the same tokens: T3 never saw the windows' noise
    frame = 480
    level = [
        10 * np.log10(np.mean(x[: len(x) // frame * frame].reshape(-1, frame) ** 2, axis=1) + 1e-10)
        for x in (whole, streamed)
    ]
    assert np.median(np.abs(level[0] - level[1])) < 3.0
    seams = np.cumsum([len(p) for p in pieces[:-1]])
    steps = np.abs(np.diff(streamed))
    assert max(steps[s - 2 : s + 2].max() for s in seams) <= 4 * np.percentile(steps, 99.9)  # no clicks


def test_the_same_seed_streams_the_same_audio(library: VoiceDB):
    windows = TokenWindows(8, 16)
    assert all(np.array_equal(a, b) for a, b in zip(spoken(library, windows), spoken(library, windows), strict=True))


def test_windows_must_cover_the_cross_fade():
    assert TokenWindows.parse("12,50") == TokenWindows(12, 50, 3.0) and TokenWindows.parse("0") is None
    assert TokenWindows.parse("16") == TokenWindows(16, 16)
    assert TokenWindows.parse("12,50,5").prompt_tokens == 125 and TokenWindows.parse("12,50,0").prompt_tokens is None
    with pytest.raises(ValueError):
        TokenWindows(2, 50)
    with pytest.raises(ValueError):
        TokenWindows.parse("12,50,0.5")  # too little of the voice to clone from


def test_a_window_reads_the_end_of_the_prompt(library: VoiceDB):
    import torch

    ref = library.load_conditionals("ann", "english").gen
    tail, have = prompt_tail(ref, 75), ref["prompt_token"].shape[1]
    assert tail["prompt_token"].tolist() == [ref["prompt_token"][0, -75:].tolist()]
    assert int(tail["prompt_token_len"]) == 75
    assert torch.equal(tail["prompt_feat"], ref["prompt_feat"][:, 2 * have - 150 : 2 * have])  # two frames a token
    assert tail["embedding"] is ref["embedding"]  # the whole clip's x-vector
    assert prompt_tail(ref, 10_000) is ref and prompt_tail(ref, None) is ref


def test_window_passes_read_the_prompt_s_tail_and_a_lone_pass_all_of_it(library: VoiceDB, monkeypatch):
    s3gen = library.engine.s3gen(FLAVOURS["english"])
    prompts: list[int] = []
    flow_inference = s3gen.flow_inference

    def recording(speech_tokens, ref_dict, **kwargs):
        prompts.append(ref_dict["prompt_token"].shape[1])
        return flow_inference(speech_tokens, ref_dict=ref_dict, **kwargs)

    monkeypatch.setattr(s3gen, "flow_inference", recording)
    whole_prompt = library.load_conditionals("ann", "english").gen["prompt_token"].shape[1]
    assert whole_prompt > 50
    spoken(library, TokenWindows(8, 16, prompt=2))
    assert len(prompts) >= 3 and set(prompts) == {50}
    prompts.clear()
    spoken(library, TokenWindows(TOKENS, TOKENS, prompt=2))
    assert prompts == [whole_prompt]


def test_serve_refuses_a_bad_window(standin: Path):
    result = run("serve", "--stream-window", "2,x")
    assert result.exit_code == 2 and "FIRST,LATER" in result.stderr
