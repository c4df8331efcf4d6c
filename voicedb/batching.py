"""Batching: concurrent speech requests decoded together, so a server's listeners share T3's steps.

T3 spends most of a step moving its weights, not computing; 8 rows cost little more than 1 on a GPU.
A ``Batcher`` thread gathers the requests that wait within ``gather_seconds`` (up to ``max_batch``),
and runs their next sentence chunks as one batch: T3's conditionals and texts stacked (left-padded,
with an attention mask and per-row positions, so each row sees what it would alone), its CFG rows
beside them, and per row its own stopping, sampling options and random generator. Each row's speech
tokens go to its own ``WindowRenderer`` and its audio to its own listener as it comes; a request with
more chunks joins the next batch, with the requests that arrived meanwhile.

Seeds: a row samples from its own generators, seeded as ``torch.manual_seed(seed)`` seeds torch's, and
S3Gen renders with them swapped in, so a seeded request draws the numbers it draws alone. Its tokens
are then the unbatched ones unless float rounding in the batched matrix products moves a sample across
a probability boundary (tests/test_batching.py checks tokens and audio).

Turbo's GPT-2 T3 and the multilingual T3 (whose alignment checks watch one row's attention) are not
batched: their requests run one at a time, as without a batcher.
"""

from __future__ import annotations

import contextlib
import queue
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from .flavours import Flavour, SynthesisSettings

_DONE = object()


class RowRandom:
    """One request's own torch generators (CPU and the engine's CUDA device): what ``torch.manual_seed(seed)``
    gives a request alone, kept apart from the other rows of a batch."""

    def __init__(self, seed: int | None, cuda_devices: list[int]) -> None:
        import torch

        seed = secrets.randbits(63) if seed is None else seed
        self.cpu = torch.Generator().manual_seed(seed)
        self.cuda = {d: torch.Generator(f"cuda:{d}").manual_seed(seed) for d in cuda_devices}

    def on(self, device: Any) -> Any:
        """The generator for tensors on ``device``."""
        return self.cuda[device.index or 0] if device.type == "cuda" else self.cpu

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """torch's own generators replaced by this row's for a while (S3Gen draws from torch's), then
        restored; what the row drew advances its generators."""
        import torch

        with torch.random.fork_rng(devices=list(self.cuda)):
            torch.set_rng_state(self.cpu.get_state())
            for device, generator in self.cuda.items():
                torch.cuda.set_rng_state(generator.get_state(), device)
            try:
                yield
            finally:
                self.cpu.set_state(torch.get_rng_state())
                for device, generator in self.cuda.items():
                    generator.set_state(torch.cuda.get_rng_state(device))


def batchable(flavour: Flavour) -> bool:
    """Whether requests for ``flavour`` are decoded in batches (the English Llama T3's are)."""
    return not flavour.gpt2_t3 and not flavour.multilingual


@dataclass
class Row:
    """One request's sentence chunk in a batch: what T3 reads, how it samples, and its generators."""

    t3_cond: Any
    text_tokens: Any  # (2: CFG's pair, length)
    sampling: dict[str, Any]
    random: RowRandom


