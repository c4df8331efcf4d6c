"""Token-level streaming: S3Gen renders windows of speech tokens while T3 is still generating them.

Upstream renders a sentence chunk only once T3 has generated all of its tokens, so the first audio of a
request waits for a whole chunk. Here T3's sampling loop (upstream's, step for step: the same tokens
for the same seed) hands each token over as it is drawn, and every ``TokenWindows`` tokens S3Gen
renders what has arrived, as CosyVoice 2, whose flow and vocoder S3Gen is, streams:

- the flow runs over the tokens not voiced yet plus ``FLOW_CONTEXT_TOKENS`` before them (not over every
  token so far: a pass costs the same at the end of a long chunk as at its start), after the last
  ``TokenWindows.prompt`` seconds of the reference prompt (not all of it: the prompt's frames are most of
  a pass's cost, and a chunk streamed in windows pays for several passes); the mel frames of the last
  ``pre_lookahead_len`` tokens are held back (its encoder looks that far ahead, and for them it saw only
  padding), and only frames not yet voiced are taken;
- the vocoder (HiFT) voices them after the last ``MEL_CACHE_FRAMES`` frames already voiced, continuing
  their excitation source, and the overlap is cross-faded with a Hamming window, so seams do not click;
- the noise of a window's pass (the flow's and the vocoder's) is drawn from a fork of torch's generator,
  so T3 samples exactly what it would unstreamed: the chunk has the unstreamed chunk's tokens and
  length, and with no window before the end its one pass is upstream's (the whole prompt, torch's own
  generator): the unstreamed audio, sample for sample. With windows, the frames come from other noise
  and a shorter prompt: the same speech, not the same samples.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Mel frames voiced twice at each seam (50 frames a second): the cross-fade is this long.
MEL_CACHE_FRAMES = 8
SAMPLES_PER_FRAME = 480  # 24 kHz audio, 50 mel frames a second
#: Tokens already voiced that a window's flow pass still reads (1 s), so the frames it adds continue
#: the speech before them; earlier tokens are left out, which keeps each pass's cost bounded.
FLOW_CONTEXT_TOKENS = 25
#: The smallest window: its frames (two a token) cover the cross-fade.
MIN_WINDOW = MEL_CACHE_FRAMES // 2
SPEECH_TOKENS_PER_SECOND = 25  # T3's speech tokens, S3Gen's input
#: The shortest prompt a window's pass may read: CosyVoice 2 clones from 3 s prompts, 1 s is a floor.
MIN_PROMPT_SECONDS = 1.0


@dataclass(frozen=True)
class TokenWindows:
    """Speech tokens (25 a second) per S3Gen pass: a small ``first`` window so audio starts soon, then
    ``later`` ones (each pass also renders some context, so larger windows cost less in all), each pass
    reading the last ``prompt`` seconds of the reference prompt (0: all of it, up to 10 s).

    The prompt is what a pass costs: the flow runs its steps over the prompt's mel frames as well as the
    new tokens', so with a whole 8 s prompt a 12-token window costs nearly what a whole chunk does, and
    with its last 3 s about a third (``scripts/bench_stream.py``). The speaker's x-vector, which S3Gen
    also conditions on, is the whole clip's either way."""

    first: int = 12
    later: int = 50
    prompt: float = 3.0

    def __post_init__(self) -> None:
        if min(self.first, self.later) < MIN_WINDOW:
            raise ValueError(f"token windows must be at least {MIN_WINDOW} tokens (the cross-fade is that long)")
        if not 0 <= self.prompt <= 10 or 0 < self.prompt < MIN_PROMPT_SECONDS:
            raise ValueError(f"the prompt is 0 (all of it) or {MIN_PROMPT_SECONDS} to 10 seconds")

    @classmethod
    def parse(cls, text: str) -> TokenWindows | None:
        """``"FIRST,LATER[,PROMPT]"`` (``"12,50"``, ``"12,50,3"``), or ``"0"`` for none (each chunk rendered
        whole)."""
        if text.strip() == "0":
            return None
        first, _, rest = text.partition(",")
        later, _, prompt = rest.partition(",")
        return cls(int(first), int(later or first), float(prompt) if prompt else cls.prompt)

    @property
    def prompt_tokens(self) -> int | None:
        """The prompt's speech tokens a pass reads (25 a second), None for all of them."""
        return round(self.prompt * SPEECH_TOKENS_PER_SECOND) or None


