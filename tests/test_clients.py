"""Clients written for other Chatterbox servers, against a real ``voicedb serve`` on loopback with the test
checkpoint, each sending its requests as its documentation and source do: Open WebUI and SillyTavern (OpenAI
speech), travisvn/chatterbox-tts-api and Kokoro-FastAPI (blends). Every answer decodes, or is OpenAI's error
shape with ``param`` naming the field at fault."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile
from conftest import run, run_fails
from test_server import TOKENS, fmt_error, running

from voicedb import VoiceDB

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def library(tmp_path_factory, checkpoint: Path, speakers, multi_clip_speakers) -> Iterator[VoiceDB]:
    """Two voices (``ann``, ``ben``) from the shortest clips of speakers whose other clips tests upload."""
    clips = [clips[0] for name, clips in speakers.items() if name not in multi_clip_speakers]
    shortest = sorted(clips, key=lambda c: soundfile.info(str(c)).duration)[:2]
    with VoiceDB(tmp_path_factory.mktemp("clients") / "library", checkpoint=checkpoint, device="cpu") as db:
        for name, clip in zip(("ann", "ben"), shortest, strict=True):
            db.add([clip], name=name)
        yield db


@pytest.fixture(scope="module")
def server(library: VoiceDB) -> Iterator[str]:
    """Keyed, with listings open, as an Open WebUI deployment would run it; no default voice."""
    with running(library, api_key=KEY, open_listings=True) as url:
        yield url


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers=AUTH, timeout=120) as client:
        yield client


def decoded(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    samples, rate = soundfile.read(io.BytesIO(response.content), dtype="float32")
    assert rate == 24_000 and len(samples) > 0
    return samples


def refused(response: httpx.Response, status: int, param: str | None) -> dict:
    assert response.status_code == status, response.text
    error = fmt_error(response)
    assert error["param"] == param, error
    return error


# -- OpenAI's error shape --------------------------------------------------------------------------------


def test_errors_name_the_field_at_fault(http: httpx.Client):
    speech = "/v1/audio/speech"
    base = {"model": "tts-1", "voice": "ann", "input": "Hi."}
    refused(http.post(speech, json={**base, "speed": 5}), 400, "speed")
    refused(http.post(speech, json={**base, "response_format": "ogg"}), 400, "response_format")
    refused(http.post(speech, json={**base, "input": "x" * 4097}), 400, "input")
    assert "no text" in refused(http.post(speech, json={**base, "input": "  "}), 400, "input")["message"]
    refused(http.post(speech, json={**base, "voice": "nobody"}), 404, "voice")
    refused(http.post(speech, json={**base, "voice": "ann+nobody"}), 404, "voice")
    refused(http.post(speech, json={**base, "voice": "ann(x)+ben"}), 400, "voice")
    missing = refused(http.post(speech, json={"model": "tts-1", "input": "Hi."}), 400, "voice")
    assert "--default-voice" in missing["message"]
    refused(http.post("/v1/voices", data={"name": "nothing"}), 400, "file")


def test_a_request_without_a_voice_speaks_with_the_default_voice(library: VoiceDB):
    with running(library, default_voice="ben") as url:
        body = {"model": "tts-1", "input": "Hi there.", "response_format": "wav", "seed": 4}
        unnamed = httpx.post(f"{url}/v1/audio/speech", json=body, timeout=120)
        named = httpx.post(f"{url}/v1/audio/speech", json={**body, "voice": "ben"}, timeout=120)
        empty = httpx.post(f"{url}/v1/audio/speech", json={**body, "voice": ""}, timeout=120)
    assert np.array_equal(decoded(unnamed), decoded(named)) and np.array_equal(decoded(empty), decoded(named))


# -- Open WebUI and SillyTavern ----------------------------------------------------------------------------


def test_open_webui_lists_without_the_key_and_speaks_with_it(server: str, library: VoiceDB):
    # Open WebUI (0.6 to 0.12) sends no Authorization header when it lists, and its key when it speaks
    voices = httpx.get(f"{server}/v1/audio/voices").json()["voices"]
    assert {(v["id"], v["name"]) for v in voices} >= {(v.id, v.name) for v in library.list()}
    assert {m["id"] for m in httpx.get(f"{server}/v1/audio/models").json()["models"]} >= {"tts-1", "english"}
    assert "tts-1" in [m["id"] for m in httpx.get(f"{server}/v1/models").json()["data"]]
    body = {"input": "Hello from the chat.", "voice": voices[0]["id"], "model": "tts-1"}  # no response_format
    assert httpx.post(f"{server}/v1/audio/speech", json=body).status_code == 401
    spoken = httpx.post(f"{server}/v1/audio/speech", json=body, headers=AUTH, timeout=120)
    assert spoken.status_code == 200 and spoken.headers["content-type"] == "audio/mpeg"
    assert len(soundfile.read(io.BytesIO(spoken.content))[0]) > 0
    assert httpx.get(f"{server}/v1/voices").status_code == 401  # only the listings are open
    assert httpx.delete(f"{server}/v1/voices/ann").status_code == 401


def test_listings_need_the_key_unless_the_option_opens_them(library: VoiceDB):
    with running(library, api_key=KEY) as url:
        for path in ("/v1/audio/voices", "/v1/audio/models", "/v1/models", "/languages"):
            assert httpx.get(f"{url}{path}").status_code == 401, path
            assert httpx.get(f"{url}{path}", headers=AUTH).status_code == 200, path


def test_sillytavern_s_request_speaks(http: httpx.Client):
    # what SillyTavern's server sends to the provider endpoint, after aliasing its default voice
    http.post("/v1/voices/ann/aliases", data={"alias": "alloy"}).raise_for_status()
    try:
        body = {
            "input": "A line of dialogue.",
            "response_format": "mp3",
            "voice": "alloy",
            "speed": 1,
            "model": "tts-1",
        }
        spoken = http.post("/v1/audio/speech", json=body)
        assert spoken.status_code == 200 and spoken.headers["content-type"] == "audio/mpeg"
    finally:
        http.delete("/v1/voices/ann/aliases/alloy").raise_for_status()


# -- aliases ----------------------------------------------------------------------------------------------


def test_aliases_map_stock_names_to_voices_one_by_one(http: httpx.Client, library: VoiceDB, server: str):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
    added = http.post("/v1/voices/ben/aliases", data={"alias": "nova"})
    assert added.status_code == 201 and added.json()["aliases"] == ["nova"] and added.json()["voice_name"] == "ben"
    try:
        as_nova = client.audio.speech.create(
            model="tts-1", voice="nova", input="Hi.", response_format="pcm", extra_body={"seed": 5}
        )
        as_ben = client.audio.speech.create(
            model="tts-1", voice="ben", input="Hi.", response_format="pcm", extra_body={"seed": 5}
        )
        assert as_nova.content == as_ben.content
        assert {"alias": "nova", "id": library.get("ben").id, "name": "ben"} in http.get("/v1/aliases").json()[
            "aliases"
        ]
        assert "nova" in [v["id"] for v in http.get("/v1/audio/voices").json()["voices"]]
        assert library.get("nova").name == "ben" and library.get("ben").aliases == ["nova"]
        assert refused(http.post("/v1/voices/ben/aliases", data={"alias": "ann"}), 409, "alias")
        assert refused(http.patch("/v1/voices/ann", json={"name": "nova"}), 409, None)
        with pytest.raises(openai.NotFoundError):  # another stock name, no alias, no default voice
            client.audio.speech.create(model="tts-1", voice="shimmer", input="Hi.")
    finally:
        assert http.delete("/v1/voices/ben/aliases/nova").json()["aliases"] == []
    refused(http.delete("/v1/voices/ben/aliases/nova"), 404, None)


def test_the_alias_command(home: Path, speakers):
    first, second = (clips[0] for clips in list(speakers.values())[:2])
    assert run("add", str(first), "--name", "alice", "--no-conditionals").exit_code == 0
    assert run("add", str(second), "--name", "bob", "--no-conditionals").exit_code == 0
    assert "alloy now names voice" in run("alias", "add", "alice", "alloy").stdout
    assert re.search(r"name:\s+alice\naliases:\s+alloy\n", run("show", "alloy").stdout)
    assert run("alias", "add", "bob", "alloy").exit_code == 0  # moves
    assert run("alias", "list", "--json").stdout.count('"alias": "alloy"') == 1
    assert "bob" in run("alias", "list").stdout
    assert "name of a voice" in run_fails("alias", "add", "alice", "bob")
    assert "alias of another voice" in run_fails("rename", "alice", "alloy")
    assert "removed alias alloy" in run("alias", "rm", "alloy").stdout
    assert "no alias" in run_fails("alias", "rm", "alloy")
    run("rm", "bob")
    assert run("alias", "list", "--json").stdout.strip() == '{\n  "aliases": []\n}'


# -- travisvn/chatterbox-tts-api ---------------------------------------------------------------------------


def test_travisvn_s_service_endpoints(http: httpx.Client):
    assert http.get("/ping").json() == {"status": "ok", "message": "Server is running"}
    status = http.get("/status").json()
    assert status["is_processing"] is False and status["status"] == "idle"
    config = http.get("/config").json()
    assert config["api_info"]["name"] == "voicedb" and config["defaults"]["exaggeration"] == 0.5
    assert config["auth"] == {"api_key_required": True, "open_listings": True} and KEY not in str(config)
    for path in ("/languages", "/v1/languages"):
        languages = http.get(path).json()
        assert languages["model_type"] == "standard" and languages["languages"] == [{"code": "en", "name": "English"}]
    assert http.get("/v1/voices/default").json()["default_voice"] is None
    for path in ("/v1/ping", "/v1/health", "/processing", "/v1/status"):  # travisvn's other names
        assert http.get(path).status_code == 200, path
    for method, path in (
        ("GET", "/status/history"),
        ("GET", "/info"),
        ("POST", "/v1/voices/default"),
        ("GET", "/memory"),
        ("POST", "/memory/reset"),
        ("POST", "/audio/speech/long"),
        ("GET", "/v1/audio/speech/long/jobs"),
        ("GET", "/stats"),
        ("POST", "/voices/cleanup"),
    ):
        answer = http.request(method, path)
        assert answer.status_code == 501 and "voicedb serve does not offer" in fmt_error(answer)["message"], path


def test_travisvn_s_voice_library_calls(http: httpx.Client, library: VoiceDB, multi_clip_speakers):
    clip = multi_clip_speakers[list(multi_clip_speakers)[0]][0]
    files = {"voice_file": (clip.name, clip.read_bytes(), "audio/flac")}
    created = http.post("/voices", data={"voice_name": "travis-voice", "language": "en"}, files=files)  # its path
    assert created.status_code == 201, created.text
    assert created.json()["voice"]["name"] == "travis-voice" and created.json()["message"].startswith("enrolled")
    try:
        for path in ("/voices", "/v1/voices", "/voice-library"):
            listed = http.get(path).json()
            assert listed["count"] == len(listed["voices"]) and "travis-voice" in [v["name"] for v in listed["voices"]]
        assert "travis-voice" in [v["name"] for v in http.get("/audio/voices").json()["voices"]]
        downloaded = http.get("/voices/travis-voice/download")
        assert downloaded.status_code == 200 and downloaded.content == clip.read_bytes()
        renamed = http.put("/voices/travis-voice", data={"new_name": "travis-renamed"})
        assert renamed.json()["old_name"] == "travis-voice" and renamed.json()["new_name"] == "travis-renamed"
        refused(http.put("/v1/voices/travis-renamed", data={"new_name": "ann"}), 409, "new_name")
        deleted = http.delete("/voices/travis-renamed").json()
        assert deleted["voice_name"] == "travis-renamed" and deleted["message"].startswith("deleted")
    finally:
        library.remove(*(v.id for v in library.list() if v.name.startswith("travis-")))


def test_travisvn_s_speech_with_a_one_off_clip_enrolls_nothing(http: httpx.Client, library: VoiceDB, speakers):
    clip = next(iter(speakers.values()))[0]
    before = [v.id for v in library.list()]
    form = {"input": "Spoken with a clip that is kept nowhere.", "exaggeration": "0.6", "temperature": "0.7"}
    spoken = http.post("/audio/speech/upload", data=form, files={"voice_file": (clip.name, clip.read_bytes())})
    assert spoken.headers["content-type"] == "audio/wav"  # travisvn's default format
    decoded(spoken)
    by_name = http.post("/tts/upload", data={"input": "Hello.", "voice": "ann", "response_format": "flac"})
    assert by_name.headers["content-type"] == "audio/flac" and len(decoded(by_name))
    not_audio = http.post("/v1/audio/speech/upload", data={"input": "Hi."}, files={"voice_file": ("a.wav", b"text")})
    refused(not_audio, 415, "voice_file")
    refused(http.post("/v1/audio/speech/upload", data={"input": "Hi.", "voice": "ann", "speed": "9"}), 400, "speed")
    assert [v.id for v in library.list()] == before


def test_travisvn_s_streaming_speech(http: httpx.Client, library: VoiceDB):
    body = {"input": "First sentence. Second one.", "voice": "ann", "exaggeration": 0.5, "seed": 6}
    streamed = http.post("/audio/speech/stream", json=body)
    assert streamed.headers["content-type"] == "audio/wav"
    plain = http.post("/tts", json={**body, "response_format": "wav"})
    assert np.array_equal(decoded(streamed), decoded(plain))
    assert np.array_equal(decoded(http.post("/v1/audio/speech/stream", json=body)), decoded(plain))
    refused(http.post("/v1/audio/speech/stream", content=b"not json"), 400, None)


# -- blends (Kokoro-FastAPI's syntax) -------------------------------------------------------------------------


def test_kokoro_s_speech_request_with_its_own_fields_speaks_a_blend(http: httpx.Client):
    """The body Kokoro-FastAPI's clients send: its extra fields are accepted and left to their defaults."""
    body = {
        "model": "kokoro",
        "input": "Hello from a Kokoro client.",
        "voice": "ann(2)+ben(1)",
        "response_format": "wav",
        "download_format": "mp3",
        "speed": 1.0,
        "stream": True,
        "return_download_link": False,
        "lang_code": "a",
        "volume_multiplier": 1.0,
        "normalization_options": {"normalize": True, "unit_normalization": False},
    }
    assert len(decoded(http.post("/v1/audio/speech", json=body))) > 0
    refused(http.post("/v1/audio/speech", json={**body, "voice": "ann(2)+nobody(1)"}), 404, "voice")


