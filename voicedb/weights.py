"""Reading weight files: ``.safetensors`` or ``.pt`` (``weights_only``), as torch tensors or, without
importing torch for ``.safetensors``, as NumPy arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import CheckpointError


def read_weights(path: Path, as_numpy: bool = False) -> dict[str, Any]:
    """The state dict in ``path``; a missing, corrupt or foreign file is a ``CheckpointError``."""
    try:
        if path.suffix == ".safetensors":
            if as_numpy:
                from safetensors.numpy import load_file
            else:
                from safetensors.torch import load_file
            return load_file(str(path))
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable file
        raise CheckpointError(f"{path} is corrupt or not a Chatterbox weights file ({exc}).") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict.")
    if as_numpy:
        return {key: value.float().numpy() for key, value in state.items() if hasattr(value, "numpy")}
    return state
