"""Batching: requests made at once are decoded together, and each still gets the speech its seed gives alone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from voicedb import Batcher, SynthesisSettings, TokenWindows, VoiceDB

TOKENS = 30  # per chunk
TEXT = "Hello there, this is a test of batching."
TWO_CHUNKS = "A sentence of some length that goes on for a while, as sentences in stories do. " * 5


@pytest.fixture(scope="module")
def library(tmp_path_factory, checkpoint: Path, speakers) -> Iterator[VoiceDB]:
    clips = [paths[0] for paths in speakers.values()]
    with VoiceDB(tmp_path_factory.mktemp("batching") / "library", checkpoint=checkpoint, device="cpu") as db:
        for name, clip in zip(("ann", "bob", "cy"), clips, strict=False):
            db.add([clip], name=name)
        yield db


@pytest.fixture(scope="module")
def batcher(library: VoiceDB) -> Iterator[Batcher]:
    batcher = Batcher(library.engine, max_batch=4, gather_seconds=0.5)
    yield batcher
    batcher.close()


def spoken(db: VoiceDB, voice: str, text: str, seed: int, batcher: Batcher | None = None, **options) -> np.ndarray:
    settings = SynthesisSettings(max_tokens=TOKENS, **options)
    return np.concatenate(list(db.speak_stream(voice, text, settings=settings, seed=seed, batcher=batcher)))


def together(db: VoiceDB, batcher: Batcher, requests: list[dict]) -> list[np.ndarray]:
    """Each request on its own thread at once, as a server's workers send them."""
    results: list[np.ndarray | BaseException | None] = [None] * len(requests)

    def speak(index: int) -> None:
        try:
            results[index] = spoken(db, batcher=batcher, **requests[index])
        except BaseException as exc:  # noqa: BLE001 - raised below, on the test's thread
            results[index] = exc

    threads = [threading.Thread(target=speak, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


def test_a_request_alone_in_the_batcher_speaks_as_without_it(library: VoiceDB, batcher: Batcher):
    for windows in (None, TokenWindows(8, 16)):
        alone = spoken(library, "ann", TEXT, seed=4, windows=windows)
        batched = spoken(library, "ann", TEXT, seed=4, batcher=batcher, windows=windows)
        assert np.array_equal(alone, batched)


def test_requests_decoded_together_keep_their_own_voices_texts_options_and_seeds(library: VoiceDB, batcher: Batcher):
    requests = [
        {"voice": "ann", "text": TEXT, "seed": 1},
        {"voice": "bob", "text": "A different and rather longer text for the second listener.", "seed": 2},
        {"voice": "cy", "text": "Short.", "seed": 3, "temperature": 0.5, "cfg_weight": 0.0},
        {"voice": "ann", "text": TEXT, "seed": 9, "exaggeration": 0.9, "windows": TokenWindows(8, 16)},
    ]
    alone = [spoken(library, **request) for request in requests]
    batched = together(library, batcher, requests)
    for one, other in zip(alone, batched, strict=True):
        assert len(one) == len(other)  # the same tokens: stopping and sampling are per row
        assert np.max(np.abs(one - other)) < 1e-3  # the batch's float rounding, nothing more
    assert not np.array_equal(batched[0], batched[3])  # its own seed and options


def test_a_request_of_several_chunks_joins_the_next_batch_with_its_pause(library: VoiceDB, batcher: Batcher):
    requests = [{"voice": "ann", "text": TWO_CHUNKS, "seed": 5}, {"voice": "bob", "text": TEXT, "seed": 6}]
    alone = [spoken(library, **request) for request in requests]
    batched = together(library, batcher, requests)
    for one, other in zip(alone, batched, strict=True):
        assert len(one) == len(other) and np.max(np.abs(one - other)) < 1e-3


def test_a_listener_who_leaves_stops_only_its_own_row(library: VoiceDB, batcher: Batcher):
    settings = SynthesisSettings(max_tokens=TOKENS, windows=TokenWindows(8, 8))
    leaving = library.speak_stream("bob", TWO_CHUNKS, settings=settings, seed=1, batcher=batcher)
    staying = library.speak_stream("ann", TEXT, settings=settings, seed=2, batcher=batcher)
    next(iter(leaving))
    leaving.close()
    assert np.array_equal(
        np.concatenate(list(staying)), spoken(library, "ann", TEXT, seed=2, windows=TokenWindows(8, 8))
    )


def test_the_batcher_refuses_an_empty_batch(library: VoiceDB):
    with pytest.raises(ValueError, match="at least one"):
        Batcher(library.engine, max_batch=0)
