"""Where the library lives, where the weights come from, and the defaults we measured."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "VOICEDB_HOME"
CHECKPOINT_ENV = "VOICEDB_CHECKPOINT"
DEVICE_ENV = "VOICEDB_DEVICE"

#: Cosine score above which two recordings are taken to be the same speaker. Chosen from the
#: same-speaker / different-speaker score distributions measured on real speech by
#: ``scripts/measure_threshold.py`` (see README, "Choosing the threshold").
DEFAULT_THRESHOLD = 0.80

#: Only this much of each clip is analysed, so that a two-hour file costs bounded memory and time.
MAX_ANALYSED_SECONDS = 300.0

#: Below this much detected speech a clip cannot give a reliable speaker embedding.
MIN_SPEECH_SECONDS = 1.0

#: Chatterbox recommends about ten seconds of reference audio; shorter clips get a warning.
RECOMMENDED_SECONDS = 10.0


def library_home(override: str | os.PathLike[str] | None = None) -> Path:
    """The library directory: ``override``, else ``$VOICEDB_HOME``, else the platform's user data dir."""
    if override:
        return Path(override).expanduser()
    if env := os.environ.get(HOME_ENV):
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("voicedb", appauthor=False))


def checkpoint_dir(override: str | os.PathLike[str] | None = None) -> Path | None:
    """A local checkpoint directory if one was given, else ``None`` for the Hugging Face hub."""
    if override:
        return Path(override).expanduser()
    if env := os.environ.get(CHECKPOINT_ENV):
        return Path(env).expanduser()
    return None


def torch_device() -> str:
    """``$VOICEDB_DEVICE``, else CUDA when present, else CPU."""
    if env := os.environ.get(DEVICE_ENV):
        return env
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
