#!/usr/bin/env python
"""``voicedb serve`` against one ``voicedb`` process per request, measured in the same run.

    python scripts/bench_serve.py [--checkpoint DIR] [--device cpu|cuda] [--quick]
                                  [--requests N] [--cycle N] [--voices N] [--max-tokens 12]

Starts the server as a real subprocess (``python -m voicedb serve --preload``) on a free loopback
port, over a temp library holding ``--voices`` voices enrolled first from tests/data/speech (made
distinct per voice by cut and gain, and cut to ``--ref-seconds``: the S3Gen prompt, and so the cost
of every synthesis, grows with the reference's length). Then, all to 127.0.0.1:

- speech: time to first byte and total time of ``POST /v1/audio/speech`` (streamed with httpx),
  ``--requests`` times with the same voice, then ``--requests`` times with another voice each time
  (one not used before, while there are any), then a cycle of ``--cycle`` requests through every
  voice; against ``voicedb speak`` run as one process per request (``--processes`` of them): what
  the server saves is the imports and model loading each process pays. Text, seed and speech-token
  cap are the same everywhere.
- match: requests per second and p50/p99 latency of ``POST /v1/match`` at 1, 4 and 16 concurrent
  clients (``--match-requests`` each), against ``voicedb match CLIP --json`` as a process.
- memory: the server's resident set before and after the cycle (a leak shows as growth after the
  first pass, once every voice's conditionals are cached).
- enrollment: one ``POST /v1/voices`` to the warm server against one ``voicedb add`` process.
- streaming: time to the first audio and to the last of a 3-sentence request (the goal: the first
  within 25% of the total), alone on a server with its default options, capped at
  ``--sentence-tokens`` speech tokens a sentence (75: 3 s, about what a real T3 speaks them in).
- batching, on two more servers over the same library, one with ``--batch`` (the most concurrent
  clients) and one with ``--batch 1``, both capped at ``--stream-tokens`` speech tokens: throughput at
  ``--speech-clients`` concurrent clients (1, 4, 8, 16), each sending the 3-sentence request with its
  own voice and seed at the same moment, batched against one at a time.

Prints Markdown tables and the device they ran on. The offline test checkpoint
(scripts/make_test_checkpoint.py; built into .pytest_cache when ``--checkpoint`` is not given) has a
random T3 that never stops by itself, hence the speech-token cap (``--max-tokens``, the server's
``--max-tokens``). Defaults are sized per device: on CUDA 20 requests per speech row and a
200-request cycle; on a CPU, where one synthesis takes seconds, 8 and 32 (under 10 minutes on two
cores); ``--quick`` is a smoke run of 2-3 minutes. ``--threads`` sets OMP_NUM_THREADS for the
server and CLI processes alike (on a busy machine 1 is steadier than torch's default). The server is
stopped at the end, also on errors and Ctrl-C. Machines are noisy: compare the ratios.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import soundfile
from benchutil import device_name, free_port, percentile

ROOT = Path(__file__).resolve().parent.parent
SPEECH = ROOT / "tests" / "data" / "speech"
CHECKPOINT_CACHE = ROOT / ".pytest_cache" / "d" / "voicedb-test-checkpoint"  # the tests' cached copy
TEXT = "The quick brown fox jumps over the lazy dog."
THREE_SENTENCES = (
    "The first sentence of this request is long enough to take a while. "
    "Then a second sentence follows it, about as long as the first one was. "
    "And a third sentence closes the request, so that there is more to say."
)
SENTENCES = 3  # in THREE_SENTENCES, one chunk (up to 300 characters)
SEED = 1

#: Per device: voices, requests (per speech row), cycle, processes (voicedb speak), match requests
#: (per concurrency level), CLI match repeats, reference seconds.
PROFILES = {
    "cuda": dict(
        voices=20,
        requests=20,
        cycle=200,
        processes=3,
        match_requests=48,
        cli_repeats=3,
        ref_seconds=10.0,
        stream_requests=5,
        stream_tokens=150,
        sentence_tokens=75,
    ),
    "cpu": dict(
        voices=20,
        requests=8,
        cycle=32,
        processes=3,
        match_requests=48,
        cli_repeats=3,
        ref_seconds=3.0,
        stream_requests=2,
        stream_tokens=50,
        sentence_tokens=75,
    ),
    "quick": dict(
        voices=3,
        requests=2,
        cycle=6,
        processes=1,
        match_requests=16,
        cli_repeats=1,
        ref_seconds=3.0,
        stream_requests=1,
        stream_tokens=25,
        sentence_tokens=10,
    ),
}

ENROLL = """
import sys
from voicedb import VoiceDB
db = VoiceDB()
for item in sys.argv[1:]:
    name, path = item.split("=", 1)
    db.add([path], name=name)
