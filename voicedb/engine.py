"""The Chatterbox engine: the only module that imports chatterbox. Checkpoints, embeddings, conditionals, synthesis.

Chatterbox's own ``from_pretrained`` loads every network at once and ``generate`` hard-codes 1000
speech tokens; voicedb needs finer control (enrollment loads only the voice encoder and S3Gen,
synthesis caps tokens), so this adapter calls Chatterbox's public parts -- ``S3Gen.embed_ref``/
``inference``, ``T3.inference``, the tokenizers and the Perth watermarker -- exactly as upstream's
``prepare_conditionals`` and ``generate`` do. The voice encoder runs in NumPy from upstream's
weights (``voicedb.voice_encoder``), so that matching imports no torch.

Names: a *flavour* is a model family (``voicedb.flavours``), the *engine* is the set of networks
loaded for one checkpoint and device, a *network* is one ``torch.nn.Module`` in it.

One ``Engine`` serves many threads: each network loads once under its own lock, and sampling
(which draws from torch's global generator inside upstream code) is serialised, seeded in a forked
RNG state that is restored afterwards, so a seed gives the same audio whatever other threads do.
Third-party noise is silenced by configuration (loggers, warnings filters, upstream modules'
progress bars), never by swapping ``sys.stdout``/``sys.stderr``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import os
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import config
from .batching import Row, batchable, batched_t3_tokens
from .bundle import refuse_bombs
from .campplus import CAMPPLUS_FILE, CamPlusPlus, hub_path, load_campplus
from .campplus import SHA256 as CAMPPLUS_SHA256
from .errors import CheckpointError, ImportRejected
from .flavours import DEFAULT_FLAVOUR, FLAVOURS, Flavour, SynthesisSettings
from .streaming import TokenWindows, WindowRenderer, t3_tokens
from .voice_encoder import VoiceEncoder
from .voice_encoder import load_state as load_voice_encoder_state
from .weights import read_weights

if TYPE_CHECKING:
    import torch

    from .batching import Job

S3_SR = 16_000  # rate of the voice encoder and the S3 speech tokenizer
S3GEN_SR = 24_000  # rate of S3Gen's reference and of the synthesised audio
DEC_COND_SECONDS = 10  # S3Gen reference length used by every flavour
SPEECH_VOCAB = 6561  # tokens at or above this are special, never audio

NOISY_LOGGERS = ("transformers", "diffusers", "chatterbox", "perth", "numba", "urllib3", "huggingface_hub", "root")
NOISY_MODULES = r"(chatterbox|diffusers|transformers|torch|perth|huggingface_hub|s3tokenizer|pyloudnorm|librosa)"
#: Upstream modules that print or draw tqdm bars during inference.
CHATTY_UPSTREAM = (
    "chatterbox.models.t3.t3",
    "chatterbox.models.s3gen.flow_matching",
    "chatterbox.models.s3gen.s3gen",
    "chatterbox.models.s3gen.hifigan",
    "chatterbox.tts_turbo",
    "perth.perth_net.perth_net_implicit.model.perth_net",
)
UPSTREAM_PACKAGES = ("chatterbox", "perth", "diffusers", "transformers")
_silenced = threading.Lock()
_silenced_done = False


def _discard(*_args: object, **_kwargs: object) -> None:
    """Stands in for ``print`` inside upstream modules whose prints are debugging leftovers."""


def silence_third_party() -> None:
    """Configure the libraries Chatterbox uses to keep quiet; idempotent and thread-safe.

    Log levels and warnings filters are set for the named libraries only, and upstream's inference
    modules get a ``print`` that discards and a ``tqdm`` that is disabled: the user's own loggers,
    warnings and progress bars keep working.
    """
    global _silenced_done
    with _silenced:
        if _silenced_done:
            return
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        for name in NOISY_LOGGERS:
            if name != "root":
                logging.getLogger(name).setLevel(logging.ERROR)
        for category in (UserWarning, FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=NOISY_MODULES)
        # raised inside upstream's T3 through contextlib, so it names no upstream module
        warnings.filterwarnings("ignore", message=r".*sdp_kernel", category=FutureWarning)
        logging.getLogger().addFilter(_drop_upstream_root_records)
        _silenced_done = True


def _drop_upstream_root_records(record: logging.LogRecord) -> bool:
    """Upstream S3Gen logs through the root logger (``logging.warning``); drop only those records,
    whatever the application does with its own root logging."""
    module = Path(record.pathname).parts
    return not any(package in module for package in UPSTREAM_PACKAGES) or record.levelno >= logging.ERROR


def _mute_upstream() -> None:
    """Replace ``print`` and ``tqdm`` in upstream's inference modules (after they are imported)."""
    import importlib

    from tqdm import tqdm

    quiet_tqdm = functools.partial(tqdm, disable=True)
    for name in CHATTY_UPSTREAM:
        module = importlib.import_module(name)
        module.print = _discard  # type: ignore[attr-defined] - shadows the builtin in that module only
        if hasattr(module, "tqdm"):
            module.tqdm = quiet_tqdm  # type: ignore[attr-defined]


