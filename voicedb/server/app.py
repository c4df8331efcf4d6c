"""The HTTP API: OpenAI's speech endpoints, the voice library, and matching, over one shared ``VoiceDB``.

Every request reads the library afresh, so voices added, renamed or removed by the CLI while the
server runs are seen by the next request. Model work runs off the event loop, on bounded queues
of its own: synthesis on one, uploads (enrollment, imports) and matches on another, so neither can
starve the other.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, File, Form, Query, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from ..audio import AudioSource
from ..calibration import verdict
from ..errors import NoMatch, VoiceNotFound
from ..flavours import FLAVOURS, SynthesisSettings
from ..library import VoiceDB
from ..records import Match, Threshold, Voice
from . import errors
from .encoding import FORMATS, SAMPLE_RATE, StreamEncoder, change_speed
from .jobs import JobTimeout, WorkQueue
from .limits import BodyLimit, require_api_key

#: OpenAI's built-in voice names: they speak with the server's default voice, when one is set.
OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse", "marin", "cedar"}
)
#: Model names OpenAI clients send; any string is accepted, these are the ones listed.
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
MAX_INPUT_CHARS = 4096
#: The web page's files, shipped in the wheel: plain HTML, CSS and JavaScript, no build step.
STATIC = Path(__file__).with_name("static")
#: Media types of the kept clips' suffixes, for players.
CLIP_TYPES = {
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
    ".mp3": "audio/mpeg",
    ".m4a": "audio/mp4",
    ".webm": "audio/webm",
}
SPEECH_TOKENS_PER_SECOND = 25

log = logging.getLogger("voicedb.server")


@dataclass(frozen=True)
class ServerSettings:
    """How ``voicedb serve`` was started."""

    model: str = "english"
    api_key: str | None = None
    max_tokens: int = 1000
    default_voice: str | None = None
    max_upload_bytes: int = 20 * 1024 * 1024
    workers: int = 1
    upload_workers: int = 2
    max_waiting: int = 16
    timeout: float = 600.0
    cors_origins: tuple[str, ...] = ()
    preload: bool = False


class VoiceId(BaseModel):
    id: str


class SpeechRequest(BaseModel):
    """OpenAI's ``audio.speech.create`` body, plus the sampling options Chatterbox clients send."""

    model_config = ConfigDict(extra="ignore")

    #: An OpenAI name (the server's model) or a Chatterbox flavour (``english``, ``multilingual``, ``turbo``).
    model: str = "tts-1"
    input: str = Field(max_length=MAX_INPUT_CHARS)
    voice: str | VoiceId
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    instructions: str | None = None  # accepted for compatibility; Chatterbox has no instructions
    stream_format: Literal["audio", "sse"] = "audio"
    exaggeration: float = Field(0.5, ge=0.0, le=2.0)
    cfg_weight: float = Field(0.5, ge=0.0, le=2.0)
    temperature: float = Field(0.8, gt=0.0, le=5.0)
    seed: int | None = None
    language: str | None = None


class VoicePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    tags: list[str] | None = None
    add_tags: list[str] = []
    remove_tags: list[str] = []


