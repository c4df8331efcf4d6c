"""Speech played on the sound card as it is synthesised (``voicedb speak --play``).

PortAudio through the ``sounddevice`` package (``pip install 'voicedb[play]'``), imported only when
something is played: it is optional, and PortAudio itself is a system library (Debian: libportaudio2).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .errors import VoiceDBError


def play(pieces: Iterable[np.ndarray], sample_rate: int) -> float:
    """Play float32 mono ``pieces`` one after another as they come, on the default output device;
    returns the seconds played. Blocks until the last piece has been handed to the device."""
    try:
        import sounddevice
    except (ImportError, OSError) as exc:  # OSError: the package is there, PortAudio is not
        raise VoiceDBError(
            "playing needs the sounddevice package and PortAudio: pip install 'voicedb[play]' "
            "(and on Debian or Ubuntu: apt install libportaudio2)."
        ) from exc
    samples = 0
    try:
        with sounddevice.OutputStream(samplerate=sample_rate, channels=1, dtype="float32") as speakers:
            for piece in pieces:
                speakers.write(np.ascontiguousarray(piece, dtype=np.float32).reshape(-1, 1))
                samples += len(piece)
    except sounddevice.PortAudioError as exc:
        raise VoiceDBError(f"cannot play on the sound card: {exc}") from exc
    return samples / sample_rate
