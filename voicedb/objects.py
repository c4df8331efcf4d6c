"""Where a library keeps its kept clips and saved conditionals: a local directory, or any fsspec URL.

The store names each file by a path relative to the library (``clips/<sha256>.wav``,
``conds/<id>.<flavour>.<sha12>.pt``): names carry the content hash, so an object is written once and
never changes under its name. That makes remote storage simple: an object is uploaded whole (an S3
PUT appears all at once or not at all) before the commit that refers to it, and a local copy of it,
once downloaded and verified, stays valid for good.

``LocalObjects`` keeps the files under the library directory, written atomically (``files``).
``RemoteObjects`` keeps them under an fsspec URL (``s3://bucket/prefix`` through s3fs, which reads
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` like every AWS client) and
caches what it reads in ``<home>/cache/objects``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from .errors import LibraryError
from .files import TEMP_SUFFIX, atomic_path, leftover_temp_files, publish, sha256_file, temp_path_for

#: The folders of the library's objects: kept reference clips and saved conditionals.
CLIPS_DIR = "clips"
CONDS_DIR = "conds"
FOLDERS = (CLIPS_DIR, CONDS_DIR)
CACHE_DIR = "cache/objects"


class Objects(Protocol):
    """The library's files, by their names relative to the library (what the store records)."""

    #: What messages call this storage: a directory or a URL.
    name: str

    def exists(self, relative: str) -> bool: ...

    def put(self, relative: str, write: Callable[[Path], None]) -> bool:
        """Store ``write(temp_path)``'s file under ``relative``, whole or not at all; returns whether it is new."""

    def delete(self, relative: str) -> None:
        """Remove an object; one already gone is fine."""

    def fetch(self, relative: str, sha256: str) -> Path | None:
        """A local file holding the object, verified against ``sha256``; ``None`` if missing or corrupt."""

    def sha256(self, relative: str) -> str | None:
        """The stored object's SHA-256 (read in full from where it is stored); ``None`` if it is missing."""

    def names(self) -> Iterator[str]:
        """Every object's name under ``FOLDERS``, including unfinished writes (``leftovers``)."""

    def leftovers(self) -> list[str]:
        """Objects a killed write left under a temporary name."""


class LocalObjects:
    """Files under the library directory, each written to a temp name, fsynced and renamed into place."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.name = str(home)

    def path(self, relative: str) -> Path:
        return self.home / relative

    def exists(self, relative: str) -> bool:
        return self.path(relative).exists()

    def put(self, relative: str, write: Callable[[Path], None]) -> bool:
        target = self.path(relative)
        existed = target.exists()
        with atomic_path(target) as temp:
            write(temp)
        return not existed

    def delete(self, relative: str) -> None:
        self.path(relative).unlink(missing_ok=True)

    def fetch(self, relative: str, sha256: str) -> Path | None:
        path = self.path(relative)
        try:
            return path if sha256_file(path) == sha256 else None
        except OSError:
            return None

    def sha256(self, relative: str) -> str | None:
        try:
            return sha256_file(self.path(relative))
        except OSError:
            return None

    def names(self) -> Iterator[str]:
        for folder in FOLDERS:
            directory = self.home / folder
            if directory.is_dir():
                yield from (f"{folder}/{path.name}" for path in sorted(directory.iterdir()) if path.is_file())

    def leftovers(self) -> list[str]:
        return [str(path.relative_to(self.home)) for path in leftover_temp_files(self.home)]


class RemoteObjects:
    """Objects under an fsspec URL, uploaded whole; what is read is cached, verified, under ``cache``."""

    def __init__(self, url: str, cache: Path) -> None:
        import fsspec

        self.name = url.rstrip("/")
        try:
            # no listings cache: other machines add and remove objects behind this process's back; no shared
            # instance: each library reads the endpoint and credentials the environment has when it opens
            self.fs, root = fsspec.core.url_to_fs(self.name, use_listings_cache=False, skip_instance_cache=True)
        except (ImportError, ValueError) as exc:
            raise LibraryError(f"cannot use storage {url}: {exc}") from exc
        self.root = root.rstrip("/")
        self.cache = cache

    def _key(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def check_reachable(self) -> None:
        """Fail now, in one line, rather than at the first write, when the storage cannot be reached."""
        try:
            self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            if "/" not in self.root:  # a bucket, not a prefix inside one
                raise LibraryError(f"storage {self.name} does not exist; create the bucket first.") from None
        except Exception as exc:  # noqa: BLE001 - network and credential errors come in many types
            raise LibraryError(f"cannot reach storage {self.name}: {describe(exc)}") from exc

    def exists(self, relative: str) -> bool:
        return self._call(self.fs.exists, self._key(relative))

    def put(self, relative: str, write: Callable[[Path], None]) -> bool:
        existed = self.exists(relative)
        local = self.cache / relative
        temp = temp_path_for(local)
        try:
            write(temp)
            self._call(self.fs.put_file, str(temp), self._key(relative))
            publish(temp, local)  # what was uploaded is known good: keep it as the local copy
        finally:
            temp.unlink(missing_ok=True)
        return not existed

    def delete(self, relative: str) -> None:
        (self.cache / relative).unlink(missing_ok=True)
        try:
            self._call(self.fs.rm_file, self._key(relative))
        except FileNotFoundError:
            pass
        except LibraryError:
            if self.exists(relative):
                raise

    def fetch(self, relative: str, sha256: str) -> Path | None:
        local = self.cache / relative
        if local.is_file() and sha256_file(local) == sha256:
            return local
        temp = temp_path_for(local)
        try:
            try:
                self._call(self.fs.get_file, self._key(relative), str(temp))
            except FileNotFoundError:
                return None
            if sha256_file(temp) != sha256:
                return None
            publish(temp, local)
            return local
        finally:
            temp.unlink(missing_ok=True)

    def sha256(self, relative: str) -> str | None:
        digest = hashlib.sha256()
        try:
            with self._call(self.fs.open, self._key(relative), "rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        except FileNotFoundError:
            return None
        return digest.hexdigest()

    def names(self) -> Iterator[str]:
        for folder in FOLDERS:
            try:
                found = self._call(self.fs.find, self._key(folder))
            except FileNotFoundError:
                continue
            prefix = f"{self.root}/"
            yield from sorted(key[len(prefix) :] for key in found if key.startswith(prefix))

    def leftovers(self) -> list[str]:
        return [name for name in self.names() if name.endswith(TEMP_SUFFIX)]

    def _call(self, method: Callable[..., Any], *args: Any) -> Any:
        """One storage call; failures other than a missing object become one clear ``LibraryError``."""
        try:
            return method(*args)
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - botocore, aiohttp and fsspec errors share no base class
            raise LibraryError(f"storage {self.name}: {describe(exc)}") from exc


def describe(exc: BaseException) -> str:
    """A storage error in one line (botocore's messages already are)."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def open_objects(home: Path, url: str | None) -> LocalObjects | RemoteObjects:
    """The storage a library uses: its directory by default, or ``url`` (a local path or an fsspec URL)."""
    if url is None:
        return LocalObjects(home)
    if "://" not in url or url.startswith("file://"):
        return LocalObjects(Path(url.removeprefix("file://")).expanduser())
    objects = RemoteObjects(url, home / CACHE_DIR)
    objects.check_reachable()
    return objects