def test_a_blend_speaks_as_stored_and_unstored(http: httpx.Client, library: VoiceDB):
    body = {"model": "tts-1", "input": "Hi there.", "response_format": "wav", "seed": 8}
    unstored = decoded(http.post("/v1/audio/speech", json={**body, "voice": "ann(2)+ben(1)"}))
    combined = http.post("/v1/audio/voices/combine", json={"voices": "ann(2)+ben(1)", "name": "annben"})
    assert combined.status_code == 201, combined.text
    blend = combined.json()
    try:
        weights = {s["name"]: s["weight"] for s in blend["blend"]["sources"]}
        assert weights == pytest.approx({"ann": 2 / 3, "ben": 1 / 3}, abs=1e-5)
        assert np.array_equal(decoded(http.post("/v1/audio/speech", json={**body, "voice": "annben"})), unstored)
        alone = decoded(http.post("/v1/audio/speech", json={**body, "voice": "ann"}))
        assert not np.array_equal(alone[: len(unstored)], unstored[: len(alone)])
        # matchable: its vector is its sources' blend, found first by it
        vector = library.vector("annben")
        mixed = 2 / 3 * library.vector("ann") + 1 / 3 * library.vector("ben")
        assert np.allclose(vector, mixed / np.linalg.norm(mixed), atol=1e-5)
        assert library.similar("annben", k=1)[0].name == "ann"  # its heavier source is its nearest voice
        assert "annben" in [m.name for m in library.similar("ben", k=3)]
    finally:
        library.remove("annben")


