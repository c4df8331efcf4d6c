"""Which speaker encoders a library matches with, and how their embeddings combine into one searchable vector.

A *matcher* names one encoder or several. With several, a voice's vector is the concatenation of its unit
embeddings, each scaled by ``1/sqrt(n)``: the result is a unit vector whose inner product with another such
vector is the mean of the encoders' cosines, so one FAISS inner-product index searches the fused score.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import VoiceDBError

CHATTERBOX = "chatterbox"  # Chatterbox's voice encoder (a GE2E-style LSTM), on the clip's speech only
CAMPPLUS = "campplus"  # CAM++ from 3D-Speaker, a speaker-verification network
ENCODERS = (CHATTERBOX, CAMPPLUS)
DIMENSIONS = {CHATTERBOX: 256, CAMPPLUS: 192}

MATCHERS: dict[str, tuple[str, ...]] = {
    CHATTERBOX: (CHATTERBOX,),
    CAMPPLUS: (CAMPPLUS,),
    f"{CHATTERBOX}+{CAMPPLUS}": (CHATTERBOX, CAMPPLUS),
}
#: What a library matches with when it has never said: how every library matched before matchers existed.
LEGACY_MATCHER = CHATTERBOX
#: The ``meta`` row naming the library's matcher.
MATCHER_KEY = "matcher"
#: The ``meta`` rows holding the checksum of the weights each encoder's stored vectors come from; the
#: Chatterbox encoder's is the library's ``encoder`` row, which its conditionals embeddings share.
CHECKSUM_KEYS = {CHATTERBOX: "encoder", CAMPPLUS: f"encoder:{CAMPPLUS}"}

#: encoder -> (weights checksum, unit vector): one clip's matching vectors.
ClipVectors = dict[str, tuple[str, np.ndarray]]


def check_matcher(name: str) -> str:
    if name not in MATCHERS:
        raise VoiceDBError(f"unknown matcher {name!r}; choose one of: {', '.join(MATCHERS)}.")
    return name


def encoders_of(matcher: str) -> tuple[str, ...]:
    return MATCHERS[check_matcher(matcher)]


def dimension(matcher: str) -> int:
    return sum(DIMENSIONS[encoder] for encoder in encoders_of(matcher))


def normalised(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        raise VoiceDBError("cannot use a zero or non-finite embedding.")
    return (vector / norm).astype(np.float32)


def mean_embedding(vectors: list[np.ndarray]) -> np.ndarray:
    """The embedding of a voice with several clips, by any encoder: the mean of their (unit) embeddings,
    L2-normalised again (float32). For one clip that is the clip's own embedding, exactly as upstream
    ``prepare_conditionals`` computes the conditionals'."""
    return normalised(np.mean(np.stack(vectors), axis=0))


def fuse(parts: list[np.ndarray]) -> np.ndarray:
    """One matcher vector (or a row of them) from the encoders' unit vectors, in ``MATCHERS`` order."""
    if len(parts) == 1:
        return np.asarray(parts[0], dtype=np.float32)
    scale = np.float32(1 / math.sqrt(len(parts)))
    return np.concatenate([np.asarray(p, dtype=np.float32) * scale for p in parts], axis=-1)


def voice_parts(clips: list[ClipVectors], matcher: str) -> dict[str, np.ndarray]:
    """encoder -> the unit vector of a voice made of these clips (each embedded by the matcher's encoders)."""
    return {encoder: mean_embedding([clip[encoder][1] for clip in clips]) for encoder in encoders_of(matcher)}


def fuse_clips(clips: list[ClipVectors], matcher: str) -> np.ndarray:
    """The matcher vector of a voice made of these clips (each embedded by the matcher's encoders)."""
    return fuse(list(voice_parts(clips, matcher).values()))


def split(vector: np.ndarray, matcher: str) -> dict[str, np.ndarray]:
    """The encoders' unit vectors inside one ``matcher`` vector: ``fuse`` undone."""
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    if len(vector) != dimension(matcher):
        raise VoiceDBError(f"a {matcher} vector has {dimension(matcher)} values, not {len(vector)}.")
    parts, start = {}, 0
    for encoder in encoders_of(matcher):
        parts[encoder] = normalised(vector[start : start + DIMENSIONS[encoder]])
        start += DIMENSIONS[encoder]
    return parts
