"""The response formats of OpenAI's speech endpoint, encoded in-process as the audio arrives.

Raw PCM and WAV (with an open-ended header) stream as they are; MP3, Ogg Opus and AAC stream
through PyAV's bundled FFmpeg encoders. FLAC is written whole at the end by libsndfile, the encoder
``voicedb speak -o`` uses, because a FLAC streamed without its total length is unreadable to
libsndfile-based tools. No ``ffmpeg`` program is ever needed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .speech import FORMATS as FILE_FORMATS
from .speech import encode

SAMPLE_RATE = 24_000


@dataclass(frozen=True)
class AudioFormat:
    """One ``response_format``: its media type and the PyAV (container, codec) that streams it, if any."""

    name: str
    media_type: str
    pyav: tuple[str, str] | None = None


FORMATS = {
    f.name: f
    for f in (
        AudioFormat("mp3", "audio/mpeg", ("mp3", "libmp3lame")),
        AudioFormat("opus", "audio/ogg", ("ogg", "libopus")),
        AudioFormat("aac", "audio/aac", ("adts", "aac")),
        AudioFormat("flac", "audio/flac"),
        AudioFormat("wav", "audio/wav"),
        AudioFormat("pcm", "audio/pcm"),  # raw 24 kHz 16-bit little-endian mono
    )
}


def pcm16(audio: np.ndarray) -> bytes:
    """Float samples as 16-bit little-endian PCM, rounded as libsndfile rounds them."""
    return np.rint(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def change_speed(audio: np.ndarray, speed: float) -> np.ndarray:
    """Faster or slower speech at the same pitch (phase-vocoder time stretch)."""
    if speed == 1.0 or audio.size == 0:
        return audio
    import librosa

    return librosa.effects.time_stretch(audio, rate=speed).astype(np.float32)


class _Sink:
    """A write-only file for PyAV: it collects what the muxer writes until drained."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class StreamEncoder:
    """Encode audio piece by piece: ``feed`` returns the bytes ready so far, ``finish`` the rest.

    Concatenated, they are one valid file of the format.
    """

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self._started = False
        self._held: list[np.ndarray] = []  # FLAC: written whole by ``finish``
        self._container: Any = None
        if fmt.pyav is not None:
            import av

            container_format, codec = fmt.pyav
            self._sink = _Sink()
            self._container = av.open(self._sink, mode="w", format=container_format)
            self._stream = self._container.add_stream(codec, rate=SAMPLE_RATE, layout="mono")
            self._resampler = av.AudioResampler(
                format=self._stream.codec_context.format.name, layout="mono", rate=SAMPLE_RATE
            )

    def feed(self, audio: np.ndarray) -> bytes:
        header = b"" if self._started or self.format.name != "wav" else _open_ended_wav_header()
        self._started = True
        if self.format.name == "flac":
            self._held.append(audio)
            return b""
        if self._container is None:
            return header + pcm16(audio)
        self._encode(audio)
        return self._sink.drain()

    def finish(self) -> bytes:
        """The rest of the file; the encoder is done after this."""
        if self.format.name == "flac":
            held = np.concatenate(self._held) if self._held else np.zeros(0, np.float32)
            return encode(held, SAMPLE_RATE, *FILE_FORMATS[".flac"])
        if self._container is None:
            return b"" if self._started else self.feed(np.zeros(0, np.float32))
        self._encode(None)
        self._container.close()
        return self._sink.drain()

    def _encode(self, audio: np.ndarray | None) -> None:
        import av

        frame = None
        if audio is not None:
            if audio.size == 0:
                return
            frame = av.AudioFrame.from_ndarray(
                np.clip(audio, -1.0, 1.0).astype(np.float32)[None, :], format="flt", layout="mono"
            )
            frame.sample_rate = SAMPLE_RATE
        for resampled in self._resampler.resample(frame):
            for packet in self._stream.encode(resampled):
                self._container.mux(packet)
        if audio is None:
            for packet in self._stream.encode(None):
                self._container.mux(packet)


def _open_ended_wav_header() -> bytes:
    """A 16-bit mono WAV header whose sizes say "unknown": how WAV is streamed, and decoders read to the end."""
    unknown = 0xFFFFFFFF
    fmt_chunk = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16)
    return struct.pack("<4sI4s", b"RIFF", unknown, b"WAVE") + fmt_chunk + struct.pack("<4sI", b"data", unknown)
