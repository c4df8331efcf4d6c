"""The writer lock: one writer at a time across threads and processes.

``WriterLock`` is the small interface the rest of voicedb uses; ``FileWriterLock`` implements it
with a lock file beside a SQLite library. A PostgreSQL store can implement it with an advisory lock
without touching anything else.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from .errors import LibraryError

LOCK_TIMEOUT_S = 120


class WriterLock(Protocol):
    def held(self) -> Iterator[None]:
        """Context manager: hold the lock, waiting a bounded time; reentrant within one thread."""

    def try_held(self) -> Iterator[bool]:
        """Context manager yielding whether the lock was free right now (it is held inside if so)."""


class FileWriterLock:
    """A lock file (``filelock``) for other processes, plus a reentrant lock for this process's threads."""

    def __init__(self, path: Path, timeout_s: float = LOCK_TIMEOUT_S) -> None:
        from filelock import FileLock

        self.path = path
        self.timeout_s = timeout_s
        self._threads = threading.RLock()
        # Only the thread holding ``_threads`` touches the file lock, so its counter need not be per thread.
        self._file = FileLock(str(path), thread_local=False)

    @contextmanager
    def held(self) -> Iterator[None]:
        from filelock import Timeout

        if not self._threads.acquire(timeout=self.timeout_s):
            raise LibraryError(f"another thread has held the library for {self.timeout_s:.0f} s; try again.")
        try:
            try:
                self._file.acquire(timeout=self.timeout_s)
            except Timeout:
                raise LibraryError(
                    f"another voicedb process has held the library for {self.timeout_s:.0f} s; try again."
                ) from None
            try:
                yield
            finally:
                self._file.release()
        finally:
            self._threads.release()

    @contextmanager
    def try_held(self) -> Iterator[bool]:
        from filelock import Timeout

        if not self._threads.acquire(blocking=False):
            yield False
            return
        try:
            try:
                self._file.acquire(timeout=0)
            except Timeout:
                yield False
                return
            try:
                yield True
            finally:
                self._file.release()
        finally:
            self._threads.release()