def create_app(db: VoiceDB, settings: ServerSettings | None = None) -> FastAPI:
    """The ASGI app serving ``db``; uvicorn runs it (see ``serve``)."""
    settings = settings or ServerSettings()
    queue = WorkQueue("synthesis", settings.workers, settings.max_waiting, settings.timeout)
    uploads = WorkQueue("upload", settings.upload_workers, settings.max_waiting, settings.timeout)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.preload:
            await run_in_threadpool(db.engine.load_for_synthesis, FLAVOURS[settings.model])
        yield
        for accepted in (queue, uploads):  # finish what was accepted
            await run_in_threadpool(accepted.shutdown)

    app = FastAPI(
        title="voicedb",
        summary="A Chatterbox voice library, with OpenAI's speech API.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes, timeout=settings.timeout)
    if settings.cors_origins:  # browsers may call the API only from origins the operator named
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
        )
    errors.install(app)
    authorised = [Depends(require_api_key(settings.api_key))]

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        """The web page: voices, enrolling, speaking and matching from a browser (``static/``); open to all, the
        API it calls asks for the key."""
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health", tags=["service"])
    def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", tags=["service"])
    def ready(response: Response) -> dict[str, Any]:
        """Readiness: 200 once the speech model is loaded, 503 before; ``matcher``: the speaker encoder(s)
        ``/v1/match`` compares with."""
        matcher = db.matcher()  # what /v1/match compares with (chatterbox alone where CAM++'s weights are missing)
        if not db.engine.ready_for(FLAVOURS[settings.model]):
            response.status_code = 503
            return {"status": "loading", "model": settings.model, "matcher": matcher}
        return {"status": "ready", "model": settings.model, "matcher": matcher}

    # -- OpenAI speech ---------------------------------------------------------------------------
    async def speech(request: SpeechRequest) -> StreamingResponse:
        """Speak ``input`` in a stored voice; the body streams from the first synthesised sentence on."""
        fmt = FORMATS[request.response_format]
        options = SynthesisSettings(
            exaggeration=request.exaggeration,
            cfg_weight=request.cfg_weight,
            temperature=request.temperature,
            max_tokens=settings.max_tokens,
            language=request.language,
        )
        requested = request.voice if isinstance(request.voice, str) else request.voice.id

        def open_stream():
            voice = resolve_voice(db, requested, settings.default_voice)
            flavour = request.model if request.model in FLAVOURS else settings.model  # "tts-1": the server's
            return db.speak_stream(voice, request.input, model=flavour, settings=options, seed=request.seed)

        pieces = queue.stream(open_stream)
        first = await anext(pieces)  # errors before any audio get their status here
        encoder = StreamEncoder(fmt)
        samples = [0]

        def encode(piece: np.ndarray) -> bytes:
            audio = change_speed(piece, request.speed)
            samples[0] += len(audio)
            return encoder.feed(audio)

        async def encoded() -> AsyncIterator[bytes]:
            try:
                piece: np.ndarray | None = first
                while piece is not None:
                    yield await run_in_threadpool(encode, piece)
                    try:
                        piece = await anext(pieces, None)
                    except JobTimeout as exc:  # the status is sent: end the audio where it got to
                        log.warning("speech cut short: %s", exc)
                        piece = None
                yield await run_in_threadpool(encoder.finish)
            finally:
                await pieces.aclose()

        if request.stream_format == "sse":
            events = sse_events(encoded(), len(request.input), lambda: samples[0] / SAMPLE_RATE)
            return StreamingResponse(events, media_type="text/event-stream")
        return StreamingResponse(encoded(), media_type=fmt.media_type)

    for path, documented in (("/v1/audio/speech", True), ("/audio/speech", False)):
        app.post(
            path,
            tags=["openai"],
            response_class=StreamingResponse,
            dependencies=authorised,
            include_in_schema=documented,
        )(speech)

    @app.get("/v1/audio/voices", tags=["openai"], dependencies=authorised)
    def audio_voices() -> dict[str, list[dict[str, str]]]:
        """The stored voices, as Open WebUI and other OpenAI-speech clients list them."""
        return {"voices": [{"id": v.id, "name": v.name} for v in db.list()]}

    @app.get("/v1/audio/models", tags=["openai"], dependencies=authorised)
    def audio_models() -> dict[str, list[dict[str, str]]]:
        """The server's model first, then the other Chatterbox flavours a request may name as its ``model``
        (loaded on first use, if the checkpoint has them), then OpenAI's names (all meaning the server's)."""
        flavours = [settings.model, *(name for name in FLAVOURS if name != settings.model)]
        return {"models": [{"id": name} for name in (*flavours, *OPENAI_MODELS)]}

    @app.get("/v1/models", tags=["openai"], dependencies=authorised)
    def models() -> dict[str, Any]:
        """OpenAI's model list shape."""
        created = int(time.time())
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "voicedb"}
            for name in (settings.model, *OPENAI_MODELS)
        ]
        return {"object": "list", "data": data}

    # -- the library -------------------------------------------------------------------------------
    @app.get("/v1/voices", tags=["voices"], dependencies=authorised)
    def list_voices(
        limit: Annotated[int | None, Query(ge=0, description="At most this many voices.")] = None,
        offset: Annotated[int, Query(ge=0, description="Skip this many voices first.")] = 0,
    ) -> dict[str, list[dict[str, Any]]]:
        return {"voices": [v.to_dict() for v in db.list(limit=limit, offset=offset)]}

    @app.get("/v1/voices/{ref}", tags=["voices"], dependencies=authorised)
    def show_voice(ref: str) -> dict[str, Any]:
        """Everything ``voicedb show`` tells about a voice, by id, name or id prefix."""
        return db.details(ref)

    @app.post("/v1/voices", tags=["voices"], status_code=201, dependencies=authorised)
    async def add_voice(
        file: Annotated[list[UploadFile], File(description="One or more clips of the same speaker.")],
        name: Annotated[str | None, Form()] = None,
        tags: Annotated[str | None, Form(description="Comma-separated tags.")] = None,
        language: Annotated[str | None, Form()] = None,
        dry_run: Annotated[bool, Form(description="Check the clips and return the warnings; enroll nothing.")] = False,
    ) -> dict[str, Any]:
        """Enroll a voice from uploaded clips; quality warnings come back in ``warnings``. With ``dry_run`` the
        clips are only checked (status 201 all the same): what the web page shows before the user confirms."""
        sources = [
            AudioSource(upload.filename or f"upload-{n + 1}", data=await upload.read()) for n, upload in enumerate(file)
        ]
        tag_list = [t.strip() for t in (tags or "").split(",") if t.strip()]
        name = name or Path(sources[0].name).stem  # as the CLI names a voice after its first file
        result = await uploads.run(
            lambda: db.add(sources, name=name, tags=tag_list, language=language, model=settings.model, dry_run=dry_run)
        )
        return result.to_dict()

    @app.patch("/v1/voices/{ref}", tags=["voices"], dependencies=authorised)
    def change_voice(ref: str, patch: VoicePatch) -> dict[str, Any]:
        """Rename a voice and change its tags (``tags`` replaces them; ``add_tags``/``remove_tags`` edit)."""
        voice = db.get(ref)
        if patch.name is not None and patch.name != voice.name:
            voice = db.rename(voice.id, patch.name)
        remove = list(patch.remove_tags)
        add = list(patch.add_tags)
        if patch.tags is not None:
            remove += [t for t in voice.tags if t not in patch.tags]
            add += patch.tags
        if add or remove:
            voice = db.tag(voice.id, add=add, remove=remove)
        return voice.to_dict()

    @app.delete("/v1/voices/{ref}", tags=["voices"], dependencies=authorised)
    def delete_voice(ref: str) -> dict[str, Any]:
        (removed,) = db.remove(ref)
        return {"id": removed.id, "name": removed.name, "deleted": True}

    @app.get("/v1/voices/{ref}/clips/{sha256}", tags=["voices"], dependencies=authorised)
    def voice_clip(ref: str, sha256: str) -> FileResponse:
        """One of the voice's kept reference clips, as it was enrolled (``clip_files`` in the voice lists them)."""
        path = db.clip_file(ref, sha256)
        return FileResponse(path, media_type=CLIP_TYPES.get(path.suffix.lower(), "application/octet-stream"))

    @app.get("/v1/voices/{ref}/similar", tags=["matching"], dependencies=authorised)
    async def similar_voices(ref: str, k: Annotated[int, Query(ge=1, le=100)] = 5) -> dict[str, Any]:
        """The ``k`` other voices most like voice ``ref``, as ``voicedb similar --json``: scored and worded as
        ``/v1/match`` would a clip of it, so "same speaker" marks a likely duplicate."""

        def nearest() -> tuple[Voice, list[Match], Threshold]:
            voice = db.get(ref)
            return voice, db.similar(voice.id, k=k), db.threshold()

        voice, found, applied = await uploads.run(nearest)
        listed = [{**m.to_dict(), "verdict": verdict(m.score, applied.value, applied.rates)} for m in found]
        return {"voice": {"id": voice.id, "name": voice.name}, "similar": listed, **applied.to_dict()}

    @app.get("/v1/voices/{ref}/export", tags=["voices"], dependencies=authorised)
    def export_voice(
        ref: str, bundle: Annotated[bool, Query(description="A whole .voicedb bundle.")] = False
    ) -> Response:
        """The voice's conditionals as upstream's ``.pt`` (``Conditionals.load`` reads it), or a ``.voicedb`` bundle."""
        voice = db.get(ref)
        suffix = ".voicedb" if bundle else ".pt"
        with tempfile.TemporaryDirectory(prefix="voicedb-export-") as scratch:
            written = db.export(voice.id, Path(scratch) / f"voice{suffix}", model=settings.model, bundle=bundle)
            data = written.read_bytes()
        filename = f"{voice.name}{suffix}".encode("ascii", "replace").decode().replace('"', "_")
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    @app.post("/v1/voices/import", tags=["voices"], status_code=201, dependencies=authorised)
    async def import_voice(
        file: Annotated[UploadFile, File(description="A conditionals .pt or a .voicedb bundle.")],
        name: Annotated[str | None, Form()] = None,
    ) -> dict[str, Any]:
        data = await file.read()
        # the client's file name only names the scratch copy, made safe: never a path of ours
        upload = re.sub(r"[^\w.-]", "_", Path(file.filename or "").name)[-100:].lstrip(".") or "upload.pt"

        def import_upload() -> dict[str, Any]:
            with tempfile.TemporaryDirectory(prefix="voicedb-import-") as scratch:
                path = Path(scratch) / upload
                path.write_bytes(data)
                default_name = path.stem if path.suffix.lower() == ".pt" else None
                return db.import_file(path, name=name or default_name, model=settings.model).to_dict()

        return await uploads.run(import_upload)

    # -- matching ----------------------------------------------------------------------------------
    @app.post("/v1/match", tags=["matching"], dependencies=authorised)
    async def match(
        file: Annotated[UploadFile, File(description="A clip of the speaker to look up.")],
        k: Annotated[int, Form(ge=1, le=100)] = 5,
        threshold: Annotated[float | None, Form(ge=-1.0, le=1.0)] = None,
    ) -> dict[str, Any]:
        """``matches``: the voices at or above the threshold, best first, as ``voicedb match --json``;
        ``matched``: whether any did; ``nearest``: the ``k`` nearest whatever their score; each with a
        ``verdict`` in words. ``threshold``: the one given, else the library's (``threshold_source`` says
        which: calibrated, or shipped for its voice encoder)."""
        source = AudioSource(file.filename or "upload", data=await file.read())

        def nearest_and_threshold() -> tuple[list[Match], Threshold]:
            applied = db.threshold(threshold)
            try:
                return db.match(source, k=k, threshold=None), applied
            except NoMatch:  # an empty library
                return [], applied

        nearest, applied = await uploads.run(nearest_and_threshold)
        judged = [{**m.to_dict(), "verdict": verdict(m.score, applied.value, applied.rates)} for m in nearest]
        passed = [m for m, found in zip(judged, nearest, strict=True) if found.score >= applied.value]
        return {
            "matches": passed,
            "matched": bool(passed),
            **applied.to_dict(),
            "nearest": judged,
        }

    return app


