"""Bounded work queues: model work runs on worker threads, so the event loop keeps serving while
voices speak, and each kind of work has its own workers, so uploads and matches cannot starve
synthesis. When a queue is full, requests are turned away at once; a job past its time limit is
answered 504.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

_DONE = object()
Result = TypeVar("Result")


class QueueFull(Exception):
    """Every worker is busy and ``max_waiting`` requests already wait: come back in ``retry_after`` s."""

    def __init__(self, kind: str, retry_after: int) -> None:
        super().__init__(f"the {kind} queue is full; retry in {retry_after} s.")
        self.retry_after = retry_after


class JobTimeout(Exception):
    """A job waited and ran longer than the server's time limit."""

    def __init__(self, kind: str, seconds: float) -> None:
        super().__init__(f"the {kind} took longer than the server's {seconds:g} s limit (voicedb serve --timeout).")


class WorkQueue:
    """At most ``workers`` jobs of one kind run at once and ``max_waiting`` more wait for a worker;
    each may take ``timeout`` seconds from the moment it is accepted.

    A job past its time limit is answered 504 at once, but keeps its worker until it ends (Python
    cannot stop a thread), so abandoned work never piles up beyond ``workers``.
    """

    def __init__(self, kind: str, workers: int = 1, max_waiting: int = 16, timeout: float | None = None) -> None:
        self.kind = kind
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"voicedb-{kind}")
        self._workers = workers
        self._capacity = workers + max_waiting
        self._lock = threading.Lock()
        self._accepted = 0
        self._recent_seconds = 2.0  # moving average of a job's duration, for Retry-After

    def load(self) -> tuple[int, int]:
        """Jobs (running, waiting) now."""
        with self._lock:
            return min(self._accepted, self._workers), max(0, self._accepted - self._workers)

    def _admit(self) -> float | None:
        """Count the job in, or raise ``QueueFull``; its deadline on the loop's clock."""
        with self._lock:
            if self._accepted >= self._capacity:
                waits = self._accepted / self._workers
                raise QueueFull(self.kind, max(1, math.ceil(self._recent_seconds * waits)))
            self._accepted += 1
        return None if self.timeout is None else time.monotonic() + self.timeout

    def _release(self, started: float) -> None:
        with self._lock:
            self._accepted -= 1
            self._recent_seconds = 0.8 * self._recent_seconds + 0.2 * (time.monotonic() - started)

    def _submit(self, work: Callable[[], None]) -> None:
        try:
            self._executor.submit(work)
        except RuntimeError:  # shutting down: the job never ran, so it does not count towards the average
            with self._lock:
                self._accepted -= 1
            raise QueueFull(self.kind, 5) from None

    async def _within(self, deadline: float | None, waiting: asyncio.Future | asyncio.Task) -> object:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return await asyncio.wait_for(waiting, remaining)
        except TimeoutError:
            raise JobTimeout(self.kind, self.timeout or 0.0) from None

    async def run(self, job: Callable[[], Result]) -> Result:
        """``job()`` on a worker; its result, or its error raised here."""
        deadline = self._admit()
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[Result] = loop.create_future()

        def settle(result: Result | None, error: BaseException | None) -> None:
            if outcome.done():  # timed out meanwhile: nobody is waiting
                return
            if error is not None:
                outcome.set_exception(error)
            else:
                outcome.set_result(result)  # type: ignore[arg-type]

        def work() -> None:
            started = time.monotonic()
            try:
                result = job()
            except BaseException as exc:  # noqa: BLE001 - handed to the request that asked
                loop.call_soon_threadsafe(settle, None, exc)
            else:
                loop.call_soon_threadsafe(settle, result, None)
            finally:
                self._release(started)

        self._submit(work)
        return await self._within(deadline, outcome)  # type: ignore[return-value]

    async def stream(self, open_stream: Callable[[], Iterator[np.ndarray]]) -> AsyncIterator[np.ndarray]:
        """Run ``open_stream()`` on a worker and yield its pieces as they come.

        ``QueueFull`` is raised before anything runs. Errors from the worker are raised here, and
        ``JobTimeout`` when the next piece would come after the deadline. When the consumer stops
        early (a client went away, a timeout) the worker stops after the current piece.
        """
        deadline = self._admit()
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

        self._submit(work)
        try:
            while True:
                item = await self._within(deadline, asyncio.ensure_future(pieces.get()))
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
