"""Reading reference clips: find them, load them at Chatterbox's rates, hash them and judge their quality."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .config import MAX_ANALYSED_SECONDS, MIN_SPEECH_SECONDS, RECOMMENDED_SECONDS
from .errors import AudioError, NotAudio
from .files import sha256_file

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".m4a"})
LOAD_SR = 24_000  # upstream prepare_conditionals loads at S3Gen's rate ...
EMBED_SR = 16_000  # ... and resamples to 16 kHz for the voice encoder and speech tokenizer
SILENCE_PEAK = 1e-3  # -60 dBFS: quieter than this is no recording at all
SPEECH_TOP_DB = 40  # frames within 40 dB of the loudest count as speech
CLIPPED_LEVEL = 0.999
CLIPPED_FRACTION = 0.001
LOW_SAMPLE_RATE = 16_000
#: Sample rates and channel counts a recording can have; a header outside them is refused unread.
SAMPLE_RATES = (1_000, 192_000)
MAX_CHANNELS = 64
READ_BLOCK_FRAMES = 1 << 15


#: What every audio argument accepts: a file path, the file's bytes, or (samples, sample rate).
AudioInput = str | os.PathLike | bytes | tuple[np.ndarray, int]


@dataclass(frozen=True)
class AudioSource:
    """An audio argument made uniform: a file on disk or encoded bytes, and a name for messages."""

    name: str
    path: Path | None = None
    data: bytes | None = None

    @property
    def suffix(self) -> str:
        """File extension to keep a copy under (lower case, with the dot)."""
        if self.path is not None:
            return self.path.suffix.lower()
        import soundfile

        try:
            kind = soundfile.info(io.BytesIO(self.data)).format
        except Exception:  # noqa: BLE001 - not libsndfile's: FFmpeg may know the container
            return _ffmpeg_suffix(self.data)
        return {"WAV": ".wav", "FLAC": ".flac", "OGG": ".ogg", "MP3": ".mp3", "AIFF": ".aiff"}.get(kind, ".wav")

    def sha256(self) -> str:
        if self.path is not None:
            return sha256_file(self.path)
        return hashlib.sha256(self.data).hexdigest()

    def write_copy(self, target: Path) -> None:
        if self.path is not None:
            shutil.copyfile(self.path, target)
        else:
            target.write_bytes(self.data)


def _ffmpeg_suffix(data: bytes) -> str:
    """An extension for bytes only FFmpeg reads (``.m4a`` for MP4 audio), ``.bin`` when nothing does."""
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            formats = container.format.name.split(",")
    except Exception:  # noqa: BLE001 - not audio: _decode will say so
        return ".bin"
    return ".m4a" if "mp4" in formats else f".{formats[0]}"


def audio_source(audio: AudioInput, name: str | None = None) -> AudioSource:
    """Turn a path, bytes, or ``(samples, sample_rate)`` into an ``AudioSource``; arrays are encoded as FLAC.
    An ``AudioSource`` (bytes with their own name, as uploads come) passes through."""
    if isinstance(audio, AudioSource):
        return audio
    if isinstance(audio, (bytes, bytearray, memoryview)):
        return AudioSource(name or "audio", data=bytes(audio))
    if isinstance(audio, tuple):
        samples, rate = audio
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim not in (1, 2) or samples.size == 0 or not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise AudioError(f"{name or 'audio'}: expected (samples, sample_rate) with 1-D or 2-D samples.")
        if not np.isfinite(samples).all():
            raise AudioError(f"{name or 'audio'}: holds invalid samples (NaN or infinity).")
        import soundfile

        buffer = io.BytesIO()
        soundfile.write(buffer, np.clip(samples, -1.0, 1.0), int(rate), format="FLAC", subtype="PCM_24")
        return AudioSource(name or "audio", data=buffer.getvalue())
    if isinstance(audio, (str, os.PathLike)):
        path = Path(audio)
        return AudioSource(name or path.name, path=path)
    raise TypeError(f"audio must be a path, bytes or (samples, sample_rate), not {type(audio).__name__}")


@dataclass
class LoadedClip:
    """One reference recording, decoded and checked.

    ``wav_24k`` is float32 mono at 24 kHz, at most ``MAX_ANALYSED_SECONDS`` long; ``warnings`` lists
    quality problems that do not stop enrollment (``--strict`` turns them into errors).
    """

    source: AudioSource
    sha256: str
    sample_rate: int
    duration_s: float
    speech_s: float
    wav_24k: np.ndarray
    clipped_fraction: float
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def wav_16k(self) -> np.ndarray:
        return to_16k(self.wav_24k)


def to_16k(wav_24k: np.ndarray) -> np.ndarray:
    return resample(wav_24k, LOAD_SR, EMBED_SR)


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


def _opened(source: AudioSource) -> BinaryIO:
    """The clip's bytes as a file object; a path is opened here so that permissions fail in one place."""
    if source.path is None:
        return io.BytesIO(source.data)
    try:
        return open(source.path, "rb")  # noqa: SIM115 - closed by the caller's ``with``
    except PermissionError:
        raise AudioError(f"{source.name}: permission denied.") from None