def _fit(module: torch.nn.Module, state: dict[str, Any], path: Path, strict: bool = True) -> None:
    """Load ``state`` into ``module``; weights of another model are a clear CheckpointError."""
    try:
        result = module.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise CheckpointError(f"{path.name} does not fit {type(module).__name__}: {first}") from exc
    if not strict and (result.unexpected_keys or len(result.missing_keys) > len(state) // 2):
        raise CheckpointError(f"{path.name} does not fit {type(module).__name__}: wrong checkpoint.")


@dataclass(frozen=True)
class T3Shape:
    """The transformer sizes that vary between the official T3 weights and small test ones."""

    layers: int
    intermediate_size: int | None = None  # Llama MLP width; None keeps the official value

    @classmethod
    def of(cls, state: dict[str, Any]) -> T3Shape:
        """Read the shape from T3 weights, so official and test checkpoints load through one path."""
        layers = {key.split(".")[2] for key in state if key.startswith(("tfmr.layers.", "tfmr.h."))}
        if not layers:
            raise CheckpointError("the T3 weights hold no transformer layers: wrong checkpoint.")
        gate = state.get("tfmr.layers.0.mlp.gate_proj.weight")
        return cls(len(layers), int(gate.shape[0]) if gate is not None else None)


def t3_config(flavour: Flavour, shape: T3Shape | None = None):
    """Upstream's T3Config of ``flavour`` (as its ``from_local`` builds it), resized to ``shape``."""
    from chatterbox.models.t3.llama_configs import LLAMA_CONFIGS
    from chatterbox.models.t3.modules.t3_config import T3Config

    if flavour.multilingual:
        config = T3Config.multilingual()
    elif flavour.gpt2_t3:
        config = T3Config(text_tokens_dict_size=50276)
        config.llama_config_name = "GPT2_medium"
        config.speech_tokens_dict_size = 6563
        config.input_pos_emb = None
        config.speech_cond_prompt_len = 375
        config.use_perceiver_resampler = False
        config.emotion_adv = False
    else:
        config = T3Config.english_only()
    if shape is None:
        return config
    base = LLAMA_CONFIGS[config.llama_config_name]
    changes = {"n_layer" if base.get("model_type") == "gpt2" else "num_hidden_layers": shape.layers}
    if shape.intermediate_size is not None and "intermediate_size" in base:
        changes["intermediate_size"] = shape.intermediate_size
    if any(base[key] != value for key, value in changes.items()):
        name = f"{config.llama_config_name}_" + "_".join(f"{key}{value}" for key, value in changes.items())
        LLAMA_CONFIGS.setdefault(name, {**base, **changes})
        config.llama_config_name = name
    return config


def _quick_fingerprint(path: Path) -> str:
    """Size plus hash of the first 4 MB: tells weight files apart without reading a gigabyte."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(4 << 20))
    return digest.hexdigest()[:16]


class Checkpoint:
    """Where weights come from: a local directory in the official layout, or the Hugging Face hub."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        if directory is not None and not directory.is_dir():
            raise CheckpointError(f"checkpoint directory {directory} does not exist.")

    def describe(self) -> str:
        return str(self.directory) if self.directory else "Hugging Face hub"

    def file(self, flavour: Flavour, name: str) -> Path:
        """Local path of one weights file, downloaded (and cached by huggingface_hub) when needed."""
        if self.directory is not None:
            path = self.directory / name
            if not path.is_file():
                raise CheckpointError(f"{name} is missing from checkpoint {self.directory} ({flavour.summary}).")
            return path
        from huggingface_hub import hf_hub_download

        try:
            with warnings.catch_warnings():  # huggingface_hub's own progress bar stays: a first download is long
                warnings.simplefilter("ignore")
                return Path(hf_hub_download(repo_id=flavour.repo_id, filename=name))
        except Exception as exc:  # noqa: BLE001 - network, auth and cache errors all end here
            raise CheckpointError(
                f"cannot get {name} from the Hugging Face hub ({type(exc).__name__}); "
                "connect to the internet or point VOICEDB_CHECKPOINT / --checkpoint at a local checkpoint."
            ) from exc

    def tokenizer_dir(self, flavour: Flavour) -> Path:
        """Turbo's tokenizer is a directory of files (``AutoTokenizer``), not one JSON file."""
        if self.directory is not None:
            self.file(flavour, flavour.tokenizer_file)
            return self.directory
        from huggingface_hub import snapshot_download

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return Path(snapshot_download(repo_id=flavour.repo_id, allow_patterns=["*.json", "*.txt"]))
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"cannot get the {flavour.name} tokenizer from the Hugging Face hub.") from exc


