#!/usr/bin/env python
"""Measure same-speaker and different-speaker cosine scores on real speech, to choose the match threshold.

    python scripts/measure_threshold.py CHECKPOINT_DIR [SPEECH_DIR]

Every clip is embedded as ``voicedb add`` does (the voice encoder of CHECKPOINT_DIR); all pairs of
clips are scored. Prints both distributions and, for candidate thresholds, the false-reject rate
(same speaker below it) and false-accept rate (different speakers at or above it).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from voicedb.audio import load_clip
from voicedb.config import DEFAULT_THRESHOLD
from voicedb.engine import Checkpoint, Engine

DEFAULT_SPEECH = Path(__file__).resolve().parent.parent / "tests" / "data" / "speech"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument(
        "speech", type=Path, nargs="?", default=DEFAULT_SPEECH, help="folder of clips named <speaker>_<n>.<ext>"
    )
    args = parser.parse_args()
    models = Engine(Checkpoint(args.checkpoint))
    clips = sorted(p for p in args.speech.iterdir() if p.suffix in {".wav", ".flac", ".ogg"})
    embeddings = {p: models.embed(load_clip(p).wav_16k) for p in clips}
    same, different = [], []
    for a, b in itertools.combinations(clips, 2):
        score = float(embeddings[a] @ embeddings[b])
        (same if a.stem.rsplit("_", 1)[0] == b.stem.rsplit("_", 1)[0] else different).append(score)
    same, different = np.array(same), np.array(different)
    print(f"{len(clips)} clips, {len(same)} same-speaker pairs, {len(different)} different-speaker pairs")
    for label, scores in (("same speaker", same), ("different", different)):
        print(f"{label:>14}: min {scores.min():.3f}  median {np.median(scores):.3f}  max {scores.max():.3f}")
    print("\nthreshold  false reject  false accept")
    for threshold in sorted({0.70, 0.75, 0.78, 0.80, 0.82, 0.85, DEFAULT_THRESHOLD}):
        marker = "  <- default" if threshold == DEFAULT_THRESHOLD else ""
        print(f"{threshold:9.2f}  {np.mean(same < threshold):12.1%}  {np.mean(different >= threshold):12.1%}{marker}")


if __name__ == "__main__":
    main()
