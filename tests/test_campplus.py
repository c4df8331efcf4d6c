"""CAM++, the second speaker encoder: 3D-Speaker's embeddings from the official weights, speakers told
apart on real speech, clear errors for wrong weights and short clips, and no torch until it is used."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import soundfile

from voicedb.audio import load_clip
from voicedb.campplus import CAMPPLUS_FILE, HUB_REPO, SHA256, CamPlusPlus, load_campplus
from voicedb.engine import Checkpoint, Engine
from voicedb.errors import AudioError, CheckpointError
from voicedb.weights import read_torch_state, read_weights

#: 3D-Speaker's own ``CAMPPlus`` and ``FBank(80, 16000, mean_nor=True)`` on ``arctic_slt_1.flac`` with the
#: official weights, L2-normalised: its first eight and last four values (computed once, outside the repo).
REFERENCE_SLT_HEAD = [-0.1123773, 0.0773229, 0.0263091, -0.0141134, -0.0056891, -0.081941, 0.0516855, 0.0582875]
REFERENCE_SLT_TAIL = [-0.0170233, -0.1845611, -0.0978517, 0.0142982]


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> CamPlusPlus:
    return load_campplus(checkpoint / CAMPPLUS_FILE)


def test_embedding_equals_3d_speakers_reference(model: CamPlusPlus, speakers):
    samples, rate = soundfile.read(speakers["arctic_slt"][0], dtype="float32")  # as 3D-Speaker read it
    assert rate == 16_000
    embedded = model.embed(samples)
    assert np.abs(embedded[:8] - REFERENCE_SLT_HEAD).max() < 1e-5
    assert np.abs(embedded[-4:] - REFERENCE_SLT_TAIL).max() < 1e-5


def test_embedding_is_a_deterministic_unit_vector_of_192_floats(model: CamPlusPlus, speakers):
    wav = load_clip(speakers["librivox_ss01"][0]).wav_16k
    first, again = model.embed(wav), model.embed(wav)
    assert first.dtype == np.float32 and first.shape == (192,)
    assert abs(float(np.linalg.norm(first)) - 1.0) < 1e-5
    assert np.array_equal(first, again)


def test_embed_many_equals_embedding_each_clip(model: CamPlusPlus, speakers):
    wavs = [load_clip(clip).wav_16k for clip in speakers["ami_mee009"]]
    many = model.embed_many(wavs)
    assert many.shape == (len(wavs), 192)
    assert np.allclose(many, np.stack([model.embed(wav) for wav in wavs]), atol=1e-6)
    assert model.embed_many([]).shape == (0, 192)


def test_every_same_speaker_pair_scores_above_every_different_speaker_pair(model: CamPlusPlus, speakers):
    embedded = {
        (name, n): model.embed(load_clip(clip).wav_16k)
        for name, clips in speakers.items()
        for n, clip in enumerate(clips)
    }
    keys = sorted(embedded)
    pairs = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1 :]]
    same = [float(embedded[a] @ embedded[b]) for a, b in pairs if a[0] == b[0]]
    different = [float(embedded[a] @ embedded[b]) for a, b in pairs if a[0] != b[0]]
    assert len(same) >= 5 and min(same) > max(different) + 0.1, (min(same), max(different))


def test_clip_shorter_than_half_a_second_is_an_audio_error(model: CamPlusPlus):
    with pytest.raises(AudioError, match="too short for CAM\\+\\+"):
        model.embed(np.zeros(7_999, dtype=np.float32))


def test_corrupt_weights_file_is_a_checkpoint_error(tmp_path: Path):
    path = tmp_path / CAMPPLUS_FILE
    path.write_bytes(b"not a torch file" * 100)
    with pytest.raises(CheckpointError, match="corrupt or not a CAM\\+\\+ weights file"):
        load_campplus(path)


def test_weights_of_another_network_are_a_checkpoint_error(checkpoint: Path):
    with pytest.raises(CheckpointError, match="ve.pt does not fit CAM\\+\\+"):
        load_campplus(checkpoint / "ve.pt")  # Chatterbox's voice encoder, saved by torch.save


def test_engine_takes_the_weights_from_the_checkpoint_directory(checkpoint: Path, speakers):
    engine = Engine(Checkpoint(checkpoint))
    assert engine.campplus_path() == checkpoint / CAMPPLUS_FILE
    assert engine.campplus_checksum == SHA256
    assert engine.campplus is engine.campplus and engine.campplus.checksum == SHA256


def campplus_of_engine(directory: Path, hf_home: Path) -> str:
    """What a fresh process's engine finds, offline: ``path checksum-prefix`` or ``None None``."""
    code = (
        "from pathlib import Path\n"
        "from voicedb.engine import Checkpoint, Engine\n"
        f"engine = Engine(Checkpoint(Path({str(directory)!r})))\n"
        "loaded = engine.campplus\n"
        "assert (loaded is None) == (engine.campplus_checksum is None)\n"
        "print(engine.campplus_path(), engine.campplus_checksum and engine.campplus_checksum[:8])\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def hub_cache_holding(hf_home: Path, weights: Path) -> Path:
    """A Hugging Face cache in which ``HUB_REPO``'s main revision holds ``weights`` as the CAM++ file."""
    repo = hf_home / "hub" / f"models--{HUB_REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copyfile(weights, snapshot / CAMPPLUS_FILE)
    return snapshot / CAMPPLUS_FILE


def test_engine_without_the_weights_anywhere_has_no_campplus(tmp_path: Path):
    """An empty checkpoint directory and an empty hub cache, offline: None, for the caller to fall back."""
    (tmp_path / "checkpoint").mkdir()
    assert campplus_of_engine(tmp_path / "checkpoint", tmp_path / "hf") == "None None"


def test_engine_takes_the_official_weights_from_the_hub_cache_when_offline(tmp_path: Path, checkpoint: Path):
    (tmp_path / "checkpoint").mkdir()
    cached = hub_cache_holding(tmp_path / "hf", checkpoint / CAMPPLUS_FILE)
    assert campplus_of_engine(tmp_path / "checkpoint", tmp_path / "hf") == f"{cached} {SHA256[:8]}"


def test_engine_refuses_other_weights_under_the_hub_name(tmp_path: Path, checkpoint: Path):
    (tmp_path / "checkpoint").mkdir()
    hub_cache_holding(tmp_path / "hf", checkpoint / "ve.pt")
    assert campplus_of_engine(tmp_path / "checkpoint", tmp_path / "hf") == "None None"


def test_loading_campplus_and_embedding_a_clip_imports_no_torch(checkpoint: Path, speakers):
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from voicedb.audio import load_clip\n"
        "from voicedb.campplus import load_campplus\n"
        f"model = load_campplus(Path({str(checkpoint / CAMPPLUS_FILE)!r}))\n"
        f"assert model.embed(load_clip(Path({str(speakers['arctic_slt'][0])!r})).wav_16k).shape == (192,)\n"
        "print(sorted(m for m in ('torch', 'torchaudio', 'chatterbox', 'librosa', 'scipy') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout == "[]\n", done.stderr


def test_pt_reader_reads_what_torch_load_reads(checkpoint: Path, tmp_path: Path):
    import torch

    for path in (checkpoint / CAMPPLUS_FILE, checkpoint / "ve.pt"):
        ours, theirs = read_torch_state(path), torch.load(path, map_location="cpu", weights_only=True)
        assert ours.keys() == theirs.keys()
        assert all(np.array_equal(ours[key], value.numpy()) for key, value in theirs.items())
        as_float = read_weights(path, as_numpy=True)  # what the voice encoder reads, without torch
        assert all(np.array_equal(as_float[key], value.float().numpy()) for key, value in theirs.items())
    base = torch.randn(4, 6)
    views = {"t": base.t(), "v": base[1:3, 2:], "h": base.half(), "i": torch.arange(5), "e": torch.zeros(0, 3)}
    torch.save(views | {"b": base.bfloat16()}, tmp_path / "views.pt")
    ours = read_torch_state(tmp_path / "views.pt")
    assert all(np.array_equal(ours[key], value.numpy()) for key, value in views.items())
    assert np.array_equal(ours["b"], base.bfloat16().float().numpy())


def torch_file(path: Path, pickled: bytes, data: bytes = b"") -> Path:
    """A ``torch.save``-shaped archive holding ``pickled`` as its pickle and ``data`` as storage ``0``."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("anything/data.pkl", pickled)
        archive.writestr("anything/data/0", data)
    return path


def crafted_tensor(numel: int, offset: int, size: tuple, stride: tuple) -> bytes:
    """The pickle of ``{"w": tensor}`` with a storage of ``numel`` floats, whatever its view claims."""
    import torch

    class Storage:
        pass

    class Tensor:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (Storage(), offset, size, stride, False, OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(obj, Storage) else None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"w": Tensor()})
    return buffer.getvalue()


def test_pt_reader_refuses_any_other_global_without_calling_it(tmp_path: Path):
    marker = tmp_path / "ran"

    class Hostile:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = torch_file(tmp_path / "hostile.pt", pickle.dumps({"w": Hostile()}, protocol=2))
    with pytest.raises(CheckpointError, match="refused global posix.system"):
        read_torch_state(path)
    with pytest.raises(CheckpointError, match="corrupt or not a CAM\\+\\+ weights file"):
        load_campplus(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("numel", "offset", "size", "stride", "data", "problem"),
    [
        (10**9, 0, (10**9,), (1,), b"\0" * 16, "claims more elements than its 16 bytes"),
        (4, 1, (4,), (1,), b"\0" * 16, "reaching past its storage"),
        (4, 0, (2, 2), (3, 1), b"\0" * 16, "reaching past its storage"),
        (4, 0, (-1,), (1,), b"\0" * 16, "a tensor of size"),
        (4, 0, (1,) * 9, (1,) * 9, b"\0" * 16, "a tensor of size"),
    ],
)
def test_pt_reader_refuses_tensors_beyond_their_bytes(tmp_path: Path, numel, offset, size, stride, data, problem):
    path = torch_file(tmp_path / "crafted.pt", crafted_tensor(numel, offset, size, stride), data)
    with pytest.raises(CheckpointError, match=problem):
        read_torch_state(path)


def test_pt_reader_refuses_compressed_members(tmp_path: Path):
    path = tmp_path / "deflated.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
    with pytest.raises(CheckpointError, match="compressed"):
        read_torch_state(path)
