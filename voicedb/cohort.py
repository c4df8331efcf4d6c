"""Scores that carry over to new recording conditions: a cosine less the query's and the voice's cohort means.

Recordings from one source (a telephone line, one studio's voices) score high with *every* voice of that
source, so a threshold fitted on other sources takes two strangers from it for one speaker. The cohort margin
subtracts what each side scores with its nearest other voices (the mean of the ``TOP`` best), as the symmetric
score normalisations of speaker verification do (S-norm; without their division by the cohort's spread, which
on the development set rejected as many strangers but accepted fewer speakers out of sample)::

    margin = cosine - (mean of the query's TOP best cohort scores + mean of the voice's) / 2

The cohort is the library's other voices and the development set's voices shipped for the matcher's weights
(``cohorts.npz``, written by ``scripts/eval_matching.py``), so a library of a few voices has one too. A genuine
probe scores far above the voices it is not; a stranger from a source of look-alike voices scores with the
nearest of them about as well as with its best match, and its margin stays low. Measured leaving one source out
in docs/matching.md.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

#: Cohort scores averaged per side: the nearest voices, where the confusions are.
TOP = 4

SHIPPED_COHORTS = Path(__file__).with_name("cohorts.npz")

_lock = threading.Lock()
_cohorts: dict[str, np.ndarray] | None = None


def top_mean(scores: np.ndarray, top: int = TOP) -> np.ndarray:
    """The mean of the ``top`` highest finite values of each row of ``scores`` (n, c) (-inf marks a voice
    that is not in that row's cohort; a row with fewer values averages those it has, none gives 0)."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if scores.shape[1] == 0:
        return np.zeros(len(scores))
    best = -np.sort(-scores, axis=1)[:, :top]
    finite = np.isfinite(best)
    counts = finite.sum(axis=1)
    return np.where(counts > 0, np.where(finite, best, 0.0).sum(axis=1) / np.maximum(counts, 1), 0.0)


def margins(scores: np.ndarray, query_cohort: np.ndarray, voice_cohort: np.ndarray, top: int = TOP) -> np.ndarray:
    """The cohort margins of ``scores`` (m,), a query against m voices: row j of ``query_cohort`` (m, c) holds
    the query's scores with voice j's cohort (every voice but j), row j of ``voice_cohort`` (m, c') voice j's."""
    scores = np.asarray(scores, dtype=np.float64)
    return scores - 0.5 * (top_mean(query_cohort, top) + top_mean(voice_cohort, top))


def shipped_cohort(identity: str) -> np.ndarray | None:
    """The development set's voices in the matching space of ``identity`` (``matcher:sha16...``), float32
    (n, dimension), or None for weights nobody measured."""
    global _cohorts
    with _lock:
        if _cohorts is None:
            if SHIPPED_COHORTS.exists():
                with np.load(SHIPPED_COHORTS) as stored:
                    _cohorts = {key: stored[key].astype(np.float32) for key in stored.files}
            else:
                _cohorts = {}
        return _cohorts.get(identity)


def top_means_without(pool: np.ndarray, width: int, top: int = TOP) -> np.ndarray:
    """(n, width): for each row of ``pool`` (n, c) and each column j < ``width``, the mean of the row's ``top``
    highest values with column j left out (a voice is not its own cohort). ``pool`` needs ``top + 1`` columns."""
    pool = np.asarray(pool, dtype=np.float64)
    order = np.argsort(-pool, axis=1)[:, : top + 1]
    best = np.take_along_axis(pool, order, axis=1)
    means = np.repeat((best[:, :top].sum(axis=1) / top)[:, None], width, axis=1)
    rows = np.arange(len(pool))
    with_next = best.sum(axis=1)
    for place in range(top):  # a left-out column among the top: the next value takes its place
        column = order[:, place]
        inside = column < width
        means[rows[inside], column[inside]] = (with_next[inside] - best[inside, place]) / top
    return means
