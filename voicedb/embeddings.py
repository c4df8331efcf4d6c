"""The embeddings ``.npz``: voices as vectors alone, for callers that embed elsewhere and for filling a library fast.

Members (NumPy ``.npy`` files in a zip, as ``np.savez`` writes them): ``names`` (N strings), ``vectors``
(N x 256 float32, L2-normalised), ``encoder`` (the voice encoder's SHA-256, a 0-d string array) and,
optionally, ``ids`` (N strings). The file is untrusted: the zip's directory and every member's
``.npy`` header are checked before any array is read, so a decompression bomb or a header that
announces more than the member holds is refused at the cost of a few kilobytes.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from .bundle import refuse_bombs
from .errors import ImportRejected
from .files import atomic_path

#: What ``zipfile`` and numpy raise on a damaged or unusual archive (bad deflate data, encryption,
#: compression methods it lacks, malformed headers): all of it means "refuse the file".
DAMAGED = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError)
REQUIRED = frozenset({"names.npy", "vectors.npy", "encoder.npy"})
OPTIONAL = frozenset({"ids.npy"})
#: An honest file of 10 million voices (vectors 10 GB, names a few GB) stays below this.
MAX_NPZ_BYTES = 16 << 30
#: ``.npy`` headers are a few hundred bytes; numpy's own limit is 10,000.
MAX_HEADER_BYTES = 10_000
#: Longest string a ``names`` or ``ids`` element may be stored as (names are checked again when imported).
MAX_STRING_CHARS = 256
ENCODER_CHARS = 64


@dataclass(frozen=True)
class Embeddings:
    """Voices as vectors: ``vectors[i]`` is the voice ``names[i]`` (with id ``ids[i]`` when given)."""

    names: list[str]
    vectors: np.ndarray  # float32 (N, dim)
    encoder: str
    ids: list[str] | None = None


def write_npz(path: Path, embeddings: Embeddings) -> None:
    """Write the ``.npz`` atomically (stored, not compressed: vectors do not compress)."""
    arrays = {
        "ids": np.array(embeddings.ids if embeddings.ids is not None else [], dtype=np.str_),
        "names": np.array(embeddings.names, dtype=np.str_),
        "vectors": np.ascontiguousarray(embeddings.vectors, dtype=np.float32),
        "encoder": np.array(embeddings.encoder, dtype=np.str_),
    }
    if embeddings.ids is None:
        del arrays["ids"]
    with atomic_path(path) as temp, open(temp, "wb") as handle:
        np.savez(handle, **arrays)


def read_npz(path: Path, dim: int) -> Embeddings:
    """Read and check an embeddings ``.npz``; anything unexpected raises ``ImportRejected``."""
    try:
        with open(path, "rb") as handle:  # one open file for the checks and the read: the checked bytes are read
            return _read_checked(handle, path, dim)
    except OSError as exc:
        raise ImportRejected(f"{path}: cannot read it ({exc.strerror or exc}).") from exc


def _read_checked(handle: IO[bytes], path: Path, dim: int) -> Embeddings:
    try:
        archive = zipfile.ZipFile(handle)
    except DAMAGED as exc:
        raise ImportRejected(f"{path}: not an embeddings .npz ({exc}).") from exc
    with archive:
        shapes = _checked_headers(archive, path)
    count = shapes["vectors.npy"][0][0] if shapes["vectors.npy"][0] else 0
    for name, (shape, dtype) in shapes.items():
        if name == "vectors.npy":
            if dtype != np.dtype("<f4") or len(shape) != 2 or shape[1] != dim:
                raise ImportRejected(f"{path}: vectors must be float32 of shape (N, {dim}), not {dtype} {shape}.")
        elif name == "encoder.npy":
            if dtype.kind != "U" or shape != () or dtype.itemsize > 4 * ENCODER_CHARS:
                raise ImportRejected(f"{path}: encoder must be one string (the voice encoder's SHA-256).")
        elif dtype.kind != "U" or shape != (count,) or dtype.itemsize > 4 * MAX_STRING_CHARS:
            raise ImportRejected(
                f"{path}: {name[:-4]} must be {count} strings of at most {MAX_STRING_CHARS} characters, one per vector."
            )
    try:
        handle.seek(0)
        with np.load(handle, allow_pickle=False) as npz:
            vectors = npz["vectors"]
            names = npz["names"].tolist()
            ids = npz["ids"].tolist() if "ids.npy" in shapes else None
            encoder = str(npz["encoder"])
    except DAMAGED as exc:
        raise ImportRejected(f"{path}: damaged .npz ({exc}).") from exc
    return Embeddings(names, vectors, encoder, ids)


def _checked_headers(archive: zipfile.ZipFile, path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each member's (shape, dtype) from its ``.npy`` header, after the zip's directory is judged.

    A member whose header announces another size than the zip directory records is refused: that
    size is what reading it costs, and the header is what the rest of the checks trust.
    """
    infos = archive.infolist()
    names = [info.filename for info in infos]
    unexpected = set(names) - REQUIRED - OPTIONAL
    if unexpected or len(set(names)) != len(names) or not set(names) >= REQUIRED:
        listed = ", ".join(sorted(REQUIRED | OPTIONAL))
        raise ImportRejected(f"{path}: an embeddings .npz holds exactly {listed} (ids optional), each once.")
    # vectors do not compress, so their ratio bounds N; the string members' size follows from N
    refuse_bombs(archive, str(path), MAX_NPZ_BYTES, ratio_checked={"vectors.npy"})
    shapes = {}
    for info in infos:
        try:
            with archive.open(info) as member:
                shape, dtype, header_bytes = _read_header(member)
        except DAMAGED as exc:
            raise ImportRejected(f"{path}: {info.filename} is not a plain .npy array ({exc}).") from exc
        if dtype.hasobject:
            raise ImportRejected(f"{path}: {info.filename} holds Python objects, which are never loaded.")
        if header_bytes + math.prod(shape) * dtype.itemsize != info.file_size:
            raise ImportRejected(f"{path}: {info.filename} holds another size than its header announces.")
        shapes[info.filename] = (shape, dtype)
    return shapes


def _read_header(member: IO[bytes]) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, bytes before the data) of a C-ordered ``.npy`` stream, reading only its header."""
    version = np.lib.format.read_magic(member)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f".npy version {version} is not accepted")
    shape, fortran_order, dtype = readers[version](member, max_header_size=MAX_HEADER_BYTES)
    if fortran_order:
        raise ValueError("Fortran-ordered arrays are not accepted")
    return shape, dtype, member.tell()