class Engine:
    """Chatterbox's networks for one checkpoint and device, each loaded on first use and kept.

    A process pays for what it touches (matching loads only the voice encoder), and every thread
    shares what is loaded.
    """

    def __init__(self, checkpoint: Checkpoint, device: str | None = "cpu") -> None:
        self.checkpoint = checkpoint
        self._device = device
        self._networks: dict[str, Any] = {}
        self._guard = threading.Lock()  # protects the two dicts below
        self._loading: dict[str, threading.Lock] = {}
        self._sampling = threading.RLock()  # reentrant: a network first used inside ``sampling`` loads there
        silence_third_party()

    @property
    def device(self) -> str:
        """The torch device, ``None`` at creation meaning CUDA when present: resolved on first use,
        because asking imports torch, which the NumPy voice encoder does not need."""
        if self._device is None:
            self._device = config.torch_device()
        return self._device

    def _cached(self, key: str, load: Callable[[], Any]) -> Any:
        """``load()`` once per key, even when several threads ask at the same moment."""
        if key in self._networks:
            return self._networks[key]
        with self._guard:
            lock = self._loading.setdefault(key, threading.Lock())
        with lock:
            if key not in self._networks:
                self._networks[key] = load()
        return self._networks[key]

    def _network(self, key: str, build: Callable[[], Any]) -> Any:
        """``_cached`` for a network. Building one draws from torch's global generator (random weights
        before the checkpoint's load), so it takes the sampler's turn in a forked RNG state: neither a
        seeded call's stream nor the process's own generator is disturbed."""
        if key in self._networks:
            return self._networks[key]
        import torch

        with self._sampling, torch.random.fork_rng(devices=self.cuda_devices()):
            return self._cached(key, build)

    def loaded(self) -> list[str]:
        """Keys of what is loaded so far (``"t3:english"``, ``"ve"``, ...): what a call has paid for."""
        return sorted(self._networks)

    def ready_for(self, flavour: Flavour) -> bool:
        """Whether ``synthesize`` with ``flavour`` would load nothing first (what a server's /ready asks)."""
        needed = {f"t3:{flavour.name}", f"s3gen:{flavour.s3gen_file}", f"tok:{flavour.name}", "watermarker"}
        return needed <= set(self._networks)

    # -- voice encoder ---------------------------------------------------------------------
    def voice_encoder_path(self) -> Path:
        """``ve.safetensors``, or the multilingual layout's ``ve.pt`` in a local directory that has only that.

        Every flavour shares this one encoder, so a voice has one embedding, used for matching and as
        every flavour's ``t3.speaker_emb`` (upstream's multilingual loader reads ``ve.pt``, which holds
        the same network).
        """
        english = FLAVOURS[DEFAULT_FLAVOUR]
        directory = self.checkpoint.directory
        if directory is not None and not (directory / english.ve_file).exists() and (directory / "ve.pt").exists():
            return directory / "ve.pt"
        return self.checkpoint.file(english, english.ve_file)

    @property
    def encoder(self) -> VoiceEncoder:
        """The voice encoder, in NumPy: matching loads neither torch nor chatterbox."""

        def load() -> VoiceEncoder:
            path = self.voice_encoder_path()
            return VoiceEncoder(load_voice_encoder_state(path), path)

        return self._cached("ve", load)

    @property
    def encoder_checksum(self) -> str:
        """SHA-256 of the voice-encoder weights: embeddings from different encoders never mix.

        Cheap (no network is loaded), so callers check compatibility before embedding anything.
        """

        def load() -> str:
            from .files import sha256_file

            return sha256_file(self.voice_encoder_path())

        return self._cached("ve_sha", load)

    def embed(self, wav_16k: np.ndarray) -> np.ndarray:
        """Utterance embedding of one clip at 16 kHz: L2-normalised float32 of shape (256,).

        What ``ChatterboxTTS.prepare_conditionals`` computes (``embeds_from_wavs`` with its defaults:
        trim at 20 dB, partials at rate 1.3), to float32 rounding; see ``voice_encoder``.
        """
        return self.encoder.embed(wav_16k)

    # -- CAM++ ----------------------------------------------------------------------------------
    def campplus_path(self) -> Path | None:
        """``campplus_cn_en_common.pt`` (see ``campplus_source``); None when no source has it, and callers
        match with the voice encoder instead."""
        found = self.campplus_source()
        return found[0] if found else None

    def campplus_source(self) -> tuple[Path, str] | None:
        """(path, where it was found) of CAM++'s weights: the local checkpoint directory, else the weights
        ``voicedb weights fetch`` put in ``weight_sources.weights_dir()``, else the Hugging Face hub's cache
        or hub (honouring ``HF_HUB_OFFLINE``). Looked up once per engine."""

        def find() -> tuple[Path, str] | None:
            from .files import sha256_file
            from .weight_sources import fetched_campplus

            directory = self.checkpoint.directory
            if directory is not None and (directory / CAMPPLUS_FILE).is_file():
                return directory / CAMPPLUS_FILE, f"checkpoint directory {directory}"
            fetched = fetched_campplus()
            if fetched is not None and sha256_file(fetched) == CAMPPLUS_SHA256:
                return fetched, f"{fetched.parent} (`voicedb weights fetch`)"
            hub = hub_path()
            return (hub, "Hugging Face hub") if hub is not None else None

        return self._cached("campplus_source", find)

    def forget_campplus(self) -> None:
        """Look CAM++'s weights up again on next use (after ``voicedb weights fetch``)."""
        with self._guard:
            for key in ("campplus_source", "campplus", "campplus_sha"):
                self._networks.pop(key, None)

    def voice_encoder_location(self) -> tuple[Path | None, str]:
        """(path or None when not downloaded yet, where from) of the voice encoder's weights, without
        downloading anything: what ``voicedb weights`` reports."""
        english = FLAVOURS[DEFAULT_FLAVOUR]
        if self.checkpoint.directory is not None:
            return self.voice_encoder_path(), f"checkpoint directory {self.checkpoint.directory}"
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(english.repo_id, english.ve_file)
        return (Path(cached) if isinstance(cached, str) else None), f"Hugging Face hub {english.repo_id}"

    @property
    def campplus(self) -> CamPlusPlus | None:
        """CAM++ (NumPy, on the CPU whatever this engine's device), or None when its weights are not available."""

        def load() -> CamPlusPlus | None:
            path = self.campplus_path()
            return None if path is None else load_campplus(path)

        return self._cached("campplus", load)

    @property
    def campplus_checksum(self) -> str | None:
        """SHA-256 of the CAM++ weights (None without them), without loading the network."""

        def load() -> str | None:
            from .files import sha256_file

            path = self.campplus_path()
            return None if path is None else sha256_file(path)

        return self._cached("campplus_sha", load)

    # -- conditionals -----------------------------------------------------------------------
    def s3gen(self, flavour: Flavour):
        def load():
            from chatterbox.models.s3gen import S3Gen

            _mute_upstream()
            path = self.checkpoint.file(flavour, flavour.s3gen_file)
            network = S3Gen(meanflow=True) if flavour.meanflow_s3gen else S3Gen()
            _fit(network, read_weights(path), path, strict=flavour.strict_s3gen_weights)
            return network.to(self.device).eval()

        return self._network(f"s3gen:{flavour.s3gen_file}", load)

    def fingerprint(self, flavour: Flavour) -> str:
        """Identity of the checkpoint that conditionals of ``flavour`` depend on."""

        def load() -> str:
            s3gen = _quick_fingerprint(self.checkpoint.file(flavour, flavour.s3gen_file))
            return f"{flavour.name}:ve={self.encoder_checksum[:16]}:s3gen={s3gen}"

        return self._cached(f"fp:{flavour.name}", load)

    def conditionals(
        self, flavour: Flavour, wav_24k: np.ndarray, speaker_embedding: np.ndarray, exaggeration: float = 0.5
    ):
        """Chatterbox ``Conditionals`` for a voice, computed as upstream ``prepare_conditionals`` does.

        ``wav_24k`` is the reference clip at 24 kHz (float32, mono); ``speaker_embedding`` the voice's
        embedding (256,), which becomes ``t3.speaker_emb`` -- the same vector as in the index. For
        Turbo the reference is loudness-normalised before the prompt and S3Gen reference are taken,
        as upstream does; the speaker embedding stays the library's (upstream embeds the normalised
        clip, which moves the vector slightly).
        """
        import librosa
        import torch
        from chatterbox.models.t3.modules.cond_enc import T3Cond
        from chatterbox.tts import Conditionals

        s3gen = self.s3gen(flavour)
        with torch.inference_mode():
            if flavour.loudness_normalised_reference:
                wav_24k = _normalise_loudness(wav_24k)
            wav_16k = librosa.resample(wav_24k, orig_sr=S3GEN_SR, target_sr=S3_SR)
            ref_dict = s3gen.embed_ref(wav_24k[: DEC_COND_SECONDS * S3GEN_SR], S3GEN_SR, device=self.device)
            tokens, _ = s3gen.tokenizer.forward(
                [wav_16k[: flavour.prompt_seconds * S3_SR]], max_len=flavour.prompt_tokens
            )
            t3_cond = T3Cond(
                speaker_emb=torch.from_numpy(np.asarray(speaker_embedding, dtype=np.float32)).reshape(1, -1),
                cond_prompt_speech_tokens=torch.atleast_2d(tokens),
                emotion_adv=exaggeration * torch.ones(1, 1, 1),
            )
        return Conditionals(t3_cond, ref_dict).to("cpu")

    # -- synthesis ----------------------------------------------------------------------------
    def t3(self, flavour: Flavour):
        def load():
            from chatterbox.models.t3 import T3

            _mute_upstream()
            path = self.checkpoint.file(flavour, flavour.t3_file)
            state = read_weights(path)
            if "model" in state:  # upstream's loaders accept this wrapped form too
                state = state["model"][0]
            network = T3(t3_config(flavour, T3Shape.of(state)))
            _fit(network, state, path)
            if flavour.gpt2_t3:
                del network.tfmr.wte
            return network.to(self.device).eval()

        return self._network(f"t3:{flavour.name}", load)

    def tokenizer(self, flavour: Flavour):
        def load():
            if flavour.gpt2_t3:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(self.checkpoint.tokenizer_dir(flavour))
                if tokenizer.pad_token is None:
                    tokenizer.pad_token = tokenizer.eos_token
                return tokenizer
            from chatterbox.models.tokenizers import EnTokenizer, MTLTokenizer

            path = self.checkpoint.file(flavour, flavour.tokenizer_file)
            try:
                if flavour.multilingual:
                    return _multilingual_tokenizer(MTLTokenizer, path)
                return EnTokenizer(str(path))
            except Exception as exc:  # noqa: BLE001 - a broken tokenizer file
                raise CheckpointError(f"{path.name} is not a Chatterbox tokenizer ({type(exc).__name__}).") from exc

        return self._network(f"tok:{flavour.name}", load)

    def watermarker(self):
        def load():
            import perth

            _mute_upstream()
            return perth.PerthImplicitWatermarker()

        return self._network("watermarker", load)

    def load_for_synthesis(self, flavour: Flavour) -> None:
        """Load everything ``synthesize`` needs, so that its timing excludes loading."""
        self.t3(flavour), self.s3gen(flavour), self.tokenizer(flavour), self.watermarker()

    @contextlib.contextmanager
    def sampling(self, seed: int | None) -> Iterator[None]:
        """Hold the engine's sampler for one call's chunks, seeded when ``seed`` is given.

        Upstream samples from torch's global generator, so calls take turns; the global RNG state
        is forked and restored, so seeding never leaks into the rest of the process.
        """
        import torch

        with self._sampling, torch.random.fork_rng(devices=self.cuda_devices()):
            if seed is not None:
                torch.manual_seed(seed)
            yield

    def cuda_devices(self) -> list[int]:
        import torch

        if str(self.device).startswith("cuda") and torch.cuda.is_available():
            return [torch.device(self.device).index or 0]
        return []

    def synthesize(self, flavour: Flavour, conds, text: str, settings: SynthesisSettings) -> np.ndarray:
        """One chunk of text spoken with saved ``conds``: float32 mono audio at 24 kHz.

        Mirrors upstream ``generate`` step for step, with ``max_new_tokens`` under our control. Call
        it inside ``sampling()``.
        """
        import torch

        t3, s3gen, tokenizer = self.t3(flavour), self.s3gen(flavour), self.tokenizer(flavour)
        conds = conds.to(self.device)
        with torch.inference_mode():
            if flavour.gpt2_t3:
                speech_tokens = self._turbo_tokens(flavour, t3, tokenizer, conds, text, settings)
            else:
                speech_tokens = self._t3_tokens(flavour, t3, tokenizer, self._t3_cond(conds, settings), text, settings)
            wav, _ = s3gen.inference(
                speech_tokens=_renderable(speech_tokens).to(self.device),
                ref_dict=conds.gen,
                **({"n_cfm_timesteps": 2} if flavour.meanflow_s3gen else {}),
            )
            return self._watermarked(wav.squeeze(0).detach().cpu().numpy())

    def synthesize_stream(
        self, flavour: Flavour, conds, text: str, settings: SynthesisSettings, windows: TokenWindows
    ) -> Iterator[np.ndarray]:
        """One chunk of text as ``synthesize`` speaks it, in pieces: S3Gen renders ``windows`` of speech tokens
        while T3 generates them (``voicedb.streaming``). Turbo's chunks come whole. Call it inside ``sampling()``
        and consume it on that thread."""
        import torch
        from chatterbox.models.s3gen.const import S3GEN_SIL

        if flavour.gpt2_t3:  # upstream's GPT-2 loop, not ours to split
            yield self.synthesize(flavour, conds, text, settings)
            return
        t3, s3gen, tokenizer = self.t3(flavour), self.s3gen(flavour), self.tokenizer(flavour)
        conds = conds.to(self.device)
        renderer = WindowRenderer(
            s3gen, conds.gen, self.device, self.cuda_devices(), 2 if flavour.meanflow_s3gen else None, windows
        )
        with torch.inference_mode():
            t3_cond = self._t3_cond(conds, settings)
            text_tokens = self._t3_text_tokens(flavour, t3, tokenizer, text, settings)
        tokens: list[int] = []
        sampled = t3_tokens(t3, t3_cond, text_tokens, **self._t3_sampling(flavour, settings))
        for token in sampled:
            if token >= SPEECH_VOCAB:  # as upstream drops them after sampling
                continue
            tokens.append(token)
            if renderer.ready(len(tokens)):
                yield self._watermarked(renderer.render(tokens, final=False))
        tokens += [S3GEN_SIL] * max(0, MIN_RENDERED_TOKENS - len(tokens))  # as ``_renderable``
        yield self._watermarked(renderer.render(tokens, final=True))

    def synthesize_batch(self, jobs: list[Job]) -> None:
        """The next sentence chunk of each of ``jobs`` (one model flavour), decoded together
        (``voicedb.batching``): each job's audio goes to its ``pieces`` as it is rendered, in windows when
        its settings ask for them, and its ``next_chunk`` moves on."""
        import torch
        from chatterbox.models.s3gen.const import S3GEN_SIL

        flavour = jobs[0].flavour
        with self._sampling:
            if len(jobs) == 1 and not batchable(flavour):  # upstream's own loop, with the job's generators
                job = jobs[0]
                text, windows = job.chunks[job.next_chunk], job.settings.windows
                with job.random.active():
                    pieces = (
                        self.synthesize_stream(flavour, job.conds, text, job.settings, windows)
                        if windows
                        else iter([self.synthesize(flavour, job.conds, text, job.settings)])
                    )
                    for piece in pieces:
                        job.pieces.put(piece)
                        if job.cancelled.is_set():
                            break
                job.next_chunk += 1
                return
            t3, s3gen, tokenizer = self.t3(flavour), self.s3gen(flavour), self.tokenizer(flavour)
            steps = 2 if flavour.meanflow_s3gen else None
            rows, renderers = [], []
            with torch.inference_mode():
                for job in jobs:
                    text = job.chunks[job.next_chunk]
                    rows.append(
                        Row(
                            self._t3_cond(job.conds, job.settings),
                            self._t3_text_tokens(flavour, t3, tokenizer, text, job.settings),
                            self._t3_sampling(flavour, job.settings),
                            job.random,
                        )
                    )
                    renderers.append(
                        WindowRenderer(
                            s3gen, job.conds.gen, self.device, self.cuda_devices(), steps, job.settings.windows
                        )
                    )
            tokens: list[list[int]] = [[] for _ in jobs]
            stopped = [False] * len(jobs)
            finished = [False] * len(jobs)

            def render(index: int, final: bool) -> None:
                job = jobs[index]
                if final:
                    finished[index] = True
                    tokens[index] += [S3GEN_SIL] * max(0, MIN_RENDERED_TOKENS - len(tokens[index]))
                with job.random.active():
                    job.pieces.put(self._watermarked(renderers[index].render(tokens[index], final=final)))

            for step in batched_t3_tokens(t3, rows, stopped):
                for index, token in enumerate(step):
                    stopped[index] = jobs[index].cancelled.is_set()
                    if stopped[index] or finished[index]:
                        continue
                    if token is None or token >= SPEECH_VOCAB:
                        if token is None:
                            render(index, final=True)
                        continue
                    tokens[index].append(token)
                    if renderers[index].ready(len(tokens[index])):
                        render(index, final=False)
            for index, job in enumerate(jobs):
                if not finished[index] and not job.cancelled.is_set():
                    render(index, final=True)
                job.next_chunk += 1

    def _watermarked(self, wav: np.ndarray) -> np.ndarray:
        """Upstream's Perth watermark, as every Chatterbox output carries."""
        import torch

        with torch.inference_mode():
            return np.asarray(self.watermarker().apply_watermark(wav, sample_rate=S3GEN_SR), dtype=np.float32)

    @staticmethod
    def _t3_sampling(flavour: Flavour, settings: SynthesisSettings) -> dict[str, Any]:
        """How T3 samples a chunk: the same for upstream's loop and the streaming one."""
        return {
            "max_new_tokens": settings.max_tokens,
            "temperature": settings.temperature,
            "cfg_weight": settings.cfg_weight,
            "repetition_penalty": settings.repetition_penalty_for(flavour),
            "min_p": settings.min_p,
            "top_p": settings.top_p_for(flavour),
        }

    def _t3_cond(self, conds, settings: SynthesisSettings):
        """T3's conditioning for one chunk: the voice's, with this request's exaggeration."""
        import torch
        from chatterbox.models.t3.modules.cond_enc import T3Cond

        return T3Cond(
            speaker_emb=conds.t3.speaker_emb,
            cond_prompt_speech_tokens=conds.t3.cond_prompt_speech_tokens,
            emotion_adv=settings.exaggeration * torch.ones(1, 1, 1),
        ).to(device=self.device)

    def _t3_tokens(self, flavour: Flavour, t3, tokenizer, t3_cond, text: str, settings: SynthesisSettings):
        """Speech tokens from the Llama T3, as upstream ``ChatterboxTTS`` / ``ChatterboxMultilingualTTS.generate``."""
        from chatterbox.models.s3tokenizer import drop_invalid_tokens

        speech_tokens = t3.inference(
            t3_cond=t3_cond,
            text_tokens=self._t3_text_tokens(flavour, t3, tokenizer, text, settings),
            **self._t3_sampling(flavour, settings),
        )[0]
        speech_tokens = drop_invalid_tokens(speech_tokens)
        return speech_tokens[speech_tokens < SPEECH_VOCAB]

    def _t3_text_tokens(self, flavour: Flavour, t3, tokenizer, text: str, settings: SynthesisSettings):
        """The text as T3 reads it: normalised, tokenised, paired for CFG, between start and stop tokens."""
        import torch
        import torch.nn.functional as F

        if flavour.multilingual:
            from chatterbox.mtl_tts import punc_norm

            language = (settings.language or "en").lower()
            if language == "zh" and tokenizer.cangjie_converter.segmenter is None:
                raise CheckpointError(
                    "Chinese needs spacy-pkuseg's segmentation model, which it downloads from GitHub on first use; "
                    "run once with internet access."
                )
            text_tokens = tokenizer.text_to_tokens(punc_norm(text), language_id=language)
        else:
            from chatterbox.tts import punc_norm

            text_tokens = tokenizer.text_to_tokens(punc_norm(text))
        text_tokens = text_tokens.to(self.device)
        # CFG's pair even at cfg_weight 0 (then the unconditioned row weighs nothing): upstream's multilingual
        # model pairs always, and its English loop fails on a single row
        text_tokens = torch.cat([text_tokens, text_tokens], dim=0)
        text_tokens = F.pad(text_tokens, (1, 0), value=t3.hp.start_text_token)
        return F.pad(text_tokens, (0, 1), value=t3.hp.stop_text_token)

    def _turbo_tokens(self, flavour: Flavour, t3, tokenizer, conds, text: str, settings: SynthesisSettings):
        """Speech tokens from Turbo's GPT-2 T3, as upstream ``ChatterboxTurboTTS.generate`` (no CFG or exaggeration)."""
        import torch
        from chatterbox.models.s3gen.const import S3GEN_SIL
        from chatterbox.tts_turbo import punc_norm

        text_tokens = tokenizer(punc_norm(text), return_tensors="pt", padding=True, truncation=True)
        speech_tokens = t3.inference_turbo(
            t3_cond=conds.t3,
            text_tokens=text_tokens.input_ids.to(self.device),
            temperature=settings.temperature,
            top_p=settings.top_p_for(flavour),
            repetition_penalty=settings.repetition_penalty_for(flavour),
            max_gen_len=settings.max_tokens,
        )
        speech_tokens = speech_tokens[speech_tokens < SPEECH_VOCAB]
        silence = torch.tensor([S3GEN_SIL] * 3, dtype=torch.long, device=speech_tokens.device)
        return torch.cat([speech_tokens, silence])


