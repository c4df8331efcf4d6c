"""Blended voices: conditionals interpolated from several stored voices, Kokoro-FastAPI's ``a(2)+b(1)``.

What is interpolated, with the weights normalised to sum to 1 (a ``-`` term counts negatively, as in
Kokoro-FastAPI):

- ``t3.speaker_emb``, the 256-d speaker embedding T3 is conditioned on: the weighted sum, L2-normalised
  (the voice encoder's embeddings are unit vectors);
- ``gen["embedding"]``, S3Gen's 192-d x-vector of the reference: the weighted sum (S3Gen normalises it);

and what is taken from the first voice, since token sequences and mel frames cannot be averaged: the
speech-token prompt (``t3.cond_prompt_speech_tokens``), S3Gen's prompt tokens and prompt mel features,
and the emotion setting (which ``exaggeration`` replaces at synthesis anyway).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .catalog import Catalog, check_name
from .context import LibraryContext
from .errors import InvalidBlend
from .matchers import normalised
from .records import Voice
from .store import utcnow

if TYPE_CHECKING:
    from .conditionals import ConditionalsStore

#: ``Portability.insert``: adds a voice with its conditionals in one change.
Insert = Callable[..., Voice]

#: Between terms: ``+``, or ``-`` right after a weight's ``)`` (names may hold hyphens: ``a-b`` is one name).
_OPERATOR = re.compile(r"\+|(?<=\))\s*-")
#: One term: a voice reference, optionally followed by its weight in parentheses.
_TERM = re.compile(r"\s*(?P<ref>[^()+]*[^()+\s])\s*(?:\(\s*(?P<weight>[^()]*?)\s*\))?\s*")


@dataclass(frozen=True)
class Part:
    """One voice of a blend and its weight (negative: subtracted)."""

    ref: str
    weight: float


def is_blend(spec: str) -> bool:
    """Whether a ``voice`` value is written as a blend (``a+b``, ``a(2)+b(1)``, ``a(2)-b(1)``)."""
    return bool(_OPERATOR.search(spec)) or bool(re.fullmatch(r".*\(.*\)\s*", spec))


def parse(spec: str) -> list[Part]:
    """The voices of a blend spec with their weights normalised (absolute values summing to 1)."""
    pieces, signs, start = [], [1.0], 0
    for operator in _OPERATOR.finditer(spec):
        pieces.append(spec[start : operator.start()])
        signs.append(-1.0 if operator.group().strip() == "-" else 1.0)
        start = operator.end()
    pieces.append(spec[start:])
    parts = []
    for piece, sign in zip(pieces, signs, strict=True):
        found = _TERM.fullmatch(piece)
        if found is None:
            shown = piece.strip() or "nothing"
            raise InvalidBlend(f"voice blend {spec!r}: cannot read {shown!r} as a voice; write a(2)+b(1).")
        weight = 1.0 if found["weight"] is None else _weight(spec, found["weight"])
        parts.append(Part(found["ref"], sign * weight))
    if len({p.ref for p in parts}) != len(parts):
        raise InvalidBlend(f"voice blend {spec!r} names a voice twice; give it one weight.")
    if all(p.weight < 0 for p in parts):
        raise InvalidBlend(f"voice blend {spec!r} only subtracts; start from a voice.")
    total = sum(abs(p.weight) for p in parts)
    return [Part(p.ref, p.weight / total) for p in parts]


def _weight(spec: str, text: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise InvalidBlend(f"voice blend {spec!r}: weight {text!r} is not a number.") from None
    if not np.isfinite(weight) or weight <= 0:
        raise InvalidBlend(f"voice blend {spec!r}: weights must be positive numbers (subtract with '-').")
    return weight


def blend_vectors(vectors: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """The weighted sum of unit speaker embeddings, normalised: the blend's embedding."""
    mixed = sum(w * np.asarray(v, dtype=np.float64) for v, w in zip(vectors, weights, strict=True))
    if float(np.linalg.norm(mixed)) < 1e-6:
        raise InvalidBlend("these weights cancel the voices out; choose other weights.")
    return normalised(np.asarray(mixed, dtype=np.float32))