def resolve_voice(db: VoiceDB, requested: str, default_voice: str | None) -> str:
    """A stored voice by id, name or prefix; OpenAI's stock names fall back to the default voice."""
    try:
        return db.get(requested).id
    except VoiceNotFound:
        if requested.lower() not in OPENAI_VOICES:
            raise
        if default_voice is None:
            raise VoiceNotFound(
                f"{requested!r} is one of OpenAI's voices; this server has no default voice for them "
                "(start it with --default-voice)."
            ) from None
        return db.get(default_voice).id


async def sse_events(
    encoded: AsyncIterator[bytes], characters: int, seconds: Callable[[], float]
) -> AsyncIterator[bytes]:
    """OpenAI's speech events: ``speech.audio.delta`` with base64 audio, then ``speech.audio.done``
    with ``usage``: characters of input, and speech tokens out at 25 per second of audio."""
    async for data in encoded:
        if data:
            event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
            yield f"data: {json.dumps(event)}\n\n".encode()
    output_tokens = round(seconds() * SPEECH_TOKENS_PER_SECOND)
    usage = {"input_tokens": characters, "output_tokens": output_tokens, "total_tokens": characters + output_tokens}
    yield f"data: {json.dumps({'type': 'speech.audio.done', 'usage': usage})}\n\n".encode()
