"""Where the library lives, where the weights come from, and the defaults we measured."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import VoiceDBError

HOME_ENV = "VOICEDB_HOME"
CHECKPOINT_ENV = "VOICEDB_CHECKPOINT"
DEVICE_ENV = "VOICEDB_DEVICE"
INDEX_EXACT_MAX_ENV = "VOICEDB_INDEX_EXACT_MAX"
DATABASE_URL_ENV = "VOICEDB_DATABASE_URL"
STORAGE_URL_ENV = "VOICEDB_STORAGE_URL"

#: The threshold for encoder weights nobody measured (``SHIPPED_THRESHOLDS`` has none for them): the value
#: voicedb used before thresholds were measured per matcher on the development set (docs/matching.md);
#: ``voicedb calibrate`` replaces it with one fitted to the library.
DEFAULT_THRESHOLD = 0.80

#: Shipped thresholds and the error rates measured around them, per matcher identity
#: (``matcher:<sha16 of each encoder's weights>``, see ``calibration.Thresholds.identity``): scores of two
#: encoders, or of two checkpoints of one encoder, are not comparable. Chosen on the development set by
#: ``scripts/eval_matching.py --write-shipped`` (docs/matching.md). ``match`` uses the value
#: of the library's identity unless the library was calibrated (``voicedb calibrate``) or a threshold is
#: given; an identity missing here gets ``DEFAULT_THRESHOLD``. The official ``ResembleAI/chatterbox``
#: ``ve.safetensors`` could not be measured here (the hub is unreachable), so libraries using it get the
#: default until someone runs that script with the official checkpoint.
SHIPPED_THRESHOLDS: dict[str, dict[str, Any]] = json.loads(
    Path(__file__).with_name("shipped_thresholds.json").read_text()
)

#: How sure a verdict is, from the measured error rates at the score: at or above the threshold it is
#: "same speaker" when at most this share of different-speaker pairs score as high (1 in 10,000), else "probably".
SURE_FALSE_ACCEPT = 0.0001
#: Below the threshold it is "unknown speaker" when at most this share of same-speaker pairs score as low,
#: else "possibly the same speaker".
SURE_FALSE_REJECT = 0.01

#: Without measured rates (a matcher nobody measured): scores this close to the threshold are uncertain, and
#: ``match`` words them "probably" (above) and "possibly" (below) rather than "same speaker" and "unknown speaker".
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
#: million in 3 ms with recall@1 1.000 on clustered voices; measured by ``scripts/bench_match.py``
#: (docs/benchmarks.md, "Matching").
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


def database_url(override: str | None = None) -> str | None:
    """The database beyond one machine (``postgresql+psycopg://...``): ``override``, else ``$VOICEDB_DATABASE_URL``;
    ``None`` for the SQLite file in the library directory."""
    return override or os.environ.get(DATABASE_URL_ENV) or None


def storage_url(override: str | None = None) -> str | None:
    """Where clips and conditionals live (a directory or an fsspec URL such as ``s3://bucket/prefix``):
    ``override``, else ``$VOICEDB_STORAGE_URL``; ``None`` for the library directory."""
    return override or os.environ.get(STORAGE_URL_ENV) or None


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
