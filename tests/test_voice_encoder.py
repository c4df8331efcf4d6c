"""The voice encoder voicedb runs in NumPy computes upstream's embeddings, and matching needs no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from voicedb.audio import load_clip
from voicedb.errors import CheckpointError
from voicedb.voice_encoder import VoiceEncoder, load_state


def test_embeddings_equal_upstream_voice_encoder_on_real_speech(checkpoint: Path, speakers):
    import torch
    from chatterbox.models.voice_encoder import VoiceEncoder as UpstreamVoiceEncoder
    from safetensors.torch import load_file

    weights = checkpoint / "ve.safetensors"
    ours = VoiceEncoder(load_state(weights), weights)
    upstream = UpstreamVoiceEncoder()
    upstream.load_state_dict(load_file(str(weights)))
    upstream.eval()
    for clips in speakers.values():
        for clip in clips:
            wav = load_clip(clip).wav_16k
            with torch.inference_mode():
                expected = upstream.embeds_from_wavs([wav], sample_rate=16_000)[0]
            embedded = ours.embed(wav)
            assert embedded.dtype == np.float32 and embedded.shape == (256,)
            assert np.abs(embedded - expected).max() < 1e-5, clip.name


def test_weights_of_another_network_are_a_clear_error(tmp_path: Path):
    from safetensors.numpy import save_file

    path = tmp_path / "ve.safetensors"
    save_file({"proj.weight": np.zeros((10, 10), dtype=np.float32)}, str(path))
    with pytest.raises(CheckpointError, match="does not fit VoiceEncoder"):
        VoiceEncoder(load_state(path), path)


def test_match_imports_neither_torch_nor_chatterbox(home: Path, speakers, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("VOICEDB_DEVICE")  # as users run it: choosing a device must not import torch either
    first, second = (clips for clips in speakers.values() if len(clips) >= 2).__next__()[:2]
    code = (
        "import sys\n"
        "from voicedb.cli import main\n"
        "sys.argv = ['voicedb'] + sys.argv[1:]\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    status = exit.code or 0\n"
        "heavy = sorted(m for m in ('torch', 'chatterbox', 'librosa', 'scipy') if m in sys.modules)\n"
        "print(f'STATUS={status} HEAVY=' + ','.join(heavy), file=sys.stderr)\n"
    )
    enrolled = subprocess.run(
        [sys.executable, "-c", code, "add", str(first), "--name", "them", "--no-conditionals"], capture_output=True
    )
    assert enrolled.returncode == 0
    done = subprocess.run([sys.executable, "-c", code, "match", str(second)], capture_output=True, text=True)
    assert "STATUS=0 HEAVY=\n" in done.stderr, done.stderr
    assert "them" in done.stdout
