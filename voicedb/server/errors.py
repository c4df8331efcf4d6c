"""Errors as OpenAI's clients read them: ``{"error": {"message", "type", "code"}}`` with the right status.

Every ``VoiceDBError`` already carries a one-line message for its user; here it gets a status. Any
other exception is a bug: its traceback goes to the server's log, never into a response.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    AmbiguousVoice,
    CheckpointError,
    DuplicateClip,
    ImportRejected,
    LibraryError,
    NameTaken,
    NotAudio,
    VoiceDBError,
    VoiceNotFound,
)
from .jobs import JobTimeout, QueueFull

log = logging.getLogger("voicedb.server")

#: (status, type, code) by error class; the first class that fits wins, so subclasses come first.
STATUSES: list[tuple[type[VoiceDBError], int, str, str]] = [
    (VoiceNotFound, 404, "not_found_error", "voice_not_found"),
    (AmbiguousVoice, 400, "invalid_request_error", "ambiguous_voice"),
    (NameTaken, 409, "conflict_error", "name_taken"),
    (DuplicateClip, 409, "conflict_error", "clip_already_enrolled"),
    (NotAudio, 415, "invalid_request_error", "unsupported_media_type"),
    (ImportRejected, 400, "invalid_request_error", "import_rejected"),
    (CheckpointError, 503, "server_error", "model_unavailable"),
    (LibraryError, 500, "server_error", "library_error"),
    (VoiceDBError, 400, "invalid_request_error", "invalid_request"),
]


class APIError(Exception):
    """An error the server itself decides on (auth, size limits, endpoints it does not offer), in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        code: str,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ):
        super().__init__(message)
        self.status, self.type, self.code, self.headers, self.param = status, type_, code, headers or {}, param


def error_response(
    status: int,
    message: str,
    type_: str,
    code: str | None,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> JSONResponse:
    """OpenAI's error body; ``param`` names the request field at fault, where one is."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


@contextlib.contextmanager
def about(param: str, *kinds: type[VoiceDBError]) -> Iterator[None]:
    """Library errors raised inside (of ``kinds``, default all) blame the request field ``param``."""
    try:
        yield
    except VoiceDBError as exc:
        if isinstance(exc, kinds or (VoiceDBError,)) and getattr(exc, "param", None) is None:
            exc.param = param  # type: ignore[attr-defined]
        raise


def not_offered(what: str, instead: str) -> APIError:
    """A 501 for an endpoint other servers have and this one does not, saying what to use instead."""
    return APIError(501, f"voicedb serve does not offer {what}; {instead}", "invalid_request_error", "not_supported")


#: An absolute path in a message: its directories are the server's business, its file name is the client's.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:[^\s/:'\"]+/)+(?=[^\s/:'\"])")


def public_message(message: str) -> str:
    """A library message fit for a client: absolute paths shortened to their file names."""
    return _ABSOLUTE_PATH.sub("", message)


def voicedb_error_response(exc: VoiceDBError) -> JSONResponse:
    status, type_, code = next((s, t, c) for cls, s, t, c in STATUSES if isinstance(exc, cls))
    return error_response(status, public_message(str(exc)), type_, code, param=getattr(exc, "param", None))


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into OpenAI's error shape."""

    @app.exception_handler(VoiceDBError)
    async def library_error(_request: Request, exc: VoiceDBError) -> JSONResponse:
        return voicedb_error_response(exc)

    @app.exception_handler(APIError)
    async def api_error(_request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, str(exc), exc.type, exc.code, exc.headers, exc.param)

    @app.exception_handler(QueueFull)
    async def queue_full(_request: Request, exc: QueueFull) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)}
        return error_response(503, str(exc), "server_error", "queue_full", headers)

    @app.exception_handler(JobTimeout)
    async def job_timeout(_request: Request, exc: JobTimeout) -> JSONResponse:
        return error_response(504, str(exc), "server_error", "timeout")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":  # its location is a character offset, not a field
            said = first.get("ctx", {}).get("error", "")
            message = f"the body is not valid JSON{f' ({said})' if said else ''}."
            return error_response(400, message, "invalid_request_error", "invalid_json")
        where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path"))
        said = first.get("msg", "invalid value").removeprefix("Value error, ")
        message = f"{where}: {said}" if where else said
        param = where.split(".")[0] or None  # the top-level field, as OpenAI names it
        return error_response(400, message, "invalid_request_error", "invalid_value", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(exc.status_code, str(exc.detail), type_, None, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal server error; the server's log has the details.", "server_error", None)
