"""Feed seeded, bounded streams of mutated inputs to every reader of untrusted bytes and count the
outcomes: each input must end in success or a clean refusal (a ``VoiceDBError`` in the library, a
4xx or 503/504 JSON error from the server). Anything else (another exception, a 500, a traceback or
a server path in a response) is counted as unclean and the script exits 1.

    python scripts/fuzz_inputs.py                        # 200 inputs per target, seed 0
    python scripts/fuzz_inputs.py --examples 30 --seed 1 --targets audio,bundle

Mutations come from Hypothesis: byte flips, truncations, insertions and rewritten header fields
of real seed files (speech from tests/data, a bundle, a conditionals ``.pt``, an embeddings
``.npz``), plus structured mutations that keep the checksums right so the inner readers are
reached. The server target runs the real app under uvicorn on a loopback port.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
SPEECH = ROOT / "tests" / "data" / "speech"

from benchutil import serving_in_thread  # noqa: E402


@dataclass
class Tally:
    """Outcomes of one target."""

    tried: int = 0
    accepted: int = 0
    refused: int = 0
    unclean: list[str] = field(default_factory=list)


# -- seed files ------------------------------------------------------------------------------------


def speech_seeds() -> dict[str, bytes]:
    """Two seconds of real speech in each container voicedb reads."""
    samples, rate = soundfile.read(SPEECH / "arctic_awb_1.flac", dtype="float32")
    samples = samples[: 2 * rate]
    seeds = {}
    for fmt, subtype in (("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")):
        buffer = io.BytesIO()
        soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
        seeds[fmt.lower()] = buffer.getvalue()
    seeds["m4a"] = m4a_bytes(samples, rate)
    return seeds


def m4a_bytes(samples: np.ndarray, rate: int) -> bytes:
    """AAC in MP4, the one common format only FFmpeg reads."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray((samples[None, :] * 32767).astype(np.int16), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in (*stream.encode(frame), *stream.encode(None)):
            container.mux(packet)
    return buffer.getvalue()


