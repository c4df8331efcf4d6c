"""A deterministic stand-in for the Chatterbox engine, for tests about storage, naming, locking and errors.

Like the fake embedding model in simonw/llm's tests: it embeds instantly and needs no checkpoint.
Each distinct recording gets its own unit vector (seeded by its samples), so the same recording
always embeds the same and different recordings are nearly orthogonal. It computes no
conditionals: tests about models use the real offline checkpoint instead.
"""

from __future__ import annotations

import hashlib

import numpy as np

from voicedb.errors import CheckpointError


class StandInEngine:
    device = "cpu"
    encoder_checksum = hashlib.sha256(b"voicedb stand-in encoder").hexdigest()

    campplus_checksum = None

    def embed(self, wav_16k: np.ndarray) -> np.ndarray:
        samples = np.round(np.asarray(wav_16k, dtype=np.float32) * 2**15).astype(np.int32)
        seed = int.from_bytes(hashlib.sha256(samples.tobytes()).digest()[:8], "little")
        vector = np.random.default_rng(seed).standard_normal(256)
        return (vector / np.linalg.norm(vector)).astype(np.float32)

    def campplus_path(self) -> None:
        """No CAM++ weights: libraries match with the (stand-in) Chatterbox encoder."""
        return None

    def loaded(self) -> list[str]:
        return []

    def fingerprint(self, flavour) -> str:
        return f"{flavour.name}:stand-in"

    def conditionals(self, *_args, **_kwargs):
        raise CheckpointError("the stand-in engine computes no conditionals; pass --no-conditionals.")