"""


@dataclass
class Failures:
    """Every non-2xx answer, by endpoint and status, with the first few bodies."""

    counts: Counter = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)

    def record(self, what: str, status: int | str, body: str) -> None:
        self.counts[(what, status)] += 1
        if len(self.samples) < 5:
            self.samples.append(f"{what} -> {status}: {body[:300]}")


def distinct_clips(directory: Path, count: int, seconds: float) -> list[Path]:
    """``count`` clips of real speech with distinct bytes: the test clips cut to at most ``seconds``,
    from a later start on each pass, at slightly different gains."""
    sources = sorted(SPEECH.glob("*.flac"))
    clips = []
    for n in range(count):
        audio, rate = soundfile.read(str(sources[n % len(sources)]), dtype="float32")
        length = min(len(audio), int(seconds * rate))
        start = min((n // len(sources)) * rate // 2, len(audio) - length)
        path = directory / f"clip{n:03d}.wav"
        soundfile.write(str(path), audio[start : start + length] * (0.9 - 0.005 * n), rate)
        clips.append(path)
    return clips


def voicedb_process(args: list[str], env: dict[str, str], timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    """(wall seconds, result) of one ``python -m voicedb`` process."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "voicedb", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    return time.perf_counter() - start, done


class Server:
    """``voicedb serve`` as a subprocess on a free loopback port; ``stop()`` ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, env: dict[str, str], log: Path, max_tokens: int, batch: int | None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log_handle = open(log, "w")  # noqa: SIM115 - closed in stop()
        command = ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--preload"]
        command += ["--max-tokens", str(max_tokens)] + (["--batch", str(batch)] if batch else [])
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "voicedb", *command],
            env=env,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the bench only; the bench stops the server
        )
        self.stop_seconds: float | None = None
        self.exited_early: int | None = None

    def wait_ready(self, client: httpx.Client, timeout: float) -> float:
        """Seconds from spawn until ``GET /ready`` answered 200."""
        deadline = self.started + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.process.returncode}:\n{self.log_tail()}")
            try:
                if client.get("/ready", timeout=5).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"the server was not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def rss_mb(self) -> float:
        return psutil.Process(self.process.pid).memory_info().rss / 1e6

    def log_tail(self, lines: int = 30) -> str:
        self._log_handle.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        self.exited_early = self.process.poll()
        if self.exited_early is None:
            start = time.perf_counter()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
                self.stop_seconds = time.perf_counter() - start
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_handle.close()


def speak_once(
    client: httpx.Client, voice: str, text: str, fmt: str, failures: Failures, seed: int = SEED
) -> tuple[float, float] | None:
    """(seconds to the first body byte, seconds to the last) of one streamed speech request."""
    body = {"model": "tts-1", "input": text, "voice": voice, "response_format": fmt, "seed": seed}
    start = time.perf_counter()
    first = None
    received = 0
    with client.stream("POST", "/v1/audio/speech", json=body) as response:
        if response.status_code != 200:
            failures.record("POST /v1/audio/speech", response.status_code, response.read().decode(errors="replace"))
            return None
        for data in response.iter_raw():
            if data and first is None:
                first = time.perf_counter() - start
            received += len(data)
    total = time.perf_counter() - start
    if not received:
        failures.record("POST /v1/audio/speech", "200 with an empty body", "")
        return None
    return first, total


def speak_series(
    client: httpx.Client, voices: list[str], args: argparse.Namespace, failures: Failures
) -> tuple[list[float], list[float]]:
    """First-byte and total seconds of one request per entry of ``voices``, in order."""
    firsts, totals = [], []
    for voice in voices:
        timing = speak_once(client, voice, args.text, args.format, failures)
        if timing:
            firsts.append(timing[0])
            totals.append(timing[1])
    return firsts, totals


def match_level(
    client: httpx.Client, clips: list[tuple[str, bytes]], clients: int, count: int, failures: Failures
) -> tuple[float, list[float], int]:
    """(requests per second, latencies, how many matched a voice) of ``count`` match requests from
    ``clients`` threads at once."""
    matched = []

    def one(n: int) -> float | None:
        name, data = clips[n % len(clips)]
        start = time.perf_counter()
        response = client.post("/v1/match", files={"file": (name, data, "audio/flac")}, data={"k": "5"})
        elapsed = time.perf_counter() - start
        if response.status_code != 200:
            failures.record("POST /v1/match", response.status_code, response.text)
            return None
        matched.append(bool(response.json().get("matched")))
        return elapsed

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
        latencies = [t for t in pool.map(one, range(count)) if t is not None]
    return len(latencies) / (time.perf_counter() - start), latencies, sum(matched)


def speech_level(
    client: httpx.Client, names: list[str], clients: int, args: argparse.Namespace, failures: Failures
) -> tuple[float, list[float], list[float]]:
    """(requests per second, first-audio seconds, total seconds) of ``clients`` 3-sentence requests sent
    at the same moment, each with its own voice and seed."""

    def one(n: int) -> tuple[float, float] | None:
        return speak_once(client, names[n % len(names)], THREE_SENTENCES, "pcm", failures, seed=SEED + n)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
        timings = [t for t in pool.map(one, range(clients)) if t is not None]
    return len(timings) / (time.perf_counter() - start), [t[0] for t in timings], [t[1] for t in timings]


def streaming_alone(
    args: argparse.Namespace, env: dict[str, str], scratch: Path, names: list[str], failures: Failures
) -> list[tuple[float, float]]:
    """(first audio s, total s) of each 3-sentence request alone, on a fresh server with its defaults."""
    server = Server(env, scratch / "server-streaming.log", SENTENCES * args.sentence_tokens, None)
    try:
        with httpx.Client(base_url=server.url, timeout=httpx.Timeout(args.timeout, connect=10), trust_env=False) as c:
            print("streaming: waiting for /ready ...", flush=True)
            server.wait_ready(c, min(args.timeout, 300))
            speak_once(c, names[0], THREE_SENTENCES, "pcm", failures)  # warm-up
            timings = [speak_once(c, names[0], THREE_SENTENCES, "pcm", failures) for _ in range(args.stream_requests)]
    finally:
        server.stop()
    return [t for t in timings if t]


def batching(
    args: argparse.Namespace, env: dict[str, str], scratch: Path, names: list[str], failures: Failures
) -> dict[int, dict[int, tuple[float, list[float], list[float]]]]:
    """Per ``--batch`` setting (batched, then one at a time), each on a fresh server: the throughput and
    the listeners' timings at each number of concurrent clients."""
    results: dict[int, dict[int, tuple[float, list[float], list[float]]]] = {}
    timeout = httpx.Timeout(args.timeout, connect=10)
    limits = httpx.Limits(max_connections=max(args.speech_clients) + 4)
    for batch in (max(args.speech_clients), 1):
        server = Server(env, scratch / f"server-batch-{batch}.log", args.stream_tokens, batch)
        try:
            with httpx.Client(base_url=server.url, timeout=timeout, limits=limits, trust_env=False) as client:
                print(f"batching, --batch {batch}: waiting for /ready ...", flush=True)
                server.wait_ready(client, min(args.timeout, 300))
                speak_once(client, names[0], THREE_SENTENCES, "pcm", failures)  # warm-up
                results[batch] = {}
                for clients in args.speech_clients:
                    print(f"  {clients} concurrent speech client{'s' * (clients != 1)} ...", flush=True)
                    results[batch][clients] = speech_level(client, names, clients, args, failures)
        finally:
            server.stop()
    return results


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="checkpoint dir (default: build the offline test one)")
    parser.add_argument("--device", default="cpu", help="torch device for the server and CLI (VOICEDB_DEVICE)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    parser.add_argument("--voices", type=int, help="voices to enroll (default 20; --quick 3)")
    parser.add_argument("--requests", type=int, help="speech requests per row (default 20 on CUDA, 8 on CPU)")
    parser.add_argument("--cycle", type=int, help="speech requests through every voice, for RSS (200 CUDA, 40 CPU)")
    parser.add_argument("--processes", type=int, help="`voicedb speak` processes to time (default 3)")
    parser.add_argument("--match-requests", type=int, help="match requests per concurrency level (default 48)")
    parser.add_argument("--cli-repeats", type=int, help="`voicedb match` processes to time (default 3)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="concurrent match clients")
    parser.add_argument("--ref-seconds", type=float, help="cut enrollment clips to this (default 10 CUDA, 3 CPU)")
    parser.add_argument("--max-tokens", type=int, default=12, help="speech-token cap per chunk (25 = 1 s)")
    parser.add_argument("--text", default=TEXT, help="what every speech request says (up to 300 characters: one chunk)")
    parser.add_argument("--format", default="wav", choices=["wav", "pcm", "mp3", "opus", "aac", "flac"])
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the server and CLI processes")
    parser.add_argument(
        "--speech-clients", type=int, nargs="+", default=[1, 4, 8, 16], help="concurrent speech clients, batched or not"
    )
    parser.add_argument("--stream-requests", type=int, help="3-sentence requests timed alone (default 5 CUDA, 2 CPU)")
    parser.add_argument("--stream-tokens", type=int, help="speech-token cap of the batching servers (150 CUDA, 50 CPU)")
    parser.add_argument("--sentence-tokens", type=int, help="speech tokens a sentence in the streaming row (75)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds any one request or process may take")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the server is stopped on kill too
    profile = PROFILES["quick" if args.quick else "cuda" if args.device.startswith("cuda") else "cpu"]
    for key, value in profile.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = CHECKPOINT_CACHE
        checkpoint.mkdir(parents=True, exist_ok=True)
        print(f"checkpoint: {checkpoint} (scripts/make_test_checkpoint.py; nothing to do when complete)", flush=True)
        built = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "make_test_checkpoint.py"), str(checkpoint)],
            capture_output=True,
            text=True,
        )
        if built.returncode:
            sys.exit(f"building the test checkpoint failed:\n{built.stdout[-2000:]}{built.stderr[-3000:]}")

    with tempfile.TemporaryDirectory(prefix="voicedb-bench-serve-") as tmp:
        scratch = Path(tmp)
        env = dict(os.environ)
        env.update(
            VOICEDB_HOME=str(scratch / "library"),
            VOICEDB_CHECKPOINT=str(checkpoint.resolve()),
            VOICEDB_DEVICE=args.device,
            HF_HUB_OFFLINE="1",
        )
        env.pop("VOICEDB_API_KEY", None)
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        clips = distinct_clips(scratch, args.voices + 2, args.ref_seconds)  # two more for the enrollment row
        names = [f"bench-{n:02d}" for n in range(args.voices)]
        print(f"enrolling {args.voices} voices ({args.ref_seconds:g} s clips) ...", flush=True)
        start = time.perf_counter()
        items = [f"{name}={clip}" for name, clip in zip(names, clips)]
        done = subprocess.run(
            [sys.executable, "-c", ENROLL, *items], env=env, capture_output=True, text=True, timeout=args.timeout * 4
        )
        if done.returncode:
            sys.exit(f"enrollment failed:\n{done.stderr[-3000:]}")
        enroll_s = time.perf_counter() - start
        print(f"  {enroll_s:.1f} s in one process", flush=True)

        failures = Failures()
        server = Server(env, scratch / "server.log", args.max_tokens, 1)
        results: dict[str, object] = {}
        try:
            results = run_benchmarks(args, server, env, scratch, names, clips, failures)
        except Exception:
            if server.process.poll() is None or server.process.returncode:
                print(f"server log, last lines:\n{server.log_tail()}", file=sys.stderr)
            raise
        finally:
            server.stop()
        results["streaming"] = streaming_alone(args, env, scratch, names, failures)
        results["batching"] = batching(args, env, scratch, names, failures)
        log = "\n".join(path.read_text(errors="replace") for path in sorted(scratch.glob("server*.log")))

    report(args, checkpoint, results, server, failures, log)