MIN_RENDERED_TOKENS = 3


def _renderable(speech_tokens):
    """Speech tokens S3Gen can render: padded with silence up to ``MIN_RENDERED_TOKENS``.

    When sampling leaves fewer valid tokens (a tiny ``max_tokens``, or a chunk the model all but
    skipped), upstream's fade-in is longer than the audio and S3Gen raises a shape error.
    """
    import torch
    from chatterbox.models.s3gen.const import S3GEN_SIL

    missing = MIN_RENDERED_TOKENS - len(speech_tokens)
    if missing <= 0:
        return speech_tokens
    silence = torch.full((missing,), S3GEN_SIL, dtype=torch.long, device=speech_tokens.device)
    return torch.cat([speech_tokens.long(), silence])


def _multilingual_tokenizer(tokenizer_class: type, path: Path) -> Any:
    """``MTLTokenizer``, even offline.

    Its Chinese word segmenter (spacy-pkuseg) downloads a model from GitHub when built, and upstream
    only falls back when the package is missing, not when the download fails. Then we build it the
    way upstream does without the package, so every language but Chinese still works.
    """
    import sys

    try:
        return tokenizer_class(str(path))
    except OSError:  # requests' connection errors are OSErrors
        saved = sys.modules.get("spacy_pkuseg")
        sys.modules["spacy_pkuseg"] = None  # type: ignore[assignment] - makes the import fail
        try:
            return tokenizer_class(str(path))
        finally:
            if saved is None:
                del sys.modules["spacy_pkuseg"]
            else:
                sys.modules["spacy_pkuseg"] = saved


