#!/usr/bin/env python
"""Time to first audio and real-time factor of ``voicedb serve`` with the official-size model shape.

    python scripts/make_test_checkpoint.py --official-size DIR
    python scripts/bench_gpu.py DIR [--device cuda] [--requests 6] [--max-tokens 100]

A server on a free loopback port (uvicorn, in this process) speaks a two-chunk text in stored voices,
streamed as raw PCM; for each request the client records the time to the first audio byte and to the
last. The baseline is the same synthesis called straight through ``VoiceDB.speak`` in the same run, so
the server's own cost shows as a ratio. Random T3 weights never emit the stop token, so every chunk
runs to ``--max-tokens`` speech tokens (25 per second of audio): the work per second of audio is what
the official model does, the sound is noise. Voices alternate between requests.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchutil import device_name, serving_in_thread

SPEECH = Path(__file__).resolve().parent.parent / "tests" / "data" / "speech"
TEXT = "The first sentence of this benchmark is spoken here, at some length, as one chunk. " * 3 + (
    "And a second chunk follows, long enough that the server must stream it after the first one. " * 2
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint made with make_test_checkpoint.py --official-size")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--requests", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=100)
    args = parser.parse_args()

    import httpx

    from voicedb import VoiceDB
    from voicedb.flavours import SynthesisSettings
    from voicedb.server import ServerSettings, create_app

    clips = [SPEECH / "arctic_slt_1.flac", SPEECH / "ami_mee012_1.flac"]
    with tempfile.TemporaryDirectory(prefix="voicedb-bench-gpu-") as scratch:
        db = VoiceDB(Path(scratch) / "library", checkpoint=args.checkpoint, device=args.device)
        started = time.perf_counter()
        voices = [db.add([clip], name=clip.stem).voice.id for clip in clips]
        enroll_s = (time.perf_counter() - started) / len(clips)
        settings = SynthesisSettings(max_tokens=args.max_tokens)

        def direct(n: int) -> tuple[float, float, float]:
            """The baseline: the library's own stream, no HTTP."""
            started = time.perf_counter()
            pieces = iter(db.speak_stream(voices[n % 2], TEXT, settings=settings, seed=n))
            first = next(pieces)
            first_s = time.perf_counter() - started
            samples = len(first) + sum(len(piece) for piece in pieces)
            return first_s, time.perf_counter() - started, samples / 24_000

        def served(n: int) -> tuple[float, float, float]:
            body = {"model": "tts-1", "voice": voices[n % 2], "input": TEXT, "response_format": "pcm", "seed": n}
            started = time.perf_counter()
            first = None
            size = 0
            with httpx.stream("POST", f"{url}/v1/audio/speech", json=body, timeout=600) as r:
                r.raise_for_status()
                for data in r.iter_bytes():
                    first = first or time.perf_counter() - started
                    size += len(data)
            return first or 0.0, time.perf_counter() - started, size / 2 / 24_000

        with serving_in_thread(create_app(db, ServerSettings(max_tokens=args.max_tokens))) as url:
            direct(0), served(0)  # warm-up: every network loaded, kernels chosen for these shapes
            rows = [(direct(n), served(n)) for n in range(args.requests)]  # interleaved: drift hits both
        db.close()

    def medians(rows: list[tuple[float, float, float]]) -> tuple[float, ...]:
        return tuple(statistics.median(column) for column in zip(*rows))

    direct_ttfa, direct_total, direct_audio = medians([row[0] for row in rows])
    ttfa, total, audio = medians([row[1] for row in rows])
    print(f"device: {device_name(args.device)}; checkpoint {args.checkpoint}; {args.max_tokens} tokens per chunk")
    print(f"{args.requests} requests of {len(TEXT)} characters (2 chunks), two voices alternating, medians\n")
    print("| measure | server (streamed PCM over HTTP) | VoiceDB.speak_stream (baseline) | ratio |")
    print("|---|---|---|---|")
    print(f"| time to first audio | {ttfa:.2f} s | {direct_ttfa:.2f} s | {ttfa / direct_ttfa:.2f} |")
    print(f"| total time | {total:.2f} s | {direct_total:.2f} s | {total / direct_total:.2f} |")
    print(f"| audio | {audio:.2f} s | {direct_audio:.2f} s | |")
    print(f"| real-time factor (time / audio) | {total / audio:.3f} | {direct_total / direct_audio:.3f} | |")
    print(f"| enroll a voice, first ones (loading VE and S3Gen included) | {enroll_s:.2f} s | | |")


if __name__ == "__main__":
    main()
