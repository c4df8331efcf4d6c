"""``voicedb serve``: the library as a warm HTTP service speaking OpenAI's speech API.

============  ================================================================
``app``       routes: OpenAI speech, voices, matching, health; ``create_app``
``encoding``  response formats, encoded in-process as audio arrives
``jobs``      the bounded synthesis queue off the event loop
``limits``    API key and request-size checks
``errors``    every failure as OpenAI's ``{"error": ...}`` with its status
============  ================================================================
"""

from __future__ import annotations

from .app import ServerSettings, create_app

__all__ = ["ServerSettings", "create_app", "serve"]


def serve(db, settings: ServerSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the server until interrupted; on SIGTERM/SIGINT in-flight requests finish first."""
    import uvicorn

    uvicorn.run(
        create_app(db, settings),
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=120,
    )