def batched_t3_tokens(t3: Any, rows: list[Row], stopped: list[bool]) -> Iterator[list[int | None]]:
    """Speech tokens of Chatterbox's Llama T3 for several rows at once: each step yields one entry per row,
    its token, or None once it stopped (its stop token, its ``max_new_tokens``, or ``stopped[i]`` set by the
    caller). Row by row this is ``voicedb.streaming.t3_tokens``, upstream's loop, with the rows' sequences
    left-padded into one batch."""
    import torch
    import torch.nn.functional as F
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TopPLogitsWarper,
    )

    hp = t3.hp
    with torch.inference_mode():
        sequences = []  # each row's CFG pair: conditioned, then unconditioned
        bos = torch.tensor([[hp.start_speech_token]], dtype=torch.long, device=t3.device)
        bos_embed = t3.speech_emb(bos) + t3.speech_pos_emb.get_fixed_embedding(0)
        for row in rows:
            text_tokens = torch.atleast_2d(row.text_tokens).to(dtype=torch.long, device=t3.device)
            initial = hp.start_speech_token * torch.ones_like(text_tokens[:, :1])
            embeds, _ = t3.prepare_input_embeds(
                t3_cond=row.t3_cond,
                text_tokens=text_tokens,
                speech_tokens=initial,
                cfg_weight=row.sampling["cfg_weight"],
            )
            embeds = torch.cat([embeds, bos_embed.expand(embeds.size(0), -1, -1)], dim=1)
            sequences += list(embeds)
        longest = max(s.size(0) for s in sequences)
        inputs = torch.stack([F.pad(s, (0, 0, longest - s.size(0), 0)) for s in sequences])
        mask = torch.stack(
            [F.pad(torch.ones(s.size(0), dtype=torch.long), (longest - s.size(0), 0)) for s in sequences]
        ).to(t3.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        output = t3.tfmr(
            inputs_embeds=inputs,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            output_attentions=True,  # as upstream's loop asks, so attention runs the same kernel
            output_hidden_states=True,
            return_dict=True,
        )
        past, positions = output.past_key_values, positions[:, -1:]
        logits_all = t3.speech_head(output.hidden_states[-1][:, -1, :])
        generated = [bos.clone() for _ in rows]
        warpers = [
            (
                RepetitionPenaltyLogitsProcessor(penalty=float(row.sampling["repetition_penalty"])),
                MinPLogitsWarper(min_p=row.sampling["min_p"]),
                TopPLogitsWarper(top_p=row.sampling["top_p"]),
            )
            for row in rows
        ]
        done = [False] * len(rows)
    step = 0
    while not all(done):
        with torch.inference_mode():
            tokens: list[int | None] = []
            for index, row in enumerate(rows):
                done[index] = done[index] or stopped[index] or step >= row.sampling["max_new_tokens"]
                if done[index]:
                    tokens.append(None)
                    continue
                cond, uncond = logits_all[2 * index : 2 * index + 1, :], logits_all[2 * index + 1 : 2 * index + 2, :]
                weight = torch.as_tensor(row.sampling["cfg_weight"], device=cond.device, dtype=cond.dtype)
                logits = cond + weight * (cond - uncond)
                repetition, min_p, top_p = warpers[index]
                logits = repetition(generated[index], logits)
                if row.sampling["temperature"] != 1.0:
                    logits = logits / row.sampling["temperature"]
                logits = top_p(generated[index], min_p(generated[index], logits))
                probs = torch.softmax(logits, dim=-1)
                token = torch.multinomial(probs, num_samples=1, generator=row.random.on(probs.device))
                generated[index] = torch.cat([generated[index], token], dim=1)
                if int(token) == hp.stop_speech_token:
                    done[index] = True
                    tokens.append(None)
                else:
                    tokens.append(int(token))
        if all(done):
            return
        yield tokens
        step += 1
        with torch.inference_mode():
            fed = [hp.stop_speech_token if token is None else token for token in tokens]
            fed = torch.tensor(fed, device=t3.device).repeat_interleave(2).unsqueeze(1)  # (rows * 2, 1)
            embed = t3.speech_emb(fed) + t3.speech_pos_emb.get_fixed_embedding(step)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions + 1
            output = t3.tfmr(
                inputs_embeds=embed,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=past,
                use_cache=True,
                output_attentions=True,
                output_hidden_states=True,
                return_dict=True,
            )
            past = output.past_key_values
            logits_all = t3.speech_head(output.hidden_states[-1][:, -1, :])


@dataclass(eq=False)  # a job is itself, not its fields: the batcher finds it in lists by identity
class Job:
    """One speech request in the batcher: its chunks, how far it got, and where its audio goes."""

    flavour: Flavour
    conds: Any
    chunks: list[str]
    settings: SynthesisSettings
    random: RowRandom
    pause: np.ndarray  # the silence between chunks
    arrived: float = field(default_factory=time.monotonic)
    next_chunk: int = 0
    pieces: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def audio(self) -> Iterator[np.ndarray]:
        """The request's audio as the batcher makes it; closing this stops its row."""
        try:
            while (piece := self.pieces.get()) is not _DONE:
                if isinstance(piece, BaseException):
                    raise piece
                yield piece
        finally:
            self.cancelled.set()


class BatchEngine(Protocol):
    """What the batcher needs of ``voicedb.engine.Engine``."""

    device: str

    def cuda_devices(self) -> list[int]: ...

    def synthesize_batch(self, jobs: list[Job]) -> None: ...


class Batcher:
    """Gathers speech requests and decodes them together on one thread (see the module docstring)."""

    def __init__(self, engine: BatchEngine, max_batch: int = 8, gather_seconds: float = 0.005) -> None:
        if max_batch < 1:
            raise ValueError("a batch holds at least one request")
        self.engine = engine
        self.max_batch = max_batch
        self.gather_seconds = gather_seconds
        self._ready: list[Job] = []  # jobs waiting for their next chunk, oldest first
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="voicedb-batcher", daemon=True)
        self._thread.start()

    def submit(
        self,
        flavour: Flavour,
        conds: Any,
        chunks: list[str],
        settings: SynthesisSettings,
        seed: int | None,
        pause: np.ndarray,
    ) -> Iterator[np.ndarray]:
        """Queue a request; iterate the result for its audio: each chunk's pieces, ``pause`` between chunks."""
        random = RowRandom(seed, self.engine.cuda_devices())
        job = Job(flavour, conds.to(self.engine.device), chunks, settings, random, pause)
        with self._changed:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._ready.append(job)
            self._changed.notify()
        return job.audio()

    def close(self) -> None:
        """Stop after the batch in progress; requests still waiting end with an error."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join()
        for job in self._ready:
            job.pieces.put(RuntimeError("the server is shutting down"))

    def _next_batch(self) -> list[Job] | None:
        """Wait for a request, then up to ``gather_seconds`` for more; the oldest jobs of the oldest one's
        model flavour, at most ``max_batch``."""
        with self._changed:
            while not self._ready and not self._closed:
                self._changed.wait()
            if self._closed:
                return None
            until = time.monotonic() + self.gather_seconds
            while len(self._ready) < self.max_batch and (left := until - time.monotonic()) > 0:
                self._changed.wait(left)
            self._ready = [job for job in self._ready if not job.cancelled.is_set()]
            flavour = self._ready[0].flavour if self._ready else None
            batch = [job for job in self._ready if job.flavour == flavour][: self.max_batch]
            if flavour is not None and not batchable(flavour):
                batch = batch[:1]
            self._ready = [job for job in self._ready if job not in batch]
            return batch

    def _serve(self) -> None:
        while (batch := self._next_batch()) is not None:
            if not batch:
                continue
            for job in batch:
                if job.next_chunk:  # the pause between sentence chunks, as ``SpeechStream`` has it
                    job.pieces.put(job.pause)
            try:
                self.engine.synthesize_batch(batch)
            except BaseException as exc:  # noqa: BLE001 - each request hears of it
                for job in batch:
                    job.pieces.put(exc)
                continue
            with self._changed:
                for job in batch:
                    if job.next_chunk < len(job.chunks) and not job.cancelled.is_set():
                        self._ready.append(job)
                    else:
                        job.pieces.put(_DONE)
                self._ready.sort(key=lambda job: job.arrived)
