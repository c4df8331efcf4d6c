"""The HTTP API: OpenAI's speech endpoints, the voice library, and matching, over one shared ``VoiceDB``.

Every request reads the library afresh, so voices added, renamed or removed by the CLI while the
server runs are seen by the next request. Model work runs off the event loop, on bounded queues
of its own: synthesis on one, uploads (enrollment, imports) and matches on another, so neither can
starve the other.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.metadata
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
from fastapi import Body, Depends, FastAPI, File, Form, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..audio import AudioSource
from ..batching import Batcher
from ..blends import is_blend
from ..calibration import verdict
from ..encoding import FORMATS, SAMPLE_RATE, StreamEncoder, change_speed
from ..errors import AmbiguousVoice, InvalidBlend, NameTaken, NoClips, NoMatch, VoiceDBError, VoiceNotFound
from ..flavours import FLAVOURS, LANGUAGE_NAMES, SynthesisSettings
from ..library import VoiceDB
from ..records import Match, Threshold, Voice
from ..streaming import SPEECH_TOKENS_PER_SECOND, TokenWindows
from . import errors
from .errors import about, not_offered
from .jobs import JobTimeout, WorkQueue
from .limits import BodyLimit, require_api_key
from .paths import TravisvnPaths

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
    #: Answer the voice and model listings without the API key (Open WebUI lists them without one).
    open_listings: bool = False
    #: Speech tokens S3Gen renders at a time while T3 generates (None: each sentence chunk whole).
    windows: TokenWindows | None = TokenWindows()
    #: Speech requests decoded together (``voicedb.batching``); 1: one at a time.
    max_batch: int = 8


class VoiceId(BaseModel):
    id: str


class SpeechRequest(BaseModel):
    """OpenAI's ``audio.speech.create`` body, plus the sampling options Chatterbox clients send."""

    model_config = ConfigDict(extra="ignore")

    #: An OpenAI name (the server's model) or a Chatterbox flavour (``english``, ``multilingual``, ``turbo``).
    model: str = "tts-1"
    input: str = Field(max_length=MAX_INPUT_CHARS)
    #: A voice's id, name, alias or id prefix, a blend (``a(2)+b(1)``), or OpenAI's stock names; none: the
    #: server's default voice.
    voice: str | VoiceId | None = None
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    instructions: str | None = None  # accepted for compatibility; Chatterbox has no instructions
    stream_format: Literal["audio", "sse"] = "audio"
    exaggeration: float = Field(0.5, ge=0.0, le=2.0)
    cfg_weight: float = Field(0.5, ge=0.0, le=2.0)
    temperature: float = Field(0.8, gt=0.0, le=5.0)
    seed: int | None = None
    language: str | None = None

    @field_validator("input")
    @classmethod
    def _something_to_say(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("there is no text to speak")
        return text

    @property
    def requested_voice(self) -> str | None:
        return self.voice.id if isinstance(self.voice, VoiceId) else self.voice


class CombineRequest(BaseModel):
    """voicedb's own body for ``/v1/audio/voices/combine``: the blend, its name and tags."""

    model_config = ConfigDict(extra="forbid")

    voices: str | list[str]
    name: str | None = None
    tags: list[str] = []


class VoicePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    tags: list[str] | None = None
    add_tags: list[str] = []
    remove_tags: list[str] = []


def create_app(db: VoiceDB, settings: ServerSettings | None = None) -> FastAPI:
    """The ASGI app serving ``db``; uvicorn runs it (see ``serve``)."""
    settings = settings or ServerSettings()
    # with batching, up to max_batch speech requests run at once, in the batcher's batches
    batcher = Batcher(db.engine, settings.max_batch) if settings.max_batch > 1 else None
    queue = WorkQueue("synthesis", max(settings.workers, settings.max_batch), settings.max_waiting, settings.timeout)
    uploads = WorkQueue("upload", settings.upload_workers, settings.max_waiting, settings.timeout)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.preload:
            await run_in_threadpool(db.engine.load_for_synthesis, FLAVOURS[settings.model])
        yield
        for accepted in (queue, uploads):  # finish what was accepted
            await run_in_threadpool(accepted.shutdown)
        if batcher is not None:
            await run_in_threadpool(batcher.close)

    app = FastAPI(
        title="voicedb",
        summary="A Chatterbox voice library, with OpenAI's speech API.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes, timeout=settings.timeout)
    app.add_middleware(TravisvnPaths)
    if settings.cors_origins:  # browsers may call the API only from origins the operator named
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
        )
    errors.install(app)
    authorised = [Depends(require_api_key(settings.api_key))]
    listing = [] if settings.open_listings else authorised  # Open WebUI lists voices and models without a key

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

    @app.get("/ping", tags=["travisvn"])
    def ping() -> dict[str, str]:
        return {"status": "ok", "message": "Server is running"}

    @app.get("/status", tags=["travisvn"], dependencies=authorised)
    @app.get("/v1/status", tags=["travisvn"], dependencies=authorised, include_in_schema=False)
    def status() -> dict[str, Any]:
        """What the synthesiser is doing: speech requests running and waiting (travisvn's ``is_processing``)."""
        running, waiting = queue.load()
        loaded = db.engine.ready_for(FLAVOURS[settings.model])
        return {
            "status": "processing" if running else "idle",
            "is_processing": bool(running),
            "model": settings.model,
            "model_loaded": loaded,
            "speech_requests": {"running": running, "waiting": waiting, "max_waiting": settings.max_waiting},
        }

    @app.get("/status/progress", tags=["travisvn"], dependencies=authorised)
    def progress() -> dict[str, Any]:
        running, waiting = queue.load()
        state = "processing" if running else "idle"
        return {"is_processing": bool(running), "status": state, "waiting": waiting}

    @app.get("/config", tags=["travisvn"], dependencies=authorised)
    @app.get("/v1/config", tags=["travisvn"], dependencies=authorised, include_in_schema=False)
    def server_config() -> dict[str, Any]:
        """How this server was started: model, defaults, limits (no secrets)."""
        return {
            "api_info": {"name": "voicedb", "version": importlib.metadata.version("voicedb"), "api_version": "v1"},
            "model": {"name": settings.model, "flavours": list(FLAVOURS), "matcher": db.matcher()},
            "defaults": {
                "voice": settings.default_voice,
                "response_format": "mp3",
                **{key: getattr(SynthesisSettings(), key) for key in ("exaggeration", "cfg_weight", "temperature")},
                "max_tokens": settings.max_tokens,
            },
            "limits": {
                "max_input_chars": MAX_INPUT_CHARS,
                "max_upload_bytes": settings.max_upload_bytes,
                "max_waiting": settings.max_waiting,
                "timeout_s": settings.timeout,
            },
            "auth": {"api_key_required": settings.api_key is not None, "open_listings": settings.open_listings},
        }

    @app.get("/languages", tags=["travisvn"], dependencies=listing)
    @app.get("/v1/languages", tags=["travisvn"], dependencies=listing, include_in_schema=False)
    def supported_languages() -> dict[str, Any]:
        """The languages the server's model speaks (``language`` in speech requests); the multilingual model's
        when a request names it as ``model``."""
        multilingual = FLAVOURS[settings.model].multilingual
        codes = sorted(LANGUAGE_NAMES) if multilingual else ["en"]
        return {
            "languages": [{"code": code, "name": LANGUAGE_NAMES[code]} for code in codes],
            "count": len(codes),
            "model_type": "multilingual" if multilingual else "standard",
        }

    for path, methods, instead in (
        ("/status/history", ["GET"], "GET /status says what runs now; the server's log has the history."),
        ("/status/history/clear", ["POST"], "nothing is kept to clear."),
        ("/status/statistics", ["GET"], "GET /status says what runs now."),
        ("/info", ["GET"], "GET /config and GET /status say how it runs."),
        ("/endpoints", ["GET"], "GET /docs lists every endpoint."),
        ("/v1/voices/cleanup", ["POST"], "run `voicedb check --repair` on the library."),
        ("/memory{rest:path}", ["GET", "POST"], "the server's log and GET /status say how it runs."),
        (
            "/v1/audio/speech/long{rest:path}",
            ["GET", "POST", "PUT", "DELETE"],
            "POST /v1/audio/speech streams text of any length (up to 4,096 characters) sentence by sentence.",
        ),
    ):
        app.api_route(path, methods=methods, include_in_schema=False, dependencies=authorised)(
            refusal(f"travisvn's {path.replace('{rest:path}', '*')}", instead)
        )

    # -- OpenAI speech ---------------------------------------------------------------------------
    async def spoken(request: SpeechRequest, reference: AudioSource | None = None) -> StreamingResponse:
        """Speak ``input`` in a stored voice (or a blend, or the one-off ``reference`` clip); the body streams
        from the first synthesised sentence on."""
        fmt = FORMATS[request.response_format]
        options = SynthesisSettings(
            exaggeration=request.exaggeration,
            cfg_weight=request.cfg_weight,
            temperature=request.temperature,
            max_tokens=settings.max_tokens,
            language=request.language,
            windows=settings.windows,
        )

        def open_stream():
            flavour = request.model if request.model in FLAVOURS else settings.model  # "tts-1": the server's
            if reference is not None:
                with about("voice_file"):
                    return db.speak_stream(
                        None,
                        request.input,
                        model=flavour,
                        settings=options,
                        seed=request.seed,
                        reference=reference,
                        batcher=batcher,
                    )
            with about("voice"):
                voice = resolve_voice(db, request.requested_voice, settings.default_voice)
            with about("voice", VoiceNotFound, AmbiguousVoice, NoClips, InvalidBlend):
                return db.speak_stream(
                    voice, request.input, model=flavour, settings=options, seed=request.seed, batcher=batcher
                )

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

    async def speech(request: SpeechRequest) -> StreamingResponse:
        """OpenAI's ``audio.speech.create``."""
        return await spoken(request)

    for path, documented in (("/v1/audio/speech", True), ("/audio/speech", False)):
        app.post(
            path,
            tags=["openai"],
            response_class=StreamingResponse,
            dependencies=authorised,
            include_in_schema=documented,
        )(speech)

    @app.post("/v1/audio/speech/stream", tags=["travisvn"], response_class=StreamingResponse, dependencies=authorised)
    async def speech_stream(request: Request) -> StreamingResponse:
        """travisvn's streaming speech: the JSON body of ``/v1/audio/speech``, WAV unless ``response_format``
        says otherwise (every speech response here streams)."""
        return await spoken(speech_request(await json_body(request), default_format="wav"))

    async def speech_upload(request: Request) -> StreamingResponse:
        """travisvn's speech with a one-off voice: multipart text fields as ``/v1/audio/speech``'s body, plus
        ``voice_file``, a clip spoken with as it is, enrolled nowhere (without one, ``voice`` is used)."""
        form = await request.form()
        clip = form.get("voice_file")
        fields = {key: value for key, value in form.multi_items() if isinstance(value, str) and value != ""}
        body = speech_request(fields, default_format="wav")
        reference = None
        if clip is not None and not isinstance(clip, str):
            reference = AudioSource(clip.filename or "voice_file", data=await clip.read())
        return await spoken(body, reference)

    for path in ("/v1/audio/speech/upload", "/v1/audio/speech/stream/upload"):
        app.post(path, tags=["travisvn"], response_class=StreamingResponse, dependencies=authorised)(speech_upload)

    @app.get("/v1/audio/voices", tags=["openai"], dependencies=listing)
    def audio_voices() -> dict[str, list[dict[str, str]]]:
        """The stored voices, then their aliases (each as the voice it names), as Open WebUI and other
        OpenAI-speech clients list them: ``id`` is what a request sends as ``voice``."""
        voices = [{"id": v.id, "name": v.name} for v in db.list()]
        aliases = [{"id": alias, "name": f"{alias} ({v.name})"} for alias, v in db.aliases().items()]
        return {"voices": voices + aliases}

    @app.get("/v1/audio/models", tags=["openai"], dependencies=listing)
    def audio_models() -> dict[str, list[dict[str, str]]]:
        """The server's model first, then the other Chatterbox flavours a request may name as its ``model``
        (loaded on first use, if the checkpoint has them), then OpenAI's names (all meaning the server's)."""
        flavours = [settings.model, *(name for name in FLAVOURS if name != settings.model)]
        return {"models": [{"id": name} for name in (*flavours, *OPENAI_MODELS)]}

    @app.get("/v1/models", tags=["openai"], dependencies=listing)
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
    ) -> dict[str, Any]:
        voices = [v.to_dict() for v in db.list(limit=limit, offset=offset)]
        return {"voices": voices, "count": len(voices)}

    @app.get("/v1/voices/default", tags=["travisvn"], dependencies=authorised)
    def default_voice() -> dict[str, Any]:
        """The voice requests without ``voice`` (and OpenAI's stock names without an alias) speak with."""
        chosen = db.get(settings.default_voice).to_dict() if settings.default_voice else None
        return {
            "default_voice": chosen["name"] if chosen else None,
            "voice_info": chosen,
            "source": "voicedb serve --default-voice" if chosen else None,
        }

    @app.api_route("/v1/voices/default", methods=["POST", "DELETE"], include_in_schema=False, dependencies=authorised)
    def change_default_voice() -> None:
        raise not_offered(
            "changing the default voice while it runs",
            "start it with `voicedb serve --default-voice NAME`, "
            "or map stock names with `voicedb alias add NAME alloy`.",
        )

    @app.get("/v1/voices/{ref}", tags=["voices"], dependencies=authorised)
    def show_voice(ref: str) -> dict[str, Any]:
        """Everything ``voicedb show`` tells about a voice, by id, name or id prefix."""
        return db.details(ref)

    @app.post("/v1/voices", tags=["voices"], status_code=201, dependencies=authorised)
    async def add_voice(
        file: Annotated[list[UploadFile] | None, File(description="One or more clips of the same speaker.")] = None,
        name: Annotated[str | None, Form()] = None,
        tags: Annotated[str | None, Form(description="Comma-separated tags.")] = None,
        language: Annotated[str | None, Form()] = None,
        dry_run: Annotated[bool, Form(description="Check the clips and return the warnings; enroll nothing.")] = False,
        voice_file: Annotated[list[UploadFile] | None, File(description="travisvn's name for `file`.")] = None,
        voice_name: Annotated[str | None, Form(description="travisvn's name for `name`.")] = None,
    ) -> dict[str, Any]:
        """Enroll a voice from uploaded clips; quality warnings come back in ``warnings``. With ``dry_run`` the
        clips are only checked (status 201 all the same): what the web page shows before the user confirms.
        travisvn's fields (``voice_file``, ``voice_name``) are taken too."""
        uploaded = [*(file or []), *(voice_file or [])]
        if not uploaded:
            raise errors.APIError(
                400, "send one or more clips as `file`.", "invalid_request_error", "invalid_value", param="file"
            )
        sources = [
            AudioSource(upload.filename or f"upload-{n + 1}", data=await upload.read())
            for n, upload in enumerate(uploaded)
        ]
        tag_list = [t.strip() for t in (tags or "").split(",") if t.strip()]
        name = name or voice_name or Path(sources[0].name).stem  # as the CLI names a voice after its first file
        with about("name", NameTaken):
            result = await uploads.run(
                lambda: db.add(
                    sources, name=name, tags=tag_list, language=language, model=settings.model, dry_run=dry_run
                )
            )
        voice = result.voice
        summary = {
            "name": voice.name,
            "id": voice.id,
            "language": voice.language,
            "upload_date": voice.created_at.isoformat(),
        }
        message = f"{'checked' if dry_run else 'enrolled'} {voice.name} ({len(result.clips_added)} clips)"
        return {**result.to_dict(), "message": message, "voice": summary}

    @app.put("/v1/voices/{ref}", tags=["travisvn"], dependencies=authorised)
    def rename_voice(ref: str, new_name: Annotated[str, Form()]) -> dict[str, Any]:
        """travisvn's rename: form field ``new_name``."""
        old = db.get(ref)
        with about("new_name", NameTaken):
            voice = db.rename(old.id, new_name)
        message = f"renamed {old.name} to {voice.name}"
        return {"message": message, "old_name": old.name, "new_name": voice.name, "voice": voice.to_dict()}

    @app.get("/v1/voices/{ref}/download", tags=["travisvn"], dependencies=authorised)
    def download_voice(ref: str) -> FileResponse:
        """The voice's first kept reference clip (travisvn's voice download)."""
        details = db.details(ref)
        if not details["clip_files"]:
            raise VoiceNotFound(
                f"voice {details['id']} has no kept clips (it was imported); GET /v1/voices/{details['id']}/export "
                "gives its conditionals."
            )
        return voice_clip(details["id"], details["clip_files"][0]["sha256"])

    @app.get("/v1/aliases", tags=["voices"], dependencies=authorised)
    def list_aliases() -> dict[str, Any]:
        """Every alias and the voice it names, as ``voicedb alias list --json``."""
        return {"aliases": [{"alias": a, "id": v.id, "name": v.name} for a, v in db.aliases().items()]}

    def aliases_of(voice: Voice, message: str, alias: str | None = None) -> dict[str, Any]:
        found = {"voice_name": voice.name, "id": voice.id, "aliases": voice.aliases, "count": len(voice.aliases)}
        return {"message": message, **found, **({"alias": alias} if alias else {})}

    @app.get("/v1/voices/{ref}/aliases", tags=["voices"], dependencies=authorised)
    def voice_aliases(ref: str) -> dict[str, Any]:
        voice = db.get(ref)
        return aliases_of(voice, f"{voice.name} has {len(voice.aliases)} aliases")

    @app.post("/v1/voices/{ref}/aliases", tags=["voices"], status_code=201, dependencies=authorised)
    def add_alias(ref: str, alias: Annotated[str, Form(description="The other name, e.g. alloy.")]) -> dict[str, Any]:
        """Let a voice answer to ``alias`` too (as ``voicedb alias add``); 409 where it is a voice's name."""
        with about("alias", NameTaken, VoiceDBError):
            voice = db.alias(alias, ref)
        return aliases_of(voice, f"{alias} now names {voice.name}", alias.strip())

    @app.delete("/v1/voices/{ref}/aliases/{alias}", tags=["voices"], dependencies=authorised)
    def remove_alias(ref: str, alias: str) -> dict[str, Any]:
        voice = db.get(ref)
        if alias not in voice.aliases:
            raise VoiceNotFound(f"voice {voice.name} has no alias {alias!r}.")
        voice = db.unalias(alias)
        return aliases_of(voice, f"removed alias {alias} of {voice.name}", alias)

    @app.post("/v1/audio/voices/combine", tags=["voices"], dependencies=authorised)
    async def combine_voices(
        body: Annotated[
            str | list[str] | CombineRequest, Body(description='"a+b", ["a", "b"], or {"voices", "name", "tags"}.')
        ],
    ) -> Response:
        """Store a blend as a voice. Kokoro-FastAPI's bodies (``"a(2)+b(1)"`` or a list of voices, named after
        the blend) get its answer, the blend's conditionals as a ``.pt`` download; voicedb's object body
        (with ``name``) gets the new voice as JSON, 201."""
        ours = isinstance(body, CombineRequest)
        voices = body.voices if ours else body
        spec = voices if isinstance(voices, str) else "+".join(voices)
        name = (body.name if ours else None) or spec.replace(" ", "")
        tags = body.tags if ours else []

        def store() -> Voice:
            try:
                return db.blend(spec, name=name, tags=tags)
            except NameTaken:
                existing = db.get(name)  # Kokoro's clients combine the same voices again: the same blend
                if ours or existing.blend is None:
                    raise
                return existing

        with about("voices", VoiceDBError):
            voice = await uploads.run(store)
        if ours:
            return JSONResponse(voice.to_dict(), status_code=201)
        model = settings.model if settings.model in voice.models else voice.models[0]
        with tempfile.TemporaryDirectory(prefix="voicedb-export-") as scratch:
            data = db.export(voice.id, Path(scratch) / "voice.pt", model=model).read_bytes()
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{safe_filename(voice.name)}.pt"'},
        )

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
        message = f"deleted voice {removed.name}"  # message and voice_name: travisvn's shape
        return {"id": removed.id, "name": removed.name, "deleted": True, "message": message, "voice_name": removed.name}

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
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{safe_filename(voice.name)}{suffix}"'},
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


