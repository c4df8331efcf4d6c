"""The writer lock: one writer at a time across threads and processes.

``WriterLock`` is the small interface the rest of voicedb uses; ``FileWriterLock`` implements it
with a lock file beside a SQLite library; ``AdvisoryWriterLock`` with a PostgreSQL advisory lock, which
serialises writers on every machine sharing the database and is released by the server itself when
the connection holding it goes (a killed process, a dead machine): there is no stale lock to clear.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .errors import LibraryError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

LOCK_TIMEOUT_S = 120
#: The advisory lock key of a voicedb library (one library per database): "voicedb" as a 64-bit integer.
ADVISORY_KEY = int.from_bytes(b"voicedb\0", "big") >> 1
#: How often a waiting writer asks PostgreSQL again.
POLL_S = 0.05


class WriterLock(Protocol):
    def held(self) -> Iterator[None]:
        """Context manager: hold the lock, waiting a bounded time; reentrant within one thread."""

    def try_held(self) -> Iterator[bool]:
        """Context manager yielding whether the lock was free right now (it is held inside if so)."""


class ProcessLock:
    """A writer lock from a lock between processes (``_acquire``/``_release``, which only the thread holding
    ``_threads`` calls), plus a reentrant lock for this process's threads."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._threads = threading.RLock()

    def _acquire(self, timeout_s: float) -> bool:
        """Take the lock between processes, waiting up to ``timeout_s``; whether it was taken."""
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    @contextmanager
    def held(self) -> Iterator[None]:
        if not self._threads.acquire(timeout=self.timeout_s):
            raise LibraryError(f"another thread has held the library for {self.timeout_s:.0f} s; try again.")
        try:
            if not self._acquire(self.timeout_s):
                raise LibraryError(
                    f"another voicedb process has held the library for {self.timeout_s:.0f} s; try again."
                )
            try:
                yield
            finally:
                self._release()
        finally:
            self._threads.release()

    @contextmanager
    def try_held(self) -> Iterator[bool]:
        if not self._threads.acquire(blocking=False):
            yield False
            return
        try:
            if not self._acquire(0):
                yield False
                return
            try:
                yield True
            finally:
                self._release()
        finally:
            self._threads.release()


class FileWriterLock(ProcessLock):
    """A lock file (``filelock``) beside a SQLite library."""

    def __init__(self, path: Path, timeout_s: float = LOCK_TIMEOUT_S) -> None:
        from filelock import FileLock

        super().__init__(timeout_s)
        self.path = path
        # Only the thread holding ``_threads`` touches the file lock, so its counter need not be per thread.
        self._file = FileLock(str(path), thread_local=False)

    def _acquire(self, timeout_s: float) -> bool:
        from filelock import Timeout

        try:
            self._file.acquire(timeout=timeout_s)
        except Timeout:
            return False
        return True

    def _release(self) -> None:
        self._file.release()


class AdvisoryWriterLock(ProcessLock):
    """A PostgreSQL session-level advisory lock on a connection of its own. Reentrant: ``_depth`` counts
    how often the holding thread took it."""

    def __init__(self, engine: Engine, timeout_s: float = LOCK_TIMEOUT_S) -> None:
        super().__init__(timeout_s)
        self.engine = engine
        self._connection: Any = None
        self._depth = 0

    def _try_lock(self) -> bool:
        from sqlalchemy import text

        if self._connection is None:
            self._connection = self.engine.connect()
        locked = self._connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_KEY}).scalar()
        self._connection.commit()  # no transaction stays open while the lock is held
        return bool(locked)

    def _unlock(self) -> None:
        from sqlalchemy import text

        connection, self._connection = self._connection, None
        try:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY})
            connection.commit()
            connection.close()
        except Exception:  # noqa: BLE001 - a broken connection has released the lock already
            connection.invalidate()

    def _acquire(self, timeout_s: float) -> bool:
        """Take the database lock (the caller holds ``_threads``), waiting up to ``timeout_s``."""
        if self._depth:
            self._depth += 1
            return True
        deadline = time.monotonic() + timeout_s
        try:
            while not self._try_lock():
                if time.monotonic() >= deadline:
                    self._connection.close()
                    self._connection = None
                    return False
                time.sleep(POLL_S)
        except Exception as exc:
            if self._connection is not None:
                self._connection.invalidate()
                self._connection = None
            raise LibraryError(f"cannot take the library's writer lock: {str(exc).splitlines()[0]}") from exc
        self._depth = 1
        return True

    def _release(self) -> None:
        self._depth -= 1
        if not self._depth:
            self._unlock()
