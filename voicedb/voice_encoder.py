"""Chatterbox's voice encoder in NumPy: upstream's ``VoiceEncoder.embeds_from_wavs`` with its defaults
(trim at 20 dB, 40-mel power spectrogram, partials of 160 frames at rate 1.3, a 3-layer LSTM, ReLU
projection, mean of the L2-normalised partials), computed without torch, librosa or scipy.

Why: a process that only matches (``voicedb match CLIP``) spent most of its time importing those
libraries. This module needs NumPy and the weights' ``safetensors`` file; its embeddings equal
upstream's to float32 rounding (``tests/test_matching.py`` compares them on real speech).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from .audio import nonsilent_frames
from .errors import CheckpointError
from .weights import read_weights

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160
N_MELS = 40
PARTIAL_FRAMES = 160
PARTIAL_STEP = int(np.round((SAMPLE_RATE / 1.3) / PARTIAL_FRAMES))  # upstream's rate=1.3 default: 77 frames
MIN_COVERAGE = 0.8
TRIM_TOP_DB = 20
HIDDEN = 256
LAYERS = 3
BATCH = 32  # partials per forward pass, as upstream: bounds memory for long clips


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa's default)."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / (200.0 / 3)
    log_part = hz >= 1000.0
    return np.where(log_part, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * (200.0 / 3)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), hz)


@cache
def mel_basis() -> np.ndarray:
    """(40, 201) Slaney-normalised triangular filters from 0 to 8 kHz, as ``librosa.filters.mel``."""
    fft_hz = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    mel_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), N_MELS + 2))
    widths = np.diff(mel_hz)
    ramps = np.subtract.outer(mel_hz, fft_hz)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]
    return weights.astype(np.float32)


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """(frames, 40) mel power spectrogram: centred frames with reflection padding, periodic Hann window."""
    padded = np.pad(wav, N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)
    spectrum = np.fft.rfft(frames * window, axis=1).astype(np.complex64)
    power = spectrum.real**2 + spectrum.imag**2
    return (power @ mel_basis().T).astype(np.float32)


def trimmed(wav: np.ndarray) -> np.ndarray:
    """The clip without leading and trailing frames 20 dB below its loudest (``librosa.effects.trim``)."""
    loud = np.flatnonzero(nonsilent_frames(wav, TRIM_TOP_DB))
    if not loud.size:
        return wav[:0]
    return wav[loud[0] * 512 : min(len(wav), (loud[-1] + 1) * 512)]


def partials(mel: np.ndarray) -> np.ndarray:
    """(n, 160, 40) overlapping windows covering the clip, the last one zero-padded when it is at
    least 80% covered (upstream's ``get_num_wins``)."""
    count, remainder = divmod(max(len(mel) - PARTIAL_FRAMES + PARTIAL_STEP, 0), PARTIAL_STEP)
    if count == 0 or (remainder + (PARTIAL_FRAMES - PARTIAL_STEP)) / PARTIAL_FRAMES >= MIN_COVERAGE:
        count += 1
    needed = PARTIAL_FRAMES + PARTIAL_STEP * (count - 1)
    if needed > len(mel):
        mel = np.concatenate([mel, np.zeros((needed - len(mel), N_MELS), dtype=np.float32)])
    starts = np.arange(count) * PARTIAL_STEP
    return np.stack([mel[start : start + PARTIAL_FRAMES] for start in starts])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # the same function, without exp overflow


class VoiceEncoder:
    """The network, with weights as NumPy arrays keyed as upstream's state dict."""

    def __init__(self, state: dict[str, np.ndarray], source: Path) -> None:
        expected = {"proj.weight": (HIDDEN, HIDDEN), "proj.bias": (HIDDEN,)}
        for layer in range(LAYERS):
            inputs = N_MELS if layer == 0 else HIDDEN
            expected |= {
                f"lstm.weight_ih_l{layer}": (4 * HIDDEN, inputs),
                f"lstm.weight_hh_l{layer}": (4 * HIDDEN, HIDDEN),
                f"lstm.bias_ih_l{layer}": (4 * HIDDEN,),
                f"lstm.bias_hh_l{layer}": (4 * HIDDEN,),
            }
        for key, shape in expected.items():
            if key not in state or tuple(state[key].shape) != shape:
                raise CheckpointError(f"{source.name} does not fit VoiceEncoder: {key} missing or of the wrong shape.")
        self.weights = {key: np.ascontiguousarray(state[key], dtype=np.float32) for key in expected}

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """(n, 256) L2-normalised embeddings of (n, 160, 40) partials."""
        w = self.weights
        sequence = batch
        for layer in range(LAYERS):
            bias = w[f"lstm.bias_ih_l{layer}"] + w[f"lstm.bias_hh_l{layer}"]
            projected = sequence @ w[f"lstm.weight_ih_l{layer}"].T + bias
            recurrent = w[f"lstm.weight_hh_l{layer}"].T
            hidden = np.zeros((len(batch), HIDDEN), dtype=np.float32)
            cell = np.zeros_like(hidden)
            outputs = np.empty((len(batch), sequence.shape[1], HIDDEN), dtype=np.float32)
            for step in range(sequence.shape[1]):
                gates = projected[:, step] + hidden @ recurrent
                i, f, g, o = np.split(gates, 4, axis=1)
                cell = _sigmoid(f) * cell + _sigmoid(i) * np.tanh(g)
                hidden = _sigmoid(o) * np.tanh(cell)
                outputs[:, step] = hidden
            sequence = outputs
        raw = np.maximum(hidden @ w["proj.weight"].T + w["proj.bias"], 0.0)
        return raw / np.linalg.norm(raw, axis=1, keepdims=True)

    def embed(self, wav_16k: np.ndarray) -> np.ndarray:
        """Utterance embedding of one clip at 16 kHz: L2-normalised float32 of shape (256,)."""
        return self.embed_many([wav_16k])[0]

    def embed_many(self, wavs_16k: list[np.ndarray]) -> np.ndarray:
        """(n, 256) utterance embeddings of n clips, their partials run through the network together
        in batches of ``BATCH``: many short clips cost a few large matrix products, not many small ones."""
        windows = [partials(melspectrogram(trimmed(np.asarray(wav, dtype=np.float32)))) for wav in wavs_16k]
        stacked = np.concatenate(windows)
        embedded = np.concatenate([self._forward(stacked[at : at + BATCH]) for at in range(0, len(stacked), BATCH)])
        bounds = np.cumsum([0] + [len(w) for w in windows])
        means = np.stack([embedded[start:end].mean(axis=0) for start, end in zip(bounds[:-1], bounds[1:])])
        return (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)


def load_state(path: Path) -> dict[str, np.ndarray]:
    """The encoder's weights as NumPy arrays (torch is imported only for the multilingual layout's ``ve.pt``)."""
    return read_weights(path, as_numpy=True)
