"""travisvn/chatterbox-tts-api's paths, routed to this server's.

Its primary paths carry no ``/v1`` (``/voices``, ``/audio/speech/upload``, ``/models``) and it answers to
more names besides (``/tts``, ``/voice-library``, ``/v1/health``...), where voicedb keeps one path per
endpoint under ``/v1`` (OpenAI's layout). Its clients call whichever their version documents, so each
alias is rewritten to voicedb's path before routing; the schema at ``/docs`` lists voicedb's only.
"""

from __future__ import annotations

from urllib.parse import quote

from starlette.types import ASGIApp, Receive, Scope, Send

#: (travisvn's path or path prefix, voicedb's). A prefix ending in "/" maps every path below it; any other
#: maps itself and the paths below it. Longer prefixes first.
ALIASES = (
    ("/audio/speech/", "/v1/audio/speech/"),
    ("/audio/voices", "/v1/audio/voices"),
    ("/processing/status", "/status"),
    ("/voice-library", "/v1/voices"),
    ("/voice_library", "/v1/voices"),
    ("/default-voice", "/v1/voices/default"),
    ("/v1/endpoints", "/endpoints"),
    ("/v1/status/", "/status/"),
    ("/v1/health", "/health"),
    ("/v1/memory", "/memory"),
    ("/processing", "/status"),
    ("/progress", "/status/progress"),
    ("/api/info", "/info"),
    ("/history", "/status/history"),
    ("/v1/info", "/info"),
    ("/v1/ping", "/ping"),
    ("/routes", "/endpoints"),
    ("/voices", "/v1/voices"),
    ("/models", "/v1/models"),
    ("/stats", "/status/statistics"),
    ("/tts", "/v1/audio/speech"),
)


def voicedb_path(path: str) -> str:
    """Where ``path`` (travisvn's) lives here; ``path`` itself where it is not one of travisvn's aliases."""
    for alias, target in ALIASES:
        below = alias if alias.endswith("/") else alias + "/"
        if path == alias or path.startswith(below):
            return target + path[len(alias) :]
    return path


class TravisvnPaths:
    """ASGI middleware: requests to travisvn's paths are routed as if sent to voicedb's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = voicedb_path(scope["path"])
            if path != scope["path"]:
                scope = {**scope, "path": path, "raw_path": quote(path).encode()}
        await self.app(scope, receive, send)