_SHARED: dict[tuple[Path | None, str], Engine] = {}
_SHARED_LOCK = threading.Lock()


def shared_engine(directory: Path | None, device: str | None) -> Engine:
    """One ``Engine`` per (checkpoint, device) in this process: weights load once, whoever asks
    (``None``: the default device, chosen when a torch network first needs it)."""
    key = (directory.resolve() if directory else None, device)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = Engine(Checkpoint(directory), device)
        return _SHARED[key]


def _normalise_loudness(wav: np.ndarray, target_lufs: float = -27.0) -> np.ndarray:
    """Turbo's reference loudness normalisation (upstream ``ChatterboxTurboTTS.norm_loudness``)."""
    import pyloudnorm

    try:
        gain = 10.0 ** ((target_lufs - pyloudnorm.Meter(S3GEN_SR).integrated_loudness(wav)) / 20.0)
    except ValueError:  # too short for a loudness measurement: upstream skips it too
        return wav
    return (wav * gain).astype(np.float32) if np.isfinite(gain) and gain > 0 else wav


def conditionals_class():
    """Upstream's ``Conditionals``, whose ``save``/``load`` define the ``.pt`` format we store."""
    from chatterbox.tts import Conditionals

    return Conditionals


#: Upstream conditionals take a few MB (a 10 s S3Gen reference at most); anything far larger is refused.
MAX_CONDITIONALS_BYTES = 64 << 20
#: Keys upstream ``Conditionals.save`` writes for S3Gen, and the T3 fields it must carry.
GEN_KEYS = frozenset({"prompt_token", "prompt_token_len", "prompt_feat", "prompt_feat_len", "embedding"})


