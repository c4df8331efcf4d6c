"""``voicedb serve``: a real uvicorn server on a free loopback port, called by the real ``openai`` and
``httpx`` clients, over a library with the offline test checkpoint."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile
from conftest import run
from services import free_port, wait_until_ready

from voicedb import VoiceDB
from voicedb.server import ServerSettings, create_app

TOKENS = 8  # speech tokens per sentence chunk: a third of a second, quick on a CPU
RATE = 24_000
#: Long enough for three chunks of text (they hold up to 300 characters).
THREE_CHUNKS = "A sentence of some length that goes on for a while, as sentences in stories do. " * 9


@contextmanager
def running(db: VoiceDB, **settings) -> Iterator[str]:
    """Serve ``db`` with uvicorn on a free loopback port in this process; yields the base URL."""
    import uvicorn

    app = create_app(db, ServerSettings(**{"max_tokens": TOKENS, **settings}))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def library(tmp_path_factory, checkpoint: Path, speakers, multi_clip_speakers) -> Iterator[VoiceDB]:
    """Two enrolled voices with their English conditionals, shared by this module's tests: the
    shortest clips of speakers whose other clips tests upload (S3Gen's cost grows with the reference)."""
    clips = [clips[0] for name, clips in speakers.items() if name not in multi_clip_speakers]
    home = tmp_path_factory.mktemp("served") / "library"
    with VoiceDB(home, checkpoint=checkpoint, device="cpu") as db:
        for clip in sorted(clips, key=lambda c: soundfile.info(str(c)).duration)[:2]:
            db.add([clip], name=clip.stem)
        yield db


@pytest.fixture(scope="module")
def server(library: VoiceDB) -> Iterator[str]:
    with running(library, default_voice=library.list()[0].name) as url:
        yield url


@pytest.fixture
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def as_cli(library: VoiceDB, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the in-process CLI at the served library."""
    monkeypatch.setenv("VOICEDB_HOME", str(library.home))
    monkeypatch.setenv("VOICEDB_CHECKPOINT", str(checkpoint))
    monkeypatch.setenv("VOICEDB_DEVICE", "cpu")


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int, int]:
    """(samples, rate, channels) of a response body in ``fmt``."""
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768, RATE, 1
    if fmt == "aac":
        import av

        with av.open(io.BytesIO(data)) as container:
            frames = list(container.decode(audio=0))
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
        return samples, frames[0].sample_rate, len(frames[0].layout.channels)
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples[:, 0], rate, samples.shape[1]


def wav_samples(data: bytes) -> np.ndarray:
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    assert rate == RATE
    return samples


def fmt_error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "code"} <= set(body["error"]), body
    assert "Traceback" not in response.text
    return body["error"]


# -- OpenAI speech ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hello_samples(library: VoiceDB) -> int:
    """How long "Hello there." is in the first voice with seed 3."""
    return len(library.speak(library.list()[0].id, "Hello there.", max_tokens=TOKENS, seed=3).audio)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_the_openai_sdk_gets_every_response_format(
    client: openai.OpenAI, library: VoiceDB, hello_samples: int, fmt: str
):
    voice = library.list()[0].name
    response = client.audio.speech.create(
        model="tts-1", voice=voice, input="Hello there.", response_format=fmt, extra_body={"seed": 3}
    )
    media = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac", "wav": "audio/wav"}
    assert response.response.headers["content-type"] == media.get(fmt, "audio/pcm")
    samples, rate, channels = decode(response.content, fmt)
    assert (rate, channels) == (RATE, 1) or (fmt == "opus" and channels == 1)
    seconds = len(samples) / rate
    assert abs(seconds - hello_samples / RATE) < 0.15  # codecs pad a frame or two
    assert np.abs(samples).max() > 0


def test_the_same_seed_gives_the_cli_s_audio(client: openai.OpenAI, library: VoiceDB, as_cli, tmp_path: Path):
    voice = library.list()[1].name
    text = "One sentence. And a second one."
    served = client.audio.speech.create(
        model="tts-1", voice=voice, input=text, response_format="wav", extra_body={"seed": 11}
    )
    out = tmp_path / "cli.wav"
    result = run("speak", "--voice", voice, text, "-o", str(out), "--seed", "11", "--max-tokens", str(TOKENS))
    assert result.exit_code == 0, result.output
    from_cli, _ = soundfile.read(str(out), dtype="float32")
    np.testing.assert_allclose(wav_samples(served.content), from_cli, atol=1.5 / 32768)


def test_speed_keeps_the_pitch_and_changes_the_length(client: openai.OpenAI, library: VoiceDB):
    voice = library.list()[0].name
    lengths = {
        speed: len(
            wav_samples(
                client.audio.speech.create(
                    model="tts-1",
                    voice=voice,
                    input="Hello there.",
                    response_format="wav",
                    speed=speed,
                    extra_body={"seed": 4},
                ).content
            )
        )
        for speed in (1.0, 2.0)
    }
    assert lengths[2.0] == pytest.approx(lengths[1.0] / 2, rel=0.05)


def test_streamed_audio_starts_before_the_last_sentence_is_synthesised(
    client: openai.OpenAI, library: VoiceDB, monkeypatch: pytest.MonkeyPatch
):
    from voicedb.streaming import WindowRenderer

    finished: list[float] = []  # when each sentence chunk's last window was rendered
    original = WindowRenderer.render

    def timed(self, tokens: list[int], final: bool):
        audio = original(self, tokens, final)
        if final:
            finished.append(time.monotonic())
        return audio

    monkeypatch.setattr(WindowRenderer, "render", timed)
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice=library.list()[0].name, input=THREE_CHUNKS, response_format="pcm"
    ) as response:
        chunks = response.iter_bytes()
        next(chunks)
        first_bytes = time.monotonic()
        rest = b"".join(chunks)
    assert len(finished) == 3
    assert first_bytes < finished[-1]
    assert rest


def test_sse_streams_base64_audio_deltas_then_usage(server: str, library: VoiceDB, client: openai.OpenAI):
    voice = library.list()[0].name
    body = {"model": "tts-1", "voice": voice, "input": THREE_CHUNKS, "response_format": "pcm"}
    whole = client.audio.speech.create(**body, extra_body={"seed": 9}).content
    body["seed"] = 9
    events = []
    with httpx.stream("POST", f"{server}/v1/audio/speech", json={**body, "stream_format": "sse"}, timeout=120) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done"
    assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == whole
    usage = events[-1]["usage"]
    assert usage["input_tokens"] == len(body["input"]) and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_openai_stock_voices_speak_with_the_default_voice(client: openai.OpenAI, library: VoiceDB):
    default = library.list()[0]
    as_alloy = client.audio.speech.create(
        model="tts-1", voice="alloy", input="Hi there.", response_format="pcm", extra_body={"seed": 2}
    )
    as_default = client.audio.speech.create(
        model="tts-1", voice=default.id, input="Hi there.", response_format="pcm", extra_body={"seed": 2}
    )
    assert as_alloy.content == as_default.content
    by_object = httpx.post(
        f"{client.base_url}audio/speech",
        json={"model": "tts-1", "voice": {"id": default.id}, "input": "Hi there.", "response_format": "pcm", "seed": 2},
        timeout=120,
    )
    assert by_object.content == as_default.content


def test_eight_concurrent_requests_over_two_voices_each_get_their_own_voice(client: openai.OpenAI, library: VoiceDB):
    voices = [v.name for v in library.list()]
    requests = [(voices[n % 2], n) for n in range(8)]
    serial = {
        (voice, seed): library.speak(voice, "Hello there.", max_tokens=TOKENS, seed=seed).audio
        for voice, seed in requests
    }

    def speak(request: tuple[str, int]) -> np.ndarray:
        voice, seed = request
        response = client.audio.speech.create(
            model="tts-1", voice=voice, input="Hello there.", response_format="wav", extra_body={"seed": seed}
        )
        return wav_samples(response.content)

    with ThreadPoolExecutor(8) as pool:
        served = list(pool.map(speak, requests))
    for request, audio in zip(requests, served):
        np.testing.assert_allclose(audio, serial[request], atol=1.5 / 32768, err_msg=str(request))


# -- listings -----------------------------------------------------------------------------------------


def test_voice_and_model_listings_have_the_shapes_clients_read(server: str, library: VoiceDB):
    voices = httpx.get(f"{server}/v1/audio/voices").json()
    assert voices == {"voices": [{"id": v.id, "name": v.name} for v in library.list()]}
    listed_models = [m["id"] for m in httpx.get(f"{server}/v1/audio/models").json()["models"]]
    assert listed_models[0] == "english" and {"multilingual", "turbo", "tts-1"} <= set(listed_models)
    models = openai.OpenAI(base_url=f"{server}/v1", api_key="x").models.list()
    assert "english" in [m.id for m in models.data]
    detailed = httpx.get(f"{server}/v1/voices").json()["voices"]
    assert {"id", "name", "tags", "clips", "seconds", "models", "language"} <= set(detailed[0])
    assert httpx.get(f"{server}/v1/voices", params={"limit": 1, "offset": 1}).json()["voices"] == detailed[1:2]
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}
    assert httpx.get(f"{server}/docs").status_code == 200


# -- the library over HTTP ----------------------------------------------------------------------------


def test_upload_list_match_rename_export_import_and_delete_a_voice(
    server: str, library: VoiceDB, multi_clip_speakers, tmp_path: Path
):
    speaker = list(multi_clip_speakers)[2]
    enroll, query = multi_clip_speakers[speaker][0], multi_clip_speakers[speaker][1]
    before = [v.id for v in library.list()]
    with httpx.Client(base_url=server, timeout=120) as http:
        files = [("file", (enroll.name, enroll.read_bytes(), "audio/flac"))]
        created = http.post("/v1/voices", files=files, data={"name": "carol", "tags": "calm, test", "language": "en"})
        assert created.status_code == 201, created.text
        voice = created.json()
        assert voice["name"] == "carol" and voice["tags"] == ["calm", "test"] and voice["language"] == "en"
        assert isinstance(voice["warnings"], list) and voice["clips"] == 1

        assert http.post("/v1/voices", files=files, data={"name": "other"}).status_code == 409  # same clip
        checked = http.post("/v1/voices", files=[("file", (query.name, query.read_bytes()))], data={"dry_run": "true"})
        assert (
            checked.status_code == 201 and checked.json()["id"] == "" and isinstance(checked.json()["warnings"], list)
        )
        kept = http.get(f"/v1/voices/{voice['id']}").json()["clip_files"]
        played = http.get(f"/v1/voices/{voice['id']}/clips/{kept[0]['sha256']}")
        assert played.status_code == 200 and played.headers["content-type"] == "audio/flac"
        assert hashlib.sha256(played.content).hexdigest() == kept[0]["sha256"]
        assert http.get(f"/v1/voices/{voice['id']}/clips/{'0' * 64}").status_code == 404
        taken = http.post("/v1/voices", files=[("file", (query.name, query.read_bytes()))], data={"name": "carol"})
        assert taken.status_code == 409 and fmt_error(taken)["code"] == "name_taken"

        matched = http.post("/v1/match", files={"file": (query.name, query.read_bytes())}, data={"k": "2"}).json()
        assert matched["matches"][0]["id"] == voice["id"] and matched["matched"] is True
        assert len(matched["nearest"]) == 2
        assert set(matched["matches"][0]) == {"id", "name", "score", "evidence", "cosine", "verdict"}
        shipped = library.threshold()
        assert (matched["threshold"], matched["threshold_source"]) == (shipped.value, shipped.source)
        assert matched["matcher"] == "chatterbox+campplus"

        renamed = http.patch(f"/v1/voices/{voice['id']}", json={"name": "caroline", "tags": ["calm"]}).json()
        assert renamed["name"] == "caroline" and renamed["tags"] == ["calm"]
        assert http.get("/v1/voices/caroline").json()["id"] == voice["id"]

        exported = http.get("/v1/voices/caroline/export")
        assert exported.status_code == 200 and "caroline.pt" in exported.headers["content-disposition"]
        (tmp_path / "caroline.pt").write_bytes(exported.content)
        from chatterbox.tts import Conditionals

        assert Conditionals.load(tmp_path / "caroline.pt").t3.speaker_emb.shape[-1] == 256
        bundle = http.get("/v1/voices/caroline/export", params={"bundle": "true"})
        assert bundle.status_code == 200 and bundle.content[:2] == b"PK"

        imported = http.post(
            "/v1/voices/import", files={"file": ("caroline.pt", exported.content)}, data={"name": "carol-copy"}
        )
        assert imported.status_code == 201, imported.text
        assert imported.json()["name"] == "carol-copy"
        similar = http.get("/v1/voices/caroline/similar", params={"k": 2}).json()  # the .pt holds no clip
        assert similar["voice"]["id"] == voice["id"] and similar["matcher"] == "chatterbox+campplus"
        assert similar["similar"][0]["name"] == "carol-copy" and similar["similar"][0]["evidence"] == "chatterbox"
        assert similar["similar"][0]["verdict"] in ("same speaker", "probably the same speaker")
        assert http.get("/v1/voices/nobody/similar").status_code == 404

        for ref in (voice["id"], "carol-copy"):
            deleted = http.delete(f"/v1/voices/{ref}")
            assert deleted.status_code == 200 and deleted.json()["deleted"] is True
        gone = http.get(f"/v1/voices/{voice['id']}")
        assert gone.status_code == 404 and fmt_error(gone)["code"] == "voice_not_found"
    assert [v.id for v in library.list()] == before


def test_changes_made_by_the_cli_are_seen_without_a_restart(server: str, as_cli, multi_clip_speakers):
    speaker = list(multi_clip_speakers)[3]
    clip = multi_clip_speakers[speaker][0]
    assert run("add", str(clip), "--name", "from-cli").exit_code == 0
    names = lambda: [v["name"] for v in httpx.get(f"{server}/v1/audio/voices").json()["voices"]]  # noqa: E731
    assert "from-cli" in names()
    assert run("rename", "from-cli", "renamed-by-cli").exit_code == 0
    assert "renamed-by-cli" in names() and "from-cli" not in names()
    matched = httpx.post(f"{server}/v1/match", files={"file": (clip.name, clip.read_bytes())}, timeout=60).json()
    assert matched["matches"][0]["name"] == "renamed-by-cli"
    assert run("rm", "renamed-by-cli").exit_code == 0
    assert "renamed-by-cli" not in names()


# -- errors -------------------------------------------------------------------------------------------


def test_bad_requests_are_openai_errors_with_the_right_status_and_change_nothing(
    server: str, library: VoiceDB, tmp_path: Path
):
    voice = library.list()[0].name
    speech = f"{server}/v1/audio/speech"
    cases = [
        ({"voice": voice, "input": "x" * 4097}, 400),
        ({"voice": voice, "input": "   "}, 400),
        ({"voice": voice, "input": "Hi.", "speed": 5}, 400),
        ({"voice": voice, "input": "Hi.", "response_format": "ogg"}, 400),
        ({"voice": voice, "input": "Hi.", "language": "fr"}, 400),  # the English model
        ({"voice": "nobody", "input": "Hi."}, 404),
    ]
    for body, status in cases:
        response = httpx.post(speech, json={"model": "tts-1", **body}, timeout=60)
        assert response.status_code == status, (body, response.text)
        fmt_error(response)
    not_json = httpx.post(speech, content=b"not json", headers={"content-type": "application/json"}, timeout=60)
    assert not_json.status_code == 400 and fmt_error(not_json)["code"] == "invalid_json"
    assert fmt_error(not_json)["param"] is None and fmt_error(not_json)["message"].startswith(
        "the body is not valid JSON"
    )
    before = [v.to_dict() for v in library.list()]
    not_audio = httpx.post(f"{server}/v1/voices", files={"file": ("notes.wav", b"this is text")}, data={"name": "x"})
    assert not_audio.status_code == 415 and fmt_error(not_audio)["code"] == "unsupported_media_type"
    silent = io.BytesIO()
    soundfile.write(silent, np.zeros(RATE * 3, dtype=np.float32), RATE, format="WAV")
    quiet = {"file": ("quiet.wav", silent.getvalue())}
    refused = httpx.post(f"{server}/v1/voices", files=quiet, data={"name": "quiet"}, timeout=60)
    assert refused.status_code == 400 and "silent" in fmt_error(refused)["message"]
    assert httpx.post(f"{server}/v1/match", files={"file": ("a.txt", b"text")}).status_code == 415
    for upload in ("../../etc/evil.pt", "backup.voicedb"):
        rejected = httpx.post(f"{server}/v1/voices/import", files={"file": (upload, b"PK not really")})
        message = fmt_error(rejected)["message"]
        assert rejected.status_code == 400 and message.startswith(Path(upload).name), message
        assert "/" not in message.split(":")[0] and str(library.home) not in rejected.text
    assert httpx.patch(f"{server}/v1/voices/nobody", json={"name": "y"}).status_code == 404
    assert httpx.delete(f"{server}/v1/voices/nobody").status_code == 404
    assert [v.to_dict() for v in library.list()] == before


def test_a_bug_is_a_500_without_its_traceback(library: VoiceDB, monkeypatch: pytest.MonkeyPatch):
    def broken(self):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(VoiceDB, "list", broken)
    with running(library) as url:
        response = httpx.get(f"{url}/v1/voices")
    assert response.status_code == 500
    assert fmt_error(response)["type"] == "server_error" and "secret" not in response.text


def test_stock_voice_names_are_404_without_a_default_voice(library: VoiceDB):
    with running(library) as url:
        response = httpx.post(f"{url}/v1/audio/speech", json={"model": "tts-1", "voice": "nova", "input": "Hi."})
    assert response.status_code == 404 and "--default-voice" in fmt_error(response)["message"]


def test_an_api_key_is_required_when_configured(library: VoiceDB):
    with running(library, api_key="s3cret") as url:
        assert httpx.get(f"{url}/v1/audio/voices").status_code == 401
        wrong = httpx.get(f"{url}/v1/audio/voices", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and fmt_error(wrong)["type"] == "authentication_error"
        assert httpx.get(f"{url}/v1/audio/voices", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200  # liveness stays open
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).audio.speech.create(
                model="tts-1", voice=library.list()[0].id, input="Hi."
            )
        spoken = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret").audio.speech.create(
            model="tts-1", voice=library.list()[0].id, input="Hi.", response_format="pcm"
        )
        assert len(spoken.content) > 0


def test_uploads_over_the_limit_are_413(library: VoiceDB):
    big = b"\0" * 300_000
    with running(library, max_upload_bytes=100_000) as url:
        response = httpx.post(f"{url}/v1/voices", files={"file": ("big.wav", big)})
        assert response.status_code == 413 and fmt_error(response)["code"] == "request_too_large"

        def chunked():  # no Content-Length: counted as it arrives
            yield b'--cut\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
            for _ in range(30):
                yield b"\0" * 10_000

        multipart = {"Content-Type": "multipart/form-data; boundary=cut"}
        streamed = httpx.post(f"{url}/v1/match", content=chunked(), headers=multipart)
        assert streamed.status_code == 413
        assert httpx.get(f"{url}/health").status_code == 200


def test_a_full_queue_answers_503_with_retry_after(library: VoiceDB):
    voice = library.list()[0].id
    with running(library, max_waiting=0, max_batch=1) as url:

        def speak(_n: int) -> httpx.Response:
            body = {"model": "tts-1", "voice": voice, "input": "One. Two. Three. Four.", "response_format": "pcm"}
            return httpx.post(f"{url}/v1/audio/speech", json=body, timeout=120)

        with ThreadPoolExecutor(3) as pool:
            responses = list(pool.map(speak, range(3)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses[0] == 200 and 503 in statuses
    busy = next(r for r in responses if r.status_code == 503)
    assert int(busy.headers["retry-after"]) >= 1 and fmt_error(busy)["code"] == "queue_full"


# -- the service ----------------------------------------------------------------------------------------


def test_loaded_conditionals_stay_in_a_bounded_cache(library: VoiceDB):
    from voicedb.catalog import Catalog
    from voicedb.conditionals import ConditionalsStore

    store = ConditionalsStore(library.context, Catalog(library.context), cache_size=1)
    reads = []
    original = store.read
    store.read = lambda saved: reads.append(saved.file) or original(saved)  # type: ignore[method-assign]
    first, second = (v.id for v in library.list()[:2])
    store.load(first), store.load(first)
    assert len(reads) == 1 and store.cached == 1
    store.load(second), store.load(first)
    assert len(reads) == 3 and store.cached == 1
    conds = store.load(first)
    assert not conds.t3.speaker_emb.requires_grad


def test_voicedb_serve_preloads_and_finishes_requests_in_flight_on_sigterm(
    library: VoiceDB, checkpoint: Path, tmp_path: Path
):
    port = free_port()
    env = {
        **os.environ,
        "VOICEDB_HOME": str(library.home),
        "VOICEDB_CHECKPOINT": str(checkpoint),
        "VOICEDB_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
    }
    command = [sys.executable, "-m", "voicedb", "serve", "--port", str(port), "--preload", "--max-tokens", str(TOKENS)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process)
        assert httpx.get(f"{url}/ready", timeout=10).json()["matcher"] == library.matcher()
        body = {"model": "tts-1", "voice": library.list()[0].id, "input": THREE_CHUNKS, "response_format": "wav"}
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, f"{url}/v1/audio/speech", json=body, timeout=120)
            time.sleep(1.0)  # the request is being synthesised
            process.send_signal(signal.SIGTERM)
            response = pending.result()
        assert response.status_code == 200 and len(wav_samples(response.content)) > RATE  # all three chunks
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once done
    finally:
        if process.poll() is None:
            process.kill()
        output = process.stdout.read() if process.stdout else ""
    assert "Traceback" not in output


# -- under abuse ------------------------------------------------------------------------------------------


def test_a_body_that_arrives_too_slowly_is_408(library: VoiceDB):
    def trickle():
        yield b'--cut\r\nContent-Disposition: form-data; name="file"; filename="slow.wav"\r\n\r\n'
        for _ in range(8):
            time.sleep(0.3)
            yield b"\0" * 100

    with running(library, timeout=1.0) as url:
        multipart = {"Content-Type": "multipart/form-data; boundary=cut"}
        response = httpx.post(f"{url}/v1/match", content=trickle(), headers=multipart, timeout=30)
        assert response.status_code == 408 and fmt_error(response)["code"] == "request_timeout"
        assert httpx.get(f"{url}/health").status_code == 200


def test_a_job_past_the_time_limit_is_504_and_the_server_stays_healthy(
    library: VoiceDB, speakers, monkeypatch: pytest.MonkeyPatch
):
    def slow_match(self, *_args, **_kwargs):
        time.sleep(3)
        return []

    monkeypatch.setattr(VoiceDB, "match", slow_match)
    clip = next(iter(speakers.values()))[0]
    with running(library, timeout=1.0) as url:
        started = time.monotonic()
        response = httpx.post(f"{url}/v1/match", files={"file": (clip.name, clip.read_bytes())}, timeout=30)
        assert response.status_code == 504 and fmt_error(response)["code"] == "timeout"
        assert time.monotonic() - started < 2.5  # answered at the limit, not when the job ended
        assert httpx.get(f"{url}/health").status_code == 200


def test_uploads_and_matches_cannot_starve_synthesis(library: VoiceDB, speakers, monkeypatch: pytest.MonkeyPatch):
    release = threading.Event()

    def stuck_match(self, *_args, **_kwargs):
        release.wait(30)
        return []

    monkeypatch.setattr(VoiceDB, "match", stuck_match)
    clip = next(iter(speakers.values()))[0]
    upload = {"file": (clip.name, clip.read_bytes())}
    with running(library, upload_workers=1, max_waiting=0) as url, ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, f"{url}/v1/match", files=upload, timeout=60)
        time.sleep(0.5)  # the one upload worker is now busy
        turned_away = httpx.post(f"{url}/v1/match", files=upload, timeout=30)
        assert turned_away.status_code == 503 and "upload queue" in fmt_error(turned_away)["message"]
        body = {"model": "tts-1", "voice": library.list()[0].id, "input": "Still speaking.", "response_format": "pcm"}
        spoken = httpx.post(f"{url}/v1/audio/speech", json=body, timeout=120)
        assert spoken.status_code == 200 and len(spoken.content) > 0
        release.set()
        assert first.result().status_code == 200


def test_browsers_may_call_only_from_configured_origins(library: VoiceDB):
    origin = {"Origin": "https://app.example"}
    preflight = {**origin, "Access-Control-Request-Method": "POST"}
    with running(library) as url:
        assert "access-control-allow-origin" not in httpx.get(f"{url}/v1/voices", headers=origin).headers
        assert "access-control-allow-origin" not in httpx.options(f"{url}/v1/voices", headers=preflight).headers
    with running(library, cors_origins=("https://app.example",)) as url:
        allowed = httpx.get(f"{url}/v1/voices", headers=origin)
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert httpx.options(f"{url}/v1/voices", headers=preflight).status_code == 200
        other = httpx.get(f"{url}/v1/voices", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
