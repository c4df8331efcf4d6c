"""One ``VoiceDB`` shared by many threads, and CLI processes racing, give the results serial use gives."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from conftest import list_json, run

from voicedb import VoiceDB

TOKENS = 10  # a random T3 never stops: every speak is capped
TEXT = "Hello there."
SCORE_TOLERANCE = 1e-5


@pytest.fixture(autouse=True)
def one_torch_thread_per_caller():
    """Several Python threads each running torch ops on a small CPU already fill it: intra-op threads on top
    oversubscribe it and make CPU synthesis many times slower. Restored afterwards for the other test modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def speaker(clip: Path) -> str:
    return clip.stem.rsplit("_", 1)[0]


def scores_by_name(db: VoiceDB, clip: Path) -> dict[str, float]:
    """Every stored voice's cosine against ``clip``, by name (names, unlike ids, are the same in two libraries):
    the part of a score that does not move with the voices stored beside it (a cohort margin does)."""
    return {m.name: m.cosine for m in db.match(clip, k=len(db.list()), threshold=None)}


def assert_consistent_top_k(result: list, expected: dict[str, float], always_visible: set[str], k: int) -> None:
    """``result`` is a top ``k`` of the stored voices over ``always_visible`` plus some of the voices being
    added at that moment: every cosine is the serial one, best first by score, and no visible voice is missing
    from a short list. (Which voices a full list holds depends on the margins of that moment's library.)"""
    names = [m.name for m in result]
    assert len(names) == len(set(names)), result
    for match in result:
        assert abs(match.cosine - expected[match.name]) <= SCORE_TOLERANCE, (match, expected[match.name])
    scores = [m.score for m in result]
    assert scores == sorted(scores, reverse=True), result
    assert len(result) <= k
    if len(result) < k:
        assert always_visible <= set(names), result


def shortest_first(speakers: dict[str, list[Path]]) -> list[Path]:
    """Every clip, shortest first: a voice enrolled from a short clip has a short prompt and speaks fastest."""
    return sorted(
        (clip for clips in speakers.values() for clip in clips), key=lambda clip: soundfile.info(clip).duration
    )


def test_eight_threads_sharing_one_voicedb_get_the_serial_results(home: Path, speakers, tmp_path: Path):
    clips = shortest_first(speakers)
    enrolled = {"first": clips[0]}
    enrolled["second"] = next(c for c in clips if speaker(c) != speaker(clips[0]))
    rest = [clip for clip in clips if clip not in enrolled.values()]
    queries = [next(c for c in rest if speaker(c) == speaker(clips[0])), *rest[-3:]]  # and long clips of others
    additions = {f"added-{n}": clip for n, clip in enumerate([c for c in rest if c not in queries][:4])}
    kinds = [
        [("speak", ("first", 1)), ("speak", ("second", 2)), ("speak", ("first", 1))],
        [("add", name) for name in additions],
        [("match", clip) for clip in queries],
        [("list", None), ("details", "first"), ("list", None), ("details", "second")],
    ]
    # Interleaved, so that the first eight tasks, which start together, hold every kind of call.
    tasks = [task for wave in itertools.zip_longest(*kinds) for task in wave if task is not None]
    assert len(tasks) == 15

    def perform(db: VoiceDB, task: tuple):
        kind, arg = task
        if kind == "match":
            return db.match(arg, k=3, threshold=None)
        if kind == "list":
            return db.list()
        if kind == "details":
            return db.details(arg)
        if kind == "add":
            return db.add([additions[arg]], name=arg, conditionals=False)
        name, seed = arg
        return db.speak(name, TEXT, max_tokens=TOKENS, seed=seed).audio

    # The same enrolments, matches and adds one after another, in a library of their own.
    with VoiceDB(tmp_path / "serial") as serial_db:
        for name, clip in enrolled.items():
            serial_db.add([clip], name=name, conditionals=False)
        serial = {}
        for kind in ("match", "add"):  # matches first: they see the two enrolled voices only
            serial |= {n: perform(serial_db, task) for n, task in enumerate(tasks) if task[0] == kind}
        final_scores = {clip: scores_by_name(serial_db, clip) for clip in queries}
        final_top = {clip: serial_db.match(clip, k=3, threshold=None) for clip in queries}
        serial_voices = {v.name: v for v in serial_db.list()}

    with VoiceDB() as db:
        for name, clip in enrolled.items():
            db.add([clip], name=name)
        # The reads and speaks one after another, before any other thread touches the library.
        before_list = db.list()
        before_details = {name: db.details(name) for name in enrolled}
        before_speech = {arg: perform(db, ("speak", arg)) for kind, arg in tasks if kind == "speak"}

        start = threading.Barrier(8)

        def concurrently(task: tuple, first_wave: bool):
            if first_wave:
                start.wait(timeout=60)  # the first eight tasks begin at the same moment, the rest as threads free up
            return perform(db, task)

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(concurrently, task, n < 8) for n, task in enumerate(tasks)]
            results = [future.result(timeout=600) for future in futures]

        for n, (task, got) in enumerate(zip(tasks, results)):
            kind, arg = task
            if kind == "match":
                assert_consistent_top_k(got, final_scores[arg], set(enrolled), k=3)
                seen = [m for m in got if m.name in enrolled]  # voices added meanwhile may push some out
                assert [m.name for m in seen] == [m.name for m in serial[n][: len(seen)]]
                # a margin moves with the voices added meanwhile (its cohort); the cosine under it does not
                assert all(abs(a.cosine - b.cosine) <= SCORE_TOLERANCE for a, b in zip(seen, serial[n]))
            elif kind == "list":
                names = [v.name for v in got]
                assert len(names) == len(set(names)), names
                assert got[:2] == before_list, "a voice read mid-write differs from its stored record"
                assert set(names[2:]) <= set(additions), names
            elif kind == "details":
                assert got == before_details[arg]
            elif kind == "add":
                assert got.created and got.voice.name == arg and got.clips_added == [additions[arg].name]
            else:
                assert got.dtype == np.float32 and len(got) > 0
                assert np.array_equal(got, before_speech[arg]), f"speak{arg} differs from the same call made alone"
        assert not np.array_equal(before_speech[("first", 1)], before_speech[("second", 2)])

        after = db.list()
        names = [v.name for v in after]
        assert sorted(names) == sorted([*enrolled, *additions]), names
        for voice in after:
            twin = serial_voices[voice.name]
            assert (voice.clips, voice.seconds, voice.tags) == (twin.clips, twin.seconds, twin.tags)
            assert voice.models == (["english"] if voice.name in enrolled else [])
        for clip in queries:
            again = db.match(clip, k=3, threshold=None)
            expected_top = final_top[clip]  # the same library now: the same margins
            assert [m.name for m in again] == [m.name for m in expected_top]
            assert np.allclose([m.score for m in again], [m.score for m in expected_top], atol=SCORE_TOLERANCE, rtol=0)
        assert db.check() == []