def run_benchmarks(
    args: argparse.Namespace,
    server: Server,
    env: dict[str, str],
    scratch: Path,
    names: list[str],
    clips: list[Path],
    failures: Failures,
) -> dict[str, object]:
    r: dict[str, object] = {}
    timeout = httpx.Timeout(args.timeout, connect=10)
    limits = httpx.Limits(max_connections=max(args.concurrency) + 4)
    with httpx.Client(base_url=server.url, timeout=timeout, limits=limits, trust_env=False) as client:
        print(f"server on {server.url}: waiting for /ready ...", flush=True)
        r["ready_s"] = server.wait_ready(client, min(args.timeout, 300))
        print(f"  ready after {r['ready_s']:.1f} s", flush=True)

        print(f"speech: 1 warm-up + {args.requests} same voice + {args.requests} switching ...", flush=True)
        speak_series(client, names[:1], args, failures)  # warm-up: first-use costs of the process
        r["same"] = speak_series(client, names[:1] * args.requests, args, failures)
        others = [names[1 + n % (len(names) - 1)] for n in range(args.requests)] if len(names) > 1 else names
        r["switch"] = speak_series(client, others, args, failures)

        print(f"cycle: {args.cycle} requests through {len(names)} voices ...", flush=True)
        r["rss_before"] = server.rss_mb()
        first_pass = min(len(names), args.cycle)
        cycle = [names[n % len(names)] for n in range(args.cycle)]
        head = speak_series(client, cycle[:first_pass], args, failures)
        r["rss_first_pass"] = server.rss_mb()
        tail = speak_series(client, cycle[first_pass:], args, failures)
        r["rss_after"] = server.rss_mb()
        r["cycle"] = (head[0] + tail[0], head[1] + tail[1])

        print(f"`voicedb speak`: {args.processes} processes ...", flush=True)
        cli_speak = []
        for n in range(args.processes):
            output = scratch / f"cli-{n}.wav"
            seconds, done = voicedb_process(
                ["speak", "--voice", names[0], args.text, "--max-tokens", str(args.max_tokens), "--seed", str(SEED)]
                + ["-o", str(output)],
                env,
                args.timeout,
            )
            if done.returncode:
                failures.record("voicedb speak", done.returncode, done.stderr)
            else:
                cli_speak.append(seconds)
        r["cli_speak"] = cli_speak

        query_clips = [(p.name, p.read_bytes()) for p in sorted(SPEECH.glob("*.flac"))]
        print(f"match: {args.match_requests} requests at {args.concurrency} clients ...", flush=True)
        match_level(client, query_clips, 1, 1, failures)  # warm-up
        r["match"] = {c: match_level(client, query_clips, c, args.match_requests, failures) for c in args.concurrency}
        print(f"`voicedb match --json`: {args.cli_repeats} processes ...", flush=True)
        cli_match = []
        for n in range(args.cli_repeats):
            clip = SPEECH / query_clips[n % len(query_clips)][0]
            seconds, done = voicedb_process(["match", str(clip), "--json"], env, args.timeout)
            if done.returncode not in (0, 1):  # 1: no voice reached the threshold
                failures.record("voicedb match", done.returncode, done.stderr)
            else:
                cli_match.append(seconds)
        r["cli_match"] = cli_match

        print("enrollment: one POST /v1/voices, one `voicedb add` ...", flush=True)
        start = time.perf_counter()
        extra = clips[-2]
        response = client.post(
            "/v1/voices", files={"file": (extra.name, extra.read_bytes(), "audio/wav")}, data={"name": "bench-http"}
        )
        r["enroll_http"] = time.perf_counter() - start
        if response.status_code != 201:
            failures.record("POST /v1/voices", response.status_code, response.text)
            r["enroll_http"] = float("nan")
        seconds, done = voicedb_process(["add", str(clips[-1]), "--name", "bench-cli"], env, args.timeout)
        r["enroll_cli"] = seconds
        if done.returncode:
            failures.record("voicedb add", done.returncode, done.stderr)
            r["enroll_cli"] = float("nan")
        listed = client.get("/v1/audio/voices")
        found = {v["name"] for v in listed.json().get("voices", [])} if listed.status_code == 200 else set()
        if listed.status_code != 200 or not {"bench-http", "bench-cli"} <= found:
            failures.record("GET /v1/audio/voices", listed.status_code, f"new voices missing from {sorted(found)}")
    return r