def read_conditionals(data: bytes, source: str):
    """Parse an untrusted conditionals file: ``weights_only`` loading, then shape and dtype checks.

    Returns upstream ``Conditionals``; anything unexpected is an ``ImportRejected`` naming ``source``.
    """
    if zipfile.is_zipfile(io.BytesIO(data)):  # torch's format is a zip: bounded before torch even loads
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            refuse_bombs(archive, source, MAX_CONDITIONALS_BYTES)
    import torch
    from chatterbox.models.t3.modules.cond_enc import T3Cond

    silence_third_party()
    try:
        raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle payloads and garbage both end here
        raise ImportRejected(f"{source}: not a safe Chatterbox conditionals file ({type(exc).__name__}).") from exc
    if not isinstance(raw, dict) or set(raw) != {"t3", "gen"} or not all(isinstance(raw[k], dict) for k in raw):
        raise ImportRejected(f"{source}: not a Chatterbox conditionals file (expected t3 and gen dicts).")
    t3, gen = raw["t3"], raw["gen"]
    unknown = set(t3) - set(T3Cond.__dataclass_fields__)
    if unknown or set(gen) - GEN_KEYS:
        raise ImportRejected(f"{source}: unexpected fields {sorted(unknown | (set(gen) - GEN_KEYS))}.")

    def tensor(value: Any, name: str, ndim: int, floating: bool) -> None:
        if not torch.is_tensor(value) or value.dim() != ndim or value.is_floating_point() != floating:
            raise ImportRejected(f"{source}: {name} has the wrong type or shape.")
        if floating and not torch.isfinite(value).all():
            raise ImportRejected(f"{source}: {name} holds NaN or infinite values.")

    speaker = t3.get("speaker_emb")
    tensor(speaker, "t3.speaker_emb", 2, True)
    if tuple(speaker.shape) != (1, 256) or float(speaker.norm()) == 0.0:
        raise ImportRejected(f"{source}: t3.speaker_emb must be a non-zero (1, 256) vector.")
    if t3.get("cond_prompt_speech_tokens") is not None:
        tensor(t3["cond_prompt_speech_tokens"], "t3.cond_prompt_speech_tokens", 2, False)
    tensor(gen.get("prompt_token"), "gen.prompt_token", 2, False)
    tensor(gen.get("prompt_feat"), "gen.prompt_feat", 3, True)
    tensor(gen.get("embedding"), "gen.embedding", 2, True)
    if gen["prompt_feat"].shape[-1] != 80 or gen["embedding"].shape[-1] != 192:
        raise ImportRejected(f"{source}: the S3Gen reference has the wrong feature sizes.")
    return conditionals_class()(T3Cond(**t3), gen)
