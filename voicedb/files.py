"""Atomic file writes and content hashing: a crash never leaves a half-written file under a real name."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_SUFFIX = ".voicedb-tmp"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks so large files cost no memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; not every platform can open a directory, which is fine there."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path_for(path: Path) -> Path:
    """A fresh temp name in ``path``'s directory, so the final rename never crosses file systems."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would make library files private to one user
    os.close(fd)
    return Path(temp_name)


def publish(temp: Path, path: Path) -> None:
    """fsync a finished temp file and rename it over ``path``: readers see the old or the new file, whole."""
    with open(temp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, path)
    _fsync_dir(path.parent)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temp path beside ``path`` to write to; on success it is fsynced and renamed over ``path``.

    On any error (or a crash) ``path`` keeps its old content, or stays absent.
    """
    temp = temp_path_for(path)
    try:
        yield temp
        publish(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as temp:
        temp.write_bytes(data)


def atomic_copy(source: Path, destination: Path) -> None:
    """Copy a file's bytes so that ``destination`` is either absent or complete."""
    with atomic_path(destination) as temp:
        shutil.copyfile(source, temp)


def leftover_temp_files(directory: Path) -> list[Path]:
    """Temp files that a killed write left behind."""
    if not directory.exists():
        return []
    return sorted(p for p in directory.rglob(f"*{TEMP_SUFFIX}") if p.is_file())
