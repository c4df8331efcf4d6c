"""CAM++, 3D-Speaker's speaker-verification network, as a second speaker encoder for matching.

Why: Chatterbox's voice encoder is there to condition synthesis; CAM++ (``CAMPPlus(feat_dim=80,
embedding_size=192)`` from ``speakerlab/models/campplus``) is trained for verification, on Chinese and
English speakers, and matching can use it beside or instead of that encoder. The official weights
are ``campplus_cn_en_common.pt`` from ModelScope's ``iic/speech_campplus_sv_zh_en_16k-common_advanced``
(Apache-2.0).

The network is built from torch's standard layers, named as upstream's state dict, and run by the
functions below, so the official file loads strictly and nothing of 3D-Speaker is needed. Its
embeddings equal upstream's to float32 rounding. Importing this module does not import torch.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import AudioError, CheckpointError
from .files import sha256_file

if TYPE_CHECKING:
    import torch

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


def build_network() -> torch.nn.Module:
    """Upstream's module tree under upstream's parameter names, on the meta device (no memory, no
    random initialisation, so no draw from torch's global generator): ``load_campplus`` fills it."""
    import torch
    from torch import nn

    def block2d(inputs: int, stride: int) -> nn.ModuleDict:
        layers = nn.ModuleDict(
            {
                "conv1": nn.Conv2d(inputs, HEAD_CHANNELS, 3, stride=(stride, 1), padding=1, bias=False),
                "bn1": nn.BatchNorm2d(HEAD_CHANNELS),
                "conv2": nn.Conv2d(HEAD_CHANNELS, HEAD_CHANNELS, 3, padding=1, bias=False),
                "bn2": nn.BatchNorm2d(HEAD_CHANNELS),
            }
        )
        if stride != 1:
            layers["shortcut"] = nn.Sequential(
                nn.Conv2d(inputs, HEAD_CHANNELS, 1, stride=(stride, 1), bias=False), nn.BatchNorm2d(HEAD_CHANNELS)
            )
        return layers

    def norm(channels: int, affine: bool = True) -> nn.ModuleDict:
        return nn.ModuleDict({"batchnorm": nn.BatchNorm1d(channels, affine=affine)})

    def dense_layer(inputs: int, dilation: int) -> nn.ModuleDict:
        return nn.ModuleDict(
            {
                "nonlinear1": norm(inputs),
                "linear1": nn.Conv1d(inputs, BOTTLENECK, 1, bias=False),
                "nonlinear2": norm(BOTTLENECK),
                "cam_layer": nn.ModuleDict(
                    {
                        "linear_local": nn.Conv1d(
                            BOTTLENECK, GROWTH, 3, padding=dilation, dilation=dilation, bias=False
                        ),
                        "linear1": nn.Conv1d(BOTTLENECK, BOTTLENECK // 2, 1),
                        "linear2": nn.Conv1d(BOTTLENECK // 2, GROWTH, 1),
                    }
                ),
            }
        )

    with torch.device("meta"):
        head = nn.ModuleDict(
            {
                "conv1": nn.Conv2d(1, HEAD_CHANNELS, 3, padding=1, bias=False),
                "bn1": nn.BatchNorm2d(HEAD_CHANNELS),
                "layer1": nn.Sequential(block2d(HEAD_CHANNELS, 2), block2d(HEAD_CHANNELS, 1)),
                "layer2": nn.Sequential(block2d(HEAD_CHANNELS, 2), block2d(HEAD_CHANNELS, 1)),
                "conv2": nn.Conv2d(HEAD_CHANNELS, HEAD_CHANNELS, 3, stride=(2, 1), padding=1, bias=False),
                "bn2": nn.BatchNorm2d(HEAD_CHANNELS),
            }
        )
        channels = TDNN_CHANNELS
        xvector = nn.ModuleDict(
            {
                "tdnn": nn.ModuleDict(
                    {
                        "linear": nn.Conv1d(HEAD_CHANNELS * N_MELS // 8, channels, 5, stride=2, padding=2, bias=False),
                        "nonlinear": norm(channels),
                    }
                )
            }
        )
        for number, (layers, dilation) in enumerate(BLOCKS, start=1):
            xvector[f"block{number}"] = nn.ModuleDict(
                {f"tdnnd{n + 1}": dense_layer(channels + n * GROWTH, dilation) for n in range(layers)}
            )
            channels += layers * GROWTH
            xvector[f"transit{number}"] = nn.ModuleDict(
                {"nonlinear": norm(channels), "linear": nn.Conv1d(channels, channels // 2, 1, bias=False)}
            )
            channels //= 2
        xvector["out_nonlinear"] = norm(channels)
        xvector["dense"] = nn.ModuleDict(
            {
                "linear": nn.Conv1d(2 * channels, EMBEDDING_SIZE, 1, bias=False),
                "nonlinear": norm(EMBEDDING_SIZE, affine=False),
            }
        )
        return nn.ModuleDict({"head": head, "xvector": xvector})


def _residual(block: Any, x: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    out = F.relu(block.bn1(block.conv1(x)))
    out = block.bn2(block.conv2(out))
    return F.relu(out + (block.shortcut(x) if "shortcut" in block else x))


def _context_masked(cam: Any, x: torch.Tensor) -> torch.Tensor:
    """The context-aware mask: a local convolution scaled by a gate computed from the utterance's mean
    plus the mean of the 100-frame segment each frame falls in."""
    import torch
    import torch.nn.functional as F

    segments = F.avg_pool1d(x, kernel_size=SEGMENT, stride=SEGMENT, ceil_mode=True)
    context = x.mean(-1, keepdim=True) + segments.repeat_interleave(SEGMENT, dim=-1)[..., : x.shape[-1]]
    gate = torch.sigmoid(cam.linear2(F.relu(cam.linear1(context))))
    return cam.linear_local(x) * gate


def forward(network: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    """(batch, 192) raw embeddings of (batch, frames, 80) filterbank features (upstream's ``forward``)."""
    import torch
    import torch.nn.functional as F

    head, xvector = network["head"], network["xvector"]
    x = features.permute(0, 2, 1).unsqueeze(1)  # (batch, 1, mels, frames)
    x = F.relu(head.bn1(head.conv1(x)))
    for block in (*head.layer1, *head.layer2):
        x = _residual(block, x)
    x = F.relu(head.bn2(head.conv2(x)))
    x = x.flatten(1, 2)  # (batch, 32 channels x 10 bands, frames)
    x = F.relu(xvector.tdnn.nonlinear.batchnorm(xvector.tdnn.linear(x)))
    for number in range(1, len(BLOCKS) + 1):
        for layer in xvector[f"block{number}"].values():
            hidden = layer.linear1(F.relu(layer.nonlinear1.batchnorm(x)))
            hidden = F.relu(layer.nonlinear2.batchnorm(hidden))
            x = torch.cat([x, _context_masked(layer.cam_layer, hidden)], dim=1)
        transit = xvector[f"transit{number}"]
        x = transit.linear(F.relu(transit.nonlinear.batchnorm(x)))
    x = F.relu(xvector.out_nonlinear.batchnorm(x))
    stats = torch.cat([x.mean(-1), x.std(-1)], dim=-1).unsqueeze(-1)  # statistics pooling
    return xvector.dense.nonlinear.batchnorm(xvector.dense.linear(stats)).squeeze(-1)


def features(wav_16k: np.ndarray) -> torch.Tensor:
    """(frames, 80) Kaldi filterbank of a 16 kHz clip, less its mean over time (3D-Speaker's ``FBank``)."""
    import torch
    from torchaudio.compliance import kaldi

    wav = torch.from_numpy(np.ascontiguousarray(wav_16k, dtype=np.float32)).unsqueeze(0)
    bank = kaldi.fbank(wav, num_mel_bins=N_MELS, sample_frequency=SAMPLE_RATE, dither=0.0)
    return bank - bank.mean(0, keepdim=True)


class CamPlusPlus:
    """The loaded network, in eval mode; thread-safe (inference only)."""

    def __init__(self, network: torch.nn.Module, path: Path, checksum: str) -> None:
        self.network = network
        self.path = path
        self.checksum = checksum  # SHA-256 of the weights file: embeddings of different weights never mix

    def embed(self, wav_16k: np.ndarray) -> np.ndarray:
        """Speaker embedding of one mono clip at 16 kHz: L2-normalised float32 of shape (192,)."""
        import torch

        if len(wav_16k) < MIN_SECONDS * SAMPLE_RATE:
            raise AudioError(
                f"clip too short for CAM++: {len(wav_16k) / SAMPLE_RATE:.2f} s, at least {MIN_SECONDS} s needed."
            )
        device = next(self.network.parameters()).device
        with torch.inference_mode():
            raw = forward(self.network, features(wav_16k).unsqueeze(0).to(device))[0].cpu().numpy()
        return (raw / np.linalg.norm(raw)).astype(np.float32)

    def embed_many(self, wavs_16k: list[np.ndarray]) -> np.ndarray:
        """(n, 192) embeddings of n clips, one forward pass each: zero-padding a batch to one length
        would change the utterance means that the network pools, and so the embeddings."""
        embedded = [self.embed(wav) for wav in wavs_16k]
        return np.stack(embedded) if embedded else np.empty((0, EMBEDDING_SIZE), dtype=np.float32)


def load_campplus(path: Path, device: str = "cpu") -> CamPlusPlus:
    """CAM++ with the weights in ``path`` (a ``torch.save`` state dict, read ``weights_only``); a missing,
    corrupt or foreign file is a ``CheckpointError``."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable file
        raise CheckpointError(f"{path} is corrupt or not a CAM++ weights file ({type(exc).__name__}).") from exc
    network = build_network()
    try:
        network.load_state_dict(state, strict=True, assign=True)
    except (RuntimeError, AttributeError, TypeError) as exc:  # wrong keys or shapes; not a dict at all
        lines = str(exc).splitlines()
        raise CheckpointError(f"{path.name} does not fit CAM++: {lines[min(1, len(lines) - 1)].strip()}") from exc
    return CamPlusPlus(network.to(device).eval(), path, sha256_file(path))


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