def conditionals_seed() -> bytes:
    """A conditionals ``.pt`` of the shapes upstream saves (random values: only the format matters here)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    t3 = {
        "speaker_emb": torch.randn(1, 256, generator=generator),
        "cond_prompt_speech_tokens": torch.randint(0, 6561, (1, 150), generator=generator),
        "emotion_adv": torch.full((1, 1, 1), 0.5),
    }
    gen = {
        "prompt_token": torch.randint(0, 6561, (1, 100), generator=generator),
        "prompt_token_len": torch.tensor([100]),
        "prompt_feat": torch.randn(1, 200, 80, generator=generator),
        "prompt_feat_len": None,
        "embedding": torch.randn(1, 192, generator=generator),
    }
    buffer = io.BytesIO()
    torch.save({"t3": t3, "gen": gen}, buffer)
    return buffer.getvalue()


def bundle_members(clip: bytes, conds: bytes) -> tuple[dict, dict[str, bytes]]:
    """The voice manifest and members of a one-clip bundle."""
    from voicedb.bundle import npy_bytes

    vector = np.random.default_rng(0).standard_normal(256).astype(np.float32)
    vector /= np.linalg.norm(vector)
    sha = "ab" * 32
    voice = {
        "name": "fuzzed",
        "tags": ["a"],
        "encoder": "0" * 64,
        "clips": [{"file": f"clips/{sha}.wav", "source_name": "x.wav", "embedding": vector.tolist()}],
    }
    members = {"embedding.npy": npy_bytes(vector), f"clips/{sha}.wav": clip, "conds/english.pt": conds}
    return voice, members


def bundle_bytes(voice: dict, members: dict[str, bytes], scratch: Path) -> bytes:
    from voicedb.bundle import write_bundle

    path = scratch / "seed.voicedb"
    write_bundle(path, voice, members)
    return path.read_bytes()


def npz_seed() -> bytes:
    vectors = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        ids=np.array([f"{n:032x}" for n in range(4)]),
        names=np.array([f"voice-{n}" for n in range(4)]),
        vectors=vectors,
        encoder=np.array("0" * 64),
    )
    return buffer.getvalue()


# -- mutations -------------------------------------------------------------------------------------

EXTREMES = [0, 1, 2, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]


@st.composite
def mutated(draw: st.DrawFn, seeds: dict[str, bytes]) -> bytes:
    """One seed file with a few edits: flipped bytes, an extreme header field, a cut or an insertion."""
    data = bytearray(draw(st.sampled_from(sorted(seeds.items())))[1])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "field", "cut", "insert"]))
        where = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip":
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif kind == "field":  # headers live in the first bytes: a size, rate or count set to an extreme
            where = draw(st.integers(0, min(len(data), 128) - 4))
            data[where : where + 4] = struct.pack("<I", draw(st.sampled_from(EXTREMES)))
        elif kind == "cut":
            del data[where:]
        else:
            data[where:where] = draw(st.binary(min_size=1, max_size=64))
        if not data:
            break
    return bytes(data)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def manifest_mutation(draw: st.DrawFn, voice: dict) -> dict:
    """The voice manifest with some fields replaced by arbitrary JSON, checksums still right."""
    changed = json.loads(json.dumps(voice))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(["name", "tags", "encoder", "clips", "language", "extra"]))
        if key == "clips" and draw(st.booleans()):
            clip = dict(changed["clips"][0])
            clip[draw(st.sampled_from(["file", "source_name", "embedding"]))] = draw(JSON_VALUES)
            changed["clips"] = [clip]
        else:
            changed[key] = draw(JSON_VALUES)
    return changed


# -- targets ---------------------------------------------------------------------------------------


def outcome(tally: Tally, read: Callable[[], object], label: str) -> None:
    from voicedb.errors import VoiceDBError

    tally.tried += 1
    try:
        read()
    except VoiceDBError:
        tally.refused += 1
    except Exception:  # noqa: BLE001 - exactly what this script counts
        tally.unclean.append(f"{label}: {traceback.format_exc(limit=3)}")
    else:
        tally.accepted += 1


def fuzz(strategy: st.SearchStrategy, body: Callable[[object], None], examples: int, at: int) -> None:
    """Run ``body`` on ``examples`` values drawn from ``strategy``, reproducibly from seed ``at``."""

    @seed(at)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=["generate"],
    )
    @given(strategy)
    def run(value: object) -> None:
        body(value)

    run()


def fuzz_audio(examples: int, at: int, seeds: dict[str, bytes]) -> Tally:
    from voicedb.audio import AudioSource, load_clip

    tally = Tally()
    fuzz(
        mutated(seeds),
        lambda data: outcome(tally, lambda: load_clip(AudioSource("fuzzed", data=data)), "audio"),
        examples,
        at,
    )
    return tally


def fuzz_conditionals(examples: int, at: int, conds: bytes) -> Tally:
    from voicedb.engine import read_conditionals

    tally = Tally()
    fuzz(
        mutated({"pt": conds}),
        lambda data: outcome(tally, lambda: read_conditionals(data, "fuzzed.pt"), "pt"),
        examples,
        at,
    )
    return tally


def read_whole_bundle(path: Path) -> None:
    """What importing a bundle reads before it changes anything: the archive, its conditionals and clips."""
    from voicedb.audio import AudioSource, load_clip
    from voicedb.bundle import read_bundle
    from voicedb.engine import read_conditionals

    bundle = read_bundle(path)
    for member, data in bundle.members.items():
        if member.startswith("conds/"):
            read_conditionals(data, member)
        elif member.startswith("clips/"):
            load_clip(AudioSource(member, data=data))


def fuzz_bundles(examples: int, at: int, clip: bytes, conds: bytes, scratch: Path) -> Tally:
    voice, members = bundle_members(clip, conds)
    whole = bundle_bytes(voice, members, scratch)
    tally = Tally()
    path = scratch / "fuzzed.voicedb"

    def raw(data: bytes) -> None:
        path.write_bytes(data)
        outcome(tally, lambda: read_whole_bundle(path), "bundle bytes")

    def structured(change: tuple[dict, str, bytes]) -> None:
        manifest, member, data = change
        changed = {**members, member: data}
        outcome(
            tally,
            lambda: (path.write_bytes(bundle_bytes(manifest, changed, scratch)), read_whole_bundle(path)),
            "bundle",
        )

    member_data = st.sampled_from(sorted(members)).flatmap(
        lambda name: st.tuples(st.just(name), mutated({name: members[name]}))
    )
    structured_changes = st.tuples(manifest_mutation(voice), member_data).map(lambda t: (t[0], *t[1]))
    fuzz(mutated({"bundle": whole}), raw, examples // 2, at)
    fuzz(structured_changes, structured, examples - examples // 2, at)
    return tally


def fuzz_npz(examples: int, at: int, seed_file: bytes, scratch: Path) -> Tally:
    from voicedb.embeddings import read_npz

    tally = Tally()
    path = scratch / "fuzzed.npz"

    def body(data: bytes) -> None:
        path.write_bytes(data)
        outcome(tally, lambda: read_npz(path, 256), "npz")

    fuzz(mutated({"npz": seed_file}), body, examples, at)
    return tally


@contextmanager
def serving(home: Path, checkpoint: Path | None) -> Iterator[str]:
    from voicedb import VoiceDB
    from voicedb.server import ServerSettings, create_app

    with VoiceDB(home, checkpoint=checkpoint, device="cpu") as db:
        with serving_in_thread(create_app(db, ServerSettings(max_tokens=4, timeout=60)), "critical") as url:
            yield url


SPEECH_FIELDS = ["model", "input", "voice", "response_format", "speed", "stream_format", "exaggeration", "seed"]


@st.composite
def request(draw: st.DrawFn, seeds: dict[str, bytes]) -> tuple[str, str, dict]:
    """(method, path, httpx keyword arguments) of one mutated API request."""
    kind = draw(st.sampled_from(["speech", "raw", "match", "add", "import", "patch"]))
    if kind == "speech":
        body = {"model": "tts-1", "voice": "nobody", "input": "Hi."}
        for key in draw(st.lists(st.sampled_from(SPEECH_FIELDS), max_size=3)):
            body[key] = draw(JSON_VALUES)
        return "POST", "/v1/audio/speech", {"json": body}
    if kind == "raw":
        path = draw(st.sampled_from(["/v1/audio/speech", "/v1/match", "/v1/voices", "/v1/voices/import"]))
        headers = {"content-type": draw(st.sampled_from(["application/json", "multipart/form-data; boundary=x"]))}
        return "POST", path, {"content": draw(st.binary(max_size=512)), "headers": headers}
    if kind == "patch":
        return "PATCH", "/v1/voices/nobody", {"json": draw(JSON_VALUES)}
    upload = draw(mutated(seeds))
    name = draw(st.text(max_size=30)) or "x"
    path = {"match": "/v1/match", "add": "/v1/voices", "import": "/v1/voices/import"}[kind]
    return "POST", path, {"files": {"file": (name, upload)}, "data": {"name": draw(st.text(max_size=20))}}


def fuzz_server(examples: int, at: int, seeds: dict[str, bytes], scratch: Path, checkpoint: Path | None) -> Tally:
    import httpx

    tally = Tally()
    with serving(scratch / "served", checkpoint) as url, httpx.Client(base_url=url, timeout=60) as client:

        def body(call: tuple[str, str, dict]) -> None:
            method, path, arguments = call
            tally.tried += 1
            try:
                response = client.request(method, path, **arguments)
            except httpx.HTTPError as exc:
                tally.unclean.append(f"{method} {path}: no answer ({exc!r})")
                return
            text = response.text
            clean_error = response.status_code < 500 or response.status_code in (503, 504)
            leaks = "Traceback" in text or str(scratch) in text
            if not clean_error or leaks:
                tally.unclean.append(f"{method} {path}: {response.status_code} {text[:300]}")
            elif response.is_success:
                tally.accepted += 1
            else:
                tally.refused += 1

        fuzz(request(seeds), body, examples, at)
        if client.get("/health").status_code != 200:
            tally.unclean.append("the server stopped answering /health")
    return tally


TARGETS = ("audio", "pt", "bundle", "npz", "server")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=200, help="inputs per target")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed: the same seed tries the same inputs")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}")
    parser.add_argument("--checkpoint", type=Path, help="weights for the server's matches (default: none, 503)")
    args = parser.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    if unknown := set(targets) - set(TARGETS):
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")

    from voicedb.engine import silence_third_party

    silence_third_party()
    seeds = speech_seeds()
    conds = conditionals_seed()
    results: dict[str, tuple[Tally, float]] = {}
    with tempfile.TemporaryDirectory(prefix="voicedb-fuzz-") as scratch_dir:
        scratch = Path(scratch_dir)
        runs = {
            "audio": lambda: fuzz_audio(args.examples, args.seed, seeds),
            "pt": lambda: fuzz_conditionals(args.examples, args.seed, conds),
            "bundle": lambda: fuzz_bundles(args.examples, args.seed, seeds["wav"], conds, scratch),
            "npz": lambda: fuzz_npz(args.examples, args.seed, npz_seed(), scratch),
            "server": lambda: fuzz_server(args.examples, args.seed, seeds, scratch, args.checkpoint),
        }
        for target in targets:
            started = time.perf_counter()
            results[target] = (runs[target](), time.perf_counter() - started)

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'target':<8} {'tried':>6} {'accepted':>9} {'refused':>8} {'unclean':>8} {'seconds':>8}")
    for target, (tally, seconds) in results.items():
        counts = f"{tally.tried:>6} {tally.accepted:>9} {tally.refused:>8} {len(tally.unclean):>8}"
        print(f"{target:<8} {counts} {seconds:>8.1f}")
    print(f"peak memory: {peak_mb:.0f} MB (seed {args.seed}, {args.examples} inputs per target)")
    failures = [line for tally, _ in results.values() for line in tally.unclean]
    for line in failures[:10]:
        print("\nUNCLEAN " + line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