def _check_layout(name: str, sample_rate: int, channels: int) -> None:
    """Refuse what no recording has before reading a sample: a header can claim anything."""
    low, high = SAMPLE_RATES
    if not low <= sample_rate <= high:
        raise NotAudio(f"{name}: a sample rate of {sample_rate} Hz is outside the {low}–{high} Hz voicedb reads.")
    if channels < 1:
        raise NotAudio(f"{name}: holds no audio channels.")
    if channels > MAX_CHANNELS:
        raise NotAudio(f"{name}: {channels} channels; voicedb reads at most {MAX_CHANNELS}.")


def _mono_prefix(blocks: Iterable[np.ndarray], sample_rate: int) -> np.ndarray:
    """Channel means of (channels, frames) blocks, stopping after ``MAX_ANALYSED_SECONDS``, so that memory
    follows the samples actually decoded and the analysed span, never what a header claims."""
    wanted = int(MAX_ANALYSED_SECONDS * sample_rate)
    kept: list[np.ndarray] = []
    have = 0
    for block in blocks:
        mono = block.mean(axis=0, dtype=np.float32) if block.shape[0] > 1 else block[0]
        kept.append(mono[: wanted - have])
        have += len(kept[-1])
        if have >= wanted:
            break
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.float32)


def _decode_with_libsndfile(name: str, handle: BinaryIO) -> tuple[np.ndarray, int, float]:
    import soundfile

    with soundfile.SoundFile(handle) as audio:
        _check_layout(name, audio.samplerate, audio.channels)
        frames = int(MAX_ANALYSED_SECONDS * audio.samplerate)
        blocks = audio.blocks(READ_BLOCK_FRAMES, frames=frames, dtype="float32", always_2d=True)
        mono = _mono_prefix((block.T for block in blocks), audio.samplerate)
        return mono, audio.samplerate, audio.frames / audio.samplerate


