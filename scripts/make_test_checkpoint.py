#!/usr/bin/env python
"""Write an offline Chatterbox test checkpoint in the official file layout.

    python scripts/make_test_checkpoint.py DIR

- ``ve.safetensors``: a real, trained speaker encoder -- Resemblyzer's ``pretrained.pt`` (Apache-2.0,
  shipped in the ``resemblyzer`` wheel), whose weights fit Chatterbox's ``VoiceEncoder`` once
  ``linear.*`` is renamed ``proj.*``. Speaker matching on real speech is therefore meaningful.
- ``t3_cfg.safetensors``, ``s3gen.safetensors``: deterministic random weights (seeded), a T3 with only
  two Llama layers (hidden size 1024, which the Perceiver needs). Enough to prove that stored
  conditionals reach the model and a valid WAV comes out; the sound itself is noise.
- ``tokenizer.json``: a character-level tokenizer with Chatterbox's special tokens.

The Hugging Face hub is never contacted. Re-running on a complete directory does nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import string
import sys
from pathlib import Path

FILES = ("ve.safetensors", "t3_cfg.safetensors", "s3gen.safetensors", "tokenizer.json")
T3_TEST_LAYERS = 2
SEED = 1234


def resemblyzer_weights() -> Path:
    """Path of ``resemblyzer/pretrained.pt`` without importing resemblyzer (its import needs webrtcvad)."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("resemblyzer is not installed: pip install resemblyzer (it ships the trained encoder weights)")
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"
    if not path.exists():
        sys.exit(f"{path} is missing from the resemblyzer package")
    return path


def write_voice_encoder(target: Path) -> None:
    import torch
    from safetensors.torch import save_file

    state = torch.load(resemblyzer_weights(), map_location="cpu", weights_only=True)["model_state"]
    renamed = {
        key.replace("linear.", "proj.", 1) if key.startswith("linear.") else key: value.contiguous()
        for key, value in state.items()
    }
    save_file(renamed, str(target))


def write_t3(target: Path) -> None:
    import torch
    from chatterbox.models.t3 import T3
    from safetensors.torch import save_file

    from voicedb.chatterbox import t3_config_for_depth

    torch.manual_seed(SEED)
    t3 = T3(t3_config_for_depth(T3_TEST_LAYERS))
    save_file({k: v.contiguous() for k, v in t3.state_dict().items()}, str(target))


def write_s3gen(target: Path) -> None:
    import torch
    from chatterbox.models.s3gen import S3Gen
    from safetensors.torch import save_file

    torch.manual_seed(SEED)
    s3gen = S3Gen()
    state = {k: v.contiguous() for k, v in s3gen.state_dict().items()}
    save_file(state, str(target))


def write_tokenizer(target: Path) -> None:
    """A character-level BPE (no merges) with the special tokens ``EnTokenizer`` checks for."""
    from tokenizers import Tokenizer, models

    specials = ["[STOP]", "[UNK]", "[SPACE]", "[PAD]", "[SEP]", "[CLS]", "[MASK]", "[START]"]
    characters = string.ascii_letters + string.digits + string.punctuation + "'"
    vocab: dict[str, int] = {}
    for token in [*specials, *dict.fromkeys(characters)]:
        vocab[token] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tokenizer.add_special_tokens(specials)
    tokenizer.save(str(target))
    json.loads(target.read_text())  # the file must be valid JSON for Tokenizer.from_file


WRITERS = {
    "ve.safetensors": write_voice_encoder,
    "t3_cfg.safetensors": write_t3,
    "s3gen.safetensors": write_s3gen,
    "tokenizer.json": write_tokenizer,
}


def make_test_checkpoint(directory: Path) -> Path:
    """Write every missing file of the test checkpoint into ``directory`` (atomically, one by one)."""
    from voicedb.files import atomic_path

    for name in FILES:
        final = directory / name
        if not final.exists():
            with atomic_path(final) as scratch:
                WRITERS[name](scratch)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="where to write the checkpoint files")
    args = parser.parse_args()
    path = make_test_checkpoint(args.directory)
    for name in FILES:
        print(f"{(path / name).stat().st_size / 1e6:9.1f} MB  {path / name}")


if __name__ == "__main__":
    main()