def prompt_tail(ref_dict: dict[str, Any], tokens: int | None) -> dict[str, Any]:
    """S3Gen's reference with only the last ``tokens`` of its prompt (and their mel frames, two a token):
    the end of the prompt, which the new speech follows, as in the whole prompt."""
    import torch

    have = ref_dict["prompt_token"].shape[1]
    if tokens is None or tokens >= have:
        return ref_dict
    start = have - tokens
    ratio = ref_dict["prompt_feat"].shape[1] // have  # 2; a frame past the last token's is dropped
    return {
        **ref_dict,
        "prompt_token": ref_dict["prompt_token"][:, start:],
        "prompt_token_len": torch.full_like(ref_dict["prompt_token_len"], tokens),
        "prompt_feat": ref_dict["prompt_feat"][:, start * ratio : have * ratio],
        "prompt_feat_len": None,
    }


def t3_tokens(
    t3: Any,
    t3_cond: Any,
    text_tokens: Any,
    *,
    max_new_tokens: int,
    temperature: float,
    cfg_weight: float,
    repetition_penalty: float,
    min_p: float,
    top_p: float,
) -> Iterator[int]:
    """Speech tokens of Chatterbox's Llama T3 as they are sampled: upstream ``T3.inference``'s loop, step for
    step (CFG pair, alignment checks of the multilingual model, repetition penalty, temperature, min-p and
    top-p), yielding each token instead of collecting them; ends at the stop token or ``max_new_tokens``."""
    import torch
    from chatterbox.models.t3.inference.alignment_stream_analyzer import AlignmentStreamAnalyzer
    from chatterbox.models.t3.inference.t3_hf_backend import T3HuggingfaceBackend
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TopPLogitsWarper,
    )

    hp = t3.hp
    with torch.inference_mode():
        text_tokens = torch.atleast_2d(text_tokens).to(dtype=torch.long, device=t3.device)
        initial = hp.start_speech_token * torch.ones_like(text_tokens[:, :1])
        embeds, len_cond = t3.prepare_input_embeds(
            t3_cond=t3_cond, text_tokens=text_tokens, speech_tokens=initial, cfg_weight=cfg_weight
        )
        analyzer = None
        if hp.is_multilingual:
            analyzer = AlignmentStreamAnalyzer(
                t3.tfmr,
                None,
                text_tokens_slice=(len_cond, len_cond + text_tokens.size(-1)),
                alignment_layer_idx=9,
                eos_idx=hp.stop_speech_token,
            )
        model = T3HuggingfaceBackend(
            config=t3.cfg,
            llama=t3.tfmr,
            speech_enc=t3.speech_emb,
            speech_head=t3.speech_head,
            alignment_stream_analyzer=analyzer,
        )
        pairs = embeds.size(0)  # 2 with CFG's unconditioned row
        bos = torch.tensor([[hp.start_speech_token]], dtype=torch.long, device=embeds.device)
        bos_embed = t3.speech_emb(bos) + t3.speech_pos_emb.get_fixed_embedding(0)
        output = model(
            inputs_embeds=torch.cat([embeds, bos_embed.expand(pairs, -1, -1)], dim=1),
            past_key_values=None,
            use_cache=True,
            output_attentions=True,
            output_hidden_states=True,
            return_dict=True,
        )
        past = output.past_key_values
        generated = bos.clone()
        top_p_warper = TopPLogitsWarper(top_p=top_p)
        min_p_warper = MinPLogitsWarper(min_p=min_p)
        repetition = RepetitionPenaltyLogitsProcessor(penalty=float(repetition_penalty))
    for step in range(max_new_tokens):
        with torch.inference_mode():
            logits = output.logits[:, -1, :]
            if pairs == 2:
                cond, uncond = logits[0:1, :], logits[1:2, :]
                logits = cond + torch.as_tensor(cfg_weight, device=cond.device, dtype=cond.dtype) * (cond - uncond)
            if analyzer is not None:
                last = generated[0, -1].item() if len(generated[0]) > 0 else None
                logits = analyzer.step(logits, next_token=last)
            logits = repetition(generated[:1, ...], logits)
            if temperature != 1.0:
                logits = logits / temperature
            logits = top_p_warper(generated[:1, ...], min_p_warper(generated[:1, ...], logits))
            token = torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1)
            generated = torch.cat([generated, token], dim=1)
            if token.view(-1) == hp.stop_speech_token:
                return
            embed = t3.speech_emb(token) + t3.speech_pos_emb.get_fixed_embedding(step + 1)
        yield int(token)
        with torch.inference_mode():
            output = model(
                inputs_embeds=embed.expand(pairs, -1, -1),
                past_key_values=past,
                output_attentions=True,
                output_hidden_states=True,
                return_dict=True,
            )
            past = output.past_key_values


