#!/usr/bin/env python
"""Time to first audio from saved conditionals versus upstream re-extraction, and enrollment cost.

    python scripts/bench_speak.py CHECKPOINT_DIR [--tokens 25] [--repeats 3] [--device cpu]

Same checkpoint, clip and text, in one process, models loaded before timing:

- ``voicedb speak``: ``Conditionals.load`` of the saved ``.pt`` + synthesis;
- upstream: ``ChatterboxTTS.prepare_conditionals(clip)`` (what ``generate(audio_prompt_path=...)``
  runs on every call) + the same synthesis.

Synthesis is capped at ``--tokens`` speech tokens on both sides: upstream ``generate`` hard-codes
1000 tokens, which a random-weight test checkpoint always runs to (minutes on a CPU), so the
upstream column uses upstream's own ``prepare_conditionals`` and the identical capped synthesis.

Enrollment: one enrollment in a fresh process (imports and loading included) as ``voicedb add`` does
it -- voice encoder and S3Gen only -- versus the same with T3 loaded too, as upstream
``ChatterboxTTS.from_pretrained`` + ``prepare_conditionals`` would. The test checkpoint's T3 has 2
layers (250 MB); the official one has 30 (about 2 GB), so the real saving is larger.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchutil import median_seconds

SPEECH = Path(__file__).resolve().parent.parent / "tests" / "data" / "speech"
CLIP = SPEECH / "ami_fee083_1.flac"
TEXT = "The quick brown fox jumps over the lazy dog."


ENROLL = """
import resource, sys, tempfile, time
from pathlib import Path
start = time.perf_counter()
from voicedb import VoiceDB
from voicedb.flavours import FLAVOURS
with tempfile.TemporaryDirectory() as tmp:
    db = VoiceDB(tmp, checkpoint=sys.argv[1], device=sys.argv[2])
    if sys.argv[3] == "with-t3":
        db.engine.t3(FLAVOURS["english"])
    db.add([Path(sys.argv[4])], name="bench")
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def enroll_seconds(checkpoint: Path, device: str, with_t3: bool) -> tuple[float, float]:
    """(seconds, peak resident MB) of enrolling one voice in a fresh process, imports included."""
    mode = "with-t3" if with_t3 else "without-t3"
    done = subprocess.run(
        [sys.executable, "-c", ENROLL, str(checkpoint), device, mode, str(CLIP)],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds, peak_mb = done.stdout.split()[-2:]
    return float(seconds), float(peak_mb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--tokens", type=int, default=25, help="speech tokens per synthesis (25 = 1 s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch
    from chatterbox.tts import ChatterboxTTS

    from voicedb import VoiceDB
    from voicedb.flavours import FLAVOURS, SynthesisSettings

    english = FLAVOURS["english"]
    settings = SynthesisSettings(max_tokens=args.tokens)
    with tempfile.TemporaryDirectory() as tmp:
        db = VoiceDB(tmp, checkpoint=args.checkpoint, device=args.device)
        db.add([CLIP], name="bench")
        models = db.engine
        models.load_for_synthesis(english)
        upstream = ChatterboxTTS(
            models.t3(english), models.s3gen(english), models.encoder, models.tokenizer(english), args.device
        )

        def voicedb_first_audio() -> None:
            torch.manual_seed(0)
            models.synthesize(english, db.load_conditionals("bench"), TEXT, settings)

        def upstream_first_audio() -> None:
            torch.manual_seed(0)
            upstream.prepare_conditionals(str(CLIP))
            models.synthesize(english, upstream.conds, TEXT, settings)

        def load_only() -> None:
            db.load_conditionals("bench")

        def extract_only() -> None:
            upstream.prepare_conditionals(str(CLIP))

        ours = median_seconds(voicedb_first_audio, args.repeats)
        theirs = median_seconds(upstream_first_audio, args.repeats)
        load, extract = median_seconds(load_only, args.repeats * 3), median_seconds(extract_only, args.repeats)
        db.close()

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {device}; clip {CLIP.name}; {args.tokens} speech tokens; median of {args.repeats}\n")
    print(f"{'time to first audio':<44} | {'seconds':>8} | {'vs upstream':>11}")
    print(f"{'upstream: prepare_conditionals + synthesis':<44} | {theirs:>8.2f} | {'1.00x':>11}")
    print(f"{'voicedb speak: saved conditionals + synthesis':<44} | {ours:>8.2f} | {ours / theirs:>10.2f}x")
    print(f"{'  conditionals only: upstream extraction':<44} | {extract:>8.3f} | {'1.00x':>11}")
    print(f"{'  conditionals only: voicedb load':<44} | {load:>8.3f} | {load / extract:>10.3f}x")

    cold_without, mb_without = enroll_seconds(args.checkpoint, args.device, with_t3=False)
    cold_with, mb_with = enroll_seconds(args.checkpoint, args.device, with_t3=True)
    print(f"\n{'enrolling one voice, fresh process':<44} | {'seconds':>8} | {'peak MB':>8} | {'vs with T3':>10}")
    print(f"{'with T3 loaded (as from_pretrained)':<44} | {cold_with:>8.2f} | {mb_with:>8.0f} | {'1.00x':>10}")
    print(
        f"{'voicedb add: voice encoder + S3Gen only':<44} | {cold_without:>8.2f} | {mb_without:>8.0f} | "
        f"{cold_without / cold_with:>9.2f}x"
    )


if __name__ == "__main__":
    main()