def test_kokoro_s_combine_gives_the_blend_s_conditionals(http: httpx.Client, library: VoiceDB, tmp_path: Path):
    from voicedb.engine import read_conditionals

    answer = http.post("/v1/audio/voices/combine", json="ann+ben")
    assert answer.status_code == 200 and answer.headers["content-disposition"].endswith('ann+ben.pt"')
    try:
        conds = read_conditionals(answer.content, "combined.pt")
        speaker = conds.t3.speaker_emb.reshape(-1).numpy()
        assert np.allclose(speaker, library.vector("ann+ben"), atol=1e-5)
        assert http.post("/v1/audio/voices/combine", json=["ann", "ben"]).status_code == 200  # the same blend
        refused(http.post("/v1/audio/voices/combine", json="ann+nobody"), 404, "voices")
        decoded(http.post("/v1/audio/speech", json={"input": "Hi.", "voice": "ann+ben", "response_format": "wav"}))
    finally:
        library.remove("ann+ben")


def test_the_blend_command_records_where_a_blend_came_from(home: Path, speakers, tmp_path: Path):
    first, second = (clips[0] for clips in list(speakers.values())[:2])
    run("add", str(first), "--name", "alice")
    run("add", str(second), "--name", "bob")
    made = run("blend", "alice", "bob", "--weight", "0.3", "--name", "mostly-alice")
    assert made.exit_code == 0 and "(0.7)" in made.stdout and "(0.3)" in made.stdout, made.output
    shown = run("show", "mostly-alice").stdout
    assert "blend of:" in shown and "alice" in shown and "bob" in shown
    spoken = tmp_path / "a.wav"
    assert run("speak", "--voice", "mostly-alice", "Hi.", "--max-tokens", str(TOKENS), "-o", str(spoken)).exit_code == 0
    assert soundfile.info(str(spoken)).samplerate == 24_000
    bundle = tmp_path / "mostly-alice.voicedb"
    assert run("export", "mostly-alice", "-o", str(bundle), "--bundle").exit_code == 0
    assert run("import", str(bundle), "--name", "restored").exit_code == 0
    assert '"weight": 0.7' in run("show", "restored", "--json").stdout
    usage = run("blend", "alice", "bob", "mostly-alice", "--weight", "0.5", "--name", "x")
    assert usage.exit_code == 2 and "exactly two voices" in usage.stderr
    assert "no voice" in run_fails("blend", "alice", "nobody", "--name", "y")
    assert "already exists" in run_fails("blend", "alice", "bob", "--name", "alice")
