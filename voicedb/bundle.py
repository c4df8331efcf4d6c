"""The ``.voicedb`` bundle: one zip holding a voice's conditionals, embedding, metadata and clips.

Bundles cross trust boundaries, so reading one is defensive: only names of the expected shape are
accepted (no ``../``, no absolute paths, no links), sizes are bounded, and every member must match
the SHA-256 its manifest records. Nothing is extracted to disk here; members come back as bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ImportRejected
from .files import atomic_write_bytes

FORMAT = "voicedb-bundle"
VERSION = 1
MANIFEST = "manifest.json"
MAX_MEMBERS = 1000
#: Bounds an honest bundle stays far below (a few clips and conditionals), checked from the zip's
#: directory before anything is decompressed, as Pillow refuses decompression bombs.
MAX_BUNDLE_BYTES = 512 << 20  # all members, uncompressed
MAX_MANIFEST_BYTES = 1 << 20
#: A member may expand this much; past it, only if it is small. Audio and tensors compress far less.
MAX_EXPANSION = 100
SMALL_MEMBER_BYTES = 1 << 20
MEMBER_NAME = re.compile(r"^(embedding\.npy|conds/[a-z]+\.pt|clips/[0-9a-f]{64}\.[a-z0-9]{1,5})$")


@dataclass
class Bundle:
    """A voice in transit: ``manifest`` metadata and the member files' bytes."""

    manifest: dict[str, Any]
    members: dict[str, bytes]

    @property
    def embedding(self) -> np.ndarray:
        return np.load(io.BytesIO(self.members["embedding.npy"]), allow_pickle=False)


def is_bundle(path: Path) -> bool:
    """Bundles are zips with our manifest; torch's ``.pt`` files are zips too, without one."""
    try:
        with zipfile.ZipFile(path) as archive:
            return MANIFEST in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return path.suffix == ".voicedb"


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def write_bundle(path: Path, voice: dict[str, Any], members: dict[str, bytes]) -> None:
    """Write a bundle atomically; the manifest records every member's SHA-256."""
    for name in members:
        if not MEMBER_NAME.match(name):
            raise ValueError(f"bad bundle member name {name!r}")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "voice": voice,
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in members.items()},
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False))
        for name, data in members.items():
            archive.writestr(name, data)
    atomic_write_bytes(path, buffer.getvalue())


def refuse_bombs(
    archive: zipfile.ZipFile, source: str, max_bytes: int, ratio_checked: Container[str] | None = None
) -> None:
    """Refuse, from the zip's directory alone, an archive that would cost far more than it looks:
    more than ``max_bytes`` uncompressed in all, or a member that expands suspiciously.

    The sizes in the directory are what ``zipfile`` will read at most, so they bound the real cost.
    ``ratio_checked`` names the members whose expansion is judged (default: all); the caller bounds
    the others' size some other way (an embeddings file's names, by the number of vectors).
    """
    total = 0
    for info in archive.infolist():
        total += info.file_size
        if total > max_bytes:
            raise ImportRejected(f"{source}: over {max_bytes >> 20} MB uncompressed; refusing it.")
        if ratio_checked is not None and info.filename not in ratio_checked:
            continue
        expands = info.file_size > MAX_EXPANSION * max(info.compress_size, 1)
        if expands and info.file_size > SMALL_MEMBER_BYTES:
            raise ImportRejected(
                f"{source}: member {info.filename!r} expands {info.file_size // max(info.compress_size, 1)}x "
                "(a decompression bomb?); refusing it."
            )


def read_bundle(path: Path) -> Bundle:
    """Read and verify a bundle; any deviation raises ``ImportRejected``."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ImportRejected(f"{path}: not a voicedb bundle ({exc}).") from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ImportRejected(f"{path}: too many members.")
        names = [info.filename for info in infos]
        for info in infos:
            if info.filename != MANIFEST and not MEMBER_NAME.match(info.filename):
                raise ImportRejected(f"{path}: refusing unexpected member {info.filename!r}.")
        if MANIFEST not in names or len(set(names)) != len(names):
            raise ImportRejected(f"{path}: no manifest, or duplicate members.")
        refuse_bombs(archive, str(path), MAX_BUNDLE_BYTES)
        if archive.getinfo(MANIFEST).file_size > MAX_MANIFEST_BYTES:
            raise ImportRejected(f"{path}: the manifest is too large.")
        try:
            manifest = json.loads(archive.read(MANIFEST))  # checked before any member is read
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
                raise ImportRejected(f"{path}: not a voicedb bundle of version {VERSION}.")
            checksums = manifest.get("sha256")
            listed = {name for name in names if name != MANIFEST}
            if not isinstance(checksums, dict) or set(checksums) != listed or "embedding.npy" not in listed:
                raise ImportRejected(f"{path}: the manifest does not list exactly the bundle's members.")
            members = {name: _read_verified(archive, name, checksums[name], path) for name in sorted(listed)}
        except (ValueError, zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ImportRejected(f"{path}: damaged bundle ({exc}).") from exc
    if not isinstance(manifest.get("voice"), dict) or not isinstance(manifest["voice"].get("name"), str):
        raise ImportRejected(f"{path}: the manifest has no voice name.")
    bundle = Bundle(manifest, members)
    try:
        embedding = bundle.embedding
    except ValueError as exc:
        raise ImportRejected(f"{path}: embedding.npy is not a plain array ({exc}).") from exc
    if embedding.shape != (256,) or embedding.dtype != np.float32 or not np.isfinite(embedding).all():
        raise ImportRejected(f"{path}: the embedding must be 256 finite float32 values.")
    return bundle


def _read_verified(archive: zipfile.ZipFile, name: str, checksum: object, path: Path) -> bytes:
    """One member, hashed while it streams in; a mismatch is refused."""
    digest = hashlib.sha256()
    chunks = []
    with archive.open(name) as member:
        while chunk := member.read(1 << 20):
            digest.update(chunk)
            chunks.append(chunk)
    if digest.hexdigest() != checksum:
        raise ImportRejected(f"{path}: {name} does not match its checksum.")
    return b"".join(chunks)