def resolve_voice(db: VoiceDB, requested: str | None, default_voice: str | None) -> str:
    """A stored voice by id, name, alias or prefix, or a blend spec as it is; no voice, or one of OpenAI's stock
    names that no alias claims, means the default voice."""
    if requested is None or not requested.strip():
        if default_voice is None:
            raise VoiceDBError(
                "no voice given and this server has no default voice: send `voice`, or start the server with "
                "--default-voice NAME."
            )
        return db.get(default_voice).id
    try:
        return db.get(requested).id
    except VoiceNotFound:
        if is_blend(requested):
            return requested  # speak_stream blends the voices it names
        if requested.lower() not in OPENAI_VOICES:
            raise
        if default_voice is None:
            raise VoiceNotFound(
                f"{requested!r} is one of OpenAI's voices; this server has no default voice for them "
                "(start it with --default-voice)."
            ) from None
        return db.get(default_voice).id


def speech_request(fields: Any, default_format: str) -> SpeechRequest:
    """A speech body that did not come through FastAPI's parsing (a form, travisvn's WAV default), validated
    the same way and failing with the same 400."""
    if isinstance(fields, dict):
        fields = {"response_format": default_format, **fields}
    try:
        return SpeechRequest.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


async def json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise errors.APIError(400, "the body is not JSON.", "invalid_request_error", "invalid_json") from None


def safe_filename(name: str) -> str:
    """A voice name fit for a Content-Disposition header."""
    return name.encode("ascii", "replace").decode().replace('"', "_")


def refusal(what: str, instead: str) -> Callable[[], None]:
    """An endpoint answering that this server does not offer ``what`` (another server's), and what to use."""

    def refuse() -> None:
        raise not_offered(what, instead)

    return refuse


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
