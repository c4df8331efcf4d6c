"""Adaptive symmetric score normalisation (AS-norm) against a cohort of other voices, as speaker-verification
toolkits (WeSpeaker, 3D-Speaker) apply it: a score is judged against how high each side scores with the voices
closest to it among people it is not.

Recordings from a source nobody tuned to (a telephone line, one studio's voices) score high with *every*
voice of that source, which a fixed threshold mistakes for the same speaker. AS-norm subtracts, per side, the
mean of its ``TOP`` best cohort scores and divides by their spread::

    z = ((s - mean_q) / std_q + (s - mean_v) / std_v) / 2

For a fused matcher each encoder's cosine is normalised on its own and the ``z`` are averaged. The cohort is
the library's own voices (all but the voice being scored), which holds recordings of the user's sources;
``scripts/eval_matching.py`` measures it leave-one-source-out against the plain cosine.
"""

from __future__ import annotations

import numpy as np

#: Cohort scores averaged per side: the closest voices, where the confusions are.
TOP = 20
#: A library normalises scores once its matcher's index holds this many voices (fewer make a noisy cohort).
MIN_COHORT = 20
#: At most this many of the library's voices (spread evenly over it) form the cohort of a large library.
MAX_COHORT = 4000
#: A cohort spread below this is taken as this (identical cohort scores would divide by zero).
MIN_SPREAD = 1e-3


def cohort_stats(scores: np.ndarray, top: int = TOP) -> tuple[np.ndarray, np.ndarray]:
    """(mean, standard deviation) of each row's ``top`` highest scores: ``scores`` float (n, c) of n vectors
    against a cohort of c; both float64 (n,)."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    top = min(top, scores.shape[1])
    best = -np.partition(-scores, top - 1, axis=1)[:, :top]
    return best.mean(axis=1), np.maximum(best.std(axis=1), MIN_SPREAD)


def as_norm(
    score: np.ndarray, query: tuple[np.ndarray, np.ndarray], voice: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """The normalised ``score`` (any shape broadcasting with the stats) given the query's and the voice's
    cohort stats (``cohort_stats``)."""
    return 0.5 * ((score - query[0]) / query[1] + (score - voice[0]) / voice[1])
