"""Reading reference clips: find them, load them at Chatterbox's rates, hash them and judge their quality."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import MAX_ANALYSED_SECONDS, MIN_SPEECH_SECONDS, RECOMMENDED_SECONDS
from .errors import AudioError
from .files import sha256_file

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".m4a"})
LOAD_SR = 24_000  # upstream prepare_conditionals loads at S3Gen's rate ...
EMBED_SR = 16_000  # ... and resamples to 16 kHz for the voice encoder and speech tokenizer
SILENCE_PEAK = 1e-3  # -60 dBFS: quieter than this is no recording at all
SPEECH_TOP_DB = 40  # frames within 40 dB of the loudest count as speech
CLIPPED_LEVEL = 0.999
CLIPPED_FRACTION = 0.001
LOW_SAMPLE_RATE = 16_000


@dataclass
class LoadedClip:
    """One reference recording, decoded and checked.

    ``wav_24k`` is float32 mono at 24 kHz, at most ``MAX_ANALYSED_SECONDS`` long; ``warnings`` lists
    quality problems that do not stop enrollment (``--strict`` turns them into errors).
    """

    path: Path
    sha256: str
    sample_rate: int
    duration_s: float
    speech_s: float
    wav_24k: np.ndarray
    clipped_fraction: float
    warnings: list[str] = field(default_factory=list)

    @property
    def wav_16k(self) -> np.ndarray:
        import librosa

        return librosa.resample(self.wav_24k, orig_sr=LOAD_SR, target_sr=EMBED_SR)


def expand_audio_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given, and the audio files inside any directory (recursively, sorted)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
            if not inside:
                raise AudioError(f"{path}: directory holds no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}).")
            found.extend(inside)
        elif not path.exists():
            raise AudioError(f"{path}: no such file.")
        else:
            found.append(path)
    if not found:
        raise AudioError("no audio files given.")
    return list(dict.fromkeys(found))


def _decode(path: Path) -> tuple[np.ndarray, int, float]:
    """(mono float32 at 24 kHz, original sample rate, full duration in seconds)."""
    import warnings

    import librosa

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa's audioread fallback warns on every MP3
            original_sr = int(librosa.get_samplerate(str(path)))
            duration = float(librosa.get_duration(path=str(path)))
            wav, _ = librosa.load(str(path), sr=LOAD_SR, mono=True, duration=MAX_ANALYSED_SECONDS)
    except PermissionError:
        raise AudioError(f"{path}: permission denied.") from None
    except librosa.util.exceptions.ParameterError as exc:
        if "finite" in str(exc):
            raise AudioError(f"{path}: holds invalid samples (NaN or infinity).") from None
        raise AudioError(f"{path}: not a readable audio file ({exc}).") from exc
    except Exception as exc:  # noqa: BLE001 - soundfile and audioread raise many types for "not audio"
        raise AudioError(f"{path}: not a readable audio file ({type(exc).__name__}).") from exc
    return np.asarray(wav, dtype=np.float32), original_sr, duration


def speech_seconds(wav: np.ndarray, sr: int) -> float:
    """Seconds of the clip within ``SPEECH_TOP_DB`` of its loudest frames: pauses do not count."""
    import librosa

    intervals = librosa.effects.split(wav, top_db=SPEECH_TOP_DB)
    return float(sum(end - start for start, end in intervals)) / sr


def load_clip(path: Path, min_seconds: float = 0.0) -> LoadedClip:
    """Decode, validate and hash one clip; raise ``AudioError`` for anything unusable.

    ``min_seconds`` is the model flavour's own minimum length (Turbo needs more than 5 s): shorter
    clips get a warning.
    """
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file.")
    if not path.exists():
        raise AudioError(f"{path}: no such file.")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: file is empty.")
    wav, original_sr, duration = _decode(path)
    if wav.size == 0:
        raise AudioError(f"{path}: holds no audio samples.")
    if not np.isfinite(wav).all():
        raise AudioError(f"{path}: holds invalid samples (NaN or infinity).")
    peak = float(np.abs(wav).max())
    if peak < SILENCE_PEAK:
        raise AudioError(f"{path}: is silent.")
    speech = speech_seconds(wav, LOAD_SR)
    if speech < MIN_SPEECH_SECONDS:
        raise AudioError(f"{path}: too short: {speech:.1f} s of speech, at least {MIN_SPEECH_SECONDS:.0f} s needed.")
    clipped = float(np.mean(np.abs(wav) >= CLIPPED_LEVEL))
    clip = LoadedClip(path, sha256_file(path), original_sr, duration, speech, wav, clipped)
    clip.warnings.extend(quality_warnings(clip, min_seconds))
    return clip


def quality_warnings(clip: LoadedClip, min_seconds: float = 0.0) -> list[str]:
    """Problems worth telling the user about, each a short phrase naming the clip."""
    found = []
    name = clip.path.name
    if min_seconds and clip.duration_s <= min_seconds:
        found.append(
            f"{name}: {clip.duration_s:.1f} s is too short for this model (needs more than {min_seconds:.0f} s)"
        )
    elif clip.duration_s < RECOMMENDED_SECONDS:
        found.append(
            f"{name}: {clip.duration_s:.1f} s is shorter than the ~{RECOMMENDED_SECONDS:.0f} s Chatterbox recommends"
        )
    if clip.clipped_fraction > CLIPPED_FRACTION:
        found.append(f"{name}: {clip.clipped_fraction:.1%} of samples are clipped")
    analysed = len(clip.wav_24k) / LOAD_SR
    if clip.speech_s < 0.5 * analysed:
        found.append(f"{name}: mostly silence ({clip.speech_s:.1f} s of speech in {analysed:.1f} s)")
    if clip.sample_rate < LOW_SAMPLE_RATE:
        found.append(f"{name}: recorded at {clip.sample_rate} Hz; 16 kHz or more gives better conditionals")
    return found


def reference_rank(clip: LoadedClip) -> tuple[bool, float]:
    """How well a clip serves as the voice's conditioning reference; higher is better.

    Chatterbox conditions on the first 6 s (prompt tokens) and 10 s (S3Gen reference) of one clip,
    so the clip with the most actual speech fills those windows best; a clipped clip loses to any
    clean one.
    """
    return clip.clipped_fraction <= CLIPPED_FRACTION, clip.speech_s


class BestReference:
    """Keeps the audio of the best reference clip offered so far and drops the others' audio, so that
    enrolling a folder of long clips holds one clip's samples at a time."""

    def __init__(self) -> None:
        self.clip: LoadedClip | None = None

    def offer(self, clip: LoadedClip) -> None:
        if self.clip is None or reference_rank(clip) > reference_rank(self.clip):
            clip, self.clip = self.clip, clip
        if clip is not None:
            clip.wav_24k = clip.wav_24k[:0]