def report(
    args: argparse.Namespace,
    checkpoint: Path,
    r: dict[str, object],
    server: Server,
    failures: Failures,
    log: str,
) -> None:
    threads = f"OMP_NUM_THREADS={args.threads}" if args.threads else "torch's default threads"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\ndevice: {args.device} -- {device_name(args.device)}; {threads}; checkpoint {checkpoint.name}; "
        f"{args.voices} voices from {args.ref_seconds:g} s clips; {args.max_tokens} speech tokens, "
        f'"{args.text}" as {args.format}, seed {SEED}'
    )
    print(f"server: {r['ready_s']:.1f} s from spawn to /ready 200 (imports, --preload); load average {load}\n")

    same_first, same_total = r["same"]
    switch_first, switch_total = r["switch"]
    cycle_first, cycle_total = r["cycle"]
    base = med(same_total)
    first_use = " (each on first use)" if args.requests < args.voices else ""
    print("| speech (median) | requests | first byte s | total s | vs same voice |")
    print("|---|---:|---:|---:|---:|")
    rows = [
        ("server, same voice every request", same_first, same_total),
        (f"server, a different voice every request{first_use}", switch_first, switch_total),
        (f"server, cycling through {args.voices} voices", cycle_first, cycle_total),
    ]
    for label, firsts, totals in rows:
        print(f"| {label} | {len(totals)} | {med(firsts):.3f} | {med(totals):.3f} | {med(totals) / base:.2f}x |")
    cli = med(r["cli_speak"])
    print(f"| `voicedb speak`, one process per request | {len(r['cli_speak'])} | - | {cli:.3f} | {cli / base:.2f}x |")
    switching = med(switch_total) / base - 1
    print(
        f"\nswitching voices: {switching:+.1%} total time per request (target: at most +10%); "
        f"first byte {med(switch_first) / med(same_first) - 1:+.1%}"
    )

    cli_match = med(r["cli_match"])
    print(f"\n| match ({args.match_requests} requests per row) | requests/s | p50 ms | p99 ms | vs CLI | matched |")
    print("|---|---:|---:|---:|---:|---:|")
    for clients, (rps, latencies, matched) in r["match"].items():
        label = f"server, {clients} concurrent client{'s' * (clients != 1)}"
        if latencies:
            print(
                f"| {label} | {rps:.2f} | {percentile(latencies, 50) * 1000:.0f} | "
                f"{percentile(latencies, 99) * 1000:.0f} | {rps * cli_match:.1f}x | {matched}/{len(latencies)} |"
            )
        else:
            print(f"| {label} | failed | - | - | - | - |")
    print(
        f"| `voicedb match --json`, one process per request ({len(r['cli_match'])}) | {1 / cli_match:.2f} | "
        f"{cli_match * 1000:.0f} | - | 1.0x | - |"
    )

    before, first_pass, after = r["rss_before"], r["rss_first_pass"], r["rss_after"]
    print(f"\n| server RSS over {args.cycle} speech requests | MB |")
    print("|---|---:|")
    print(f"| before | {before:.0f} |")
    print(f"| after the first pass through {min(args.voices, args.cycle)} voices | {first_pass:.0f} |")
    print(f"| after {args.cycle} requests | {after:.0f} |")
    print(f"| growth, whole cycle | {after - before:+.1f} |")
    print(f"| growth after the first pass | {after - first_pass:+.1f} |")

    http, cli_add = r["enroll_http"], r["enroll_cli"]
    print("\n| enroll one voice | seconds | vs CLI |")
    print("|---|---:|---:|")
    print(f"| `POST /v1/voices` to the running server | {http:.2f} | {http / cli_add:.2f}x |")
    print(f"| `voicedb add`, one process | {cli_add:.2f} | 1.00x |")

    report_streaming(args, r["streaming"], r["batching"])

    if server.stop_seconds is not None:
        print(f"\nserver stopped {server.stop_seconds:.1f} s after SIGTERM")
    elif server.exited_early is not None:
        print(f"\nserver had exited by itself before the end, with status {server.exited_early}")
    else:
        print("\nserver did not stop within 60 s of SIGTERM: killed")
    errors = [line for line in log.splitlines() if "Traceback" in line or '" 5' in line]
    if failures.counts or errors:
        print("problems:")
        for (what, status), count in sorted(failures.counts.items(), key=str):
            print(f"  {count} x {what} -> {status}")
        for sample in failures.samples:
            print(f"  {sample}")
        for line in errors[:10]:
            print(f"  server log: {line}")
    else:
        print("problems: none (every request answered 2xx, no tracebacks or 5xx in the server log)")


