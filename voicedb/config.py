"""Where the library lives, where the weights come from, and the defaults we measured."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import VoiceDBError

HOME_ENV = "VOICEDB_HOME"
CHECKPOINT_ENV = "VOICEDB_CHECKPOINT"
DEVICE_ENV = "VOICEDB_DEVICE"
INDEX_EXACT_MAX_ENV = "VOICEDB_INDEX_EXACT_MAX"

#: Cosine score above which two recordings are taken to be the same speaker. Chosen from the
#: same-speaker / different-speaker score distributions measured on real speech by
#: ``scripts/measure_threshold.py`` (see README, "Choosing the threshold").
DEFAULT_THRESHOLD = 0.80

#: Shipped thresholds per voice-encoder checkpoint, keyed by the SHA-256 of its weights file: the scores of
#: two encoders are not comparable. ``match`` uses the one of the library's encoder unless the library was
#: calibrated (``voicedb calibrate``) or a threshold is given; an encoder missing here gets
#: ``DEFAULT_THRESHOLD``. The official ``ResembleAI/chatterbox`` ``ve.safetensors`` belongs here with the
#: value measured for it on the development set; until its digest is recorded it gets ``DEFAULT_THRESHOLD``.
SHIPPED_THRESHOLDS: dict[str, float] = {
    # the offline test checkpoint (Resemblyzer's weights, written by scripts/make_test_checkpoint.py)
    "f1a77fed4fd9f7dbc44309f860088830d38e037f30494c6e51315f109c38e648": 0.80,
}

#: Scores this close to the threshold are uncertain: ``match`` words them "probably" (above) and "possibly"
#: (below) rather than "same speaker" and "unknown speaker", and suggests enrolling more audio.
VERDICT_MARGIN = 0.05

#: ``calibrate`` needs this many voices with two or more clips (same-speaker scores of several speakers).
MIN_CALIBRATION_VOICES = 3

#: ``calibrate`` scores at most this many voices (taken evenly across the library), bounding its time and
#: memory: different-speaker scores grow with clips x voices.
MAX_CALIBRATION_VOICES = 2000

#: Only this much of each clip is analysed, so that a two-hour file costs bounded memory and time.
MAX_ANALYSED_SECONDS = 300.0

#: Below this much detected speech a clip cannot give a reliable speaker embedding.
MIN_SPEECH_SECONDS = 1.0

#: Up to this many voices the index is exact (a flat scan); above it, approximate (IVF-Flat). An exact
#: query costs 2 ms at 50,000 voices on 2 cores and grows linearly (40 ms at a million), while IVF answers a
#: million in 3 ms with recall@1 1.000 on clustered voices; measured by ``scripts/bench_match.py`` (README, "Matching").
DEFAULT_INDEX_EXACT_MAX = 50_000

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


def index_exact_max() -> int:
    """``$VOICEDB_INDEX_EXACT_MAX``, else ``DEFAULT_INDEX_EXACT_MAX``: the largest library searched exactly."""
    env = os.environ.get(INDEX_EXACT_MAX_ENV)
    if env is None:
        return DEFAULT_INDEX_EXACT_MAX
    try:
        value = int(env)
    except ValueError:
        value = -1
    if value < 0:
        raise VoiceDBError(f"{INDEX_EXACT_MAX_ENV} must be a whole number of voices, not {env!r}.")
    return value


def device_override() -> str | None:
    """``$VOICEDB_DEVICE`` when set: the device asked for, before torch is imported to choose one."""
    return os.environ.get(DEVICE_ENV) or None


def torch_device() -> str:
    """``$VOICEDB_DEVICE``, else CUDA when present, else CPU."""
    if env := device_override():
        return env
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
