"""Matching embeddings: what each speaker encoder makes of a clip's speech.

The conditionals keep exactly the embedding upstream computes (``Engine.embed``). Matching embeds only
the speech: frames quieter than ``SPEECH_TOP_DB`` below the loudest are dropped and quiet clips are
raised to ``SPEECH_LEVEL_DBFS``, which separated speakers best on the development set
(``scripts/eval_matching.py``; docs/matching.md).
"""

from __future__ import annotations

import numpy as np

from .audio import nonsilent_frames
from .engine import Engine
from .errors import CheckpointError
from .matchers import CAMPPLUS, CHATTERBOX, MATCHERS, ClipVectors, encoders_of, fuse

SPEECH_TOP_DB = 35.0
SPEECH_LEVEL_DBFS = -30.0
_FRAME, _HOP = 480, 160  # 30 ms frames every 10 ms at 16 kHz
#: Below this much kept speech the whole clip is used: trimming would leave too little to embed.
MIN_KEPT_SAMPLES = 16_000


def speech_only(wav_16k: np.ndarray) -> np.ndarray:
    """The clip's speech at a comparable level: loud frames only, raised to ``SPEECH_LEVEL_DBFS`` RMS if quieter."""
    wav = np.asarray(wav_16k, dtype=np.float32)
    loud = nonsilent_frames(wav, SPEECH_TOP_DB, frame=_FRAME, hop=_HOP)
    mask = np.zeros(len(wav), dtype=bool)
    mask[: len(loud) * _HOP] = np.repeat(loud, _HOP)[: len(wav)]
    if mask.sum() >= MIN_KEPT_SAMPLES:
        wav = wav[mask]
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if len(wav) else 0.0
    if rms > 0:
        gain_db = SPEECH_LEVEL_DBFS - 20 * np.log10(rms)
        if gain_db > 0:
            wav = wav * np.float32(10 ** (gain_db / 20))
    return wav


class SpeakerEncoders:
    """The speaker encoders of one engine: which are available, their checksums, and embedding with them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def available(self, encoder: str) -> bool:
        return encoder == CHATTERBOX or self.engine.campplus_path() is not None

    def recommended_matcher(self) -> str:
        """What a new library matches with: the fused encoders where CAM++'s weights are available."""
        return f"{CHATTERBOX}+{CAMPPLUS}" if self.available(CAMPPLUS) else CHATTERBOX

    def require(self, matcher: str) -> None:
        """Refuse, in one line, a matcher whose encoder weights cannot be had."""
        if not self.available(CAMPPLUS) and CAMPPLUS in encoders_of(matcher):
            others = ", ".join(m for m in MATCHERS if CAMPPLUS not in MATCHERS[m])
            raise CheckpointError(
                f"this library matches with {matcher}, but the CAM++ weights (campplus_cn_en_common.pt) are not "
                f"in the checkpoint directory and cannot be downloaded; add them, or switch with "
                f"`voicedb matcher {others}`."
            )

    def checksum(self, encoder: str) -> str:
        return self.engine.encoder_checksum if encoder == CHATTERBOX else self.engine.campplus_checksum

    def embed(self, wav_16k: np.ndarray, encoders: tuple[str, ...]) -> ClipVectors:
        """The clip's matching vectors by each of ``encoders``."""
        speech = speech_only(wav_16k)
        found: ClipVectors = {}
        for encoder in encoders:
            embed = self.engine.embed if encoder == CHATTERBOX else self.engine.campplus.embed
            found[encoder] = (self.checksum(encoder), embed(speech))
        return found

    def query(self, wav_16k: np.ndarray, matcher: str) -> np.ndarray:
        """The vector ``match`` searches the index with for ``matcher``."""
        vectors = self.embed(wav_16k, encoders_of(matcher))
        return fuse([vector for _, vector in vectors.values()])
