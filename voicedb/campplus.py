"""CAM++, 3D-Speaker's speaker-verification network, as a second speaker encoder for matching.

Why: Chatterbox's voice encoder is there to condition synthesis; CAM++ (``CAMPPlus(feat_dim=80,
embedding_size=192)`` from ``speakerlab/models/campplus``) is trained for verification, on Chinese and
English speakers, and matching can use it beside or instead of that encoder. The official weights
are ``campplus_cn_en_common.pt`` from ModelScope's ``iic/speech_campplus_sv_zh_en_16k-common_advanced``
(Apache-2.0).

The filterbank and the network run in NumPy (float32) from the state dict read without torch, so a
process that only matches never imports torch; nothing of 3D-Speaker is needed either. Its embeddings
equal upstream's to float32 rounding (``tests/test_campplus.py`` compares them with 3D-Speaker's).
"""

from __future__ import annotations

import math
import warnings
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import AudioError, CheckpointError
from .files import sha256_file
from .weights import read_torch_state

SAMPLE_RATE = 16_000
N_MELS = 80
EMBEDDING_SIZE = 192
MIN_SECONDS = 0.5  # shorter clips leave the pooling layer too few frames to measure a voice
CAMPPLUS_FILE = "campplus_cn_en_common.pt"
SHA256 = "92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199"  # the official file
#: No Hugging Face repository known to us mirrors the official file; this one is tried, and what it
#: serves is used only if its SHA-256 is the official one.
HUB_REPO = "iic/speech_campplus_sv_zh_en_16k-common_advanced"

HEAD_CHANNELS = 32  # of the 2-D convolutional front end, which halves the 80 mel bands three times
TDNN_CHANNELS = 128
GROWTH = 32  # channels each dense layer adds
BOTTLENECK = 128  # channels inside each dense layer
BLOCKS = ((12, 1), (24, 2), (16, 2))  # (layers, dilation) of the three dense blocks; kernel 3
SEGMENT = 100  # frames per segment of the context-aware mask's segment pooling
BN_EPS = 1e-5

# Kaldi's filterbank as torchaudio's ``kaldi.fbank`` computes it with 3D-Speaker's options (dither 0)
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
N_FFT = 512  # the window padded to a power of two
PREEMPHASIS = 0.97
LOW_HZ = 20.0
FLOOR = float(np.finfo(np.float32).eps)  # of the mel energies, before the log