def test_a_seed_gives_the_same_audio_while_other_threads_synthesise(home: Path, speakers):
    with VoiceDB() as db:
        db.add([shortest_first(speakers)[0]], name="solo")

        rng_before = torch.random.get_rng_state()
        alone = db.speak("solo", TEXT, max_tokens=TOKENS, seed=7).audio
        assert torch.equal(torch.random.get_rng_state(), rng_before), "a seeded speak changed torch's global RNG"

        seeds = [7, 11, 12, 13]  # seed 7 and three other threads speaking at the same moment
        start = threading.Barrier(len(seeds))

        def speak(seed: int) -> np.ndarray:
            start.wait(timeout=60)
            return db.speak("solo", TEXT, max_tokens=TOKENS, seed=seed).audio

        with ThreadPoolExecutor(len(seeds)) as pool:
            crowded = list(pool.map(speak, seeds, timeout=600))

        assert np.array_equal(crowded[0], alone), "seed 7 gave other audio while other threads synthesised"
        assert all(not np.array_equal(other, alone) for other in crowded[1:]), "another seed gave seed 7's audio"
        assert torch.equal(torch.random.get_rng_state(), rng_before)


def test_two_cli_adds_of_the_same_clip_at_once_one_wins_the_other_says_already_enrolled(home: Path, speakers):
    clips = [group[0] for group in speakers.values()][:3]
    for round_, clip in enumerate(clips):
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "voicedb", "add", str(clip), "--name", f"{side}{round_}", "--no-conditionals"],
                env=os.environ.copy(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for side in ("a", "b")
        ]
        outcomes = [(*p.communicate(timeout=600), p.returncode) for p in processes]
        assert sorted(code for _, _, code in outcomes) == [0, 2], outcomes
        winner_out, _, _ = next(outcome for outcome in outcomes if outcome[2] == 0)
        assert winner_out.startswith("added voice "), winner_out
        _, err, _ = next(outcome for outcome in outcomes if outcome[2] == 2)
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
        assert lines[0].startswith("Error: ") and "already enrolled in voice" in lines[0], err
        assert "Traceback" not in err

    listed = list_json()
    assert len(listed) == len(clips), listed
    assert sorted(v["name"][1:] for v in listed) == [str(n) for n in range(len(clips))]
    for voice in listed:
        shown = json.loads(run("show", voice["id"], "--json").stdout)
        assert [c["source"] for c in shown["clip_files"]] == [clips[int(voice["name"][1:])].name]
    assert run("check").exit_code == 0


def test_library_code_never_replaces_sys_stdout_or_stderr(home: Path, speakers):
    original_out, original_err = sys.stdout, sys.stderr
    clip = shortest_first(speakers)[0]
    with VoiceDB() as db, ThreadPoolExecutor(1) as pool:

        def work() -> np.ndarray:
            db.add([clip], name="watched")
            return db.speak("watched", TEXT, max_tokens=TOKENS, seed=3).audio

        future = pool.submit(work)
        polls = 0
        while not future.done():
            assert sys.stdout is original_out, "sys.stdout was replaced while the library worked"
            assert sys.stderr is original_err, "sys.stderr was replaced while the library worked"
            polls += 1
            time.sleep(0.0005)
        assert len(future.result()) > 0
    assert polls > 100, f"the work finished too fast to watch ({polls} polls)"
    assert sys.stdout is original_out and sys.stderr is original_err
