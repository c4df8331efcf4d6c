"""Cold start of ``voicedb match CLIP``, phase by phase, against the pipeline it replaced, measured in
the same run: each figure is the median of fresh processes.

    python scripts/bench_cold_start.py CHECKPOINT_DIR [--runs 5] [--clip tests/data/speech/ami_fee078_2.flac]

voicedb: decoding with libsndfile and soxr, the library's matcher (Chatterbox's voice encoder and CAM++, both in
NumPy: no torch, librosa or scipy) on the speech only. Baseline: the pipeline ``match`` ran before, ``librosa.load``
and upstream's torch ``VoiceEncoder`` (``embeds_from_wavs``) on the whole clip, searched in a library that matches
with that encoder alone; the class is imported through ``chatterbox/__init__``, which the old command avoided, so
its encoder load is heavier than the old command's was.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("import", "open", "decode", "load encoder", "embed", "search")

#: One fresh process: times each phase of a match and prints them as JSON.
PROBE = """
import json, sys, time
marks = [time.perf_counter()]
def mark():
    marks.append(time.perf_counter())
import numpy as np
from voicedb import VoiceDB
mark()
db = VoiceDB()
db.list(limit=1)
mark()
if sys.argv[1] == "voicedb":
    from voicedb.audio import load_query
    from voicedb.speakers import SpeakerEncoders
    wav = load_query(sys.argv[2])
    mark()
    matcher = db.matcher()
    encoders = SpeakerEncoders(db.engine)
    db.engine.encoder, db.engine.campplus
    mark()
    vector = encoders.query(wav, matcher)
else:
    import librosa
    wav = librosa.resample(librosa.load(sys.argv[2], sr=24000)[0], orig_sr=24000, target_sr=16000)
    mark()
    import torch
    from chatterbox.models.voice_encoder import VoiceEncoder
    from safetensors.torch import load_file
    encoder = VoiceEncoder()
    encoder.load_state_dict(load_file(str(db.engine.voice_encoder_path())))
    encoder.eval()
    mark()
    with torch.inference_mode():
        vector = encoder.embeds_from_wavs([wav], sample_rate=16000)[0]
mark()
db.match_vector(vector, k=5)
mark()
print(json.dumps([b - a for a, b in zip(marks, marks[1:])]))
"""


def median_phases(way: str, clip: Path, env: dict[str, str], runs: int) -> tuple[list[float], float]:
    """Per-phase medians and the median whole-process wall time of ``runs`` fresh processes."""
    phases, walls = [], []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", PROBE, way, str(clip)], env=env, capture_output=True, text=True)
        walls.append(time.perf_counter() - started)
        if done.returncode != 0:
            sys.exit(f"{way} failed:\n{done.stderr}")
        phases.append(json.loads(done.stdout.splitlines()[-1]))
    return [statistics.median(p[i] for p in phases) for i in range(len(PHASES))], statistics.median(walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clip", type=Path, default=ROOT / "tests" / "data" / "speech" / "ami_fee078_2.flac")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="voicedb-bench-cold-") as scratch:
        envs = {}
        for way in ("baseline", "voicedb"):
            env = {**os.environ, "VOICEDB_HOME": f"{scratch}/{way}", "VOICEDB_CHECKPOINT": str(args.checkpoint)}
            env.pop("VOICEDB_DEVICE", None)  # as users run it
            enroll = [sys.executable, "-m", "voicedb", "add", str(ROOT / "tests/data/speech/ami_fee078_1.flac")]
            subprocess.run([*enroll, "--no-conditionals"], env=env, check=True, capture_output=True)
            if way == "baseline":  # the old command compared the conditionals embedding, by that encoder alone
                switch = [sys.executable, "-m", "voicedb", "matcher", "chatterbox"]
                subprocess.run(switch, env=env, check=True, capture_output=True)
            envs[way] = env
        results = {way: median_phases(way, args.clip, envs[way], args.runs) for way in ("baseline", "voicedb")}
        env = envs["voicedb"]
        walls = []
        for _ in range(args.runs):
            started = time.perf_counter()
            command = [sys.executable, "-m", "voicedb", "match", str(args.clip)]
            subprocess.run(command, env=env, check=True, capture_output=True)
            walls.append(time.perf_counter() - started)
    (base, base_wall), (ours, ours_wall) = results["baseline"], results["voicedb"]
    print(f"median of {args.runs} fresh processes, seconds; {os.cpu_count()} CPUs")
    print(f"{'phase':<14} {'baseline':>9} {'voicedb':>9} {'ratio':>7}")
    for name, before, after in zip(PHASES, base, ours, strict=True):
        print(f"{name:<14} {before:>9.3f} {after:>9.3f} {after / before:>7.2f}")
    print(f"{'whole process':<14} {base_wall:>9.3f} {ours_wall:>9.3f} {ours_wall / base_wall:>7.2f}")
    print(f"`voicedb match CLIP`, whole process: {statistics.median(walls):.3f} s")


if __name__ == "__main__":
    main()
