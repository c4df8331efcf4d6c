"""What a request must satisfy before any work: the API key, and a body of bounded size that arrives
in bounded time."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError, error_response


def require_api_key(api_key: str | None) -> Callable[[Request], None]:
    """A dependency that refuses requests without ``Authorization: Bearer <api_key>`` (none when unset)."""

    def check(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise APIError(
                401,
                "missing or wrong API key: send Authorization: Bearer <key>.",
                "authentication_error",
                "invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413: by ``Content-Length`` before reading, and by
    counting as it streams in (chunked uploads), so no upload can fill memory or disk; and bodies
    still arriving after ``timeout`` seconds with 408, so no slow client holds a connection forever."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen = 0
        refused = False
        arriving = True  # until the last body chunk; afterwards receive() only waits for a disconnect
        deadline = None if self.timeout is None else time.monotonic() + self.timeout

        async def counted_receive() -> Message:
            nonlocal seen, refused, arriving
            if refused:
                return {"type": "http.disconnect"}
            if not arriving or deadline is None:
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    refused = True
                    await self._too_slow(scope, receive, send)
                    return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                arriving = message.get("more_body", False)
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # answer now; the app reads a disconnect and whatever it sends is dropped
                    refused = True
                    await self._refuse(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted_receive, guarded_send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        megabytes = self.max_bytes / (1024 * 1024)
        response = error_response(
            413,
            f"the request body is over the {megabytes:g} MB limit (voicedb serve --max-upload-mb).",
            "invalid_request_error",
            "request_too_large",
        )
        await response(scope, receive, send)

    async def _too_slow(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            408,
            f"the request body took longer than {self.timeout:g} s to arrive (voicedb serve --timeout).",
            "invalid_request_error",
            "request_timeout",
        )
        await response(scope, receive, send)