class WindowRenderer:
    """S3Gen over a growing list of speech tokens, a window at a time (see the module docstring)."""

    def __init__(
        self,
        s3gen: Any,
        ref_dict: dict[str, Any],
        device: str,
        cuda_devices: list[int],
        n_cfm_timesteps: int | None,
        windows: TokenWindows | None,
    ) -> None:
        self.s3gen = s3gen
        self.ref_dict = ref_dict  # a chunk rendered in one pass reads all of the prompt, as upstream
        self.windows = windows
        self.window_ref = prompt_tail(ref_dict, windows.prompt_tokens) if windows else ref_dict
        self.device = device
        self.cuda_devices = cuda_devices  # whose generators a window's pass forks
        self.steps = {"n_cfm_timesteps": n_cfm_timesteps} if n_cfm_timesteps else {}
        self.lookahead = s3gen.flow.pre_lookahead_len
        self.ratio = s3gen.flow.token_mel_ratio
        self.frames_voiced = 0  # mel frames taken from the flow so far
        self.cache: tuple[Any, Any, Any] | None = None  # (mel, source, speech) of the last overlap
        self.fade = np.hamming(2 * MEL_CACHE_FRAMES * SAMPLES_PER_FRAME).astype(np.float32)

    def ready(self, tokens: int) -> bool:
        """Whether enough tokens arrived for the next window beyond what was voiced."""
        if self.windows is None:
            return False
        voiceable = tokens - self.lookahead  # the flow holds the last tokens' frames back
        window = self.windows.later if self.frames_voiced else self.windows.first
        return voiceable * self.ratio - self.frames_voiced >= window * self.ratio

    def render(self, tokens: list[int], final: bool) -> np.ndarray:
        """The audio of the frames not voiced yet (all of them when ``final``), float32 at 24 kHz. A window
        before the last draws its noise (the flow's and the vocoder's) from a fork of torch's generator;
        the last pass draws from torch's generator itself, as upstream's one pass does."""
        import torch

        if final:
            return self._render(tokens, final)
        with torch.random.fork_rng(devices=self.cuda_devices):
            return self._render(tokens, final)

    def _render(self, tokens: list[int], final: bool) -> np.ndarray:
        import torch

        with torch.inference_mode():
            start = max(0, self.frames_voiced // self.ratio - FLOW_CONTEXT_TOKENS)
            speech_tokens = torch.tensor(tokens[start:], dtype=torch.long, device=self.device).unsqueeze(0)
            ref_dict = self.ref_dict if final and not self.frames_voiced else self.window_ref
            mels = self.s3gen.flow_inference(speech_tokens, ref_dict=ref_dict, finalize=True, **self.steps)
            if not final:  # the last tokens' frames lack their look-ahead: they wait for a later pass
                mels = mels[:, :, : (len(tokens) - self.lookahead - start) * self.ratio]
            mels = mels[:, :, self.frames_voiced - start * self.ratio :].to(dtype=self.s3gen.dtype)
            self.frames_voiced += mels.shape[2]
            source = torch.zeros(1, 1, 0, device=self.device, dtype=self.s3gen.dtype)
            first = self.cache is None
            if self.cache is not None:
                mels, source = torch.cat([self.cache[0], mels], dim=2), self.cache[1]
            speech, excitation = self.s3gen.hift_inference(mels, source)
            if first:  # upstream's fade-in against spill-over from the reference
                fade = self.s3gen.trim_fade[: speech.shape[1]]
                speech[:, : len(fade)] *= fade
            if self.cache is not None:
                overlap = min(self.cache[2].shape[1], speech.shape[1])
                window = torch.from_numpy(self.fade).to(speech)
                half = len(window) // 2
                speech[:, :overlap] = (
                    speech[:, :overlap] * window[:overlap] + self.cache[2][:, -overlap:] * window[half : half + overlap]
                )
            if final:
                self.cache = None
                return speech.squeeze(0).cpu().numpy()
            keep = MEL_CACHE_FRAMES * SAMPLES_PER_FRAME
            self.cache = (mels[:, :, -MEL_CACHE_FRAMES:], excitation[:, :, -keep:], speech[:, -keep:])
            return speech[:, :-keep].squeeze(0).cpu().numpy()
