"""Reading weight files: ``.safetensors`` or ``.pt`` (``torch.save`` state dicts), as torch tensors or,
without importing torch, as NumPy arrays.

Why a ``.pt`` reader of our own: a process that only matches must not pay for importing torch. It reads
no more than a state dict needs and refuses everything else, as ``torch.load(weights_only=True)`` does.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError

#: torch's storage class names, as ``torch.save`` pickles them; bfloat16 has no NumPy type and is read
#: as its 16 upper bits of float32.
STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
MAX_PICKLE_BYTES = 64 << 20  # a state dict's pickle holds names and shapes, not tensor data
MAX_DIMENSIONS = 8


class _StorageType:
    """What ``torch.FloatStorage`` and its kin unpickle to: the name of the bytes' dtype."""

    def __init__(self, name: str) -> None:
        self.name = name


def _rebuild_tensor(
    storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_grad_hooks_metadata: Any
) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2`` in NumPy: the view of ``storage`` at ``offset`` with ``size``
    and ``stride`` (in elements), copied; shapes that reach outside the storage are refused."""
    if not (isinstance(storage, np.ndarray) and isinstance(size, tuple) and isinstance(stride, tuple)):
        raise CheckpointError("a tensor without a storage, size or stride")
    numbers = (offset, *size, *stride)
    if len(size) != len(stride) or len(size) > MAX_DIMENSIONS or not all(type(n) is int and n >= 0 for n in numbers):
        raise CheckpointError(f"a tensor of size {size} and stride {stride}")
    if 0 not in size and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.size:
        raise CheckpointError(f"a tensor of size {size} reaching past its storage of {storage.size} elements")
    if 0 in size:
        return np.zeros(size, dtype=storage.dtype)
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * item for s in stride], writeable=False
    )
    return view.copy()


def _rebuild_parameter(data: np.ndarray, *_grad_hooks: Any) -> np.ndarray:
    """``torch._utils._rebuild_parameter``: a parameter is its data."""
    return data


FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a state dict's ``data.pkl``, with storages read from the archive's ``data/`` members."""

    def __init__(self, pickled: bytes, archive: zipfile.ZipFile, top: str) -> None:
        super().__init__(io.BytesIO(pickled))
        self.archive = archive
        self.top = top
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        """Only what a state dict needs, each time a fresh object: the pickle's BUILD opcodes may set
        attributes on what they get, and must not reach anything that outlives this file."""
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict  # a built-in type: attributes cannot be set on it
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in FUNCTIONS:
            function = FUNCTIONS[module, name]
            return lambda *args: function(*args)
        raise CheckpointError(f"refused global {module}.{name}")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"unknown persistent id {str(pid)[:80]}")
        _, kind, key, _location, numel = pid
        name = getattr(kind, "name", None)
        if name not in STORAGE_DTYPES or not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise CheckpointError(f"unknown storage {str(pid)[:80]}")
        if key not in self.storages:
            data = _member(self.archive, f"{self.top}/data/{key}")
            dtype = STORAGE_DTYPES[name]
            if numel * dtype.itemsize > len(data):
                raise CheckpointError(f"storage {key} claims more elements than its {len(data)} bytes")
            storage = np.frombuffer(data, dtype=dtype, count=numel)
            if name == "BFloat16Storage":
                storage = (storage.astype("<u4") << 16).view("<f4")
            self.storages[key] = storage
        return self.storages[key]


def _member(archive: zipfile.ZipFile, name: str, limit: int | None = None) -> bytes:
    """A stored (uncompressed, as ``torch.save`` writes) member's bytes: never more than the file holds."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise CheckpointError(f"no member {name}") from None
    if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
        raise CheckpointError(f"{name} is compressed")
    if limit is not None and info.file_size > limit:
        raise CheckpointError(f"{name} is {info.file_size} bytes")
    return archive.read(info)


def read_torch_state(path: Path) -> dict[str, np.ndarray]:
    """The state dict that ``torch.save`` wrote to ``path``, as NumPy arrays of the saved dtypes (bfloat16
    as float32), without torch. Refuses with a ``CheckpointError`` (saying why, briefly) anything but a
    zip archive of one ``*/data.pkl`` that builds a dict of tensors from storages and the globals that
    ``_StateDictUnpickler.find_class`` allows."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.count("/") == 1 and name.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise CheckpointError(f"{len(pickles)} data.pkl members")
            top = pickles[0].split("/")[0]
            if f"{top}/byteorder" in archive.namelist() and _member(archive, f"{top}/byteorder", 16) != b"little":
                raise CheckpointError("big-endian storages")
            unpickler = _StateDictUnpickler(_member(archive, pickles[0], MAX_PICKLE_BYTES), archive, top)
            state = unpickler.load()
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - a hostile pickle can fail in any way; all mean "unusable"
        raise CheckpointError(f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, np.ndarray) for key, value in state.items()
    ):
        raise CheckpointError("not a dict of named tensors")
    return dict(state)


def read_weights(path: Path, as_numpy: bool = False) -> dict[str, Any]:
    """The state dict in ``path``, as torch tensors or as float32 NumPy arrays (``as_numpy``, which
    imports no torch); a missing, corrupt or foreign file is a ``CheckpointError``."""
    try:
        if path.suffix == ".safetensors":
            if as_numpy:
                from safetensors.numpy import load_file
            else:
                from safetensors.torch import load_file
            return load_file(str(path))
        if as_numpy:
            return {key: value.astype(np.float32) for key, value in read_torch_state(path).items()}
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable file
        raise CheckpointError(f"{path} is corrupt or not a Chatterbox weights file ({exc}).") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict.")
    return state