@cache
def mel_banks() -> np.ndarray:
    """(257, 80) Kaldi's triangular filters, equally spaced on its mel scale from 20 Hz to Nyquist; the
    Nyquist bin weighs nothing. In float32, step by step as ``kaldi.get_mel_banks`` computes them:
    the lowest bands cover one or two FFT bins, and float64 filters would move their energies by 1e-4."""
    f32 = np.float32
    low, high = (1127.0 * math.log(1.0 + hz / 700.0) for hz in (LOW_HZ, SAMPLE_RATE / 2))
    delta = (high - low) / (N_MELS + 1)
    band = np.arange(N_MELS, dtype=f32)[:, None]
    left, centre, right = (f32(low) + (band + f32(k)) * f32(delta) for k in (0, 1, 2))
    mel = f32(1127.0) * np.log(f32(1.0) + np.arange(N_FFT // 2, dtype=f32) * f32(SAMPLE_RATE / N_FFT) / f32(700.0))
    up = (mel - left) / (centre - left)
    down = (right - mel) / (right - centre)
    banks = np.maximum(f32(0.0), np.minimum(up, down))
    return np.pad(banks, ((0, 0), (0, 1))).T.astype(np.float64)


@cache
def povey_window() -> np.ndarray:
    """Kaldi's default window: a symmetric Hann window to the power 0.85."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / (WINDOW - 1))) ** 0.85


def features(wav_16k: np.ndarray) -> np.ndarray:
    """(frames, 80) float32 Kaldi filterbank of a 16 kHz clip, less its mean over time (3D-Speaker's
    ``FBank``): whole 25 ms frames every 10 ms, DC offset removed, pre-emphasis, Povey window, power
    spectrum, log mel energies floored at float32's epsilon. Computed in float64."""
    wav = np.asarray(wav_16k, dtype=np.float32).astype(np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(wav, WINDOW)[::HOP]
    frames = frames - frames.mean(axis=1, keepdims=True)
    frames = frames - PREEMPHASIS * np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    spectrum = np.fft.rfft(frames * povey_window(), n=N_FFT, axis=1)
    power = spectrum.real**2 + spectrum.imag**2
    bank = np.log(np.maximum(power @ mel_banks(), FLOOR))
    return (bank - bank.mean(axis=0, keepdims=True)).astype(np.float32)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0, out=x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # the same function, without exp overflow


def _conv2d(x: np.ndarray, conv: _Folded, stride: int) -> np.ndarray:
    """A 3x3 convolution of (channels, bands, frames), padded by 1, with ``stride`` along the bands, as
    one matmul of its weight (out, channels * 9) with the stacked shifted views."""
    channels, bands, frames = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    out_bands = (bands - 1) // stride + 1
    columns = np.stack(
        [padded[:, i : i + stride * out_bands : stride, j : j + frames] for i in range(3) for j in range(3)], axis=1
    )
    out = conv.weight @ columns.reshape(channels * 9, out_bands * frames) + conv.bias
    return out.reshape(-1, out_bands, frames)


def _conv1d(x: np.ndarray, weight: np.ndarray, kernel: int, dilation: int = 1, stride: int = 1) -> np.ndarray:
    """A 1-D convolution of (channels, frames), padded to keep the length (before ``stride``), as one
    matmul of ``weight`` (out, channels * kernel) with the stacked shifted views."""
    channels, frames = x.shape
    pad = dilation * (kernel - 1) // 2
    padded = np.pad(x, ((0, 0), (pad, pad)))
    out_frames = (frames - 1) // stride + 1
    columns = np.stack(
        [padded[:, k * dilation : k * dilation + stride * out_frames : stride] for k in range(kernel)], axis=1
    )
    return weight @ columns.reshape(channels * kernel, out_frames)


def _normaliser(state: dict[str, np.ndarray], prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode BatchNorm as a per-channel (scale, shift)."""
    scale = 1.0 / np.sqrt(state[f"{prefix}.running_var"].astype(np.float64) + BN_EPS)
    shift = -state[f"{prefix}.running_mean"] * scale
    if f"{prefix}.weight" in state:
        scale, shift = scale * state[f"{prefix}.weight"], shift * state[f"{prefix}.weight"] + state[f"{prefix}.bias"]
    return scale, shift


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Upstream's state dict: parameter and buffer names with their shapes (``num_batches_tracked``
    left out: it counts training steps and changes nothing here)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def norm(prefix: str, channels: int, affine: bool = True) -> None:
        shapes.update({f"{prefix}.running_mean": (channels,), f"{prefix}.running_var": (channels,)})
        if affine:
            shapes.update({f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,)})

    shapes["head.conv1.weight"] = (HEAD_CHANNELS, 1, 3, 3)
    norm("head.bn1", HEAD_CHANNELS)
    for layer in ("layer1", "layer2"):
        for block in ("0", "1"):
            prefix = f"head.{layer}.{block}"
            for n in ("1", "2"):
                shapes[f"{prefix}.conv{n}.weight"] = (HEAD_CHANNELS, HEAD_CHANNELS, 3, 3)
                norm(f"{prefix}.bn{n}", HEAD_CHANNELS)
            if block == "0":
                shapes[f"{prefix}.shortcut.0.weight"] = (HEAD_CHANNELS, HEAD_CHANNELS, 1, 1)
                norm(f"{prefix}.shortcut.1", HEAD_CHANNELS)
    shapes["head.conv2.weight"] = (HEAD_CHANNELS, HEAD_CHANNELS, 3, 3)
    norm("head.bn2", HEAD_CHANNELS)
    channels = TDNN_CHANNELS
    shapes["xvector.tdnn.linear.weight"] = (channels, HEAD_CHANNELS * N_MELS // 8, 5)
    norm("xvector.tdnn.nonlinear.batchnorm", channels)
    for number, (layers, _dilation) in enumerate(BLOCKS, start=1):
        for n in range(layers):
            prefix = f"xvector.block{number}.tdnnd{n + 1}"
            norm(f"{prefix}.nonlinear1.batchnorm", channels + n * GROWTH)
            shapes[f"{prefix}.linear1.weight"] = (BOTTLENECK, channels + n * GROWTH, 1)
            norm(f"{prefix}.nonlinear2.batchnorm", BOTTLENECK)
            shapes |= {
                f"{prefix}.cam_layer.linear_local.weight": (GROWTH, BOTTLENECK, 3),
                f"{prefix}.cam_layer.linear1.weight": (BOTTLENECK // 2, BOTTLENECK, 1),
                f"{prefix}.cam_layer.linear1.bias": (BOTTLENECK // 2,),
                f"{prefix}.cam_layer.linear2.weight": (GROWTH, BOTTLENECK // 2, 1),
                f"{prefix}.cam_layer.linear2.bias": (GROWTH,),
            }
        channels += layers * GROWTH
        norm(f"xvector.transit{number}.nonlinear.batchnorm", channels)
        shapes[f"xvector.transit{number}.linear.weight"] = (channels // 2, channels, 1)
        channels //= 2
    norm("xvector.out_nonlinear.batchnorm", channels)
    shapes["xvector.dense.linear.weight"] = (EMBEDDING_SIZE, 2 * channels, 1)
    norm("xvector.dense.nonlinear.batchnorm", EMBEDDING_SIZE, affine=False)
    return shapes


class _Folded(NamedTuple):
    """A convolution followed by eval-mode BatchNorm, as one weight matrix (out, inputs * kernel) and a
    bias (out, 1): the normaliser's scale folded into the weights at load time."""

    weight: np.ndarray
    bias: np.ndarray

    @classmethod
    def of(cls, state: dict[str, np.ndarray], conv: str, norm: str) -> _Folded:
        weight = state[f"{conv}.weight"]
        scale, shift = _normaliser(state, norm)
        folded = weight.reshape(len(weight), -1) * scale[:, None]
        return cls(folded.astype(np.float32), shift[:, None].astype(np.float32))


class _Residual(NamedTuple):
    """A residual block of the 2-D front end; the first of each stage halves the bands."""

    conv1: _Folded
    conv2: _Folded
    shortcut: _Folded | None  # a strided 1x1 convolution, where the block halves the bands


class _DenseLayer(NamedTuple):
    """A dense TDNN layer: BatchNorm and ReLU, a 1x1 bottleneck (BatchNorm folded in), ReLU, then a
    dilated convolution scaled by the context-aware gate; its output is appended to its input."""

    scale: np.ndarray  # (inputs, 1): the input's BatchNorm
    shift: np.ndarray
    bottleneck: _Folded
    local: np.ndarray  # (32, 128 * 3)
    gate1: np.ndarray  # (64, 128)
    gate_bias1: np.ndarray
    gate2: np.ndarray  # (32, 64)
    gate_bias2: np.ndarray


def _gate(layer: _DenseLayer, hidden: np.ndarray) -> np.ndarray:
    """The context-aware mask's gate, (32, frames): from the utterance's mean plus the mean of the
    100-frame segment each frame falls in, so computed once per segment and repeated."""
    channels, frames = hidden.shape
    segments = -(-frames // SEGMENT)
    padded = np.pad(hidden, ((0, 0), (0, segments * SEGMENT - frames)))
    counts = np.minimum(SEGMENT, frames - SEGMENT * np.arange(segments)).astype(np.float32)
    context = padded.reshape(channels, segments, SEGMENT).sum(-1) / counts + hidden.mean(-1, keepdims=True)
    gate = _sigmoid(layer.gate2 @ _relu(layer.gate1 @ context + layer.gate_bias1) + layer.gate_bias2)
    return np.repeat(gate, SEGMENT, axis=1)[:, :frames]


class CamPlusPlus:
    """The network's weights as float32 NumPy arrays, BatchNorm folded where a convolution precedes it;
    thread-safe (inference only, nothing mutated)."""

    def __init__(self, state: dict[str, np.ndarray], path: Path, checksum: str) -> None:
        self.path = path
        self.checksum = checksum  # SHA-256 of the weights file: embeddings of different weights never mix

        def column(values: np.ndarray) -> np.ndarray:
            return np.asarray(values, dtype=np.float32).reshape(-1, 1)

        self.head_in = _Folded.of(state, "head.conv1", "head.bn1")
        self.residual = [
            _Residual(
                _Folded.of(state, f"{prefix}.conv1", f"{prefix}.bn1"),
                _Folded.of(state, f"{prefix}.conv2", f"{prefix}.bn2"),
                _Folded.of(state, f"{prefix}.shortcut.0", f"{prefix}.shortcut.1") if prefix.endswith(".0") else None,
            )
            for prefix in ("head.layer1.0", "head.layer1.1", "head.layer2.0", "head.layer2.1")
        ]
        self.head_out = _Folded.of(state, "head.conv2", "head.bn2")
        self.tdnn = _Folded.of(state, "xvector.tdnn.linear", "xvector.tdnn.nonlinear.batchnorm")
        self.blocks: list[tuple[int, list[_DenseLayer], np.ndarray, np.ndarray, np.ndarray]] = []
        for number, (layers, dilation) in enumerate(BLOCKS, start=1):
            dense = []
            for n in range(layers):
                prefix = f"xvector.block{number}.tdnnd{n + 1}"
                cam = f"{prefix}.cam_layer"
                scale, shift = _normaliser(state, f"{prefix}.nonlinear1.batchnorm")
                dense.append(
                    _DenseLayer(
                        column(scale),
                        column(shift),
                        _Folded.of(state, f"{prefix}.linear1", f"{prefix}.nonlinear2.batchnorm"),
                        state[f"{cam}.linear_local.weight"].reshape(GROWTH, -1),
                        state[f"{cam}.linear1.weight"][..., 0],
                        column(state[f"{cam}.linear1.bias"]),
                        state[f"{cam}.linear2.weight"][..., 0],
                        column(state[f"{cam}.linear2.bias"]),
                    )
                )
            scale, shift = _normaliser(state, f"xvector.transit{number}.nonlinear.batchnorm")
            transit = state[f"xvector.transit{number}.linear.weight"][..., 0]
            self.blocks.append((dilation, dense, column(scale), column(shift), transit))
        scale, shift = _normaliser(state, "xvector.out_nonlinear.batchnorm")
        self.out_scale, self.out_shift = column(scale), column(shift)
        self.dense = _Folded.of(state, "xvector.dense.linear", "xvector.dense.nonlinear.batchnorm")

    def forward(self, features: np.ndarray) -> np.ndarray:
        """The raw (192,) embedding of (frames, 80) filterbank features (upstream's ``forward``)."""
        x = features.T[None]  # (1 channel, 80 bands, frames)
        x = _relu(_conv2d(x, self.head_in, 1))
        for block in self.residual:
            out = _relu(_conv2d(x, block.conv1, 1 if block.shortcut is None else 2))
            out = _conv2d(out, block.conv2, 1)
            if block.shortcut is not None:
                strided = x[:, ::2]
                x = (block.shortcut.weight @ strided.reshape(len(strided), -1) + block.shortcut.bias).reshape(out.shape)
            x = _relu(out + x)
        x = _relu(_conv2d(x, self.head_out, 2))
        x = x.reshape(-1, x.shape[-1])  # (32 channels x 10 bands, frames)
        x = _relu(_conv1d(x, self.tdnn.weight, 5, stride=2) + self.tdnn.bias)
        frames = x.shape[1]
        for dilation, dense, scale, shift, transit in self.blocks:
            grown = np.empty((len(x) + len(dense) * GROWTH, frames), dtype=np.float32)  # concatenated in place
            grown[: len(x)] = x
            width = len(x)
            for layer in dense:
                normed = _relu(grown[:width] * layer.scale + layer.shift)
                hidden = _relu(layer.bottleneck.weight @ normed + layer.bottleneck.bias)
                grown[width : width + GROWTH] = _conv1d(hidden, layer.local, 3, dilation) * _gate(layer, hidden)
                width += GROWTH
            x = transit @ _relu(grown * scale + shift)
        x = _relu(x * self.out_scale + self.out_shift)
        stats = np.concatenate([x.mean(-1), x.std(-1, ddof=1)])  # statistics pooling
        return self.dense.weight @ stats + self.dense.bias[:, 0]

    def embed(self, wav_16k: np.ndarray) -> np.ndarray:
        """Speaker embedding of one mono clip at 16 kHz: L2-normalised float32 of shape (192,)."""
        if len(wav_16k) < MIN_SECONDS * SAMPLE_RATE:
            raise AudioError(
                f"clip too short for CAM++: {len(wav_16k) / SAMPLE_RATE:.2f} s, at least {MIN_SECONDS} s needed."
            )
        raw = self.forward(features(wav_16k))
        return (raw / np.linalg.norm(raw)).astype(np.float32)

    def embed_many(self, wavs_16k: list[np.ndarray]) -> np.ndarray:
        """(n, 192) embeddings of n clips, one forward pass each: zero-padding a batch to one length
        would change the utterance means that the network pools, and so the embeddings."""
        embedded = [self.embed(wav) for wav in wavs_16k]
        return np.stack(embedded) if embedded else np.empty((0, EMBEDDING_SIZE), dtype=np.float32)


def load_campplus(path: Path) -> CamPlusPlus:
    """CAM++ with the weights in ``path`` (a ``torch.save`` state dict, read without torch); a missing,
    corrupt or foreign file is a ``CheckpointError``."""
    try:
        state = read_torch_state(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{path} is corrupt or not a CAM++ weights file ({exc}).") from exc
    expected = expected_shapes()
    found = {key for key in state if not key.endswith(".num_batches_tracked")}
    for key in sorted(expected.keys() | found):
        shape = tuple(state[key].shape) if key in state else None
        if shape != expected.get(key):
            problem = "missing" if shape is None else "unexpected" if key not in expected else f"of shape {shape}"
            raise CheckpointError(f"{path.name} does not fit CAM++: {key} {problem}.")
    state = {key: np.asarray(value, dtype=np.float32) for key, value in state.items()}
    return CamPlusPlus(state, path, sha256_file(path))


def hub_path() -> Path | None:
    """The official weights from the Hugging Face hub's cache, else downloaded (unless ``HF_HUB_OFFLINE``);
    None when they cannot be had or are not the official file, so that callers fall back to the voice
    encoder. One quick request first: where the hub is unreachable, ``hf_hub_download`` alone would
    retry for half a minute."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(HUB_REPO, CAMPPLUS_FILE)
        if isinstance(cached, str):
            path = Path(cached)
        else:
            get_hf_file_metadata(hf_hub_url(HUB_REPO, CAMPPLUS_FILE), timeout=10)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                path = Path(hf_hub_download(repo_id=HUB_REPO, filename=CAMPPLUS_FILE))
    except Exception:  # noqa: BLE001 - offline, unreachable, unknown repository: all mean "not available"
        return None
    return path if sha256_file(path) == SHA256 else None
