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

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        data["updated_at"] = self.updated_at.isoformat()
        return data


@dataclass(frozen=True)
class Match:
    """One stored voice near a query clip; ``score`` is the cosine similarity in [-1, 1]."""

    id: str
    name: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "score": round(self.score, 4)}


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

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate

    def to_dict(self) -> dict[str, Any]:
        return {
            "voice": self.voice.id,
            "name": self.voice.name,
            "output": str(self.output) if self.output else None,
            "seconds": round(self.seconds, 3),
            "sample_rate": self.sample_rate,
            "chunks": self.chunks,
        }


@dataclass(frozen=True)
class Problem:
    """One inconsistency ``check`` found; ``repaired`` says whether ``--repair`` fixed it."""

    kind: str
    message: str
    repaired: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
