"""The synthesis queue: speech runs on worker threads, so the event loop keeps serving uploads,
listings and matches while voices speak; when the queue is full, requests are turned away at once.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_DONE = object()


class QueueFull(Exception):
    """Every worker is busy and ``max_waiting`` requests already wait: come back in ``retry_after`` s."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the synthesis queue is full; retry in {retry_after} s.")
        self.retry_after = retry_after


class SynthesisQueue:
    """At most ``workers`` syntheses run at once and ``max_waiting`` more wait for a worker.

    The engine samples one chunk at a time anyway, so one worker is the default; more workers only
    let several requests take turns chunk by chunk.
    """

    def __init__(self, workers: int = 1, max_waiting: int = 16) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="voicedb-synthesis")
        self._workers = workers
        self._capacity = workers + max_waiting
        self._lock = threading.Lock()
        self._accepted = 0
        self._recent_seconds = 2.0  # moving average of a job's duration, for Retry-After

    def _admit(self) -> None:
        with self._lock:
            if self._accepted >= self._capacity:
                waits = self._accepted / self._workers
                raise QueueFull(max(1, math.ceil(self._recent_seconds * waits)))
            self._accepted += 1

    def _release(self, started: float) -> None:
        with self._lock:
            self._accepted -= 1
            self._recent_seconds = 0.8 * self._recent_seconds + 0.2 * (time.monotonic() - started)

    async def stream(self, open_stream: Callable[[], Iterator[np.ndarray]]) -> AsyncIterator[np.ndarray]:
        """Run ``open_stream()`` on a worker and yield its pieces as they come.

        ``QueueFull`` is raised before anything runs. Errors from the worker are raised here. When
        the consumer stops early (a client went away) the worker stops after the current piece.
        """
        self._admit()
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()

        def work() -> None:
            started = time.monotonic()
            try:
                stream = open_stream()
                try:
                    for piece in stream:
                        loop.call_soon_threadsafe(pieces.put_nowait, piece)
                        if stop.is_set():
                            break
                finally:
                    close = getattr(stream, "close", None)
                    if close:
                        close()
                loop.call_soon_threadsafe(pieces.put_nowait, _DONE)
            except BaseException as exc:  # noqa: BLE001 - handed to the request that asked
                loop.call_soon_threadsafe(pieces.put_nowait, exc)
            finally:
                self._release(started)

        try:
            self._executor.submit(work)
        except RuntimeError:  # shutting down: the job never ran, so it does not count towards the average
            with self._lock:
                self._accepted -= 1
            raise QueueFull(5) from None
        try:
            while True:
                item = await pieces.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            stop.set()

    def shutdown(self) -> None:
        """Finish the jobs already accepted, then stop the workers."""
        self._executor.shutdown(wait=True)
