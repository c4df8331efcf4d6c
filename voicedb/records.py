"""The plain results the library returns and the CLI prints (``to_dict`` gives the ``--json`` shape)."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Voice:
    """A stored voice as users see it."""

    id: str
    name: str
    tags: list[str]
    clips: int
    seconds: float
    models: list[str]
    language: str | None  # a language id of the multilingual model (``flavours.languages()``), or None
    created_at: dt.datetime
    updated_at: dt.datetime
    #: Other names the voice answers to (``voicedb alias``).
    aliases: list[str] = field(default_factory=list)
    #: For a blend, the voices it was interpolated from: ``{"sources": [{"id", "name", "weight"}]}``.
    blend: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        data["updated_at"] = self.updated_at.isoformat()
        return data


@dataclass(frozen=True)
class Match:
    """One stored voice near a query clip. ``score`` is on the library matcher's scale (a cosine, or for a
    fused matcher the mean of its encoders' cosines), or where the library scores by cohort margin
    (``voicedb.cohort``) that score less the query's and the voice's cohort means; ``evidence`` names what it
    was computed from: the matcher, or ``chatterbox`` for a voice the matcher cannot compare (no kept clips),
    whose ``cosine`` was put on the matcher's scale by the calibration (see ``voicedb.matching``). ``cosine``
    is the raw cosine of that evidence where the score is not it."""

    id: str
    name: str
    score: float
    evidence: str = ""
    cosine: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "name": self.name, "score": round(self.score, 4)}
        if self.evidence:
            data["evidence"] = self.evidence
        if self.cosine is not None and self.cosine != self.score:
            data["cosine"] = round(self.cosine, 4)
        return data


@dataclass(frozen=True)
class Threshold:
    """The cosine score ``match`` requires, and where it came from: ``kind`` is ``"argument"`` (given by the
    caller), ``"calibrated"`` (``voicedb calibrate`` on this library), ``"shipped"`` (measured for this voice
    encoder) or ``"default"`` (an encoder nobody measured); ``source`` says so in words."""

    value: float
    kind: str
    source: str
    #: The library's matcher (``matchers.MATCHERS``): the encoders whose scores the threshold applies to.
    matcher: str
    #: Error rates measured for that matcher -- (threshold, false-reject rate, false-accept rate) ascending -- by
    #: ``calibrate`` on this library or on the development set for the shipped value; ``None`` if never measured.
    rates: tuple[tuple[float, float, float], ...] | None = None
    #: What the scores are: ``"cosine"`` or ``"cohort margin"`` (``voicedb.cohort``): the threshold applies to them.
    scores: str = "cosine"

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.value,
            "threshold_source": self.source,
            "matcher": self.matcher,
            "scores": self.scores,
        }


@dataclass(frozen=True)
class Calibration:
    """What ``calibrate`` measured: score counts, error rates (``rates``: threshold, false-reject rate,
    false-accept rate) at candidate thresholds, the chosen ``threshold`` and whether it was stored."""

    threshold: float
    voices: int
    same: int
    different: int
    rates: list[tuple[float, float, float]]
    stored: bool
    #: What was measured: ``"cosine"`` or ``"cohort margin"`` scores.
    scores: str = "cosine"

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "voices": self.voices,
            "same_speaker_scores": self.same,
            "different_speaker_scores": self.different,
            "rates": [
                {"threshold": t, "false_reject": round(frr, 4), "false_accept": round(far, 4)}
                for t, frr, far in self.rates
            ],
            "stored": self.stored,
            "scores": self.scores,
        }


@dataclass(frozen=True)
class AddResult:
    """What ``add`` did: the voice, whether it is new, which clips went in, and quality warnings."""

    voice: Voice
    created: bool
    clips_added: list[str]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.voice.to_dict(),
            "created": self.created,
            "clips_added": self.clips_added,
            "warnings": self.warnings,
        }


@dataclass(frozen=True)
class SpeakResult:
    """Synthesised speech: ``audio`` is float32 mono at ``sample_rate``; ``output`` is the file written, if any."""

    voice: Voice
    audio: np.ndarray = field(repr=False)
    sample_rate: int
    chunks: int
    output: Path | None = None
    #: With verification: the cosine between the audio's embedding and the voice's, and which attempt
    #: (1-based, of ``tries``) gave the audio kept.
    similarity: float | None = None
    attempt: int | None = None
    tries: list[Attempt] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate

    def to_dict(self) -> dict[str, Any]:
        data = {
            "voice": self.voice.id,
            "name": self.voice.name,
            "output": str(self.output) if self.output else None,
            "seconds": round(self.seconds, 3),
            "sample_rate": self.sample_rate,
            "chunks": self.chunks,
        }
        if self.similarity is not None:
            data.update(
                similarity=round(self.similarity, 4),
                attempt=self.attempt,
                attempts=[{"seed": t.seed, "similarity": round(t.similarity, 4)} for t in self.tries],
            )
        return data


@dataclass(frozen=True)
class Attempt:
    """One synthesis of a verified ``speak``: its seed (``None``: unseeded) and the similarity it reached."""

    seed: int | None
    similarity: float


@dataclass(frozen=True)
class Problem:
    """One inconsistency ``check`` found; ``repaired`` says whether ``--repair`` fixed it."""

    kind: str
    message: str
    repaired: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WeightsFile:
    """One weights file this machine would use: where from, its path (None: not on this machine) and SHA-256."""

    name: str
    source: str
    path: Path | None
    sha256: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "path": str(self.path) if self.path else None,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class WeightsReport:
    """What ``voicedb weights`` prints: the speaker encoders' weights and the matchers they make."""

    voice_encoder: WeightsFile
    campplus: WeightsFile
    #: What a new library would match with, and what this library matches with.
    new_library_matcher: str
    library_matcher: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "voice_encoder": self.voice_encoder.to_dict(),
            "campplus": self.campplus.to_dict(),
            "new_library_matcher": self.new_library_matcher,
            "library_matcher": self.library_matcher,
        }