def _decode_with_ffmpeg(name: str, handle: BinaryIO) -> tuple[np.ndarray, int, float]:
    """What libsndfile cannot read (AAC in M4A, WMA, ...), through PyAV's bundled FFmpeg."""
    import av

    with av.open(handle, metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise NotAudio(f"{name}: holds no audio stream.")
        stream = container.streams.audio[0]
        sample_rate, channels = int(stream.codec_context.sample_rate), int(stream.codec_context.channels)
        _check_layout(name, sample_rate, channels)
        seconds = float(stream.duration * stream.time_base) if stream.duration else (container.duration or 0) / 1e6
        as_float = av.AudioResampler(format="fltp")  # planar float, rate and layout kept

        def blocks() -> Iterator[np.ndarray]:
            for frame in container.decode(stream):
                for converted in as_float.resample(frame):
                    yield converted.to_ndarray()

        return _mono_prefix(blocks(), sample_rate), sample_rate, seconds


def resample(wav: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """librosa's default resampling (soxr HQ, length ``ceil(n * to / from)``) without importing librosa,
    so that the samples are exactly what upstream's ``librosa.load(..., sr=...)`` gives."""
    if from_rate == to_rate:
        return wav
    import soxr

    length = int(np.ceil(len(wav) * to_rate / from_rate))
    out = soxr.resample(wav, from_rate, to_rate, quality="soxr_hq")
    if len(out) < length:
        out = np.pad(out, (0, length - len(out)))
    return np.ascontiguousarray(out[:length], dtype=np.float32)


def _decode(source: AudioSource) -> tuple[np.ndarray, int, float]:
    """(mono float32 at 24 kHz, original sample rate, full duration in seconds as the file claims it).

    libsndfile reads WAV, FLAC, Ogg and AIFF; MP3 and anything else goes to FFmpeg. Either way the
    file is read in blocks up to ``MAX_ANALYSED_SECONDS``, whatever its header announces.
    """
    import soundfile

    name = source.name
    with _opened(source) as handle:
        try:
            if _looks_like_mp3(handle.read(3)):
                handle.seek(0)
                wav, sample_rate, seconds = _decode_with_ffmpeg(name, handle)
            else:
                handle.seek(0)
                try:
                    wav, sample_rate, seconds = _decode_with_libsndfile(name, handle)
                except soundfile.LibsndfileError:
                    handle.seek(0)
                    wav, sample_rate, seconds = _decode_with_ffmpeg(name, handle)
        except AudioError:
            raise
        except Exception as exc:  # noqa: BLE001 - both decoders raise many types for "not audio" or damage
            raise NotAudio(f"{name}: not a readable audio file (unknown format or damaged).") from exc
    return resample(wav, sample_rate, LOAD_SR), sample_rate, seconds


def _looks_like_mp3(head: bytes) -> bool:
    """An ID3 tag or an MPEG frame sync. FFmpeg decodes MP3 as libsndfile does (to within 2e-6) but
    quietly, where libsndfile's mpg123 prints its complaints about damaged frames to the terminal."""
    return head.startswith(b"ID3") or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)


def nonsilent_frames(wav: np.ndarray, top_db: float, frame: int = 2048, hop: int = 512) -> np.ndarray:
    """Which centred frames have an RMS level within ``top_db`` of the loudest frame: the test
    ``librosa.effects.split`` and ``trim`` make, computed from running sums without librosa."""
    padded = np.pad(np.asarray(wav, dtype=np.float64), frame // 2)
    count = 1 + (len(padded) - frame) // hop
    if count <= 0:
        return np.zeros(0, dtype=bool)
    energy = np.concatenate([[0.0], np.cumsum(padded**2)])
    starts = np.arange(count) * hop
    power = np.maximum((energy[starts + frame] - energy[starts]) / frame, 0.0)
    floor = 1e-10  # librosa's amin of 1e-5, squared
    loudness = 10 * np.log10(np.maximum(power, floor)) - 10 * np.log10(max(floor, float(power.max())))
    return loudness > -top_db


def speech_seconds(wav: np.ndarray, sr: int) -> float:
    """Seconds of the clip within ``SPEECH_TOP_DB`` of its loudest frames: pauses do not count."""
    hop = 512
    loud = nonsilent_frames(wav, SPEECH_TOP_DB, hop=hop)
    if not loud.size:
        return 0.0
    samples = np.minimum(np.arange(len(loud) + 1) * hop, len(wav))
    return float(np.sum(np.diff(samples)[loud])) / sr


def _decoded_speech(source: AudioSource) -> tuple[np.ndarray, int, float, float]:
    """Decode and refuse what cannot hold a voice: (wav_24k, original rate, duration, speech seconds)."""
    name = source.name
    if source.path is not None:
        if source.path.is_dir():
            raise AudioError(f"{source.path}: is a directory, not an audio file.")
        if not source.path.exists():
            raise AudioError(f"{source.path}: no such file.")
        if source.path.stat().st_size == 0:
            raise AudioError(f"{source.path}: file is empty.")
        name = str(source.path)
    elif not source.data:
        raise AudioError(f"{name}: file is empty.")
    wav, original_sr, duration = _decode(source)
    if wav.size == 0:
        raise AudioError(f"{name}: holds no audio samples.")
    if not np.isfinite(wav).all():
        raise AudioError(f"{name}: holds invalid samples (NaN or infinity).")
    if float(np.abs(wav).max()) < SILENCE_PEAK:
        raise AudioError(f"{name}: is silent.")
    speech = speech_seconds(wav, LOAD_SR)
    if speech < MIN_SPEECH_SECONDS:
        raise AudioError(f"{name}: too short: {speech:.1f} s of speech, at least {MIN_SPEECH_SECONDS:.0f} s needed.")
    return wav, original_sr, duration, speech


def load_clip(audio: AudioInput | AudioSource, min_seconds: float = 0.0) -> LoadedClip:
    """Decode, validate and hash one reference clip; raise ``AudioError`` for anything unusable.

    ``min_seconds`` is the model flavour's own minimum length (Turbo needs more than 5 s): shorter
    clips get a warning.
    """
    source = audio if isinstance(audio, AudioSource) else audio_source(audio)
    wav, original_sr, duration, speech = _decoded_speech(source)
    clipped = float(np.mean(np.abs(wav) >= CLIPPED_LEVEL))
    clip = LoadedClip(source, source.sha256(), original_sr, duration, speech, wav, clipped)
    clip.warnings.extend(quality_warnings(clip, min_seconds))
    return clip


def load_query(audio: AudioInput) -> np.ndarray:
    """A clip to match against the library, at 16 kHz: validated like a reference, but neither hashed
    nor judged, since nothing about it is kept."""
    wav, _, _, _ = _decoded_speech(audio_source(audio))
    return to_16k(wav)


def quality_warnings(clip: LoadedClip, min_seconds: float = 0.0) -> list[str]:
    """Problems worth telling the user about, each a short phrase naming the clip."""
    found = []
    name = clip.name
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