def blend_conditionals(conds: list[Any], weights: list[float], speaker: np.ndarray) -> Any:
    """Upstream ``Conditionals`` whose speaker embedding is ``speaker`` (see ``blend_vectors``) and whose
    S3Gen x-vector is the weighted sum of the voices'; everything else is the first voice's."""
    import torch
    from chatterbox.models.t3.modules.cond_enc import T3Cond

    first = conds[0]
    embeddings = [c.gen["embedding"].to("cpu", torch.float32) for c in conds]
    if len({tuple(e.shape) for e in embeddings}) != 1:
        raise InvalidBlend("these voices' conditionals come from different models and cannot be blended.")
    gen = dict(first.gen)
    gen["embedding"] = sum(w * e for e, w in zip(embeddings, weights, strict=True)).to(first.gen["embedding"].device)
    t3 = first.t3
    t3_cond = T3Cond(
        speaker_emb=torch.from_numpy(speaker.astype(np.float32)).reshape(1, -1).to(t3.speaker_emb.device),
        clap_emb=t3.clap_emb,
        cond_prompt_speech_tokens=t3.cond_prompt_speech_tokens,
        cond_prompt_speech_emb=t3.cond_prompt_speech_emb,
        emotion_adv=t3.emotion_adv,
    )
    return type(first)(t3_cond, gen)


def provenance(sources: list[tuple[str, str, float]]) -> dict[str, Any]:
    """What a stored blend records: ``{"sources": [{"id", "name", "weight"}]}``."""
    return {"sources": [{"id": i, "name": n, "weight": round(w, 6)} for i, n, w in sources]}


class Blending:
    """Speaking with a blend on the fly, and storing one as a voice of its own."""

    def __init__(self, ctx: LibraryContext, catalog: Catalog, conditionals: ConditionalsStore) -> None:
        self.ctx = ctx
        self.catalog = catalog
        self.conditionals = conditionals

    def sources(self, spec: str) -> tuple[list[Voice], list[float]]:
        """The stored voices a blend spec names, each once, and their normalised weights."""
        parts = parse(spec)
        voices = [self.catalog.get(part.ref) for part in parts]
        if len({v.id for v in voices}) != len(voices):
            raise InvalidBlend(f"voice blend {spec!r} names one voice twice; give it one weight.")
        return voices, [part.weight for part in parts]

    def blended(self, voices: list[Voice], weights: list[float], model: str) -> tuple[Any, np.ndarray]:
        """The blend's conditionals for ``model`` and its speaker embedding."""
        speaker = blend_vectors([self.catalog.vector(v.id) for v in voices], weights)
        conds = [self.conditionals.load(v.id, model) for v in voices]
        return blend_conditionals(conds, weights, speaker), speaker

    def unstored(self, spec: str, voices: list[Voice], weights: list[float], model: str) -> Voice:
        """What a spoken-but-not-stored blend is called in results: the spec, with its provenance."""
        now = utcnow()
        return Voice(
            id="",
            name=spec,
            tags=[],
            clips=0,
            seconds=0.0,
            models=[model],
            language=voices[0].language,
            created_at=now,
            updated_at=now,
            blend=provenance([(v.id, v.name, w) for v, w in zip(voices, weights, strict=True)]),
        )

    def store(self, spec: str, name: str, tags: list[str], insert: Insert) -> Voice:
        """Keep a blend as a voice: conditionals for every model all its sources have saved (English where
        they share none), its speaker embedding as its vector (so ``match`` finds it), its provenance."""
        from .conditionals import IMPORTED, Prepared, serialise

        name = check_name(name)
        self.catalog.check_name_free(name)
        voices, weights = self.sources(spec)
        if len(voices) < 2:
            raise InvalidBlend(f"voice blend {spec!r} names one voice; a blend needs two or more.")
        shared = set.intersection(*(set(v.models) for v in voices)) or {"english"}
        prepared, speaker = {}, None
        for model in sorted(shared):
            conds, speaker = self.blended(voices, weights, model)
            prepared[model] = Prepared(model, serialise(conds.to("cpu")), IMPORTED, None)
        encoder = self.ctx.library_encoder() or self.ctx.engine.encoder_checksum
        made = provenance([(v.id, v.name, w) for v, w in zip(voices, weights, strict=True)])
        return insert(name, tags, speaker, encoder, prepared, [], voices[0].language, None, made)