def report_streaming(
    args: argparse.Namespace,
    alone: list[tuple[float, float]],
    levels: dict[int, dict[int, tuple[float, list[float], list[float]]]],
) -> None:
    tokens = SENTENCES * args.sentence_tokens
    print(
        f"\n| a 3-sentence request alone ({tokens} speech tokens, one chunk) | requests | first audio s | total s "
        "| first / total |"
    )
    print("|---|---:|---:|---:|---:|")
    first, total = med([t[0] for t in alone]), med([t[1] for t in alone])
    print(f"| server, default options | {len(alone)} | {first:.3f} | {total:.3f} | {first / total:.0%} |")

    batched, single = max(levels), 1

    print(
        f"\n| concurrent speech clients | `--batch {batched}` requests/s | `--batch 1` requests/s | throughput ratio "
        "| first audio s, batched / one at a time (median) | total s, batched / one at a time (median) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for clients in args.speech_clients:
        on_rps, on_first, on_total = levels[batched][clients]
        off_rps, off_first, off_total = levels[single][clients]
        print(
            f"| {clients} | {on_rps:.3f} | {off_rps:.3f} | {on_rps / (off_rps or float('nan')):.2f}x | "
            f"{med(on_first):.2f} / {med(off_first):.2f} | {med(on_total):.2f} / {med(off_total):.2f} |"
        )


if __name__ == "__main__":
    main()
