"""Text in, audio out: splitting long text into chunks Chatterbox can speak, joining and encoding the audio."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .errors import VoiceDBError
from .files import atomic_path

#: Chatterbox stops at 1000 speech tokens (~40 s); ~300 characters of English stay well inside that.
MAX_CHUNK_CHARS = 300
PAUSE_SECONDS = 0.25
_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])\s+")
_CLAUSE_END = re.compile(r"(?<=[,;:])\s+")


def split_text(text: str, max_chars: int = MAX_CHUNK_CHARS) -> list[str]:
    """Sentences packed into chunks of at most ``max_chars``; an overlong sentence splits at clauses, then words."""
    text = " ".join(text.split())
    if not text:
        raise VoiceDBError("there is no text to speak.")
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        if len(sentence) <= max_chars:
            pieces.append(sentence)
            continue
        for clause in _CLAUSE_END.split(sentence):
            pieces.extend(_split_words(clause, max_chars) if len(clause) > max_chars else [clause])
    chunks: list[str] = []
    for piece in pieces:
        if chunks and len(chunks[-1]) + 1 + len(piece) <= max_chars:
            chunks[-1] += " " + piece
        else:
            chunks.append(piece)
    return chunks


def _split_words(text: str, max_chars: int) -> list[str]:
    chunks: list[str] = []
    for word in text.split(" "):
        if chunks and len(chunks[-1]) + 1 + len(word) <= max_chars:
            chunks[-1] += " " + word
        else:
            chunks.append(word[:max_chars])
    return chunks


def pause(sample_rate: int, seconds: float = PAUSE_SECONDS) -> np.ndarray:
    """The silence put between chunks of speech (float32, mono)."""
    return np.zeros(int(seconds * sample_rate), dtype=np.float32)


#: Output formats by file suffix: (soundfile format, subtype). The same formats the server offers.
FORMATS = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
    ".ogg": ("OGG", "OPUS"),
    ".opus": ("OGG", "OPUS"),
}


def output_format(path: Path) -> tuple[str, str]:
    """The (format, subtype) a file name asks for; an unknown suffix is refused before any work."""
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise VoiceDBError(f"cannot write {path.name}: use a file name ending in {', '.join(FORMATS)}.") from None


def encode(audio: np.ndarray, sample_rate: int, fmt: str, subtype: str) -> bytes:
    """Encode mono float32 audio with libsndfile (MP3, Ogg Opus, FLAC, WAV); no external programs."""
    import io

    import soundfile

    if fmt == "OGG" and subtype == "OPUS" and sample_rate not in (8000, 12000, 16000, 24000, 48000):
        raise VoiceDBError(f"Opus cannot encode {sample_rate} Hz audio.")
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(audio, -1.0, 1.0), sample_rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def write_audio(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write audio in the format ``path``'s suffix names, atomically: a crash never leaves half a file."""
    data = encode(audio, sample_rate, *output_format(path))
    try:
        with atomic_path(path.resolve()) as temp:
            temp.write_bytes(data)
    except OSError as exc:
        raise VoiceDBError(f"cannot write {path}: {exc.strerror or exc}.") from exc
